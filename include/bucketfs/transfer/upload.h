#pragma once
// Dedup upload of files to a bucket (DESIGN.md "A write", xet-spec upload-protocol.md and
// deduplication.md).
//
// Pipeline of one file (UploadSession::add_file), all on the calling thread except where noted:
//   1. The source is read in pieces of UploadOptions::read_piece into pooled blocks (a chunk never
//      straddles two blocks: the open chunk's bytes are carried to the next block), and each
//      block is chunked and hashed by xet::chunk_and_hash, which splits a block of 1 MiB or more
//      between the calling thread and one helper thread (the xet-core chunker and hashes).
//   2. Each chunk is looked up in this session's chunks, the node-local DedupIndex (one get_many
//      per block) and the answers of global dedup queries received so far. The first chunk of a
//      file and EVERY chunk with an xet::hash_is_global_dedup_eligible hash that is not already
//      known are asked with CasClient::dedup_query on background threads, in file order, as soon
//      as they are chunked (UploadOptions::max_dedup_queries in flight, the rest queued); an
//      answer's xorbs (chunk hashes keyed with its footer key, matched with
//      xet::keyed_chunk_hash) are remembered for every later chunk of the session.
//   3. Decision rule. Chunks are decided in file order. A chunk is decided when it is known
//      (session, DedupIndex, answers), or when the first query at or after it and every query
//      before that one have been answered (an answer also covers the chunks before the queried
//      one: a hit brings the whole shard that registered it), or at the end of the file once
//      every query has been answered. So new data with no hits is decided, and its xorbs sent,
//      as soon as the next eligible chunk's query (and all before it) answered.
//      Holding: the bytes of undecided chunks stay in read blocks, at most dedup_window bytes.
//      When the window is full and the source is sequential, the oldest chunks are decided with
//      what is known (after waiting dedup_wait for queries in flight). When the source is
//      seekable, the oldest block's bytes are dropped instead and its chunks keep waiting as
//      metadata (at most max_held_chunks, then as sequential); a dropped chunk that turns out
//      new is re-read with UploadSource::read_at and its hash checked before it is packed.
//   4. A chunk nobody has is packed into the open xorb (xet::XorbBuilder); a full xorb is handed
//      to UploadOptions::parallel_uploads worker threads that POST it while chunking goes on.
//      Every uploaded xorb's chunks go into the DedupIndex (one put_many per xorb).
//   5. Consecutive chunks of one xorb with consecutive indices form one term; each term's
//      verification hash is computed when it closes, and the file hash with an
//      AggregatedHasher, so no per-chunk list of the file is kept.
// UploadSession::finish uploads the last xorb, waits for every xorb, then uploads ONE shard with
// the file infos of every file added to the session and the CAS infos of the new xorbs.
//
// Memory: at most dedup_window + 2 read blocks of chunk data, one chunk buffer for re-reads and
// parallel_uploads + 1 xorb buffers (xorb buffers are recycled, read blocks pooled) plus
// per-chunk metadata: of the session (terms, and the hashes of chunks this session uploaded,
// capped by max_session_chunks) and of undecided chunks (capped by max_held_chunks). With an
// UploadBufferPool, the blocks and xorb buffers outlive the session, for the next one.
//
// Thread-safety: an UploadSession and an Uploader are used by one thread at a time; they start
// and join their own worker threads.

#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <expected>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "bucketfs/cache/dedup_index.h"
#include "bucketfs/http/http.h"
#include "bucketfs/hub/cas_client.h"
#include "bucketfs/hub/hub_client.h"
#include "bucketfs/naming/naming.h"
#include "bucketfs/xet/compression.h"
#include "bucketfs/xet/hash.h"
#include "bucketfs/xet/xorb.h"

