#include "bucketfs/xet/xorb.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <string_view>

namespace bucketfs::xet {
namespace {

constexpr std::string_view kFooterIdent = "XETBLOB";
constexpr std::string_view kFooterHashesIdent = "XBLBHSH";
constexpr std::string_view kFooterBoundariesIdent = "XBLBBND";
constexpr std::size_t kFooterReservedSize = 16;
// The most uncompressed bytes decode() buffers: 8192 chunks of 128 KiB, more than any client
// puts in a xorb. Protects against headers that declare huge totals for tiny data.
constexpr std::uint64_t kMaxDecodedSize = std::uint64_t{8192} * kMaxChunkSize;

std::string chunk_label(std::size_t index, std::size_t offset) {
  return "chunk " + std::to_string(index) + " at byte " + std::to_string(offset);
}

Error with_context(Error error, const std::string& context) {
  error.message = context + ": " + error.message;
  return error;
}

bool starts_with_footer(ByteSpan bytes) {
  return bytes.size() >= kFooterIdent.size() &&
         std::memcmp(bytes.data(), kFooterIdent.data(), kFooterIdent.size()) == 0;
}

// Bounds-checked sequential reads of a footer.
class FooterReader {
 public:
  explicit FooterReader(ByteSpan bytes) : bytes_(bytes) {}
  std::size_t position() const { return pos_; }
  std::size_t remaining() const { return bytes_.size() - pos_; }
  std::optional<ByteSpan> take(std::size_t n) {
    if (remaining() < n) return std::nullopt;
    const ByteSpan out = bytes_.subspan(pos_, n);
    pos_ += n;
    return out;
  }
  bool ident(std::string_view expected) {
    const auto got = take(expected.size());
    return got && std::memcmp(got->data(), expected.data(), expected.size()) == 0;
  }
  std::optional<std::uint64_t> le(std::size_t width) {
    const auto got = take(width);
    if (!got) return std::nullopt;
    return load_le(got->data(), width);
  }
  std::optional<Hash> hash() {
    const auto got = take(32);
    if (!got) return std::nullopt;
    return Hash::from_raw(std::span<const std::byte, 32>(got->data(), 32));
  }
  bool u32s(std::size_t count, std::vector<std::uint32_t>& out) {
    if (remaining() / 4 < count) return false;
    out.reserve(count);
    for (std::size_t i = 0; i < count; ++i) out.push_back(static_cast<std::uint32_t>(*le(4)));
    return true;
  }
  bool hashes(std::size_t count, std::vector<Hash>& out) {
    if (remaining() / 32 < count) return false;
    out.reserve(count);
    for (std::size_t i = 0; i < count; ++i) out.push_back(*hash());
    return true;
  }

