#include "mount_command.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "bucketfs/cache/chunk_cache.h"
#include "bucketfs/cache/dedup_index.h"
#include "bucketfs/cache/journal.h"
#include "bucketfs/cache/node_store.h"
#include "bucketfs/fs/mount.h"
#include "bucketfs/hub/cas_client.h"
#include "bucketfs/hub/xet_token.h"
#include "bucketfs/naming/naming.h"
#include "client.h"

namespace bucketfs::cli {
namespace {

namespace stdfs = std::filesystem;
using Json = nlohmann::json;

struct MountArgs {
  ClientOptions client;
  std::string source;
  std::string mountpoint;
  bool read_only = false;
  std::string cache_dir;
  std::string cache_size = "10G";
  double metadata_ttl = 10;
  bool foreground = false;
  std::vector<std::string> fuse_options;
  std::string log_file;
  double drain_timeout = 60;
  double fsync_retry = 60;
};

std::string runtime_dir() {
  if (const char* dir = std::getenv("BUCKETFS_RUNTIME_DIR"); dir && *dir) return dir;
  if (::geteuid() == 0) return "/run/bucketfs";
  if (const char* xdg = std::getenv("XDG_RUNTIME_DIR"); xdg && *xdg) return std::string(xdg) + "/bucketfs";
  return "/tmp/bucketfs-" + std::to_string(::getuid());
}

// A file name for a mountpoint: '%' and '/' percent-encoded.
std::string encode_mountpoint(const std::string& mountpoint) {
  std::string out;
  for (char c : mountpoint) {
    if (c == '/') out += "%2F";
    else if (c == '%') out += "%25";
    else out += c;
  }
  return out;
}

stdfs::path state_path(const std::string& mountpoint) {
  return stdfs::path(runtime_dir()) / (encode_mountpoint(mountpoint) + ".json");
}

bool write_state(const stdfs::path& path, const Json& state) {
  const auto temporary = path.string() + ".tmp";
  {
    std::ofstream out(temporary, std::ios::trunc);
    if (!out) return false;
    out << state.dump(2) << "\n";
    if (!out) return false;
  }
  std::error_code error;
  stdfs::rename(temporary, path, error);
  return !error;
}

std::optional<Json> read_state(const stdfs::path& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  try {
    return Json::parse(in);
  } catch (const Json::exception&) {
    return std::nullopt;
  }
}

// A zombie (exited, not yet reaped: containers without an init reaper) counts as gone.
bool process_alive(pid_t pid) {
  if (pid <= 0 || (::kill(pid, 0) != 0 && errno != EPERM)) return false;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  std::getline(stat, line);
  const auto close = line.rfind(')');
  return close == std::string::npos || close + 2 >= line.size() || line[close + 2] != 'Z';
}

// Splits "a,b=c,d" into options (no escaping: FUSE options have no commas in values).
std::vector<std::string> split_options(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

// Takes our own settings out of -o lists (the form mount(8) and fstab use) and drops the
// options only mount(8) understands; what is left goes to FUSE. The error names the option.
std::expected<void, std::string> absorb_options(MountArgs& args) {
  std::vector<std::string> passed;
  for (const auto& list : args.fuse_options) {
    for (const auto& option : split_options(list)) {
      const auto eq = option.find('=');
      const std::string key = option.substr(0, eq);
      const std::string value = eq == std::string::npos ? std::string() : option.substr(eq + 1);
      try {
        if (key == "ro") args.read_only = true;
        else if (key == "rw" || key == "defaults" || key == "auto" || key == "noauto" || key == "user" ||
                 key == "users" || key == "nouser" || key == "nofail" || key == "_netdev" ||
                 key.starts_with("x-systemd.") || key == "comment" || key.starts_with("x-"))
          continue;
        else if (key == "cache_dir") args.cache_dir = value;
        else if (key == "cache_size") args.cache_size = value;
        else if (key == "metadata_ttl") args.metadata_ttl = std::stod(value);
        else if (key == "endpoint") args.client.endpoint = value;
        else if (key == "token_file") args.client.token_file = value;
        else if (key == "log_file") args.log_file = value;
        else if (key == "drain_timeout") args.drain_timeout = std::stod(value);
        else if (key == "fsync_retry") args.fsync_retry = std::stod(value);
        else if (key == "foreground") args.foreground = true;
        else passed.push_back(option);
      } catch (const std::exception&) {
        return std::unexpected("-o " + option + ": not a number");
      }
    }
  }
  args.fuse_options = std::move(passed);
  return {};
}

// The source: NS/BUCKET[/PREFIX] or hf://buckets/NS/BUCKET[/PREFIX].
std::expected<naming::BucketPath, std::string> parse_source(const std::string& source) {
  const std::string uri = naming::is_bucket_uri(source) ? source : "hf://buckets/" + source;
  auto parsed = naming::parse_bucket_path(uri);
  if (!parsed) return std::unexpected(source + ": " + parsed.error());
  return *parsed;
}

// Runs in the daemon. Reports "ok" or one error line through `report` (then closes it).
class Reporter {
 public:
  explicit Reporter(int fd) : fd_(fd) {}
  ~Reporter() { close(); }
  void ok() { send("ok\n"); }
  int error(const std::string& message) {
    if (fd_ < 0) std::cerr << "bucketfs: " << message << std::endl;
    send("error " + message + "\n");
    return 1;
  }

 private:
  void send(const std::string& line) {
    if (fd_ < 0) return;
    [[maybe_unused]] auto n = ::write(fd_, line.data(), line.size());
    close();
  }
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  int fd_;
};

int run_daemon(const MountArgs& args, const naming::BucketPath& where, const stdfs::path& mountpoint, int report_fd,
               const std::string& log_file) {
  Reporter report(report_fd);
  // Signals are taken by one thread (below); every other thread has them blocked.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  sigaddset(&signals, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  auto client = Client::connect(args.client);
  if (!client) return report.error(client.error());
  const std::string subject = where.bucket.str();
  if (auto info = (*client)->hub().bucket_info(where.bucket); !info) {
    return report.error(explain(info.error(), subject));
  }
  if (!args.read_only) {
    auto token = (*client)->hub().xet_token(where.bucket, true);
    if (!token) {
      if (token.error().kind == hub::HubErrorKind::forbidden ||
          token.error().kind == hub::HubErrorKind::unauthorized) {
        return report.error(subject + ": no write permission (mount with --read-only to read)");
      }
      return report.error(explain(token.error(), subject));
    }
  }
  const std::string cache_dir = args.cache_dir.empty() ? default_cache_dir() : args.cache_dir;
  auto cache_size = parse_size(args.cache_size, "--cache-size");
  if (!cache_size) return report.error(cache_size.error());
  std::error_code ignored;
  stdfs::create_directories(stdfs::path(cache_dir).parent_path(), ignored);
  auto store = cache::NodeStore::open(cache_dir);
  if (!store) return report.error("cache dir " + cache_dir + ": " + store.error().message);
  cache::ChunkCacheOptions cache_options;
  cache_options.max_bytes = *cache_size;
  auto chunk_cache = cache::ChunkCache::open(*store, cache_options);
  if (!chunk_cache) return report.error("cache dir " + cache_dir + ": " + chunk_cache.error().message);
  cache::DedupIndex dedup(*store);
  cache::Journal journal(*store);

  hub::XetTokenSource read_tokens((*client)->hub(), where.bucket);
  hub::XetTokenOptions write_scope;
  write_scope.write = true;
  hub::XetTokenSource write_tokens((*client)->hub(), where.bucket, write_scope);
  // The first read of the mount then waits for one request less (time to first byte). A failure
  // here is retried by that read, which reports it.
  (void)read_tokens.get();
  hub::CasClient read_cas((*client)->transport(), read_tokens);
  hub::CasClient write_cas((*client)->transport(), write_tokens);

  fs::MountOptions options;
  options.bucket = where.bucket;
  options.prefix = where.path;
  options.mountpoint = mountpoint;
  options.read_only = args.read_only;
  options.metadata_ttl = std::chrono::milliseconds(static_cast<std::int64_t>(args.metadata_ttl * 1000));
  options.fsync_retry = std::chrono::milliseconds(static_cast<std::int64_t>(args.fsync_retry * 1000));
  options.staging_dir = stdfs::path(cache_dir) / "staging";
  options.fuse_options = args.fuse_options;
  fs::MountServices services{.hub = &(*client)->hub(),
                             .read_cas = &read_cas,
                             .write_cas = args.read_only ? nullptr : &write_cas,
                             .chunk_cache = chunk_cache->get(),
                             .dedup_index = &dedup,
                             .journal = &journal};
  const auto state_file = state_path(mountpoint.string());
  Json state = {{"pid", ::getpid()},
                {"mountpoint", mountpoint.string()},
                {"bucket", where.bucket.str()},
                {"prefix", where.path},
                {"read_only", args.read_only},
                {"cache_dir", cache_dir},
                {"log_file", log_file},
                {"state", "mounted"}};
  // What a daemon of this bucket left uncommitted when it died is committed before we serve;
  // meanwhile the state file says "recovering" and names the files still to commit.
  fs::RecoveryReport recovered;
  if (!args.read_only) {
    constexpr std::size_t kListedPending = 100;  // names shown; `pending_uploads` counts them all
    auto show_progress = [&](const fs::RecoveryProgress& progress) {
      if (progress.pending.empty() && progress.so_far.recovered + progress.so_far.failed == 0) return;
      state["state"] = "recovering";
      state["pending_uploads"] = progress.pending.size();
      const auto listed = std::min(progress.pending.size(), kListedPending);
      state["recovery_pending"] = std::vector<std::string>(progress.pending.begin(), progress.pending.begin() + listed);
      state["recovered_files"] = progress.so_far.recovered;
      state["recovery_conflicts"] = progress.so_far.conflicts;
      state["recovery_failed"] = progress.so_far.failed;
      write_state(state_file, state);
    };
    recovered = fs::recover_journal(services, where.bucket, options.staging_dir, options.upload, show_progress);
    state.erase("recovery_pending");
    if (recovered.recovered + recovered.failed > 0) {
      std::cerr << "bucketfs: journal: recovered " << recovered.recovered << " file(s) (" << recovered.conflicts
                << " under a conflict name), " << recovered.failed << " left for the next mount" << std::endl;
    }
    // Then what dead daemons had open and never closed: nothing can commit it, it only takes space.
    fs::remove_orphaned_staging_files(journal, options.staging_dir);
  }
  auto mount = fs::Mount::create(services, options);
  if (!mount) {
    if (state.value("state", "") == "recovering") stdfs::remove(state_file, ignored);
    return report.error(mount.error());
  }
  state["state"] = "mounted";
  state["recovered_files"] = recovered.recovered;
  state["recovery_conflicts"] = recovered.conflicts;
  state["recovery_failed"] = recovered.failed;
  std::mutex state_mutex;
  auto refresh_state = [&](const std::string& phase) {
    const auto status = (*mount)->status();
    std::lock_guard lock(state_mutex);
    state["state"] = phase;
    state["pending_uploads"] = status.pending_uploads;
    state["uploads_in_flight"] = status.uploads_in_flight;
    state["files_committed"] = status.files_committed;
    state["bytes_committed"] = status.bytes_committed;
    state["xorb_bytes_sent"] = status.xorb_bytes_sent;
    state["upload_failures"] = status.upload_failures;
    state["bytes_read"] = status.bytes_read_remote;
    state["last_error"] = status.last_error;
    if (auto stats = (*chunk_cache)->stats(); stats) {
      state["cache_used_bytes"] = stats->used_bytes;
      state["cache_max_bytes"] = stats->max_bytes;
    }
    write_state(state_file, state);
  };
  refresh_state("mounted");
  report.ok();

  const auto drain_timeout = std::chrono::milliseconds(static_cast<std::int64_t>(args.drain_timeout * 1000));
  std::atomic<bool> finished{false};
  std::atomic<bool> drained_by_signal{false};
  std::thread signal_thread([&] {
    for (;;) {
      int signal = 0;
      if (sigwait(&signals, &signal) != 0) continue;
      if (finished) return;
      if (signal == SIGUSR1) continue;
      std::cerr << "bucketfs: signal " << signal << ": committing pending uploads, then unmounting" << std::endl;
      refresh_state("draining");
      (*mount)->drain(drain_timeout);
      drained_by_signal = true;
      (*mount)->unmount();
      return;
    }
  });
  std::mutex ticker_mutex;
  std::condition_variable ticker_wake;
  std::thread ticker([&] {
    std::unique_lock lock(ticker_mutex);
    for (unsigned tick = 1; !finished; ++tick) {
      ticker_wake.wait_for(lock, std::chrono::seconds(1));
      if (finished) break;
      refresh_state(drained_by_signal ? "unmounting" : "mounted");
      // The index pages lookups and puts touched stay mapped, and counted in the daemon's
      // RSS, until released; they stay in the page cache. Failing only costs memory shown.
      if (tick % 5 == 0) (void)(*store)->release_mapped_pages();
    }
  });

  const int served = (*mount)->serve();
  // Unmounted (by us, `bucketfs unmount`, fusermount3 -u or umount): what is still pending is
  // committed now, bounded by the drain timeout.
  const auto left = (*mount)->drain(drain_timeout);
  finished = true;
  ::kill(::getpid(), SIGUSR1);
  signal_thread.join();
  ticker_wake.notify_all();
  ticker.join();
  refresh_state("stopped");
  {
    std::lock_guard lock(state_mutex);
    state["left_pending"] = left;
    write_state(state_file, state);
  }
  if (left > 0) {
    std::cerr << "bucketfs: " << left << " file(s) not uploaded before the drain timeout; their bytes stay in "
              << options.staging_dir.string() << std::endl;
  }
  std::cerr << "bucketfs: unmounted " << mountpoint.string() << std::endl;
  return served != 0 || left > 0 ? 1 : 0;
}

// Whether `path` is a bucketfs mount in /proc/self/mountinfo (fstype fuse.bucketfs).
bool is_bucketfs_mount(const std::string& path) {
  std::ifstream mountinfo("/proc/self/mountinfo");
  std::string line;
  while (std::getline(mountinfo, line)) {
    std::istringstream fields(line);
    std::string id, parent, device, root, point;
    fields >> id >> parent >> device >> root >> point;
    if (point != path) continue;
    std::string field;
    while (fields >> field && field != "-") {
    }
    std::string type;
    fields >> type;
    if (type == "fuse.bucketfs") return true;
  }
  return false;
}

// A mount point whose daemon died (kill -9, OOM) answers ENOTCONN (ECONNABORTED while the
// kernel is still tearing the connection down). Such a dead bucketfs mount is detached so the
// bucket can be mounted there again (and its journal replayed).
void detach_dead_mount(const std::string& path) {
  struct stat info {};
  if (::stat(path.c_str(), &info) == 0 || (errno != ENOTCONN && errno != ECONNABORTED)) return;
  const std::string absolute = stdfs::absolute(path).lexically_normal().string();
  if (!is_bucketfs_mount(absolute)) return;
  std::cerr << "bucketfs: " << absolute << " is a dead bucketfs mount (its daemon died); detaching it" << std::endl;
  if (::geteuid() == 0 && ::umount2(absolute.c_str(), MNT_DETACH) == 0) return;
  [[maybe_unused]] int status = std::system(("fusermount3 -u -z -q '" + absolute + "' 2>/dev/null").c_str());
}

int run_mount(MountArgs args) {
  if (auto ok = absorb_options(args); !ok) return fail(ok.error());
  auto where = parse_source(args.source);
  if (!where) return fail(where.error());
  detach_dead_mount(args.mountpoint);
  std::error_code error;
  const auto mountpoint = stdfs::canonical(args.mountpoint, error);
  if (error) return fail("mountpoint " + args.mountpoint + " does not exist");
  if (!stdfs::is_directory(mountpoint, error) || error) {
    return fail("mountpoint " + mountpoint.string() + " is not a directory");
  }
  if (auto ttl = args.metadata_ttl; !(ttl >= 0)) return fail("--metadata-ttl must be >= 0");
  if (auto retry = args.fsync_retry; !(retry >= 0 && retry <= 86400)) {
    return fail("--fsync-retry must be between 0 and 86400 seconds");
  }
  if (::access("/dev/fuse", R_OK | W_OK) != 0) return fail("FUSE is not available (/dev/fuse cannot be opened)");

  const auto runtime = stdfs::path(runtime_dir());
  stdfs::create_directories(runtime, error);
  if (error) return fail("cannot create runtime directory " + runtime.string());
  stdfs::permissions(runtime, stdfs::perms::owner_all, error);
  if (auto existing = read_state(state_path(mountpoint.string())); existing) {
    const pid_t pid = existing->value("pid", 0);
    if (process_alive(pid) && existing->value("state", "") != "stopped") {
      return fail("mountpoint " + mountpoint.string() + " is busy (bucketfs pid " + std::to_string(pid) +
                  " serves it)");
    }
  }
  const std::string log_file =
      args.log_file.empty() ? (runtime / (encode_mountpoint(mountpoint.string()) + ".log")).string() : args.log_file;

  // The daemon runs in /: relative paths are resolved now.
  for (std::string* path : {&args.client.token_file, &args.cache_dir, &args.log_file}) {
    if (!path->empty()) *path = stdfs::absolute(*path).lexically_normal().string();
  }
  if (args.foreground) {
    // In the foreground the log is stderr (journald under systemd), unless --log-file is given.
    if (!args.log_file.empty()) {
      const int log_fd = ::open(log_file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
      if (log_fd < 0) return fail("cannot open log file " + log_file + ": " + std::strerror(errno));
      ::dup2(log_fd, STDERR_FILENO);
      ::close(log_fd);
    }
    return run_daemon(args, *where, mountpoint, -1, args.log_file.empty() ? std::string("stderr") : log_file);
  }

  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) return fail(std::string("pipe: ") + std::strerror(errno));
  const pid_t child = ::fork();
  if (child < 0) return fail(std::string("fork: ") + std::strerror(errno));
  if (child == 0) {
    ::close(pipe_fds[0]);
    ::setsid();
    const int null_fd = ::open("/dev/null", O_RDWR | O_CLOEXEC);
    const int log_fd = ::open(log_file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (null_fd >= 0) ::dup2(null_fd, STDIN_FILENO);
    if (log_fd >= 0) {
      ::dup2(log_fd, STDOUT_FILENO);
      ::dup2(log_fd, STDERR_FILENO);
    }
    if (const pid_t grandchild = ::fork(); grandchild != 0) ::_exit(grandchild < 0 ? 1 : 0);  // not a session leader
    std::error_code ignored;
    stdfs::current_path("/", ignored);
    ::_exit(run_daemon(args, *where, mountpoint, pipe_fds[1], log_file));
  }
  ::close(pipe_fds[1]);
  int status = 0;
  ::waitpid(child, &status, 0);
  std::string answer;
  char buffer[512];
  for (;;) {
    const auto n = ::read(pipe_fds[0], buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    answer.append(buffer, static_cast<std::size_t>(n));
  }
  ::close(pipe_fds[0]);
  if (answer.starts_with("ok")) return 0;
  if (answer.starts_with("error ")) {
    while (!answer.empty() && answer.back() == '\n') answer.pop_back();
    return fail(answer.substr(6));
  }
  return fail("the mount daemon exited during start-up (see " + log_file + ")");
}

int run_unmount(const std::string& target, double timeout_seconds) {
  std::error_code error;
  auto mountpoint = stdfs::canonical(target, error);
  const std::string point = error ? stdfs::absolute(target).lexically_normal().string() : mountpoint.string();
  const auto file = state_path(point);
  auto state = read_state(file);
  const pid_t pid = state ? state->value("pid", 0) : 0;
  if (!state || !process_alive(pid)) {
    // No daemon we know of: unmount what is there.
    if (::geteuid() == 0 && ::umount2(point.c_str(), MNT_DETACH) == 0) return 0;
    const int status = std::system(("fusermount3 -u -q '" + point + "' 2>/dev/null").c_str());
    if (status == 0) return 0;
    return fail(point + ": not a bucketfs mount");
  }
  if (::kill(pid, SIGTERM) != 0) return fail(point + ": cannot signal the daemon: " + std::strerror(errno));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(static_cast<long>(timeout_seconds * 1000));
  while (process_alive(pid)) {
    if (std::chrono::steady_clock::now() > deadline) {
      return fail(point + ": the daemon (pid " + std::to_string(pid) + ") is still committing uploads; see bucketfs status");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  auto final_state = read_state(file);
  stdfs::remove(file, error);
  const std::uint64_t left = final_state ? final_state->value("left_pending", std::uint64_t{0}) : 0;
  if (left > 0) {
    return fail(point + ": unmounted, but " + std::to_string(left) +
                " file(s) were not uploaded in time; they stay in the staging directory");
  }
  return 0;
}

std::string human_bytes(std::uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024 && unit < 4) {
    value /= 1024;
    ++unit;
  }
  char text[32];
  std::snprintf(text, sizeof text, unit == 0 ? "%.0f %s" : "%.1f %s", value, units[unit]);
  return text;
}

int run_status(bool json) {
  std::error_code error;
  Json mounts = Json::array();
  for (const auto& entry : stdfs::directory_iterator(runtime_dir(), error)) {
    if (entry.path().extension() != ".json") continue;
    auto state = read_state(entry.path());
    if (!state) continue;
    if (!process_alive(state->value("pid", 0))) {
      if (state->value("state", "") != "stopped") (*state)["state"] = "dead";
      else continue;
    }
    mounts.push_back(*state);
  }
  if (json) {
    std::cout << mounts.dump(2) << std::endl;
    return 0;
  }
  if (mounts.empty()) {
    std::cout << "no bucketfs mounts" << std::endl;
    return 0;
  }
  for (const auto& mount : mounts) {
    std::string source = mount.value("bucket", "");
    if (!mount.value("prefix", "").empty()) source += "/" + mount.value("prefix", "");
    std::cout << mount.value("mountpoint", "") << "  " << source << "  " << mount.value("state", "")
              << (mount.value("read_only", false) ? " (read-only)" : "") << "\n"
              << "  pid " << mount.value("pid", 0) << ", pending uploads " << mount.value("pending_uploads", 0)
              << ", committed " << mount.value("files_committed", 0) << " files ("
              << human_bytes(mount.value("bytes_committed", std::uint64_t{0})) << "), cache "
              << human_bytes(mount.value("cache_used_bytes", std::uint64_t{0})) << " of "
              << human_bytes(mount.value("cache_max_bytes", std::uint64_t{0})) << ", upload failures "
              << mount.value("upload_failures", 0) << "\n";
    if (mount.contains("recovery_pending")) {
      std::cout << "  replaying the journal of a daemon that died; still to commit:";
      for (const auto& path : mount["recovery_pending"]) std::cout << "\n    " << path.get<std::string>();
      if (mount.value("pending_uploads", std::size_t{0}) > mount["recovery_pending"].size()) std::cout << "\n    ...";
      std::cout << "\n";
    }
    if (!mount.value("last_error", "").empty()) std::cout << "  last error: " << mount.value("last_error", "") << "\n";
    std::cout << "  log: " << mount.value("log_file", "") << std::endl;
  }
  return 0;
}

void add_mount_options(CLI::App& command, MountArgs& args) {
  add_client_options(command, args.client);
  command.add_flag("--read-only", args.read_only, "Mount read-only (writes fail with EROFS)");
  command.add_option("--cache-dir", args.cache_dir, "Node cache and staging folder (default ~/.cache/bucketfs)");
  command.add_option("--cache-size", args.cache_size, "Chunk cache budget, e.g. 10G (default 10G)");
  command.add_option("--metadata-ttl", args.metadata_ttl,
                     "Seconds listings and file attributes are trusted before asking the bucket again (default 10)");
  command.add_flag("-f,--foreground", args.foreground, "Stay in the foreground, log to stderr");
  command.add_option("-o", args.fuse_options, "Mount options, comma separated (FUSE options such as allow_other, "
                                               "and ro, cache_dir=, cache_size=, metadata_ttl=, ...)");
  command.add_option("--log-file", args.log_file, "Where the daemon logs (default: beside its state file)");
  command.add_option("--drain-timeout", args.drain_timeout,
                     "Seconds unmount and SIGTERM wait for pending uploads (default 60)");
  command.add_option("--fsync-retry", args.fsync_retry,
                     "Seconds fsync waits through failed upload attempts before EIO (default 60; 0: EIO at "
                     "the first failure)");
}

}  // namespace

void add_mount_commands(CLI::App& app) {
  auto args = std::make_shared<MountArgs>();
  auto* mount = app.add_subcommand("mount", "Mount a bucket (or a folder of it) as a directory");
  add_mount_options(*mount, *args);
  mount->add_option("SOURCE", args->source, "NS/BUCKET[/PREFIX] or hf://buckets/NS/BUCKET[/PREFIX]")->required();
  mount->add_option("MOUNTPOINT", args->mountpoint, "An existing empty directory")->required();
  mount->callback([args] { std::exit(run_mount(*args)); });

  auto unmount_timeout = std::make_shared<double>(120);
  auto unmount_target = std::make_shared<std::string>();
  auto* unmount = app.add_subcommand("unmount", "Commit pending uploads, then unmount");
  unmount->alias("umount");
  unmount->add_option("MOUNTPOINT", *unmount_target, "The mount point")->required();
  unmount->add_option("--timeout", *unmount_timeout, "Seconds to wait for the daemon to finish (default 120)");
  unmount->callback([unmount_target, unmount_timeout] { std::exit(run_unmount(*unmount_target, *unmount_timeout)); });

  auto status_json = std::make_shared<bool>(false);
  auto* status = app.add_subcommand("status", "List this user's mounts: pending uploads, cache use, errors");
  status->add_flag("--json", *status_json, "Machine-readable output");
  status->callback([status_json] { std::exit(run_status(*status_json)); });
}

int mount_helper_main(int argc, char** argv) {
  // mount(8): mount.bucketfs SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS] [-t TYPE]
  MountArgs args;
  bool fake = false;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    const std::string argument = argv[i];
    if (argument == "-o" && i + 1 < argc) {
      args.fuse_options.push_back(argv[++i]);
    } else if (argument.starts_with("-o") && argument.size() > 2) {
      args.fuse_options.push_back(argument.substr(2));
    } else if (argument == "-t" && i + 1 < argc) {
      ++i;  // the type (fuse.bucketfs) says nothing more
    } else if (argument == "-f") {
      fake = true;  // mount -f: do everything but the mount
    } else if (argument == "-s" || argument == "-n" || argument == "-v") {
      continue;  // sloppy, no mtab, verbose: nothing to do
    } else if (argument.starts_with("-")) {
      return fail("mount.bucketfs: unknown option " + argument);
    } else {
      positional.push_back(argument);
    }
  }
  if (positional.size() != 2) return fail("usage: mount.bucketfs NS/BUCKET[/PREFIX] MOUNTPOINT [-o OPTIONS]");
  args.source = positional[0];
  args.mountpoint = positional[1];
  if (fake) return 0;
  return run_mount(std::move(args));
}

}  // namespace bucketfs::cli
