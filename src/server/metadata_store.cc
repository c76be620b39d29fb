#include "metadata_store.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <nlohmann/json.hpp>

#include "bucketfs/naming/naming.h"

namespace bucketfs::server {
namespace {

using nlohmann::json;

std::unexpected<StoreError> fail(const lmdb::Error& error) { return std::unexpected(StoreError{error.message}); }
std::unexpected<StoreError> fail(std::string message) { return std::unexpected(StoreError{std::move(message)}); }

std::string raw(const xet::Hash& hash) { return std::string(reinterpret_cast<const char*>(hash.bytes.data()), 32); }

xet::Hash hash_from_raw(std::string_view bytes) {
  xet::Hash hash;
  std::memcpy(hash.bytes.data(), bytes.data(), 32);
  return hash;
}

std::string entry_key(const std::string& bucket, std::string_view path) {
  std::string key = bucket;
  key.push_back('\0');
  key.append(path);
  return key;
}

std::string bucket_file_key(const std::string& bucket, const xet::Hash& hash) {
  std::string key = bucket;
  key.push_back('\0');
  key += raw(hash);
  return key;
}

// Little-endian binary writer/reader for the compact records.
void put_u32(std::string& out, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void put_u64(std::string& out, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
struct Reader {
  std::string_view data;
  bool ok = true;
  std::uint64_t take(std::size_t width) {
    if (data.size() < width) {
      ok = false;
      return 0;
    }
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < width; ++i) v |= std::uint64_t(static_cast<unsigned char>(data[i])) << (8 * i);
    data.remove_prefix(width);
    return v;
  }
  xet::Hash hash() {
    if (data.size() < 32) {
      ok = false;
      return {};
    }
    auto h = hash_from_raw(data.substr(0, 32));
    data.remove_prefix(32);
    return h;
  }
};

std::string encode_file(const FileRecord& record) {
  std::string out;
  out.reserve(12 + record.terms.size() * 44);
  put_u64(out, record.size);
  put_u32(out, static_cast<std::uint32_t>(record.terms.size()));
  for (const auto& term : record.terms) {
    out += raw(term.xorb_hash);
    put_u32(out, term.chunk_index_start);
    put_u32(out, term.chunk_index_end);
    put_u32(out, term.unpacked_bytes);
  }
  return out;
}

std::optional<FileRecord> decode_file(std::string_view bytes) {
  Reader in{bytes};
  FileRecord record;
  record.size = in.take(8);
  const auto count = in.take(4);
  if (!in.ok || count > bytes.size() / 44) return std::nullopt;
  for (std::uint64_t i = 0; i < count; ++i) {
    xet::FileTerm term;
    term.xorb_hash = in.hash();
    term.chunk_index_start = static_cast<std::uint32_t>(in.take(4));
    term.chunk_index_end = static_cast<std::uint32_t>(in.take(4));
    term.unpacked_bytes = static_cast<std::uint32_t>(in.take(4));
    record.terms.push_back(term);
  }
  if (!in.ok) return std::nullopt;
  return record;
}

std::string encode_xorb(const XorbRecord& record) {
  std::string out;
  out.reserve(12 + record.chunks.size() * 40);
  put_u64(out, record.serialized_size);
  put_u32(out, static_cast<std::uint32_t>(record.chunks.size()));
  for (const auto& chunk : record.chunks) {
    out += raw(chunk.hash);
    put_u32(out, chunk.size);
    put_u32(out, chunk.serialized_offset);
  }
  return out;
}

std::optional<XorbRecord> decode_xorb(std::string_view bytes) {
  Reader in{bytes};
  XorbRecord record;
  record.serialized_size = in.take(8);
  const auto count = in.take(4);
  if (!in.ok || count > bytes.size() / 40) return std::nullopt;
  record.chunks.reserve(count);
  for (std::uint64_t i = 0; i < count; ++i) {
    XorbRecord::Chunk chunk;
    chunk.hash = in.hash();
    chunk.size = static_cast<std::uint32_t>(in.take(4));
    chunk.serialized_offset = static_cast<std::uint32_t>(in.take(4));
    record.chunks.push_back(chunk);
  }
  if (!in.ok) return std::nullopt;
  return record;
}

std::string encode_bucket(const BucketRecord& record) {
  return json{{"private", record.is_private}, {"createdAt", record.created_ms}, {"updatedAt", record.updated_ms},
              {"size", record.size}, {"files", record.file_count}}
      .dump();
}

std::optional<BucketRecord> decode_bucket(std::string_view id, std::string_view bytes) {
  auto value = json::parse(bytes, nullptr, false);
  if (value.is_discarded() || !value.is_object()) return std::nullopt;
  BucketRecord record;
  record.id = std::string(id);
  record.is_private = value.value("private", false);
  record.created_ms = value.value("createdAt", std::int64_t{0});
  record.updated_ms = value.value("updatedAt", std::int64_t{0});
  record.size = value.value("size", std::uint64_t{0});
  record.file_count = value.value("files", std::uint64_t{0});
  return record;
}

std::string encode_entry(const EntryRecord& record) {
  json value{{"h", record.xet_hash.to_string()}, {"s", record.size}, {"m", record.mtime_ms},
             {"u", record.uploaded_ms}};
  if (!record.content_type.empty()) value["t"] = record.content_type;
  return value.dump();
}

std::optional<EntryRecord> decode_entry(std::string_view path, std::string_view bytes) {
  auto value = json::parse(bytes, nullptr, false);
  if (value.is_discarded() || !value.is_object()) return std::nullopt;
  auto hash = xet::Hash::from_string(value.value("h", std::string()));
  if (!hash) return std::nullopt;
  EntryRecord record;
  record.path = std::string(path);
  record.xet_hash = *hash;
  record.size = value.value("s", std::uint64_t{0});
  record.mtime_ms = value.value("m", std::int64_t{0});
  record.uploaded_ms = value.value("u", std::int64_t{0});
  record.content_type = value.value("t", std::string());
  return record;
}

}  // namespace

std::string iso8601_ms(std::int64_t unix_ms) {
  // Floor division: -1 ms is 1969-12-31T23:59:59.999Z, not "...00.-01Z".
  std::int64_t whole_seconds = unix_ms / 1000;
  std::int64_t millis = unix_ms % 1000;
  if (millis < 0) {
    millis += 1000;
    whole_seconds -= 1;
  }
  const std::time_t seconds = static_cast<std::time_t>(whole_seconds);
  std::tm utc{};
  gmtime_r(&seconds, &utc);
  char text[64];
  std::snprintf(text, sizeof text, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", utc.tm_year + 1900, utc.tm_mon + 1,
                utc.tm_mday, utc.tm_hour, utc.tm_min, utc.tm_sec, static_cast<int>(millis));
  return text;
}

std::pair<std::uint64_t, std::uint64_t> XorbRecord::byte_range(std::size_t first, std::size_t last) const {
  const std::uint64_t begin = chunks[first].serialized_offset;
  const std::uint64_t end = last < chunks.size() ? chunks[last].serialized_offset : serialized_size;
  return {begin, end};
}

std::vector<xet::HashAndSize> XorbRecord::leaves() const {
  std::vector<xet::HashAndSize> out;
  out.reserve(chunks.size());
  for (const auto& chunk : chunks) out.push_back({chunk.hash, chunk.size});
  return out;
}

xet::XorbInfo XorbRecord::info(const xet::Hash& xorb_hash) const {
  xet::XorbInfo info;
  info.xorb_hash = xorb_hash;
  info.serialized_bytes = static_cast<std::uint32_t>(serialized_size);
  std::uint32_t offset = 0;
  for (const auto& chunk : chunks) {
    info.chunks.push_back({chunk.hash, offset, chunk.size, 0});
    offset += chunk.size;
  }
  info.unpacked_bytes = offset;
  return info;
}

StoreResult<MetadataStore> MetadataStore::open(const std::string& directory) {
  if (::mkdir(directory.c_str(), 0700) != 0 && errno != EEXIST) {
    return fail("cannot create " + directory + ": " + std::strerror(errno));
  }
  auto env = lmdb::Environment::open(directory, lmdb::Environment::Options{});
  if (!env) return fail(env.error());
  MetadataStore store(std::move(*env));
  struct Named {
    const char* name;
    lmdb::Database* db;
  } databases[] = {{"buckets", &store.buckets_}, {"entries", &store.entries_}, {"files", &store.files_},
                   {"xorbs", &store.xorbs_},     {"dedup", &store.dedup_},     {"bucket_files", &store.bucket_files_},
                   {"totals", &store.totals_}};
  for (auto& named : databases) {
    auto db = store.env_.open_database(named.name);
    if (!db) return fail(db.error());
    *named.db = *db;
  }
  return store;
}

StoreResult<bool> MetadataStore::create_bucket(const std::string& id, bool is_private, std::int64_t now_ms) {
  auto txn = env_.begin_write();
  if (!txn) return fail(txn.error());
  auto existing = txn->get(buckets_, id);
  if (!existing) return fail(existing.error());
  if (*existing) return false;
  BucketRecord record{id, is_private, now_ms, now_ms, 0, 0};
  if (auto put = txn->put(buckets_, id, encode_bucket(record)); !put) return fail(put.error());
  if (auto done = txn->commit(); !done) return fail(done.error());
  return true;
}

StoreResult<std::optional<BucketRecord>> MetadataStore::bucket(const std::string& id) const {
  auto txn = env_.begin_read();
  if (!txn) return fail(txn.error());
  auto value = txn->get(buckets_, id);
  if (!value) return fail(value.error());
  if (!*value) return std::optional<BucketRecord>{};
  auto record = decode_bucket(id, **value);
  if (!record) return fail("corrupt bucket record " + id);
  return record;
}

StoreResult<std::vector<BucketRecord>> MetadataStore::buckets_of(const std::string& ns) const {
  auto txn = env_.begin_read();
  if (!txn) return fail(txn.error());
  auto cursor = txn->cursor(buckets_);
  if (!cursor) return fail(cursor.error());
  std::vector<BucketRecord> out;
  const std::string prefix = ns + "/";
  for (auto item = cursor->seek(prefix); item && *item; item = cursor->next()) {
    const auto& [key, value] = **item;
    if (!key.starts_with(prefix)) break;
    if (auto record = decode_bucket(key, value)) out.push_back(std::move(*record));
  }
  return out;
}

StoreResult<bool> MetadataStore::delete_bucket(const std::string& id) {
  auto txn = env_.begin_write();
  if (!txn) return fail(txn.error());
  auto removed = txn->erase(buckets_, id);
  if (!removed) return fail(removed.error());
  if (!*removed) return false;
  for (lmdb::Database db : {entries_, bucket_files_}) {
    auto cursor = txn->cursor(db);
    if (!cursor) return fail(cursor.error());
    const std::string prefix = id + std::string(1, '\0');
    for (auto item = cursor->seek(prefix); item && *item && (*item)->first.starts_with(prefix);
         item = cursor->seek(prefix)) {
      if (auto erased = cursor->erase_current(); !erased) return fail(erased.error());
    }
  }
  if (auto done = txn->commit(); !done) return fail(done.error());
  return true;
}

StoreResult<void> MetadataStore::move_bucket(const std::string& from, const std::string& to, std::int64_t now_ms) {
  auto txn = env_.begin_write();
  if (!txn) return fail(txn.error());
  auto source = txn->get(buckets_, from);
  if (!source) return fail(source.error());
  if (!*source) return fail("bucket " + from + " does not exist");
  auto target = txn->get(buckets_, to);
  if (!target) return fail(target.error());
  if (*target) return fail("bucket " + to + " already exists");
  auto record = decode_bucket(to, **source);
  if (!record) return fail("corrupt bucket record " + from);
  record->updated_ms = now_ms;
  if (auto put = txn->put(buckets_, to, encode_bucket(*record)); !put) return fail(put.error());
  if (auto erased = txn->erase(buckets_, from); !erased) return fail(erased.error());
  for (lmdb::Database db : {entries_, bucket_files_}) {
    const std::string prefix = from + std::string(1, '\0');
    std::vector<std::pair<std::string, std::string>> moved;
    {
      auto cursor = txn->cursor(db);
      if (!cursor) return fail(cursor.error());
      for (auto item = cursor->seek(prefix); item && *item && (*item)->first.starts_with(prefix);
           item = cursor->seek(prefix)) {
        moved.emplace_back(to + std::string(1, '\0') + std::string((*item)->first.substr(prefix.size())),
                           std::string((*item)->second));
        if (auto erased = cursor->erase_current(); !erased) return fail(erased.error());
      }
    }
    for (const auto& [key, value] : moved) {
      if (auto put = txn->put(db, key, value); !put) return fail(put.error());
    }
  }
  if (auto done = txn->commit(); !done) return fail(done.error());
  return {};
}

StoreResult<ListPage> MetadataStore::list(const std::string& bucket, const std::string& prefix, bool recursive,
                                          std::size_t limit, const std::string& cursor_text) const {
  auto txn = env_.begin_read();
  if (!txn) return fail(txn.error());
  auto cursor = txn->cursor(entries_);
  if (!cursor) return fail(cursor.error());
  const std::string bucket_prefix = entry_key(bucket, "");
  const std::string base = bucket_prefix + prefix;  // keys of the prefix entry and its subtree
  std::string start = base;
  if (!cursor_text.empty()) {
    // "f<path>": continue after that entry; "d<path>": after every entry below that directory.
    const std::string path = cursor_text.substr(1);
    start = entry_key(bucket, path) + (cursor_text[0] == 'd' ? std::string("0") : std::string(1, '\0'));
  }
  ListPage page;
  if (limit == 0) limit = 1;
  auto item = cursor->seek(start);
  while (item && *item) {
    const std::string_view key = (*item)->first;
    if (!key.starts_with(base)) break;
    const std::string_view path = key.substr(bucket_prefix.size());
    std::string_view relative;
    if (prefix.empty()) {
      relative = path;
    } else if (path.size() == prefix.size()) {
      relative = {};  // the entry named exactly by the prefix
    } else if (path[prefix.size()] == '/') {
      relative = path.substr(prefix.size() + 1);
    } else {
      // "prefix.x" lies between "prefix" and "prefix/"; anything else is past the subtree.
      if (path[prefix.size()] < '/') {
        item = cursor->next();
        continue;
      }
      break;
    }
    const auto slash = relative.find('/');
    const bool is_directory = !recursive && slash != std::string_view::npos;
    if (page.items.size() == limit) {
      const auto& last = page.items.back();
      page.next_cursor = (last.is_directory ? "d" : "f") + last.entry.path;
      break;
    }
    ListPage::Item out;
    out.is_directory = is_directory;
    if (is_directory) {
      const std::string directory = (prefix.empty() ? std::string() : prefix + "/") +
                                    std::string(relative.substr(0, slash));
      out.entry.path = directory;
      page.items.push_back(std::move(out));
      item = cursor->seek(entry_key(bucket, directory) + "0");  // '0' follows '/': skip the subtree
      continue;
    }
    auto entry = decode_entry(path, (*item)->second);
    if (!entry) return fail("corrupt entry " + std::string(path));
    out.entry = std::move(*entry);
    page.items.push_back(std::move(out));
    item = cursor->next();
  }
  if (!item) return fail(item.error());
  return page;
}

StoreResult<std::optional<EntryRecord>> MetadataStore::entry(const std::string& bucket, const std::string& path) const {
  auto txn = env_.begin_read();
  if (!txn) return fail(txn.error());
  auto value = txn->get(entries_, entry_key(bucket, path));
  if (!value) return fail(value.error());
  if (!*value) return std::optional<EntryRecord>{};
  auto record = decode_entry(path, **value);
  if (!record) return fail("corrupt entry " + path);
  return record;
}

StoreResult<std::vector<BatchFailure>> MetadataStore::apply_batch(
    const std::string& bucket, const std::vector<BatchOperation>& operations, std::int64_t now_ms,
    const std::function<bool(const std::string&)>& readable_source) {
  auto txn = env_.begin_write();
  if (!txn) return fail(txn.error());
  auto bucket_value = txn->get(buckets_, bucket);
  if (!bucket_value) return fail(bucket_value.error());
  if (!*bucket_value) return fail("bucket " + bucket + " does not exist");
  auto record = decode_bucket(bucket, **bucket_value);
  if (!record) return fail("corrupt bucket record " + bucket);

  auto file_size = [&](const xet::Hash& hash) -> StoreResult<std::optional<std::uint64_t>> {
    if (hash.is_zero()) return std::optional<std::uint64_t>{0};
    auto value = txn->get(files_, raw(hash));
    if (!value) return fail(value.error());
    if (!*value) return std::optional<std::uint64_t>{};
    auto file = decode_file(**value);
    if (!file) return fail("corrupt file record " + hash.to_string());
    return std::optional<std::uint64_t>{file->size};
  };
  auto may_reference = [&](const std::string& owner, const xet::Hash& hash) -> StoreResult<bool> {
    if (hash.is_zero()) return true;
    auto value = txn->get(bucket_files_, bucket_file_key(owner, hash));
    if (!value) return fail(value.error());
    return value->has_value();
  };

  // Validate everything first: the batch is all or nothing.
  std::vector<BatchFailure> failures;
  std::vector<std::uint64_t> sizes(operations.size(), 0);
  for (std::size_t i = 0; i < operations.size(); ++i) {
    const auto& op = operations[i];
    if (auto problem = naming::object_key_problem(op.path)) {
      failures.push_back({op.path, "invalid path: " + *problem});
      continue;
    }
    if (op.kind == BatchOperation::Kind::kDelete) continue;
    std::string owner = bucket;
    if (op.kind == BatchOperation::Kind::kCopy) {
      owner = op.source_bucket;
      auto source = txn->get(buckets_, owner);
      if (!source) return fail(source.error());
      if (!*source || !readable_source(owner)) {
        failures.push_back({op.path, "source bucket " + owner + " not found"});
        continue;
      }
    }
    auto size = file_size(op.xet_hash);
    if (!size) return std::unexpected(size.error());
    auto allowed = may_reference(owner, op.xet_hash);
    if (!allowed) return std::unexpected(allowed.error());
    if (!*size || !*allowed) {
      failures.push_back({op.path, "unknown xetHash " + op.xet_hash.to_string() + ": upload its shard first"});
      continue;
    }
    sizes[i] = **size;
  }
  if (!failures.empty()) return failures;

  for (std::size_t i = 0; i < operations.size(); ++i) {
    const auto& op = operations[i];
    const std::string key = entry_key(bucket, op.path);
    auto old = txn->get(entries_, key);
    if (!old) return fail(old.error());
    if (*old) {
      auto previous = decode_entry(op.path, **old);
      if (previous) {
        record->size -= std::min(record->size, previous->size);
        record->file_count -= record->file_count > 0 ? 1 : 0;
      }
    }
    if (op.kind == BatchOperation::Kind::kDelete) {
      if (*old) {
        if (auto erased = txn->erase(entries_, key); !erased) return fail(erased.error());
      }
      continue;
    }
    EntryRecord entry;
    entry.path = op.path;
    entry.xet_hash = op.xet_hash;
    entry.size = sizes[i];
    entry.mtime_ms = op.mtime_ms.value_or(now_ms);
    entry.uploaded_ms = now_ms;
    entry.content_type = op.content_type;
    if (auto put = txn->put(entries_, key, encode_entry(entry)); !put) return fail(put.error());
    if (!op.xet_hash.is_zero()) {
      if (auto put = txn->put(bucket_files_, bucket_file_key(bucket, op.xet_hash), ""); !put) return fail(put.error());
    }
    record->size += entry.size;
    record->file_count += 1;
  }
  record->updated_ms = now_ms;
  if (auto put = txn->put(buckets_, bucket, encode_bucket(*record)); !put) return fail(put.error());
  if (auto done = txn->commit(); !done) return fail(done.error());
  return failures;
}

StoreResult<std::optional<FileRecord>> MetadataStore::file(const xet::Hash& file_hash) const {
  auto txn = env_.begin_read();
  if (!txn) return fail(txn.error());
  auto value = txn->get(files_, raw(file_hash));
  if (!value) return fail(value.error());
  if (!*value) return std::optional<FileRecord>{};
  auto record = decode_file(**value);
  if (!record) return fail("corrupt file record " + file_hash.to_string());
  return record;
}

StoreResult<std::optional<XorbRecord>> MetadataStore::xorb(const xet::Hash& xorb_hash) const {
  auto txn = env_.begin_read();
  if (!txn) return fail(txn.error());
  auto value = txn->get(xorbs_, raw(xorb_hash));
  if (!value) return fail(value.error());
  if (!*value) return std::optional<XorbRecord>{};
  auto record = decode_xorb(**value);
  if (!record) return fail("corrupt xorb record " + xorb_hash.to_string());
  return record;
}

StoreResult<bool> MetadataStore::has_xorb(const xet::Hash& xorb_hash) const {
  auto txn = env_.begin_read();
  if (!txn) return fail(txn.error());
  auto value = txn->get(xorbs_, raw(xorb_hash));
  if (!value) return fail(value.error());
  return value->has_value();
}

StoreResult<bool> MetadataStore::put_xorb(const xet::Hash& xorb_hash, const XorbRecord& record) {
  auto txn = env_.begin_write();
  if (!txn) return fail(txn.error());
  auto existing = txn->get(xorbs_, raw(xorb_hash));
  if (!existing) return fail(existing.error());
  if (*existing) return false;
  if (auto put = txn->put(xorbs_, raw(xorb_hash), encode_xorb(record)); !put) return fail(put.error());
  auto totals = txn->get(totals_, "xorbs");
  if (!totals) return fail(totals.error());
  std::uint64_t count = 0, bytes = 0;
  if (*totals) {
    Reader in{**totals};
    count = in.take(8);
    bytes = in.take(8);
  }
  std::string value;
  put_u64(value, count + 1);
  put_u64(value, bytes + record.serialized_size);
  if (auto put = txn->put(totals_, "xorbs", value); !put) return fail(put.error());
  if (auto done = txn->commit(); !done) return fail(done.error());
  return true;
}

StoreResult<std::pair<std::uint64_t, std::uint64_t>> MetadataStore::xorb_totals() const {
  auto txn = env_.begin_read();
  if (!txn) return fail(txn.error());
  auto totals = txn->get(totals_, "xorbs");
  if (!totals) return fail(totals.error());
  if (!*totals) return std::pair<std::uint64_t, std::uint64_t>{0, 0};
  Reader in{**totals};
  const auto count = in.take(8);
  const auto bytes = in.take(8);
  return std::pair{count, bytes};
}

StoreResult<std::size_t> MetadataStore::register_files(
    const std::string& bucket, const std::vector<std::pair<xet::Hash, FileRecord>>& files,
    const std::vector<std::pair<xet::Hash, std::vector<xet::Hash>>>& dedup_chunks) {
  auto txn = env_.begin_write();
  if (!txn) return fail(txn.error());
  std::size_t added = 0;
  for (const auto& [hash, record] : files) {
    auto existing = txn->get(files_, raw(hash));
    if (!existing) return fail(existing.error());
    if (!*existing) {
      if (auto put = txn->put(files_, raw(hash), encode_file(record)); !put) return fail(put.error());
      ++added;
    }
    if (auto put = txn->put(bucket_files_, bucket_file_key(bucket, hash), ""); !put) return fail(put.error());
  }
  for (const auto& [chunk, xorbs] : dedup_chunks) {
    std::string value;
    for (const auto& xorb : xorbs) value += raw(xorb);
    if (auto put = txn->put(dedup_, raw(chunk), value); !put) return fail(put.error());
  }
  if (auto done = txn->commit(); !done) return fail(done.error());
  return added;
}

StoreResult<std::vector<xet::Hash>> MetadataStore::dedup_lookup(const xet::Hash& chunk_hash) const {
  auto txn = env_.begin_read();
  if (!txn) return fail(txn.error());
  auto value = txn->get(dedup_, raw(chunk_hash));
  if (!value) return fail(value.error());
  std::vector<xet::Hash> xorbs;
  if (*value) {
    for (std::size_t offset = 0; offset + 32 <= (*value)->size(); offset += 32) {
      xorbs.push_back(hash_from_raw((*value)->substr(offset, 32)));
    }
  }
  return xorbs;
}

StoreResult<bool> MetadataStore::bucket_may_read(const std::string& bucket, const xet::Hash& file_hash) const {
  auto txn = env_.begin_read();
  if (!txn) return fail(txn.error());
  auto value = txn->get(bucket_files_, bucket_file_key(bucket, file_hash));
  if (!value) return fail(value.error());
  return value->has_value();
}

}  // namespace bucketfs::server
