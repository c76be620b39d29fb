#include "batch_request.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "bucketfs/naming/naming.h"

namespace bucketfs::server {
namespace {

using nlohmann::json;

constexpr std::string_view kHash = "a1b2c3d4e5f6789012345678901234567890abcdef1234567890abcdef123456";

std::string error_of(std::string_view body) {
  auto parsed = parse_batch_request(body);
  return parsed ? std::string("(parsed)") : parsed.error();
}

TEST(BatchRequest, ParsesEveryOperation) {
  const std::string body =
      std::string(R"({"type":"addFile","path":"a/b.bin","xetHash":")") + std::string(kHash) +
      R"(","mtime":1727278262346,"contentType":"text/plain"})" + "\r\n" +
      "  \t\n" +
      R"({"type":"copyFile","path":"c","xetHash":")" + std::string(kHash) + R"(","sourceRepoId":"bob/src"})" + "\n" +
      R"({"type":"copyFile","path":"m","xetHash":")" + std::string(kHash) +
      R"(","sourceRepoType":"model","sourceRepoId":"x/y"})" + "\n" +
      R"({"type":"deleteFile","path":"old","extra":[1,2]})";
  auto parsed = parse_batch_request(body);
  ASSERT_TRUE(parsed.has_value()) << parsed.error();
  ASSERT_EQ(parsed->operations.size(), 3u);
  const BatchOperation& add = parsed->operations[0];
  EXPECT_EQ(add.kind, BatchOperation::Kind::kAdd);
  EXPECT_EQ(add.path, "a/b.bin");
  EXPECT_EQ(add.xet_hash.to_string(), kHash);
  EXPECT_EQ(add.mtime_ms, 1727278262346);
  EXPECT_EQ(add.content_type, "text/plain");
  const BatchOperation& copy = parsed->operations[1];
  EXPECT_EQ(copy.kind, BatchOperation::Kind::kCopy);
  EXPECT_EQ(copy.source_bucket, "bob/src");
  EXPECT_FALSE(copy.mtime_ms);
  EXPECT_EQ(parsed->operations[2].kind, BatchOperation::Kind::kDelete);
  EXPECT_EQ(parsed->operations[2].path, "old");
  ASSERT_EQ(parsed->failures.size(), 1u);
  EXPECT_EQ(parsed->failures[0].path, "m");
  EXPECT_EQ(parsed->failures[0].error, "copyFile from a model is not supported by bucketfs-server");
  // Empty and blank bodies are empty batches.
  for (std::string_view blank : {"", "\n", "\r\n\r\n", " \t \n\n"}) {
    auto empty = parse_batch_request(blank);
    ASSERT_TRUE(empty.has_value());
    EXPECT_TRUE(empty->operations.empty());
    EXPECT_TRUE(empty->failures.empty());
  }
}

