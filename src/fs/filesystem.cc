#include "filesystem.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>

#include "bucketfs/naming/naming.h"
#include "bucketfs/transfer/compose.h"
#include "file_io.h"
#include "log.h"
#include "unfetched.h"

namespace bucketfs::fs {
namespace {

using Clock = std::chrono::steady_clock;

std::int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string join(const std::string& directory, const std::string& name) {
  return directory.empty() ? name : directory + "/" + name;
}

void raise_to_max(std::atomic<std::uint64_t>& value, std::uint64_t candidate) {
  auto seen = value.load();
  while (candidate > seen && !value.compare_exchange_weak(seen, candidate)) {
  }
}

// Whether a failed request would fail the same way again: the token or the bucket is refused,
// or the server refused what was sent. Network errors, 5xx, expired URLs and conflicts may pass.
bool retrying_cannot_help(const hub::HubError& error) {
  switch (error.kind) {
    case hub::HubErrorKind::unauthorized:
    case hub::HubErrorKind::forbidden:
    case hub::HubErrorKind::bucket_not_found:
    case hub::HubErrorKind::invalid:
      return true;
    default:
      return false;
  }
}

bool retrying_cannot_help(const transfer::UploadError& error) {
  switch (error.kind) {
    case transfer::UploadErrorKind::remote:
      return error.hub && retrying_cannot_help(*error.hub);
    case transfer::UploadErrorKind::rejected:
    case transfer::UploadErrorKind::internal:
      return true;
    default:
      return false;  // source (the staging file changed while read), cancelled
  }
}

// Files up to this size are grouped for upload (see enqueue_closed and upload_worker).
constexpr std::uint64_t kSmallFile = std::uint64_t{4} << 20;
constexpr std::chrono::milliseconds kSmallFileLinger{20};
// A chain of versions each made while the previous one's batch was in flight is rarely longer.
constexpr std::size_t kMaxAlsoBases = 8;
// The longest wait before retrying a failed upload that an fsync waits for.
constexpr std::chrono::seconds kWaitedRetry{5};

std::chrono::seconds backoff(unsigned attempts) {
  return std::chrono::seconds(std::min<unsigned>(60, 1u << std::min(attempts, 6u)));
}

// Adds `hash` to a list of also-accepted bases once, dropping the oldest past kMaxAlsoBases.
void add_also_base(std::vector<xet::Hash>& bases, const xet::Hash& hash) {
  if (std::find(bases.begin(), bases.end(), hash) != bases.end()) return;
  bases.push_back(hash);
  if (bases.size() > kMaxAlsoBases) bases.erase(bases.begin());
}

}  // namespace

Staged::Origin Staged::origin() {
  std::lock_guard lock(base_mutex);
  Origin origin{base, also_bases};
  if (in_flight) add_also_base(origin.also_bases, *in_flight);
  return origin;
}

void Staged::also_accept(const xet::Hash& hash) {
  std::lock_guard lock(base_mutex);
  add_also_base(also_bases, hash);
}

Staged::~Staged() {
  {
    std::lock_guard lock(stream_mutex);
    if (stream) abort_stream_locked();
  }
  if (stream && stream->thread.joinable()) stream->thread.join();
  // Bytes not in the bucket stay on disk (a later mount's journal recovery picks them up).
  if (!path.empty() && (abandoned || !dirty())) ::unlink(path.c_str());
}

void Staged::seal_stream() {
  std::lock_guard lock(stream_mutex);
  if (!stream || stream->sealed || stream->aborted) return;
  stream->sealed = true;
  stream->version_at_seal = version.load();
  stream->more.notify_all();
}

void Staged::abort_stream_locked() {
  appending = false;
  if (!stream) return;
  stream->aborted = true;
  stream->more.notify_all();
}

Filesystem::Filesystem(MountServices services, MountOptions options, std::unique_ptr<StagingFolder> staging)
    : services_(services),
      options_(std::move(options)),
      upload_buffers_(static_cast<std::size_t>(options_.upload.memory_budget())),
      downloader_(*services.read_cas, services.chunk_cache,
                  transfer::DownloaderOptions{.parallel_fetches = 4,
                                              .buffer_budget = std::size_t{64} << 20,
                                              .warm_buffer_bytes = std::size_t{1} << 20}),
      windows_(std::max<std::size_t>(options_.max_readahead, std::size_t{1} << 20), 8),
      mounted_at_ms_(now_ms()),
      staging_(std::move(staging)) {
  options_.upload.buffer_pool = &upload_buffers_;
  auto root = std::make_shared<Node>();
  root->ino = kRootIno;
  root->parent = kRootIno;
  root->directory = true;
  root->lookups = 1;
  nodes_[kRootIno] = root;
  if (services_.write_cas != nullptr && !options_.read_only) {
    for (unsigned i = 0; i < std::max(1u, options_.upload_workers); ++i) {
      workers_.emplace_back([this] { upload_worker(); });
    }
  }
}

Filesystem::~Filesystem() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  work_.notify_all();
  committed_.notify_all();
  for (auto& worker : workers_) worker.join();
  // Readers may wait on prefetches that use the downloader: destroy them first.
  handles_.clear();
}

// ---- Namespace helpers (REQUIRE mutex_) --------------------------------------------------------

Node* Filesystem::find(Ino ino) {
  auto it = nodes_.find(ino);
  return it == nodes_.end() ? nullptr : it->second.get();
}

std::string Filesystem::relative_path_of(const Node& node) const {
  std::vector<const std::string*> names;
  const Node* at = &node;
  while (at->ino != kRootIno) {
    names.push_back(&at->name);
    auto parent = nodes_.find(at->parent);
    if (parent == nodes_.end()) break;
    at = parent->second.get();
  }
  std::string path;
  for (auto it = names.rbegin(); it != names.rend(); ++it) {
    if (!path.empty()) path += '/';
    path += **it;
  }
  return path;
}

std::string Filesystem::path_of(const Node& node) const {
  // The root of a prefix mount is the prefix itself (not "prefix/": its listing and the keys of
  // its children would otherwise start with "prefix//").
  const std::string relative = relative_path_of(node);
  return relative.empty() ? options_.prefix : join(options_.prefix, relative);
}

Attributes Filesystem::attributes_of(const Node& node) const {
  Attributes attributes;
  attributes.ino = node.ino;
  attributes.directory = node.directory;
  if (node.directory) {
    attributes.mtime_ms = mounted_at_ms_;
  } else if (node.staged) {
    attributes.size = node.staged->size.load();
    attributes.mtime_ms = node.staged->mtime_ms.load();
  } else {
    attributes.size = node.remote_size;
    attributes.mtime_ms = node.remote_mtime_ms;
  }
  return attributes;
}

Node& Filesystem::add_child(Node& parent, const std::string& name, bool directory) {
  auto node = std::make_shared<Node>();
  node->ino = next_ino_++;
  node->parent = parent.ino;
  node->name = name;
  node->directory = directory;
  parent.children[name] = node->ino;
  Node& added = *node;
  nodes_[added.ino] = std::move(node);
  return added;
}

void Filesystem::detach(Node& node) {
  if (node.attached) {
    if (Node* parent = find(node.parent); parent != nullptr) {
      auto it = parent->children.find(node.name);
      if (it != parent->children.end() && it->second == node.ino) parent->children.erase(it);
    }
  }
  node.attached = false;
  if (node.staged) {
    node.staged->abandoned = true;  // nothing to commit any more
    committed_.notify_all();
  }
  std::vector<Ino> children;
  for (const auto& [name, ino] : node.children) children.push_back(ino);
  node.children.clear();
  for (Ino child : children) {
    if (Node* c = find(child); c != nullptr) {
      c->attached = false;
      detach(*c);
      maybe_erase(child);
    }
  }
}

void Filesystem::maybe_erase(Ino ino) {
  Node* node = find(ino);
  if (node == nullptr || ino == kRootIno || node->attached || node->open_handles > 0) return;
  if (node->lookups > 0) {
    // The kernel may remember a deleted or replaced inode for a while (until it forgets it), but
    // no one can open it again: its abandoned staging files need not stay open meanwhile.
    if (node->staged && node->staged->abandoned) node->staged.reset();
    std::erase_if(node->superseded, [](const std::shared_ptr<Staged>& old) { return old->abandoned; });
    return;
  }
  nodes_.erase(ino);
}

bool Filesystem::listing_fresh(const Node& directory) const {
  return directory.listed && Clock::now() - directory.listed_at < options_.metadata_ttl;
}

bool Filesystem::has_local_state(const Node& node) const {
  if (!node.directory) return node.staged && node.staged->dirty();
  if (node.local_only) return true;
  for (const auto& [name, ino] : node.children) {
    auto it = nodes_.find(ino);
    if (it != nodes_.end() && has_local_state(*it->second)) return true;
  }
  return false;
}

void Filesystem::enqueue(Node& node, Clock::time_point not_before, bool move_up) {
  if (!node.staged || workers_.empty()) return;
  if (node.staged->queued) {
    if (!move_up) return;
    for (auto& [when, ino] : queue_) {
      if (ino == node.ino && not_before < when) {
        when = not_before;
        work_.notify_one();
      }
    }
    return;
  }
  node.staged->queued = true;
  queue_.emplace_back(not_before, node.ino);
  ++status_.pending_uploads;  // recomputed by status(); a hint for the workers only
  work_.notify_one();
}

void Filesystem::enqueue_closed(Node& node) {
  const bool small = node.staged && node.staged->size.load() <= kSmallFile;
  enqueue(node, small ? Clock::now() + kSmallFileLinger : Clock::time_point{});
}

FsResult<void> Filesystem::check_name(const Node& parent, const std::string& name) const {
  if (name.size() > 255) return std::unexpected(ENAMETOOLONG);
  const std::string key = join(path_of(parent), name);
  if (auto problem = naming::object_key_problem(key); problem) {
    log_line("refused name '" + key + "': " + *problem);
    return std::unexpected(EINVAL);
  }
  return {};
}

// ---- Remote metadata ---------------------------------------------------------------------------

