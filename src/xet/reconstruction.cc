#include "bucketfs/xet/reconstruction.h"

#include <algorithm>
#include <limits>
#include <optional>
#include <tuple>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include <nlohmann/json.hpp>

namespace bucketfs::xet {
namespace {

using Json = nlohmann::json;

constexpr std::uint64_t kMaxU64 = std::numeric_limits<std::uint64_t>::max();

std::unexpected<Error> format_error(const std::string& field, const std::string& what) {
  return make_error(ErrorCode::kInvalidFormat, field + ": " + what);
}

// `name["key"]` with the key shortened, for messages about map entries.
std::string keyed(const std::string& name, std::string_view key) {
  std::string shown(key.substr(0, 80));
  if (key.size() > 80) shown += "...";
  return name + "[\"" + shown + "\"]";
}

std::string indexed(const std::string& name, std::size_t index) {
  return name + "[" + std::to_string(index) + "]";
}

std::string member_name(const std::string& parent, const char* key) {
  return parent.empty() ? std::string(key) : parent + "." + key;
}

const char* type_name(const Json& value) {
  if (value.is_null()) return "null";
  if (value.is_boolean()) return "a boolean";
  if (value.is_number_float()) return "a fractional number";
  if (value.is_number_integer() && !value.is_number_unsigned()) return "a negative number";
  if (value.is_number()) return "a number";
  if (value.is_string()) return "a string";
  if (value.is_array()) return "an array";
  if (value.is_object()) return "an object";
  return "something else";
}

std::unexpected<Error> wrong_type(const std::string& field, const char* expected, const Json& value) {
  return format_error(field, std::string("expected ") + expected + ", got " + type_name(value));
}

Result<const Json*> member(const Json& object, const std::string& parent, const char* key) {
  auto it = object.find(key);
  if (it == object.end()) return format_error(member_name(parent, key), "missing");
  return &*it;
}

Result<const Json*> member_of_type(const Json& object, const std::string& parent, const char* key,
                                   Json::value_t type, const char* expected) {
  auto value = member(object, parent, key);
  if (!value) return std::unexpected(value.error());
  if ((*value)->type() != type) return wrong_type(member_name(parent, key), expected, **value);
  return *value;
}

Result<std::uint64_t> u64_member(const Json& object, const std::string& parent, const char* key) {
  auto value = member(object, parent, key);
  if (!value) return std::unexpected(value.error());
  // nlohmann gives every integer literal without a minus sign (that fits 64 bits) the unsigned type.
  if (!(*value)->is_number_unsigned())
    return wrong_type(member_name(parent, key), "a non-negative integer", **value);
  return (*value)->get<std::uint64_t>();
}

Result<Hash> parse_hash_text(std::string_view text, const std::string& field) {
  auto hash = Hash::from_string(text);
  if (!hash) return make_error(ErrorCode::kInvalidHash, field + ": " + hash.error().message);
  return *hash;
}

std::string describe(const ChunkRange& range) {
  return "[" + std::to_string(range.start) + ", " + std::to_string(range.end) + ")";
}
std::string describe(const HttpByteRange& range) {
  return "[" + std::to_string(range.first) + ", " + std::to_string(range.last) + "]";
}

Result<void> check_chunk_range(const ChunkRange& range, const std::string& field) {
  if (range.end <= range.start)
    return format_error(field, "chunk range " + describe(range) + " is empty or reversed (end is exclusive)");
  return {};
}

Result<void> check_byte_range(const HttpByteRange& range, const std::string& field) {
  if (range.last < range.first)
    return format_error(field, "byte range " + describe(range) + " ends before it starts (end is inclusive)");
  if (range.last == kMaxU64) return format_error(field, "byte range end overflows");
  return {};
}

Result<ChunkRange> parse_chunk_range(const Json& object, const std::string& parent, const char* key) {
  const std::string field = member_name(parent, key);
  auto value = member_of_type(object, parent, key, Json::value_t::object, "an object {start, end}");
  if (!value) return std::unexpected(value.error());
  auto start = u64_member(**value, field, "start");
  if (!start) return std::unexpected(start.error());
  auto end = u64_member(**value, field, "end");
  if (!end) return std::unexpected(end.error());
  ChunkRange range{*start, *end};
  if (auto ok = check_chunk_range(range, field); !ok) return std::unexpected(ok.error());
  return range;
}

Result<HttpByteRange> parse_byte_range(const Json& object, const std::string& parent, const char* key) {
  const std::string field = member_name(parent, key);
  auto value = member_of_type(object, parent, key, Json::value_t::object, "an object {start, end}");
  if (!value) return std::unexpected(value.error());
  auto start = u64_member(**value, field, "start");
  if (!start) return std::unexpected(start.error());
  auto end = u64_member(**value, field, "end");
  if (!end) return std::unexpected(end.error());
  HttpByteRange range{*start, *end};
  if (auto ok = check_byte_range(range, field); !ok) return std::unexpected(ok.error());
  return range;
}

Result<ReconstructionTerm> parse_term(const Json& value, const std::string& field) {
  if (!value.is_object()) return wrong_type(field, "an object", value);
  auto hash_text = member_of_type(value, field, "hash", Json::value_t::string, "a string");
  if (!hash_text) return std::unexpected(hash_text.error());
  auto hash = parse_hash_text((*hash_text)->get_ref<const std::string&>(), member_name(field, "hash"));
  if (!hash) return std::unexpected(hash.error());
  auto length = u64_member(value, field, "unpacked_length");
  if (!length) return std::unexpected(length.error());
  auto chunks = parse_chunk_range(value, field, "range");
  if (!chunks) return std::unexpected(chunks.error());
  return ReconstructionTerm{*hash, *chunks, *length};
}

Result<std::vector<ReconstructionTerm>> parse_terms(const Json& value, const std::string& field) {
  if (!value.is_array()) return wrong_type(field, "an array", value);
  std::vector<ReconstructionTerm> terms;
  terms.reserve(value.size());
  for (std::size_t i = 0; i < value.size(); ++i) {
    auto term = parse_term(value[i], indexed(field, i));
    if (!term) return std::unexpected(term.error());
    terms.push_back(*term);
  }
  return terms;
}

// Walks a {xorb hash -> [entry...]} map, calling parse_entry(entry json, field, xorb) for each.
template <typename ParseEntry>
Result<std::vector<XorbFetch>> parse_fetch_map(const Json& value, const std::string& field,
                                               ParseEntry parse_entry) {
  if (!value.is_object()) return wrong_type(field, "an object keyed by xorb hash", value);
  std::vector<XorbFetch> fetches;
  for (auto it = value.begin(); it != value.end(); ++it) {
    const std::string xorb_field = keyed(field, it.key());
    auto xorb = parse_hash_text(it.key(), xorb_field);
    if (!xorb) return std::unexpected(xorb.error());
    if (!it->is_array()) return wrong_type(xorb_field, "an array of fetch entries", *it);
    for (std::size_t i = 0; i < it->size(); ++i) {
      auto fetch = parse_entry((*it)[i], indexed(xorb_field, i), *xorb);
      if (!fetch) return std::unexpected(fetch.error());
      fetches.push_back(std::move(*fetch));
    }
  }
  return fetches;
}

Result<XorbFetch> parse_v1_entry(const Json& value, const std::string& field, const Hash& xorb) {
  if (!value.is_object()) return wrong_type(field, "an object", value);
  auto url = member_of_type(value, field, "url", Json::value_t::string, "a string");
  if (!url) return std::unexpected(url.error());
  auto chunks = parse_chunk_range(value, field, "range");
  if (!chunks) return std::unexpected(chunks.error());
  auto bytes = parse_byte_range(value, field, "url_range");
  if (!bytes) return std::unexpected(bytes.error());
  return XorbFetch{xorb, (*url)->get<std::string>(), {XorbByteRange{*chunks, *bytes}}};
}

Result<XorbFetch> parse_v2_entry(const Json& value, const std::string& field, const Hash& xorb) {
  if (!value.is_object()) return wrong_type(field, "an object", value);
  auto url = member_of_type(value, field, "url", Json::value_t::string, "a string");
  if (!url) return std::unexpected(url.error());
  const std::string ranges_field = member_name(field, "ranges");
  auto ranges = member_of_type(value, field, "ranges", Json::value_t::array, "an array");
  if (!ranges) return std::unexpected(ranges.error());
  XorbFetch fetch{xorb, (*url)->get<std::string>(), {}};
  for (std::size_t i = 0; i < (*ranges)->size(); ++i) {
    const Json& range = (**ranges)[i];
    const std::string range_field = indexed(ranges_field, i);
    if (!range.is_object()) return wrong_type(range_field, "an object {chunks, bytes}", range);
    auto chunks = parse_chunk_range(range, range_field, "chunks");
    if (!chunks) return std::unexpected(chunks.error());
    auto bytes = parse_byte_range(range, range_field, "bytes");
    if (!bytes) return std::unexpected(bytes.error());
    fetch.ranges.push_back(XorbByteRange{*chunks, *bytes});
  }
  return fetch;
}

// JSON text to a value; kInvalidFormat when it is not JSON or not an object.
Result<Json> parse_object(std::string_view text) {
  Json root = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) return format_error("response", "not valid JSON");
  if (!root.is_object()) return wrong_type("response", "a JSON object", root);
  return root;
}

// Where each xorb's fetch entries are: xorb -> indices into `fetches`, in order.
using FetchIndex = std::unordered_map<Hash, std::vector<std::size_t>>;

FetchIndex index_fetches(const std::vector<XorbFetch>& fetches) {
  FetchIndex index;
  for (std::size_t i = 0; i < fetches.size(); ++i) index[fetches[i].xorb].push_back(i);
  return index;
}

struct Cover {
  std::size_t fetch = 0;
  std::size_t range = 0;
};

// The first fetch range (entry order, then range order) of the term's xorb holding all its chunks.
std::optional<Cover> find_cover(const FetchIndex& index, const std::vector<XorbFetch>& fetches,
                                const ReconstructionTerm& term) {
  auto it = index.find(term.xorb);
  if (it == index.end()) return std::nullopt;
  for (std::size_t f : it->second) {
    const auto& ranges = fetches[f].ranges;
    for (std::size_t r = 0; r < ranges.size(); ++r)
      if (ranges[r].chunks.contains(term.chunks)) return Cover{f, r};
  }
  return std::nullopt;
}

std::unexpected<Error> uncovered(const std::string& field, const ReconstructionTerm& term,
                                 const std::string& map_name) {
  return format_error(field, "no " + map_name + " range of xorb " + term.xorb.to_string() +
                                 " covers chunks " + describe(term.chunks));
}

// The checks shared by the parsers and validate_reconstruction(). `map_name` names the fetch map in
// messages ("fetch_info" or "xorbs").
Result<void> check_fetches(const std::vector<XorbFetch>& fetches, const std::string& map_name) {
  std::unordered_map<Hash, std::size_t> entries_seen;
  for (const auto& fetch : fetches) {
    const std::string field =
        indexed(keyed(map_name, fetch.xorb.to_string()), entries_seen[fetch.xorb]++);
    if (fetch.ranges.empty()) return format_error(field, "has no ranges");
    for (std::size_t i = 0; i < fetch.ranges.size(); ++i) {
      const auto& range = fetch.ranges[i];
      // A v1 entry is its own range; a v2 entry lists them under `ranges`.
      const std::string range_field = map_name == "xorbs" ? indexed(field + ".ranges", i) : field;
      if (auto ok = check_chunk_range(range.chunks, range_field); !ok) return ok;
      if (auto ok = check_byte_range(range.bytes, range_field); !ok) return ok;
      if (i > 0) {
        const auto& previous = fetch.ranges[i - 1];
        if (range.chunks.start < previous.chunks.end || range.bytes.first <= previous.bytes.last)
          return format_error(range_field, "not after the previous range (ranges must ascend without overlap)");
      }
    }
  }
  return {};
}

Result<std::uint64_t> check_terms(const std::vector<ReconstructionTerm>& terms,
                                  const std::vector<XorbFetch>& fetches, const std::string& terms_name,
                                  const std::string& map_name) {
  const FetchIndex index = index_fetches(fetches);
  std::uint64_t total = 0;
  for (std::size_t i = 0; i < terms.size(); ++i) {
    const auto& term = terms[i];
    const std::string field = indexed(terms_name, i);
    if (auto ok = check_chunk_range(term.chunks, field + ".range"); !ok) return std::unexpected(ok.error());
    if (term.unpacked_length > kMaxU64 - total)
      return format_error(field + ".unpacked_length", "the terms' total length overflows 64 bits");
    total += term.unpacked_length;
    if (!find_cover(index, fetches, term)) return uncovered(field, term, map_name);
  }
  return total;
}

Result<void> check_reconstruction(const Reconstruction& reconstruction, const std::string& map_name) {
  if (auto ok = check_fetches(reconstruction.fetches, map_name); !ok) return ok;
  auto total = check_terms(reconstruction.terms, reconstruction.fetches, "terms", map_name);
  if (!total) return std::unexpected(total.error());
  const std::uint64_t offset = reconstruction.offset_into_first_range;
  if (offset != 0 && offset >= *total)
    return format_error("offset_into_first_range", std::to_string(offset) + " is not inside the terms (" +
                                                       std::to_string(*total) + " bytes)");
  return {};
}

Result<Reconstruction> parse_with_map(const Json& root, const char* map_key, bool v2) {
  Reconstruction reconstruction;
  auto offset = u64_member(root, "", "offset_into_first_range");
  if (!offset) return std::unexpected(offset.error());
  reconstruction.offset_into_first_range = *offset;
  auto terms_json = member(root, "", "terms");
  if (!terms_json) return std::unexpected(terms_json.error());
  auto terms = parse_terms(**terms_json, "terms");
  if (!terms) return std::unexpected(terms.error());
  reconstruction.terms = std::move(*terms);
  auto map_json = member(root, "", map_key);
  if (!map_json) return std::unexpected(map_json.error());
  auto fetches = v2 ? parse_fetch_map(**map_json, map_key, parse_v2_entry)
                    : parse_fetch_map(**map_json, map_key, parse_v1_entry);
  if (!fetches) return std::unexpected(fetches.error());
  reconstruction.fetches = std::move(*fetches);
  if (auto ok = check_reconstruction(reconstruction, map_key); !ok) return std::unexpected(ok.error());
  return reconstruction;
}

// Runs `body`, turning any nlohmann exception (none is expected: the parser is called without
// exceptions and every access is checked first) into an Error rather than letting it escape.
template <typename Body>
auto guarded(Body body) -> decltype(body()) {
  try {
    return body();
  } catch (const nlohmann::json::exception& e) {
    return format_error("response", std::string("unexpected JSON error: ") + e.what());
  } catch (const std::bad_alloc&) {
    return make_error(ErrorCode::kTooLarge, "response: out of memory while parsing");
  }
}

Json chunk_range_json(const ChunkRange& range) { return Json{{"start", range.start}, {"end", range.end}}; }
Json byte_range_json(const HttpByteRange& range) { return Json{{"start", range.first}, {"end", range.last}}; }

Json terms_json(const std::vector<ReconstructionTerm>& terms) {
  Json out = Json::array();
  for (const auto& term : terms)
    out.push_back(Json{{"hash", term.xorb.to_string()},
                       {"unpacked_length", term.unpacked_length},
                       {"range", chunk_range_json(term.chunks)}});
  return out;
}

Json fetch_info_json(const std::vector<XorbFetch>& fetches) {
  Json out = Json::object();
  for (const auto& fetch : fetches) {
    Json& entries = out[fetch.xorb.to_string()];
    if (entries.is_null()) entries = Json::array();
    for (const auto& range : fetch.ranges)
      entries.push_back(Json{{"range", chunk_range_json(range.chunks)},
                             {"url", fetch.url},
                             {"url_range", byte_range_json(range.bytes)}});
  }
  return out;
}

std::string dump(const Json& value) {
  // Replace, rather than throw on, invalid UTF-8 in hand-built URLs.
  return value.dump(-1, ' ', false, Json::error_handler_t::replace);
}

}  // namespace