 private:
  ByteSpan bytes_;
  std::size_t pos_ = 0;
};

// Parses the footer that makes up all of `bytes` and checks it against the chunks before it.
Result<XorbFooter> parse_footer(ByteSpan bytes, const std::vector<ChunkView>& chunks, std::size_t footer_offset) {
  const auto bad = [&](const std::string& what) {
    return make_error(ErrorCode::kInvalidFormat,
                      "xorb footer at byte " + std::to_string(footer_offset) + ": " + what);
  };
  if (bytes.size() < 4) return bad("too short for its length field");
  const std::uint64_t info_length = load_le(bytes.data() + bytes.size() - 4, 4);
  if (info_length + 4 != bytes.size()) {
    return bad("length field says " + std::to_string(info_length) + " bytes, " +
               std::to_string(bytes.size() - 4) + " precede it");
  }
  FooterReader r(bytes.first(bytes.size() - 4));
  XorbFooter footer;
  if (!r.ident(kFooterIdent)) return bad("missing XETBLOB");
  const auto version = r.le(1);
  const auto xorb_hash = r.hash();
  if (!version || !xorb_hash) return bad("truncated header");
  footer.version = static_cast<std::uint8_t>(*version);
  footer.xorb_hash = *xorb_hash;
  std::uint64_t num_chunks = 0;
  if (footer.version == 0) {
    const auto n = r.le(4);
    if (!n) return bad("truncated chunk count");
    num_chunks = *n;
    if (!r.u32s(num_chunks, footer.chunk_end_offsets) || !r.hashes(num_chunks, footer.chunk_hashes)) {
      return bad("truncated chunk table");
    }
  } else if (footer.version == 1) {
    const std::size_t hashes_start = r.position();
    if (!r.ident(kFooterHashesIdent) || r.le(1) != std::optional<std::uint64_t>(0)) {
      return bad("bad hashes section header");
    }
    const auto n = r.le(4);
    if (!n) return bad("truncated hashes section");
    num_chunks = *n;
    if (!r.hashes(num_chunks, footer.chunk_hashes)) return bad("truncated chunk hashes");
    const std::size_t boundaries_start = r.position();
    if (!r.ident(kFooterBoundariesIdent) || r.le(1) != std::optional<std::uint64_t>(1)) {
      return bad("bad boundaries section header");
    }
    if (r.le(4) != std::optional<std::uint64_t>(num_chunks)) return bad("inconsistent chunk counts");
    if (!r.u32s(num_chunks, footer.chunk_end_offsets) || !r.u32s(num_chunks, footer.uncompressed_end_offsets)) {
      return bad("truncated chunk boundaries");
    }
    const auto count_again = r.le(4);
    const auto hashes_from_end = r.le(4);
    const auto boundaries_from_end = r.le(4);
    if (!count_again || !hashes_from_end || !boundaries_from_end) return bad("truncated trailer");
    if (*count_again != num_chunks) return bad("inconsistent chunk counts");
    const std::size_t end = r.position() + kFooterReservedSize;
    if (*hashes_from_end != end - hashes_start || *boundaries_from_end != end - boundaries_start) {
      return bad("section offsets disagree with the layout");
    }
  } else {
    return bad("unknown version " + std::to_string(footer.version));
  }
  if (!r.take(kFooterReservedSize)) return bad("truncated reserved bytes");
  if (r.remaining() != 0) return bad(std::to_string(r.remaining()) + " unexplained bytes");

  if (num_chunks != chunks.size()) {
    return bad("lists " + std::to_string(num_chunks) + " chunks, the xorb has " + std::to_string(chunks.size()));
  }
  std::uint64_t uncompressed_end = 0;
  for (std::size_t i = 0; i < chunks.size(); ++i) {
    const ChunkView& c = chunks[i];
    uncompressed_end += c.header.uncompressed_size;
    if (footer.chunk_end_offsets[i] != c.offset + kChunkHeaderSize + c.stored.size()) {
      return bad("end offset of chunk " + std::to_string(i) + " disagrees with the chunk headers");
    }
    if (!footer.uncompressed_end_offsets.empty() && footer.uncompressed_end_offsets[i] != uncompressed_end) {
      return bad("uncompressed end of chunk " + std::to_string(i) + " disagrees with the chunk headers");
    }
  }
  return footer;
}

}  // namespace

// ---- Chunk headers -------------------------------------------------------------------------------
std::array<std::byte, kChunkHeaderSize> encode_chunk_header(const ChunkHeader& header) {
  std::array<std::byte, kChunkHeaderSize> out{};
  out[0] = std::byte{kChunkHeaderVersion};
  for (std::size_t i = 0; i < 3; ++i) {
    out[1 + i] = std::byte((header.stored_size >> (8 * i)) & 0xff);
    out[5 + i] = std::byte((header.uncompressed_size >> (8 * i)) & 0xff);
  }
  out[4] = std::byte{static_cast<std::uint8_t>(header.scheme)};
  return out;
}

Result<ChunkHeader> decode_chunk_header(ByteSpan bytes) {
  if (bytes.size() < kChunkHeaderSize) {
    return make_error(ErrorCode::kTruncated, "chunk header needs 8 bytes, " + std::to_string(bytes.size()) + " left");
  }
  const auto version = std::to_integer<std::uint8_t>(bytes[0]);
  if (version != kChunkHeaderVersion) {
    return make_error(ErrorCode::kInvalidFormat, "chunk header version " + std::to_string(version) + ", expected 0");
  }
  auto scheme = compression_scheme_from_byte(std::to_integer<std::uint8_t>(bytes[4]));
  if (!scheme) return std::unexpected(scheme.error());
  ChunkHeader header;
  header.scheme = *scheme;
  header.stored_size = static_cast<std::uint32_t>(load_le(bytes.data() + 1, 3));
  header.uncompressed_size = static_cast<std::uint32_t>(load_le(bytes.data() + 5, 3));
  if (header.uncompressed_size > kMaxChunkSize) {
    return make_error(ErrorCode::kTooLarge, "uncompressed size " + std::to_string(header.uncompressed_size) +
                                                " exceeds the 128 KiB chunk limit");
  }
  if (header.stored_size > kMaxCompressedChunkSize) {
    return make_error(ErrorCode::kTooLarge,
                      "stored size " + std::to_string(header.stored_size) + " exceeds any 128 KiB chunk's");
  }
  if (header.scheme == CompressionScheme::kNone && header.stored_size != header.uncompressed_size) {
    return make_error(ErrorCode::kSizeMismatch, "uncompressed chunk with stored size " +
                                                    std::to_string(header.stored_size) + " and uncompressed size " +
                                                    std::to_string(header.uncompressed_size));
  }
  return header;
}

// ---- Serializing ---------------------------------------------------------------------------------
std::uint64_t SerializedXorb::uncompressed_size() const {
  std::uint64_t total = 0;
  for (const auto& c : chunks) total += c.uncompressed_size;
  return total;
}

std::vector<HashAndSize> SerializedXorb::chunk_hashes() const {
  std::vector<HashAndSize> leaves;
  leaves.reserve(chunks.size());
  for (const auto& c : chunks) leaves.push_back({c.hash, c.uncompressed_size});
  return leaves;
}

std::pair<std::size_t, std::size_t> SerializedXorb::byte_range(std::size_t first, std::size_t last) const {
  const XorbChunkInfo& end = chunks[last - 1];
  return {chunks[first].offset, std::size_t{end.offset} + kChunkHeaderSize + end.stored_size};
}

XorbBuilder::XorbBuilder(CompressionPolicy policy, XorbLimits limits) : compressor_(policy), limits_(limits) {
  limits_.max_serialized_size = std::min(limits_.max_serialized_size, kMaxXorbSize);
}

bool XorbBuilder::would_fit(std::size_t chunk_size) const {
  return chunk_size <= kMaxChunkSize && chunks_.size() + 1 <= limits_.max_chunks &&
         uncompressed_size_ + chunk_size <= limits_.max_uncompressed_size &&
         bytes_.size() + kChunkHeaderSize + compressor_.max_compressed_size(chunk_size) <= limits_.max_serialized_size;
}

Result<void> XorbBuilder::add_chunk(ByteSpan chunk) { return add_chunk(chunk, chunk_hash(chunk)); }

Result<void> XorbBuilder::add_chunk(ByteSpan chunk, const Hash& hash) {
  if (chunk.empty() || chunk.size() > kMaxChunkSize) {
    return make_error(ErrorCode::kInvalidArgument,
                      "chunk of " + std::to_string(chunk.size()) + " bytes: chunks hold 1 byte to 128 KiB");
  }
  if (chunks_.size() + 1 > limits_.max_chunks) {
    return make_error(ErrorCode::kTooLarge, "xorb already holds " + std::to_string(chunks_.size()) + " chunks");
  }
  if (uncompressed_size_ + chunk.size() > limits_.max_uncompressed_size) {
    return make_error(ErrorCode::kTooLarge, "xorb would exceed " + std::to_string(limits_.max_uncompressed_size) +
                                                " uncompressed bytes");
  }
  auto compressed = compressor_.compress(chunk);
  if (!compressed) return std::unexpected(compressed.error());
  const std::size_t chunk_total = kChunkHeaderSize + compressed->data.size();
  if (bytes_.size() + chunk_total > limits_.max_serialized_size) {
    return make_error(ErrorCode::kTooLarge, "xorb of " + std::to_string(bytes_.size()) + " bytes cannot take a " +
                                                std::to_string(chunk_total) + "-byte chunk under its " +
                                                std::to_string(limits_.max_serialized_size) + "-byte limit");
  }
  if (bytes_.capacity() == 0) bytes_.reserve(limits_.max_serialized_size);  // address space only
  XorbChunkInfo info;
  info.hash = hash;
  info.uncompressed_size = static_cast<std::uint32_t>(chunk.size());
  info.offset = static_cast<std::uint32_t>(bytes_.size());
  info.stored_size = static_cast<std::uint32_t>(compressed->data.size());
  info.scheme = compressed->scheme;
  const auto header = encode_chunk_header({info.scheme, info.stored_size, info.uncompressed_size});
  bytes_.insert(bytes_.end(), header.begin(), header.end());
  bytes_.insert(bytes_.end(), compressed->data.begin(), compressed->data.end());
  chunks_.push_back(info);
  uncompressed_size_ += chunk.size();
  return {};
}

SerializedXorb XorbBuilder::finish() {
  SerializedXorb xorb;
  xorb.chunks = std::move(chunks_);
  xorb.hash = xorb_hash(xorb.chunk_hashes());
  xorb.bytes = std::move(bytes_);
  bytes_ = Bytes{};
  chunks_ = {};
  uncompressed_size_ = 0;
  return xorb;
}

void XorbBuilder::recycle(Bytes buffer) {
  if (!empty()) return;
  buffer.clear();
  bytes_ = std::move(buffer);
}

Result<SerializedXorb> serialize_xorb(std::span<const ByteSpan> chunks, CompressionPolicy policy) {
  XorbBuilder builder(policy);
  for (std::size_t i = 0; i < chunks.size(); ++i) {
    if (auto ok = builder.add_chunk(chunks[i]); !ok) {
      return std::unexpected(with_context(ok.error(), "chunk " + std::to_string(i)));
    }
  }
  return builder.finish();
}

// ---- Parsing -------------------------------------------------------------------------------------
Result<XorbView> parse_xorb(ByteSpan bytes, std::size_t first_chunk_index) {
  XorbView view;
  std::size_t pos = 0;
  while (pos < bytes.size()) {
    const std::size_t index = first_chunk_index + view.chunks.size();
    const ByteSpan rest = bytes.subspan(pos);
    if (starts_with_footer(rest) && !view.chunks.empty()) {
      if (first_chunk_index != 0) {
        return make_error(ErrorCode::kInvalidFormat,
                          "xorb footer at byte " + std::to_string(pos) + " inside a chunk range");
      }
      auto footer = parse_footer(rest, view.chunks, pos);
      if (!footer) return std::unexpected(footer.error());
      view.footer = std::move(*footer);
      break;
    }
    auto header = decode_chunk_header(rest);
    if (!header) return std::unexpected(with_context(header.error(), chunk_label(index, pos)));
    if (rest.size() - kChunkHeaderSize < header->stored_size) {
      return make_error(ErrorCode::kTruncated, chunk_label(index, pos) + ": header declares " +
                                                   std::to_string(header->stored_size) + " data bytes, " +
                                                   std::to_string(rest.size() - kChunkHeaderSize) + " follow");
    }
    const std::size_t end = pos + kChunkHeaderSize + header->stored_size;
    if (end > kMaxXorbSize) {
      return make_error(ErrorCode::kTooLarge, chunk_label(index, pos) + " ends beyond the 64 MiB xorb limit");
    }
    view.chunks.push_back({pos, *header, rest.subspan(kChunkHeaderSize, header->stored_size)});
    view.uncompressed_size += header->uncompressed_size;
    pos = end;
  }
  if (view.chunks.empty()) {
    return make_error(ErrorCode::kTruncated, bytes.empty() ? std::string("xorb bytes are empty")
                                                           : std::string("xorb bytes hold no chunk"));
  }
  view.chunks_size = pos;
  return view;
}

Result<DecodedChunks> XorbDecoder::decode_view(const XorbView& view, std::span<std::byte> destination,
                                               std::size_t first_chunk_index) {
  if (destination.size() < view.uncompressed_size) {
    return make_error(ErrorCode::kInvalidArgument, "destination of " + std::to_string(destination.size()) +
                                                       " bytes cannot hold " + std::to_string(view.uncompressed_size) +
                                                       " decoded bytes");
  }
  DecodedChunks decoded;
  decoded.chunk_offsets.reserve(view.chunks.size() + 1);
  std::size_t offset = 0;
  decoded.chunk_offsets.push_back(0);
  for (std::size_t i = 0; i < view.chunks.size(); ++i) {
    const ChunkView& c = view.chunks[i];
    const auto out = destination.subspan(offset, c.header.uncompressed_size);
    if (auto ok = decompressor_.decompress_into(c.header.scheme, c.stored, out); !ok) {
      return std::unexpected(with_context(ok.error(), chunk_label(first_chunk_index + i, c.offset)));
    }
    offset += out.size();
    decoded.chunk_offsets.push_back(offset);
  }
  decoded.data = ByteSpan(destination.data(), offset);
  return decoded;
}

Result<DecodedChunks> XorbDecoder::decode_into(ByteSpan bytes, std::span<std::byte> destination,
                                               std::size_t first_chunk_index) {
  auto view = parse_xorb(bytes, first_chunk_index);
  if (!view) return std::unexpected(view.error());
  return decode_view(*view, destination, first_chunk_index);
}

Result<DecodedChunks> XorbDecoder::decode(ByteSpan bytes, std::size_t first_chunk_index) {
  auto view = parse_xorb(bytes, first_chunk_index);
  if (!view) return std::unexpected(view.error());
  if (view->uncompressed_size > kMaxDecodedSize) {
    return make_error(ErrorCode::kTooLarge, "chunks declare " + std::to_string(view->uncompressed_size) +
                                                " uncompressed bytes, more than any xorb holds");
  }
  if (buffer_.size() < view->uncompressed_size) buffer_.resize(view->uncompressed_size);
  return decode_view(*view, buffer_, first_chunk_index);
}

Result<std::vector<Bytes>> decode_xorb_chunks(ByteSpan bytes, std::size_t first_chunk_index) {
  auto view = parse_xorb(bytes, first_chunk_index);
  if (!view) return std::unexpected(view.error());
  std::vector<Bytes> chunks;
  chunks.reserve(view->chunks.size());
  ChunkDecompressor decompressor;
  for (std::size_t i = 0; i < view->chunks.size(); ++i) {
    const ChunkView& c = view->chunks[i];
    Bytes data(c.header.uncompressed_size);
    if (auto ok = decompressor.decompress_into(c.header.scheme, c.stored, data); !ok) {
      return std::unexpected(with_context(ok.error(), chunk_label(first_chunk_index + i, c.offset)));
    }
    chunks.push_back(std::move(data));
  }
  return chunks;
}

Result<std::vector<HashAndSize>> verify_xorb(ByteSpan bytes, const Hash& claimed_hash) {
  auto view = parse_xorb(bytes);
  if (!view) return std::unexpected(view.error());
  std::vector<HashAndSize> leaves;
  leaves.reserve(view->chunks.size());
  ChunkDecompressor decompressor;
  for (std::size_t i = 0; i < view->chunks.size(); ++i) {
    const ChunkView& c = view->chunks[i];
    auto data = decompressor.decompress(c.header.scheme, c.stored, c.header.uncompressed_size);
    if (!data) return std::unexpected(with_context(data.error(), chunk_label(i, c.offset)));
    leaves.push_back({chunk_hash(*data), data->size()});
    if (view->footer && view->footer->chunk_hashes[i] != leaves.back().hash) {
      return make_error(ErrorCode::kHashMismatch, chunk_label(i, c.offset) + ": hash " +
                                                      leaves.back().hash.to_string() + ", footer lists " +
                                                      view->footer->chunk_hashes[i].to_string());
    }
  }
  const Hash computed = xorb_hash(leaves);
  if (computed != claimed_hash) {
    return make_error(ErrorCode::kHashMismatch,
                      "xorb hashes to " + computed.to_string() + ", claimed " + claimed_hash.to_string());
  }
  if (view->footer && view->footer->xorb_hash != computed) {
    return make_error(ErrorCode::kHashMismatch, "xorb footer names hash " + view->footer->xorb_hash.to_string() +
                                                    ", the chunks hash to " + computed.to_string());
  }
  return leaves;
}

}  // namespace bucketfs::xet
