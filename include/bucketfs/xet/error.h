#pragma once
// Errors of the Xet protocol core. Every parser and builder in xet/ returns
// `Result<T>`; none throws and none aborts on malformed input.

#include <expected>
#include <string>
#include <utility>

namespace bucketfs::xet {

enum class ErrorCode {
  kTruncated,           // input ended before a declared structure did
  kInvalidFormat,       // bytes that do not follow the format (bad magic, version, field value)
  kUnsupportedCompression,
  kDecompressionFailed,
  kSizeMismatch,        // a declared size disagrees with the data
  kHashMismatch,        // content does not match the hash it claims
  kTooLarge,            // exceeds a protocol limit (e.g. 64 MiB xorb)
  kInvalidArgument,     // caller passed something out of range
  kInvalidHash,         // a hash string that is not 64 hex digits
};

// A short name of the code ("truncated", "hash mismatch"...), for messages.
const char* to_string(ErrorCode code);

struct Error {
  ErrorCode code;
  std::string message;  // one line naming the field or offset at fault

  std::string describe() const { return std::string(to_string(code)) + ": " + message; }
};

template <typename T>
using Result = std::expected<T, Error>;

inline std::unexpected<Error> make_error(ErrorCode code, std::string message) {
  return std::unexpected<Error>(Error{code, std::move(message)});
}

}  // namespace bucketfs::xet