std::string XorbFetch::range_header() const {
  std::string header = "bytes=";
  for (std::size_t i = 0; i < ranges.size(); ++i) {
    if (i > 0) header += ',';
    header += std::to_string(ranges[i].bytes.first) + "-" + std::to_string(ranges[i].bytes.last);
  }
  return header;
}

std::uint64_t Reconstruction::total_unpacked_length() const {
  std::uint64_t total = 0;
  for (const auto& term : terms) total += term.unpacked_length;
  return total;
}

Result<Reconstruction> BatchReconstruction::file(const Hash& file_id) const {
  auto it = files.find(file_id);
  if (it == files.end())
    return make_error(ErrorCode::kInvalidArgument, "file " + file_id.to_string() + " is not in the batch");
  Reconstruction reconstruction;
  reconstruction.terms = it->second;
  std::unordered_set<Hash> used;
  for (const auto& term : it->second) used.insert(term.xorb);
  for (const auto& fetch : fetches)
    if (used.contains(fetch.xorb)) reconstruction.fetches.push_back(fetch);
  return reconstruction;
}

Result<Reconstruction> parse_reconstruction_v1(std::string_view json) {
  return guarded([&]() -> Result<Reconstruction> {
    auto root = parse_object(json);
    if (!root) return std::unexpected(root.error());
    return parse_with_map(*root, "fetch_info", /*v2=*/false);
  });
}

