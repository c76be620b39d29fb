#include "format.h"

#include <cstring>
#include <string>
#include <vector>

namespace bucketfs::cache::format {

EncodedLocation encode(const Location& loc) {
  EncodedLocation out;
  char* p = out.bytes.data();
  put_le(p, loc.segment, 8);
  put_le(p + 8, loc.offset, 8);
  put_le(p + 16, loc.stored_size, 4);
  put_le(p + 20, loc.raw_size, 4);
  p[24] = static_cast<char>(loc.codec);
  put_hash(p + 28, loc.hash);
  out.length = kLocationSize;
  for (std::size_t g = 0; g < loc.group_count; ++g, out.length += 32) put_hash(p + out.length, loc.groups[g]);
  return out;
}

std::optional<Location> decode_location(std::string_view value) {
  if (value.size() < kLocationSize || (value.size() - kLocationSize) % 32 != 0) return std::nullopt;
  const char* p = value.data();
  Location loc;
  loc.segment = get_le(p, 8);
  loc.offset = get_le(p + 8, 8);
  loc.stored_size = static_cast<std::uint32_t>(get_le(p + 16, 4));
  loc.raw_size = static_cast<std::uint32_t>(get_le(p + 20, 4));
  const auto codec = static_cast<std::uint8_t>(p[24]);
  if (codec > static_cast<std::uint8_t>(Codec::kZstd)) return std::nullopt;
  loc.codec = static_cast<Codec>(codec);
  loc.hash = get_hash(p + 28);
  if (loc.codec == Codec::kRaw && loc.stored_size != loc.raw_size) return std::nullopt;
  const std::size_t groups = (value.size() - kLocationSize) / 32;
  if (groups > 0) {
    // Group values only for a raw chunk, exactly as many as its size has.
    if (loc.codec != Codec::kRaw || groups != xet::chunk_group_count(loc.raw_size)) return std::nullopt;
    loc.group_count = static_cast<std::uint8_t>(groups);
    for (std::size_t g = 0; g < groups; ++g) loc.groups[g] = get_hash(p + kLocationSize + 32 * g);
  }
  return loc;
}

std::array<char, kSegmentRecordSize> encode(const SegmentRecord& rec) {
  std::array<char, kSegmentRecordSize> out{};
  put_le(out.data(), rec.size, 8);
  put_le(out.data() + 8, rec.last_used_ms, 8);
  put_le(out.data() + 16, rec.created_ms, 8);
  put_le(out.data() + 24, rec.owner_pid, 4);
  return out;
}

std::optional<SegmentRecord> decode_segment(std::string_view value) {
  if (value.size() != kSegmentRecordSize) return std::nullopt;
  const char* p = value.data();
  return SegmentRecord{get_le(p, 8), get_le(p + 8, 8), get_le(p + 16, 8),
                       static_cast<std::uint32_t>(get_le(p + 24, 4))};
}

std::array<char, 8> segment_key(std::uint64_t id) {
  std::array<char, 8> key;
  put_be(key.data(), id, 8);
  return key;
}

std::array<char, 16> segment_chunk_key(std::uint64_t segment, std::uint64_t offset) {
  std::array<char, 16> key;
  put_be(key.data(), segment, 8);
  put_be(key.data() + 8, offset, 8);
  return key;
}

std::string segment_file_name(std::uint64_t id) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string name(16, '0');
  for (int i = 15; i >= 0; --i, id >>= 4) name[static_cast<std::size_t>(i)] = kHex[id & 0xf];
  return name + ".seg";
}

std::optional<std::uint64_t> parse_segment_file_name(std::string_view name) {
  if (name.size() != 20 || !name.ends_with(".seg")) return std::nullopt;
  std::uint64_t id = 0;
  for (std::size_t i = 0; i < 16; ++i) {
    const char c = name[i];
    int digit;
    if (c >= '0' && c <= '9') digit = c - '0';
    else if (c >= 'a' && c <= 'f') digit = c - 'a' + 10;
    else return std::nullopt;
    id = (id << 4) | static_cast<std::uint64_t>(digit);
  }
  return id;
}

Error store_error(const lmdb::Error& e) { return Error{ErrorCode::kStore, e.code, e.message}; }

Error io_error(int err, std::string message) {
  return Error{ErrorCode::kIo, err, std::move(message) + ": " + std::strerror(err)};
}

