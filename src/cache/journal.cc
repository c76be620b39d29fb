#include "bucketfs/cache/journal.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <sstream>
#include <nlohmann/json.hpp>

#include "format.h"

namespace bucketfs::cache {
namespace {

std::optional<std::uint64_t> start_ticks_of(std::int64_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return std::nullopt;
  // Field 2 (comm) may hold spaces and parentheses: count fields after the last ')'.
  const auto close = line.rfind(')');
  if (close == std::string::npos) return std::nullopt;
  std::istringstream rest(line.substr(close + 2));
  std::string field;
  // Fields 3.. follow; start time is field 22, the 20th after ')'. A zombie counts as gone.
  for (int index = 3; index <= 22 && rest >> field; ++index) {
    if (index == 3 && field == "Z") return std::nullopt;
    if (index == 22) return std::stoull(field);
  }
  return std::nullopt;
}

std::string current_boot_id() {
  std::ifstream in("/proc/sys/kernel/random/boot_id");
  std::string id;
  std::getline(in, id);
  return id;
}

}  // namespace

Owner Owner::self() {
  Owner owner;
  owner.pid = ::getpid();
  owner.start_ticks = start_ticks_of(owner.pid).value_or(0);
  owner.boot_id = current_boot_id();
  return owner;
}

bool Owner::alive() const {
  if (boot_id != current_boot_id()) return false;  // written before a reboot
  const auto ticks = start_ticks_of(pid);
  return ticks.has_value() && *ticks == start_ticks;
}

namespace {

// Adds [start, end) to sorted, disjoint, not touching `ranges`, merging what it overlaps or touches.
void add_range(std::vector<xet::FileByteRange>& ranges, std::uint64_t start, std::uint64_t end) {
  if (start >= end) return;
  // The first range that ends at or after `start`, and the first that starts past `end`:
  // everything between merges with [start, end).
  auto first = std::lower_bound(ranges.begin(), ranges.end(), start,
                                [](const xet::FileByteRange& range, std::uint64_t at) { return range.end < at; });
  auto last = std::upper_bound(first, ranges.end(), end,
                               [](std::uint64_t at, const xet::FileByteRange& range) { return at < range.start; });
  if (first != last) {
    start = std::min(start, first->start);
    end = std::max(end, std::prev(last)->end);
  }
  const auto at = ranges.erase(first, last);
  ranges.insert(at, xet::FileByteRange{start, end});
}

void cut_ranges(std::vector<xet::FileByteRange>& ranges, std::uint64_t size) {
  while (!ranges.empty() && ranges.back().start >= size) ranges.pop_back();
  if (!ranges.empty()) ranges.back().end = std::min(ranges.back().end, size);
}

// Appends to `gaps` the parts of [start, end) that no range of `ranges` covers.
void append_gaps(const std::vector<xet::FileByteRange>& ranges, std::uint64_t start, std::uint64_t end,
                 std::vector<xet::FileByteRange>& gaps) {
  auto range = std::upper_bound(ranges.begin(), ranges.end(), start,
                                [](std::uint64_t at, const xet::FileByteRange& range) { return at < range.end; });
  for (std::uint64_t at = start; at < end; ++range) {
    const std::uint64_t next = range == ranges.end() ? end : std::min(end, range->start);
    if (at < next) gaps.push_back({at, next});
    if (range == ranges.end()) break;
    at = std::max(at, range->end);
  }
}

}  // namespace

void UnfetchedBase::add_written(std::uint64_t start, std::uint64_t end) { add_range(written, start, end); }

void UnfetchedBase::add_fetched(std::uint64_t start, std::uint64_t end) { add_range(fetched, start, end); }

void UnfetchedBase::truncate(std::uint64_t new_size) {
  limit = std::min(limit, new_size);
  cut_ranges(written, new_size);
  cut_ranges(fetched, new_size);
}

std::vector<xet::FileByteRange> UnfetchedBase::missing(std::uint64_t start, std::uint64_t end) const {
  std::vector<xet::FileByteRange> not_written;
  append_gaps(written, start, std::min(end, limit), not_written);
  if (fetched.empty()) return not_written;
  std::vector<xet::FileByteRange> gaps;
  for (const auto& gap : not_written) append_gaps(fetched, gap.start, gap.end, gaps);
  return gaps;
}

std::string encode_journal_record(const JournalRecord& record) {
  nlohmann::json value = {
      {"bucket", record.bucket},
      {"path", record.path},
      {"mtime_ms", record.mtime_ms},
      {"size", record.size},
      {"owner", {{"pid", record.owner.pid}, {"start", record.owner.start_ticks}, {"boot", record.owner.boot_id}}},
      {"sequence", record.sequence},
  };
  if (record.base) value["base"] = record.base->to_string();
  if (!record.also_bases.empty()) {
    auto& list = value["also_bases"] = nlohmann::json::array();
    for (const auto& hash : record.also_bases) list.push_back(hash.to_string());
  }
  if (record.unfetched) {
    const auto& unfetched = *record.unfetched;
    auto written = nlohmann::json::array();
    for (const auto& range : unfetched.written) written.push_back({range.start, range.end});
    value["unfetched"] = {{"hash", unfetched.hash.to_string()},
                          {"size", unfetched.size},
                          {"limit", unfetched.limit},
                          {"written", std::move(written)}};
  }
  return value.dump();
}

Result<JournalRecord> decode_journal_record(std::string_view key, std::string_view value) {
  try {
    const auto json = nlohmann::json::parse(value);
    JournalRecord record;
    record.staging_name = std::string(key);
    record.bucket = json.at("bucket").get<std::string>();
    record.path = json.at("path").get<std::string>();
    record.mtime_ms = json.at("mtime_ms").get<std::int64_t>();
    record.size = json.at("size").get<std::uint64_t>();
    const auto& owner = json.at("owner");
    record.owner.pid = owner.at("pid").get<std::int64_t>();
    record.owner.start_ticks = owner.at("start").get<std::uint64_t>();
    record.owner.boot_id = owner.at("boot").get<std::string>();
    record.sequence = json.value("sequence", std::uint64_t{0});
    if (json.contains("base")) {
      auto hash = xet::Hash::from_string(json.at("base").get<std::string>());
      if (!hash) throw std::runtime_error("base is not a hash");
      record.base = *hash;
    }
    if (json.contains("also_bases")) {
      for (const auto& item : json.at("also_bases")) {
        auto hash = xet::Hash::from_string(item.get<std::string>());
        if (!hash) throw std::runtime_error("also_bases holds a non-hash");
        record.also_bases.push_back(*hash);
      }
    }
    if (json.contains("unfetched")) {
      const auto& item = json.at("unfetched");
      UnfetchedBase unfetched;
      auto hash = xet::Hash::from_string(item.at("hash").get<std::string>());
      if (!hash) throw std::runtime_error("unfetched.hash is not a hash");
      unfetched.hash = *hash;
      unfetched.size = item.at("size").get<std::uint64_t>();
      unfetched.limit = item.at("limit").get<std::uint64_t>();
      if (unfetched.limit > unfetched.size) throw std::runtime_error("unfetched.limit is past the version's size");
      std::uint64_t previous_end = 0;
      for (const auto& pair : item.at("written")) {
        const xet::FileByteRange range{pair.at(0).get<std::uint64_t>(), pair.at(1).get<std::uint64_t>()};
        const bool first = unfetched.written.empty();
        if (range.start >= range.end || (!first && range.start <= previous_end)) {
          throw std::runtime_error("unfetched.written is not sorted, disjoint, non-empty ranges");
        }
        previous_end = range.end;
        unfetched.written.push_back(range);
      }
      // Past the file's size nothing counts (a record is never refused for it: a refused record's
      // staging file would be swept away).
      unfetched.truncate(record.size);
      record.unfetched = std::move(unfetched);
    }
    return record;
  } catch (const std::exception& error) {
    return std::unexpected(Error{ErrorCode::kFormat, 0,
                                 "journal record '" + std::string(key) + "' is malformed: " + error.what()});
  }
}

Result<void> Journal::put(JournalRecord record) {
  if (record.staging_name.empty()) return std::unexpected(Error{ErrorCode::kInvalidArgument, 0, "journal: empty key"});
  const auto now = static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count());
  {
    auto txn = store_->environment().begin_write();
    if (!txn) return std::unexpected(format::store_error(txn.error()));
    // Above the last one stamped in this store even if the clock stepped back since: recovery keeps
    // the highest sequence of a path, so a newer version must never sort below an older one.
    const auto& meta = store_->databases().meta;
    auto last = format::get_counter(*txn, meta, format::kMetaJournalSequence);
    if (!last) return std::unexpected(last.error());
    record.sequence = std::max(now, *last + 1);
    if (auto set = format::set_counter(*txn, meta, format::kMetaJournalSequence, record.sequence); !set) {
      return std::unexpected(set.error());
    }
    if (auto put = txn->put(store_->databases().journal, record.staging_name, encode_journal_record(record)); !put) {
      return std::unexpected(format::store_error(put.error()));
    }
    if (auto committed = txn->commit(); !committed) return std::unexpected(format::store_error(committed.error()));
  }
  return store_->sync();
}

