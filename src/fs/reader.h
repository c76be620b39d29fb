#pragma once
// Reads of one open remote file (a xet hash and size that do not change while it is open), with
// an adaptive readahead window (DESIGN.md "A read").
//
// A read inside the current window is served from memory. A read that continues where the last
// one ended is sequential: the window doubles (1 MiB up to `max_window`) and the next window is
// fetched in the background while the current one is consumed, so the network, decompression
// and hashing overlap with the application. Any other read is random: the window falls back to
// the bytes asked for (at least 128 KiB) and nothing is prefetched.
//
// Window buffers come from a WindowPool shared by every reader of a mount and are reused (fresh
// pages are expensive here: PERF-NOTES trap 1). A reader holds at most two windows.
//
// Thread-safety: read() may be called from several threads; calls are serialized per reader.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <span>
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
  ~RemoteReader();  // waits for a prefetch in flight
  RemoteReader(const RemoteReader&) = delete;
  RemoteReader& operator=(const RemoteReader&) = delete;

  // Hands file bytes [offset, min(offset + length, size)) to `reply` (one call, valid during it;
  // empty at or past the end). An error when the bytes could not be fetched or did not verify.
  transfer::DownloadResult<void> read(std::uint64_t offset, std::size_t length,
                                      const std::function<void(std::span<const std::byte>)>& reply);

 private:
  struct Window {
    std::uint64_t start = 0;
    std::size_t length = 0;
    std::unique_ptr<std::byte[]> buffer;
    bool contains(std::uint64_t offset) const { return offset >= start && offset < start + length; }
  };

  transfer::DownloadResult<Window> fetch(std::uint64_t start, std::size_t length);
  void start_prefetch(std::uint64_t start, std::size_t length);
  // REQUIRES: mutex_ held. Makes `current_` hold `offset` (from the prefetch or a fetch).
  transfer::DownloadResult<void> position(std::uint64_t offset, std::size_t length);
  void drop_prefetch();

  transfer::Downloader& downloader_;
  WindowPool& pool_;
  const xet::Hash hash_;
  const std::uint64_t size_;

  std::mutex mutex_;
  Window current_;
  std::future<transfer::DownloadResult<Window>> next_;
  std::uint64_t next_start_ = 0;
  std::uint64_t last_end_ = 0;
  std::size_t window_ = 0;  // the sequential window; 0 until a sequential read
  std::vector<std::byte> stitch_;  // a read straddling two windows
};

}  // namespace bucketfs::fs