namespace bucketfs::transfer {

enum class UploadErrorKind {
  source,     // the source failed to read
  remote,     // a CAS or Hub call failed (see `hub`)
  rejected,   // the commit was answered but refused (batch failures)
  internal,   // a builder refused what we built (a bug)
  cancelled,  // the CancellationToken fired
};

struct UploadError {
  UploadErrorKind kind = UploadErrorKind::internal;
  std::string message;               // one line, token-free
  std::optional<hub::HubError> hub;  // for kind remote
  // The server refused the shard (400) and the session had referenced chunks through the node's
  // DedupIndex: the index may name xorbs the server no longer has (its store was wiped, the xorb
  // was garbage-collected, or the cache dir is shared with another server). Those xorbs'
  // entries were removed from the index, so the same upload again does not reference them.
  bool stale_local_dedup = false;

  std::string describe() const;
};

template <typename T>
using UploadResult = std::expected<T, UploadError>;

// Pulls the next bytes of a file into `buffer`: returns how many were written, 0 at the end of
// the file, or an error message. Called from the thread that calls add_file, never concurrently.
using UploadRead = std::function<std::expected<std::size_t, std::string>(std::span<std::byte> buffer)>;
// Reads the bytes at `offset` of the stream the UploadRead returns (offset 0 = its first byte)
// into `buffer`, without moving the stream: how many were written (short only at the end).
using UploadReadAt =
    std::function<std::expected<std::size_t, std::string>(std::uint64_t offset, std::span<std::byte> buffer)>;

// A file to upload: a sequential reader and, when the file can be read again (a regular file,
// bytes in memory), a positional reader. With one, the pipeline need not keep the bytes of chunks
// waiting for global dedup answers: it keeps their metadata only and re-reads (and re-hashes)
// the new ones when they are packed, so a pending answer never forces an upload (see step 3).
//
// A source built from a callable of the UploadRead signature alone is sequential. A wrapper (a
// progress counter, say) keeps a source seekable by passing its positional reader on:
// UploadSource(counting_read, original.read_at). Re-read bytes are always checked against their
// chunk hash, so a positional reader that disagrees with the sequential one, or a file changed
// during the upload, fails the upload with a source error instead of storing wrong data.
class UploadSource {
 public:
  UploadSource() = default;
  template <typename F>
    requires(!std::same_as<std::remove_cvref_t<F>, UploadSource> &&
             std::is_invocable_r_v<std::expected<std::size_t, std::string>, F&, std::span<std::byte>>)
  UploadSource(F read) : read_(std::move(read)) {}  // NOLINT: implicit, sequential only
  UploadSource(UploadRead read, UploadReadAt read_at);

  std::expected<std::size_t, std::string> operator()(std::span<std::byte> buffer) const;
  bool seekable() const { return read_at_ != nullptr; }
  // Requires seekable().
  std::expected<std::size_t, std::string> read_at(std::uint64_t offset, std::span<std::byte> buffer) const {
    return (*read_at_)(offset, buffer);
  }
  const std::shared_ptr<const UploadReadAt>& positional() const { return read_at_; }

 private:
  UploadRead read_;
  std::shared_ptr<const UploadReadAt> read_at_;
};

// A source reading `fd` from its current position to its end (read(2), EINTR retried). The fd
// is not owned and must stay open while the source is used. When `fd` is a regular file the
// source is seekable (pread(2) at the starting position plus the offset); nothing else may move
// or change the file while the upload runs (changed bytes fail the upload, see UploadSource).
UploadSource fd_source(int fd);
// A seekable source over bytes that must stay valid while the source is used.
UploadSource memory_source(std::span<const std::byte> bytes);

// Idle read blocks and xorb buffers kept between upload sessions, so a process that uploads file
// after file (a mount) reuses pages it has already touched: a page touched for the first time costs
// about 10 µs here (PERF-NOTES trap 1), some 20,000 of them (0.2 s) for each 1 GiB file of a mount
// otherwise. At most `max_idle_bytes` are kept; a session takes from it before allocating and
// gives its buffers back when it ends. Thread-safe; must outlive the sessions that use it.
class UploadBufferPool {
 public:
  explicit UploadBufferPool(std::size_t max_idle_bytes) : max_idle_bytes_(max_idle_bytes) {}
  UploadBufferPool(const UploadBufferPool&) = delete;
  UploadBufferPool& operator=(const UploadBufferPool&) = delete;

