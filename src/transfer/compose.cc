// Composing a file from ranges of stored files: see include/bucketfs/transfer/compose.h.
#include "bucketfs/transfer/compose.h"

#include <algorithm>
#include <limits>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "bucketfs/xet/chunker.h"
#include "bucketfs/xet/shard.h"
#include "bucketfs/xet/xorb.h"

namespace bucketfs::transfer {
namespace {

std::unexpected<UploadError> fail(UploadErrorKind kind, std::string message,
                                  std::optional<hub::HubError> hub = std::nullopt) {
  return std::unexpected(UploadError{kind, std::move(message), std::move(hub)});
}

std::unexpected<UploadError> remote(const std::string& what, hub::HubError error) {
  const auto kind = error.kind == hub::HubErrorKind::cancelled ? UploadErrorKind::cancelled : UploadErrorKind::remote;
  std::string message = what + ": " + error.describe();
  return fail(kind, std::move(message), std::move(error));
}

// The new file's chunk list as it is decided, chunk by chunk, in file order: the terms (xorbs
// named by slot, new xorbs getting their hash when finished), their verification hashes and the
// file hash.
class Composer {
 public:
  Composer(hub::CasClient& cas, const http::CancellationToken* cancel) : cas_(cas), cancel_(cancel) {}

  // A chunk referenced where it is stored.
  UploadResult<void> reference(const xet::Hash& xorb, std::uint32_t index, const xet::HashAndSize& chunk) {
    if (auto flushed = flush_edge(); !flushed) return flushed;
    auto [it, inserted] = stored_slots_.try_emplace(xorb, slots_.size());
    if (inserted) slots_.push_back(xorb);
    append(it->second, index, chunk);
    result_.referenced_chunks++;
    return {};
  }

  // Bytes of a chunk that a range edge cuts: chunked again with the edge bytes next to them.
  void edge_bytes(xet::ByteSpan bytes) { edge_.insert(edge_.end(), bytes.begin(), bytes.end()); }

  UploadResult<ComposedFile> finish() {
    if (auto flushed = flush_edge(); !flushed) return std::unexpected(flushed.error());
    close_term();
    if (auto sent = send_open_xorb(); !sent) return std::unexpected(sent.error());
    if (terms_.empty()) return fail(UploadErrorKind::internal, "composing an empty file");
    xet::FileInfo info;
    info.file_hash = xet::file_hash_from_root(hasher_.finish());
    info.verification = std::move(verification_);
    for (const auto& term : terms_) {
      info.terms.push_back(xet::FileTerm{slots_[term.slot], 0, term.bytes, term.start, term.end});
    }
    result_.file_hash = info.file_hash;
    result_.terms = info.terms.size();
    if (auto added = shard_.add_file(std::move(info)); !added) {
      return fail(UploadErrorKind::internal, "shard file: " + added.error().describe());
    }
    auto bytes = shard_.serialize();
    if (!bytes) return fail(UploadErrorKind::internal, "shard: " + bytes.error().describe());
    if (auto uploaded = cas_.upload_shard(*bytes, cancel_); !uploaded) return remote("upload shard", uploaded.error());
    return result_;
  }

 private:
  struct Term {
    std::size_t slot = 0;
    std::uint32_t start = 0;
    std::uint32_t end = 0;
    std::uint32_t bytes = 0;
  };

  void append(std::size_t slot, std::uint32_t index, const xet::HashAndSize& chunk) {
    if (open_ && (open_->slot != slot || open_->end != index ||
                  std::uint64_t{open_->bytes} + chunk.size > std::numeric_limits<std::uint32_t>::max())) {
      close_term();
    }
    if (!open_) open_ = Term{slot, index, index, 0};
    open_->end++;
    open_->bytes += static_cast<std::uint32_t>(chunk.size);
    term_hashes_.push_back(chunk.hash);
    hasher_.add(chunk);
    result_.size += chunk.size;
  }

  void close_term() {
    if (!open_) return;
    verification_.push_back(xet::verification_hash(term_hashes_));
    terms_.push_back(*open_);
    open_.reset();
    term_hashes_.clear();
  }

  // Chunks the pending edge bytes and packs them into the open new xorb.
  UploadResult<void> flush_edge() {
    if (edge_.empty()) return {};
    xet::ChunkHashStream stream;
    auto chunks = stream.update(edge_);
    if (auto last = stream.finish()) chunks.push_back(*last);
    std::size_t at = 0;
    for (const auto& chunk : chunks) {
      const auto bytes = xet::ByteSpan(edge_).subspan(at, static_cast<std::size_t>(chunk.size));
      at += bytes.size();
      if (!builder_.would_fit(bytes.size())) {
        if (auto sent = send_open_xorb(); !sent) return sent;
      }
      if (!open_xorb_) {
        open_xorb_ = slots_.size();
        slots_.emplace_back();
      }
      const auto index = static_cast<std::uint32_t>(builder_.chunk_count());
      if (auto added = builder_.add_chunk(bytes, chunk.hash); !added) {
        return fail(UploadErrorKind::internal, "xorb: " + added.error().describe());
      }
      append(*open_xorb_, index, chunk);
      result_.new_chunks++;
      result_.new_chunk_bytes += chunk.size;
    }
    edge_.clear();
    return {};
  }

