// Shard encode/decode; the format and where real clients differ from the spec are described in
// include/bucketfs/xet/shard.h.
#include "bucketfs/xet/shard.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <string>
#include <unordered_map>
#include <utility>

namespace bucketfs::xet {
namespace {

constexpr std::uint64_t kNoExpiry = std::numeric_limits<std::uint64_t>::max();
constexpr std::uint32_t kKnownFileFlags = kFileFlagWithVerification | kFileFlagWithMetadataExt;

std::string num(std::uint64_t value) { return std::to_string(value); }

// --- reading ------------------------------------------------------------------------------------

std::uint32_t load_u32(ByteSpan data, std::size_t offset) {
  return static_cast<std::uint32_t>(load_le(data.data() + offset, 4));
}
std::uint64_t load_u64(ByteSpan data, std::size_t offset) {
  return load_le(data.data() + offset, 8);
}
Hash load_hash(ByteSpan data, std::size_t offset) {
  return Hash::from_raw(std::span<const std::byte, 32>(data.data() + offset, 32));
}
bool is_bookend_hash(ByteSpan data, std::size_t offset) {
  for (std::size_t i = 0; i < 32; ++i) {
    if (data[offset + i] != std::byte{0xff}) return false;
  }
  return true;
}

// Parses the file info section from `pos` up to and including its bookend, never reading at or
// past `limit`. Returns the offset just after the bookend.
Result<std::size_t> parse_file_section(ByteSpan data, std::size_t pos, std::size_t limit,
                                       std::vector<FileInfo>& files) {
  std::optional<bool> shard_has_verification;  // decided by the first file with terms
  for (std::size_t index = 0;; ++index) {
    if (limit - pos < kShardRecordSize) {
      return make_error(ErrorCode::kTruncated, "file info section: record at offset " + num(pos) +
                                                   " needs 48 bytes, " + num(limit - pos) +
                                                   " remain before offset " + num(limit) +
                                                   " (missing bookend?)");
    }
    if (is_bookend_hash(data, pos)) return pos + kShardRecordSize;

    const std::size_t header_at = pos;
    FileInfo file;
    file.file_hash = load_hash(data, pos);
    const std::uint32_t flags = load_u32(data, pos + 32);
    const std::uint32_t num_entries = load_u32(data, pos + 36);
    pos += kShardRecordSize;
    if ((flags & ~kKnownFileFlags) != 0) {
      return make_error(ErrorCode::kInvalidFormat, "file info #" + num(index) + " at offset " +
                                                       num(header_at) + ": file_flags " +
                                                       num(flags) + " has unknown bits");
    }
    const bool with_verification = (flags & kFileFlagWithVerification) != 0;
    const bool with_metadata_ext = (flags & kFileFlagWithMetadataExt) != 0;
    const std::uint64_t records =
        std::uint64_t(num_entries) * (with_verification ? 2 : 1) + (with_metadata_ext ? 1 : 0);
    const std::uint64_t needed = records * kShardRecordSize;
    if (needed > limit - pos) {
      return make_error(ErrorCode::kTruncated, "file info #" + num(index) + " at offset " +
                                                   num(header_at) + ": num_entries " +
                                                   num(num_entries) + " needs " + num(needed) +
                                                   " bytes, " + num(limit - pos) + " remain");
    }
    if (num_entries > 0) {
      if (!shard_has_verification) shard_has_verification = with_verification;
      if (*shard_has_verification != with_verification) {
        return make_error(ErrorCode::kInvalidFormat,
                          "file info #" + num(index) + " at offset " + num(header_at) +
                              ": verification entries present in some files only");
      }
    }

    file.terms.reserve(num_entries);
    for (std::uint32_t i = 0; i < num_entries; ++i, pos += kShardRecordSize) {
      FileTerm term;
      term.xorb_hash = load_hash(data, pos);
      term.cas_flags = load_u32(data, pos + 32);
      term.unpacked_bytes = load_u32(data, pos + 36);
      term.chunk_index_start = load_u32(data, pos + 40);
      term.chunk_index_end = load_u32(data, pos + 44);
      file.terms.push_back(term);
    }
    if (with_verification) {
      file.verification.reserve(num_entries);
      for (std::uint32_t i = 0; i < num_entries; ++i, pos += kShardRecordSize) {
        file.verification.push_back(load_hash(data, pos));
      }
    }
    if (with_metadata_ext) {
      file.sha256 = load_hash(data, pos);
      pos += kShardRecordSize;
    }
    files.push_back(std::move(file));
  }
}

// Parses the CAS info section from `pos` through its bookend, never reading at or past `limit`.
Result<std::size_t> parse_cas_section(ByteSpan data, std::size_t pos, std::size_t limit,
                                      std::vector<XorbInfo>& xorbs) {
  for (std::size_t index = 0;; ++index) {
    if (limit - pos < kShardRecordSize) {
      return make_error(ErrorCode::kTruncated, "CAS info section: record at offset " + num(pos) +
                                                   " needs 48 bytes, " + num(limit - pos) +
                                                   " remain before offset " + num(limit) +
                                                   " (missing bookend?)");
    }
    if (is_bookend_hash(data, pos)) return pos + kShardRecordSize;

    const std::size_t header_at = pos;
    XorbInfo xorb;
    xorb.xorb_hash = load_hash(data, pos);
    xorb.cas_flags = load_u32(data, pos + 32);
    const std::uint32_t num_entries = load_u32(data, pos + 36);
    xorb.unpacked_bytes = load_u32(data, pos + 40);
    xorb.serialized_bytes = load_u32(data, pos + 44);
    pos += kShardRecordSize;
    const std::uint64_t needed = std::uint64_t(num_entries) * kShardRecordSize;
    if (needed > limit - pos) {
      return make_error(ErrorCode::kTruncated, "CAS info #" + num(index) + " at offset " +
                                                   num(header_at) + ": num_entries " +
                                                   num(num_entries) + " needs " + num(needed) +
                                                   " bytes, " + num(limit - pos) + " remain");
    }
    xorb.chunks.reserve(num_entries);
    for (std::uint32_t i = 0; i < num_entries; ++i, pos += kShardRecordSize) {
      XorbChunk chunk;
      chunk.chunk_hash = load_hash(data, pos);
      chunk.byte_offset = load_u32(data, pos + 32);
      chunk.unpacked_bytes = load_u32(data, pos + 36);
      chunk.flags = load_u32(data, pos + 40);
      xorb.chunks.push_back(chunk);
    }
    xorbs.push_back(std::move(xorb));
  }
}

ShardFooter load_footer(ByteSpan data, std::size_t at) {
  ShardFooter footer;
  footer.file_info_offset = load_u64(data, at + 8);
  footer.cas_info_offset = load_u64(data, at + 16);
  footer.file_lookup_offset = load_u64(data, at + 24);
  footer.file_lookup_count = load_u64(data, at + 32);
  footer.cas_lookup_offset = load_u64(data, at + 40);
  footer.cas_lookup_count = load_u64(data, at + 48);
  footer.chunk_lookup_offset = load_u64(data, at + 56);
  footer.chunk_lookup_count = load_u64(data, at + 64);
  footer.chunk_hash_key = load_hash(data, at + 72);
  footer.creation_timestamp = load_u64(data, at + 104);
  footer.key_expiry = load_u64(data, at + 112);
  footer.stored_bytes_on_disk = load_u64(data, at + 168);
  footer.materialized_bytes = load_u64(data, at + 176);
  footer.stored_bytes = load_u64(data, at + 184);
  footer.footer_offset = load_u64(data, at + 192);
  return footer;
}

// A lookup table named in the footer must sit between the CAS bookend and the footer.
Result<void> check_lookup_table(const char* name, std::uint64_t offset, std::uint64_t count,
                                std::uint64_t entry_size, std::size_t cas_end,
                                std::size_t footer_at) {
  if (count == 0) return {};  // huggingface.js leaves offset and count zero
  const std::uint64_t room = footer_at - cas_end;
  if (offset < cas_end || offset > footer_at || count > room / entry_size ||
      count * entry_size > footer_at - offset) {
    return make_error(ErrorCode::kInvalidFormat,
                      std::string("footer ") + name + " lookup table (offset " + num(offset) +
                          ", " + num(count) + " entries) is not between the CAS section end " +
                          num(cas_end) + " and the footer at " + num(footer_at));
  }
  return {};
}

// --- writing ------------------------------------------------------------------------------------

void append_hash(Bytes& out, const Hash& hash) {
  const auto* raw = reinterpret_cast<const std::byte*>(hash.bytes.data());
  out.insert(out.end(), raw, raw + hash.bytes.size());
}
void append_zeros(Bytes& out, std::size_t count) { out.insert(out.end(), count, std::byte{0}); }
void append_bookend(Bytes& out) {
  out.insert(out.end(), 32, std::byte{0xff});
  append_zeros(out, 16);
}

// Checks what the writers cannot express and returns whether the files carry verification.
Result<bool> check_writable(std::span<const FileInfo> files, std::span<const XorbInfo> xorbs) {
  std::optional<bool> with_verification;
  for (std::size_t i = 0; i < files.size(); ++i) {
    const FileInfo& file = files[i];
    if (file.terms.size() > std::numeric_limits<std::uint32_t>::max()) {
      return make_error(ErrorCode::kInvalidArgument,
                        "file " + file.file_hash.to_string() + " has too many terms");
    }
    if (!file.verification.empty() && file.verification.size() != file.terms.size()) {
      return make_error(ErrorCode::kInvalidArgument, "file " + file.file_hash.to_string() +
                                                         " has " + num(file.verification.size()) +
                                                         " verification hashes for " +
                                                         num(file.terms.size()) + " terms");
    }
    if (file.terms.empty()) continue;
    const bool has = !file.verification.empty();
    if (!with_verification) with_verification = has;
    if (*with_verification != has) {
      return make_error(ErrorCode::kInvalidArgument,
                        "file " + file.file_hash.to_string() +
                            ": verification must be given for all files or none");
    }
  }
  for (const XorbInfo& xorb : xorbs) {
    if (xorb.chunks.size() > std::numeric_limits<std::uint32_t>::max()) {
      return make_error(ErrorCode::kInvalidArgument,
                        "xorb " + xorb.xorb_hash.to_string() + " has too many chunks");
    }
  }
  // A shard whose files have no terms at all carries verification vacuously.
  return with_verification.value_or(true);
}

void append_file_section(Bytes& out, std::span<const FileInfo> files, bool with_verification) {
  for (const FileInfo& file : files) {
    std::uint32_t flags = 0;
    if (with_verification) flags |= kFileFlagWithVerification;
    if (file.sha256) flags |= kFileFlagWithMetadataExt;
    append_hash(out, file.file_hash);
    append_le(out, flags, 4);
    append_le(out, file.terms.size(), 4);
    append_zeros(out, 8);
    for (const FileTerm& term : file.terms) {
      append_hash(out, term.xorb_hash);
      append_le(out, term.cas_flags, 4);
      append_le(out, term.unpacked_bytes, 4);
      append_le(out, term.chunk_index_start, 4);
      append_le(out, term.chunk_index_end, 4);
    }
    if (with_verification) {
      for (const Hash& range_hash : file.verification) {
        append_hash(out, range_hash);
        append_zeros(out, 16);
      }
    }
    if (file.sha256) {
      append_hash(out, *file.sha256);
      append_zeros(out, 16);
    }
  }
  append_bookend(out);
}

void append_cas_section(Bytes& out, std::span<const XorbInfo> xorbs) {
  for (const XorbInfo& xorb : xorbs) {
    append_hash(out, xorb.xorb_hash);
    append_le(out, xorb.cas_flags, 4);
    append_le(out, xorb.chunks.size(), 4);
    append_le(out, xorb.unpacked_bytes, 4);
    append_le(out, xorb.serialized_bytes, 4);
    for (const XorbChunk& chunk : xorb.chunks) {
      append_hash(out, chunk.chunk_hash);
      append_le(out, chunk.byte_offset, 4);
      append_le(out, chunk.unpacked_bytes, 4);
      append_le(out, chunk.flags, 4);
      append_zeros(out, 4);
    }
  }
  append_bookend(out);
}

void append_header(Bytes& out, std::uint64_t footer_size) {
  for (std::uint8_t byte : kShardHeaderTag) out.push_back(std::byte{byte});
  append_le(out, kShardHeaderVersion, 8);
  append_le(out, footer_size, 8);
}

std::size_t file_records(const FileInfo& file, bool with_verification) {
  return 1 + file.terms.size() * (with_verification ? 2 : 1) + (file.sha256 ? 1 : 0);
}

// Sizes of the file section (with bookend) and of the CAS section (with bookend).
std::pair<std::size_t, std::size_t> section_sizes(std::span<const FileInfo> files,
                                                  std::span<const XorbInfo> xorbs,
                                                  bool with_verification) {
  std::size_t file_bytes = kShardRecordSize;
  for (const FileInfo& file : files)
    file_bytes += file_records(file, with_verification) * kShardRecordSize;
  std::size_t cas_bytes = kShardRecordSize;
  for (const XorbInfo& xorb : xorbs) cas_bytes += (1 + xorb.chunks.size()) * kShardRecordSize;
  return {file_bytes, cas_bytes};
}

std::string term_name(const Hash& file_hash, std::size_t term_index) {
  return "file " + file_hash.to_string() + " term #" + num(term_index);
}

// Checks a term against a xorb whose chunk list is known (the xorb is declared alongside):
// range, unpacked size, and the verification hash over the xorb's chunk hashes.
Result<void> check_term_against_xorb(const FileTerm& term, const Hash& verification,
                                     const XorbInfo& xorb, const std::string& where) {
  if (term.chunk_index_start >= term.chunk_index_end || term.chunk_index_end > xorb.chunks.size()) {
    return make_error(ErrorCode::kInvalidFormat,
                      where + ": chunk range [" + num(term.chunk_index_start) + ", " +
                          num(term.chunk_index_end) + ") is not within xorb " +
                          xorb.xorb_hash.to_string() + " of " + num(xorb.chunks.size()) +
                          " chunks");
  }
  std::uint64_t bytes = 0;
  std::vector<Hash> hashes;
  hashes.reserve(term.chunk_count());
  for (std::uint32_t i = term.chunk_index_start; i < term.chunk_index_end; ++i) {
    bytes += xorb.chunks[i].unpacked_bytes;
    hashes.push_back(xorb.chunks[i].chunk_hash);
  }
  if (bytes != term.unpacked_bytes) {
    return make_error(ErrorCode::kSizeMismatch, where + ": unpacked_bytes " +
                                                    num(term.unpacked_bytes) +
                                                    " but its chunks hold " + num(bytes));
  }
  if (verification_hash(hashes) != verification) {
    return make_error(ErrorCode::kHashMismatch,
                      where + ": verification hash does not match the xorb's chunk hashes");
  }
  return {};
}

}  // namespace

// --- types --------------------------------------------------------------------------------------

std::uint64_t FileInfo::size() const {
  std::uint64_t total = 0;
  for (const FileTerm& term : terms) total += term.unpacked_bytes;
  return total;
}

std::optional<Hash> ShardFooter::chunk_key() const {
  if (chunk_hash_key.is_zero()) return std::nullopt;
  return chunk_hash_key;
}

bool ShardFooter::expired(std::uint64_t now_unix_seconds) const {
  if (key_expiry == 0 || key_expiry == kNoExpiry) return false;
  return now_unix_seconds >= key_expiry;
}

Result<XorbInfo> make_xorb_info(const Hash& xorb_hash, std::span<const HashAndSize> chunks,
                                std::uint32_t serialized_bytes) {
  XorbInfo xorb;
  xorb.xorb_hash = xorb_hash;
  xorb.serialized_bytes = serialized_bytes;
  xorb.chunks.reserve(chunks.size());
  std::uint64_t offset = 0;
  for (const HashAndSize& chunk : chunks) {
    if (offset + chunk.size > std::numeric_limits<std::uint32_t>::max()) {
      return make_error(ErrorCode::kInvalidArgument,
                        "xorb " + xorb_hash.to_string() + " holds more than 4 GiB of chunk bytes");
    }
    xorb.chunks.push_back(XorbChunk{chunk.hash, static_cast<std::uint32_t>(offset),
                                    static_cast<std::uint32_t>(chunk.size), 0});
    offset += chunk.size;
  }
  xorb.unpacked_bytes = static_cast<std::uint32_t>(offset);
  return xorb;
}

// --- parsing ------------------------------------------------------------------------------------

Result<Shard> parse_shard(ByteSpan data) {
  if (data.size() < kShardHeaderSize) {
    return make_error(ErrorCode::kTruncated,
                      "shard header needs 48 bytes, have " + num(data.size()));
  }
  if (!std::equal(kShardHeaderTag.begin(), kShardHeaderTag.end(), data.begin(),
                  [](std::uint8_t want, std::byte have) { return std::byte{want} == have; })) {
    return make_error(ErrorCode::kInvalidFormat,
                      "shard header tag at offset 0 is not the MDB shard tag");
  }
  const std::uint64_t version = load_u64(data, 32);
  if (version != kShardHeaderVersion) {
    return make_error(ErrorCode::kInvalidFormat,
                      "shard header version at offset 32 is " + num(version) + ", expected 2");
  }
  const std::uint64_t footer_size = load_u64(data, 40);

  Shard shard;
  if (footer_size == 0) {
    auto file_end = parse_file_section(data, kShardHeaderSize, data.size(), shard.files);
    if (!file_end) return std::unexpected(file_end.error());
    auto cas_end = parse_cas_section(data, *file_end, data.size(), shard.xorbs);
    if (!cas_end) return std::unexpected(cas_end.error());
    if (*cas_end != data.size()) {
      return make_error(ErrorCode::kInvalidFormat,
                        num(data.size() - *cas_end) +
                            " bytes follow the CAS info bookend at offset " + num(*cas_end) +
                            " of a shard whose header declares no footer");
    }
    return shard;
  }
  if (footer_size != kShardFooterSize) {
    return make_error(ErrorCode::kInvalidFormat, "shard header footer_size at offset 40 is " +
                                                     num(footer_size) + ", expected 0 or 200");
  }
  // The smallest full shard: header, two bookends, footer.
  if (data.size() < kShardHeaderSize + 2 * kShardRecordSize + kShardFooterSize) {
    return make_error(ErrorCode::kTruncated,
                      "shard with footer needs at least 344 bytes, have " + num(data.size()));
  }
  const std::size_t footer_at = data.size() - kShardFooterSize;
  const std::uint64_t footer_version = load_u64(data, footer_at);
  if (footer_version != kShardFooterVersion) {
    return make_error(ErrorCode::kInvalidFormat, "shard footer version at offset " +
                                                     num(footer_at) + " is " + num(footer_version) +
                                                     ", expected 1");
  }
  ShardFooter footer = load_footer(data, footer_at);
  if (footer.footer_offset != footer_at) {
    return make_error(ErrorCode::kInvalidFormat, "shard footer_offset is " +
                                                     num(footer.footer_offset) +
                                                     " but the footer starts at " + num(footer_at));
  }
  if (footer.file_info_offset != kShardHeaderSize) {
    return make_error(ErrorCode::kInvalidFormat,
                      "shard footer file_info_offset is " + num(footer.file_info_offset) +
                          ", the file info section starts after the header at 48");
  }
  if (footer.cas_info_offset < kShardHeaderSize + kShardRecordSize ||
      footer.cas_info_offset > footer_at - kShardRecordSize) {
    return make_error(ErrorCode::kInvalidFormat,
                      "shard footer cas_info_offset " + num(footer.cas_info_offset) +
                          " is outside [96, " + num(footer_at - kShardRecordSize) + "]");
  }
  const auto cas_at = static_cast<std::size_t>(footer.cas_info_offset);
  auto file_end = parse_file_section(data, kShardHeaderSize, cas_at, shard.files);
  if (!file_end) return std::unexpected(file_end.error());
  if (*file_end != cas_at) {
    return make_error(ErrorCode::kInvalidFormat,
                      "file info bookend ends at offset " + num(*file_end) +
                          " but the footer's cas_info_offset is " + num(cas_at));
  }
  auto cas_end = parse_cas_section(data, cas_at, footer_at, shard.xorbs);
  if (!cas_end) return std::unexpected(cas_end.error());
  if (auto ok = check_lookup_table("file", footer.file_lookup_offset, footer.file_lookup_count, 12,
                                   *cas_end, footer_at);
      !ok) {
    return std::unexpected(ok.error());
  }
  if (auto ok = check_lookup_table("CAS", footer.cas_lookup_offset, footer.cas_lookup_count, 12,
                                   *cas_end, footer_at);
      !ok) {
    return std::unexpected(ok.error());
  }
  if (auto ok = check_lookup_table("chunk", footer.chunk_lookup_offset, footer.chunk_lookup_count,
                                   16, *cas_end, footer_at);
      !ok) {
    return std::unexpected(ok.error());
  }
  shard.footer = footer;
  return shard;
}

// --- writing ------------------------------------------------------------------------------------

std::size_t upload_shard_size(std::span<const FileInfo> files, std::span<const XorbInfo> xorbs) {
  bool with_verification = true;
  for (const FileInfo& file : files) {
    if (!file.terms.empty()) {
      with_verification = !file.verification.empty();
      break;
    }
  }
  auto [file_bytes, cas_bytes] = section_sizes(files, xorbs, with_verification);
  return kShardHeaderSize + file_bytes + cas_bytes;
}

Result<Bytes> serialize_upload_shard(std::span<const FileInfo> files,
                                     std::span<const XorbInfo> xorbs) {
  auto with_verification = check_writable(files, xorbs);
  if (!with_verification) return std::unexpected(with_verification.error());
  auto [file_bytes, cas_bytes] = section_sizes(files, xorbs, *with_verification);
  const std::size_t total = kShardHeaderSize + file_bytes + cas_bytes;
  if (total > kMaxShardSize) {
    return make_error(
        ErrorCode::kTooLarge,
        "upload shard of " + num(total) + " bytes exceeds 64 MiB; split the files across shards");
  }
  Bytes out;
  out.reserve(total);
  append_header(out, 0);
  append_file_section(out, files, *with_verification);
  append_cas_section(out, xorbs);
  return out;
}

Result<Bytes> serialize_shard_with_footer(std::span<const FileInfo> files,
                                          std::span<const XorbInfo> xorbs,
                                          const ShardFooterFields& fields) {
  auto with_verification = check_writable(files, xorbs);
  if (!with_verification) return std::unexpected(with_verification.error());
  auto [file_bytes, cas_bytes] = section_sizes(files, xorbs, *with_verification);
  Bytes out;
  out.reserve(kShardHeaderSize + file_bytes + cas_bytes + kShardFooterSize);
  append_header(out, kShardFooterSize);
  append_file_section(out, files, *with_verification);
  const std::uint64_t cas_at = out.size();
  append_cas_section(out, xorbs);
  const std::uint64_t footer_at = out.size();

  std::uint64_t stored_on_disk = 0;
  std::uint64_t stored = 0;
  std::uint64_t materialized = 0;
  for (const XorbInfo& xorb : xorbs) {
    stored_on_disk += xorb.serialized_bytes;
    stored += xorb.unpacked_bytes;
  }
  for (const FileInfo& file : files) materialized += file.size();

  append_le(out, kShardFooterVersion, 8);
  append_le(out, kShardHeaderSize, 8);
  append_le(out, cas_at, 8);
  for (int table = 0; table < 3;
       ++table) {  // file, CAS, chunk lookup: none, as xet-core's dedup shards
    append_le(out, footer_at, 8);
    append_le(out, 0, 8);
  }
  append_hash(out, fields.chunk_hash_key);
  append_le(out, fields.creation_timestamp, 8);
  append_le(out, fields.key_expiry, 8);
  append_zeros(out, 48);
  append_le(out, stored_on_disk, 8);
  append_le(out, materialized, 8);
  append_le(out, stored, 8);
  append_le(out, footer_at, 8);
  return out;
}

Result<Bytes> serialize_dedup_shard(std::span<const XorbInfo> xorbs, const Hash& key,
                                    std::uint64_t creation_timestamp, std::uint64_t key_expiry) {
  std::vector<XorbInfo> keyed;
  keyed.reserve(xorbs.size());
  for (const XorbInfo& xorb : xorbs) keyed.push_back(with_keyed_chunk_hashes(xorb, key));
  return serialize_shard_with_footer({}, keyed,
                                     ShardFooterFields{key, creation_timestamp, key_expiry});
}

// --- chunk hash protection and global dedup -----------------------------------------------------

Hash keyed_chunk_hash(const Hash& chunk_hash, const Hash& key) {
  if (key.is_zero()) return chunk_hash;
  blake3_hasher hasher;
  blake3_hasher_init_keyed(&hasher, key.bytes.data());
  blake3_hasher_update(&hasher, chunk_hash.bytes.data(), chunk_hash.bytes.size());
  Hash out;
  blake3_hasher_finalize(&hasher, out.bytes.data(), out.bytes.size());
  return out;
}

XorbInfo with_keyed_chunk_hashes(XorbInfo xorb, const Hash& key) {
  if (key.is_zero()) return xorb;
  for (XorbChunk& chunk : xorb.chunks) chunk.chunk_hash = keyed_chunk_hash(chunk.chunk_hash, key);
  return xorb;
}

bool hash_is_global_dedup_eligible(const Hash& chunk_hash) {
  return chunk_hash.word(3) % 1024 == 0;
}

std::vector<Hash> global_dedup_eligible_chunks(const Shard& shard) {
  std::unordered_map<Hash, const XorbInfo*> by_hash;
  for (const XorbInfo& xorb : shard.xorbs) by_hash.emplace(xorb.xorb_hash, &xorb);
  std::vector<Hash> out;
  for (const FileInfo& file : shard.files) {
    if (file.terms.empty()) continue;
    const FileTerm& first = file.terms.front();
    auto found = by_hash.find(first.xorb_hash);
    if (found != by_hash.end() && first.chunk_index_start < found->second->chunks.size()) {
      out.push_back(found->second->chunks[first.chunk_index_start].chunk_hash);
    }
  }
  for (const XorbInfo& xorb : shard.xorbs) {
    for (const XorbChunk& chunk : xorb.chunks) {
      if ((chunk.flags & kChunkFlagGlobalDedup) != 0 ||
          hash_is_global_dedup_eligible(chunk.chunk_hash)) {
        out.push_back(chunk.chunk_hash);
      }
    }
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

// --- server checks ------------------------------------------------------------------------------

Result<void> validate_xorb_info(const XorbInfo& xorb) {
  const std::string name = "xorb " + xorb.xorb_hash.to_string();
  if (xorb.chunks.empty()) return make_error(ErrorCode::kInvalidFormat, name + " lists no chunks");
  std::uint64_t offset = 0;
  std::vector<HashAndSize> leaves;
  leaves.reserve(xorb.chunks.size());
  for (std::size_t i = 0; i < xorb.chunks.size(); ++i) {
    const XorbChunk& chunk = xorb.chunks[i];
    if (chunk.unpacked_bytes == 0) {
      return make_error(ErrorCode::kInvalidFormat, name + " chunk #" + num(i) + " is empty");
    }
    if (chunk.byte_offset != offset) {
      return make_error(ErrorCode::kSizeMismatch,
                        name + " chunk #" + num(i) + " starts at " + num(chunk.byte_offset) +
                            ", the previous chunks end at " + num(offset));
    }
    offset += chunk.unpacked_bytes;
    leaves.push_back(HashAndSize{chunk.chunk_hash, chunk.unpacked_bytes});
  }
  if (offset != xorb.unpacked_bytes) {
    return make_error(ErrorCode::kSizeMismatch, name + " num_bytes_in_cas is " +
                                                    num(xorb.unpacked_bytes) +
                                                    ", its chunks hold " + num(offset));
  }
  if (xorb_hash(leaves) != xorb.xorb_hash) {
    return make_error(ErrorCode::kHashMismatch, name + " is not the hash of its chunks");
  }
  return {};
}

Result<void> validate_upload_shard(const Shard& shard) {
  std::unordered_map<Hash, const XorbInfo*> declared;
  for (const XorbInfo& xorb : shard.xorbs) {
    if (auto ok = validate_xorb_info(xorb); !ok) return ok;
    if (!declared.emplace(xorb.xorb_hash, &xorb).second) {
      return make_error(ErrorCode::kInvalidFormat,
                        "xorb " + xorb.xorb_hash.to_string() + " is declared twice");
    }
  }
  for (const FileInfo& file : shard.files) {
    if (file.terms.empty()) {
      if (!file.file_hash.is_zero()) {
        return make_error(ErrorCode::kInvalidFormat,
                          "file " + file.file_hash.to_string() + " has no terms but is not empty");
      }
      continue;
    }
    if (file.verification.size() != file.terms.size()) {
      return make_error(ErrorCode::kInvalidFormat,
                        "file " + file.file_hash.to_string() + " has no verification entries");
    }
    for (std::size_t i = 0; i < file.terms.size(); ++i) {
      const FileTerm& term = file.terms[i];
      if (term.chunk_index_start >= term.chunk_index_end) {
        return make_error(ErrorCode::kInvalidFormat,
                          term_name(file.file_hash, i) + " has the empty chunk range [" +
                              num(term.chunk_index_start) + ", " + num(term.chunk_index_end) + ")");
      }
      auto found = declared.find(term.xorb_hash);
      if (found == declared.end()) continue;
      if (auto ok = check_term_against_xorb(term, file.verification[i], *found->second,
                                            term_name(file.file_hash, i));
          !ok) {
        return ok;
      }
    }
  }
  return {};
}

std::vector<Hash> referenced_xorbs(const Shard& shard) {
  std::vector<Hash> out;
  for (const XorbInfo& xorb : shard.xorbs) out.push_back(xorb.xorb_hash);
  for (const FileInfo& file : shard.files) {
    for (const FileTerm& term : file.terms) out.push_back(term.xorb_hash);
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

Result<void> verify_term(const FileTerm& term, const Hash& verification,
                         std::span<const HashAndSize> xorb_chunks) {
  const std::string where = "term of xorb " + term.xorb_hash.to_string();
  if (term.chunk_index_start >= term.chunk_index_end || term.chunk_index_end > xorb_chunks.size()) {
    return make_error(ErrorCode::kInvalidFormat,
                      where + ": chunk range [" + num(term.chunk_index_start) + ", " +
                          num(term.chunk_index_end) + ") is not within its " +
                          num(xorb_chunks.size()) + " chunks");
  }
  std::uint64_t bytes = 0;
  std::vector<Hash> hashes;
  hashes.reserve(term.chunk_count());
  for (std::uint32_t i = term.chunk_index_start; i < term.chunk_index_end; ++i) {
    bytes += xorb_chunks[i].size;
    hashes.push_back(xorb_chunks[i].hash);
  }
  if (bytes != term.unpacked_bytes) {
    return make_error(ErrorCode::kSizeMismatch, where + ": unpacked_bytes " +
                                                    num(term.unpacked_bytes) +
                                                    " but its chunks hold " + num(bytes));
  }
  if (verification_hash(hashes) != verification) {
    return make_error(ErrorCode::kHashMismatch,
                      where + ": verification hash does not match the chunks [" +
                          num(term.chunk_index_start) + ", " + num(term.chunk_index_end) + ")");
  }
  return {};
}

// --- building -----------------------------------------------------------------------------------

Result<FileInfo> make_file_info(const Hash& file_hash, std::vector<FileTerm> terms,
                                std::span<const Hash> file_chunk_hashes,
                                std::optional<Hash> sha256) {
  FileInfo file;
  file.file_hash = file_hash;
  file.sha256 = sha256;
  file.verification.reserve(terms.size());
  std::size_t next = 0;
  for (std::size_t i = 0; i < terms.size(); ++i) {
    const FileTerm& term = terms[i];
    if (term.chunk_index_start >= term.chunk_index_end) {
      return make_error(ErrorCode::kInvalidArgument,
                        term_name(file_hash, i) + " has an empty chunk range");
    }
    const std::size_t count = term.chunk_count();
    if (count > file_chunk_hashes.size() - next) {
      return make_error(ErrorCode::kInvalidArgument,
                        term_name(file_hash, i) + " runs past the file's " +
                            num(file_chunk_hashes.size()) + " chunk hashes");
    }
    file.verification.push_back(verification_hash(file_chunk_hashes.subspan(next, count)));
    next += count;
  }
  if (next != file_chunk_hashes.size()) {
    return make_error(ErrorCode::kInvalidArgument, "file " + file_hash.to_string() +
                                                       ": terms cover " + num(next) + " of " +
                                                       num(file_chunk_hashes.size()) + " chunks");
  }
  file.terms = std::move(terms);
  return file;
}

Result<void> UploadShardBuilder::add_xorb(XorbInfo xorb) {
  if (auto ok = validate_xorb_info(xorb); !ok) return ok;
  if (!xorb_index_.emplace(xorb.xorb_hash, xorbs_.size()).second) return {};
  xorbs_.push_back(std::move(xorb));
  return {};
}

Result<void> UploadShardBuilder::add_file(const Hash& file_hash, std::vector<FileTerm> terms,
                                          std::span<const Hash> file_chunk_hashes,
                                          std::optional<Hash> sha256) {
  auto file = make_file_info(file_hash, std::move(terms), file_chunk_hashes, sha256);
  if (!file) return std::unexpected(file.error());
  return add_file(std::move(*file));
}

Result<void> UploadShardBuilder::add_file(FileInfo file) {
  if (file.verification.size() != file.terms.size()) {
    return make_error(ErrorCode::kInvalidArgument, "file " + file.file_hash.to_string() + " has " +
                                                       num(file.verification.size()) +
                                                       " verification hashes for " +
                                                       num(file.terms.size()) + " terms");
  }
  if (file.terms.empty() && !file.file_hash.is_zero()) {
    return make_error(ErrorCode::kInvalidArgument,
                      "file " + file.file_hash.to_string() + " has no terms but is not empty");
  }
  if (file_hashes_.contains(file.file_hash)) return {};
  for (std::size_t i = 0; i < file.terms.size(); ++i) {
    const FileTerm& term = file.terms[i];
    if (term.chunk_index_start >= term.chunk_index_end) {
      return make_error(ErrorCode::kInvalidArgument,
                        term_name(file.file_hash, i) + " has an empty chunk range");
    }
    auto found = xorb_index_.find(term.xorb_hash);
    if (found == xorb_index_.end()) continue;
    if (auto ok = check_term_against_xorb(term, file.verification[i], xorbs_[found->second],
                                          term_name(file.file_hash, i));
        !ok) {
      return make_error(ErrorCode::kInvalidArgument, ok.error().describe());
    }
  }
  file_hashes_.insert(file.file_hash);
  files_.push_back(std::move(file));
  return {};
}

void UploadShardBuilder::clear() {
  files_.clear();
  xorbs_.clear();
  file_hashes_.clear();
  xorb_index_.clear();
}

}  // namespace bucketfs::xet