Result<Reconstruction> parse_reconstruction_v2(std::string_view json) {
  return guarded([&]() -> Result<Reconstruction> {
    auto root = parse_object(json);
    if (!root) return std::unexpected(root.error());
    return parse_with_map(*root, "xorbs", /*v2=*/true);
  });
}

Result<Reconstruction> parse_reconstruction(std::string_view json) {
  return guarded([&]() -> Result<Reconstruction> {
    auto root = parse_object(json);
    if (!root) return std::unexpected(root.error());
    const bool v2 = root->contains("xorbs");
    return parse_with_map(*root, v2 ? "xorbs" : "fetch_info", v2);
  });
}

Result<BatchReconstruction> parse_batch_reconstruction(std::string_view json) {
  return guarded([&]() -> Result<BatchReconstruction> {
    auto root = parse_object(json);
    if (!root) return std::unexpected(root.error());
    BatchReconstruction batch;
    auto fetch_json = member(*root, "", "fetch_info");
    if (!fetch_json) return std::unexpected(fetch_json.error());
    auto fetches = parse_fetch_map(**fetch_json, "fetch_info", parse_v1_entry);
    if (!fetches) return std::unexpected(fetches.error());
    batch.fetches = std::move(*fetches);
    if (auto ok = check_fetches(batch.fetches, "fetch_info"); !ok) return std::unexpected(ok.error());

    auto files = member_of_type(*root, "", "files", Json::value_t::object, "an object keyed by file id");
    if (!files) return std::unexpected(files.error());
    for (auto it = (*files)->begin(); it != (*files)->end(); ++it) {
      const std::string field = keyed("files", it.key());
      auto file_id = parse_hash_text(it.key(), field);
      if (!file_id) return std::unexpected(file_id.error());
      auto terms = parse_terms(*it, field);
      if (!terms) return std::unexpected(terms.error());
      auto total = check_terms(*terms, batch.fetches, field, "fetch_info");
      if (!total) return std::unexpected(total.error());
      batch.files[*file_id] = std::move(*terms);
    }
    return batch;
  });
}

