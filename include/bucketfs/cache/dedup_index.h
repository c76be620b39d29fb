#pragma once
// The node-local dedup index: chunk hash -> where this node has seen the chunk (an xorb and the
// chunk's index in it) and its uncompressed size, which is what an upload needs to reference
// the chunk in a file reconstruction instead of uploading it again. Fed with chunks this node
// uploaded (put_many after the xorb is stored) and downloaded (ChunkCache with feed_dedup).
//
// Bound: at most NodeStore::Options::dedup_max_entries entries; inserting past it drops the
// oldest insertions first (FIFO; putting a chunk again refreshes it).
//
// Thread-safety: all methods may be called concurrently. put_many is one LMDB write
// transaction with a synced commit (milliseconds): call it per xorb or range, not per chunk.

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "bucketfs/cache/error.h"
#include "bucketfs/cache/node_store.h"
#include "bucketfs/xet/hash.h"

namespace bucketfs::cache {

struct DedupEntry {
  xet::Hash xorb;
  std::uint32_t chunk_index = 0;
  std::uint32_t size = 0;  // uncompressed bytes
  bool operator==(const DedupEntry&) const = default;
};

struct DedupRecord {
  xet::Hash chunk;  // the chunk hash (key)
  DedupEntry entry;
};

class DedupIndex {
 public:
  explicit DedupIndex(std::shared_ptr<NodeStore> store) : store_(std::move(store)) {}

  // Inserts or refreshes every record, in one transaction.
  Result<void> put_many(std::span<const DedupRecord> records);
  Result<std::optional<DedupEntry>> get(const xet::Hash& chunk) const;
  // One lookup per hash, in one read transaction; result i answers chunks[i].
  Result<std::vector<std::optional<DedupEntry>>> get_many(std::span<const xet::Hash> chunks) const;
  Result<std::uint64_t> size() const;

  // Removes every entry that points into one of `xorbs`, in one transaction, and returns how
  // many it removed. For xorbs the server no longer has (it refused a shard referencing them):
  // without this, every later upload of those chunks would be refused the same way. It scans the
  // whole index (up to dedup_max_entries, about a second at the default bound), so it is meant
  // for that rare case, not for routine trimming.
  Result<std::uint64_t> forget_xorbs(std::span<const xet::Hash> xorbs);

 private:
  std::shared_ptr<NodeStore> store_;
};

}  // namespace bucketfs::cache
