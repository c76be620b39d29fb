#include "reader.h"

#include <algorithm>
#include <cstring>

#include "log.h"

namespace bucketfs::fs {
namespace {
constexpr std::size_t kRandomWindow = std::size_t{128} << 10;
// Bytes a stream keeps behind the newest read, for readahead requests that arrive late.
constexpr std::uint64_t kKeepBehind = std::uint64_t{4} << 20;
// Contiguous reads that start a stream (a read at offset 0 starts one at once).
constexpr std::uint64_t kStreamAfter = std::uint64_t{4} << 20;
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
  stop_stream();
}

void RemoteReader::stop_stream() {
  if (!stream_) return;
  {
    std::lock_guard lock(stream_->mutex);
    stream_->cancelled = true;
  }
  stream_->changed.notify_all();
  if (stream_->thread.joinable()) stream_->thread.join();
  pool_.release(std::move(stream_->ring));
  stream_.reset();
}

void RemoteReader::start_stream(std::uint64_t offset) {
  stream_ = std::make_unique<Stream>();
  Stream* stream = stream_.get();
  stream->ring = pool_.acquire();
  stream->capacity = pool_.capacity();
  stream->tail = stream->head = stream->keep_from = offset;
  // A whole file that fits the ring is downloaded with download_file, which checks the file hash
  // at the end, and its bytes are published only then: every chunk is verified even when the
  // file's chunks sit in the middle of xorbs shared with other files (no xorb hash covers them).
  const bool whole = offset == 0 && size_ <= stream->capacity;
  stream->thread = std::thread([this, stream, offset, whole] {
    if (whole) {
      std::size_t filled = 0;
      auto done = downloader_.download_file(hash_, size_, [&](std::span<const std::byte> piece) {
        {
          std::lock_guard lock(stream->mutex);
          if (stream->cancelled) return false;
        }
        if (piece.size() > size_ - filled) return false;  // more bytes than the file has
        std::memcpy(stream->ring.get() + filled, piece.data(), piece.size());
        filled += piece.size();
        return true;
      });
      {
        std::lock_guard lock(stream->mutex);
        stream->done = true;
        if (done) {
          stream->head = size_;
        } else if (done.error().kind != transfer::DownloadErrorKind::cancelled) {
          stream->error = done.error();
        }
      }
      stream->changed.notify_all();
      return;
    }
    auto done = downloader_.read_range(hash_, size_, {offset, size_}, [stream](std::span<const std::byte> piece) {
      std::size_t at = 0;
      while (at < piece.size()) {
        std::unique_lock lock(stream->mutex);
        // The ring holds [keep_from, head). A read ahead of the download (keep_from > head) needs
        // none of the bytes before it: they pass through the ring.
        auto room_left = [stream] {
          if (stream->keep_from >= stream->head) return stream->capacity;
          const std::uint64_t held = stream->head - stream->keep_from;
          return held < stream->capacity ? static_cast<std::size_t>(stream->capacity - held) : std::size_t{0};
        };
        stream->changed.wait(lock, [&] { return stream->cancelled || room_left() > 0; });
        if (stream->cancelled) return false;
        const std::uint64_t head = stream->head;
        const std::size_t room = room_left();
        // One contiguous piece of the ring at a time.
        const std::size_t position = static_cast<std::size_t>(head % stream->capacity);
        const std::size_t n = std::min({room, piece.size() - at, stream->capacity - position});
        if (head + n - stream->tail > stream->capacity) stream->tail = head + n - stream->capacity;
        lock.unlock();
        // Readers only touch [tail, head): nothing they read is overwritten here.
        std::memcpy(stream->ring.get() + position, piece.data() + at, n);
        at += n;
        lock.lock();
        stream->head += n;
        lock.unlock();
        stream->changed.notify_all();
      }
      return true;
    });
    {
      std::lock_guard lock(stream->mutex);
      stream->done = true;
      if (!done && done.error().kind != transfer::DownloadErrorKind::cancelled) stream->error = done.error();
    }
    stream->changed.notify_all();
  });
}

std::optional<transfer::DownloadResult<void>> RemoteReader::read_stream(
    std::uint64_t offset, std::size_t length, const std::function<void(std::span<const std::byte>)>& reply) {
  Stream* stream = stream_.get();
  if (stream == nullptr) return std::nullopt;
  const std::uint64_t end = offset + length;
  std::unique_lock lock(stream->mutex);
  if (offset < stream->tail || offset > stream->head + stream->capacity / 2) return std::nullopt;
  if (stream->error && stream->head < end) return std::nullopt;  // retried directly by the caller
  // Bytes before the read (minus a margin) may be overwritten now.
  stream->keep_from = std::max(stream->keep_from, offset > kKeepBehind ? offset - kKeepBehind : 0);
  stream->keep_from = std::min(stream->keep_from, offset);
  stream->changed.notify_all();
  stream->changed.wait(lock, [&] { return stream->head >= end || stream->done || stream->cancelled; });
  if (stream->head < end || offset < stream->tail) return std::nullopt;
  const std::size_t position = static_cast<std::size_t>(offset % stream->capacity);
  if (position + length <= stream->capacity) {
    reply({stream->ring.get() + position, length});
  } else {
    const std::size_t first = stream->capacity - position;
    scratch_.resize(length);
    std::memcpy(scratch_.data(), stream->ring.get() + position, first);
    std::memcpy(scratch_.data() + first, stream->ring.get(), length - first);
    reply({scratch_.data(), length});
  }
  return transfer::DownloadResult<void>{};
}

std::byte* RemoteReader::direct_room(std::size_t size) {
  if (direct_capacity_ < size) {
    direct_.reset();
    direct_ = std::make_unique_for_overwrite<std::byte[]>(size);
    direct_capacity_ = size;
  }
  direct_size_ = size;
  return direct_.get();
}

transfer::DownloadResult<void> RemoteReader::read_direct(std::uint64_t offset, std::size_t length,
                                                         const std::function<void(std::span<const std::byte>)>& reply) {
  // Contiguous reads that have not earned a stream yet fetch growing windows (up to 4 MiB).
  const std::size_t window = static_cast<std::size_t>(std::clamp<std::uint64_t>(run_bytes_, kRandomWindow, kStreamAfter));
  std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(std::max(length, window), size_ - offset));
  // From the chunk cache, a random read takes only the chunks holding it, and a run its window.
  // The first direct read asks the server: a cold file would waste the layout request on it.
  const std::size_t cached_want = run_bytes_ > length ? want : length;
  direct_start_ = offset;
  std::size_t filled = 0;
  const bool try_cache = direct_reads_++ > 0;
  if (try_cache) {
    std::byte* room = direct_room(cached_want);
    auto cached = downloader_.read_from_cache(hash_, size_, {offset, offset + cached_want}, [&](std::span<const std::byte> piece) {
      if (piece.size() > cached_want - filled) return false;
      std::memcpy(room + filled, piece.data(), piece.size());
      filled += piece.size();
      return true;
    });
    if (cached && *cached && filled == cached_want) {
      reply({room, length});
      return {};
    }
  }
  std::byte* room = direct_room(want);
  filled = 0;
  // The read is answered from the first piece when it holds the read's bytes (they have been
  // verified), before the rest of the window is copied (time to first byte).
  bool replied = false;
  auto done = downloader_.read_range(hash_, size_, {offset, offset + want}, [&](std::span<const std::byte> piece) {
    if (piece.size() > want - filled) return false;
    if (filled == 0 && piece.size() >= length) {
      reply(piece.first(length));
      replied = true;
    }
    std::memcpy(room + filled, piece.data(), piece.size());
    filled += piece.size();
    return true;
  });
  if (!done || filled != want) {
    direct_size_ = 0;
    if (replied) {  // the read has its bytes; a later read fetches the rest again
      if (!done) log_line("fetching the rest of a read's window failed: " + done.error().describe());
      return {};
    }
    if (!done) return std::unexpected(done.error());
    return std::unexpected(transfer::DownloadError{transfer::DownloadErrorKind::corrupt, {},
                                                   "a range read returned " + std::to_string(filled) + " bytes"});
  }
  if (!replied) reply({room, length});
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
  if (offset >= direct_start_ && offset + length <= direct_start_ + direct_size_) {
    // The window of the last direct fetch (it answers the first reads of a large file while the
    // stream's first fetch is still arriving).
    run_bytes_ = offset == last_end_ ? run_bytes_ + length : length;
    last_end_ = offset + length;
    reply({direct_.get() + (offset - direct_start_), length});
    return {};
  }
  if (auto served = read_stream(offset, length, reply); served) {
    last_end_ = offset + length;
    return *served;
  }
  const bool contiguous = offset == last_end_;
  run_bytes_ = contiguous ? run_bytes_ + length : length;
  last_end_ = offset + length;
  if (offset == 0 || (contiguous && run_bytes_ >= kStreamAfter)) {
    stop_stream();
    // The stream hands out nothing before its first fetch has arrived whole and verified (a xorb,
    // up to 64 MiB): a first read at the start of a large file (a header, a magic number) is
    // fetched alone, and answered before the stream starts (the stream's fetch would compete with
    // it for the network and the server). A file the ring holds whole waits for its file hash.
    if (offset == 0 && size_ > pool_.capacity() && length <= kRandomWindow) {
      auto answered = read_direct(offset, length, reply);
      start_stream(offset);
      return answered;
    }
    start_stream(offset);
    if (auto served = read_stream(offset, length, reply); served) return *served;
    // The stream failed before reaching the read: say why (or fetch directly).
    std::optional<transfer::DownloadError> error;
    {
      std::lock_guard stream_lock(stream_->mutex);
      error = stream_->error;
    }
    stop_stream();
    if (error) return std::unexpected(*error);
  }
  return read_direct(offset, length, reply);
}

}  // namespace bucketfs::fs
