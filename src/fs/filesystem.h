#pragma once
// The file system behind the FUSE edge: the namespace (inodes, directory listings from the tree
// API), staging files, the upload queue and remote mutations. Every operation returns a value or
// an errno (the FUSE edge, mount.cc, only translates it into a reply).
//
// Locking: `mutex_` guards the namespace and every Node and Staged field not marked otherwise; it
// is never held across network I/O or file I/O of data. `remote_mutex_` serializes the remote
// mutations (commits of uploads, renames, unlinks, mtime changes) so that the bucket sees them in
// the order the application made them; it is taken before `mutex_`, never after. Data reads and
// writes of an open file do not take `remote_mutex_` and take `mutex_` only for bookkeeping.
// A Staged's `journal_mutex` is taken after `remote_mutex_` and before `mutex_` (journal_put),
// never the other way; its `base_mutex` and `unfetched_mutex` are leaves: nothing else is taken
// while one is held (`unfetched_mutex` is held across a staging pwrite or ftruncate of a file
// with unfetched bytes, sometimes under `mutex_`); its `fill_mutex` is held across a whole fill
// (network I/O) and only ever with nothing else held.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <expected>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "bucketfs/fs/mount.h"
#include "bucketfs/transfer/download.h"
#include "bucketfs/transfer/upload.h"
#include "file_descriptor.h"
#include "reader.h"
#include "staging.h"

