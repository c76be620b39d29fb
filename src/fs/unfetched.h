#pragma once
// The bytes a staged file lacks (cache::UnfetchedBase). A file opened for writing without
// O_TRUNC is staged without fetching the version it was opened from: opening it costs nothing,
// and its bytes are fetched only when something needs them: a read of bytes nobody wrote (the
// read takes them from the version), and the upload after close or fsync, or a recovery, which
// fetch them into the staging file first (fill_unfetched).
#include <cstddef>
#include <cstdint>
#include <expected>
#include <mutex>
#include <optional>
#include <string>

#include "bucketfs/cache/journal.h"
#include "bucketfs/transfer/download.h"

namespace bucketfs::fs {

// Reads bytes `range` of the file version (`hash`, `size`) into `destination` (range.length()
// bytes; the range must lie within the version): from the node's chunk cache alone when it holds
// them, else through the bucket's store (verified either way).
transfer::DownloadResult<void> read_version(transfer::Downloader& downloader, const xet::Hash& hash,
                                            std::uint64_t size, xet::FileByteRange range, std::byte* destination);

// Fetches every byte `unfetched` says staging file `fd` lacks, writes it there and then resets
// `unfetched` (the file holds everything). Nothing is synced: a journal record names bytes as
// whole only after the fdatasync that follows its snapshot (Filesystem::persist).
// - `one_fill` is held throughout: one fill of a file at a time (Staged::fill_mutex).
// - `guard` guards `unfetched` and writes to the file (Staged::unfetched_mutex): fetched bytes
//   are written while holding it (at most 1 MiB per hold), and only where the file still lacks
//   them, so bytes written meanwhile stay and nothing lands past a truncate.
// - When most of the version is missing, all of it is streamed and checked against its file
//   hash; else only the missing ranges are read (checked as range reads are, download.h). Bytes
//   written count as fetched (UnfetchedBase::fetched) only once checked: on an error (one line)
//   `unfetched` still names them missing, and the next fill overwrites them.
std::expected<void, std::string> fill_unfetched(transfer::Downloader& downloader, int fd, std::mutex& one_fill,
                                                std::mutex& guard, std::optional<cache::UnfetchedBase>& unfetched);

}  // namespace bucketfs::fs
