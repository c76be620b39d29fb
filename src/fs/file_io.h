#pragma once
// Whole reads and writes of a file at an offset (staging files), EINTR retried.
#include <cstddef>
#include <cstdint>
#include <expected>

namespace bucketfs::fs {

// pwrite(2) of all of `data`: 0, or the errno of the failure.
int write_all(int fd, const std::byte* data, std::size_t size, std::uint64_t offset);

// pread(2) of up to `size` bytes: how many were read (short only at the end of the file).
std::expected<std::size_t, int> read_all(int fd, std::byte* data, std::size_t size, std::uint64_t offset);

}  // namespace bucketfs::fs