  // An idle block of exactly `size` bytes (contents unspecified), or null.
  std::unique_ptr<std::byte[]> take_block(std::size_t size);
  void give_block(std::unique_ptr<std::byte[]> block, std::size_t size);
  // An idle xorb buffer (empty, its capacity kept), or an empty one without capacity.
  xet::Bytes take_xorb_buffer();
  void give_xorb_buffer(xet::Bytes buffer);

  std::size_t idle_bytes() const;

 private:
  mutable std::mutex mutex_;
  const std::size_t max_idle_bytes_;
  std::size_t idle_bytes_ = 0;                                                  // GUARDED_BY(mutex_)
  std::vector<std::pair<std::unique_ptr<std::byte[]>, std::size_t>> blocks_;  // GUARDED_BY(mutex_)
  std::vector<xet::Bytes> xorb_buffers_;                                       // GUARDED_BY(mutex_)
};

struct UploadOptions {
  std::size_t parallel_uploads = 2;  // xorb POSTs in flight, >= 1
  // Serialized (and uncompressed) bytes per new xorb, at most xet::kMaxXorbSize (the CAS limit,
  // xet-core's size). Smaller xorbs bound the memory of the xorb being built and of those in
  // flight ((parallel_uploads + 1) of them) at the cost of more POSTs and terms.
  std::size_t max_xorb_bytes = xet::kMaxXorbSize;
  bool global_dedup = true;          // ask the global dedup API for eligible chunks
  // Look chunks up in the DedupIndex. false: the index only records the session's new xorbs
  // (an upload again after UploadError::stale_local_dedup).
  bool local_dedup_lookups = true;
  xet::CompressionPolicy compression = xet::CompressionPolicy::kPredicted;
  std::size_t read_piece = std::size_t{8} << 20;     // bytes per read into a block
  // Chunk bytes held for pending dedup answers. A sequential source decides the oldest chunks
  // with what is known when it is full; a seekable one drops their bytes and keeps waiting.
  std::size_t dedup_window = std::size_t{64} << 20;
  std::size_t max_dedup_queries = 4;  // in flight; further eligible chunks queue in file order
  // How long a full window of a sequential source waits for answers in flight before deciding
  // without them.
  std::chrono::milliseconds dedup_wait{500};
  // Undecided chunks of a seekable source kept as metadata only (64 bytes each). Beyond it the
  // oldest are decided with what is known, as for a sequential source.
  std::size_t max_held_chunks = std::size_t{2} << 20;
  // Chunks this session uploaded that later chunks (of any file) may reference. Beyond it new
  // chunks are still uploaded but no longer remembered.
  std::size_t max_session_chunks = std::size_t{1} << 20;
  // Where sessions take and return their buffers (may be null: each session allocates its own).
  UploadBufferPool* buffer_pool = nullptr;