FsResult<void> Filesystem::refresh_directory(std::unique_lock<std::mutex>& lock, Ino ino) {
  Node* directory = find(ino);
  if (directory == nullptr) return std::unexpected(ENOENT);
  if (!directory->directory) return std::unexpected(ENOTDIR);
  if (listing_fresh(*directory) || !directory->attached) return {};
  const std::string path = path_of(*directory);
  std::uint64_t mutations_before = 0;
  std::vector<hub::TreeEntry> entries;
  // A mutation of ours that raced the listing may be missing from it (an upload), or still in it
  // (a delete or rename): such a listing is taken again, a few times at most.
  bool raced = false;
  for (int attempt = 0;; ++attempt) {
    mutations_before = mutations_;
    // A batch in flight may already be applied by the server (its answer late) while this mount
    // does not know yet: a listing overlapping one may be ahead of us (a renamed file gone).
    const bool quiet_before = batches_in_flight_ == 0;
    entries.clear();
    lock.unlock();
    auto listed = services_.hub->for_each_tree_entry(options_.bucket, path, hub::TreeOptions{.recursive = false, .limit = std::nullopt},
                                                     [&](hub::TreeEntry&& entry) {
                                                       entries.push_back(std::move(entry));
                                                       return true;
                                                     });
    lock.lock();
    directory = find(ino);
    if (directory == nullptr) return std::unexpected(ENOENT);
    if (!listed) {
      log_line("listing '" + path + "' failed: " + listed.error().describe());
      status_.last_error = "listing failed: " + listed.error().describe();
      if (directory->listed) return {};  // serve the stale listing rather than fail
      return std::unexpected(EIO);
    }
    raced = mutations_ != mutations_before || !quiet_before || batches_in_flight_ > 0;
    if (!raced || attempt == 2) break;
  }
  // Still raced: only update what we know; add and remove nothing (a name we just deleted or
  // renamed away would come back, one renamed here would go), and list again at the next access.
  const bool complete = !raced;
  const std::string base = path.empty() ? std::string() : path + "/";
  std::map<std::string, bool> seen;
  const auto now = Clock::now();
  for (auto& entry : entries) {
    if (!entry.path().starts_with(base)) continue;
    std::string name = entry.path().substr(base.size());
    if (name.empty() || name.find('/') != std::string::npos) continue;
    seen[name] = true;
    Node* child = nullptr;
    if (auto it = directory->children.find(name); it != directory->children.end()) child = find(it->second);
    if (child != nullptr && child->directory != entry.is_directory()) {
      if (!complete || has_local_state(*child)) continue;
      const Ino replaced = child->ino;
      detach(*child);
      maybe_erase(replaced);
      child = nullptr;
    }
    if (child == nullptr) {
      if (!complete) continue;
      child = &add_child(*directory, name, entry.is_directory());
    }
    if (entry.is_directory()) {
      child->local_only = false;
      continue;
    }
    if (child->staged && (child->staged->dirty() || !complete)) continue;
    const auto& file = entry.file;
    if (!complete && child->remote_exists) continue;
    child->remote_exists = true;
    child->remote_path = file.path;
    child->hash = file.xet_hash;
    child->remote_size = file.size;
    child->remote_mtime_ms = file.mtime_ms.value_or(file.uploaded_at_ms.value_or(mounted_at_ms_));
    child->validated_at = now;
  }
  if (complete) {
    std::vector<Ino> gone;
    for (const auto& [name, child_ino] : directory->children) {
      if (seen.contains(name)) continue;
      Node* child = find(child_ino);
      if (child == nullptr || has_local_state(*child)) continue;
      if (!child->directory && !child->remote_exists) continue;  // created here, not dirty: kept
      gone.push_back(child_ino);
    }
    for (Ino child : gone) {
      if (Node* node = find(child); node != nullptr) detach(*node);
      maybe_erase(child);
    }
  }
  directory->listed = true;
  if (complete) directory->listed_at = now;
  return {};
}

FsResult<void> Filesystem::revalidate_file(std::unique_lock<std::mutex>& lock, Ino ino) {
  Node* node = find(ino);
  if (node == nullptr) return std::unexpected(ENOENT);
  if (node->directory || node->staged || !node->remote_exists) return {};
  if (Clock::now() - node->validated_at < options_.metadata_ttl) return {};
  const std::string path = node->remote_path;
  lock.unlock();
  const std::string paths[] = {path};
  auto info = services_.hub->paths_info(options_.bucket, paths);
  lock.lock();
  node = find(ino);
  if (node == nullptr) return std::unexpected(ENOENT);
  if (!info) {
    log_line("revalidating '" + path + "' failed: " + info.error().describe());
    return {};  // keep what we know
  }
  if (node->staged || node->remote_path != path) return {};  // changed here meanwhile
  if (info->empty()) {
    log_line("'" + path + "' was deleted by another client");
    detach(*node);
    return std::unexpected(ENOENT);
  }
  const auto& file = info->front();
  node->hash = file.xet_hash;
  node->remote_size = file.size;
  node->remote_mtime_ms = file.mtime_ms.value_or(file.uploaded_at_ms.value_or(node->remote_mtime_ms));
  node->validated_at = Clock::now();
  return {};
}

std::int64_t process_of_thread(std::int64_t thread) {
  if (thread <= 0) return 0;
  std::ifstream status("/proc/" + std::to_string(thread) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.starts_with("Tgid:")) {
      try {
        return std::stoll(line.substr(5));
      } catch (const std::exception&) {
        return 0;
      }
    }
  }
  return 0;
}

// ---- Staging -----------------------------------------------------------------------------------

FsResult<std::shared_ptr<Staged>> Filesystem::new_staged() {
  auto file = staging_->create();
  if (!file) return std::unexpected(file.error());
  auto staged = std::make_shared<Staged>();
  staged->fd = std::move(file->fd);
  staged->path = std::move(file->path);
  staged->name = std::move(file->name);
  staged->mtime_ms = now_ms();
  return staged;
}

std::vector<xet::Hash> Filesystem::also_bases_for_new_version(const Node& node, Staged* copied_from) {
  std::vector<xet::Hash> bases;
  if (copied_from != nullptr) bases = copied_from->origin().also_bases;
  if (node.commit_in_flight) add_also_base(bases, *node.commit_in_flight);
  return bases;
}

FsResult<void> Filesystem::copy_on_write(std::unique_lock<std::mutex>& lock, Ino ino, bool truncate) {
  auto fresh = new_staged();
  if (!fresh) return std::unexpected(fresh.error());
  Node* node = find(ino);
  auto old = node->staged;
  (*fresh)->mtime_ms = old->mtime_ms.load();
  (*fresh)->version = 1;  // differs from the bucket until committed
  if (!truncate) {
    const std::uint64_t size = old->size.load();
    std::optional<cache::UnfetchedBase> unfetched;
    {
      std::lock_guard unfetched_lock(old->unfetched_mutex);
      unfetched = old->unfetched;
    }
    if (unfetched) unfetched->fetched.clear();  // not copied: only the written bytes are
    lock.unlock();
    // Only the bytes the old staging file holds are copied: what it lacks, the copy lacks too.
    const std::vector<xet::FileByteRange> ranges =
        unfetched ? unfetched->written : std::vector<xet::FileByteRange>{{0, size}};
    int error = ::ftruncate((*fresh)->fd.get(), static_cast<off_t>(size)) == 0 ? 0 : errno;
    for (const auto& range : ranges) {
      loff_t in = static_cast<loff_t>(range.start);
      loff_t out = in;
      while (error == 0 && static_cast<std::uint64_t>(in) < range.end) {
        const auto n = ::copy_file_range(old->fd.get(), &in, (*fresh)->fd.get(), &out, range.end - in, 0);
        if (n <= 0) error = n < 0 ? errno : EIO;
      }
    }
    if (error != 0) {
      log_line(std::string("copying a staged file failed: ") + std::strerror(error));
      lock.lock();
      return std::unexpected(error == ENOSPC ? ENOSPC : EIO);
    }
    (*fresh)->size = size;
    {
      std::lock_guard unfetched_lock((*fresh)->unfetched_mutex);
      (*fresh)->unfetched = std::move(unfetched);
    }
    {
      std::lock_guard stream_lock((*fresh)->stream_mutex);
      (*fresh)->appending = size == 0;
      (*fresh)->append_end = size;
    }
    lock.lock();
    node = find(ino);
    if (node == nullptr) return std::unexpected(ENOENT);
    if (node->staged != old) return {};  // someone else replaced it meanwhile: use theirs
  }
  // Taken now, not before the copy: a batch of `old` may have started or ended meanwhile.
  const auto origin = old->origin();
  (*fresh)->base = origin.base;
  (*fresh)->also_bases = also_bases_for_new_version(*node, old.get());
  node->superseded.push_back(std::move(old));
  node->staged = std::move(*fresh);
  return {};
}

FsResult<void> Filesystem::stage_unfetched(Staged& staged, const xet::Hash& hash, std::uint64_t size) {
  if (::ftruncate(staged.fd.get(), static_cast<off_t>(size)) != 0) {
    return std::unexpected(errno == ENOSPC || errno == EFBIG ? errno : EIO);
  }
  {
    std::lock_guard unfetched_lock(staged.unfetched_mutex);
    staged.unfetched = cache::UnfetchedBase{.hash = hash, .size = size, .limit = size, .written = {}, .fetched = {}};
  }
  staged.size = size;
  std::lock_guard stream_lock(staged.stream_mutex);
  staged.appending = false;  // starts with bytes: not a run written from byte 0
  return {};
}

int Filesystem::truncate_staged(Staged& staged, std::uint64_t size) {
  std::unique_lock unfetched_lock(staged.unfetched_mutex);
  if (::ftruncate(staged.fd.get(), static_cast<off_t>(size)) != 0) return errno;
  if (staged.unfetched) {
    staged.unfetched->truncate(size);
    if (staged.unfetched->missing().empty()) staged.unfetched.reset();  // e.g. cut to 0: nothing to fetch
  }
  staged.size = size;
  return 0;
}

// ---- Operations --------------------------------------------------------------------------------

FsResult<Node*> Filesystem::child_of(std::unique_lock<std::mutex>& lock, Ino parent, const std::string& name) {
  if (auto ok = refresh_directory(lock, parent); !ok) return std::unexpected(ok.error());
  Node* directory = find(parent);
  auto it = directory->children.find(name);
  if (it == directory->children.end()) return std::unexpected(ENOENT);
  Node* child = find(it->second);
  if (child == nullptr) return std::unexpected(ENOENT);
  return child;
}

void Filesystem::in_bucket(Node* directory) {
  for (Node* at = directory; at != nullptr && at->ino != kRootIno && at->local_only; at = find(at->parent)) {
    at->local_only = false;
  }
}

