// The FUSE edge: libfuse3 low-level callbacks that call Filesystem and turn its errno results
// into replies, and the session (mount, multithreaded loop, unmount).
//
// FUSE_USE_VERSION must be 312 or higher for fuse_loop_cfg_* (PERF-NOTES trap 3). Splice is
// switched off: libfuse 3.14 allocates a buffer per request on that path (trap 2); replies are
// written from reused buffers instead.
#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>

#include "bucketfs/fs/mount.h"
#include "filesystem.h"
#include "log.h"

namespace bucketfs::fs {

struct Mount::Impl {
  Impl(MountServices services, MountOptions options, std::unique_ptr<StagingFolder> staging)
      : filesystem(services, std::move(options), std::move(staging)) {}

  Filesystem filesystem;
  fuse_session* session = nullptr;
  bool mounted = false;
  std::atomic<bool> unmounting{false};
  uid_t uid = ::getuid();
  gid_t gid = ::getgid();
  double ttl = 10.0;

  std::mutex directories_mutex;
  std::unordered_map<std::uint64_t, std::vector<DirectoryEntry>> directories;
  std::uint64_t next_directory = 1;
};

namespace {

Mount::Impl& impl_of(fuse_req_t request) { return *static_cast<Mount::Impl*>(fuse_req_userdata(request)); }

// Who made `request`. The process is looked up in /proc, so only where it is needed: opens for
// writing; flush() looks it up itself when the thread is not the opener's.
Caller thread_of(fuse_req_t request) { return Caller{.thread = fuse_req_ctx(request)->pid}; }
Caller caller_of(fuse_req_t request) {
  Caller caller = thread_of(request);
  caller.process = process_of_thread(caller.thread);
  return caller;
}

struct timespec to_timespec(std::int64_t ms) {
  struct timespec time {};
  time.tv_sec = static_cast<time_t>(ms / 1000);
  time.tv_nsec = static_cast<long>((ms % 1000) * 1'000'000);
  return time;
}

struct stat to_stat(const Mount::Impl& impl, const Attributes& attributes) {
  struct stat st {};
  st.st_ino = attributes.ino;
  st.st_uid = impl.uid;
  st.st_gid = impl.gid;
  if (attributes.directory) {
    st.st_mode = S_IFDIR | 0755;
    st.st_nlink = 2;
    st.st_size = 4096;
  } else {
    st.st_mode = S_IFREG | (impl.filesystem.options().read_only ? 0444 : 0644);
    st.st_nlink = 1;
    st.st_size = static_cast<off_t>(attributes.size);
  }
  st.st_blksize = 1 << 20;
  st.st_blocks = static_cast<blkcnt_t>((attributes.size + 511) / 512);
  st.st_mtim = to_timespec(attributes.mtime_ms);
  st.st_ctim = st.st_mtim;
  st.st_atim = st.st_mtim;
  return st;
}

fuse_entry_param to_entry(const Mount::Impl& impl, const Attributes& attributes) {
  fuse_entry_param entry{};
  entry.ino = attributes.ino;
  entry.generation = 1;
  entry.attr = to_stat(impl, attributes);
  entry.attr_timeout = impl.ttl;
  entry.entry_timeout = impl.ttl;
  return entry;
}

std::string name_of(const char* name) { return std::string(name); }

void on_init(void* userdata, fuse_conn_info* connection) {
  (void)userdata;
  connection->want &= ~(FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE);
  connection->want &= ~FUSE_CAP_WRITEBACK_CACHE;
  if ((connection->capable & FUSE_CAP_READDIRPLUS) != 0) connection->want |= FUSE_CAP_READDIRPLUS;
  if ((connection->capable & FUSE_CAP_ASYNC_READ) != 0) connection->want |= FUSE_CAP_ASYNC_READ;
  connection->max_write = 1 << 20;
  connection->max_readahead = 1 << 20;
}

void on_lookup(fuse_req_t request, fuse_ino_t parent, const char* name) {
  auto& impl = impl_of(request);
  auto found = impl.filesystem.lookup(parent, name_of(name));
  if (!found) {
    if (found.error() == ENOENT) {
      fuse_entry_param negative{};
      negative.entry_timeout = impl.ttl;
      fuse_reply_entry(request, &negative);
      return;
    }
    fuse_reply_err(request, found.error());
    return;
  }
  auto entry = to_entry(impl, *found);
  fuse_reply_entry(request, &entry);
}

void on_forget(fuse_req_t request, fuse_ino_t ino, uint64_t count) {
  impl_of(request).filesystem.forget(ino, count);
  fuse_reply_none(request);
}

void on_forget_multi(fuse_req_t request, size_t count, fuse_forget_data* forgets) {
  auto& impl = impl_of(request);
  for (size_t i = 0; i < count; ++i) impl.filesystem.forget(forgets[i].ino, forgets[i].nlookup);
  fuse_reply_none(request);
}

void on_getattr(fuse_req_t request, fuse_ino_t ino, fuse_file_info*) {
  auto& impl = impl_of(request);
  auto attributes = impl.filesystem.getattr(ino);
  if (!attributes) {
    fuse_reply_err(request, attributes.error());
    return;
  }
  auto st = to_stat(impl, *attributes);
  fuse_reply_attr(request, &st, impl.ttl);
}

void on_setattr(fuse_req_t request, fuse_ino_t ino, struct stat* attr, int to_set, fuse_file_info*) {
  auto& impl = impl_of(request);
  FsResult<Attributes> result = impl.filesystem.getattr(ino);
  if (result && (to_set & FUSE_SET_ATTR_SIZE) != 0) {
    result = impl.filesystem.set_size(ino, static_cast<std::uint64_t>(attr->st_size));
  }
  if (result && (to_set & (FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_MTIME_NOW)) != 0) {
    std::int64_t ms;
    if ((to_set & FUSE_SET_ATTR_MTIME_NOW) != 0) {
      ms = std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
               .count();
    } else {
      ms = static_cast<std::int64_t>(attr->st_mtim.tv_sec) * 1000 + attr->st_mtim.tv_nsec / 1'000'000;
    }
    result = impl.filesystem.set_mtime(ino, ms);
  }
  // Mode, owner and access time are not stored: they are accepted and keep their fixed values
  // (files 0644, directories 0755, owned by the mounting user), so `cp -a` and `rsync -a` work.
  if (result && impl.filesystem.options().read_only &&
      (to_set & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) != 0) {
    result = std::unexpected(EROFS);
  }
  if (!result) {
    fuse_reply_err(request, result.error());
    return;
  }
  auto st = to_stat(impl, *result);
  fuse_reply_attr(request, &st, impl.ttl);
}

void on_mkdir(fuse_req_t request, fuse_ino_t parent, const char* name, mode_t) {
  auto& impl = impl_of(request);
  auto made = impl.filesystem.mkdir(parent, name_of(name));
  if (!made) {
    fuse_reply_err(request, made.error());
    return;
  }
  auto entry = to_entry(impl, *made);
  fuse_reply_entry(request, &entry);
}

void on_mknod(fuse_req_t request, fuse_ino_t, const char*, mode_t, dev_t) {
  fuse_reply_err(request, EPERM);  // only regular files (create) and directories
}

void on_unlink(fuse_req_t request, fuse_ino_t parent, const char* name) {
  auto done = impl_of(request).filesystem.unlink(parent, name_of(name));
  fuse_reply_err(request, done ? 0 : done.error());
}

void on_rmdir(fuse_req_t request, fuse_ino_t parent, const char* name) {
  auto done = impl_of(request).filesystem.rmdir(parent, name_of(name));
  fuse_reply_err(request, done ? 0 : done.error());
}

void on_rename(fuse_req_t request, fuse_ino_t parent, const char* name, fuse_ino_t new_parent, const char* new_name,
               unsigned int flags) {
  auto done = impl_of(request).filesystem.rename(parent, name_of(name), new_parent, name_of(new_name), flags);
  fuse_reply_err(request, done ? 0 : done.error());
}

void on_link(fuse_req_t request, fuse_ino_t, fuse_ino_t, const char*) { fuse_reply_err(request, EPERM); }

void on_symlink(fuse_req_t request, const char*, fuse_ino_t, const char*) { fuse_reply_err(request, EPERM); }

void on_create(fuse_req_t request, fuse_ino_t parent, const char* name, mode_t, fuse_file_info* info) {
  auto& impl = impl_of(request);
  auto created = impl.filesystem.create(parent, name_of(name), info->flags, caller_of(request));
  if (!created) {
    fuse_reply_err(request, created.error());
    return;
  }
  info->fh = created->second.handle;
  info->keep_cache = created->second.keep_cache ? 1 : 0;
  info->direct_io = created->second.direct_io ? 1 : 0;
  auto entry = to_entry(impl, created->first);
  if (fuse_reply_create(request, &entry, info) != 0) impl.filesystem.release(info->fh);
}

void on_open(fuse_req_t request, fuse_ino_t ino, fuse_file_info* info) {
  auto& impl = impl_of(request);
  const int access = info->flags & O_ACCMODE;
  auto opened = impl.filesystem.open(ino, info->flags, access == O_RDONLY ? Caller{} : caller_of(request));
  if (!opened) {
    fuse_reply_err(request, opened.error());
    return;
  }
  info->fh = opened->handle;
  info->keep_cache = opened->keep_cache ? 1 : 0;
  info->direct_io = opened->direct_io ? 1 : 0;
  if (fuse_reply_open(request, info) != 0) impl.filesystem.release(info->fh);
}

void on_read(fuse_req_t request, fuse_ino_t, size_t size, off_t offset, fuse_file_info* info) {
  bool replied = false;
  auto done = impl_of(request).filesystem.read(info->fh, static_cast<std::uint64_t>(offset), size,
                                               [&](std::span<const std::byte> bytes) {
                                                 fuse_reply_buf(request, reinterpret_cast<const char*>(bytes.data()),
                                                                bytes.size());
                                                 replied = true;
                                               });
  if (!done && !replied) fuse_reply_err(request, done.error());
}

void on_write(fuse_req_t request, fuse_ino_t, const char* data, size_t size, off_t offset, fuse_file_info* info) {
  auto written = impl_of(request).filesystem.write(info->fh, static_cast<std::uint64_t>(offset),
                                                   {reinterpret_cast<const std::byte*>(data), size});
  if (!written) {
    fuse_reply_err(request, written.error());
    return;
  }
  fuse_reply_write(request, *written);
}

void on_copy_file_range(fuse_req_t request, fuse_ino_t, off_t offset_in, fuse_file_info* info_in, fuse_ino_t,
                        off_t offset_out, fuse_file_info* info_out, size_t length, int flags) {
  if (flags != 0) {
    fuse_reply_err(request, EINVAL);
    return;
  }
  // EOPNOTSUPP (not ENOSYS, which would switch the call off for the whole mount) makes the kernel
  // copy this range with reads and writes.
  auto copied = impl_of(request).filesystem.copy_range(info_in->fh, static_cast<std::uint64_t>(offset_in), info_out->fh,
                                                       static_cast<std::uint64_t>(offset_out), length);
  if (!copied) {
    fuse_reply_err(request, copied.error());
    return;
  }
  fuse_reply_write(request, *copied);
}

void on_flush(fuse_req_t request, fuse_ino_t, fuse_file_info* info) {
  auto done = impl_of(request).filesystem.flush(info->fh, thread_of(request));
  fuse_reply_err(request, done ? 0 : done.error());
}

void on_release(fuse_req_t request, fuse_ino_t, fuse_file_info* info) {
  impl_of(request).filesystem.release(info->fh);
  fuse_reply_err(request, 0);
}

void on_fsync(fuse_req_t request, fuse_ino_t, int, fuse_file_info* info) {
  auto done = impl_of(request).filesystem.fsync(info->fh);
  fuse_reply_err(request, done ? 0 : done.error());
}

void on_opendir(fuse_req_t request, fuse_ino_t ino, fuse_file_info* info) {
  auto& impl = impl_of(request);
  auto entries = impl.filesystem.list(ino);
  if (!entries) {
    fuse_reply_err(request, entries.error());
    return;
  }
  {
    std::lock_guard lock(impl.directories_mutex);
    info->fh = impl.next_directory++;
    impl.directories[info->fh] = std::move(*entries);
  }
  info->cache_readdir = 0;
  fuse_reply_open(request, info);
}

void reply_directory(fuse_req_t request, fuse_ino_t ino, size_t size, off_t offset, fuse_file_info* info, bool plus) {
  auto& impl = impl_of(request);
  std::vector<char> buffer(size);
  size_t used = 0;
  std::lock_guard lock(impl.directories_mutex);
  auto it = impl.directories.find(info->fh);
  if (it == impl.directories.end()) {
    fuse_reply_err(request, EBADF);
    return;
  }
  const auto& entries = it->second;
  // Offsets: 1 is ".", 2 is "..", 3 + i is entries[i].
  for (off_t at = offset; at < static_cast<off_t>(entries.size()) + 2; ++at) {
    std::string name;
    Attributes attributes;
    if (at == 0) {
      name = ".";
      attributes.ino = ino;
      attributes.directory = true;
    } else if (at == 1) {
      name = "..";
      attributes.ino = ino;  // the kernel fills in the real parent
      attributes.directory = true;
    } else {
      name = entries[static_cast<size_t>(at - 2)].name;
      attributes = entries[static_cast<size_t>(at - 2)].attributes;
    }
    size_t need;
    if (plus) {
      fuse_entry_param entry{};
      // The size an entry takes depends on its name only; asked with no room, libfuse writes nothing.
      need = fuse_add_direntry_plus(request, nullptr, 0, name.c_str(), &entry, at + 1);
      if (need > size - used) break;
      if (at < 2) {
        entry.attr.st_ino = attributes.ino;
        entry.attr.st_mode = S_IFDIR;
      } else {
        // A name deleted, renamed or replaced since opendir took the listing: a dentry for it
        // would lead the kernel to a node that is gone or has another name (a create of that
        // name would then write into a deleted file, or fail with ENOENT). The entry carries the
        // node's attributes of now, not the listing's (see Filesystem::remember).
        const auto current = impl.filesystem.remember(ino, name, attributes.ino);
        if (!current) continue;
        entry = to_entry(impl, *current);
      }
      fuse_add_direntry_plus(request, buffer.data() + used, size - used, name.c_str(), &entry, at + 1);
    } else {
      struct stat st {};
      st.st_ino = attributes.ino;
      st.st_mode = attributes.directory ? S_IFDIR : S_IFREG;
      need = fuse_add_direntry(request, buffer.data() + used, size - used, name.c_str(), &st, at + 1);
      if (need > size - used) break;
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
  auto& impl = impl_of(request);
  {
    std::lock_guard lock(impl.directories_mutex);
    impl.directories.erase(info->fh);
  }
  fuse_reply_err(request, 0);
}

void on_fsyncdir(fuse_req_t request, fuse_ino_t, int, fuse_file_info*) { fuse_reply_err(request, 0); }

void on_statfs(fuse_req_t request, fuse_ino_t) {
  struct statvfs st {};
  // A bucket has no fixed capacity: report a large, constant one (as other object-store mounts do).
  st.f_bsize = 1 << 20;
  st.f_frsize = 1 << 20;
  st.f_blocks = std::uint64_t{1} << 30;  // 1 PiB
  st.f_bfree = st.f_blocks;
  st.f_bavail = st.f_blocks;
  st.f_files = std::uint64_t{1} << 32;
  st.f_ffree = st.f_files;
  st.f_favail = st.f_files;
  st.f_namemax = 255;
  fuse_reply_statfs(request, &st);
}

void reply_xattr_value(fuse_req_t request, const std::string& value, size_t size) {
  if (size == 0) {
    fuse_reply_xattr(request, value.size());
  } else if (size < value.size()) {
    fuse_reply_err(request, ERANGE);
  } else {
    fuse_reply_buf(request, value.data(), value.size());
  }
}

void on_getxattr(fuse_req_t request, fuse_ino_t ino, const char* name, size_t size) {
  auto value = impl_of(request).filesystem.xattr(ino, name_of(name));
  if (!value) {
    fuse_reply_err(request, value.error());
    return;
  }
  reply_xattr_value(request, *value, size);
}

void on_listxattr(fuse_req_t request, fuse_ino_t ino, size_t size) {
  auto& filesystem = impl_of(request).filesystem;
  std::string names;
  if (filesystem.xattr(ino, "user.xet.hash")) names = std::string("user.xet.hash") + '\0' + "user.xet.size" + '\0';
  reply_xattr_value(request, names, size);
}

void on_setxattr(fuse_req_t request, fuse_ino_t, const char*, const char*, size_t, int) {
  fuse_reply_err(request, ENOTSUP);
}

void on_removexattr(fuse_req_t request, fuse_ino_t, const char*) { fuse_reply_err(request, ENOTSUP); }

const fuse_lowlevel_ops kOperations = [] {
  fuse_lowlevel_ops ops{};
  ops.init = on_init;
  ops.lookup = on_lookup;
  ops.forget = on_forget;
  ops.forget_multi = on_forget_multi;
  ops.getattr = on_getattr;
  ops.setattr = on_setattr;
  ops.mkdir = on_mkdir;
  ops.mknod = on_mknod;
  ops.unlink = on_unlink;
  ops.rmdir = on_rmdir;
  ops.rename = on_rename;
  ops.link = on_link;
  ops.symlink = on_symlink;
  ops.create = on_create;
  ops.open = on_open;
  ops.read = on_read;
  ops.write = on_write;
  ops.copy_file_range = on_copy_file_range;
  ops.flush = on_flush;
  ops.release = on_release;
  ops.fsync = on_fsync;
  ops.opendir = on_opendir;
  ops.readdir = on_readdir;
  ops.readdirplus = on_readdirplus;
  ops.releasedir = on_releasedir;
  ops.fsyncdir = on_fsyncdir;
  ops.statfs = on_statfs;
  ops.getxattr = on_getxattr;
  ops.listxattr = on_listxattr;
  ops.setxattr = on_setxattr;
  ops.removexattr = on_removexattr;
  return ops;
}();

// Whether `path` is already a mount point (listed in /proc/self/mountinfo).
bool is_mount_point(const std::filesystem::path& path) {
  std::ifstream mountinfo("/proc/self/mountinfo");
  std::string line;
  while (std::getline(mountinfo, line)) {
    // Fields: id parent major:minor root mountpoint ...
    std::size_t at = 0;
    for (int field = 0; field < 4 && at != std::string::npos; ++field) at = line.find(' ', at + 1);
    if (at == std::string::npos) continue;
    const auto end = line.find(' ', at + 1);
    std::string point = line.substr(at + 1, end - at - 1);
    // Octal escapes (\040 for a space) as the kernel writes them.
    std::string decoded;
    for (std::size_t i = 0; i < point.size(); ++i) {
      if (point[i] == '\\' && i + 3 < point.size()) {
        decoded += static_cast<char>(std::stoi(point.substr(i + 1, 3), nullptr, 8));
        i += 3;
      } else {
        decoded += point[i];
      }
    }
    if (decoded == path.string()) return true;
  }
  return false;
}

}  // namespace

std::expected<std::unique_ptr<Mount>, std::string> Mount::create(MountServices services, MountOptions options) {
  std::error_code error;
  const auto mountpoint = std::filesystem::canonical(options.mountpoint, error);
  if (error) return std::unexpected("mountpoint " + options.mountpoint.string() + " does not exist");
  if (!std::filesystem::is_directory(mountpoint)) {
    return std::unexpected("mountpoint " + mountpoint.string() + " is not a directory");
  }
  if (is_mount_point(mountpoint)) return std::unexpected("mountpoint " + mountpoint.string() + " is already a mount");
  options.mountpoint = mountpoint;
  auto staging = StagingFolder::claim(options.staging_dir, cache::Owner::self());
  if (!staging) return std::unexpected(staging.error());

  const std::string fsname = "bucketfs:" + options.bucket.str() + (options.prefix.empty() ? "" : "/" + options.prefix);
  std::string mount_options = "default_permissions,subtype=bucketfs,fsname=" + fsname;
  if (options.read_only) mount_options += ",ro";
  for (const auto& option : options.fuse_options) mount_options += "," + option;

  auto impl = std::make_unique<Impl>(services, options, std::move(*staging));
  impl->ttl = std::chrono::duration<double>(options.metadata_ttl).count();
  std::vector<std::string> arguments = {"bucketfs", "-o", mount_options};
  std::vector<char*> argv;
  for (auto& argument : arguments) argv.push_back(argument.data());
  fuse_args args = FUSE_ARGS_INIT(static_cast<int>(argv.size()), argv.data());
  impl->session = fuse_session_new(&args, &kOperations, sizeof kOperations, impl.get());
  if (impl->session == nullptr) return std::unexpected("FUSE refused the mount options: " + mount_options);
  if (fuse_session_mount(impl->session, mountpoint.c_str()) != 0) {
    fuse_session_destroy(impl->session);
    impl->session = nullptr;
    return std::unexpected("cannot mount at " + mountpoint.string() +
                           " (is FUSE available? /dev/fuse and fusermount3 are needed)");
  }
  impl->mounted = true;
  return std::unique_ptr<Mount>(new Mount(std::move(impl)));
}

Mount::Mount(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Mount::~Mount() {
  if (impl_->session != nullptr) {
    if (impl_->mounted) fuse_session_unmount(impl_->session);
    fuse_session_destroy(impl_->session);
  }
}

int Mount::serve() {
  fuse_loop_config* config = fuse_loop_cfg_create();
  fuse_loop_cfg_set_max_threads(config, impl_->filesystem.options().fuse_threads);
  fuse_loop_cfg_set_idle_threads(config, 4);
  fuse_loop_cfg_set_clone_fd(config, 0);
  const int result = fuse_session_loop_mt(impl_->session, config);
  fuse_loop_cfg_destroy(config);
  if (impl_->mounted) {
    fuse_session_unmount(impl_->session);
    impl_->mounted = false;
  }
  return result < 0 ? -result : 0;
}

std::uint64_t Mount::drain(std::chrono::milliseconds timeout) { return impl_->filesystem.drain(timeout); }

void Mount::unmount() {
  if (impl_->unmounting.exchange(true)) return;
  fuse_session_exit(impl_->session);
  const auto& mountpoint = impl_->filesystem.options().mountpoint;
  if (::geteuid() == 0) {
    if (::umount2(mountpoint.c_str(), MNT_DETACH) == 0) return;
  }
  const pid_t child = ::fork();
  if (child == 0) {
    ::execlp("fusermount3", "fusermount3", "-u", "-z", "-q", mountpoint.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  if (child > 0) {
    int status = 0;
    ::waitpid(child, &status, 0);
  }
}

MountStatus Mount::status() const { return impl_->filesystem.status(); }

}  // namespace bucketfs::fs
