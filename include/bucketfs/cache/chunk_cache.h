#pragma once
// The node-local chunk cache: decompressed xorb chunks keyed by (xorb hash, chunk index), each
// stored with its chunk hash, in append-only segment files indexed in the NodeStore's LMDB
// environment (docs/CACHE_FORMAT.md).
//
// Reads never return wrong bytes: every chunk read back is hashed (xet::chunk_hash) and
// compared with the hash stored at put(); get_part() hashes only the 16 KiB groups it reads
// and checks them against the same hash through the chunk's group values. A mismatch, a short
// read or a missing file counts as a corruption: the entry is dropped and the read reports a
// miss, so the caller refetches.
//
// Writes: put() appends the chunks to this instance's active segment (a file no other
// instance or process writes) and queues the index entries in memory, where get() already sees
// them. A background flusher commits queued entries in one LMDB transaction every
// `flush_interval` (sooner when `flush_bytes` are queued); flush() does it now. Other
// processes see an entry once it is committed. Data is written before its index entry is
// committed; with `sync_data` it is also fdatasync'ed first. After an OS crash an index entry
// may point at bytes that never reached the disk: the hash check turns that into a miss.
//
// I/O: bulk segment traffic bypasses the page cache. put() stages payloads in a reused aligned
// buffer and writes whole 4 KiB blocks with O_DIRECT (only each put's unaligned head and tail
// go through the page cache); raw runs of 256 KiB or more are read back with O_DIRECT through
// a per-thread bounce buffer. Fresh page-cache pages cost several microseconds each on the
// VMs we run on (PERF-NOTES trap 1), so this saves about 2 s of CPU per GiB cached or read
// cold. File systems that refuse O_DIRECT get plain buffered I/O; the file format is the same.
//
// Eviction: whole segments, least recently used first (a segment's recency is the latest
// put or hit of any chunk in it), in the flush transaction, until the committed bytes are
// within `max_bytes`. Hits are noted in memory and written with the next flush (at least every
// `recency_interval`), so a hit costs no write transaction. Disk use may exceed `max_bytes` by
// the bytes queued and not yet committed (at most ≈4 × flush_bytes per instance).
//
// Thread-safety: every method may be called concurrently from any thread. Several ChunkCache
// instances (in one process or many) may share a NodeStore; each writes its own segments.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "bucketfs/cache/error.h"
#include "bucketfs/cache/node_store.h"
#include "bucketfs/xet/bytes.h"
#include "bucketfs/xet/hash.h"

namespace bucketfs::cache {

// One chunk handed to put(). REQUIRES: hash == xet::chunk_hash(data) (a wrong pair is stored
// but never returned: its first read counts as a corruption). `groups`: the chunk's group values
// when the caller has them (xet::chunk_group_values, which also gives the hash); when empty, and
// the chunk has group values, put() hashes the chunk for them. Wrong values, like a wrong hash,
// make reads of the chunk count as corruptions.
struct ChunkData {
  xet::Hash hash;
  xet::ByteSpan data;
  std::span<const xet::Hash> groups = {};
};

// What get_range() read: chunks [first, end) lie back to back in out[0, size). `chunks` holds
// the hash and size of each, in order; every hash was checked against the bytes returned.
struct RangeRead {
  std::uint32_t end = 0;
  std::size_t size = 0;
  std::vector<xet::HashAndSize> chunks;
};

struct ChunkCacheOptions {
  // Byte budget of the committed segment bytes, node-wide (every instance on the node should
  // pass the same value; each enforces it when it flushes).
  std::uint64_t max_bytes = std::uint64_t{10} << 30;
  // zstd level for stored chunks; 0 stores them raw. A chunk is stored raw anyway when
  // compression saves less than 1/32 of it.
  int compression_level = 0;
  // A segment is sealed once it holds this many bytes; 0 picks max_bytes / 16 within
  // [256 KiB, 64 MiB]. Eviction frees a segment at a time.
  std::uint64_t segment_bytes = 0;
  std::chrono::milliseconds flush_interval{200};
  // Queued bytes that wake the flusher early; 0 picks min(segment_bytes, 64 MiB).
  std::uint64_t flush_bytes = 0;
  // Hits alone are written at most this often.
  std::chrono::milliseconds recency_interval{2000};
  // fdatasync segment data before committing the index entries that point at it.
  bool sync_data = false;
  // Also record committed chunks in the dedup index (chunks this node downloaded).
  bool feed_dedup = true;
  // Milliseconds for recency; defaults to the system clock (comparable across processes).
  std::function<std::uint64_t()> clock;
};

struct ChunkCacheStats {
  // Node-wide, as committed in LMDB.
  std::uint64_t max_bytes = 0;
  std::uint64_t used_bytes = 0;        // bytes of indexed segments (what eviction bounds)
  std::uint64_t entries = 0;           // chunks indexed
  std::uint64_t segments = 0;
  std::uint64_t corruptions_total = 0; // corruptions ever detected on this node
  // This instance since open.
  std::uint64_t pending_bytes = 0;     // written, index not yet committed
  std::uint64_t hits = 0;              // chunks served
  std::uint64_t misses = 0;            // lookups that found no entry
  std::uint64_t corruptions = 0;       // entries dropped because their bytes did not verify
  std::uint64_t bytes_served = 0;
  std::uint64_t evicted_segments = 0;
  std::uint64_t evicted_bytes = 0;
};

class ChunkCache {
 public:
  // Starts the cache and its flusher thread. Deletes segment files that no record names
  // (left by a crash) and drops records whose non-empty file is gone.
  static Result<std::unique_ptr<ChunkCache>> open(std::shared_ptr<NodeStore> store,
                                                  ChunkCacheOptions options = {});
  // Stops the flusher and commits what is queued.
  ~ChunkCache();
  ChunkCache(const ChunkCache&) = delete;
  ChunkCache& operator=(const ChunkCache&) = delete;

