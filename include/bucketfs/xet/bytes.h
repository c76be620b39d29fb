#pragma once
// Byte views and buffers used across the Xet core.

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

namespace bucketfs::xet {

using ByteSpan = std::span<const std::byte>;
using Bytes = std::vector<std::byte>;

inline ByteSpan as_byte_span(std::string_view text) {
  return {reinterpret_cast<const std::byte*>(text.data()), text.size()};
}
inline ByteSpan as_byte_span(std::span<const std::uint8_t> data) {
  return {reinterpret_cast<const std::byte*>(data.data()), data.size()};
}

// Little-endian integer helpers for the wire formats. REQUIRES: the span holds enough bytes.
inline std::uint64_t load_le(const std::byte* p, std::size_t width) {
  std::uint64_t value = 0;
  for (std::size_t i = 0; i < width; ++i) value |= std::uint64_t(std::to_integer<std::uint8_t>(p[i])) << (8 * i);
  return value;
}
inline void append_le(Bytes& out, std::uint64_t value, std::size_t width) {
  for (std::size_t i = 0; i < width; ++i) out.push_back(std::byte((value >> (8 * i)) & 0xff));
}

}  // namespace bucketfs::xet