namespace bucketfs::fs {

using Ino = std::uint64_t;
inline constexpr Ino kRootIno = 1;

template <typename T>
using FsResult = std::expected<T, int>;  // the error is an errno value

// The thread and process (thread group) that made a request, as FUSE reports them (mount.cc
// caller_of). 0 means unknown, e.g. a caller in a pid namespace the daemon cannot see.
struct Caller {
  std::int64_t thread = 0;
  std::int64_t process = 0;
};

// The process (thread group id, from /proc/THREAD/status) of a thread; 0 when unknown.
std::int64_t process_of_thread(std::int64_t thread);

struct Attributes {
  Ino ino = 0;
  bool directory = false;
  std::uint64_t size = 0;
  std::int64_t mtime_ms = 0;
};

struct OpenedFile {
  std::uint64_t handle = 0;
  bool keep_cache = false;
  // Served without the kernel page cache (FOPEN_DIRECT_IO): write-only handles, so the bytes
  // written go from the writer's pages to the staging file in one copy, not through a page-cache
  // page first; and, while one is open, every other handle of the file, so none reads pages a
  // direct write made stale.
  bool direct_io = false;
};

struct DirectoryEntry {
  std::string name;
  Attributes attributes;
};

// The upload of a file that is being written sequentially from its first byte, started while
// the application still writes (so close or fsync waits only for the tail): an upload session
// reading the staging file up to `available` and waiting for more until the stream is sealed
// (close/fsync) or aborted (a write anywhere but at the end, or a truncate).
struct Stream {
  std::uint64_t available = 0;  // bytes [0, available) are written and final
  bool sealed = false;          // no more bytes: the end of the file is `available`
  bool aborted = false;
  std::uint64_t version_at_seal = 0;
  std::condition_variable more;
  std::optional<transfer::UploadResult<transfer::UploadedFile>> result;  // set when the thread ends
  std::thread thread;
};

// Local bytes of a file: written, truncated or pending upload.
struct Staged {
  FileDescriptor fd;
  std::string path;  // of the staging file; removed with the object
  std::string name;  // its file name: the journal key
  // What a journal record of these bytes names as their origin (conflict check at recovery),
  // guarded by base_mutex: the committed version the bytes started from; versions this mount
  // committed or was committing that the bytes also descend from (the bucket holding one of them
  // after a crash is not a foreign change); and this file's own version whose batch is in flight.
  std::mutex base_mutex;
  std::optional<xet::Hash> base;
  std::vector<xet::Hash> also_bases;
  std::optional<xet::Hash> in_flight;
  struct Origin {
    std::optional<xet::Hash> base;
    std::vector<xet::Hash> also_bases;  // also_bases and in_flight
  };
  Origin origin();
  // Adds `hash` to also_bases (once; the oldest go past a handful).
  void also_accept(const xet::Hash& hash);
  // Bytes of the version this file was opened from (for writing, without O_TRUNC) that the
  // staging file does not hold yet (cache::UnfetchedBase); none when the file was staged whole
  // or once fill_unfetched has fetched them. Guarded by unfetched_mutex, a leaf lock: writes,
  // truncates and fills of such a file change the staging file while holding it, so a fill never
  // overwrites a byte written since or writes past a truncate. It only ever goes from set to
  // unset: a writer that sees it unset may write without the lock.
  std::mutex unfetched_mutex;
  std::optional<cache::UnfetchedBase> unfetched;
  std::atomic<std::uint64_t> version{0};  // bumped by every change; no lock needed
  std::atomic<std::uint64_t> size{0};
  std::atomic<std::int64_t> mtime_ms{0};
  std::atomic<std::uint64_t> committed_version{0};  // the version in the bucket; written under mutex_
  std::uint64_t failures = 0;           // upload attempts that failed
  bool last_failure_permanent = false;  // ... and the last one cannot be fixed by retrying
  unsigned commit_waiters = 0;          // fsyncs (and renames) waiting for its commit; under mutex_
  // The server refused the last upload (400): it may have referenced, through the node's dedup
  // index, a xorb the server no longer has; the next attempt does without lookups in it.
  bool skip_local_dedup = false;
  unsigned attempts = 0;                // consecutive failures (backoff)
  bool queued = false;     // in the upload queue
  bool uploading = false;  // a worker is uploading it
  bool abandoned = false;  // its file was deleted or replaced: never committed
  bool journaled = false;  // a journal record names it
  std::mutex journal_mutex;  // orders this file's journal writes
  // What the last record said of the staging file's bytes (guarded by journal_mutex): a
  // snapshot taken before the fdatasync that made them durable. A record rewritten without a
  // sync (a rename) repeats it, so no record names bytes that may not be on disk.
  std::uint64_t journaled_size = 0;
  std::optional<cache::UnfetchedBase> journaled_unfetched;
  std::uint64_t journaled_snapshot = 0;  // the number of that snapshot (journal_mutex)
  std::uint64_t snapshots_taken = 0;     // persist's snapshots so far (unfetched_mutex)
  unsigned persisting = 0;               // persists between their snapshot and their put (mutex_)
  std::mutex fill_mutex;                 // one fill_unfetched of this file at a time
  // Streaming upload (guarded by stream_mutex): writes so far formed one run from byte 0 to
  // append_end; once it is long enough a Stream starts.
  std::mutex stream_mutex;
  bool appending = true;
  std::uint64_t append_end = 0;
  std::unique_ptr<Stream> stream;
  // Seals the stream at the current end (close, fsync). REQUIRES: stream_mutex not held.
  void seal_stream();
  // Stops the stream's upload; the file is then uploaded whole after close.
  void abort_stream_locked();  // REQUIRES: stream_mutex held
  ~Staged();
  bool dirty() const { return version.load() != committed_version; }
};

struct Node {
  Ino ino = 0;
  Ino parent = 0;
  std::string name;
  bool directory = false;
  bool attached = true;  // reachable from the root; false after unlink, or replaced
  std::uint64_t lookups = 0;
  std::uint32_t open_handles = 0;
  std::uint32_t open_writers = 0;
  std::uint32_t direct_handles = 0;  // open handles with OpenedFile::direct_io

  // Directory.
  std::map<std::string, Ino> children;
  bool listed = false;
  std::chrono::steady_clock::time_point listed_at;
  bool local_only = false;  // made by mkdir; not in the bucket (no file under it yet)

  // File: what the bucket holds (when remote_exists), and local bytes (staged).
  bool remote_exists = false;
  std::string remote_path;
  xet::Hash hash;
  std::uint64_t remote_size = 0;
  std::int64_t remote_mtime_ms = 0;
  std::chrono::steady_clock::time_point validated_at;
  std::shared_ptr<Staged> staged;
  // Closed versions still in the journal that a newer staged file replaced: their records stay
  // until the newer version is itself journaled (the last closed version is never lost).
  std::vector<std::shared_ptr<Staged>> superseded;
  std::optional<xet::Hash> kernel_cached;  // content the kernel may hold pages of
  // The hash of this file's version whose commit (batch) is in flight, if any.
  std::optional<xet::Hash> commit_in_flight;
};

class Filesystem {
 public:
  // `staging` is this daemon's claim on options.staging_dir.
  Filesystem(MountServices services, MountOptions options, std::unique_ptr<StagingFolder> staging);
  ~Filesystem();  // stops the upload workers (pending uploads stay in staging)
  Filesystem(const Filesystem&) = delete;
  Filesystem& operator=(const Filesystem&) = delete;