  // Uploads the open new xorb and declares it in the shard. Its terms are already recorded
  // by slot; the slot gets the xorb's hash here.
  UploadResult<void> send_open_xorb() {
    if (!open_xorb_) return {};
    auto xorb = builder_.finish();
    slots_[*open_xorb_] = xorb.hash;
    open_xorb_.reset();
    auto info = xet::make_xorb_info(xorb.hash, xorb.chunk_hashes(), static_cast<std::uint32_t>(xorb.bytes.size()));
    if (!info) return fail(UploadErrorKind::internal, "xorb info: " + info.error().describe());
    if (auto added = shard_.add_xorb(std::move(*info)); !added) {
      return fail(UploadErrorKind::internal, "shard xorb: " + added.error().describe());
    }
    if (auto sent = cas_.upload_xorb(xorb.hash, xorb.bytes, cancel_); !sent) {
      return remote("upload xorb " + xorb.hash.to_string(), sent.error());
    }
    result_.xorb_bytes_sent += xorb.bytes.size();
    return {};
  }

  hub::CasClient& cas_;
  const http::CancellationToken* cancel_;
  ComposedFile result_;
  std::vector<xet::Hash> slots_;  // xorb of each slot (a new xorb's is zero until it is sent)
  std::unordered_map<xet::Hash, std::size_t> stored_slots_;
  std::vector<Term> terms_;
  std::vector<xet::Hash> verification_;
  std::optional<Term> open_;
  std::vector<xet::Hash> term_hashes_;
  xet::AggregatedHasher hasher_;
  xet::Bytes edge_;
  xet::XorbBuilder builder_;
  std::optional<std::size_t> open_xorb_;  // slot of the xorb `builder_` fills
  xet::UploadShardBuilder shard_;
};

// Reads chunk [start, start + chunk.size) of a stored file whole and checks its hash.
UploadResult<xet::Bytes> read_edge_chunk(Downloader& downloader, const StoredRange& part, std::uint64_t start,
                                         const xet::HashAndSize& chunk) {
  xet::Bytes bytes;
  bytes.reserve(static_cast<std::size_t>(chunk.size));
  auto read = downloader.read_range(part.file_hash, part.file_size, {start, start + chunk.size},
                                    [&](std::span<const std::byte> piece) {
                                      bytes.insert(bytes.end(), piece.begin(), piece.end());
                                      return true;
                                    });
  const std::string where = "chunk at offset " + std::to_string(start) + " of " + part.file_hash.to_string();
  if (!read) return fail(UploadErrorKind::source, "reading the " + where + ": " + read.error().describe());
  if (bytes.size() != chunk.size || xet::chunk_hash(bytes) != chunk.hash) {
    return fail(UploadErrorKind::source, "the " + where + " does not match its listed hash");
  }
  return bytes;
}

}  // namespace

UploadResult<ComposedFile> compose_file(hub::CasClient& cas, Downloader& downloader,
                                        std::span<const StoredRange> parts, const http::CancellationToken* cancel) {
  if (parts.empty()) return fail(UploadErrorKind::internal, "composing a file of no parts");
  Composer composer(cas, cancel);
  std::uint64_t edge_chunks = 0;
  for (const auto& part : parts) {
    const auto [first, end] = part.range;
    if (first >= end || end > part.file_size) {
      return fail(UploadErrorKind::internal, "range " + std::to_string(first) + "-" + std::to_string(end) +
                                                 " is not inside file " + part.file_hash.to_string());
    }
    // Chunks are processed once each, in file order: `done` is the end of the last one.
    std::uint64_t done = first;
    bool started = false;
    while (done < end) {
      const xet::FileByteRange slice{done, std::min(end, done + kComposeSliceBytes)};
      auto listed = cas.file_chunks(part.file_hash, slice, cancel);
      if (!listed) return remote("chunk list of " + part.file_hash.to_string(), listed.error());
      if (listed->file_size != part.file_size || listed->terms.empty() ||
          listed->offset > slice.start || (started && listed->offset != done)) {
        return fail(UploadErrorKind::remote, "the chunk list of " + part.file_hash.to_string() +
                                                 " does not match the file");
      }
      started = true;
      std::uint64_t at = listed->offset;
      const std::uint64_t before = done;
      for (const auto& term : listed->terms) {
        for (std::size_t i = 0; i < term.chunks.size(); ++i) {
          const auto& chunk = term.chunks[i];
          const std::uint64_t chunk_end = at + chunk.size;
          if (at >= end) break;
          if (at >= first && chunk_end <= end) {
            if (auto ok = composer.reference(term.xorb, term.first_chunk + static_cast<std::uint32_t>(i), chunk); !ok) {
              return std::unexpected(ok.error());
            }
          } else {
            auto bytes = read_edge_chunk(downloader, part, at, chunk);
            if (!bytes) return std::unexpected(bytes.error());
            const std::uint64_t from = std::max(first, at);
            const std::uint64_t to = std::min(end, chunk_end);
            composer.edge_bytes(xet::ByteSpan(*bytes).subspan(static_cast<std::size_t>(from - at),
                                                              static_cast<std::size_t>(to - from)));
            ++edge_chunks;
          }
          at = chunk_end;
          done = std::min(end, chunk_end);
        }
      }
      if (done <= before) {
        return fail(UploadErrorKind::remote, "the chunk list of " + part.file_hash.to_string() + " made no progress");
      }
    }
  }
  auto composed = composer.finish();
  if (composed) composed->edge_chunks_read = edge_chunks;
  return composed;
}

}  // namespace bucketfs::transfer
