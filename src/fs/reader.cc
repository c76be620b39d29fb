#include "reader.h"

#include <algorithm>
#include <cstring>

namespace bucketfs::fs {
namespace {
constexpr std::size_t kFirstWindow = std::size_t{1} << 20;
constexpr std::size_t kRandomWindow = std::size_t{128} << 10;
}  // namespace

std::unique_ptr<std::byte[]> WindowPool::acquire() {
  {
    std::lock_guard lock(mutex_);
    if (!idle_.empty()) {
      auto buffer = std::move(idle_.back());
      idle_.pop_back();
      return buffer;
    }
  }
  return std::unique_ptr<std::byte[]>(new std::byte[capacity_]);
}

void WindowPool::release(std::unique_ptr<std::byte[]> buffer) {
  if (!buffer) return;
  std::lock_guard lock(mutex_);
  if (idle_.size() < keep_) idle_.push_back(std::move(buffer));
}

RemoteReader::RemoteReader(transfer::Downloader& downloader, WindowPool& pool, xet::Hash hash, std::uint64_t size)
    : downloader_(downloader), pool_(pool), hash_(hash), size_(size) {}

RemoteReader::~RemoteReader() {
  std::lock_guard lock(mutex_);
  drop_prefetch();
  pool_.release(std::move(current_.buffer));
}

void RemoteReader::drop_prefetch() {
  if (!next_.valid()) return;
  auto window = next_.get();
  if (window) pool_.release(std::move(window->buffer));
}

transfer::DownloadResult<RemoteReader::Window> RemoteReader::fetch(std::uint64_t start, std::size_t length) {
  Window window;
  window.start = start;
  window.buffer = pool_.acquire();
  std::byte* out = window.buffer.get();
  std::size_t filled = 0;
  auto done = downloader_.read_range(hash_, size_, {start, start + length}, [&](std::span<const std::byte> piece) {
    if (piece.size() > length - filled) return false;  // more than asked: refuse rather than overflow
    std::memcpy(out + filled, piece.data(), piece.size());
    filled += piece.size();
    return true;
  });
  if (!done) {
    pool_.release(std::move(window.buffer));
    return std::unexpected(done.error());
  }
  if (filled != std::min<std::uint64_t>(length, size_ - start)) {
    pool_.release(std::move(window.buffer));
    return std::unexpected(transfer::DownloadError{transfer::DownloadErrorKind::corrupt, {},
                                                   "a range read returned " + std::to_string(filled) + " bytes"});
  }
  window.length = filled;
  return window;
}

void RemoteReader::start_prefetch(std::uint64_t start, std::size_t length) {
  next_start_ = start;
  next_ = std::async(std::launch::async, [this, start, length] { return fetch(start, length); });
}

transfer::DownloadResult<void> RemoteReader::position(std::uint64_t offset, std::size_t length) {
  if (current_.buffer && current_.contains(offset)) return {};
  const bool sequential = offset == last_end_ || (current_.buffer && offset == current_.start + current_.length);
  if (next_.valid() && offset >= next_start_ && offset < next_start_ + window_) {
    auto window = next_.get();
    if (window && window->contains(offset)) {
      pool_.release(std::move(current_.buffer));
      current_ = std::move(*window);
      return {};
    }
    if (window) pool_.release(std::move(window->buffer));
    // A failed prefetch is retried below by a direct fetch: the error may have been transient.
  } else {
    drop_prefetch();
  }
  std::size_t want;
  if (sequential) {
    window_ = window_ == 0 ? kFirstWindow : std::min(window_ * 2, pool_.capacity());
    want = window_;
  } else {
    window_ = 0;
    want = std::max(length, kRandomWindow);
  }
  want = std::min<std::uint64_t>({want, pool_.capacity(), size_ - offset});
  auto window = fetch(offset, want);
  if (!window) return std::unexpected(window.error());
  pool_.release(std::move(current_.buffer));
  current_ = std::move(*window);
  return {};
}

transfer::DownloadResult<void> RemoteReader::read(std::uint64_t offset, std::size_t length,
                                                  const std::function<void(std::span<const std::byte>)>& reply) {
  std::lock_guard lock(mutex_);
  if (offset >= size_ || length == 0) {
    reply({});
    return {};
  }
  length = static_cast<std::size_t>(std::min<std::uint64_t>(length, size_ - offset));
  if (auto ok = position(offset, length); !ok) return ok;
  const std::uint64_t window_end = current_.start + current_.length;
  if (offset + length <= window_end) {
    reply({current_.buffer.get() + (offset - current_.start), length});
  } else {
    // The read straddles windows: stitch the pieces together.
    stitch_.resize(length);
    std::size_t filled = 0;
    while (filled < length) {
      if (auto ok = position(offset + filled, length - filled); !ok) return ok;
      const std::uint64_t at = offset + filled;
      const std::size_t take =
          static_cast<std::size_t>(std::min<std::uint64_t>(length - filled, current_.start + current_.length - at));
      std::memcpy(stitch_.data() + filled, current_.buffer.get() + (at - current_.start), take);
      filled += take;
      last_end_ = at + take;
    }
    reply({stitch_.data(), length});
  }
  last_end_ = offset + length;
  // Sequential reading: keep the next window in flight.
  const std::uint64_t end = current_.start + current_.length;
  if (window_ != 0 && !next_.valid() && end < size_) {
    start_prefetch(end, static_cast<std::size_t>(std::min<std::uint64_t>(window_, size_ - end)));
  }
  return {};
}

}  // namespace bucketfs::fs
