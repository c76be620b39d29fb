#include "unfetched.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "file_io.h"

namespace bucketfs::fs {

transfer::DownloadResult<void> read_version(transfer::Downloader& downloader, const xet::Hash& hash,
                                            std::uint64_t size, xet::FileByteRange range, std::byte* destination) {
  const std::size_t length = range.length();
  std::size_t at = 0;
  auto sink = [&](std::span<const std::byte> piece) {
    const std::size_t take = std::min(piece.size(), length - at);
    std::memcpy(destination + at, piece.data(), take);
    at += take;
    return true;
  };
  auto cached = downloader.read_from_cache(hash, size, range, sink);
  if (!cached) return std::unexpected(cached.error());
  if (!*cached) {
    at = 0;
    if (auto done = downloader.read_range(hash, size, range, sink); !done) return done;
  }
  if (at != length) {
    return std::unexpected(transfer::DownloadError{transfer::DownloadErrorKind::corrupt, {},
                                                   "the stored version " + hash.to_string() + " has " +
                                                       std::to_string(at) + " bytes where " +
                                                       std::to_string(length) + " were asked for"});
  }
  return {};
}

std::expected<void, std::string> fill_unfetched(transfer::Downloader& downloader, int fd, std::mutex& one_fill,
                                                std::mutex& guard, std::optional<cache::UnfetchedBase>& unfetched) {
  std::lock_guard fill_lock(one_fill);
  xet::Hash hash;
  std::uint64_t size = 0;
  std::vector<xet::FileByteRange> gaps;
  {
    std::lock_guard lock(guard);
    if (!unfetched) return {};
    hash = unfetched->hash;
    size = unfetched->size;
    gaps = unfetched->missing();
  }
  std::uint64_t missing_bytes = 0;
  for (const auto& gap : gaps) missing_bytes += gap.length();
  // Writes the bytes of `piece` (version bytes from `at`) that the file still lacks, at most
  // kHold bytes per hold of the lock, so that a write or truncate of the file waits little.
  // What it wrote is noted in `wrote` and counted as fetched only once verified (`verified`).
  constexpr std::size_t kHold = std::size_t{1} << 20;
  int write_error = 0;
  bool nothing_left = false;  // `unfetched` was reset meanwhile (a truncate to 0, ...)
  std::vector<xet::FileByteRange> wrote;
  auto write_missing = [&](std::uint64_t at, std::span<const std::byte> piece) {
    for (std::size_t done = 0; done < piece.size() && write_error == 0;) {
      const std::size_t step = std::min(kHold, piece.size() - done);
      std::lock_guard lock(guard);
      if (!unfetched) {
        nothing_left = true;
        return false;
      }
      for (const auto& missing : unfetched->missing(at + done, at + done + step)) {
        write_error = write_all(fd, piece.data() + (missing.start - at), missing.length(), missing.start);
        if (write_error != 0) break;
        if (!wrote.empty() && wrote.back().end == missing.start) {
          wrote.back().end = missing.end;
        } else {
          wrote.push_back(missing);
        }
      }
      done += step;
    }
    return write_error == 0;
  };
  auto verified = [&] {
    std::lock_guard lock(guard);
    if (unfetched) {
      for (const auto& range : wrote) unfetched->add_fetched(range.start, range.end);
    }
    wrote.clear();
  };
  std::optional<transfer::DownloadError> failure;
  std::uint64_t failed_at = 0;
  if (missing_bytes * 2 >= size) {
    // Most of the version: stream all of it, which download_file checks against the file hash,
    // end to end (a range read is checked structurally only, see download.h). Its bytes are
    // handed over before that check, so they count as fetched only after it.
    std::uint64_t at = 0;
    auto done = downloader.download_file(hash, size, [&](std::span<const std::byte> piece) {
      const bool go_on = write_missing(at, piece);
      at += piece.size();
      return go_on;
    });
    if (done) {
      verified();
    } else if (!nothing_left) {
      failure = done.error();
    }
  } else {
    // A small part of it (a file cut short, or mostly rewritten): read only the gaps, one
    // read_range per piece of up to kPiece bytes from the first missing byte to the last,
    // skipping pieces that lack nothing. A range read hands over only checked bytes.
    constexpr std::uint64_t kPiece = std::uint64_t{64} << 20;
    std::uint64_t start = gaps.empty() ? 0 : gaps.front().start;
    const std::uint64_t end = gaps.empty() ? 0 : gaps.back().end;
    for (auto gap = gaps.begin(); start < end && !failure && write_error == 0 && !nothing_left;) {
      while (gap->end <= start) ++gap;  // the first gap not behind the piece
      start = std::max(start, gap->start);
      const xet::FileByteRange range{start, std::min(end, start + kPiece)};
      start = range.end;
      std::uint64_t at = range.start;
      auto done = downloader.read_range(hash, size, range, [&](std::span<const std::byte> piece) {
        const bool go_on = write_missing(at, piece);
        at += piece.size();
        return go_on;
      });
      verified();
      if (!done && !nothing_left) {
        failure = done.error();
        failed_at = range.start;
      }
    }
  }
  if (write_error != 0) return std::unexpected(std::string("writing the staging file: ") + std::strerror(write_error));
  if (failure) {
    return std::unexpected("fetching the version it was opened from (from byte " + std::to_string(failed_at) +
                           "): " + failure->describe());
  }
  std::lock_guard lock(guard);
  if (unfetched) {
    if (const auto left = unfetched->missing(); !left.empty()) {
      return std::unexpected("bytes " + std::to_string(left.front().start) + "-" + std::to_string(left.front().end) +
                             " of the version it was opened from are still missing after fetching them");
    }
  }
  unfetched.reset();
  return {};
}

}  // namespace bucketfs::fs
