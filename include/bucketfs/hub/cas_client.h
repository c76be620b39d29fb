#pragma once
// A typed client of the Xet CAS API (reference/xet-spec/api.md) at the casUrl of a bucket's
// XetTokenSource, and of the pre-signed xorb URLs that reconstructions point to.
//
// Auth: every CAS call sends `Authorization: Bearer <CAS token>` from the token source, never the
// Hub token. A 401 invalidates that token and the call is sent once more with a fresh one; a
// second 401 is HubErrorKind::unauthorized. Pre-signed xorb URLs get NO Authorization header.
//
// Reconstruction versions: GET /v2/reconstructions first. On 404 or 501 the client asks
// /v1/reconstructions; if v1 answers, the server lacks v2 and every later call of this client
// goes straight to v1 (as xet-core does). If v1 is 404 too, the file is missing (entry_not_found)
// and the choice is not changed, so one missing file does not switch a v2 server to v1.
//
// Global dedup prefix: dedup_query() asks /v1/chunks/default/{hash}. api.md names
// `default-merkledb` as the only prefix, but xet-core (`default_prefix = "default"`) and the npm
// client send `default`, and that is what the Hub serves them; bucketfs-server accepts both.
//
// Memory: upload bodies are spans, sent without a copy (they must stay valid during the call).
// A single-range xorb fetch streams to the caller's sink; a multi-range one is buffered (it is
// bounded by the signed ranges) and split into parts.
//
// Thread-safe: calls may run concurrently (the transport and token source are thread-safe).

#include <atomic>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "bucketfs/http/http.h"
#include "bucketfs/hub/error.h"
#include "bucketfs/hub/xet_token.h"
#include "bucketfs/xet/reconstruction.h"
#include "bucketfs/xet/shard.h"

namespace bucketfs::hub {

// Receives fetched xorb bytes: `part` indexes the requested ranges, `offset` is where `data`
// starts within that part. Pieces of a part arrive in order. If the transport retries the request
// the bytes are sent again from offset 0, so write by offset rather than append. Return false to
// stop (the fetch fails, kind cancelled). The span is valid only during the call.
using XorbRangeSink = std::function<bool(std::size_t part, std::uint64_t offset, std::span<const std::byte> data)>;

struct CasClientOptions {
  http::Timeouts timeouts;
  // Reconstruction JSON larger than this is refused (bad_response).
  std::size_t max_json = std::size_t{64} << 20;
};

// The chunks of a stored file over a byte range, with their hashes (CasClient::file_chunks).
struct FileChunkTerm {
  xet::Hash xorb;
  std::uint32_t first_chunk = 0;             // index in the xorb of chunks[0]
  std::vector<xet::HashAndSize> chunks;      // consecutive chunks of the xorb, in file order
};
struct FileChunks {
  std::uint64_t offset = 0;  // file offset of the first chunk listed
  std::uint64_t file_size = 0;
  std::vector<FileChunkTerm> terms;  // in file order; every chunk that overlaps the range asked
};

class CasClient {
 public:
  // `transport` and `tokens` must outlive the client. Use a read token source for downloads and a
  // write one for uploads (a write token also reads).
  CasClient(http::Transport& transport, XetTokenSource& tokens, CasClientOptions options = {});

  // POST /v1/xorbs/default/{hash}: true when the server stored it, false when it already had it.
  HubResult<bool> upload_xorb(const xet::Hash& xorb_hash, std::span<const std::byte> serialized,
                              const http::CancellationToken* cancel = nullptr);
  // POST /v1/shards. True when the shard registered something new (result 1).
  HubResult<bool> upload_shard(std::span<const std::byte> shard, const http::CancellationToken* cancel = nullptr);

