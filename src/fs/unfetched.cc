#include "unfetched.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
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

std::expected<void, std::string> fill_unfetched(transfer::Downloader& downloader, int fd, std::mutex& guard,
                                                std::optional<cache::UnfetchedBase>& unfetched) {
  // One read_range per piece: a piece's bytes are fetched in parallel, and a failure costs one
  // piece again, not the file.
  constexpr std::uint64_t kPiece = std::uint64_t{64} << 20;
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
  for (const auto& gap : gaps) {
    for (std::uint64_t start = gap.start; start < gap.end; start += kPiece) {
      const xet::FileByteRange range{start, std::min(gap.end, start + kPiece)};
      std::uint64_t at = range.start;
      int write_error = 0;
      auto done = downloader.read_range(hash, size, range, [&](std::span<const std::byte> piece) {
        std::lock_guard lock(guard);
        if (unfetched) {
          for (const auto& missing : unfetched->missing(at, at + piece.size())) {
            write_error = write_all(fd, piece.data() + (missing.start - at), missing.length(), missing.start);
            if (write_error != 0) break;
            unfetched->add_fetched(missing.start, missing.end);
          }
        }
        at += piece.size();
        return write_error == 0;
      });
      if (write_error != 0) return std::unexpected(std::string("writing the staging file: ") + std::strerror(write_error));
      if (!done) {
        return std::unexpected("fetching bytes " + std::to_string(range.start) + "-" + std::to_string(range.end) +
                               " of the version it was opened from: " + done.error().describe());
      }
    }
  }
  // Once `unfetched` is reset, a journal record of this file names it whole: what was fetched
  // must be on disk before that.
  if (::fdatasync(fd) != 0) {
    return std::unexpected(std::string("syncing the staging file: ") + std::strerror(errno));
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
