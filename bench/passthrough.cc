// The FUSE ceiling of the benchmark suite (bench/suite.py): a minimal passthrough filesystem that
// serves a local folder through libfuse3's low-level API with the settings of bucketfs's mount
// (src/fs/mount.cc), so that "mount vs passthrough" measures what bucketfs adds on top of FUSE
// itself, on the same bytes, in the same run.
//
//   passthrough [--read-only] [--threads N] SOURCE MOUNTPOINT
//
// It stays in the foreground until SIGTERM/SIGINT or `fusermount3 -u MOUNTPOINT`, then unmounts.
//
// Settings copied from src/fs/mount.cc (keep them in step when that file changes):
// - FUSE_USE_VERSION 312, multithreaded loop with at most 16 threads, 4 idle, no clone_fd
//   (PERF-NOTES trap 3);
// - splice off and replies written from reused per-thread buffers (trap 2 and trap 1); writeback
//   cache off; readdirplus and async reads on;
// - max_write and max_readahead 1 MiB (libfuse derives max_pages from max_write);
// - attribute and entry timeouts 10 s (bucketfs's default --metadata-ttl), negative entries too;
// - keep_cache on every open (bucketfs keeps the page cache of unchanged files);
// - default_permissions.
// Reads, writes, create, truncate and fsync are served; links, renames, removals and xattrs are
// not (the benchmarks do not need them).
#define FUSE_USE_VERSION 312
#include <dirent.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace {

constexpr double kTimeoutSeconds = 10.0;
constexpr unsigned kMaxRequest = 1u << 20;

// Owns one file descriptor; move-only.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) {
      reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }

 private:
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  int fd_ = -1;
};

// A file or folder the kernel knows by our inode number: an O_PATH descriptor of it, and how many
// lookups the kernel has not yet forgotten.
struct Node {
  Fd path;
  dev_t source_dev = 0;
  ino_t source_ino = 0;
  std::uint64_t lookups = 0;
};

// An open file or folder: its descriptor, and for folders the entries read at opendir (offset i
// is entries[i - 1], so readdir can resume anywhere).
struct Handle {
  Fd fd;
  struct Entry {
    std::string name;
    ino_t ino;
    unsigned char type;
  };
  std::vector<Entry> entries;
};

// Inode and handle tables. `mutex` guards both maps; Node and Handle objects are never touched
// after they are erased, which happens only on forget/release, when the kernel has no request
// in flight that names them.
struct Passthrough {
  std::mutex mutex;
  std::unordered_map<fuse_ino_t, std::unique_ptr<Node>> nodes;
  std::map<std::pair<dev_t, ino_t>, fuse_ino_t> by_source;
  fuse_ino_t next_ino = FUSE_ROOT_ID + 1;
  std::unordered_map<std::uint64_t, std::unique_ptr<Handle>> handles;
  std::uint64_t next_handle = 1;
  bool read_only = false;

  int node_fd(fuse_ino_t ino) {
    std::lock_guard lock(mutex);
    auto it = nodes.find(ino);
    return it == nodes.end() ? -1 : it->second->path.get();
  }

  Handle* handle(std::uint64_t fh) {
    std::lock_guard lock(mutex);
    auto it = handles.find(fh);
    return it == handles.end() ? nullptr : it->second.get();
  }

  std::uint64_t add_handle(std::unique_ptr<Handle> handle) {
    std::lock_guard lock(mutex);
    const auto fh = next_handle++;
    handles.emplace(fh, std::move(handle));
    return fh;
  }

  void drop_handle(std::uint64_t fh) {
    std::unique_ptr<Handle> gone;
    std::lock_guard lock(mutex);
    auto it = handles.find(fh);
    if (it == handles.end()) return;
    gone = std::move(it->second);
    handles.erase(it);
  }
};

Passthrough& state_of(fuse_req_t request) { return *static_cast<Passthrough*>(fuse_req_userdata(request)); }

// Reused per-thread reply buffer: a fresh 1 MiB buffer per read would cost a page fault per
// 4 KiB on this VM (PERF-NOTES trap 1).
std::vector<char>& read_buffer(std::size_t size) {
  thread_local std::vector<char> buffer;
  if (buffer.size() < size) buffer.resize(std::max<std::size_t>(size, kMaxRequest));
  return buffer;
}

