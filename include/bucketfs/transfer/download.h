#pragma once
// Downloads of Xet files: a whole file or any byte range, streamed IN FILE ORDER to a sink.
//
// Pipeline (one call):
//   reconstruction (CasClient: v2, v1 fallback; whole file, or the byte range asked)
//   -> xet::plan_read / plan_whole_file
//   -> jobs: maximal runs of consecutive planned terms served by the same fetch entry
//   -> up to `parallel_fetches` worker threads materialize jobs, in job order: from the chunk
//      cache (read in runs of chunks) when every chunk the job needs is cached and verifies, else one GET of the whole
//      signed entry, decoded chunk by chunk AS IT ARRIVES (the compressed bytes are never held
//      whole), every chunk hashed
//   -> the calling thread waits for the jobs in order (the reorder buffer) and hands their
//      pieces, cut by xet::copy_spans, to the sink.
// A fetch entry used by terms that are not consecutive (repeated content) is materialized once
// per run: from the cache when it could be cached, else fetched again. That trades bandwidth in
// a rare case for memory that stays bounded in every case.
//
// Memory: decoded job data lives in pooled buffers (reused across jobs and calls: PERF-NOTES
// trap 1). Before a job starts, the worker reserves an upper bound of its decoded size (from
// the terms' unpacked lengths; kMaxChunkSize per chunk no term covers). Jobs are admitted in
// order and only while the reserved bytes stay within `buffer_budget`, so the bytes of buffers
// in use by one call (in flight + waiting to be emitted) never exceed the budget; a job larger
// than the budget alone runs alone. Add per worker about 2 × kMaxCompressedChunkSize of
// decoder state, and the idle pool (at most `buffer_budget` bytes, shared by the calls of one
// Downloader). Multi-range entries (several ranges behind one signed URL) are buffered whole
// by CasClient before they are split; bucketfs-server never sends them.
//
// Verification (a download never hands out bytes it knows to be wrong):
//  * Structure: every chunk header, compressed frame and size is checked while decoding; each
//    fetched range must decode to exactly its chunk count; xet::copy_spans checks that every
//    term's chunks add up to its unpacked_length. Any failure fails the call (kind corrupt).
//  * Every fetched chunk is hashed (xet::chunk_hash). A fetched range that starts at chunk 0 is
//    checked against its xorb hash: when the xorb hash of its chunks matches, the whole xorb was
//    fetched and is authentic, and its chunks go into the chunk cache. Any other range (a part
//    of a xorb, or a range starting at 0 whose hash does not match, which may be a part too) is
//    NOT cached: the client knows no hash to check it against, and the cache must never hold
//    bytes nobody verified (the cache's own check only proves the bytes are those put).
//  * download_file() also computes the file hash from the (chunk hash, size) of every chunk of
//    every term in order (repeated chunks included), and the total size, and compares both with
//    the expected ones at the end: a mismatch fails the call (kind corrupt) AFTER the bytes were
//    streamed. Callers must therefore write to a temporary file and rename it only on success.
//    read_range() has no such end-to-end check: a byte range of a file whose xorbs are fetched in
//    parts is verified structurally only (see "Gaps" in the report / the caller's docs).
//  * Cache hits were verified by ChunkCache, which hashes every chunk it returns and compares
//    it with the hash stored at put(); for download_file those verified hashes (with the sizes)
//    feed the file hash, so a cached chunk is hashed once, not twice.
//  * A fetch whose bytes fail these checks (framing, decompression, sizes, a body of the wrong
//    length) is fetched again, up to `max_refetches` times per job; then the call fails (kind
//    corrupt). Nothing of a failed fetch is cached or handed to the sink.
//  * A range that cannot be checked against its xorb hash (a part of a xorb) is, with
//    `confirm_unverified`, fetched twice and used only when two fetches give the same chunk
//    hashes (else fetched again, within `max_refetches`, until one agrees with any earlier one).
//    That catches bytes damaged in transit (a proxy, the injected faults of bucketfs-server),
//    not a xorb damaged at rest on the server: the protocol gives clients no hash of a part of
//    a xorb. It doubles the transfer of such ranges. Ranges verified by their xorb hash are
//    fetched once.
//
// Signed URLs: a fetch answered 403 (url_expired) makes the call fetch the reconstruction again
// (at most `max_reconstruction_refreshes` times per call), take the new URLs of the same entries
// and retry.
//
// Threads: a Downloader may serve several calls at once from different threads. The sink runs
// on the calling thread only, in order, one call at a time. Errors are values; nothing throws
// across this interface (a throwing sink is not supported).

#include <cstddef>
#include <cstdint>
#include <expected>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "bucketfs/cache/chunk_cache.h"
#include "bucketfs/http/http.h"
#include "bucketfs/hub/cas_client.h"
#include "bucketfs/xet/hash.h"
#include "bucketfs/xet/reconstruction.h"

namespace bucketfs::transfer {

enum class DownloadErrorKind {
  hub,               // the reconstruction or a fetch failed (see hub_kind), after the transport's retries
  corrupt,           // the bytes did not verify (framing, decompression, sizes, xorb or file hash)
  cancelled,         // the CancellationToken fired, or the sink returned false
  invalid_argument,  // e.g. a range that ends before it starts
};

std::string_view to_string(DownloadErrorKind kind);

struct DownloadError {
  DownloadErrorKind kind = DownloadErrorKind::hub;
  hub::HubErrorKind hub_kind = hub::HubErrorKind::server;  // meaningful for kind hub only
  std::string message;  // one line, safe to log (no tokens, no signed query strings)