  // Stores chunks first_index, first_index + 1, ... of `xorb` (a fetched range). Replaces
  // entries already present. Visible to get() in this instance on return.
  Result<void> put(const xet::Hash& xorb, std::uint32_t first_index, std::span<const ChunkData> chunks);

  // Reads one chunk into `out` and returns the bytes (a prefix of `out`, valid while `out` is).
  // nullopt: not cached (or dropped because it did not verify). kBufferTooSmall: the chunk is
  // cached but longer than `out` (xet::kMaxChunkSize always suffices).
  Result<std::optional<xet::ByteSpan>> get(const xet::Hash& xorb, std::uint32_t index,
                                           std::span<std::byte> out);

  // Reads the longest run of cached, verified chunks starting at `first` (and below `last`)
  // that fits in `out`. nullopt when chunk `first` is not cached; kBufferTooSmall when it is
  // but does not fit; kInvalidArgument unless first < last.
  Result<std::optional<RangeRead>> get_range(const xet::Hash& xorb, std::uint32_t first,
                                             std::uint32_t last, std::span<std::byte> out);

  // Reads bytes [offset, offset + out.size()) of chunk `index` into `out`, verified: for a raw
  // chunk of more than one 16 KiB group (xet::chunk_group_count) only the groups holding the
  // bytes are read and hashed, checked against the chunk hash through the group values stored at
  // put(); any other chunk is read and checked whole (an empty `out` reads nothing). Returns
  // out.size(); nullopt when the chunk is not cached or did not verify (then dropped, as in
  // get()). kInvalidArgument when the bytes lie past the chunk's end.
  Result<std::optional<std::size_t>> get_part(const xet::Hash& xorb, std::uint32_t index, std::uint64_t offset,
                                              std::span<std::byte> out);

  // The uncompressed sizes of chunks [first, last) of `xorb`, from the index alone (no segment
  // is read, nothing is verified, no hit is counted): nullopt unless every one is indexed. For
  // planning a read without the server; the bytes are still verified when get_range reads them.
  // kInvalidArgument unless first < last.
  Result<std::optional<std::vector<std::uint32_t>>> chunk_sizes(const xet::Hash& xorb, std::uint32_t first,
                                                                std::uint32_t last);

  // Commits queued entries and recency now (and evicts if over budget).
  Result<void> flush();

  Result<ChunkCacheStats> stats() const;

  const ChunkCacheOptions& options() const;

  struct State;  // private; defined in chunk_cache.cc

 private:
  explicit ChunkCache(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace bucketfs::cache