  const MountOptions& options() const { return options_; }

  FsResult<Attributes> lookup(Ino parent, const std::string& name);  // counts a lookup
  void forget(Ino ino, std::uint64_t count);
  FsResult<Attributes> getattr(Ino ino);
  FsResult<Attributes> set_size(Ino ino, std::uint64_t size);
  FsResult<Attributes> set_mtime(Ino ino, std::int64_t mtime_ms);
  FsResult<Attributes> mkdir(Ino parent, const std::string& name);  // counts a lookup
  FsResult<void> rmdir(Ino parent, const std::string& name);
  FsResult<void> unlink(Ino parent, const std::string& name);
  FsResult<void> rename(Ino parent, const std::string& name, Ino new_parent, const std::string& new_name,
                        unsigned flags);
  // `caller` opens the handle; flush() compares its own caller with it.
  FsResult<std::pair<Attributes, OpenedFile>> create(Ino parent, const std::string& name, int flags,
                                                     Caller caller = {});
  FsResult<OpenedFile> open(Ino ino, int flags, Caller caller = {});
  FsResult<void> read(std::uint64_t handle, std::uint64_t offset, std::size_t length,
                      const std::function<void(std::span<const std::byte>)>& reply);
  FsResult<std::size_t> write(std::uint64_t handle, std::uint64_t offset, std::span<const std::byte> data);
  // close(2): makes the bytes and their journal record durable and queues the upload. Only when
  // the closing process opened the handle: a process that inherited the descriptor (fork, or a
  // child closing it at exec) closes its copy while the opener may still be writing, and
  // committing then would put a half-written file in the bucket. The handle's last close
  // (release) then persists what such a process wrote.
  FsResult<void> flush(std::uint64_t handle, Caller caller = {});
  // copy_file_range(2) from a committed, unchanged source, into an empty destination at offset 0
  // or appended to the end of a committed, unchanged one. The whole source is committed at the
  // destination under its xet hash (one batch add; no bytes move); a part of it, or an append,
  // becomes a new file made of the stored chunks inside the range, re-uploading only the chunks the
  // range edges cut (transfer::compose_file; needs the server's file-chunks route). Anything else,
  // or a failure, is EOPNOTSUPP, and the kernel falls back to reading and writing. Returns the
  // bytes copied (0 from at or past the source's end).
  FsResult<std::size_t> copy_range(std::uint64_t handle_in, std::uint64_t offset_in, std::uint64_t handle_out,
                                   std::uint64_t offset_out, std::uint64_t length);
  FsResult<void> fsync(std::uint64_t handle);  // wait for the commit
  void release(std::uint64_t handle);
  FsResult<std::vector<DirectoryEntry>> list(Ino ino);  // every child with its attributes
  // user.xet.hash / user.xet.size of a committed file; ENODATA for other user.* names. Names of
  // other namespaces (security.*, system.posix_acl_*, trusted.*) are EOPNOTSUPP: bucketfs stores
  // none, and that answer lets `ls -l` remember per filesystem that it need not ask for every
  // entry (ENODATA would cost it two round trips per file listed).
  FsResult<std::string> xattr(Ino ino, const std::string& name);
  // Counts one more kernel reference of `ino`, the child `name` of `parent` (readdirplus
  // entries), and returns the node's attributes as they are now: the listing's may predate a
  // write, and the kernel takes a readdirplus entry's size as newer than any write completed
  // before the request was sent (a file written after opendir would read back short). Nothing
  // when that name no longer leads to that node (deleted, renamed or replaced since the listing
  // was taken): then the entry must not reach the kernel.
  std::optional<Attributes> remember(Ino parent, const std::string& name, Ino ino);

  std::uint64_t drain(std::chrono::milliseconds timeout);
  MountStatus status() const;

