#include "staging.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <map>
#include <set>
#include <vector>

#include "bucketfs/fs/mount.h"
#include "log.h"

namespace bucketfs::fs {
namespace {

constexpr std::size_t kBootIdPrefix = 8;
constexpr const char* kLockPrefix = "owner-";
constexpr const char* kLockSuffix = ".lock";

// Splits "a-b-c" at '-'.
std::vector<std::string> split_tag(const std::string& tag) {
  std::vector<std::string> parts;
  std::size_t start = 0;
  while (true) {
    const auto dash = tag.find('-', start);
    parts.push_back(tag.substr(start, dash == std::string::npos ? std::string::npos : dash - start));
    if (dash == std::string::npos) return parts;
    start = dash + 1;
  }
}

bool all_digits(const std::string& text) {
  return !text.empty() && text.find_first_not_of("0123456789") == std::string::npos;
}

template <typename Number>
bool parse_number(const std::string& text, Number& value) {
  if (!all_digits(text)) return false;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  return error == std::errc() && end == text.data() + text.size();
}

enum class OwnerState { kRunning, kGone, kUnknown };

// Whether the daemon tagged `tag` is running, by its lock file: running while someone holds the
// lock (when we can take it, `held`, if given, keeps it until the caller is done). Without a lock
// file, a tag of this format means a sweep removed it, so the daemon is gone; a `pid-start` tag
// (named before owner locks existed) is unknown here.
OwnerState probe_owner(const std::filesystem::path& folder, const std::string& tag, FileDescriptor* held) {
  if (tag.empty()) return OwnerState::kUnknown;
  const auto lock_path = folder / owner_lock_name(tag);
  FileDescriptor lock(::open(lock_path.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW));
  if (lock.valid()) {
    if (::flock(lock.get(), LOCK_EX | LOCK_NB) != 0) return OwnerState::kRunning;  // held by its daemon
    if (held != nullptr) *held = std::move(lock);
    return OwnerState::kGone;
  }
  if (errno != ENOENT) return OwnerState::kRunning;  // cannot tell: keep what it owns
  return split_tag(tag).size() == 3 ? OwnerState::kGone : OwnerState::kUnknown;
}

// A `pid-start` tag of this boot: whether that process runs.
bool pid_tag_running(const std::string& tag) {
  const auto parts = split_tag(tag);
  if (parts.size() != 2) return false;
  cache::Owner owner = cache::Owner::self();  // this boot
  if (!parse_number(parts[0], owner.pid) || !parse_number(parts[1], owner.start_ticks)) return false;
  return owner.alive();
}

}  // namespace

std::string owner_tag(const cache::Owner& owner) {
  return std::to_string(owner.pid) + "-" + std::to_string(owner.start_ticks) + "-" +
         owner.boot_id.substr(0, kBootIdPrefix);
}

std::string owner_lock_name(const std::string& tag) { return kLockPrefix + tag + kLockSuffix; }

std::optional<bool> owner_running(const std::filesystem::path& folder, const std::string& tag) {
  switch (probe_owner(folder, tag, nullptr)) {
    case OwnerState::kRunning:
      return true;
    case OwnerState::kGone:
      return false;
    case OwnerState::kUnknown:
      break;
  }
  return std::nullopt;
}

std::string staging_file_owner(const std::string& name) {
  if (name.size() < 4 || name[0] != 'f') return {};
  const auto dash = name.rfind('-');
  if (dash == std::string::npos || dash < 2 || !all_digits(name.substr(dash + 1))) return {};
  return name.substr(1, dash - 1);
}

std::expected<std::unique_ptr<StagingFolder>, std::string> StagingFolder::claim(const std::filesystem::path& folder,
                                                                                const cache::Owner& owner) {
  std::error_code error;
  std::filesystem::create_directories(folder, error);
  if (error) return std::unexpected("cannot create staging directory " + folder.string() + ": " + error.message());
  std::filesystem::permissions(folder, std::filesystem::perms::owner_all, error);
  const std::string tag = owner_tag(owner);
  const auto lock_path = folder / owner_lock_name(tag);
  // A sweep may take the lock between our open and our flock, think us gone and remove the file:
  // the lock counts only once the path still names the file we locked.
  constexpr int kAttempts = 10;
  for (int attempt = 0; attempt < kAttempts; ++attempt) {
    FileDescriptor lock(::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
    if (!lock.valid()) {
      return std::unexpected("cannot create staging lock " + lock_path.string() + ": " + std::strerror(errno));
    }
    // Blocking: the tag is ours alone, so only a sweep can hold it, and only for a moment.
    if (::flock(lock.get(), LOCK_EX) != 0) {
      return std::unexpected("cannot lock " + lock_path.string() + ": " + std::strerror(errno));
    }
    struct stat locked {};
    struct stat named {};
    if (::fstat(lock.get(), &locked) == 0 && ::stat(lock_path.c_str(), &named) == 0 &&
        locked.st_dev == named.st_dev && locked.st_ino == named.st_ino) {
      return std::unique_ptr<StagingFolder>(new StagingFolder(folder, tag, std::move(lock)));
    }
  }
  return std::unexpected("cannot take staging lock " + lock_path.string() + ": it keeps being removed");
}

StagingFolder::~StagingFolder() = default;

std::expected<StagingFolder::File, int> StagingFolder::create() {
  // A daemon of an earlier boot had this tag only if the boot ids share their first 8
  // characters; its files are skipped, not failed on.
  constexpr int kAttempts = 1000;
  for (int attempt = 0; attempt < kAttempts; ++attempt) {
    File file;
    file.name = "f" + tag_ + "-" + std::to_string(next_++);
    file.path = (folder_ / file.name).string();
    file.fd = FileDescriptor(::open(file.path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
    if (file.fd.valid()) return file;
    const int error = errno;
    if (error == EEXIST) continue;
    log_line("cannot create staging file " + file.path + ": " + std::strerror(error));
    return std::unexpected(error == ENOSPC ? ENOSPC : EIO);
  }
  log_line("cannot create a staging file in " + folder_.string() + ": " + std::to_string(kAttempts) +
           " names in a row are taken");
  return std::unexpected(EIO);
}

StagingSweep remove_orphaned_staging_files(const cache::Journal& journal, const std::filesystem::path& staging_dir) {
  StagingSweep sweep;
  std::error_code error;
  if (!std::filesystem::is_directory(staging_dir, error)) return sweep;
  auto records = journal.list();
  if (!records) {
    log_line("staging: not cleaned up: the journal cannot be read: " + records.error().message);
    return sweep;
  }
  std::set<std::string> journaled;
  for (const auto& record : *records) journaled.insert(record.staging_name);

  std::map<std::string, std::vector<std::string>> files_by_owner;  // unjournaled staging files
  std::set<std::string> lock_owners;
  for (const auto& entry : std::filesystem::directory_iterator(staging_dir, error)) {
    const std::string name = entry.path().filename().string();
    if (name.starts_with(kLockPrefix) && name.ends_with(kLockSuffix)) {
      lock_owners.insert(name.substr(std::strlen(kLockPrefix),
                                     name.size() - std::strlen(kLockPrefix) - std::strlen(kLockSuffix)));
      continue;
    }
    const std::string owner = staging_file_owner(name);
    if (owner.empty() || journaled.contains(name)) continue;
    files_by_owner[owner].push_back(name);
  }
  if (error) {
    log_line("staging: not cleaned up: cannot list " + staging_dir.string() + ": " + error.message());
    return sweep;
  }
  for (const auto& owner : lock_owners) files_by_owner.try_emplace(owner);
  for (const auto& [owner, names] : files_by_owner) {
    FileDescriptor held;
    const auto state = probe_owner(staging_dir, owner, &held);
    if (state == OwnerState::kRunning || (state == OwnerState::kUnknown && pid_tag_running(owner))) continue;
    for (const auto& name : names) {
      const auto path = staging_dir / name;
      struct stat info {};
      const bool sized = ::lstat(path.c_str(), &info) == 0;
      if (::unlink(path.c_str()) != 0) continue;
      ++sweep.removed_files;
      if (sized) sweep.removed_bytes += static_cast<std::uint64_t>(info.st_size);
    }
    // Removed while we hold its lock: nobody can be using it.
    if (held.valid()) ::unlink((staging_dir / owner_lock_name(owner)).c_str());
  }
  if (sweep.removed_files > 0) {
    log_line("staging: removed " + std::to_string(sweep.removed_files) + " file(s) (" +
             std::to_string(sweep.removed_bytes) + " bytes) that daemons which are gone had open and never closed");
  }
  return sweep;
}

}  // namespace bucketfs::fs
