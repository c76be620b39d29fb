#pragma once
// The write journal: every file a mount has closed (or truncated) and not yet committed to its
// bucket, recorded in the NodeStore's LMDB `journal` database (docs/CACHE_FORMAT.md), so that a
// crash of the daemon or the machine loses nothing a program was told was written.
//
// A record names the staging file (its name is the key, unique within the cache dir) and where
// its bytes go: bucket, path, the remote version they were based on, mtime, size, and the
// daemon that owns it. The mount writes a record after the staging file's bytes are fdatasync'ed
// and removes it after the commit; put() and remove() return only once the record (or its
// removal) is on disk (NodeStore::sync()).
//
// Recovery: a mount starting on a cache dir replays the records of its bucket whose owner is no
// longer running (see Owner).
//
// Thread-safety: every method may be called from any thread and any process.
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "bucketfs/cache/error.h"
#include "bucketfs/cache/node_store.h"
#include "bucketfs/xet/hash.h"
#include "bucketfs/xet/reconstruction.h"

namespace bucketfs::cache {

// Identifies a running daemon across pid reuse: its pid and its start time in clock ticks since
// boot (/proc/PID/stat field 22), and the boot it belongs to (/proc/sys/kernel/random/boot_id).
struct Owner {
  std::int64_t pid = 0;
  std::uint64_t start_ticks = 0;
  std::string boot_id;

  static Owner self();
  // Whether the process this names is still running.
  bool alive() const;
  bool operator==(const Owner&) const = default;
};

// A staged file that holds only some of its bytes: one opened for writing without O_TRUNC
// starts as the committed version it was opened from without fetching that version. The staging
// file then has the file's size but holds only the bytes written since (`written`); the other
// bytes below `limit` are the committed version's (`hash`, `size`), still to fetch, and those at
// or past `limit` (where a truncate cut the version) are zeros, as the staging file's holes are.
struct UnfetchedBase {
  xet::Hash hash;
  std::uint64_t size = 0;
  std::uint64_t limit = 0;
  std::vector<xet::FileByteRange> written;  // sorted, disjoint and not touching; none empty
  // Bytes of the version fetched into the staging file since it was staged (same form). Kept in
  // memory only, never recorded: they may not be synced yet, and a recovery fetches them again.
  std::vector<xet::FileByteRange> fetched;

  // Records that the staging file holds bytes [start, end) written since it was staged.
  void add_written(std::uint64_t start, std::uint64_t end);
  // Records that the staging file holds the version's bytes [start, end).
  void add_fetched(std::uint64_t start, std::uint64_t end);
  // The file is cut (or extended) to `new_size`: bytes past it are no longer the version's.
  void truncate(std::uint64_t new_size);
  // The parts of [start, end) that are the version's and neither written nor fetched, in order.
  std::vector<xet::FileByteRange> missing(std::uint64_t start, std::uint64_t end) const;
  std::vector<xet::FileByteRange> missing() const { return missing(0, limit); }
  bool operator==(const UnfetchedBase&) const = default;
};

struct JournalRecord {
  std::string staging_name;        // file name in the staging directory (the key)
  std::string bucket;              // ns/name
  std::string path;                // key in the bucket
  std::optional<xet::Hash> base;   // the committed version the bytes started from; none for a new file
  // Versions the same mount was committing when this one was made from them: the bucket holding
  // one of them is not a foreign change either (no conflict copy).
  std::vector<xet::Hash> also_bases;
  std::int64_t mtime_ms = 0;
  std::uint64_t size = 0;
  // Set when the staging file lacks bytes of the version it was opened from: recovery fetches
  // them (by hash, from the bucket's store) before it uploads.
  std::optional<UnfetchedBase> unfetched;
  Owner owner;
  // Orders records (set by put()): nanoseconds of the real-time clock when put() wrote it, or one
  // more than the last sequence put() stamped in this store when that is higher (the clock stepped
  // back), so a later put() always has the higher sequence.
  std::uint64_t sequence = 0;
};

class Journal {
 public:
  explicit Journal(std::shared_ptr<NodeStore> store) : store_(std::move(store)) {}

  // Adds or replaces the record of `record.staging_name`, durably, stamping its sequence.
  Result<void> put(JournalRecord record);
  // Removes the record (absent is fine), durably.
  Result<void> remove(const std::string& staging_name);
  // Removes every named record (absent ones are fine) in one transaction and one sync: what a
  // commit of many small files costs once instead of once per file.
  Result<void> remove_many(std::span<const std::string> staging_names);
  // Every record, in key order. Malformed records are skipped (and reported as kFormat only
  // when nothing else could be read).
  Result<std::vector<JournalRecord>> list() const;

 private:
  std::shared_ptr<NodeStore> store_;
};

// The record's value encoding (JSON), exposed for tests.
std::string encode_journal_record(const JournalRecord& record);
Result<JournalRecord> decode_journal_record(std::string_view key, std::string_view value);

}  // namespace bucketfs::cache