// Reopens an O_PATH descriptor with real access flags (O_PATH descriptors cannot read).
int reopen(int path_fd, int flags) {
  const std::string proc = "/proc/self/fd/" + std::to_string(path_fd);
  return ::open(proc.c_str(), flags & ~O_NOFOLLOW);
}

// Finds `name` in `parent` and counts one kernel lookup of it; 0 and errno on failure.
std::pair<fuse_entry_param, int> lookup_counted(Passthrough& fs, fuse_ino_t parent, const char* name) {
  fuse_entry_param entry{};
  entry.attr_timeout = kTimeoutSeconds;
  entry.entry_timeout = kTimeoutSeconds;
  const int parent_fd = fs.node_fd(parent);
  if (parent_fd < 0) return {entry, EBADF};
  Fd fd(::openat(parent_fd, name, O_PATH | O_NOFOLLOW));
  if (!fd.valid()) return {entry, errno};
  if (::fstatat(fd.get(), "", &entry.attr, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) != 0) return {entry, errno};
  std::lock_guard lock(fs.mutex);
  const auto key = std::make_pair(entry.attr.st_dev, entry.attr.st_ino);
  auto known = fs.by_source.find(key);
  fuse_ino_t ino;
  if (known != fs.by_source.end()) {
    ino = known->second;
  } else {
    ino = fs.next_ino++;
    auto node = std::make_unique<Node>();
    node->path = std::move(fd);
    node->source_dev = key.first;
    node->source_ino = key.second;
    fs.nodes.emplace(ino, std::move(node));
    fs.by_source.emplace(key, ino);
  }
  fs.nodes[ino]->lookups += 1;
  entry.ino = ino;
  entry.generation = 1;
  entry.attr.st_ino = ino;
  return {entry, 0};
}

void forget_one(Passthrough& fs, fuse_ino_t ino, std::uint64_t count) {
  std::unique_ptr<Node> gone;
  std::lock_guard lock(fs.mutex);
  auto it = fs.nodes.find(ino);
  if (it == fs.nodes.end() || ino == FUSE_ROOT_ID) return;
  if (it->second->lookups > count) {
    it->second->lookups -= count;
    return;
  }
  fs.by_source.erase({it->second->source_dev, it->second->source_ino});
  gone = std::move(it->second);
  fs.nodes.erase(it);
}

void on_init(void* userdata, fuse_conn_info* connection) {
  (void)userdata;
  connection->want &= ~(FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE);
  connection->want &= ~FUSE_CAP_WRITEBACK_CACHE;
  if ((connection->capable & FUSE_CAP_READDIRPLUS) != 0) connection->want |= FUSE_CAP_READDIRPLUS;
  if ((connection->capable & FUSE_CAP_ASYNC_READ) != 0) connection->want |= FUSE_CAP_ASYNC_READ;
  connection->max_write = kMaxRequest;
  connection->max_readahead = kMaxRequest;
}

void on_lookup(fuse_req_t request, fuse_ino_t parent, const char* name) {
  auto [entry, error] = lookup_counted(state_of(request), parent, name);
  if (error == ENOENT) {
    fuse_entry_param negative{};
    negative.entry_timeout = kTimeoutSeconds;
    fuse_reply_entry(request, &negative);
  } else if (error != 0) {
    fuse_reply_err(request, error);
  } else if (fuse_reply_entry(request, &entry) != 0) {
    forget_one(state_of(request), entry.ino, 1);
  }
}

void on_forget(fuse_req_t request, fuse_ino_t ino, uint64_t count) {
  forget_one(state_of(request), ino, count);
  fuse_reply_none(request);
}

void on_forget_multi(fuse_req_t request, size_t count, fuse_forget_data* forgets) {
  for (size_t i = 0; i < count; ++i) forget_one(state_of(request), forgets[i].ino, forgets[i].nlookup);
  fuse_reply_none(request);
}