Result<void> validate_reconstruction(const Reconstruction& reconstruction) {
  return check_reconstruction(reconstruction, "xorbs");
}

std::string to_json_v1(const Reconstruction& reconstruction) {
  return dump(Json{{"offset_into_first_range", reconstruction.offset_into_first_range},
                   {"terms", terms_json(reconstruction.terms)},
                   {"fetch_info", fetch_info_json(reconstruction.fetches)}});
}

std::string to_json_v2(const Reconstruction& reconstruction) {
  Json xorbs = Json::object();
  for (const auto& fetch : reconstruction.fetches) {
    Json ranges = Json::array();
    for (const auto& range : fetch.ranges)
      ranges.push_back(Json{{"chunks", chunk_range_json(range.chunks)}, {"bytes", byte_range_json(range.bytes)}});
    Json& entries = xorbs[fetch.xorb.to_string()];
    if (entries.is_null()) entries = Json::array();
    entries.push_back(Json{{"url", fetch.url}, {"ranges", std::move(ranges)}});
  }
  return dump(Json{{"offset_into_first_range", reconstruction.offset_into_first_range},
                   {"terms", terms_json(reconstruction.terms)},
                   {"xorbs", std::move(xorbs)}});
}

std::string to_json_batch(const BatchReconstruction& batch) {
  Json files = Json::object();
  for (const auto& [file_id, terms] : batch.files) files[file_id.to_string()] = terms_json(terms);
  return dump(Json{{"files", std::move(files)}, {"fetch_info", fetch_info_json(batch.fetches)}});
}

