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
  auto txn = store_->environment().begin_write();
  if (!txn) return std::unexpected(format::store_error(txn.error()));
  const auto& dbs = store_->databases();
  // Collect first: views into LMDB pages die with the next write.
  std::vector<std::pair<std::string, std::string>> victims;  // (chunk hash, order key)
  {
    auto cursor = txn->cursor(dbs.dedup);
    if (!cursor) return std::unexpected(format::store_error(cursor.error()));
    for (auto entry = cursor->first();; entry = cursor->next()) {
      if (!entry) return std::unexpected(format::store_error(entry.error()));
      if (!*entry) break;
      const std::string_view value = (*entry)->second;
      if (value.size() != format::kDedupValueSize) continue;
      const xet::Hash xorb = format::get_hash(value.data());
      if (std::find(xorbs.begin(), xorbs.end(), xorb) == xorbs.end()) continue;
      const auto order = format::segment_key(format::get_le(value.data() + 40, 8));
      victims.emplace_back(std::string((*entry)->first), std::string(order.data(), order.size()));
    }
  }
  for (const auto& [chunk, order] : victims) {
    if (auto erased = txn->erase(dbs.dedup, chunk); !erased) return std::unexpected(format::store_error(erased.error()));
    if (auto erased = txn->erase(dbs.dedup_order, order); !erased) {
      return std::unexpected(format::store_error(erased.error()));
    }
  }
  if (auto committed = txn->commit(); !committed) return std::unexpected(format::store_error(committed.error()));
  return victims.size();
}

Result<std::uint64_t> DedupIndex::size() const {
  auto txn = store_->environment().begin_read();
  if (!txn) return std::unexpected(format::store_error(txn.error()));
  auto count = txn->count(store_->databases().dedup);
  if (!count) return std::unexpected(format::store_error(count.error()));
  return *count;
}

}  // namespace bucketfs::cache