Result<void> Journal::remove(const std::string& staging_name) {
  return remove_many(std::span<const std::string>(&staging_name, 1));
}

Result<void> Journal::remove_many(std::span<const std::string> staging_names) {
  {
    auto txn = store_->environment().begin_write();
    if (!txn) return std::unexpected(format::store_error(txn.error()));
    bool any = false;
    for (const std::string& name : staging_names) {
      auto erased = txn->erase(store_->databases().journal, name);
      if (!erased) return std::unexpected(format::store_error(erased.error()));
      any = any || *erased;
    }
    if (!any) return {};
    if (auto committed = txn->commit(); !committed) return std::unexpected(format::store_error(committed.error()));
  }
  return store_->sync();
}

Result<std::vector<JournalRecord>> Journal::list() const {
  auto txn = store_->environment().begin_read();
  if (!txn) return std::unexpected(format::store_error(txn.error()));
  auto cursor = txn->cursor(store_->databases().journal);
  if (!cursor) return std::unexpected(format::store_error(cursor.error()));
  std::vector<JournalRecord> records;
  std::optional<Error> first_error;
  for (auto entry = cursor->first();; entry = cursor->next()) {
    if (!entry) return std::unexpected(format::store_error(entry.error()));
    if (!*entry) break;
    auto record = decode_journal_record((*entry)->first, (*entry)->second);
    if (record) {
      records.push_back(std::move(*record));
    } else if (!first_error) {
      first_error = record.error();
    }
  }
  if (records.empty() && first_error) return std::unexpected(*first_error);
  return records;
}

}  // namespace bucketfs::cache