void reply_attr_of(fuse_req_t request, fuse_ino_t ino, int fd) {
  struct stat st {};
  if (::fstatat(fd, "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) != 0) {
    fuse_reply_err(request, errno);
    return;
  }
  st.st_ino = ino;
  fuse_reply_attr(request, &st, kTimeoutSeconds);
}

void on_getattr(fuse_req_t request, fuse_ino_t ino, fuse_file_info*) {
  const int fd = state_of(request).node_fd(ino);
  if (fd < 0) {
    fuse_reply_err(request, EBADF);
    return;
  }
  reply_attr_of(request, ino, fd);
}

void on_setattr(fuse_req_t request, fuse_ino_t ino, struct stat* attr, int to_set, fuse_file_info* info) {
  auto& fs = state_of(request);
  const int path_fd = fs.node_fd(ino);
  if (path_fd < 0) {
    fuse_reply_err(request, EBADF);
    return;
  }
  if ((to_set & FUSE_SET_ATTR_SIZE) != 0) {
    if (fs.read_only) {
      fuse_reply_err(request, EROFS);
      return;
    }
    Handle* open_file = info != nullptr ? fs.handle(info->fh) : nullptr;
    Fd reopened;
    if (open_file == nullptr) reopened = Fd(reopen(path_fd, O_WRONLY));
    const int fd = open_file != nullptr ? open_file->fd.get() : reopened.get();
    if (fd < 0 || ::ftruncate(fd, attr->st_size) != 0) {
      fuse_reply_err(request, errno);
      return;
    }
  }
  // Modes, owners and times are accepted and left as they are, as bucketfs does.
  reply_attr_of(request, ino, path_fd);
}

void open_file(fuse_req_t request, fuse_ino_t ino, fuse_file_info* info) {
  auto& fs = state_of(request);
  if (fs.read_only && (info->flags & O_ACCMODE) != O_RDONLY) {
    fuse_reply_err(request, EROFS);
    return;
  }
  const int path_fd = fs.node_fd(ino);
  auto handle = std::make_unique<Handle>();
  handle->fd = Fd(path_fd < 0 ? -1 : reopen(path_fd, info->flags & ~(O_CREAT | O_EXCL)));
  if (!handle->fd.valid()) {
    fuse_reply_err(request, path_fd < 0 ? EBADF : errno);
    return;
  }
  info->fh = fs.add_handle(std::move(handle));
  info->keep_cache = 1;
  if (fuse_reply_open(request, info) != 0) fs.drop_handle(info->fh);
}

void on_open(fuse_req_t request, fuse_ino_t ino, fuse_file_info* info) { open_file(request, ino, info); }

void on_create(fuse_req_t request, fuse_ino_t parent, const char* name, mode_t mode, fuse_file_info* info) {
  auto& fs = state_of(request);
  if (fs.read_only) {
    fuse_reply_err(request, EROFS);
    return;
  }
  const int parent_fd = fs.node_fd(parent);
  auto handle = std::make_unique<Handle>();
  handle->fd = Fd(parent_fd < 0 ? -1 : ::openat(parent_fd, name, (info->flags | O_CREAT) & ~O_NOFOLLOW, mode));
  if (!handle->fd.valid()) {
    fuse_reply_err(request, parent_fd < 0 ? EBADF : errno);
    return;
  }
  auto [entry, error] = lookup_counted(fs, parent, name);
  if (error != 0) {
    fuse_reply_err(request, error);
    return;
  }
  info->fh = fs.add_handle(std::move(handle));
  info->keep_cache = 1;
  if (fuse_reply_create(request, &entry, info) != 0) {
    fs.drop_handle(info->fh);
    forget_one(fs, entry.ino, 1);
  }
}

void on_read(fuse_req_t request, fuse_ino_t, size_t size, off_t offset, fuse_file_info* info) {
  Handle* handle = state_of(request).handle(info->fh);
  if (handle == nullptr) {
    fuse_reply_err(request, EBADF);
    return;
  }
  auto& buffer = read_buffer(size);
  const ssize_t got = ::pread(handle->fd.get(), buffer.data(), size, offset);
  if (got < 0) {
    fuse_reply_err(request, errno);
    return;
  }
  fuse_reply_buf(request, buffer.data(), static_cast<size_t>(got));
}

void on_write(fuse_req_t request, fuse_ino_t, const char* data, size_t size, off_t offset, fuse_file_info* info) {
  Handle* handle = state_of(request).handle(info->fh);
  if (handle == nullptr) {
    fuse_reply_err(request, EBADF);
    return;
  }
  const ssize_t put = ::pwrite(handle->fd.get(), data, size, offset);
  if (put < 0) {
    fuse_reply_err(request, errno);
    return;
  }
  fuse_reply_write(request, static_cast<size_t>(put));
}

void on_flush(fuse_req_t request, fuse_ino_t, fuse_file_info*) { fuse_reply_err(request, 0); }

void on_release(fuse_req_t request, fuse_ino_t, fuse_file_info* info) {
  state_of(request).drop_handle(info->fh);
  fuse_reply_err(request, 0);
}

void on_fsync(fuse_req_t request, fuse_ino_t, int datasync, fuse_file_info* info) {
  Handle* handle = state_of(request).handle(info->fh);
  if (handle == nullptr) {
    fuse_reply_err(request, EBADF);
    return;
  }
  const int done = datasync != 0 ? ::fdatasync(handle->fd.get()) : ::fsync(handle->fd.get());
  fuse_reply_err(request, done == 0 ? 0 : errno);
}

void on_opendir(fuse_req_t request, fuse_ino_t ino, fuse_file_info* info) {
  auto& fs = state_of(request);
  const int path_fd = fs.node_fd(ino);
  auto handle = std::make_unique<Handle>();
  handle->fd = Fd(path_fd < 0 ? -1 : ::openat(path_fd, ".", O_RDONLY | O_DIRECTORY));
  if (!handle->fd.valid()) {
    fuse_reply_err(request, path_fd < 0 ? EBADF : errno);
    return;
  }
  // fdopendir takes the descriptor; a duplicate keeps handle->fd for the folder's lifetime.
  DIR* stream = ::fdopendir(::dup(handle->fd.get()));
  if (stream == nullptr) {
    fuse_reply_err(request, errno);
    return;
  }
  while (const dirent* entry = ::readdir(stream)) {
    handle->entries.push_back({entry->d_name, entry->d_ino, entry->d_type});
  }
  ::closedir(stream);
  info->fh = fs.add_handle(std::move(handle));
  info->keep_cache = 1;
  if (fuse_reply_open(request, info) != 0) fs.drop_handle(info->fh);
}

void reply_directory(fuse_req_t request, fuse_ino_t parent, size_t size, off_t offset, fuse_file_info* info,
                     bool plus) {
  auto& fs = state_of(request);
  Handle* handle = fs.handle(info->fh);
  if (handle == nullptr) {
    fuse_reply_err(request, EBADF);
    return;
  }
  auto& buffer = read_buffer(size);
  size_t used = 0;
  for (auto at = static_cast<size_t>(offset); at < handle->entries.size(); ++at) {
    const auto& entry = handle->entries[at];
    const off_t next = static_cast<off_t>(at + 1);
    char* out = buffer.data() + used;
    const size_t room = size - used;
    size_t need;
    if (plus) {
      // The size does not depend on the attributes: check it before counting a lookup.
      if (fuse_add_direntry_plus(request, nullptr, 0, entry.name.c_str(), nullptr, 0) > room) break;
      const bool dot = entry.name == "." || entry.name == "..";
      fuse_entry_param param{};
      if (dot) {
        param.attr.st_ino = entry.ino;  // no node id: the kernel makes no dentry for it
        param.attr.st_mode = static_cast<mode_t>(entry.type) << 12;
      } else {
        auto [found, error] = lookup_counted(fs, parent, entry.name.c_str());
        if (error != 0) continue;  // gone since opendir
        param = found;
      }
      need = fuse_add_direntry_plus(request, out, room, entry.name.c_str(), &param, next);
    } else {
      struct stat st {};
      st.st_ino = entry.ino;
      st.st_mode = static_cast<mode_t>(entry.type) << 12;
      need = fuse_add_direntry(request, out, room, entry.name.c_str(), &st, next);
      if (need > room) break;
    }
    used += need;
  }
  fuse_reply_buf(request, buffer.data(), used);
}

void on_readdir(fuse_req_t request, fuse_ino_t ino, size_t size, off_t offset, fuse_file_info* info) {
  reply_directory(request, ino, size, offset, info, false);
}

void on_readdirplus(fuse_req_t request, fuse_ino_t ino, size_t size, off_t offset, fuse_file_info* info) {
  reply_directory(request, ino, size, offset, info, true);
}

void on_releasedir(fuse_req_t request, fuse_ino_t, fuse_file_info* info) {
  state_of(request).drop_handle(info->fh);
  fuse_reply_err(request, 0);
}

void on_fsyncdir(fuse_req_t request, fuse_ino_t, int, fuse_file_info*) { fuse_reply_err(request, 0); }

void on_statfs(fuse_req_t request, fuse_ino_t ino) {
  struct statvfs st {};
  const int fd = state_of(request).node_fd(ino);
  if (fd < 0 || ::fstatvfs(fd, &st) != 0) {
    fuse_reply_err(request, fd < 0 ? EBADF : errno);
    return;
  }
  fuse_reply_statfs(request, &st);
}

const fuse_lowlevel_ops kOperations = [] {
  fuse_lowlevel_ops ops{};
  ops.init = on_init;
  ops.lookup = on_lookup;
  ops.forget = on_forget;
  ops.forget_multi = on_forget_multi;
  ops.getattr = on_getattr;
  ops.setattr = on_setattr;
  ops.open = on_open;
  ops.create = on_create;
  ops.read = on_read;
  ops.write = on_write;
  ops.flush = on_flush;
  ops.release = on_release;
  ops.fsync = on_fsync;
  ops.opendir = on_opendir;
  ops.readdir = on_readdir;
  ops.readdirplus = on_readdirplus;
  ops.releasedir = on_releasedir;
  ops.fsyncdir = on_fsyncdir;
  ops.statfs = on_statfs;
  return ops;
}();

// Owns a libfuse session: unmounts (when mounted) and destroys it.
class Session {
 public:
  Session(fuse_args* args, Passthrough* fs) : session_(fuse_session_new(args, &kOperations, sizeof kOperations, fs)) {}
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;
  ~Session() {
    if (session_ == nullptr) return;
    if (mounted_) fuse_session_unmount(session_);
    fuse_remove_signal_handlers(session_);
    fuse_session_destroy(session_);
  }

  bool valid() const { return session_ != nullptr; }
  bool mount(const char* mountpoint) {
    if (fuse_set_signal_handlers(session_) != 0) return false;
    mounted_ = fuse_session_mount(session_, mountpoint) == 0;
    return mounted_;
  }
  int serve(unsigned threads) {
    fuse_loop_config* config = fuse_loop_cfg_create();
    fuse_loop_cfg_set_max_threads(config, threads);
    fuse_loop_cfg_set_idle_threads(config, 4);
    fuse_loop_cfg_set_clone_fd(config, 0);
    const int result = fuse_session_loop_mt(session_, config);
    fuse_loop_cfg_destroy(config);
    return result;
  }

 private:
  fuse_session* session_;
  bool mounted_ = false;
};

int usage() {
  std::fprintf(stderr, "usage: passthrough [--read-only] [--threads N] SOURCE MOUNTPOINT\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  Passthrough fs;
  unsigned threads = 16;
  std::vector<std::string_view> positional;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--read-only") {
      fs.read_only = true;
    } else if (arg == "--threads" && i + 1 < argc) {
      threads = static_cast<unsigned>(std::strtoul(argv[++i], nullptr, 10));
    } else if (arg.starts_with("-")) {
      return usage();
    } else {
      positional.push_back(arg);
    }
  }
  if (positional.size() != 2 || threads == 0) return usage();
  const std::string source(positional[0]);
  const std::string mountpoint(positional[1]);

  auto root = std::make_unique<Node>();
  root->path = Fd(::open(source.c_str(), O_PATH | O_DIRECTORY));
  if (!root->path.valid()) {
    std::fprintf(stderr, "passthrough: cannot open %s: %s\n", source.c_str(), std::strerror(errno));
    return 1;
  }
  root->lookups = 1;
  fs.nodes.emplace(FUSE_ROOT_ID, std::move(root));

  std::string options = "default_permissions,fsname=passthrough:" + source + ",subtype=passthrough";
  if (fs.read_only) options += ",ro";
  std::vector<std::string> arguments = {"passthrough", "-o", options};
  std::vector<char*> raw;
  for (auto& argument : arguments) raw.push_back(argument.data());
  fuse_args args = FUSE_ARGS_INIT(static_cast<int>(raw.size()), raw.data());
  Session session(&args, &fs);
  if (!session.valid()) {
    std::fprintf(stderr, "passthrough: FUSE refused the options %s\n", options.c_str());
    return 1;
  }
  if (!session.mount(mountpoint.c_str())) {
    std::fprintf(stderr, "passthrough: cannot mount at %s\n", mountpoint.c_str());
    return 1;
  }
  return session.serve(threads) < 0 ? 1 : 0;
}