FsResult<void> Filesystem::reattach_directory(Ino ino) {
  Node* node = find(ino);
  if (node == nullptr) return std::unexpected(ENOENT);
  if (node->attached || !node->directory) return {};
  if (auto ok = reattach_directory(node->parent); !ok) return ok;
  node = find(ino);
  Node* parent = node == nullptr ? nullptr : find(node->parent);
  if (parent == nullptr) return std::unexpected(ENOENT);
  if (parent->children.contains(node->name)) return std::unexpected(ESTALE);
  parent->children[node->name] = ino;
  node->attached = true;
  node->local_only = true;
  node->listed = false;  // its children were dropped when it was detached: list it again
  return {};
}

FsResult<Attributes> Filesystem::lookup(Ino parent, const std::string& name) {
  std::unique_lock lock(mutex_);
  auto child = child_of(lock, parent, name);
  if (!child) return std::unexpected(child.error());
  ++(*child)->lookups;
  return attributes_of(**child);
}

std::optional<Attributes> Filesystem::remember(Ino parent, const std::string& name, Ino ino) {
  std::lock_guard lock(mutex_);
  Node* directory = find(parent);
  Node* node = find(ino);
  if (directory == nullptr || node == nullptr || !node->attached) return std::nullopt;
  auto it = directory->children.find(name);
  if (it == directory->children.end() || it->second != ino) return std::nullopt;
  ++node->lookups;
  return attributes_of(*node);
}

void Filesystem::forget(Ino ino, std::uint64_t count) {
  std::lock_guard lock(mutex_);
  Node* node = find(ino);
  if (node == nullptr) return;
  node->lookups -= std::min(node->lookups, count);
  maybe_erase(ino);
}

FsResult<Attributes> Filesystem::getattr(Ino ino) {
  std::lock_guard lock(mutex_);
  Node* node = find(ino);
  if (node == nullptr) return std::unexpected(ENOENT);
  return attributes_of(*node);
}

FsResult<Attributes> Filesystem::set_size(Ino ino, std::uint64_t size) {
  if (options_.read_only) return std::unexpected(EROFS);
  std::unique_lock lock(mutex_);
  Node* node = find(ino);
  if (node == nullptr) return std::unexpected(ENOENT);
  if (node->directory) return std::unexpected(EISDIR);
  if (node->staged && node->open_writers == 0 && node->staged->journaled && node->staged->dirty()) {
    if (auto ok = copy_on_write(lock, ino, size == 0); !ok) return std::unexpected(ok.error());
    node = find(ino);
    if (node == nullptr) return std::unexpected(ENOENT);
  }
  if (!node->staged) {
    auto staged = new_staged();
    if (!staged) return std::unexpected(staged.error());
    if (node->remote_exists && node->remote_size > 0 && size > 0) {
      if (auto ok = stage_unfetched(**staged, node->hash, node->remote_size); !ok) return std::unexpected(ok.error());
    }
    (*staged)->mtime_ms = node->remote_mtime_ms;
    if (node->remote_exists) (*staged)->base = node->hash;
    (*staged)->also_bases = also_bases_for_new_version(*node, nullptr);
    if (!node->staged) node->staged = std::move(*staged);
  }
  auto& staged = *node->staged;
  {
    std::lock_guard stream_lock(staged.stream_mutex);
    if (staged.appending && !staged.stream && size <= staged.append_end) {
      staged.append_end = size;  // the run from byte 0, cut short or unchanged, goes on from there
    } else if (!(staged.appending && size == staged.append_end)) {  // only a no-op keeps a stream
      staged.abort_stream_locked();
    }
  }
  if (int error = truncate_staged(staged, size); error != 0) {
    return std::unexpected(error == ENOSPC || error == EFBIG ? error : EIO);
  }
  staged.mtime_ms = now_ms();
  ++staged.version;
  if (node->open_writers == 0) {
    // truncate(2) without an open file: nobody will close it, so it is persisted now.
    if (auto ok = persist(lock, ino); !ok) return std::unexpected(ok.error());
    node = find(ino);
    if (node == nullptr) return std::unexpected(ENOENT);
    enqueue(*node);
  }
  return attributes_of(*node);
}

FsResult<Attributes> Filesystem::set_mtime(Ino ino, std::int64_t mtime_ms) {
  if (options_.read_only) return std::unexpected(EROFS);
  std::unique_lock remote(remote_mutex_);
  std::unique_lock lock(mutex_);
  Node* node = find(ino);
  if (node == nullptr) return std::unexpected(ENOENT);
  if (node->directory) return attributes_of(*node);  // directories have no stored times
  if (node->staged && node->staged->dirty()) {
    node->staged->mtime_ms = mtime_ms;  // the pending commit carries it
    return attributes_of(*node);
  }
  if (node->remote_exists && node->attached) {
    const std::vector<hub::BatchOperation> operations = {
        hub::BatchOperation::add(node->remote_path, node->hash, mtime_ms)};
    const std::string what = "setting the time of '" + node->remote_path + "'";
    lock.unlock();
    if (auto ok = commit_batch(operations, what); !ok) return std::unexpected(ok.error());
    lock.lock();
    node = find(ino);
    if (node == nullptr) return std::unexpected(ENOENT);
    ++mutations_;
  }
  node->remote_mtime_ms = mtime_ms;
  if (node->staged) node->staged->mtime_ms = mtime_ms;
  return attributes_of(*node);
}

FsResult<Attributes> Filesystem::mkdir(Ino parent, const std::string& name) {
  if (options_.read_only) return std::unexpected(EROFS);
  std::unique_lock lock(mutex_);
  if (auto ok = reattach_directory(parent); !ok) return std::unexpected(ok.error());
  if (auto ok = refresh_directory(lock, parent); !ok) return std::unexpected(ok.error());
  Node* directory = find(parent);
  if (directory->children.contains(name)) return std::unexpected(EEXIST);
  if (auto ok = check_name(*directory, name); !ok) return std::unexpected(ok.error());
  Node& made = add_child(*directory, name, true);
  made.local_only = true;
  made.listed = true;
  made.listed_at = Clock::now();
  ++made.lookups;
  return attributes_of(made);
}

FsResult<void> Filesystem::rmdir(Ino parent, const std::string& name) {
  if (options_.read_only) return std::unexpected(EROFS);
  std::unique_lock lock(mutex_);
  auto found = child_of(lock, parent, name);
  if (!found) return std::unexpected(found.error());
  Node* child = *found;
  const Ino ino = child->ino;
  if (!child->directory) return std::unexpected(ENOTDIR);
  if (auto ok = refresh_directory(lock, ino); !ok) return std::unexpected(ok.error());
  child = find(ino);
  if (child == nullptr) return std::unexpected(ENOENT);
  if (!child->children.empty()) return std::unexpected(ENOTEMPTY);
  detach(*child);
  maybe_erase(ino);
  return {};
}

FsResult<void> Filesystem::unlink(Ino parent, const std::string& name) {
  if (options_.read_only) return std::unexpected(EROFS);
  std::unique_lock remote(remote_mutex_);
  std::unique_lock lock(mutex_);
  auto found = child_of(lock, parent, name);
  if (!found) return std::unexpected(found.error());
  Node* node = *found;
  const Ino ino = node->ino;
  if (node->directory) return std::unexpected(EISDIR);
  if (node->remote_exists) {
    const std::vector<hub::BatchOperation> operations = {hub::BatchOperation::remove(node->remote_path)};
    const std::string what = "deleting '" + node->remote_path + "'";
    lock.unlock();
    if (auto ok = commit_batch(operations, what); !ok) return std::unexpected(ok.error());
    lock.lock();
    ++mutations_;
    node = find(ino);
    if (node == nullptr) return {};
    node->remote_exists = false;
  }
  auto staged = node->staged;
  auto superseded = std::move(node->superseded);
  detach(*node);
  maybe_erase(ino);
  lock.unlock();
  if (staged && staged->journaled) journal_remove(staged);
  for (auto& old : superseded) {
    old->abandoned = true;
    journal_remove(old);
  }
  return {};
}