Result<std::string> reconstruction_range_header(FileByteRange range) {
  if (range.end <= range.start)
    return make_error(ErrorCode::kInvalidArgument,
                      "empty file range [" + std::to_string(range.start) + ", " + std::to_string(range.end) +
                          ") has no Range header");
  return "bytes=" + std::to_string(range.start) + "-" + std::to_string(range.end - 1);
}

Result<ReadPlan> plan_read(const Reconstruction& reconstruction, std::uint64_t requested_start,
                           FileByteRange wanted) {
  if (wanted.end < wanted.start)
    return make_error(ErrorCode::kInvalidArgument, "wanted range ends before it starts: [" +
                                                       std::to_string(wanted.start) + ", " +
                                                       std::to_string(wanted.end) + ")");
  const std::uint64_t offset = reconstruction.offset_into_first_range;
  if (offset > requested_start)
    return format_error("offset_into_first_range",
                        std::to_string(offset) + " exceeds the requested start " + std::to_string(requested_start));
  // File offset of the first byte of the first term.
  const std::uint64_t stream_start = requested_start - offset;
  if (wanted.start < stream_start)
    return make_error(ErrorCode::kInvalidArgument,
                      "wanted range starts at " + std::to_string(wanted.start) +
                          ", before the reconstruction's first byte " + std::to_string(stream_start));

  ReadPlan plan;
  plan.range = {wanted.start, wanted.start};
  if (wanted.start == wanted.end) return plan;

  const FetchIndex index = index_fetches(reconstruction.fetches);
  // Reconstruction fetch index -> plan fetch index.
  std::unordered_map<std::size_t, std::size_t> planned_fetch;
  std::uint64_t term_start = stream_start;
  for (std::size_t i = 0; i < reconstruction.terms.size(); ++i) {
    const auto& term = reconstruction.terms[i];
    if (term.unpacked_length > kMaxU64 - term_start)
      return format_error(indexed("terms", i) + ".unpacked_length", "the term ends past 2^64 bytes");
    const std::uint64_t term_end = term_start + term.unpacked_length;
    if (term_start >= wanted.end) break;
    if (term_end > wanted.start && term_end > term_start) {
      const std::uint64_t copy_start = std::max(term_start, wanted.start);
      const std::uint64_t copy_end = std::min(term_end, wanted.end);
      auto cover = find_cover(index, reconstruction.fetches, term);
      if (!cover) return uncovered(indexed("terms", i), term, "fetch");
      auto [slot, inserted] = planned_fetch.try_emplace(cover->fetch, plan.fetches.size());
      if (inserted) plan.fetches.push_back(reconstruction.fetches[cover->fetch]);
      plan.terms.push_back(PlannedTerm{
          .term_index = i,
          .xorb = term.xorb,
          .chunks = term.chunks,
          .unpacked_length = term.unpacked_length,
          .fetch_index = slot->second,
          .range_index = cover->range,
          .skip = copy_start - term_start,
          .take = copy_end - copy_start,
          .output_offset = copy_start - wanted.start,
      });
      plan.range.end = copy_end;
    }
    term_start = term_end;
  }
  return plan;
}

