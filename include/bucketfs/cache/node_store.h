#pragma once
// The node-local store: one directory (`--cache-dir`, mode 0700) holding ONE LMDB environment
// shared by every mount and process on the node, and the chunk cache's data files beside it.
// The layout and every record are described in docs/CACHE_FORMAT.md.
//
//   CACHE_DIR/            0700
//     data.mdb, lock.mdb  0600  the LMDB environment (all named databases below)
//     chunks/             0700  chunk cache segments: <16 hex digits>.seg, 0600
//
// Named databases, opened once by open():
//   meta            counters and the format version
//   segments        segment id -> segment record (size, recency, owner)
//   chunks          xorb hash ‖ chunk index -> where the chunk's bytes are and their hash
//   segment_chunks  segment id ‖ offset -> chunk key (the reverse index eviction walks)
//   dedup           chunk hash -> xorb hash, chunk index, size, insertion sequence
//   dedup_order     insertion sequence -> chunk hash (FIFO bound of dedup)
//   journal         staging file name -> a file written on a mount and not yet committed
//                   (cache/journal.h)
//
// Durability: the environment is opened with MDB_NOMETASYNC. Every commit flushes its data
// pages, so neither a process crash nor an OS crash can corrupt the database; an OS crash may
// roll back the most recent commit(s). The cache accepts that (it may lose entries). A writer
// that must not lose a commit (the journal) calls sync() after committing.
//
// Processes: LMDB coordinates processes through lock.mdb. LMDB forbids opening one environment
// twice in a process (closing either copy drops the process's POSIX locks), so open() keeps a
// per-process registry and returns the already open instance for the same directory.
//
// Thread-safety: all methods may be called from any thread. Read transactions are MDB_NOTLS
// (usable by one thread at a time, not bound to one); LMDB runs one writer at a time,
// node-wide.

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <tuple>

#include "bucketfs/cache/error.h"
#include "bucketfs/lmdb/lmdb.h"

namespace bucketfs::cache {

class NodeStore {
 public:
  struct Options {
    // Address space reserved for data.mdb; the file grows only as records are added.
    std::size_t map_size = std::size_t{64} << 30;
    // Reader slots, shared by all processes using the directory (one per open read txn).
    unsigned max_readers = 1022;
    // Bound of the dedup index in entries (≈200 bytes of data.mdb each with slack: the default
    // 4 Mi entries, 256 GiB of 64 KiB chunks, costs at most ≈0.8 GiB). Oldest insertions go first.
    std::uint64_t dedup_max_entries = std::uint64_t{1} << 22;
  };

  // The named databases; handles are valid for the store's lifetime.
  struct Databases {
    lmdb::Database meta;
    lmdb::Database segments;
    lmdb::Database chunks;
    lmdb::Database segment_chunks;
    lmdb::Database dedup;
    lmdb::Database dedup_order;
    lmdb::Database journal;
  };

  // Opens (creating if needed) the store in `directory`. Missing parents are created 0700; an
  // existing directory owned by this user is tightened to 0700, one owned by someone else is
  // refused. A second open of the same directory in the same process returns the same instance
  // (its options win). Fails with kFormat when the directory holds another format version.
  static Result<std::shared_ptr<NodeStore>> open(const std::filesystem::path& directory,
                                                 const Options& options);
  static Result<std::shared_ptr<NodeStore>> open(const std::filesystem::path& directory) {
    return open(directory, Options{});
  }

  NodeStore(const NodeStore&) = delete;
  NodeStore& operator=(const NodeStore&) = delete;
  ~NodeStore();

  const std::filesystem::path& directory() const { return directory_; }
  // Where chunk cache segments live (created 0700 by open()).
  std::filesystem::path chunk_directory() const { return directory_ / "chunks"; }
  const Options& options() const { return options_; }
  const Databases& databases() const { return databases_; }
  lmdb::Environment& environment() { return *env_; }
  const lmdb::Environment& environment() const { return *env_; }

  // Forces everything committed so far to disk (meta page included).
  Result<void> sync();

  // Unmaps the index pages this process has touched (lmdb::Environment::release_mapped_pages):
  // a long-running daemon calls it now and then, so its resident set does not grow with the
  // chunks it has read or written (about 12 MiB per GiB read, 4 MiB per GiB written).
  Result<void> release_mapped_pages();

  // (process id, device, inode) of an open store; see open().
  using RegistryKey = std::tuple<pid_t, dev_t, ino_t>;

 private:
  NodeStore(std::filesystem::path directory, Options options, lmdb::Environment env, Databases dbs,
            RegistryKey key);

  std::filesystem::path directory_;
  Options options_;
  std::optional<lmdb::Environment> env_;  // always set until the destructor closes it
  Databases databases_;
  RegistryKey key_;
};

// The format version this build reads and writes (meta "format"). A store of version 1 (chunk
// entries without group values) is opened and marked 2: its entries are read as they are.
inline constexpr std::uint32_t kCacheFormatVersion = 2;

}  // namespace bucketfs::cache