FsResult<void> Filesystem::rename(Ino parent, const std::string& name, Ino new_parent, const std::string& new_name,
                                  unsigned flags) {
  if (options_.read_only) return std::unexpected(EROFS);
  if ((flags & RENAME_EXCHANGE) != 0) return std::unexpected(EINVAL);
  if ((flags & ~static_cast<unsigned>(RENAME_NOREPLACE)) != 0) return std::unexpected(EINVAL);
  {
    // A directory is published whole: commit what is pending under it first (without holding
    // remote_mutex_, which the commits need).
    std::unique_lock lock(mutex_);
    auto found = child_of(lock, parent, name);
    if (!found) return std::unexpected(found.error());
    Node* source = *found;
    if (source->directory) {
      std::vector<std::pair<std::shared_ptr<Staged>, std::uint64_t>> pending;
      std::vector<Node*> stack = {source};
      while (!stack.empty()) {
        Node* at = stack.back();
        stack.pop_back();
        for (const auto& [child_name, child_ino] : at->children) {
          Node* child = find(child_ino);
          if (child == nullptr) continue;
          if (child->directory) {
            stack.push_back(child);
          } else if (child->staged && child->staged->dirty()) {
            enqueue(*child);
            pending.emplace_back(child->staged, child->staged->version.load());
          }
        }
      }
      for (const auto& [staged, version] : pending) {
        if (auto ok = wait_committed(lock, staged, version); !ok) return ok;
      }
    }
  }
  std::unique_lock remote(remote_mutex_);
  std::unique_lock lock(mutex_);
  if (auto ok = reattach_directory(new_parent); !ok) return std::unexpected(ok.error());
  if (auto ok = refresh_directory(lock, parent); !ok) return std::unexpected(ok.error());
  if (auto ok = refresh_directory(lock, new_parent); !ok) return std::unexpected(ok.error());
  Node* from_directory = find(parent);
  Node* to_directory = find(new_parent);
  auto source_it = from_directory->children.find(name);
  if (source_it == from_directory->children.end()) return std::unexpected(ENOENT);
  const Ino source_ino = source_it->second;
  Node* source = find(source_ino);
  if (source == nullptr) return std::unexpected(ENOENT);
  if (auto ok = check_name(*to_directory, new_name); !ok) return std::unexpected(ok.error());
  // A directory cannot move into itself.
  for (Node* at = to_directory; at != nullptr; at = at->ino == kRootIno ? nullptr : find(at->parent)) {
    if (at->ino == source_ino) return std::unexpected(EINVAL);
  }
  Ino target_ino = 0;
  if (auto target_it = to_directory->children.find(new_name); target_it != to_directory->children.end()) {
    target_ino = target_it->second;
    if (target_ino == source_ino) return {};
    if ((flags & RENAME_NOREPLACE) != 0) return std::unexpected(EEXIST);
    Node* target = find(target_ino);
    if (target != nullptr && target->directory) {
      if (!source->directory) return std::unexpected(EISDIR);
      if (auto ok = refresh_directory(lock, target_ino); !ok) return std::unexpected(ok.error());
      target = find(target_ino);
      if (target != nullptr && !target->children.empty()) return std::unexpected(ENOTEMPTY);
    } else if (target != nullptr && source->directory) {
      return std::unexpected(ENOTDIR);
    }
  }
  const std::string from_path = path_of(*source);
  const std::string to_path = join(path_of(*to_directory), new_name);
  std::vector<hub::BatchOperation> operations;
  if (!source->directory) {
    if (source->remote_exists) {
      operations.push_back(hub::BatchOperation::add(to_path, source->hash, source->remote_mtime_ms));
      operations.push_back(hub::BatchOperation::remove(source->remote_path));
    } else if (Node* target = target_ino != 0 ? find(target_ino) : nullptr;
               target != nullptr && !target->directory && target->remote_exists) {
      // The source is not in the bucket yet: the file it replaces goes now, or it would come back
      // if the source were deleted or moved on before its upload.
      operations.push_back(hub::BatchOperation::remove(target->remote_path));
    }
  } else {
    lock.unlock();
    auto listed = services_.hub->for_each_tree_entry(options_.bucket, from_path, hub::TreeOptions{.recursive = true, .limit = std::nullopt},
                                                     [&](hub::TreeEntry&& entry) {
                                                       if (entry.is_directory()) return true;
                                                       if (!entry.path().starts_with(from_path + "/")) return true;
                                                       const std::string rest = entry.path().substr(from_path.size());
                                                       operations.push_back(hub::BatchOperation::add(
                                                           to_path + rest, entry.file.xet_hash, entry.file.mtime_ms));
                                                       operations.push_back(hub::BatchOperation::remove(entry.path()));
                                                       return true;
                                                     });
    if (!listed) {
      log_line("listing '" + from_path + "' to rename it failed: " + listed.error().describe());
      return std::unexpected(EIO);
    }
    lock.lock();
  }
  if (!operations.empty()) {
    lock.unlock();
    if (auto ok = commit_batch(operations, "renaming '" + from_path + "' to '" + to_path + "'"); !ok) {
      return std::unexpected(ok.error());
    }
    lock.lock();
    ++mutations_;
  }
  source = find(source_ino);
  from_directory = find(parent);
  to_directory = find(new_parent);
  if (source == nullptr || from_directory == nullptr || to_directory == nullptr) return {};
  std::vector<std::shared_ptr<Staged>> replaced;
  if (target_ino != 0) {
    if (Node* target = find(target_ino); target != nullptr) {
      target->remote_exists = false;  // replaced by the add above (or by the pending upload)
      if (target->staged) replaced.push_back(target->staged);
      for (auto& old : target->superseded) replaced.push_back(std::move(old));
      target->superseded.clear();
      detach(*target);
      maybe_erase(target_ino);
    }
  }
  if (auto it = from_directory->children.find(name); it != from_directory->children.end() && it->second == source_ino) {
    from_directory->children.erase(it);
  }
  source->parent = new_parent;
  source->name = new_name;
  to_directory->children[new_name] = source_ino;
  if (std::any_of(operations.begin(), operations.end(),
                  [](const hub::BatchOperation& op) { return op.kind == hub::BatchOperation::Kind::add_file; })) {
    in_bucket(to_directory);  // files are in the bucket under the new folders now
  }
  if (source->directory) source->local_only = source->local_only && operations.empty();
  // Files under the moved node now live at their new keys.
  std::vector<std::pair<std::shared_ptr<Staged>, std::string>> records;
  std::vector<Node*> stack = {source};
  while (!stack.empty()) {
    Node* at = stack.back();
    stack.pop_back();
    if (!at->directory) {
      if (at->remote_exists) at->remote_path = path_of(*at);
      // Oldest first: each put stamps a new sequence, and recovery keeps the highest of a path.
      for (const auto& old : at->superseded) {
        if (old->journaled) records.emplace_back(old, path_of(*at));
      }
      // A file whose close is being persisted gets its record after that put (journal_mutex).
      if (at->staged && (at->staged->journaled || at->staged->persisting > 0)) {
        records.emplace_back(at->staged, path_of(*at));
      }
      continue;
    }
    for (const auto& [child_name, child_ino] : at->children) {
      if (Node* child = find(child_ino); child != nullptr) stack.push_back(child);
    }
  }
  lock.unlock();
  for (auto& old : replaced) {
    old->abandoned = true;
    if (old->journaled) journal_remove(old);
  }
  for (const auto& [staged, path] : records) journal_put(staged, path);
  return {};
}

FsResult<std::pair<Attributes, OpenedFile>> Filesystem::create(Ino parent, const std::string& name, int flags,
                                                               Caller caller) {
  if (options_.read_only) return std::unexpected(EROFS);
  std::unique_lock lock(mutex_);
  if (auto ok = reattach_directory(parent); !ok) return std::unexpected(ok.error());
  if (auto ok = refresh_directory(lock, parent); !ok) return std::unexpected(ok.error());
  Node* directory = find(parent);
  if (auto it = directory->children.find(name); it != directory->children.end()) {
    if ((flags & O_EXCL) != 0) return std::unexpected(EEXIST);
    const Ino existing = it->second;
    Node* node = find(existing);
    if (node == nullptr) return std::unexpected(ENOENT);
    if (node->directory) return std::unexpected(EISDIR);
    ++node->lookups;
    lock.unlock();
    auto opened = open(existing, flags);
    if (!opened) {
      forget(existing, 1);
      return std::unexpected(opened.error());
    }
    auto attributes = getattr(existing);
    if (!attributes) return std::unexpected(attributes.error());
    return std::pair{*attributes, *opened};
  }
  if (auto ok = check_name(*directory, name); !ok) return std::unexpected(ok.error());
  auto staged = new_staged();
  if (!staged) return std::unexpected(staged.error());
  ++(*staged)->version;  // an empty new file is a change too
  Node& node = add_child(*directory, name, false);
  node.staged = std::move(*staged);
  ++node.lookups;
  ++node.open_handles;
  ++node.open_writers;
  const std::uint64_t id = next_handle_++;
  auto handle = std::make_unique<Handle>();
  handle->ino = node.ino;
  handle->writable = true;
  handle->staged = node.staged;
  handle->opener = caller;
  OpenedFile opened{id, true};
  if ((flags & O_ACCMODE) == O_WRONLY) {  // a new inode: no page of it is cached anywhere
    opened.direct_io = handle->direct = true;
    ++node.direct_handles;
  }
  handles_[id] = std::move(handle);
  return std::pair{attributes_of(node), opened};
}

FsResult<OpenedFile> Filesystem::open(Ino ino, int flags, Caller caller) {
  const bool writable = (flags & O_ACCMODE) != O_RDONLY;
  if (writable && options_.read_only) return std::unexpected(EROFS);
  std::unique_lock lock(mutex_);
  Node* node = find(ino);
  if (node == nullptr) return std::unexpected(ENOENT);
  if (node->directory) return std::unexpected(EISDIR);
  if (!writable) {
    if (auto ok = revalidate_file(lock, ino); !ok) return std::unexpected(ok.error());
    node = find(ino);
    if (node == nullptr) return std::unexpected(ENOENT);
  }
  const bool truncate = (flags & O_TRUNC) != 0;
  if (writable && node->staged && node->open_writers == 0 && node->staged->journaled && node->staged->dirty()) {
    if (auto ok = copy_on_write(lock, ino, truncate); !ok) return std::unexpected(ok.error());
    node = find(ino);
    if (node == nullptr) return std::unexpected(ENOENT);
  }
  if (writable) {
    if (node->staged) {
      if (truncate && node->staged->size.load() != 0) {
        {
          std::lock_guard stream_lock(node->staged->stream_mutex);
          node->staged->abort_stream_locked();
        }
        if (truncate_staged(*node->staged, 0) != 0) return std::unexpected(EIO);
        node->staged->mtime_ms = now_ms();
        ++node->staged->version;
      }
    } else {
      auto staged = new_staged();
      if (!staged) return std::unexpected(staged.error());
      if (!truncate && node->remote_exists && node->remote_size > 0) {
        // Modify in place: the file's current bytes, not fetched, are the start of the staged file.
        if (auto ok = stage_unfetched(**staged, node->hash, node->remote_size); !ok) return std::unexpected(ok.error());
        (*staged)->mtime_ms = node->remote_mtime_ms;
        // An unchanged base is not a change: only writes make it one.
        (*staged)->committed_version = 0;
      } else if (truncate && node->remote_exists && node->remote_size > 0) {
        ++(*staged)->version;  // emptied
      }
      if (node->remote_exists) (*staged)->base = node->hash;
      (*staged)->also_bases = also_bases_for_new_version(*node, nullptr);
      if (!node->staged) node->staged = std::move(*staged);
    }
  }
  ++node->open_handles;
  if (writable) ++node->open_writers;
  bool keep_cache = true;
  if (!node->staged) {
    keep_cache = node->kernel_cached == node->hash;
    node->kernel_cached = node->hash;
  }
  const std::uint64_t id = next_handle_++;
  auto handle = std::make_unique<Handle>();
  handle->ino = ino;
  handle->writable = writable;
  handle->opener = caller;
  if (writable) handle->staged = node->staged;
  // A write-only handle goes direct when no other handle is open (else the others could read
  // pages it made stale); any handle opened while a direct one is open goes direct too.
  const bool alone = node->open_handles == 1;
  handle->direct = node->direct_handles > 0 || ((flags & O_ACCMODE) == O_WRONLY && alone);
  if (handle->direct) {
    ++node->direct_handles;
    keep_cache = false;  // the kernel drops what it cached before, and caches nothing meanwhile
  }
  const bool direct = handle->direct;
  handles_[id] = std::move(handle);
  return OpenedFile{id, keep_cache, direct};
}

