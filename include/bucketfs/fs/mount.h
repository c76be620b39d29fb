#pragma once
// A bucket mounted as a directory (DESIGN.md "A read", "A write"): a multithreaded libfuse3
// low-level daemon over the transfer/ pipelines.
//
// Contract (README "The mount", man/bucketfs.1):
//  * Close-to-open consistency. Directory listings come from the tree API and are kept for
//    `metadata_ttl`; lookups and opens after it see other clients' changes. Last writer wins.
//  * Writes go to a staging file on local disk. close() queues the upload and returns; fsync()
//    returns once the file is committed to the bucket (or fails with EIO). A file with a pending
//    upload reads back its staged bytes on this mount.
//  * Rename and unlink are batch commits (a rename moves no bytes); a directory rename is ONE
//    batch, after the pending uploads under it are committed.
//  * Empty directories exist on this mount only, until a file is written under them.
//
// Threads: Mount owns the FUSE session, its worker threads and the upload workers.
#include <chrono>
#include <cstdint>
#include <expected>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "bucketfs/cache/chunk_cache.h"
#include "bucketfs/cache/dedup_index.h"
#include "bucketfs/cache/journal.h"
#include "bucketfs/hub/cas_client.h"
#include "bucketfs/hub/hub_client.h"
#include "bucketfs/naming/naming.h"
#include "bucketfs/transfer/upload.h"

namespace bucketfs::fs {

// A mount's upload settings: 16 MiB xorbs and a 16 MiB dedup window, so one file's upload holds
// about 80 MiB (UploadOptions::memory_budget) instead of 272 MiB with the 64 MiB defaults, and
// upload_workers files upload at once within a daemon of a few hundred MiB. The staging file is
// a seekable source, so a smaller window costs re-reads, not missed deduplication.
inline transfer::UploadOptions mount_upload_defaults() {
  transfer::UploadOptions upload;
  upload.max_xorb_bytes = std::size_t{16} << 20;
  upload.dedup_window = std::size_t{16} << 20;
  return upload;
}

struct MountOptions {
  naming::BucketId bucket;
  std::string prefix;  // a folder of the bucket shown as the root; no leading or trailing '/'
  std::filesystem::path mountpoint;
  bool read_only = false;
  std::chrono::milliseconds metadata_ttl{10'000};
  // How long fsync (and a directory rename waiting for uploads) goes on waiting through failed
  // upload attempts, counted from the first failure it sees, before it answers EIO. A failure
  // retrying cannot fix (the token or the bucket refused, the server refused the upload) is EIO
  // at once. Zero: EIO at the first failed attempt.
  std::chrono::milliseconds fsync_retry{60'000};
  // Where staging files live (created 0700), shared with other daemons on the same cache dir.
  std::filesystem::path staging_dir;
  // FUSE mount options passed through (-o), e.g. "allow_other". default_permissions is always on.
  std::vector<std::string> fuse_options;
  unsigned fuse_threads = 16;
  unsigned upload_workers = 2;
  // Readahead of sequential reads grows from 1 MiB up to this many bytes per open file.
  std::size_t max_readahead = std::size_t{32} << 20;
  transfer::UploadOptions upload = mount_upload_defaults();
};

// What the mount uses; everything must outlive the Mount. `write_cas` is null for a read-only
// mount; `chunk_cache` and `dedup_index` may be null.
struct MountServices {
  hub::HubClient* hub = nullptr;
  hub::CasClient* read_cas = nullptr;
  hub::CasClient* write_cas = nullptr;
  cache::ChunkCache* chunk_cache = nullptr;
  cache::DedupIndex* dedup_index = nullptr;
  // Records every closed, uncommitted file (may be null: then a crash loses pending uploads).
  cache::Journal* journal = nullptr;
};

// What recover_journal() did.
struct RecoveryReport {
  std::uint64_t recovered = 0;   // files committed from the journal
  std::uint64_t conflicts = 0;   // ... of them under a conflict name (the remote file had changed)
  std::uint64_t failed = 0;      // left in the journal for the next mount (e.g. the network failed)
  std::uint64_t live = 0;        // records of daemons still running (not touched)
};

// Commits what a daemon of `bucket` left in `journal` when it died (kill -9, OOM, reboot) from its
// staging files in `staging_dir`: each file is uploaded, then committed at its path, unless the
// bucket's file there is no longer the version the local bytes started from (another writer
// committed meanwhile): then it is committed as `PATH.conflict-<UTC time>-<host>` and both are
// kept, and the log says so. A record whose staging file is gone is dropped with a log line.
// Records of daemons still running are left alone. Needs services.write_cas and services.journal.
//
// `on_progress`, when given, is called (on the calling thread) once the records to replay are
// known, after each of them, and at the end, so `bucketfs status` can show the replay while the
// mount does not exist yet.
struct RecoveryProgress {
  std::vector<std::string> pending;  // paths still to commit, in replay order; the first is under way
  RecoveryReport so_far;
};
RecoveryReport recover_journal(const MountServices& services, const naming::BucketId& bucket,
                               const std::filesystem::path& staging_dir, const transfer::UploadOptions& upload,
                               const std::function<void(const RecoveryProgress&)>& on_progress = {});

// What remove_orphaned_staging_files() did.
struct StagingSweep {
  std::uint64_t removed_files = 0;
  std::uint64_t removed_bytes = 0;
};

// Removes from `staging_dir` the staging files of daemons that are gone and that no journal
// record names: files a killed daemon had open and never closed, which no mount can commit.
// Files of running daemons (each holds a lock there, src/fs/staging.h) and journaled files stay;
// the lock files of daemons that are gone go. Logs what it removed.
StagingSweep remove_orphaned_staging_files(const cache::Journal& journal, const std::filesystem::path& staging_dir);

struct MountStatus {
  std::uint64_t pending_uploads = 0;  // files written and not yet committed
  std::uint64_t uploads_in_flight = 0;
  std::uint64_t files_committed = 0;
  std::uint64_t bytes_committed = 0;  // sizes of the files committed
  std::uint64_t xorb_bytes_sent = 0;
  std::uint64_t upload_failures = 0;  // attempts that failed (retried later)
  std::uint64_t bytes_read_remote = 0;  // file bytes served from the store (cache or network)
  std::string last_error;             // one line, token-free; empty when none
};

class Mount {
 public:
  // Mounts the bucket at options.mountpoint. Fails with one line naming the problem (mountpoint
  // missing, not a directory, already a mount, FUSE unavailable).
  static std::expected<std::unique_ptr<Mount>, std::string> create(MountServices services, MountOptions options);
  ~Mount();  // unmounts if still mounted, stops the workers (without draining)
  Mount(const Mount&) = delete;
  Mount& operator=(const Mount&) = delete;

  // Serves requests until the file system is unmounted (by unmount(), `fusermount3 -u`, or
  // `umount`). Returns 0, or an errno-style code when the loop failed.
  int serve();

  // Waits until every file written so far is committed or `timeout` passes. Returns the number
  // of files still pending (0: everything is in the bucket). Thread-safe.
  std::uint64_t drain(std::chrono::milliseconds timeout);

  // Detaches the mount (lazy unmount); serve() then returns. Thread-safe, idempotent.
  void unmount();

  MountStatus status() const;

  struct Impl;

 private:
  explicit Mount(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace bucketfs::fs
