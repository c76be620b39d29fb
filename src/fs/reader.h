#pragma once
// Reads of one open remote file (a xet hash and size that do not change while it is open)
// (DESIGN.md "A read").
//
// Sequential reading streams: once contiguous reads add up to 4 MiB (at once for a read from
// offset 0), ONE background download of the rest of the file (Downloader::read_range
// from that offset to the end: one reconstruction request, parallel verified range fetches,
// whole xorbs into the chunk cache) into a ring buffer of `ring_bytes`; reads take their bytes
// from the ring as they arrive, and the download waits while the ring is full. So the network,
// decompression and hashing run ahead of the application, within bounded memory.
//
// A file no larger than the ring, read from its start, is downloaded whole and its bytes are
// handed out only after its file hash checked (so chunks in xorbs shared with other files, which
// no xorb hash covers, are verified too). In a larger file the stream's first bytes wait for its
// first fetch (a whole xorb, verified), so a small first read at offset 0 is also fetched alone,
// as a random read is, and answered at once (time to first byte).
//
// Any other read is random: its bytes are fetched alone (at least 128 KiB, doubling while reads
// stay contiguous, and kept for the next read) and nothing is prefetched; a stream far from the
// read is cancelled. From the second such read on, a read whose chunks are all in the chunk
// cache is planned without the server (Downloader::read_from_cache) and reads only the chunks
// holding its bytes. Reads a little behind the stream (the
// kernel's readahead arrives out of order) are served from the bytes the ring still holds.
//
// Ring buffers come from a WindowPool shared by every reader of a mount and are reused (fresh
// pages are expensive here: PERF-NOTES trap 1).
//
// Thread-safety: read() may be called from several threads; calls are serialized per reader.
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <thread>
#include <vector>

#include "bucketfs/transfer/download.h"
#include "bucketfs/xet/hash.h"

namespace bucketfs::fs {

// Buffers of `capacity` bytes, kept for reuse (at most `keep` idle).
class WindowPool {
 public:
  WindowPool(std::size_t capacity, std::size_t keep) : capacity_(capacity), keep_(keep) {}
  std::unique_ptr<std::byte[]> acquire();
  void release(std::unique_ptr<std::byte[]> buffer);
  std::size_t capacity() const { return capacity_; }

 private:
  std::size_t capacity_;
  std::size_t keep_;
  std::mutex mutex_;
  std::vector<std::unique_ptr<std::byte[]>> idle_;
};

class RemoteReader {
 public:
  RemoteReader(transfer::Downloader& downloader, WindowPool& pool, xet::Hash hash, std::uint64_t size);
  ~RemoteReader();  // cancels and joins a stream
  RemoteReader(const RemoteReader&) = delete;
  RemoteReader& operator=(const RemoteReader&) = delete;

  // Hands file bytes [offset, min(offset + length, size)) to `reply` (one call, valid during it;
  // empty at or past the end). An error when the bytes could not be fetched or did not verify.
  transfer::DownloadResult<void> read(std::uint64_t offset, std::size_t length,
                                      const std::function<void(std::span<const std::byte>)>& reply);

 private:
  // The background download of [start, size) into a ring.
  struct Stream {
    std::mutex mutex;
    std::condition_variable changed;
    std::unique_ptr<std::byte[]> ring;
    std::size_t capacity = 0;
    std::uint64_t tail = 0;   // file offset of the oldest byte kept
    std::uint64_t head = 0;   // file offset one past the newest byte received
    std::uint64_t keep_from = 0;  // readers need nothing before this (the download may overwrite it)
    bool done = false;
    bool cancelled = false;
    std::optional<transfer::DownloadError> error;
    std::thread thread;
  };

  void start_stream(std::uint64_t offset);
  void stop_stream();
  // Copies [offset, offset + length) out of the stream if it will hold them; false if not.
  std::optional<transfer::DownloadResult<void>> read_stream(
      std::uint64_t offset, std::size_t length, const std::function<void(std::span<const std::byte>)>& reply);
  transfer::DownloadResult<void> read_direct(std::uint64_t offset, std::size_t length,
                                             const std::function<void(std::span<const std::byte>)>& reply);

  transfer::Downloader& downloader_;
  WindowPool& pool_;
  const xet::Hash hash_;
  const std::uint64_t size_;

  std::mutex mutex_;  // serializes read()
  std::unique_ptr<Stream> stream_;
  std::uint64_t last_end_ = 0;
  std::uint64_t run_bytes_ = 0;  // length of the current run of contiguous reads
  std::vector<std::byte> scratch_;
  // Room for `size` bytes of a direct fetch in direct_ (its bytes are then unspecified). Grown
  // without zeroing: a fresh page costs about 10 µs here (PERF-NOTES trap 1).
  std::byte* direct_room(std::size_t size);

  // The bytes of the last direct fetch, file offsets [direct_start_, direct_start_ + direct_size_).
  std::unique_ptr<std::byte[]> direct_;
  std::size_t direct_capacity_ = 0;
  std::size_t direct_size_ = 0;
  std::uint64_t direct_start_ = 0;
  std::uint64_t direct_reads_ = 0;
};

}  // namespace bucketfs::fs