FsResult<void> Filesystem::read(std::uint64_t id, std::uint64_t offset, std::size_t length,
                                const std::function<void(std::span<const std::byte>)>& reply) {
  Handle* handle = nullptr;
  std::shared_ptr<Staged> staged;
  xet::Hash hash;
  std::uint64_t size = 0;
  {
    std::lock_guard lock(mutex_);
    auto it = handles_.find(id);
    if (it == handles_.end()) return std::unexpected(EBADF);
    handle = it->second.get();
    Node* node = find(handle->ino);
    if (node == nullptr) return std::unexpected(ESTALE);
    staged = node->staged;
    hash = node->hash;
    size = node->remote_size;
  }
  if (staged) {
    // Bytes the staging file lacks come from the version it was opened from. Which they are is
    // taken before the staging file is read: a fill completing in between then only fetches
    // again what it wrote.
    std::vector<xet::FileByteRange> missing;
    xet::Hash version_hash;
    std::uint64_t version_size = 0;
    {
      std::lock_guard unfetched_lock(staged->unfetched_mutex);
      if (staged->unfetched) {
        missing = staged->unfetched->missing(offset, offset + length);
        version_hash = staged->unfetched->hash;
        version_size = staged->unfetched->size;
      }
    }
    thread_local std::vector<std::byte> buffer;
    if (buffer.size() < length) buffer.resize(length);
    auto got = read_all(staged->fd.get(), buffer.data(), length, offset);
    if (!got) return std::unexpected(EIO);
    std::uint64_t from_version = 0;
    for (auto range : missing) {
      range.end = std::min(range.end, offset + *got);  // a truncate may have come in between
      if (range.start >= range.end) break;
      auto done = read_version(downloader_, version_hash, version_size, range, buffer.data() + (range.start - offset));
      if (!done) {
        log_line("read failed: " + done.error().describe());
        std::lock_guard lock(mutex_);
        status_.last_error = "read failed: " + done.error().describe();
        return std::unexpected(EIO);
      }
      from_version += range.length();
    }
    reply({buffer.data(), *got});
    if (from_version > 0) {
      std::lock_guard lock(mutex_);
      status_.bytes_read_remote += from_version;
    }
    return {};
  }
  RemoteReader* reader = nullptr;
  {
    std::lock_guard reader_lock(handle->reader_mutex);
    if (!handle->reader) handle->reader = std::make_unique<RemoteReader>(downloader_, windows_, hash, size);
    reader = handle->reader.get();
  }
  auto done = reader->read(offset, length, reply);
  if (!done) {
    log_line("read failed: " + done.error().describe());
    std::lock_guard lock(mutex_);
    status_.last_error = "read failed: " + done.error().describe();
    return std::unexpected(EIO);
  }
  std::lock_guard lock(mutex_);
  status_.bytes_read_remote += std::min<std::uint64_t>(length, offset < size ? size - offset : 0);
  return {};
}

FsResult<std::size_t> Filesystem::write(std::uint64_t id, std::uint64_t offset, std::span<const std::byte> data) {
  std::shared_ptr<Staged> staged;
  {
    std::unique_lock lock(mutex_);
    auto it = handles_.find(id);
    if (it == handles_.end()) return std::unexpected(EBADF);
    if (!it->second->writable) return std::unexpected(EBADF);
    staged = it->second->staged;
    if (!staged) {  // a zero-byte copy replaced the file: its bytes are staged again first
      auto restaged = staged_for_write(id);
      if (!restaged) return std::unexpected(restaged.error());
      staged = *restaged;
    }
  }
  int error = 0;
  bool sized = false;
  {
    std::unique_lock unfetched_lock(staged->unfetched_mutex);
    if (staged->unfetched) {
      error = write_all(staged->fd.get(), data.data(), data.size(), offset);
      if (error == 0) {
        // With the size, under the lock: a record's ranges never end past its size.
        staged->unfetched->add_written(offset, offset + data.size());
        raise_to_max(staged->size, offset + data.size());
        sized = true;
      }
    } else {
      unfetched_lock.unlock();  // it never becomes set again
      error = write_all(staged->fd.get(), data.data(), data.size(), offset);
    }
  }
  if (error != 0) {
    log_line(std::string("writing a staging file failed: ") + std::strerror(error));
    return std::unexpected(error == ENOSPC || error == EDQUOT ? ENOSPC : EIO);
  }
  if (!sized) raise_to_max(staged->size, offset + data.size());
  staged->mtime_ms = now_ms();
  ++staged->version;
  note_write(staged, offset, data.size());
  return data.size();
}

void Filesystem::note_write(const std::shared_ptr<Staged>& staged, std::uint64_t offset, std::size_t length) {
  // Below this, an upload after close costs less than a thread.
  constexpr std::uint64_t kStreamThreshold = std::uint64_t{8} << 20;
  std::lock_guard lock(staged->stream_mutex);
  if (Stream* stream = staged->stream.get(); stream != nullptr) {
    if (stream->sealed || stream->aborted) return;  // the version check at commit discards it
    if (offset == stream->available) {
      stream->available += length;
      stream->more.notify_all();
    } else {
      staged->abort_stream_locked();
    }
    return;
  }
  if (!staged->appending) return;
  if (offset != staged->append_end) {
    staged->appending = false;
    return;
  }
  staged->append_end += length;
  if (staged->append_end < kStreamThreshold || services_.write_cas == nullptr || options_.read_only) return;
  // One stream at a time: each holds an upload's buffers (about 80 MiB), on top of the uploads
  // after close. With several files written side by side (one per rank of a sharded checkpoint)
  // a file starts its stream at a later write, once the stream is free (it reads from byte 0), or
  // is uploaded after close like any other.
  unsigned running = streams_running_.load();
  do {
    if (running >= kMaxStreams) return;
  } while (!streams_running_.compare_exchange_weak(running, running + 1));
  auto owned = std::make_unique<Stream>();
  Stream* stream = owned.get();
  Staged* file = staged.get();
  stream->available = staged->append_end;
  staged->stream = std::move(owned);
  stream->thread = std::thread([this, file, stream] {
    std::uint64_t position = 0;
    transfer::UploadRead read = [file, stream, &position](std::span<std::byte> buffer)
        -> std::expected<std::size_t, std::string> {
      std::uint64_t end = 0;
      {
        std::unique_lock stream_lock(file->stream_mutex);
        stream->more.wait(stream_lock,
                          [&] { return stream->aborted || stream->sealed || stream->available > position; });
        if (stream->aborted) return std::unexpected(std::string("the file was changed out of order"));
        end = stream->available;
      }
      const std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(buffer.size(), end - position));
      if (want == 0) return 0;
      auto got = read_all(file->fd.get(), buffer.data(), want, position);
      if (!got) return std::unexpected(std::string("reading the staging file: ") + std::strerror(got.error()));
      position += *got;
      return *got;
    };
    // Re-reads only touch bytes already consumed, which no write changes without aborting.
    transfer::UploadReadAt read_at = [file](std::uint64_t offset, std::span<std::byte> buffer)
        -> std::expected<std::size_t, std::string> {
      auto got = read_all(file->fd.get(), buffer.data(), buffer.size(), offset);
      if (!got) return std::unexpected(std::string("reading the staging file: ") + std::strerror(got.error()));
      return *got;
    };
    std::optional<transfer::UploadResult<transfer::UploadedFile>> result;
    {
      transfer::Uploader uploader(*services_.write_cas, *services_.hub, services_.dedup_index, options_.upload);
      result = uploader.upload(transfer::UploadSource(std::move(read), std::move(read_at)));
    }
    streams_running_.fetch_sub(1);  // its buffers are back in the pool or freed
    std::lock_guard stream_lock(file->stream_mutex);
    stream->result = std::move(*result);
  });
}

FsResult<std::shared_ptr<Staged>> Filesystem::staged_for_write(std::uint64_t id) {
  auto it = handles_.find(id);
  if (it == handles_.end()) return std::unexpected(EBADF);
  Handle& handle = *it->second;
  if (handle.staged) return handle.staged;
  Node* node = find(handle.ino);
  if (node == nullptr) return std::unexpected(ESTALE);
  if (!node->staged) {
    auto staged = new_staged();
    if (!staged) return std::unexpected(staged.error());
    if (node->remote_exists && node->remote_size > 0) {
      if (auto ok = stage_unfetched(**staged, node->hash, node->remote_size); !ok) return std::unexpected(ok.error());
    }
    (*staged)->mtime_ms = node->remote_mtime_ms;
    if (node->remote_exists) (*staged)->base = node->hash;
    (*staged)->also_bases = also_bases_for_new_version(*node, nullptr);
    node->staged = std::move(*staged);  // unchanged bytes: not dirty until written
  }
  handle.staged = node->staged;
  return handle.staged;
}

