#include "bucketfs/hub/cas_client.h"

#include <algorithm>
#include <charconv>

#include "bucketfs/http/http.h"
#include "bucketfs/xet/chunker.h"
#include "internal.h"

namespace bucketfs::hub {
namespace {

using nlohmann::json;

std::string lower(std::string_view text) {
  std::string out(text);
  for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

bool parse_u64(std::string_view text, std::uint64_t& out) {
  if (text.empty()) return false;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return ec == std::errc() && end == text.data() + text.size();
}

// "bytes a-b/total" or "bytes a-b/*" -> {a, b}.
std::optional<std::pair<std::uint64_t, std::uint64_t>> parse_content_range(std::string_view value) {
  value = trim(value);
  if (!value.starts_with("bytes ")) return std::nullopt;
  value.remove_prefix(6);
  value = trim(value);
  const auto dash = value.find('-');
  const auto slash = value.find('/');
  if (dash == std::string_view::npos || slash == std::string_view::npos || slash < dash) return std::nullopt;
  std::uint64_t first = 0, last = 0;
  if (!parse_u64(value.substr(0, dash), first) || !parse_u64(value.substr(dash + 1, slash - dash - 1), last) ||
      last < first) {
    return std::nullopt;
  }
  return std::pair{first, last};
}

std::string_view as_text(std::span<const std::byte> bytes) {
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

}  // namespace

// ---- multipart/byteranges ------------------------------------------------------------------------

std::optional<std::string> multipart_boundary(std::string_view content_type) {
  const std::string type = lower(content_type);
  if (!type.starts_with("multipart/byteranges")) return std::nullopt;
  const auto at = type.find("boundary=");
  if (at == std::string::npos) return std::nullopt;
  std::string_view value = content_type.substr(at + 9);
  value = value.substr(0, value.find(';'));
  value = trim(value);
  if (value.size() >= 2 && value.front() == '"' && value.back() == '"') value = value.substr(1, value.size() - 2);
  if (value.empty()) return std::nullopt;
  return std::string(value);
}

HubResult<std::vector<BytePart>> parse_multipart_byteranges(std::span<const std::byte> body,
                                                            std::string_view boundary) {
  const std::string_view text = as_text(body);
  const std::string delimiter = "--" + std::string(boundary);
  auto fail = [](std::string detail) { return std::unexpected(detail::bad_response("multipart/byteranges", detail)); };
  std::vector<BytePart> parts;
  std::size_t pos = text.find(delimiter);
  if (pos == std::string_view::npos) return fail("no boundary in the body");
  while (true) {
    pos += delimiter.size();
    if (text.substr(pos, 2) == "--") return parts;  // closing delimiter
    while (pos < text.size() && (text[pos] == ' ' || text[pos] == '\t')) ++pos;
    if (text.substr(pos, 2) != "\r\n") return fail("no CRLF after a boundary");
    pos += 2;
    const auto headers_end = text.find("\r\n\r\n", pos);
    std::optional<std::pair<std::uint64_t, std::uint64_t>> range;
    if (headers_end == std::string_view::npos) return fail("a part's headers do not end");
    for (std::size_t line_start = pos; line_start < headers_end;) {
      const auto line_end = std::min(text.find("\r\n", line_start), headers_end);
      const auto line = text.substr(line_start, line_end - line_start);
      const auto colon = line.find(':');
      if (colon != std::string_view::npos && http::iequals(trim(line.substr(0, colon)), "Content-Range")) {
        range = parse_content_range(line.substr(colon + 1));
        if (!range) return fail("a part has a bad Content-Range");
      }
      line_start = line_end + 2;
    }
    if (!range) return fail("a part has no Content-Range");
    const std::uint64_t length = range->second - range->first + 1;
    const std::size_t data_start = headers_end + 4;
    if (length > text.size() - data_start) return fail("a part is shorter than its Content-Range");
    parts.push_back(BytePart{range->first, range->second, body.subspan(data_start, static_cast<std::size_t>(length))});
    pos = data_start + static_cast<std::size_t>(length);
    if (text.substr(pos, 2) != "\r\n" || text.substr(pos + 2, delimiter.size()) != delimiter) {
      return fail("a part is not followed by a boundary");
    }
    pos += 2;
  }
}

// ---- the client ----------------------------------------------------------------------------------

CasClient::CasClient(http::Transport& transport, XetTokenSource& tokens, CasClientOptions options)
    : transport_(transport), tokens_(tokens), options_(options) {}

HubResult<http::Response> CasClient::cas_call(const std::function<http::Request(const std::string& cas_url)>& make,
                                              std::string_view what, const http::CancellationToken* cancel) {
  for (int attempt = 0;; ++attempt) {
    auto credentials = tokens_.get(cancel);
    if (!credentials) return std::unexpected(credentials.error());
    http::Request request = make(credentials->cas_url);
    request.headers.set("Authorization", "Bearer " + credentials->access_token);
    request.timeouts = options_.timeouts;
    auto response = transport_.perform(request, cancel);
    if (response) return std::move(*response);
    if (response.error().status == 401 && attempt == 0) {
      // Expired or revoked before we thought: drop it and try once more with a fresh one.
      tokens_.invalidate(credentials->access_token);
      continue;
    }
    return std::unexpected(detail::from_http(response.error(), what, {credentials->access_token}));
  }
}

HubResult<bool> CasClient::upload_xorb(const xet::Hash& xorb_hash, std::span<const std::byte> serialized,
                                       const http::CancellationToken* cancel) {
  const std::string hex = xorb_hash.to_string();
  const std::string subject = "upload of xorb " + hex;
  auto response = cas_call(
      [&](const std::string& cas) {
        http::Request request;
        request.method = "POST";
        request.url = cas + "/v1/xorbs/default/" + hex;
        request.headers.set("Content-Type", "application/octet-stream");
        request.body = serialized;
        return request;
      },
      subject, cancel);
  if (!response) return std::unexpected(response.error());
  auto value = detail::parse_json(response->body.text());
  if (!value || !value->is_object() || !value->contains("was_inserted") || !(*value)["was_inserted"].is_boolean()) {
    return std::unexpected(detail::bad_response(subject, "the answer lacks was_inserted"));
  }
  return (*value)["was_inserted"].get<bool>();
}

HubResult<bool> CasClient::upload_shard(std::span<const std::byte> shard, const http::CancellationToken* cancel) {
  const std::string subject = "shard upload";
  auto response = cas_call(
      [&](const std::string& cas) {
        http::Request request;
        request.method = "POST";
        request.url = cas + "/v1/shards";
        request.headers.set("Content-Type", "application/octet-stream");
        request.body = shard;
        return request;
      },
      subject, cancel);
  if (!response) return std::unexpected(response.error());
  auto value = detail::parse_json(response->body.text());
  if (!value || !value->is_object()) return std::unexpected(detail::bad_response(subject, "the answer is not JSON"));
  auto it = value->find("result");
  return it != value->end() && it->is_number_integer() && it->get<std::int64_t>() == 1;
}

HubResult<http::Response> CasClient::reconstruction_call(int version, const xet::Hash& file_hash,
                                                         const std::optional<std::string>& range_header,
                                                         const http::CancellationToken* cancel) {
  const std::string hex = file_hash.to_string();
  return cas_call(
      [&](const std::string& cas) {
        http::Request request;
        request.url = cas + (version == 2 ? "/v2/reconstructions/" : "/v1/reconstructions/") + hex;
        if (range_header) request.headers.set("Range", *range_header);
        request.max_body = options_.max_json;
        return request;
      },
      "reconstruction of " + hex, cancel);
}

HubResult<xet::Reconstruction> CasClient::get_reconstruction(const xet::Hash& file_hash,
                                                             std::optional<xet::FileByteRange> range,
                                                             const http::CancellationToken* cancel) {
  const std::string subject = "reconstruction of " + file_hash.to_string();
  std::optional<std::string> range_header;
  if (range) {
    auto header = xet::reconstruction_range_header(*range);
    if (!header) return make_hub_error(HubErrorKind::invalid, subject + ": empty byte range");
    range_header = std::move(*header);
  }
  auto response = reconstruction_call(reconstruction_version(), file_hash, range_header, cancel);
  if (!response && reconstruction_version() == 2 && (response.error().status == 404 || response.error().status == 501)) {
    // No v2 here, or no such file: v1 tells which.
    auto v1 = reconstruction_call(1, file_hash, range_header, cancel);
    if (v1) {
      version_.store(1, std::memory_order_relaxed);
      response = std::move(v1);
    } else if (v1.error().status != 404 && v1.error().status != 501) {
      version_.store(1, std::memory_order_relaxed);
      response = std::move(v1);
    }
  }
  if (!response) return std::unexpected(response.error());
  auto parsed = xet::parse_reconstruction(response->body.text());
  if (!parsed) return std::unexpected(detail::bad_response(subject, parsed.error().describe()));
  return std::move(*parsed);
}

HubResult<xet::BatchReconstruction> CasClient::batch_reconstruction(std::span<const xet::Hash> files,
                                                                    const http::CancellationToken* cancel) {
  const std::string subject = "batch reconstruction of " + std::to_string(files.size()) + " file(s)";
  json keys = json::array();
  for (const auto& file : files) keys.push_back(json{{"prefix", "default"}, {"hash", file.to_string()}});
  const std::string body = keys.dump();
  auto response = cas_call(
      [&](const std::string& cas) {
        http::Request request;
        request.method = "POST";
        request.url = cas + "/v1/reconstructions";
        request.headers.set("Content-Type", "application/json");
        request.body = xet::as_byte_span(body);
        request.max_body = options_.max_json;
        return request;
      },
      subject, cancel);
  if (!response) return std::unexpected(response.error());
  auto parsed = xet::parse_batch_reconstruction(response->body.text());
  if (!parsed) return std::unexpected(detail::bad_response(subject, parsed.error().describe()));
  return std::move(*parsed);
}

HubResult<std::optional<std::uint64_t>> CasClient::head_file(const xet::Hash& file_hash,
                                                             const http::CancellationToken* cancel) {
  const std::string hex = file_hash.to_string();
  const std::string subject = "file " + hex;
  auto response = cas_call(
      [&](const std::string& cas) {
        http::Request request;
        request.method = "HEAD";
        request.url = cas + "/v1/files/" + hex;
        return request;
      },
      subject, cancel);
  if (!response) {
    if (response.error().status == 404) return std::optional<std::uint64_t>{};
    return std::unexpected(response.error());
  }
  std::uint64_t size = 0;
  auto length = response->headers.get("Content-Length");
  if (!length || !parse_u64(trim(*length), size)) {
    return std::unexpected(detail::bad_response(subject, "no Content-Length"));
  }
  return std::optional<std::uint64_t>{size};
}

HubResult<FileChunks> CasClient::file_chunks(const xet::Hash& file_hash, xet::FileByteRange range,
                                             const http::CancellationToken* cancel) {
  const std::string hex = file_hash.to_string();
  const std::string subject = "chunk list of " + hex;
  auto header = xet::reconstruction_range_header(range);
  if (!header) return make_hub_error(HubErrorKind::invalid, subject + ": empty byte range");
  auto response = cas_call(
      [&](const std::string& cas) {
        http::Request request;
        request.url = cas + "/v1/file-chunks/" + hex;
        request.headers.set("Range", *header);
        request.max_body = options_.max_json;
        return request;
      },
      subject, cancel);
  if (!response) return std::unexpected(response.error());
  auto body = json::parse(response->body.text(), nullptr, false);
  auto bad = [&](const std::string& why) { return std::unexpected(detail::bad_response(subject, why)); };
  if (body.is_discarded() || !body.is_object()) return bad("not a JSON object");
  FileChunks out;
  if (!body.contains("offset") || !body["offset"].is_number_unsigned() || !body.contains("size") ||
      !body["size"].is_number_unsigned() || !body.contains("terms") || !body["terms"].is_array()) {
    return bad("offset, size or terms missing");
  }
  out.offset = body["offset"].get<std::uint64_t>();
  out.file_size = body["size"].get<std::uint64_t>();
  for (const auto& term : body["terms"]) {
    if (!term.is_object() || !term.contains("xorb") || !term["xorb"].is_string() || !term.contains("start") ||
        !term["start"].is_number_unsigned() || !term.contains("chunks") || !term["chunks"].is_array() ||
        term["chunks"].empty()) {
      return bad("malformed term");
    }
    FileChunkTerm parsed;
    auto xorb = xet::Hash::from_string(term["xorb"].get<std::string>());
    if (!xorb) return bad("malformed xorb hash");
    parsed.xorb = *xorb;
    const auto start = term["start"].get<std::uint64_t>();
    if (start + term["chunks"].size() > std::uint64_t{1} << 32) return bad("chunk index out of range");
    parsed.first_chunk = static_cast<std::uint32_t>(start);
    for (const auto& chunk : term["chunks"]) {
      if (!chunk.is_object() || !chunk.contains("hash") || !chunk["hash"].is_string() || !chunk.contains("size") ||
          !chunk["size"].is_number_unsigned()) {
        return bad("malformed chunk");
      }
      auto hash = xet::Hash::from_string(chunk["hash"].get<std::string>());
      const auto size = chunk["size"].get<std::uint64_t>();
      if (!hash || size == 0 || size > xet::kMaxChunkSize) return bad("malformed chunk hash or size");
      parsed.chunks.push_back({*hash, size});
    }
    out.terms.push_back(std::move(parsed));
  }
  return out;
}

HubResult<std::optional<xet::Shard>> CasClient::dedup_query(const xet::Hash& chunk_hash,
                                                            const http::CancellationToken* cancel) {
  const std::string hex = chunk_hash.to_string();
  const std::string subject = "dedup query for chunk " + hex;
  auto response = cas_call(
      [&](const std::string& cas) {
        http::Request request;
        request.url = cas + "/v1/chunks/default/" + hex;
        return request;
      },
      subject, cancel);
  if (!response) {
    if (response.error().status == 404) return std::optional<xet::Shard>{};
    return std::unexpected(response.error());
  }
  auto shard = xet::parse_shard(response->body.bytes());
  if (!shard) return std::unexpected(detail::bad_response(subject, shard.error().describe()));
  return std::optional<xet::Shard>{std::move(*shard)};
}

HubResult<void> CasClient::fetch(const xet::XorbFetch& entry, const XorbRangeSink& sink,
                                 const http::CancellationToken* cancel) {
  std::vector<xet::HttpByteRange> ranges;
  ranges.reserve(entry.ranges.size());
  for (const auto& range : entry.ranges) ranges.push_back(range.bytes);
  return fetch_xorb_range(entry.url, ranges, sink, cancel);
}

HubResult<void> CasClient::fetch_xorb_range(const std::string& url, std::span<const xet::HttpByteRange> ranges,
                                            const XorbRangeSink& sink, const http::CancellationToken* cancel) {
  const std::string subject = "xorb range fetch";
  if (ranges.empty()) return make_hub_error(HubErrorKind::invalid, subject + ": no ranges");
  http::Request request;
  request.url = url;  // signed: carries its own authorization; no Authorization header
  request.timeouts = options_.timeouts;
  auto map_error = [&](const http::Error& error, bool overflow) {
    HubError out = detail::from_http(error, subject, {});
    if (error.status == 403) out.kind = HubErrorKind::url_expired;
    if (overflow) {
      out.kind = HubErrorKind::bad_response;
      out.message = subject + ": the server sent more bytes than the range holds";
    }
    return std::unexpected(std::move(out));
  };

  if (ranges.size() == 1) {
    const auto range = ranges[0];
    request.range = http::Range{range.first, range.last};
    std::uint64_t received = 0;
    bool overflow = false;
    request.sink = [&](std::span<const std::byte> data) {
      if (data.size() > range.length() - received) {
        overflow = true;
        return false;
      }
      if (!sink(0, received, data)) return false;
      received += data.size();
      return true;
    };
    request.on_retry = [&] { received = 0; };
    auto response = transport_.perform(request, cancel);
    if (!response) return map_error(response.error(), overflow);
    if (response->status != 206 && !(response->status == 200 && range.first == 0)) {
      return make_hub_error(HubErrorKind::bad_response,
                            subject + ": HTTP " + std::to_string(response->status) + " to a Range request");
    }
    if (received != range.length()) {
      return make_hub_error(HubErrorKind::bad_response, subject + ": got " + std::to_string(received) + " of " +
                                                            std::to_string(range.length()) + " bytes");
    }
    return {};
  }

  std::string header = "bytes=";
  std::uint64_t total = 0;
  for (std::size_t i = 0; i < ranges.size(); ++i) {
    if (i) header += ',';
    header += std::to_string(ranges[i].first) + "-" + std::to_string(ranges[i].last);
    total += ranges[i].length();
  }
  request.headers.set("Range", header);
  request.max_body = static_cast<std::size_t>(total) + 512 * ranges.size() + 4096;
  auto response = transport_.perform(request, cancel);
  if (!response) return map_error(response.error(), false);
  const auto content_type = response->headers.get("Content-Type");
  const auto boundary = content_type ? multipart_boundary(*content_type) : std::nullopt;
  if (!boundary) {
    // A server may coalesce the ranges into one: accept it when it spans them all.
    auto content_range = response->headers.get("Content-Range");
    auto span = content_range ? parse_content_range(*content_range) : std::nullopt;
    if (response->status != 206 || !span || span->first > ranges.front().first || span->second < ranges.back().last ||
        response->body.size() != span->second - span->first + 1) {
      return make_hub_error(HubErrorKind::bad_response, subject + ": a multi-range answer is not multipart/byteranges");
    }
    for (std::size_t i = 0; i < ranges.size(); ++i) {
      const auto part = response->body.bytes().subspan(static_cast<std::size_t>(ranges[i].first - span->first),
                                                      static_cast<std::size_t>(ranges[i].length()));
      if (!sink(i, 0, part)) return make_hub_error(HubErrorKind::cancelled, subject + ": stopped by the caller");
    }
    return {};
  }
  auto parts = parse_multipart_byteranges(response->body.bytes(), *boundary);
  if (!parts) return std::unexpected(parts.error());
  if (parts->size() != ranges.size()) {
    return make_hub_error(HubErrorKind::bad_response, subject + ": " + std::to_string(parts->size()) + " parts for " +
                                                          std::to_string(ranges.size()) + " ranges");
  }
  for (std::size_t i = 0; i < ranges.size(); ++i) {
    const auto& part = (*parts)[i];
    if (part.first != ranges[i].first || part.last != ranges[i].last) {
      return make_hub_error(HubErrorKind::bad_response, subject + ": part " + std::to_string(i) +
                                                            " is not the range asked for");
    }
    if (!sink(i, 0, part.data)) return make_hub_error(HubErrorKind::cancelled, subject + ": stopped by the caller");
  }
  return {};
}

}  // namespace bucketfs::hub