TEST(BatchRequest, ErrorsNameTheLineAndTheField) {
  const std::string hash(kHash);
  auto add = [&](const std::string& extra) {
    return R"({"type":"addFile","path":"p","xetHash":")" + hash + "\"" + extra + "}";
  };
  // Blank lines count: the bad line is the third.
  EXPECT_EQ(error_of("\n" + add("") + "\nnot json"), "line 3: not a JSON object");
  EXPECT_EQ(error_of("[1]"), "line 1: not a JSON object");
  EXPECT_EQ(error_of(R"({"type":"addFile"})"), "line 1: 'path' must be a string");
  EXPECT_EQ(error_of(R"({"type":"addFile","path":7})"), "line 1: 'path' must be a string");
  EXPECT_EQ(error_of(R"({"path":"p"})"), "line 1: unknown operation type ''");
  EXPECT_EQ(error_of(R"({"type":"moveFile","path":"p"})"), "line 1: unknown operation type 'moveFile'");
  EXPECT_EQ(error_of(R"({"type":"addFile","path":"p"})"), "line 1: 'xetHash' must be a 64-digit hex string");
  EXPECT_EQ(error_of(R"({"type":"addFile","path":"p","xetHash":"abc"})"),
            "line 1: 'xetHash' must be a 64-digit hex string");
  EXPECT_EQ(error_of(add(R"(,"mtime":1.5)")), "line 1: 'mtime' must be integer milliseconds");
  EXPECT_EQ(error_of(add(R"(,"mtime":"1")")), "line 1: 'mtime' must be integer milliseconds");
  const std::string out_of_range = "line 1: 'mtime' must be Unix milliseconds within years 0001 to 9999";
  for (const char* mtime : {"253402300800000", "-62135596800001", "9223372036854775808", "18446744073709551615",
                            "-9223372036854775808"}) {
    EXPECT_EQ(error_of(add(std::string(",\"mtime\":") + mtime)), out_of_range) << mtime;
  }
  for (std::int64_t mtime : {kMinMtimeMs, kMaxMtimeMs, std::int64_t{0}, std::int64_t{-1}}) {
    auto parsed = parse_batch_request(add(",\"mtime\":" + std::to_string(mtime)));
    ASSERT_TRUE(parsed.has_value()) << parsed.error();
    EXPECT_EQ(parsed->operations[0].mtime_ms, mtime);
  }
  EXPECT_EQ(error_of(add(R"(,"contentType":null)")), "line 1: 'contentType' must be a string");
  EXPECT_EQ(error_of(R"({"type":"copyFile","path":"p","xetHash":")" + hash + R"("})"),
            "line 1: 'sourceRepoId' must be ns/name");
  EXPECT_EQ(error_of(R"({"type":"copyFile","path":"p","xetHash":")" + hash + R"(","sourceRepoId":"a/b/c"})"),
            "line 1: 'sourceRepoId' must be ns/name");
  // Wrong types where a string is expected. The handler used json::value() here, which threw: the
  // server closed the connection without an answer instead of sending a 400.
  EXPECT_EQ(error_of(R"({"type":5,"path":"p"})"), "line 1: 'type' must be a string");
  EXPECT_EQ(error_of(R"({"type":"copyFile","path":"p","xetHash":")" + hash + R"(","sourceRepoId":["a/b"]})"),
            "line 1: 'sourceRepoId' must be ns/name");
  EXPECT_EQ(error_of(R"({"type":"copyFile","path":"p","xetHash":")" + hash + R"(","sourceRepoType":1})"),
            "line 1: 'sourceRepoType' must be a string");
  // The first bad line wins, even after a copy refused as a failure.
  EXPECT_EQ(error_of(R"({"type":"copyFile","path":"m","xetHash":")" + hash +
                     R"(","sourceRepoType":"dataset"})" + "\n{\"path\":\"p\"}"),
            "line 2: unknown operation type ''");
}

// ---- random mutation ----------------------------------------------------------------------------
// Valid batches (every operation type and optional field, CRLF and blank lines, odd paths) mutated
// by line, as JSON and as bytes. Every parse must end in a message naming a non-blank line of the
// input and a field, or in operations that keep parse_batch_request()'s promises and survive a
// round trip. Run under ASan/UBSan (scripts/test.sh does).

double fuzz_seconds() {
  const char* text = std::getenv("BUCKETFS_FUZZ_SECONDS");
  if (text == nullptr || *text == '\0') return 2.0;
  return std::max(0.05, std::atof(text));
}

std::string random_hash_text(std::mt19937_64& rng) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string text(64, '0');
  for (auto& c : text) c = kHex[rng() % 16];
  if (rng() % 8 == 0) text[rng() % 64] = "ABCDEF"[rng() % 6];
  return text;
}

std::string random_path(std::mt19937_64& rng) {
  static const char* const kPieces[] = {"a", "dir", "file.bin", "\xc3\xa9t\xc3\xa9", "with space", "x\ty",
                                        "..", ".", "", "deep/er", "\"quoted\"", "back\\slash", "\xe2\x9c\x93"};
  std::string path;
  const int parts = 1 + static_cast<int>(rng() % 4);
  for (int i = 0; i < parts; ++i) {
    if (i > 0) path += '/';
    path += kPieces[rng() % std::size(kPieces)];
  }
  return path;
}

