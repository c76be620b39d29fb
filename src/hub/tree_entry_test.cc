// The tree listing items the Hub sends (GET /api/buckets/{id}/tree pages, paths-info answers),
// parsed by detail::parse_tree_entry, and the ISO-8601 times in them: fixed cases, and a bounded
// random-mutation run (BUCKETFS_FUZZ_SECONDS, 2 s when unset; scripts/test.sh sets 10).
#include <gtest/gtest.h>

#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "bucketfs/hub/hub_client.h"
#include "internal.h"

namespace bucketfs::hub {
namespace {

using nlohmann::json;

constexpr std::string_view kSubject = "tree of alice/b";
constexpr std::string_view kHash = "a1b2c3d4e5f6789012345678901234567890abcdef1234567890abcdef123456";

TEST(TreeEntry, FilesDirectoriesAndUnknownTypes) {
  const json file = {{"type", "file"}, {"path", "a/b.bin"}, {"size", 12}, {"xetHash", kHash},
                     {"mtime", "2024-09-25T15:31:02.346Z"}, {"uploadedAt", "2024-09-25T15:31:03Z"}};
  auto entry = detail::parse_tree_entry(file, kSubject);
  ASSERT_TRUE(entry.has_value()) << entry.error().describe();
  ASSERT_TRUE(entry->has_value());
  EXPECT_FALSE((*entry)->is_directory());
  EXPECT_EQ((*entry)->path(), "a/b.bin");
  EXPECT_EQ((*entry)->file.size, 12u);
  EXPECT_EQ((*entry)->file.xet_hash.to_string(), kHash);
  EXPECT_EQ((*entry)->file.mtime_ms, 1727278262346);
  EXPECT_EQ((*entry)->file.uploaded_at_ms, 1727278263000);

  auto directory = detail::parse_tree_entry(json{{"type", "directory"}, {"path", "a"}}, kSubject);
  ASSERT_TRUE(directory.has_value() && directory->has_value());
  EXPECT_TRUE((*directory)->is_directory());
  auto unknown = detail::parse_tree_entry(json{{"type", "symlink"}, {"path", "s"}}, kSubject);
  ASSERT_TRUE(unknown.has_value());
  EXPECT_FALSE(unknown->has_value());

  json bad = file;
  bad["size"] = -1;
  auto negative = detail::parse_tree_entry(bad, kSubject);
  ASSERT_FALSE(negative.has_value());
  EXPECT_EQ(negative.error().kind, HubErrorKind::bad_response);
  EXPECT_EQ(negative.error().message, "tree of alice/b: file entry 'a/b.bin' lacks size or xetHash");
  // A path quoted in a message cannot break it into several lines.
  bad = file;
  bad["path"] = "x\ny\r";
  bad["xetHash"] = "zz";
  auto multiline = detail::parse_tree_entry(bad, kSubject);
  ASSERT_FALSE(multiline.has_value());
  EXPECT_EQ(multiline.error().message, "tree of alice/b: file entry 'x y ' has a bad xetHash");
}

TEST(TreeEntry, TimesWithSignsAreRefused) {
  // from_chars accepts a leading '-': these parsed as hour -1, minute -5, year -999.
  EXPECT_FALSE(parse_iso8601_ms("2024-09-25T-1:31:02Z"));
  EXPECT_FALSE(parse_iso8601_ms("2024-09-25T15:-5:02Z"));
  EXPECT_FALSE(parse_iso8601_ms("-999-09-25T15:31:02Z"));
  EXPECT_FALSE(parse_iso8601_ms("2024--1-25T15:31:02Z"));
  EXPECT_EQ(parse_iso8601_ms("0000-01-01T00:00:00Z"), -62167219200000);
  EXPECT_EQ(parse_iso8601_ms("9999-12-31T23:59:59.999999999+00:00"), 253402300799999);
}

// ---- random mutation ----------------------------------------------------------------------------

double fuzz_seconds() {
  const char* text = std::getenv("BUCKETFS_FUZZ_SECONDS");
  if (text == nullptr || *text == '\0') return 2.0;
  return std::max(0.05, std::atof(text));
}

const char* const kTimes[] = {"2024-09-25T15:31:02.346Z", "2024-09-25t15:31:02z",         "1970-01-01T00:00:00+00:00",
                              "0000-01-01T00:00:00.0Z",   "9999-12-31T23:59:60.123456789Z", "2000-02-29T12:00:00.5Z",
                              "1969-12-31T23:59:59.999Z"};

std::string random_time(std::mt19937_64& rng) { return kTimes[rng() % std::size(kTimes)]; }

json random_item(std::mt19937_64& rng) {
  static const char* const kPaths[] = {"a", "dir/file.bin", "\xc3\xa9t\xc3\xa9", "with space/x", "x\ny", ""};
  json item = {{"path", kPaths[rng() % std::size(kPaths)]}};
  switch (rng() % 4) {
    case 0: item["type"] = "directory"; break;
    case 1: item["type"] = "symlink"; break;
    default: {
      item["type"] = "file";
      item["size"] = rng() % 3 == 0 ? std::numeric_limits<std::uint64_t>::max() : rng() % 100000;
      static constexpr char kHex[] = "0123456789abcdef";
      std::string hash(64, '0');
      for (auto& c : hash) c = kHex[rng() % 16];
      item["xetHash"] = hash;
      if (rng() % 2) item["mtime"] = random_time(rng);
    }
  }
  if (rng() % 2) item["uploadedAt"] = random_time(rng);
  return item;
}

std::string mutate_time(std::string text, std::mt19937_64& rng) {
  static constexpr char kCharArray[] = "0123456789-+:.TtZz \x00\xff";
  static constexpr std::string_view kChars(kCharArray, sizeof kCharArray - 1);
  const int steps = 1 + static_cast<int>(rng() % 3);
  for (int s = 0; s < steps; ++s) {
    const std::size_t size = text.size();
    switch (rng() % 4) {
      case 0:
        if (size) text[rng() % size] = kChars[rng() % kChars.size()];
        break;
      case 1:
        if (size) text.erase(rng() % size, 1 + rng() % 3);
        break;
      case 2: text.insert(size ? rng() % (size + 1) : 0, 1, kChars[rng() % kChars.size()]); break;
      default: text.resize(size ? rng() % size : 0); break;
    }
  }
  return text;
}

json interesting_value(std::mt19937_64& rng) {
  switch (rng() % 12) {
    case 0: return nullptr;
    case 1: return true;
    case 2: return json::array();
    case 3: return json::object();
    case 4: return -1;
    case 5: return std::numeric_limits<std::int64_t>::min();
    case 6: return 1e300;
    case 7: return 0.5;
    case 8: return "";
    case 9: return std::string(kHash).substr(1);
    case 10: return "file";
    default: return mutate_time(random_time(rng), rng);
  }
}

// One mutation of a page: an item's member removed, replaced or its time mutated; an item dropped,
// repeated or replaced by a non-object; or a byte flipped, dropped or the text cut.
std::string mutate_page(const json& page, std::mt19937_64& rng) {
  json value = page;
  static const char* const kKeys[] = {"type", "path", "size", "xetHash", "mtime", "uploadedAt"};
  const int steps = 1 + static_cast<int>(rng() % 3);
  for (int s = 0; s < steps && !value.empty(); ++s) {
    json& item = value[rng() % value.size()];
    const char* key = kKeys[rng() % std::size(kKeys)];
    switch (rng() % 5) {
      case 0:
        if (item.is_object()) item.erase(key);
        break;
      case 1:
        if (item.is_object()) item[key] = interesting_value(rng);
        break;
      case 2:
        if (item.is_object() && item.contains(key) && item[key].is_string())
          item[key] = mutate_time(item[key].get<std::string>(), rng);
        break;
      case 3: item = interesting_value(rng); break;
      default: {
        json copy = value[rng() % value.size()];
        value.push_back(std::move(copy));
        break;
      }
    }
  }
  std::string text = value.dump(-1, ' ', false, json::error_handler_t::replace);
  if (rng() % 4 == 0 && !text.empty()) {
    switch (rng() % 3) {
      case 0: text[rng() % text.size()] ^= static_cast<char>(1u << (rng() % 8)); break;
      case 1: text.erase(rng() % text.size(), 1 + rng() % 8); break;
      default: text.resize(rng() % text.size()); break;
    }
  }
  return text;
}

constexpr std::int64_t kYear0Ms = -62167219200000;      // 0000-01-01T00:00:00Z
constexpr std::int64_t kYear10000Ms = 253402300800000;  // 10000-01-01T00:00:00Z

// "" when parse_iso8601_ms's answer for `text` is right, else what is wrong: a parsed time must
// print back as the text's date and time (a leap second 60 as the next minute's 00) and keep the
// first three fraction digits.
std::string time_problem(const std::string& text) {
  const auto ms = parse_iso8601_ms(text);
  if (!ms) return {};
  if (*ms < kYear0Ms || *ms >= kYear10000Ms + 1000) return "outside years 0000 to 9999: " + std::to_string(*ms);
  if (text.size() < 20) return "accepted a short text";
  for (std::size_t i : {0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18})
    if (text[i] < '0' || text[i] > '9') return "accepted a non-digit at " + std::to_string(i);
  const int leap = text.substr(17, 2) == "60" ? 1000 : 0;
  using namespace std::chrono;
  const sys_time<milliseconds> time{milliseconds(*ms - leap)};
  const auto day = floor<days>(time);
  const year_month_day date{day};
  const hh_mm_ss clock{time - day};
  char printed[32];
  std::snprintf(printed, sizeof printed, "%04d-%02u-%02u %02d:%02d:%02d", static_cast<int>(date.year()),
                static_cast<unsigned>(date.month()), static_cast<unsigned>(date.day()),
                static_cast<int>(clock.hours().count()), static_cast<int>(clock.minutes().count()),
                static_cast<int>(clock.seconds().count()) + leap / 1000);
  std::string expected = text.substr(0, 19);
  expected[10] = ' ';
  if (expected != printed) return std::string("prints back as ") + printed;
  std::string fraction = text.size() > 20 && text[19] == '.' ? text.substr(20, 3) : "";
  while (!fraction.empty() && (fraction.back() < '0' || fraction.back() > '9')) fraction.pop_back();
  fraction.resize(3, '0');
  if (std::stoi(fraction) != clock.subseconds().count()) return "lost the milliseconds";
  return {};
}

// "" when `item`'s parse keeps parse_tree_entry's promises, else what it breaks.
std::string entry_problem(const json& item, const HubResult<std::optional<TreeEntry>>& parsed) {
  if (!parsed) {
    const HubError& error = parsed.error();
    if (error.kind != HubErrorKind::bad_response) return "error of kind " + std::string(to_string(error.kind));
    if (!error.message.starts_with(std::string(kSubject) + ": ")) return "error does not name the subject";
    if (error.message.find_first_of("\r\n") != std::string::npos) return "error of several lines";
    return {};
  }
  if (!item.is_object() || !item.contains("type") || !item.at("type").is_string() || !item.contains("path") ||
      !item.at("path").is_string())
    return "accepted an item without a string type and path";
  const std::string type = item.at("type").get<std::string>();
  if (!*parsed) return type == "file" || type == "directory" ? "skipped a " + type : "";
  const TreeEntry& entry = **parsed;
  if (entry.path() != item.at("path").get<std::string>()) return "path changed";
  auto time_of = [&](const char* key) -> std::optional<std::int64_t> {
    if (!item.contains(key) || !item.at(key).is_string()) return std::nullopt;
    return parse_iso8601_ms(item.at(key).get<std::string>());
  };
  if (entry.file.uploaded_at_ms != time_of("uploadedAt")) return "uploadedAt differs";
  if (type == "directory") return entry.is_directory() ? "" : "a directory parsed as a file";
  if (type != "file" || entry.is_directory()) return "a " + type + " parsed as a file";
  const auto size = item.find("size");
  if (size == item.end() || !size->is_number_integer() || (!size->is_number_unsigned() && size->get<std::int64_t>() < 0))
    return "accepted a bad size";
  if (entry.file.size != size->get<std::uint64_t>()) return "size changed";
  const auto hash = item.find("xetHash");
  if (hash == item.end() || !hash->is_string()) return "accepted a bad hash";
  std::string hash_text = hash->get<std::string>();  // hex digits of either case
  for (auto& c : hash_text) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (entry.file.xet_hash.to_string() != hash_text) return "hash changed";
  if (entry.file.mtime_ms != time_of("mtime")) return "mtime differs";
  return {};
}

TEST(TreeEntryFuzz, RandomMutationsYieldBadResponsesOrFaithfulEntries) {
  std::mt19937_64 rng(0x7EE5'2026'1205ULL);
  std::vector<json> seeds;
  for (int i = 0; i < 24; ++i) {
    json page = json::array();
    const int items = 1 + static_cast<int>(rng() % 6);
    for (int k = 0; k < items; ++k) page.push_back(random_item(rng));
    seeds.push_back(std::move(page));
  }
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                            std::chrono::duration<double>(fuzz_seconds()));
  std::size_t iterations = 0, accepted = 0, times = 0;
  while (std::chrono::steady_clock::now() < deadline || iterations < 1000) {
    ++iterations;
    const std::string text = mutate_page(seeds[rng() % seeds.size()], rng);
    auto page = detail::parse_json(text);
    bool all = page && page->is_array();
    if (all) {
      for (const json& item : *page) {
        auto parsed = detail::parse_tree_entry(item, kSubject);
        ASSERT_EQ(entry_problem(item, parsed), "") << item.dump(-1, ' ', true, json::error_handler_t::replace);
        all = all && parsed.has_value();
      }
    }
    if (all) ++accepted;
    // The time parser alone, on mutated times.
    const std::string time = mutate_time(random_time(rng), rng);
    ASSERT_EQ(time_problem(time), "") << json(time).dump(-1, ' ', true, json::error_handler_t::replace);
    if (parse_iso8601_ms(time)) ++times;
  }
  for (const char* time : kTimes) ASSERT_EQ(time_problem(time), "") << time;
  EXPECT_GE(iterations, 1000u);
  EXPECT_GT(accepted, iterations / 20) << "mutations almost never parse; the test lost its teeth";
  EXPECT_GT(times, 0u);
  std::printf("[TreeEntryFuzz] %zu iterations, %zu parsed (%zu mutated times parsed)\n", iterations, accepted, times);
}

}  // namespace
}  // namespace bucketfs::hub
