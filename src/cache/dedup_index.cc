#include "bucketfs/cache/dedup_index.h"

#include <algorithm>

#include "format.h"

namespace bucketfs::cache {
namespace {

std::string_view hash_key(const xet::Hash& hash) {
  return {reinterpret_cast<const char*>(hash.bytes.data()), hash.bytes.size()};
}

Result<std::optional<DedupEntry>> lookup(const lmdb::Transaction& txn, lmdb::Database db, const xet::Hash& chunk) {
  auto value = txn.get(db, hash_key(chunk));
  if (!value) return std::unexpected(format::store_error(value.error()));
  if (!*value) return std::optional<DedupEntry>{};
  if ((*value)->size() != format::kDedupValueSize) {
    return std::unexpected(Error{ErrorCode::kFormat, 0, "malformed dedup entry " + chunk.to_string()});
  }
  const char* p = (*value)->data();
  return std::optional<DedupEntry>{DedupEntry{format::get_hash(p), static_cast<std::uint32_t>(format::get_le(p + 32, 4)),
                                              static_cast<std::uint32_t>(format::get_le(p + 36, 4))}};
}

}  // namespace

Result<void> DedupIndex::put_many(std::span<const DedupRecord> records) {
  if (records.empty()) return {};
  auto txn = store_->environment().begin_write();
  if (!txn) return std::unexpected(format::store_error(txn.error()));
  if (auto put = format::put_dedup(*txn, store_->databases(), records, store_->options().dedup_max_entries); !put) {
    return put;
  }
  if (auto committed = txn->commit(); !committed) return std::unexpected(format::store_error(committed.error()));
  return {};
}

Result<std::optional<DedupEntry>> DedupIndex::get(const xet::Hash& chunk) const {
  auto txn = store_->environment().begin_read();
  if (!txn) return std::unexpected(format::store_error(txn.error()));
  return lookup(*txn, store_->databases().dedup, chunk);
}

Result<std::vector<std::optional<DedupEntry>>> DedupIndex::get_many(std::span<const xet::Hash> chunks) const {
  auto txn = store_->environment().begin_read();
  if (!txn) return std::unexpected(format::store_error(txn.error()));
  std::vector<std::optional<DedupEntry>> found;
  found.reserve(chunks.size());
  for (const xet::Hash& chunk : chunks) {
    auto entry = lookup(*txn, store_->databases().dedup, chunk);
    if (!entry) return std::unexpected(entry.error());
    found.push_back(*entry);
  }
  return found;
}

Result<std::uint64_t> DedupIndex::forget_xorbs(std::span<const xet::Hash> xorbs) {
  if (xorbs.empty()) return 0;
  const auto& dbs = store_->databases();
  auto names_lost_xorb = [&](std::string_view value) {
    return value.size() == format::kDedupValueSize &&
           std::find(xorbs.begin(), xorbs.end(), format::get_hash(value.data())) != xorbs.end();
  };
  // The scan runs in a read transaction: the environment's one writer (journal records of
  // closes among them) is held only for the erasures.
  std::vector<std::string> chunks;
  {
    auto txn = store_->environment().begin_read();
    if (!txn) return std::unexpected(format::store_error(txn.error()));
    auto cursor = txn->cursor(dbs.dedup);
    if (!cursor) return std::unexpected(format::store_error(cursor.error()));
    for (auto entry = cursor->first();; entry = cursor->next()) {
      if (!entry) return std::unexpected(format::store_error(entry.error()));
      if (!*entry) break;
      if (names_lost_xorb((*entry)->second)) chunks.emplace_back((*entry)->first);
    }
  }
  if (chunks.empty()) return 0;
  auto txn = store_->environment().begin_write();
  if (!txn) return std::unexpected(format::store_error(txn.error()));
  std::uint64_t removed = 0;
  for (const std::string& chunk : chunks) {
    // Looked up again: a put since the scan may have pointed the chunk elsewhere.
    auto value = txn->get(dbs.dedup, chunk);
    if (!value) return std::unexpected(format::store_error(value.error()));
    if (!*value || !names_lost_xorb(**value)) continue;
    const auto order = format::segment_key(format::get_le((*value)->data() + 40, 8));
    if (auto erased = txn->erase(dbs.dedup_order, {order.data(), order.size()}); !erased) {
      return std::unexpected(format::store_error(erased.error()));
    }
    if (auto erased = txn->erase(dbs.dedup, chunk); !erased) return std::unexpected(format::store_error(erased.error()));
    ++removed;
  }
  if (auto committed = txn->commit(); !committed) return std::unexpected(format::store_error(committed.error()));
  return removed;
}

Result<std::uint64_t> DedupIndex::size() const {
  auto txn = store_->environment().begin_read();
  if (!txn) return std::unexpected(format::store_error(txn.error()));
  auto count = txn->count(store_->databases().dedup);
  if (!count) return std::unexpected(format::store_error(count.error()));
  return *count;
}

}  // namespace bucketfs::cache
