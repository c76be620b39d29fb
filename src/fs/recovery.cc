// Replays the write journal of daemons that died (include/bucketfs/fs/mount.h recover_journal).
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <map>
#include <mutex>
#include <optional>
#include <algorithm>

#include "bucketfs/fs/mount.h"
#include "file_descriptor.h"
#include "log.h"
#include "staging.h"
#include "unfetched.h"

namespace bucketfs::fs {
namespace {

std::string conflict_name(const std::string& path) {
  const std::time_t now = std::time(nullptr);
  std::tm utc{};
  ::gmtime_r(&now, &utc);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%SZ", &utc);
  char host[64] = "host";
  ::gethostname(host, sizeof host - 1);
  return path + ".conflict-" + stamp + "-" + host;
}

}  // namespace

RecoveryReport recover_journal(const MountServices& services, const naming::BucketId& bucket,
                               const std::filesystem::path& staging_dir, const transfer::UploadOptions& upload,
                               const std::function<void(const RecoveryProgress&)>& on_progress) {
  RecoveryReport report;
  if (services.journal == nullptr || services.write_cas == nullptr) return report;
  auto records = services.journal->list();
  if (!records) {
    log_line("journal: cannot read it: " + records.error().message);
    return report;
  }
  const std::string bucket_id = bucket.str();
  // Of several closed versions of one path (the newer one journaled just before the older was
  // dropped), only the newest is committed; the others are dropped.
  std::vector<cache::JournalRecord> replay;
  std::map<std::string, std::size_t> newest;
  for (const auto& record : *records) {
    if (record.bucket != bucket_id) continue;
    // The owner lock of its staging file says whether its daemon runs, in any pid namespace that
    // shares the cache dir; records from before owner locks fall back to the pid check.
    const bool running = owner_running(staging_dir, staging_file_owner(record.staging_name))
                             .value_or(record.owner.alive());
    if (running) {
      ++report.live;
      continue;
    }
    auto [it, added] = newest.try_emplace(record.path, replay.size());
    if (added) {
      replay.push_back(record);
      continue;
    }
    cache::JournalRecord older = record;
    if (record.sequence > replay[it->second].sequence) std::swap(older, replay[it->second]);
    log_line("journal: dropping an older closed version of '" + older.path + "'");
    if (services.journal->remove(older.staging_name)) ::unlink((staging_dir / older.staging_name).c_str());
  }
  std::sort(replay.begin(), replay.end(), [](const auto& a, const auto& b) { return a.sequence < b.sequence; });
  transfer::Uploader uploader(*services.write_cas, *services.hub, services.dedup_index, upload);
  std::optional<transfer::Downloader> downloader;  // made for the first record that needs one
  std::size_t done = 0;  // records of `replay` finished, either way
  auto report_progress = [&] {
    if (!on_progress) return;
    RecoveryProgress progress{.pending = {}, .so_far = report};
    for (std::size_t i = done; i < replay.size(); ++i) progress.pending.push_back(replay[i].path);
    on_progress(progress);
  };
  for (const auto& record : replay) {
    report_progress();
    ++done;  // counted before the attempt: every `continue` below ends this record
    const auto file = staging_dir / record.staging_name;
    FileDescriptor fd(::open(file.c_str(), (record.unfetched ? O_RDWR : O_RDONLY) | O_CLOEXEC));
    if (!fd.valid()) {
      log_line("journal: the staged bytes of '" + record.path + "' (" + file.string() + ") are gone: " +
               std::strerror(errno) + "; dropping the record");
      services.journal->remove(record.staging_name);
      ++report.failed;
      continue;
    }
    if (record.unfetched && !record.unfetched->missing().empty()) {
      // Opened for writing without O_TRUNC and closed before its missing bytes were fetched:
      // they are the version it was opened from, which the store keeps by hash.
      std::expected<void, std::string> filled = std::unexpected(std::string("no store to read from"));
      if (services.read_cas != nullptr) {
        if (!downloader) downloader.emplace(*services.read_cas, services.chunk_cache);
        std::mutex one_fill;
        std::mutex guard;
        auto unfetched = record.unfetched;
        filled = fill_unfetched(*downloader, fd.get(), one_fill, guard, unfetched);
      }
      if (!filled) {
        log_line("journal: fetching the unchanged bytes of '" + record.path + "' failed (kept for the next mount): " +
                 filled.error());
        ++report.failed;
        continue;
      }
    }
    auto uploaded = uploader.upload(transfer::fd_source(fd.get()));
    if (!uploaded) {
      log_line("journal: uploading '" + record.path + "' failed (kept for the next mount): " +
               uploaded.error().describe());
      ++report.failed;
      continue;
    }
    const xet::Hash hash = uploaded->file.file_hash;
    const std::string paths[] = {record.path};
    auto remote = services.hub->paths_info(bucket, paths);
    if (!remote) {
      log_line("journal: checking '" + record.path + "' failed (kept for the next mount): " +
               remote.error().describe());
      ++report.failed;
      continue;
    }
    std::optional<xet::Hash> current;
    if (!remote->empty()) current = remote->front().xet_hash;
    std::string target = record.path;
    bool conflict = false;
    // A version this mount was committing when it made this one is not a foreign change.
    const bool our_version = current && std::find(record.also_bases.begin(), record.also_bases.end(), *current) !=
                                            record.also_bases.end();
    if (current && *current == hash) {
      target.clear();  // already committed (the daemon died after its commit, before dropping the record)
    } else if (current != record.base && !our_version) {
      conflict = true;
      target = conflict_name(record.path);
    }
    if (!target.empty()) {
      const std::vector<hub::BatchOperation> operations = {hub::BatchOperation::add(target, hash, record.mtime_ms)};
      auto committed = services.hub->batch(bucket, operations);
      if (!committed || !committed->success) {
        log_line("journal: committing '" + target + "' failed (kept for the next mount): " +
                 (committed ? std::string("refused") : committed.error().describe()));
        ++report.failed;
        continue;
      }
    }
    if (conflict) {
      log_line("journal: '" + record.path + "' changed in the bucket since this node's version was written; " +
               "kept both: ours is '" + target + "'");
      ++report.conflicts;
    } else {
      log_line("journal: recovered '" + record.path + "' (" + std::to_string(uploaded->file.size) + " bytes)");
    }
    ++report.recovered;
    if (auto removed = services.journal->remove(record.staging_name); removed) ::unlink(file.c_str());
  }
  report_progress();
  return report;
}

}  // namespace bucketfs::fs