  // GET /v2/reconstructions/{file} (v1 fallback, see the top); `range` sends
  // `Range: bytes=start-(end-1)`. 404: entry_not_found; 416: range_not_satisfiable. An empty
  // range is invalid (no request). The empty file (zero hash) has no reconstruction: callers
  // must not ask (the answer would be entry_not_found).
  HubResult<xet::Reconstruction> get_reconstruction(const xet::Hash& file_hash,
                                                    std::optional<xet::FileByteRange> range = std::nullopt,
                                                    const http::CancellationToken* cancel = nullptr);
  // POST /v1/reconstructions with every file; 404 when one is missing.
  HubResult<xet::BatchReconstruction> batch_reconstruction(std::span<const xet::Hash> files,
                                                           const http::CancellationToken* cancel = nullptr);
  // HEAD /v1/files/{file}: the file's size, nullopt when the server does not know it (404).
  HubResult<std::optional<std::uint64_t>> head_file(const xet::Hash& file_hash,
                                                    const http::CancellationToken* cancel = nullptr);
  // GET /v1/file-chunks/{file} with `Range: bytes=start-(end-1)`: the chunks of the file that
  // overlap `range`, hashes and sizes included. A bucketfs-server extension (no Xet API tells a
  // client the chunk hashes of a stored file): other servers answer 404 (entry_not_found), as
  // they do for a file they do not have. REQUIRES: range non-empty.
  HubResult<FileChunks> file_chunks(const xet::Hash& file_hash, xet::FileByteRange range,
                                    const http::CancellationToken* cancel = nullptr);
  // GET /v1/chunks/default/{chunk}: the shard listing xorbs that hold the chunk (chunk hashes
  // keyed with the footer's key, see xet::keyed_chunk_hash), or nullopt on 404.
  HubResult<std::optional<xet::Shard>> dedup_query(const xet::Hash& chunk_hash,
                                                   const http::CancellationToken* cancel = nullptr);

  // GET `url` with `Range: bytes=a-b[,c-d...]` for `ranges` (in order), no Authorization. Each
  // range's bytes go to `sink` as part i; every part must come back exactly (else bad_response).
  // 403: url_expired (refetch the reconstruction for new URLs). REQUIRES: ranges non-empty.
  HubResult<void> fetch_xorb_range(const std::string& url, std::span<const xet::HttpByteRange> ranges,
                                   const XorbRangeSink& sink, const http::CancellationToken* cancel = nullptr);
  // The fetch entry of a reconstruction, whole.
  HubResult<void> fetch(const xet::XorbFetch& entry, const XorbRangeSink& sink,
                        const http::CancellationToken* cancel = nullptr);

  // Which reconstruction API the client uses now: 2, or 1 after falling back.
  int reconstruction_version() const { return version_.load(std::memory_order_relaxed); }

 private:
  // Sends a CAS request built by `make` (given casUrl) with the token, retrying once on 401.
  HubResult<http::Response> cas_call(const std::function<http::Request(const std::string& cas_url)>& make,
                                     std::string_view what, const http::CancellationToken* cancel);
  HubResult<http::Response> reconstruction_call(int version, const xet::Hash& file_hash,
                                                const std::optional<std::string>& range_header,
                                                const http::CancellationToken* cancel);

  http::Transport& transport_;
  XetTokenSource& tokens_;
  CasClientOptions options_;
  std::atomic<int> version_{2};
};

// ---- multipart/byteranges (RFC 9110 section 14.6), for the tests and the fetch path ------------

struct BytePart {
  std::uint64_t first = 0;  // from the part's Content-Range, inclusive
  std::uint64_t last = 0;
  std::span<const std::byte> data;  // points into the parsed body
};

// The boundary of a `multipart/byteranges; boundary=...` Content-Type (quotes removed), or nullopt
// when the type is another one.
std::optional<std::string> multipart_boundary(std::string_view content_type);
// Splits a multipart/byteranges body into its parts, in order, each sized by its Content-Range.
// bad_response on any framing error.
HubResult<std::vector<BytePart>> parse_multipart_byteranges(std::span<const std::byte> body,
                                                            std::string_view boundary);

}  // namespace bucketfs::hub
