#pragma once
// The staging folder (CACHE_DIR/staging) is shared by every daemon that uses the cache dir, and
// outlives them: a daemon killed with files open leaves their staging files behind, and a later
// boot may give a daemon the pid and start time of one that left files there.
//
// Ownership is a lock, not a pid: each daemon names its files `f<TAG>-<N>` and, while it runs,
// holds an exclusive flock on `owner-<TAG>.lock`, TAG being its pid, start time and boot
// (cache::Owner). Whoever can take that lock knows the daemon is gone, in any pid namespace that
// shares the folder. remove_orphaned_staging_files (mount.h) uses it to clean up.
#include <atomic>
#include <cstdint>
#include <expected>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "bucketfs/cache/journal.h"
#include "file_descriptor.h"

namespace bucketfs::fs {

// `pid-start-boot`, boot being the first 8 characters of the boot id: unique per daemon.
std::string owner_tag(const cache::Owner& owner);

// The name of the lock file of the daemon tagged `tag`.
std::string owner_lock_name(const std::string& tag);

// The tag of a staging file's owner (`f<TAG>-<N>` gives TAG), or empty for any other name.
std::string staging_file_owner(const std::string& name);

// Whether the daemon tagged `tag` runs, judged by its owner lock in `folder`: true while the lock
// is held (or the lock file cannot be opened), false once it is free or a sweep removed it.
// nullopt when the lock cannot tell: an empty tag, or a `pid-start` tag from before owner locks
// (the caller then checks the pid).
std::optional<bool> owner_running(const std::filesystem::path& folder, const std::string& tag);

// One daemon's claim on the staging folder: it holds the owner lock and creates staging files.
// The lock is released when this is destroyed or the daemon dies; the lock file stays until a
// sweep has taken the lock (a file of ours must never look unowned while we run).
class StagingFolder {
 public:
  // Creates `folder` (mode 0700) if needed, creates the owner's lock file and takes its lock.
  // Fails with one line naming the folder.
  static std::expected<std::unique_ptr<StagingFolder>, std::string> claim(const std::filesystem::path& folder,
                                                                          const cache::Owner& owner);
  ~StagingFolder();
  StagingFolder(const StagingFolder&) = delete;
  StagingFolder& operator=(const StagingFolder&) = delete;

  struct File {
    FileDescriptor fd;  // opened read-write
    std::string path;
    std::string name;
  };
  // A new, empty staging file. Names already taken (by a daemon of an earlier boot with this
  // tag) are skipped. Thread-safe. Fails with an errno (ENOSPC, EIO, ...).
  std::expected<File, int> create();

  const std::filesystem::path& folder() const { return folder_; }
  const std::string& tag() const { return tag_; }

 private:
  StagingFolder(std::filesystem::path folder, std::string tag, FileDescriptor lock)
      : folder_(std::move(folder)), tag_(std::move(tag)), lock_(std::move(lock)) {}

  std::filesystem::path folder_;
  std::string tag_;
  FileDescriptor lock_;
  std::atomic<std::uint64_t> next_{0};
};

}  // namespace bucketfs::fs