FsResult<std::size_t> Filesystem::copy_range(std::uint64_t id_in, std::uint64_t offset_in, std::uint64_t id_out,
                                             std::uint64_t offset_out, std::uint64_t length) {
  if (options_.read_only) return std::unexpected(EBADF);
  std::unique_lock lock(mutex_);
  auto in = handles_.find(id_in);
  auto out = handles_.find(id_out);
  if (in == handles_.end() || out == handles_.end() || !out->second->writable) return std::unexpected(EBADF);
  const Ino source_ino = in->second->ino;
  const Ino target_ino = out->second->ino;
  Node* source = find(source_ino);
  Node* target = find(target_ino);
  if (source == nullptr || target == nullptr) return std::unexpected(ESTALE);
  // The source must be committed and unchanged: its bytes are then the bucket's chunks. The
  // destination must be empty, or (appending) committed and unchanged and end at offset_out, so
  // that the new content is stored chunks too; and nobody else may be writing it. Anything else
  // (a source with unsaved changes, staged bytes in the destination, a gap or an overlap) is
  // copied by the kernel with reads and writes.
  const bool source_committed = !source->directory && source->attached && source->remote_exists &&
                                source->remote_size > 0 && (!source->staged || !source->staged->dirty());
  const bool target_alone = !target->directory && target->attached && target->open_writers <= 1 &&
                            (!target->staged || target->staged == out->second->staged);
  const bool target_empty = target_alone && attributes_of(*target).size == 0;
  const bool target_committed = target_alone && target->remote_exists && target->remote_size > 0 &&
                                (!target->staged || !target->staged->dirty()) && target->superseded.empty() &&
                                attributes_of(*target).size == target->remote_size;
  if (!source_committed || source_ino == target_ino) return std::unexpected(EOPNOTSUPP);
  const std::uint64_t source_size = source->remote_size;
  if (offset_in >= source_size) return 0;  // nothing to copy past the end of the source
  const std::uint64_t copied = std::min(length, source_size - offset_in);
  const bool appending = offset_out > 0 && target_committed && offset_out == target->remote_size;
  if (!(offset_out == 0 && target_empty) && !appending) return std::unexpected(EOPNOTSUPP);

  const xet::Hash source_hash = source->hash;
  const std::string from_path = source->remote_path;
  const std::string to_path = path_of(*target);
  const std::uint64_t version_before = target->staged ? target->staged->version.load() : 0;
  const std::optional<xet::Hash> target_before = appending ? std::optional(target->hash) : std::nullopt;
  const std::string what = "copying " + std::to_string(copied) + " bytes at " + std::to_string(offset_in) + " of '" +
                           from_path + "' to '" + to_path + "' at " + std::to_string(offset_out);
  xet::Hash hash = source_hash;
  std::uint64_t size = source_size;
  std::uint64_t xorb_bytes = 0;
  const bool whole = !appending && offset_in == 0 && copied == source_size;
  if (!whole) {
    // A part of the source (or an append): a new file made of the stored chunks inside the range
    // and, re-uploaded, the bytes of the chunks its edges cut.
    std::vector<transfer::StoredRange> parts;
    if (appending) parts.push_back({target->hash, target->remote_size, {0, target->remote_size}});
    parts.push_back({source_hash, source_size, {offset_in, offset_in + copied}});
    lock.unlock();
    auto composed = transfer::compose_file(*services_.write_cas, downloader_, parts);
    if (!composed) {
      log_line(what + ": composing failed, copying the bytes instead: " + composed.error().describe());
      return std::unexpected(EOPNOTSUPP);
    }
    hash = composed->file_hash;
    size = composed->size;
    xorb_bytes = composed->xorb_bytes_sent;
    lock.lock();
  }
  lock.unlock();
  std::unique_lock remote(remote_mutex_);
  lock.lock();
  // The destination must still be what the copy was built on.
  target = find(target_ino);
  if (target == nullptr || !target->attached || path_of(*target) != to_path ||
      (target->staged ? target->staged->version.load() : 0) != version_before ||
      (target_before && (!target->remote_exists || target->hash != *target_before))) {
    return std::unexpected(EOPNOTSUPP);
  }
  status_.xorb_bytes_sent += xorb_bytes;
  const std::int64_t mtime = now_ms();
  const std::vector<hub::BatchOperation> operations = {hub::BatchOperation::add(to_path, hash, mtime)};
  lock.unlock();
  if (auto ok = commit_batch(operations, what); !ok) {
    return std::unexpected(EOPNOTSUPP);  // copied with reads and writes instead
  }
  lock.lock();
  ++mutations_;
  ++status_.files_committed;
  status_.bytes_committed += size;
  target = find(target_ino);
  if (target == nullptr) return copied;
  target->remote_exists = true;
  target->remote_path = to_path;
  target->hash = hash;
  target->remote_size = size;
  target->remote_mtime_ms = mtime;
  target->validated_at = Clock::now();
  target->kernel_cached.reset();
  std::vector<std::shared_ptr<Staged>> dropped;
  if (target->staged && target->staged->version.load() == version_before) {
    // The staged file (empty, or the unchanged bytes of the previous version) is not uploaded:
    // the bucket holds the content now. A later write through an open descriptor stages the
    // committed bytes again (staged_for_write).
    dropped.push_back(std::move(target->staged));
    target->staged.reset();
    for (auto& old : target->superseded) dropped.push_back(std::move(old));
    target->superseded.clear();
    for (auto& [handle_id, handle] : handles_) {
      if (handle->staged == dropped.front()) handle->staged.reset();
    }
  }
  in_bucket(find(target->parent));
  lock.unlock();
  for (auto& old : dropped) {
    old->abandoned = true;
    if (old->journaled) journal_remove(old);
  }
  return copied;
}

FsResult<void> Filesystem::flush(std::uint64_t id, Caller caller) {
  std::unique_lock lock(mutex_);
  auto it = handles_.find(id);
  if (it == handles_.end()) return std::unexpected(EBADF);
  Handle& handle = *it->second;
  if (!handle.writable) return {};
  const Ino ino = handle.ino;
  Node* node = find(ino);
  if (node == nullptr || !node->attached || !node->staged || !node->staged->dirty()) return {};
  const bool same_thread = caller.thread != 0 && caller.thread == handle.opener.thread;
  if (!same_thread && caller.process == 0 && handle.opener.process != 0) {
    caller.process = process_of_thread(caller.thread);  // a /proc read: only when the thread differs
  }
  const bool known = caller.process != 0 && handle.opener.process != 0;
  if (!same_thread && known && caller.process != handle.opener.process) {
    handle.close_skipped = true;
    return {};
  }
  handle.close_skipped = false;
  node->staged->seal_stream();
  // close(2) returns once the bytes and their journal record are on disk (DESIGN.md contract).
  if (auto ok = persist(lock, ino); !ok) return ok;
  node = find(ino);
  if (node != nullptr && node->attached && node->staged && node->staged->dirty()) enqueue_closed(*node);
  return {};
}

FsResult<void> Filesystem::persist(std::unique_lock<std::mutex>& lock, Ino ino) {
  Node* node = find(ino);
  if (node == nullptr || !node->staged) return {};
  auto staged = node->staged;
  const std::string path = path_of(*node);
  ++staged->persisting;  // a rename meanwhile rewrites the record this writes (journal_put)
  lock.unlock();
  bool many_ranges = false;
  {
    std::lock_guard unfetched_lock(staged->unfetched_mutex);
    many_ranges = staged->unfetched && staged->unfetched->written.size() > kMaxJournaledRanges;
  }
  if (many_ranges) {
    // A record listing this many ranges would cost more to write at every close than the
    // missing bytes cost to fetch once: fetch them, and the record names a whole file.
    if (auto filled = fill_unfetched(downloader_, staged->fd.get(), staged->fill_mutex, staged->unfetched_mutex,
                                     staged->unfetched);
        !filled) {
      log_line("fetching the rest of '" + path + "' before recording it failed: " + filled.error());
      lock.lock();
      staged->persisting -= std::min(staged->persisting, 1u);
      return std::unexpected(EIO);
    }
  }
  // What the record says of the bytes is taken before the sync, so every byte it names as
  // written is on disk. Numbered, so that of two closes racing, an older snapshot is never
  // recorded after a newer one.
  std::uint64_t size = 0;
  std::optional<cache::UnfetchedBase> unfetched;
  std::uint64_t snapshot = 0;
  {
    std::lock_guard unfetched_lock(staged->unfetched_mutex);
    size = staged->size.load();
    unfetched = staged->unfetched;
    snapshot = ++staged->snapshots_taken;
  }
  if (unfetched) unfetched->fetched.clear();  // never recorded (they are fetched again)
  if (::fdatasync(staged->fd.get()) != 0) {
    const int error = errno;
    log_line("making the staged bytes of '" + path + "' durable failed: " + std::strerror(error));
    lock.lock();
    staged->persisting -= std::min(staged->persisting, 1u);
    return std::unexpected(error == ENOSPC || error == EDQUOT ? ENOSPC : EIO);
  }
  {
    std::lock_guard journal_lock(staged->journal_mutex);
    if (snapshot > staged->journaled_snapshot) {
      // At the path the file has now: a rename during the sync may have moved it.
      std::string now_at = path;
      lock.lock();
      if (Node* moved = find(ino); moved != nullptr && moved->staged == staged) now_at = path_of(*moved);
      lock.unlock();
      if (!journal_put_locked(staged, now_at, size, unfetched)) {
        lock.lock();
        staged->persisting -= std::min(staged->persisting, 1u);
        return std::unexpected(EIO);  // close must not succeed without its record
      }
      staged->journaled_snapshot = snapshot;
    }  // else a newer snapshot, taken after this one, is recorded already
  }
  lock.lock();
  staged->persisting -= std::min(staged->persisting, 1u);
  // The newer version is recorded: the closed versions it replaced are no longer needed.
  std::vector<std::shared_ptr<Staged>> superseded;
  if (node = find(ino); node != nullptr && node->staged == staged && staged->journaled) {
    superseded.swap(node->superseded);
  }
  if (!superseded.empty()) {
    lock.unlock();
    for (auto& old : superseded) {
      old->abandoned = true;
      journal_remove(old);
    }
    lock.lock();
  }
  return {};
}

bool Filesystem::journal_put(const std::shared_ptr<Staged>& staged, const std::string& path) {
  if (services_.journal == nullptr) return true;
  std::lock_guard journal_lock(staged->journal_mutex);
  {
    std::lock_guard lock(mutex_);
    if (!staged->journaled) return true;  // a close being persisted failed: there is no record
  }
  return journal_put_locked(staged, path, staged->journaled_size, staged->journaled_unfetched);
}

bool Filesystem::journal_put_locked(const std::shared_ptr<Staged>& staged, const std::string& path,
                                    std::uint64_t size, const std::optional<cache::UnfetchedBase>& unfetched) {
  if (services_.journal == nullptr) return true;
  cache::JournalRecord record;
  record.staging_name = staged->name;
  record.bucket = options_.bucket.str();
  record.path = path;
  auto origin = staged->origin();
  record.base = std::move(origin.base);
  record.also_bases = std::move(origin.also_bases);
  record.mtime_ms = staged->mtime_ms.load();
  record.size = size;
  record.unfetched = unfetched;
  record.owner = owner_;
  if (auto put = services_.journal->put(record); !put) {
    log_line("journal: recording '" + path + "' failed: " + put.error().message);
    return false;
  }
  staged->journaled_size = size;
  staged->journaled_unfetched = unfetched;
  std::lock_guard lock(mutex_);
  staged->journaled = true;
  return true;
}

void Filesystem::journal_remove(const std::shared_ptr<Staged>& staged) {
  journal_remove(std::span<const std::shared_ptr<Staged>>(&staged, 1));
}

void Filesystem::journal_remove(std::span<const std::shared_ptr<Staged>> stageds) {
  if (services_.journal == nullptr || stageds.empty()) return;
  // Every record's journal_mutex is held across its check and the removal, so a record a newer
  // version rewrites meanwhile is not dropped. Taken in address order: no two callers deadlock.
  std::vector<Staged*> ordered;
  for (const auto& staged : stageds) ordered.push_back(staged.get());
  std::sort(ordered.begin(), ordered.end());
  ordered.erase(std::unique(ordered.begin(), ordered.end()), ordered.end());
  std::vector<std::unique_lock<std::mutex>> locks;
  locks.reserve(ordered.size());
  std::vector<std::string> names;
  std::vector<Staged*> dropped;
  for (Staged* staged : ordered) {
    locks.emplace_back(staged->journal_mutex);
    // A newer version (written after the commit) keeps its record.
    if (staged->dirty() && !staged->abandoned) continue;
    names.push_back(staged->name);
    dropped.push_back(staged);
  }
  if (names.empty()) return;
  if (auto removed = services_.journal->remove_many(names); !removed) {
    log_line("journal: dropping the records of " +
             (names.size() == 1 ? names.front() : std::to_string(names.size()) + " files") +
             " failed: " + removed.error().message);
    return;
  }
  // No record names them now: a rename must not write one back (journal_put), or a crash
  // would commit bytes written since, which no close acknowledged. The next close records anew.
  std::lock_guard lock(mutex_);
  for (Staged* staged : dropped) staged->journaled = false;
}