Result<ReadPlan> plan_whole_file(const Reconstruction& reconstruction) {
  if (reconstruction.offset_into_first_range != 0)
    return make_error(ErrorCode::kInvalidArgument,
                      "offset_into_first_range is " + std::to_string(reconstruction.offset_into_first_range) +
                          ": an answer to a Range request, not a whole file");
  std::uint64_t total = 0;
  for (const auto& term : reconstruction.terms) {
    if (term.unpacked_length > kMaxU64 - total)
      return format_error("terms", "the terms' total length overflows 64 bits");
    total += term.unpacked_length;
  }
  return plan_read(reconstruction, 0, FileByteRange{0, total});
}

Result<std::vector<CopySpan>> copy_spans(const ReadPlan& plan, std::size_t fetch_index,
                                         std::size_t range_index,
                                         std::span<const std::uint64_t> chunk_sizes) {
  if (fetch_index >= plan.fetches.size() || range_index >= plan.fetches[fetch_index].ranges.size())
    return make_error(ErrorCode::kInvalidArgument, "no fetch " + std::to_string(fetch_index) + " range " +
                                                       std::to_string(range_index) + " in the plan");
  const ChunkRange fetched = plan.fetches[fetch_index].ranges[range_index].chunks;
  if (chunk_sizes.size() != fetched.size())
    return make_error(ErrorCode::kSizeMismatch, "fetched chunks " + describe(fetched) + " are " +
                                                    std::to_string(fetched.size()) + " chunks, got " +
                                                    std::to_string(chunk_sizes.size()) + " sizes");
  // chunk_starts[k]: decompressed offset of chunk fetched.start + k within the fetched range.
  std::vector<std::uint64_t> chunk_starts(chunk_sizes.size() + 1, 0);
  for (std::size_t k = 0; k < chunk_sizes.size(); ++k) {
    if (chunk_sizes[k] > kMaxU64 - chunk_starts[k])
      return make_error(ErrorCode::kSizeMismatch, "chunk sizes of " + describe(fetched) + " overflow 64 bits");
    chunk_starts[k + 1] = chunk_starts[k] + chunk_sizes[k];
  }

  std::vector<CopySpan> spans;
  for (const auto& term : plan.terms) {
    if (term.fetch_index != fetch_index || term.range_index != range_index) continue;
    const std::string name = "term " + std::to_string(term.term_index) + " (xorb " + term.xorb.to_string() +
                             ", chunks " + describe(term.chunks) + ")";
    if (!fetched.contains(term.chunks))
      return make_error(ErrorCode::kInvalidArgument, name + " is not inside fetched chunks " + describe(fetched));
    if (term.take == 0 || term.skip > term.unpacked_length || term.take > term.unpacked_length - term.skip)
      return make_error(ErrorCode::kInvalidArgument, name + " cuts outside its unpacked_length");
    const std::size_t first = term.chunks.start - fetched.start;
    const std::size_t last = term.chunks.end - fetched.start;  // exclusive
    const std::uint64_t decompressed = chunk_starts[last] - chunk_starts[first];
    if (decompressed != term.unpacked_length)
      return make_error(ErrorCode::kSizeMismatch, name + " decompresses to " + std::to_string(decompressed) +
                                                      " bytes but its unpacked_length is " +
                                                      std::to_string(term.unpacked_length));
    // Cut [low, high) of the fetched range's decompressed bytes into per-chunk pieces.
    const std::uint64_t low = chunk_starts[first] + term.skip;
    const std::uint64_t high = low + term.take;
    // The chunk holding byte `low`: the last k with chunk_starts[k] <= low (skips empty chunks).
    std::size_t k = static_cast<std::size_t>(
        std::upper_bound(chunk_starts.begin() + static_cast<std::ptrdiff_t>(first),
                         chunk_starts.begin() + static_cast<std::ptrdiff_t>(last), low) -
        chunk_starts.begin() - 1);
    std::uint64_t position = low;
    while (position < high) {
      const std::uint64_t piece_end = std::min(high, chunk_starts[k + 1]);
      if (piece_end > position)
        spans.push_back(CopySpan{
            .chunk = fetched.start + k,
            .chunk_offset = position - chunk_starts[k],
            .length = piece_end - position,
            .output_offset = term.output_offset + (position - low),
        });
      position = piece_end;
      ++k;
    }
  }
  std::sort(spans.begin(), spans.end(), [](const CopySpan& a, const CopySpan& b) {
    return std::tie(a.chunk, a.chunk_offset, a.output_offset) < std::tie(b.chunk, b.chunk_offset, b.output_offset);
  });
  return spans;
}

}  // namespace bucketfs::xet
