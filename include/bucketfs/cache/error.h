#pragma once
// Errors of the node-local store (cache/). A cache miss is never an error: lookups return
// `Result<std::optional<T>>` and a miss is an empty optional.

#include <expected>
#include <string>

namespace bucketfs::cache {

enum class ErrorCode {
  kIo,               // a system call on the cache directory or a data file failed (see sys_errno)
  kStore,            // LMDB reported an error (see sys_errno for the MDB_* or errno code)
  kFormat,           // the directory holds a format this build does not read, or a malformed record
  kInvalidArgument,  // the caller passed something out of range
  kBufferTooSmall,   // the output span cannot hold the requested chunk
};

struct Error {
  ErrorCode code = ErrorCode::kIo;
  int sys_errno = 0;
  std::string message;  // one line naming the path or record at fault
};

template <typename T>
using Result = std::expected<T, Error>;

}  // namespace bucketfs::cache