FsResult<void> Filesystem::wait_committed(std::unique_lock<std::mutex>& lock, const std::shared_ptr<Staged>& staged,
                                          std::uint64_t version) {
  std::optional<Clock::time_point> give_up;  // set at the first failure seen
  ++staged->commit_waiters;
  struct Leave {
    Staged& staged;
    ~Leave() { --staged.commit_waiters; }
  } leave{*staged};
  for (;;) {
    const std::uint64_t failures_before = staged->failures;
    auto settled = [&] {
      return stopping_ || staged->committed_version >= version || staged->failures > failures_before ||
             staged->abandoned;
    };
    if (give_up) {
      committed_.wait_until(lock, *give_up, settled);
    } else {
      committed_.wait(lock, settled);
    }
    if (staged->committed_version >= version || staged->abandoned) return {};
    if (stopping_) return std::unexpected(EIO);
    // An attempt failed (the upload is retried in the background with backoff), or the time
    // to give up came while waiting for the next attempt.
    if (staged->failures > failures_before && staged->last_failure_permanent) return std::unexpected(EIO);
    if (!give_up) give_up = Clock::now() + options_.fsync_retry;
    if (Clock::now() >= *give_up) return std::unexpected(EIO);
  }
}

FsResult<void> Filesystem::fsync(std::uint64_t id) {
  std::unique_lock lock(mutex_);
  auto it = handles_.find(id);
  if (it == handles_.end()) return std::unexpected(EBADF);
  Node* node = find(it->second->ino);
  if (node == nullptr || !node->attached || !node->staged || !node->staged->dirty()) return {};
  auto staged = node->staged;
  staged->seal_stream();
  const std::uint64_t version = staged->version.load();
  enqueue(*node, {}, /*move_up=*/true);
  return wait_committed(lock, staged, version);
}

void Filesystem::release(std::uint64_t id) {
  std::unique_ptr<Handle> handle;
  {
    std::unique_lock lock(mutex_);
    auto it = handles_.find(id);
    if (it == handles_.end()) return;
    handle = std::move(it->second);
    handles_.erase(it);
    if (handle->close_skipped) {
      // The last close was another process's (flush): what it wrote is persisted now, so a crash
      // before the commit does not lose it. A failure is logged; the upload is queued anyway.
      Node* node = find(handle->ino);
      if (node != nullptr && node->attached && node->staged && node->staged->dirty()) {
        node->staged->seal_stream();
        (void)persist(lock, handle->ino);
      }
    }
    Node* node = find(handle->ino);
    if (node != nullptr) {
      --node->open_handles;
      if (handle->writable) --node->open_writers;
      if (handle->direct) --node->direct_handles;
      if (node->staged && node->attached) {
        if (node->staged->dirty()) {
          if (node->open_writers == 0) enqueue_closed(*node);
        } else if (node->open_handles == 0) {
          node->staged.reset();  // committed and nobody has it open: the bucket has it all
        }
      }
      maybe_erase(handle->ino);
    }
  }
  // The reader may wait for a prefetch: destroy it outside the lock.
  handle.reset();
}

FsResult<std::vector<DirectoryEntry>> Filesystem::list(Ino ino) {
  std::unique_lock lock(mutex_);
  if (auto ok = refresh_directory(lock, ino); !ok) return std::unexpected(ok.error());
  Node* directory = find(ino);
  std::vector<DirectoryEntry> entries;
  entries.reserve(directory->children.size());
  for (const auto& [name, child_ino] : directory->children) {
    if (Node* child = find(child_ino); child != nullptr) entries.push_back({name, attributes_of(*child)});
  }
  return entries;
}

FsResult<std::string> Filesystem::xattr(Ino ino, const std::string& name) {
  if (!name.starts_with("user.")) return std::unexpected(EOPNOTSUPP);
  std::lock_guard lock(mutex_);
  Node* node = find(ino);
  if (node == nullptr) return std::unexpected(ENOENT);
  if (node->directory || !node->remote_exists || (node->staged && node->staged->dirty())) {
    return std::unexpected(ENODATA);
  }
  if (name == "user.xet.hash") return node->hash.to_string();
  if (name == "user.xet.size") return std::to_string(node->remote_size);
  return std::unexpected(ENODATA);
}

FsResult<void> Filesystem::commit_batch(const std::vector<hub::BatchOperation>& operations, const std::string& what,
                                        bool* permanent) {
  {
    std::lock_guard lock(mutex_);
    ++batches_in_flight_;
  }
  auto result = services_.hub->batch(options_.bucket, operations);
  {
    std::lock_guard lock(mutex_);
    --batches_in_flight_;
    ++mutations_;  // whatever the answer says, the server may have applied it
  }
  if (!result) {
    log_line(what + " failed: " + result.error().describe());
    if (permanent != nullptr) *permanent = retrying_cannot_help(result.error());
    std::lock_guard lock(mutex_);
    status_.last_error = what + " failed: " + result.error().describe();
    return std::unexpected(EIO);
  }
  if (!result->success) {
    std::string reason = result->failed.empty() ? std::string("refused") : result->failed.front().error;
    log_line(what + " was refused: " + reason);
    if (permanent != nullptr) *permanent = true;
    std::lock_guard lock(mutex_);
    status_.last_error = what + " was refused: " + reason;
    return std::unexpected(EIO);
  }
  return {};
}

// ---- Uploads -----------------------------------------------------------------------------------

void Filesystem::upload_worker() {
  // Small files closed close together are uploaded together: one upload session (one shard) and
  // one batch commit for the group, instead of three requests and a session per file.
  constexpr std::size_t kGroupFiles = 256;
  constexpr std::uint64_t kGroupBytes = std::uint64_t{64} << 20;
  auto small_size = [&](Ino ino) -> std::optional<std::uint64_t> {  // REQUIRES: mutex_ held
    Node* node = find(ino);
    if (node == nullptr || !node->staged || node->staged->uploading) return std::nullopt;
    const std::uint64_t size = node->staged->size.load();
    if (size > kSmallFile) return std::nullopt;
    return size;
  };
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    const auto now = Clock::now();
    auto ready = std::find_if(queue_.begin(), queue_.end(), [&](const auto& item) { return item.first <= now; });
    if (ready == queue_.end()) {
      if (queue_.empty()) {
        work_.wait(lock);
      } else {
        const auto earliest = std::min_element(queue_.begin(), queue_.end())->first;
        work_.wait_until(lock, earliest);
      }
      continue;
    }
    std::vector<Ino> group = {ready->second};
    queue_.erase(ready);
    if (auto first = small_size(group.front()); first) {
      std::uint64_t bytes = *first;
      for (auto it = queue_.begin(); it != queue_.end() && group.size() < kGroupFiles;) {
        // Files still lingering after their close join too; those waiting out a backoff do not.
        auto size = it->first <= now + kSmallFileLinger ? small_size(it->second) : std::nullopt;
        if (size && bytes + *size <= kGroupBytes &&
            std::find(group.begin(), group.end(), it->second) == group.end()) {
          bytes += *size;
          group.push_back(it->second);
          it = queue_.erase(it);
        } else {
          ++it;
        }
      }
    }
    lock.unlock();
    upload_group(group);
    lock.lock();
  }
}

namespace {

// A source over bytes [0, size) of a staging file: sequential and positional reads.
transfer::UploadSource staging_source(int fd, std::uint64_t size) {
  auto position = std::make_shared<std::uint64_t>(0);
  transfer::UploadRead sequential = [fd, size, position](std::span<std::byte> buffer)
      -> std::expected<std::size_t, std::string> {
    const std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(buffer.size(), size - *position));
    auto got = read_all(fd, buffer.data(), want, *position);
    if (!got) return std::unexpected(std::string("reading the staging file: ") + std::strerror(got.error()));
    *position += *got;
    return *got;
  };
  transfer::UploadReadAt positional = [fd, size](std::uint64_t offset, std::span<std::byte> buffer)
      -> std::expected<std::size_t, std::string> {
    if (offset >= size) return 0;
    const std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(buffer.size(), size - offset));
    auto got = read_all(fd, buffer.data(), want, offset);
    if (!got) return std::unexpected(std::string("reading the staging file: ") + std::strerror(got.error()));
    return *got;
  };
  return transfer::UploadSource(std::move(sequential), std::move(positional));
}

}  // namespace