json random_operation(std::mt19937_64& rng) {
  json op = json::object();
  switch (rng() % 3) {
    case 0: op["type"] = "addFile"; break;
    case 1:
      op["type"] = "copyFile";
      op["sourceRepoId"] = rng() % 2 ? "bob/source" : "alice/other-bucket";
      if (rng() % 3 == 0) op["sourceRepoType"] = rng() % 2 ? "bucket" : "model";
      break;
    default: op["type"] = "deleteFile"; break;
  }
  op["path"] = random_path(rng);
  if (op["type"] != "deleteFile" || rng() % 4 == 0) op["xetHash"] = random_hash_text(rng);
  if (rng() % 2) {
    const std::int64_t mtimes[] = {0, 1727278262346, kMinMtimeMs, kMaxMtimeMs, -1};
    op["mtime"] = mtimes[rng() % std::size(mtimes)];
  }
  if (rng() % 3 == 0) op["contentType"] = "application/octet-stream";
  return op;
}

std::string random_batch(std::mt19937_64& rng) {
  std::string body;
  const int lines = static_cast<int>(rng() % 7);
  for (int i = 0; i < lines; ++i) {
    if (rng() % 8 == 0) body += rng() % 2 ? " \t" : "";
    else body += random_operation(rng).dump(-1, ' ', /*ensure_ascii=*/rng() % 2 == 0);
    body += rng() % 4 == 0 ? "\r\n" : "\n";
  }
  if (!body.empty() && rng() % 3 == 0) body.pop_back();  // no final newline
  return body;
}