  // The bound on buffered bytes (UploadStats::peak_buffered_bytes) these options imply.
  std::uint64_t memory_budget() const;
};

// What one file's upload did.
struct UploadStats {
  xet::Hash file_hash;  // xet-core's file hash; zero for the empty file
  std::uint64_t size = 0;
  std::uint64_t chunks = 0;
  std::uint64_t new_chunks = 0;             // packed into new xorbs
  std::uint64_t new_chunk_bytes = 0;        // their uncompressed bytes
  std::uint64_t session_dedup_chunks = 0;   // found among chunks this session uploaded
  std::uint64_t local_dedup_chunks = 0;     // found in the DedupIndex
  std::uint64_t global_dedup_chunks = 0;    // found in global dedup answers
  std::uint64_t dedup_queries = 0;          // global dedup queries sent
  std::uint64_t dedup_query_hits = 0;       // ... answered with a shard
  bool seekable = false;                    // the source could be re-read
  std::uint64_t reread_bytes = 0;           // new chunk bytes read a second time (seekable)
  std::uint64_t peak_held_chunks = 0;       // most undecided chunks at once
  std::uint64_t terms = 0;
};

// Session totals, complete after finish().
struct SessionStats {
  std::uint64_t files = 0;
  std::uint64_t xorbs_uploaded = 0;
  std::uint64_t xorb_bytes_sent = 0;  // serialized bytes of the xorbs POSTed (each once)
  std::uint64_t shard_bytes = 0;
  // Highest sum of read blocks, held chunk data and xorb buffers alive at once.
  std::uint64_t peak_buffered_bytes = 0;
  std::uint64_t dedup_index_errors = 0;  // DedupIndex failures (ignored: dedup is optional)
  std::uint64_t dedup_query_errors = 0;  // failed global dedup queries (ignored likewise)
  std::uint64_t pooled_blocks = 0;        // read blocks taken from options.buffer_pool
  std::uint64_t pooled_xorb_buffers = 0;  // xorb buffers taken from options.buffer_pool
};

// Several files, one shard. `cas` must hold a write token source; `dedup_index` may be null.
// Both must outlive the session.
class UploadSession {
 public:
  UploadSession(hub::CasClient& cas, cache::DedupIndex* dedup_index, UploadOptions options = {});
  ~UploadSession();  // cancels and joins what is in flight if finish() was not called
  UploadSession(const UploadSession&) = delete;
  UploadSession& operator=(const UploadSession&) = delete;

  // Uploads the new chunks of one file (its xorbs may still be in flight when this returns) and
  // records its reconstruction for the shard. The file is registered only by finish().
  // After an error the session is unusable.
  UploadResult<UploadStats> add_file(const UploadSource& source, const http::CancellationToken* cancel = nullptr);

  // Uploads the last xorb, waits for all xorbs, then uploads the shard. Afterwards the file
  // hashes returned by add_file may be committed. Call once.
  UploadResult<SessionStats> finish(const http::CancellationToken* cancel = nullptr);

  const SessionStats& stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

struct UploadedFile {
  UploadStats file;
  SessionStats session;
};

// One file per session, then an optional commit with HubClient::batch.
class Uploader {
 public:
  // `cas` (write token of `bucket`'s CAS), `hub`, and `dedup_index` (may be null) must outlive it.
  Uploader(hub::CasClient& cas, hub::HubClient& hub, cache::DedupIndex* dedup_index, UploadOptions options = {});

  // add_file + finish of a fresh session. An upload refused for stale dedup index entries
  // (UploadError::stale_local_dedup) is run once more, without index lookups, when the source
  // is seekable; a sequential source's caller gets the error and may upload again.
  UploadResult<UploadedFile> upload(const UploadSource& source, const http::CancellationToken* cancel = nullptr);

  // One batch addFile of `path` -> `file_hash` (after its shard is uploaded).
  UploadResult<void> commit(const naming::BucketId& bucket, const std::string& path, const xet::Hash& file_hash,
                            std::optional<std::int64_t> mtime_ms = std::nullopt,
                            const http::CancellationToken* cancel = nullptr);

  UploadResult<UploadedFile> upload_and_commit(const naming::BucketId& bucket, const std::string& path,
                                               const UploadSource& source,
                                               std::optional<std::int64_t> mtime_ms = std::nullopt,
                                               const http::CancellationToken* cancel = nullptr);

 private:
  hub::CasClient& cas_;
  hub::HubClient& hub_;
  cache::DedupIndex* dedup_index_;
  UploadOptions options_;
};

}  // namespace bucketfs::transfer