  std::string describe() const;
};

template <typename T>
using DownloadResult = std::expected<T, DownloadError>;

// Receives the file bytes in order, in pieces; the span is valid only during the call. Return
// false to stop (the call fails with kind cancelled).
using ByteSink = std::function<bool(std::span<const std::byte>)>;

struct DownloaderOptions {
  std::size_t parallel_fetches = 4;  // worker threads per call; >= 1
  // Bytes of decoded data one call may hold (jobs in flight + waiting in order), see the top.
  std::size_t buffer_budget = std::size_t{256} << 20;
  int max_reconstruction_refreshes = 2;
  // Fetches of a job again after bytes that did not verify or unverifiable fetches that disagree.
  int max_refetches = 3;
  // Confirm every range that cannot be verified by its xorb hash with a second fetch (see the top).
  bool confirm_unverified = true;
  // Cancels every call of this Downloader (may be null; must outlive the Downloader).
  const http::CancellationToken* cancel = nullptr;
  // When not 0: at construction, one decode buffer of this many bytes and one fetch worker's
  // scratch are allocated, their pages touched, and kept for the calls. A page touched for the
  // first time costs about 10 µs here (PERF-NOTES trap 1), which a mount's first read (its time
  // to first byte) would otherwise pay: about 0.7 ms for its first 128 KiB fetch.
  std::size_t warm_buffer_bytes = 0;
};

// Cumulative over every call of one Downloader.
struct DownloadStats {
  std::uint64_t bytes_fetched = 0;          // xorb bytes received from the network
  std::uint64_t bytes_from_cache = 0;       // decoded chunk bytes read from the chunk cache
  std::uint64_t bytes_delivered = 0;        // bytes handed to sinks
  std::uint64_t fetches = 0;                // signed-URL GETs that completed
  std::uint64_t cache_jobs = 0;             // jobs served wholly from the cache
  std::uint64_t chunks_cached = 0;          // chunks put into the cache
  std::uint64_t uncached_ranges = 0;        // fetched ranges not cached (unverifiable part of a xorb)
  std::uint64_t reconstruction_refreshes = 0;  // after url_expired
  std::uint64_t refetches = 0;              // fetches repeated after bytes that did not verify
  std::uint64_t confirmations = 0;          // second fetches of ranges no xorb hash could verify
  std::uint64_t peak_buffer_bytes = 0;      // largest bytes of buffers one call held at once
  std::uint64_t buffers_allocated = 0;      // decode buffers allocated by calls (none idle would do)
  std::uint64_t peak_in_flight = 0;         // most jobs materializing at once in one call
  std::uint64_t reads_from_cache = 0;       // read_from_cache() calls served (no request)
  std::uint64_t layouts_fetched = 0;        // whole-file reconstructions fetched for read_from_cache()
};

class Downloader {
 public:
  // `cas` (and `cache`, when not null) must outlive the Downloader. Without a cache every job is
  // fetched.
  Downloader(hub::CasClient& cas, cache::ChunkCache* cache, DownloaderOptions options = {});
  ~Downloader();
  Downloader(const Downloader&) = delete;
  Downloader& operator=(const Downloader&) = delete;

  // Streams the whole file to `sink` and verifies its hash and size (see the top: on an error
  // of kind corrupt, bytes already streamed are wrong). The empty file (size 0 or zero hash)
  // makes no request and calls no sink.
  DownloadResult<void> download_file(const xet::Hash& file_hash, std::uint64_t file_size, const ByteSink& sink);

  // Streams file bytes [range.start, min(range.end, file_size)) to `sink`. An empty or past-the-end
  // range makes no request. kind invalid_argument when range.end < range.start.
  DownloadResult<void> read_range(const xet::Hash& file_hash, std::uint64_t file_size, xet::FileByteRange range,
                                  const ByteSink& sink);

  // Streams file bytes [range.start, min(range.end, file_size)) to `sink` from the chunk cache
  // alone, planned without the server: from the file's layout (the terms of its whole-file
  // reconstruction, fetched once per file, kept for the last kLayouts files read this way) and
  // the chunk sizes in the cache index, only the chunks holding the range are read (verified
  // by the cache). So a random read of a cached file makes no request and reads one or two
  // chunks, not the window a reconstruction answer rounds it to.
  // Returns false, having called no sink, when it cannot: no cache, a range over
  // kMaxCacheRead, a chunk not cached, a layout that could not be fetched or does not add up to
  // `file_size`. The caller then uses read_range(), which reports real errors. An error only
  // when the sink stops (kind cancelled).
  static constexpr std::size_t kLayouts = 32;
  static constexpr std::uint64_t kMaxCacheRead = std::uint64_t{8} << 20;
  DownloadResult<bool> read_from_cache(const xet::Hash& file_hash, std::uint64_t file_size, xet::FileByteRange range,
                                       const ByteSink& sink);

  DownloadStats stats() const;

  struct Impl;  // private; defined in download.cc

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace bucketfs::transfer