std::vector<std::string> split_lines(const std::string& body) {
  std::vector<std::string> lines;
  std::size_t start = 0;
  while (true) {
    const std::size_t end = body.find('\n', start);
    lines.push_back(body.substr(start, end == std::string::npos ? std::string::npos : end - start));
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return lines;
}

std::string join_lines(const std::vector<std::string>& lines) {
  std::string body;
  for (std::size_t i = 0; i < lines.size(); ++i) body += (i ? "\n" : "") + lines[i];
  return body;
}

json interesting_value(std::mt19937_64& rng) {
  switch (rng() % 14) {
    case 0: return nullptr;
    case 1: return true;
    case 2: return json::array();
    case 3: return json::object();
    case 4: return -1;
    case 5: return std::numeric_limits<std::uint64_t>::max();
    case 6: return std::numeric_limits<std::int64_t>::min();
    case 7: return kMaxMtimeMs + 1;
    case 8: return kMinMtimeMs - 1;
    case 9: return 1.5;
    case 10: return "";
    case 11: return std::string(kHash).substr(0, 63);
    case 12: return "addFile";
    default: return "a/b";
  }
}

// One mutation of one line as a JSON object: a member removed, given a value of another type or
// an extreme number, or a known key added.
std::string mutate_line_json(const std::string& line, std::mt19937_64& rng) {
  json value = json::parse(line, nullptr, false);
  if (value.is_discarded() || !value.is_object()) return line;
  static const char* const kKeys[] = {"type", "path", "xetHash", "mtime", "contentType", "sourceRepoType",
                                      "sourceRepoId"};
  const char* key = kKeys[rng() % std::size(kKeys)];
  switch (rng() % 3) {
    case 0: value.erase(key); break;
    case 1: value[key] = interesting_value(rng); break;
    default: {  // a value moved to another key
      const char* other = kKeys[rng() % std::size(kKeys)];
      if (value.contains(other)) value[key] = value[other];
      break;
    }
  }
  return value.dump();
}

std::string mutate(const std::string& seed, const std::vector<std::string>& seeds, std::mt19937_64& rng) {
  std::string body = seed;
  const int steps = 1 + static_cast<int>(rng() % 3);
  for (int s = 0; s < steps; ++s) {
    std::vector<std::string> lines = split_lines(body);
    const std::size_t at = rng() % lines.size();
    const std::size_t size = body.size();
    switch (rng() % 10) {
      case 0:
      case 1:
      case 2:
        lines[at] = mutate_line_json(lines[at], rng);
        body = join_lines(lines);
        break;
      case 3:  // drop, repeat or join lines
        if (rng() % 3 == 0) lines.erase(lines.begin() + static_cast<std::ptrdiff_t>(at));
        else if (rng() % 2) lines.insert(lines.begin() + static_cast<std::ptrdiff_t>(at), lines[at]);
        else if (at + 1 < lines.size()) {
          lines[at] += lines[at + 1];
          lines.erase(lines.begin() + static_cast<std::ptrdiff_t>(at) + 1);
        }
        body = lines.empty() ? std::string() : join_lines(lines);
        break;
      case 4:
        if (size) body[rng() % size] ^= static_cast<char>(1u << (rng() % 8));
        break;
      case 5: {
        static constexpr std::string_view kSignificant = "{}[]\":,\\\n\r\t -0123456789eE.";
        if (size) body[rng() % size] = kSignificant[rng() % kSignificant.size()];
        break;
      }
      case 6:
        if (size) body.erase(rng() % size, 1 + rng() % 24);
        break;
      case 7:
        body.resize(size ? rng() % size : 0);
        break;
      case 8: {
        static const char* const kInserts[] = {"\n", "\r", "\r\n", "\\u0000", "\xff", "\xc3", "99999999999999999999",
                                               "\"", "{}", " "};
        body.insert(size ? rng() % (size + 1) : 0, kInserts[rng() % std::size(kInserts)]);
        break;
      }
      default: {  // splice another seed
        const std::string& other = seeds[rng() % seeds.size()];
        if (other.empty()) break;
        const std::size_t here = size ? rng() % size : 0;
        body.replace(here, std::min<std::size_t>(size - here, rng() % 96), other.substr(rng() % other.size(), rng() % 96));
        break;
      }
    }
  }
  return body;
}

// The line as parse_batch_request() sees it: '\r' at its end dropped; whether it is blank.
bool blank_line(std::string line) {
  if (!line.empty() && line.back() == '\r') line.pop_back();
  return line.find_first_not_of(" \t") == std::string::npos;
}

// "" when `message` is a well-formed refusal of `body`, else what is wrong with it. Also checks it
// names the FIRST bad line: the lines before it parse, and the line alone fails the same way.
std::string error_problem(const std::string& body, const std::string& message) {
  if (!message.starts_with("line ")) return "does not start with 'line N: '";
  std::size_t digits = 5;
  while (digits < message.size() && message[digits] >= '0' && message[digits] <= '9') ++digits;
  if (digits == 5 || message.compare(digits, 2, ": ") != 0) return "no line number";
  const std::size_t number = std::stoul(message.substr(5, digits - 5));
  const std::vector<std::string> lines = split_lines(body);
  if (number == 0 || number > lines.size()) return "line number out of range";
  if (blank_line(lines[number - 1])) return "names a blank line";
  const std::string what = message.substr(digits + 2);
  static const char* const kKnown[] = {"not a JSON object",
                                       "'type' must be a string",
                                       "'path' must be a string",
                                       "unknown operation type '",
                                       "'xetHash' must be a 64-digit hex string",
                                       "'mtime' must be integer milliseconds",
                                       "'mtime' must be Unix milliseconds within years 0001 to 9999",
                                       "'contentType' must be a string",
                                       "'sourceRepoType' must be a string",
                                       "'sourceRepoId' must be ns/name"};
  bool known = false;
  for (const char* text : kKnown) known = known || what.starts_with(text);
  if (!known) return "unknown complaint";
  const std::vector<std::string> before(lines.begin(), lines.begin() + static_cast<std::ptrdiff_t>(number) - 1);
  if (auto prefix = parse_batch_request(join_lines(before)); !prefix) return "an earlier line fails: " + prefix.error();
  auto alone = parse_batch_request(lines[number - 1]);
  if (alone) return "the line parses on its own";
  if (alone.error() != "line 1: " + what) return "the line alone fails otherwise: " + alone.error();
  return {};
}

// The NDJSON line that parses back to `op`.
json line_of(const BatchOperation& op) {
  json line = {{"path", op.path}};
  switch (op.kind) {
    case BatchOperation::Kind::kAdd: line["type"] = "addFile"; break;
    case BatchOperation::Kind::kCopy: line["type"] = "copyFile"; break;
    case BatchOperation::Kind::kDelete: line["type"] = "deleteFile"; return line;
  }
  line["xetHash"] = op.xet_hash.to_string();
  if (op.mtime_ms) line["mtime"] = *op.mtime_ms;
  if (!op.content_type.empty()) line["contentType"] = op.content_type;
  if (op.kind == BatchOperation::Kind::kCopy) line["sourceRepoId"] = op.source_bucket;
  return line;
}

// "" when the parsed batch keeps the promises of parse_batch_request(), else what it breaks.
std::string batch_problem(const std::string& body, const ParsedBatch& batch) {
  std::size_t non_blank = 0;
  for (const auto& line : split_lines(body)) non_blank += blank_line(line) ? 0 : 1;
  if (batch.operations.size() + batch.failures.size() != non_blank) return "not one result per non-blank line";
  std::string again;
  for (const BatchOperation& op : batch.operations) {
    if (op.kind == BatchOperation::Kind::kDelete) {
      if (op.mtime_ms || !op.content_type.empty() || !op.source_bucket.empty() || !op.xet_hash.is_zero())
        return "a delete carries fields";
    } else {
      if (op.mtime_ms && (*op.mtime_ms < kMinMtimeMs || *op.mtime_ms > kMaxMtimeMs)) return "mtime out of range";
      if ((op.kind == BatchOperation::Kind::kCopy) != !op.source_bucket.empty()) return "source bucket mismatch";
      if (op.kind == BatchOperation::Kind::kCopy && !naming::parse_bucket_id(op.source_bucket))
        return "bad source bucket";
    }
    again += line_of(op).dump(-1, ' ', false, json::error_handler_t::strict) + "\n";
  }
  for (const BatchFailure& failure : batch.failures)
    if (!failure.error.starts_with("copyFile from a ")) return "unexpected failure: " + failure.error;
  auto reparsed = parse_batch_request(again);
  if (!reparsed) return "its operations do not parse back: " + reparsed.error();
  if (reparsed->operations.size() != batch.operations.size()) return "round trip changed the count";
  for (std::size_t i = 0; i < batch.operations.size(); ++i) {
    const BatchOperation& a = batch.operations[i];
    const BatchOperation& b = reparsed->operations[i];
    if (a.kind != b.kind || a.path != b.path || a.xet_hash != b.xet_hash || a.mtime_ms != b.mtime_ms ||
        a.content_type != b.content_type || a.source_bucket != b.source_bucket)
      return "round trip changed operation " + std::to_string(i);
  }
  return {};
}

std::string shown(const std::string& text) {
  return json(text.size() > 2000 ? text.substr(0, 2000) : text).dump(-1, ' ', true, json::error_handler_t::replace);
}

TEST(BatchRequestFuzz, RandomMutationsYieldLineErrorsOrValidOperations) {
  std::mt19937_64 rng(0xBA7C'2026'1205ULL);
  std::vector<std::string> seeds;
  for (int i = 0; i < 40; ++i) seeds.push_back(random_batch(rng));
  for (const std::string& seed : seeds) {
    auto parsed = parse_batch_request(seed);
    ASSERT_TRUE(parsed.has_value()) << parsed.error() << "\n" << shown(seed);
    ASSERT_EQ(batch_problem(seed, *parsed), "") << shown(seed);
  }

  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                            std::chrono::duration<double>(fuzz_seconds()));
  std::size_t iterations = 0, accepted = 0;
  while (std::chrono::steady_clock::now() < deadline || iterations < 1000) {
    ++iterations;
    const std::string body = mutate(seeds[rng() % seeds.size()], seeds, rng);
    auto parsed = parse_batch_request(body);
    if (!parsed) {
      ASSERT_EQ(error_problem(body, parsed.error()), "") << parsed.error() << "\n" << shown(body);
      continue;
    }
    ++accepted;
    ASSERT_EQ(batch_problem(body, *parsed), "") << shown(body);
  }
  EXPECT_GE(iterations, 1000u);
  EXPECT_GT(accepted, iterations / 20) << "mutations almost never parse; the test lost its teeth";
  std::printf("[BatchRequestFuzz] %zu iterations, %zu parsed\n", iterations, accepted);
}

}  // namespace
}  // namespace bucketfs::server