 private:
  struct Handle {
    Ino ino = 0;
    bool writable = false;
    bool direct = false;                    // OpenedFile::direct_io
    Caller opener;                          // who opened it (see flush)
    bool close_skipped = false;             // another process closed it without persisting
    std::shared_ptr<Staged> staged;         // writable handles: the file they write
    std::unique_ptr<RemoteReader> reader;   // read handles of a remote file
    std::mutex reader_mutex;                // guards creating `reader`
  };

  // REQUIRES: mutex_ held.
  Node* find(Ino ino);
  std::string path_of(const Node& node) const;  // key in the bucket (prefix included)
  std::string relative_path_of(const Node& node) const;
  Attributes attributes_of(const Node& node) const;
  Node& add_child(Node& parent, const std::string& name, bool directory);
  void detach(Node& node);
  void maybe_erase(Ino ino);
  bool listing_fresh(const Node& directory) const;
  bool has_local_state(const Node& node) const;
  // A file was committed under `directory` (may be null): it and its ancestors are in the bucket
  // now, no longer this mount's own folders, so once another client empties them they go, as on
  // every other mount. REQUIRES: mutex_ held.
  void in_bucket(Node* directory);
  // Queues the node's staged file for upload at `not_before`. With `move_up`, one already queued
  // for later is moved up to `not_before` (an fsync does not wait out a close's linger or a
  // backoff); a close leaves a backoff alone.
  void enqueue(Node& node, std::chrono::steady_clock::time_point not_before = {}, bool move_up = false);
  // Queues a file that was just closed: a small one lingers for kSmallFileLinger, so that files
  // closed one after another go up in one group (one shard, one batch, one journal sync)
  // instead of a session, three requests and two syncs each. REQUIRES: mutex_ held.
  void enqueue_closed(Node& node);

  // Lists `directory` from the bucket when its listing expired. Takes and releases the lock.
  FsResult<void> refresh_directory(std::unique_lock<std::mutex>& lock, Ino directory);
  // The child `name` of directory `parent`, after refreshing the listing when it expired; ENOENT
  // when there is none. Takes and releases the lock.
  FsResult<Node*> child_of(std::unique_lock<std::mutex>& lock, Ino parent, const std::string& name);
  // Before an entry is made in directory `ino` (create, mkdir, rename into it). A listing detaches
  // a folder whose last file went, but the kernel may hold it for up to the TTL and send creates
  // and renames into it (os.makedirs(exist_ok=True) saw it): it is the folder the application
  // sees, so it is attached again, as a folder of this mount only (like mkdir), with its detached
  // ancestors. Else the new entry would hang under a folder no path reaches, and its path would
  // be ENOENT until the parent's next listing. ESTALE when the folder's name now belongs to
  // another node (the kernel then looks the path up again). REQUIRES: mutex_ held.
  FsResult<void> reattach_directory(Ino ino);
  // Re-reads one file's entry when its TTL expired (close-to-open).
  FsResult<void> revalidate_file(std::unique_lock<std::mutex>& lock, Ino file);
  FsResult<std::shared_ptr<Staged>> new_staged();
  // The staged file a writable handle writes: its own, or (after a zero-byte copy replaced the
  // file with committed content) a new one staging the committed version (unfetched).
  // REQUIRES: mutex_ held.
  FsResult<std::shared_ptr<Staged>> staged_for_write(std::uint64_t handle);
  // Makes a new, empty `staged` the version (`hash`, `size`) without fetching it: the staging
  // file gets that size (holes) and `unfetched` names the version (src/fs/unfetched.h).
  FsResult<void> stage_unfetched(Staged& staged, const xet::Hash& hash, std::uint64_t size);
  // ftruncate(2) of the staging file and the bookkeeping of its size and unfetched bytes, under
  // its unfetched_mutex. 0 or the errno.
  static int truncate_staged(Staged& staged, std::uint64_t size);
  // Before a closed, journaled, uncommitted version is modified: move the modification to a new
  // staged file (a copy, or empty when `truncate`), so the journaled bytes stay as closed.
  // REQUIRES: lock held; may release it.
  FsResult<void> copy_on_write(std::unique_lock<std::mutex>& lock, Ino ino, bool truncate);
  // Staged::also_bases of a new version of `node` (copied from `copied_from`, may be null):
  // the copied version's, and the version whose commit is in flight. REQUIRES: mutex_ held.
  static std::vector<xet::Hash> also_bases_for_new_version(const Node& node, Staged* copied_from);
  FsResult<void> check_name(const Node& parent, const std::string& name) const;
  // Waits until `staged` is committed at a version >= `version`. EIO when its upload failed and
  // cannot succeed by retrying, or has gone on failing for options_.fsync_retry since the first
  // failure this wait saw, or the mount is stopping.
  FsResult<void> wait_committed(std::unique_lock<std::mutex>& lock, const std::shared_ptr<Staged>& staged,
                                std::uint64_t version);
  // Makes a dirty staged file durable: fdatasync, then its journal record. Releases the lock
  // meanwhile. A file that lacks bytes of the version it was opened from is recorded as such
  // (cache::UnfetchedBase), unless its written ranges number more than kMaxJournaledRanges: its
  // missing bytes are then fetched first (EIO if they cannot be). REQUIRES: lock held, node has a
  // staged file.
  static constexpr std::size_t kMaxJournaledRanges = 4096;
  FsResult<void> persist(std::unique_lock<std::mutex>& lock, Ino ino);
  // Rewrites the journal record of `staged` at `path` (outside mutex_), saying of its bytes what
  // the last record did (journaled_size, journaled_unfetched). False (logged) when the record
  // could not be written.
  bool journal_put(const std::shared_ptr<Staged>& staged, const std::string& path);
  // Writes the record of `staged` with `size` and `unfetched` as its bytes, and remembers them.
  // REQUIRES: staged->journal_mutex held, mutex_ not held.
  bool journal_put_locked(const std::shared_ptr<Staged>& staged, const std::string& path, std::uint64_t size,
                          const std::optional<cache::UnfetchedBase>& unfetched);
  void journal_remove(const std::shared_ptr<Staged>& staged);
  // The records of all of `stageds` in one journal transaction (one sync).
  void journal_remove(std::span<const std::shared_ptr<Staged>> stageds);
  // One batch; EIO (logged, status_.last_error) when it failed or was refused. `permanent`, when
  // given, tells whether retrying cannot help (refused operations, a token or bucket refused).
  FsResult<void> commit_batch(const std::vector<hub::BatchOperation>& operations, const std::string& what,
                              bool* permanent = nullptr);