Result<std::uint64_t> get_counter(const lmdb::Transaction& txn, lmdb::Database meta, std::string_view name) {
  auto value = txn.get(meta, name);
  if (!value) return std::unexpected(store_error(value.error()));
  if (!*value) return std::uint64_t{0};
  if ((*value)->size() != 8) {
    return std::unexpected(Error{ErrorCode::kFormat, 0, "meta " + std::string(name) + ": not 8 bytes"});
  }
  return get_le((*value)->data(), 8);
}

Result<void> set_counter(lmdb::Transaction& txn, lmdb::Database meta, std::string_view name, std::uint64_t value) {
  char bytes[8];
  put_le(bytes, value, 8);
  if (auto put = txn.put(meta, name, std::string_view(bytes, 8)); !put) {
    return std::unexpected(store_error(put.error()));
  }
  return {};
}

Result<void> add_counter(lmdb::Transaction& txn, lmdb::Database meta, std::string_view name, std::int64_t delta) {
  auto current = get_counter(txn, meta, name);
  if (!current) return std::unexpected(current.error());
  std::uint64_t next = *current + static_cast<std::uint64_t>(delta);
  if (delta < 0 && static_cast<std::uint64_t>(-delta) > *current) next = 0;  // never wrap below zero
  return set_counter(txn, meta, name, next);
}

Result<void> put_dedup(lmdb::Transaction& txn, const NodeStore::Databases& dbs,
                       std::span<const DedupRecord> records, std::uint64_t max_entries) {
  if (records.empty()) return {};
  auto seq = get_counter(txn, dbs.meta, kMetaDedupNextSeq);
  if (!seq) return std::unexpected(seq.error());
  std::uint64_t next = *seq;
  for (const DedupRecord& record : records) {
    const std::string_view key(reinterpret_cast<const char*>(record.chunk.bytes.data()), 32);
    auto old = txn.get(dbs.dedup, key);
    if (!old) return std::unexpected(store_error(old.error()));
    if (*old && (*old)->size() == kDedupValueSize) {
      const auto old_order = segment_key(get_le((*old)->data() + 40, 8));
      if (auto erased = txn.erase(dbs.dedup_order, {old_order.data(), old_order.size()}); !erased) {
        return std::unexpected(store_error(erased.error()));
      }
    }
    char value[kDedupValueSize];
    put_hash(value, record.entry.xorb);
    put_le(value + 32, record.entry.chunk_index, 4);
    put_le(value + 36, record.entry.size, 4);
    put_le(value + 40, next, 8);
    const auto order = segment_key(next);  // u64 BE, same layout as a segment key
    ++next;
    if (auto put = txn.put(dbs.dedup, key, {value, sizeof value}); !put) {
      return std::unexpected(store_error(put.error()));
    }
    if (auto put = txn.put(dbs.dedup_order, {order.data(), order.size()}, key); !put) {
      return std::unexpected(store_error(put.error()));
    }
  }
  if (auto set = set_counter(txn, dbs.meta, kMetaDedupNextSeq, next); !set) return set;

  auto count = txn.count(dbs.dedup);
  if (!count) return std::unexpected(store_error(count.error()));
  if (*count <= max_entries) return {};
  // Trim the oldest insertions. Collect first: views into LMDB pages die with the next write.
  std::uint64_t excess = *count - max_entries;
  std::vector<std::pair<std::string, std::string>> victims;  // (order key, chunk hash)
  victims.reserve(static_cast<std::size_t>(excess));
  {
    auto cursor = txn.cursor(dbs.dedup_order);
    if (!cursor) return std::unexpected(store_error(cursor.error()));
    auto entry = cursor->first();
    while (excess > 0) {
      if (!entry) return std::unexpected(store_error(entry.error()));
      if (!*entry) break;
      victims.emplace_back(std::string((*entry)->first), std::string((*entry)->second));
      --excess;
      entry = cursor->next();
    }
  }
  for (const auto& [order, chunk] : victims) {
    if (auto erased = txn.erase(dbs.dedup_order, order); !erased) return std::unexpected(store_error(erased.error()));
    if (auto erased = txn.erase(dbs.dedup, chunk); !erased) return std::unexpected(store_error(erased.error()));
  }
  return {};
}

}  // namespace bucketfs::cache::format