void Filesystem::upload_group(const std::vector<Ino>& inos) {
  struct Job {
    Ino ino = 0;
    std::shared_ptr<Staged> staged;
    std::uint64_t version = 0;
    std::uint64_t size = 0;
    std::unique_ptr<Stream> stream;
    xet::Hash hash;
    std::string path;
    std::int64_t mtime = 0;
    bool commit = false;
    // Fetching the bytes it lacks of the version it was opened from failed: not uploaded.
    std::optional<std::string> fill_error;
  };
  std::vector<Job> jobs;
  {
    std::lock_guard lock(mutex_);
    for (Ino ino : inos) {
      Node* node = find(ino);
      if (node == nullptr || !node->staged) continue;
      auto staged = node->staged;
      if (staged->uploading) {
        // Another worker has this file: look again once it is done (the entry taken from the
        // queue is put back, so `queued` stays true).
        staged->queued = true;
        queue_.emplace_back(Clock::now() + std::chrono::milliseconds(100), ino);
        continue;
      }
      staged->queued = false;
      if (!node->attached || !staged->dirty()) continue;
      staged->uploading = true;
      ++status_.uploads_in_flight;
      Job job;
      job.ino = ino;
      job.staged = staged;
      job.version = staged->version.load();
      job.size = staged->size.load();
      jobs.push_back(std::move(job));
    }
    if (jobs.empty()) {
      committed_.notify_all();
      return;
    }
  }
  // A streaming upload of a file, if sealed at this very version, already did the work.
  for (auto& job : jobs) {
    {
      std::lock_guard stream_lock(job.staged->stream_mutex);
      job.stream = std::move(job.staged->stream);
      // A file that had a stream is uploaded after close from now on. One without goes on
      // counting its run from byte 0: the close of a duplicate descriptor before the first write
      // (a shell's `> file`, dd) commits the empty file and must not stop its streaming upload.
      if (job.stream) job.staged->appending = false;
      if (job.stream && !job.stream->sealed) {
        job.stream->aborted = true;
        job.stream->more.notify_all();
      }
    }
    if (job.stream) job.stream->thread.join();
  }
  auto streamed = [](const Job& job) {
    const Stream* stream = job.stream.get();
    return stream != nullptr && stream->sealed && !stream->aborted && stream->version_at_seal == job.version &&
           stream->available == job.size && stream->result.has_value() && stream->result->has_value();
  };
  std::optional<transfer::UploadError> failure;
  std::uint64_t xorb_bytes = 0;
  // A file opened for writing without O_TRUNC first gets the bytes it lacks of the version it was
  // opened from (its record still names that version: a crash meanwhile fetches them again). One
  // that cannot is left out of this group and retried like a failed upload.
  for (auto& job : jobs) {
    const auto fill_start = Clock::now();
    auto filled = fill_unfetched(downloader_, job.staged->fd.get(), job.staged->fill_mutex,
                                 job.staged->unfetched_mutex, job.staged->unfetched);
    if (!filled) {
      job.fill_error = "fetching the unwritten bytes of a file modified in place failed: " + filled.error();
      continue;
    }
    if (const auto took = Clock::now() - fill_start; took > std::chrono::milliseconds(200)) {
      log_line("fetched the unwritten bytes of a file modified in place in " +
               std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(took).count()) + " ms");
    }
  }
  const bool nothing_to_upload =
      std::all_of(jobs.begin(), jobs.end(), [](const Job& job) { return job.fill_error.has_value(); });
  if (nothing_to_upload) {
    // each job is retried below
  } else if (jobs.size() == 1 && streamed(jobs.front())) {
    const auto& uploaded = **jobs.front().stream->result;
    jobs.front().hash = uploaded.file.file_hash;
    xorb_bytes = uploaded.session.xorb_bytes_sent;
  } else {
    bool skip_local_dedup =
        std::any_of(jobs.begin(), jobs.end(), [](const Job& job) { return job.staged->skip_local_dedup; });
    // A session refused for stale dedup index entries has had them removed: the second pass,
    // without index lookups, is what a retry would do, without the wait and the EIO to fsync.
    for (int pass = 0; pass < 2; ++pass) {
      failure.reset();
      transfer::UploadOptions upload_options = options_.upload;
      upload_options.local_dedup_lookups = !skip_local_dedup;
      transfer::UploadSession session(*services_.write_cas, services_.dedup_index, upload_options);
      for (auto& job : jobs) {
        if (job.fill_error) continue;
        auto added = session.add_file(staging_source(job.staged->fd.get(), job.size));
        if (!added) {
          failure = added.error();
          break;
        }
        job.hash = added->file_hash;
      }
      if (!failure) {
        auto finished = session.finish();
        if (finished) {
          xorb_bytes = finished->xorb_bytes_sent;
        } else {
          failure = finished.error();
        }
      }
      if (!failure || !failure->stale_local_dedup || skip_local_dedup) break;
      log_line("upload refused by the server (" + failure->describe() + "); uploading again without dedup index lookups");
      skip_local_dedup = true;
    }
  }

  std::unique_lock remote(remote_mutex_);
  std::unique_lock lock(mutex_);
  // What happens to a job that is not committed: a file changed meanwhile goes again (that is
  // not a failure); otherwise it is retried with backoff and fsync waiters get EIO.
  auto not_committed = [&](Job& job, const std::optional<std::string>& error,
                           bool permanent) {  // REQUIRES: mutex_ held
    Node* node = find(job.ino);
    if (node == nullptr || !node->attached || node->staged != job.staged) return;  // deleted or replaced
    if (job.staged->version.load() != job.version) {
      if (node->open_writers == 0) enqueue(*node);
      return;
    }
    if (!error) return;
    ++status_.upload_failures;
    status_.last_error = *error;
    ++job.staged->failures;
    job.staged->last_failure_permanent = permanent;
    ++job.staged->attempts;
    // While an fsync waits, a retry is at most kWaitedRetry away, so its --fsync-retry window
    // holds several attempts (the plain backoff reaches 32 s by the fifth).
    auto delay = std::chrono::duration_cast<Clock::duration>(backoff(job.staged->attempts));
    if (job.staged->commit_waiters > 0) delay = std::min<Clock::duration>(delay, kWaitedRetry);
    enqueue(*node, Clock::now() + delay);
  };
  auto finish = [&] {  // REQUIRES: mutex_ held
    for (auto& job : jobs) job.staged->uploading = false;
    status_.uploads_in_flight -= std::min<std::uint64_t>(status_.uploads_in_flight, jobs.size());
    committed_.notify_all();
  };
  if (failure) {
    const bool refused = failure->kind == transfer::UploadErrorKind::remote && failure->hub &&
                         failure->hub->kind == hub::HubErrorKind::invalid;
    for (auto& job : jobs) job.staged->skip_local_dedup = refused;
    std::string what = jobs.size() == 1 ? "'" + path_of_or(jobs.front().ino) + "'"
                                        : std::to_string(jobs.size()) + " files";
    bool logged = false;
    for (auto& job : jobs) {
      const bool changed = job.staged->version.load() != job.version;
      if (!changed && !logged) {
        log_line("upload of " + what + " failed (will retry): " + failure->describe());
        logged = true;
      }
      if (job.fill_error) {
        not_committed(job, job.fill_error, false);
      } else {
        not_committed(job, "upload of " + what + " failed: " + failure->describe(), retrying_cannot_help(*failure));
      }
    }
    finish();
    return;
  }
  std::vector<hub::BatchOperation> operations;
  for (auto& job : jobs) {
    if (job.fill_error) {
      log_line("upload of '" + path_of_or(job.ino) + "' failed (will retry): " + *job.fill_error);
      not_committed(job, job.fill_error, false);
      continue;
    }
    Node* node = find(job.ino);
    if (node == nullptr || !node->attached || node->staged != job.staged ||
        job.staged->version.load() != job.version) {
      not_committed(job, std::nullopt, false);
      continue;
    }
    job.commit = true;
    // Versions made or journaled until the answer accept it as their base.
    node->commit_in_flight = job.hash;
    {
      std::lock_guard base_lock(job.staged->base_mutex);
      job.staged->in_flight = job.hash;
    }
    job.path = path_of(*node);
    job.mtime = job.staged->mtime_ms.load();
    operations.push_back(hub::BatchOperation::add(job.path, job.hash, job.mtime));
    if (node->remote_exists && node->remote_path != job.path) {
      operations.push_back(hub::BatchOperation::remove(node->remote_path));
    }
  }
  if (operations.empty()) {
    finish();
    return;
  }
  const auto committing = std::count_if(jobs.begin(), jobs.end(), [](const Job& job) { return job.commit; });
  const std::string what = committing == 1 ? "committing '" + std::find_if(jobs.begin(), jobs.end(), [](const Job& job) {
                                                                return job.commit;
                                                              })->path + "'"
                                           : "committing " + std::to_string(committing) + " files";
  lock.unlock();
  bool permanent = false;
  auto committed = commit_batch(operations, what, &permanent);
  lock.lock();
  for (auto& job : jobs) {
    if (!job.commit) continue;
    if (Node* node = find(job.ino); node != nullptr) node->commit_in_flight.reset();
    {
      std::lock_guard base_lock(job.staged->base_mutex);
      job.staged->in_flight.reset();
      // Later versions of this staged file start from what the bucket now holds.
      if (committed) job.staged->base = job.hash;
    }
    // A failed batch may still have been applied (its answer lost): keep accepting it.
    if (!committed) job.staged->also_accept(job.hash);
  }
  if (!committed) {
    for (auto& job : jobs) {
      if (job.commit) not_committed(job, status_.last_error, permanent);
    }
    finish();
    return;
  }
  ++mutations_;
  status_.xorb_bytes_sent += xorb_bytes;
  std::vector<std::pair<std::shared_ptr<Staged>, bool>> after;  // (staged, drop its record)
  std::vector<std::shared_ptr<Staged>> obsolete;

  for (auto& job : jobs) {
    if (!job.commit) continue;
    auto& staged = job.staged;
    ++status_.files_committed;
    status_.bytes_committed += job.size;
    staged->committed_version = job.version;
    staged->attempts = 0;
    if (Node* node = find(job.ino); node != nullptr) {
      node->remote_exists = true;
      node->remote_path = job.path;
      node->hash = job.hash;
      node->remote_size = job.size;
      node->remote_mtime_ms = job.mtime;
      node->validated_at = Clock::now();
      node->kernel_cached = job.hash;  // the kernel saw exactly these bytes being written
      if (node->staged == staged) {
        // The closed versions this one replaced are older than what the bucket holds now.
        for (auto& old : node->superseded) obsolete.push_back(std::move(old));
        node->superseded.clear();
      }
      if (!staged->dirty() && node->open_handles == 0 && node->staged == staged) node->staged.reset();
      in_bucket(find(node->parent));
    }
    after.emplace_back(staged, staged->journaled && !staged->dirty());
  }
  finish();
  lock.unlock();
  std::vector<std::shared_ptr<Staged>> records_to_drop;
  for (std::size_t i = 0, k = 0; i < jobs.size(); ++i) {
    if (!jobs[i].commit) continue;
    const auto& [staged, drop_record] = after[k++];
    if (drop_record) records_to_drop.push_back(staged);
  }
  for (auto& old : obsolete) {
    old->abandoned = true;
    if (old->journaled) records_to_drop.push_back(old);
  }
  journal_remove(records_to_drop);  // one transaction and sync for the whole group
}

std::string Filesystem::path_of_or(Ino ino) const {
  auto it = nodes_.find(ino);
  return it == nodes_.end() ? std::string("?") : path_of(*it->second);
}

std::uint64_t Filesystem::drain(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  auto pending = [&] {
    std::uint64_t count = 0;
    for (const auto& [ino, node] : nodes_) {
      if (node->attached && node->staged && node->staged->dirty()) {
        ++count;
        if (!node->staged->queued && !node->staged->uploading) enqueue(*node);
      }
    }
    return count;
  };
  const auto deadline = Clock::now() + timeout;
  while (true) {
    const auto left = pending();
    if (left == 0 || Clock::now() >= deadline || workers_.empty()) return left;
    committed_.wait_until(lock, std::min(deadline, Clock::now() + std::chrono::milliseconds(500)));
  }
}

MountStatus Filesystem::status() const {
  std::lock_guard lock(mutex_);
  MountStatus status = status_;
  status.pending_uploads = 0;
  for (const auto& [ino, node] : nodes_) {
    if (node->attached && node->staged && node->staged->dirty()) ++status.pending_uploads;
  }
  return status;
}

}  // namespace bucketfs::fs