  // Bookkeeping of a write for streaming; may start the stream.
  void note_write(const std::shared_ptr<Staged>& staged, std::uint64_t offset, std::size_t length);
  void upload_worker();
  // Uploads the files (one session, one shard) and commits them in one batch.
  void upload_group(const std::vector<Ino>& inos);
  std::string path_of_or(Ino ino) const;  // REQUIRES: mutex_ held

  MountServices services_;
  MountOptions options_;
  // Upload buffers kept from one file's upload for the next (options_.upload.buffer_pool).
  transfer::UploadBufferPool upload_buffers_;
  transfer::Downloader downloader_;
  WindowPool windows_;
  const std::int64_t mounted_at_ms_;
  const cache::Owner owner_ = cache::Owner::self();
  const std::unique_ptr<StagingFolder> staging_;
  // Streaming uploads running (note_write), at most kMaxStreams. One bounds the daemon's memory
  // when many files are written at once: 8 files of 128 MiB side by side peaked at 684 MiB with a
  // stream each, 352 MiB with two streams, 194 MiB with one, which wrote them no slower. Declared
  // before the nodes, whose Staged files join their stream threads when destroyed.
  static constexpr unsigned kMaxStreams = 1;
  std::atomic<unsigned> streams_running_{0};

  mutable std::mutex mutex_;
  std::mutex remote_mutex_;
  std::condition_variable committed_;  // an upload finished (either way)
  std::condition_variable work_;       // the upload queue changed
  std::unordered_map<Ino, std::shared_ptr<Node>> nodes_;
  Ino next_ino_ = kRootIno + 1;
  std::unordered_map<std::uint64_t, std::unique_ptr<Handle>> handles_;
  std::uint64_t next_handle_ = 1;
  std::deque<std::pair<std::chrono::steady_clock::time_point, Ino>> queue_;
  std::uint64_t mutations_ = 0;  // remote mutations made by this mount, to detect racing listings
  std::uint32_t batches_in_flight_ = 0;  // commit_batch calls waiting for their answer
  bool stopping_ = false;
  MountStatus status_;
  std::vector<std::thread> workers_;
};

}  // namespace bucketfs::fs
