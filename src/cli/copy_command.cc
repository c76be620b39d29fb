#include "copy_command.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>

#include "bucketfs/cache/chunk_cache.h"
#include "bucketfs/cache/dedup_index.h"
#include "bucketfs/cache/node_store.h"
#include "bucketfs/hub/cas_client.h"
#include "bucketfs/hub/xet_token.h"
#include "bucketfs/naming/naming.h"
#include "bucketfs/transfer/download.h"
#include "bucketfs/transfer/upload.h"
#include "client.h"
#include "progress.h"

namespace bucketfs::cli {
namespace {

struct CopyArgs {
  ClientOptions client;
  std::string source;
  std::string destination;
  std::string cache_dir;
  std::string cache_size = "10G";
  bool no_global_dedup = false;
};

// Owns a file descriptor; closes it unless it is a standard stream.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) {
      reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  ~Fd() { reset(); }
  void reset() {
    if (fd_ > STDERR_FILENO) ::close(fd_);
    fd_ = -1;
  }
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

std::string errno_text() { return std::strerror(errno); }

// The node store of --cache-dir (created 0700). Errors are one line naming the folder.
std::expected<std::shared_ptr<cache::NodeStore>, std::string> open_store(const CopyArgs& args) {
  const std::string dir = args.cache_dir.empty() ? default_cache_dir() : args.cache_dir;
  std::error_code ignored;
  std::filesystem::create_directories(std::filesystem::path(dir).parent_path(), ignored);
  auto store = cache::NodeStore::open(dir);
  if (!store) return std::unexpected("cache dir " + dir + ": " + store.error().message);
  return *store;
}

int upload(const CopyArgs& args, naming::BucketPath destination) {
  const bool from_stdin = args.source == "-";
  if (destination.path.empty() || destination.trailing_slash) {
    if (from_stdin) return fail(destination.uri() + ": give the file name to write standard input to");
    const std::string name = std::filesystem::path(args.source).filename().string();
    destination.path = destination.path.empty() ? name : destination.path + "/" + name;
  }
  if (auto problem = naming::object_key_problem(destination.path)) {
    return fail(destination.uri() + ": invalid path: " + *problem);
  }
  Fd input(from_stdin ? STDIN_FILENO : ::open(args.source.c_str(), O_RDONLY | O_CLOEXEC));
  if (input.get() < 0) return fail(args.source + ": " + errno_text());
  struct stat info {};
  if (::fstat(input.get(), &info) != 0) return fail(args.source + ": " + errno_text());
  if (S_ISDIR(info.st_mode)) return fail(args.source + ": is a directory");
  std::optional<std::int64_t> mtime_ms;
  if (!from_stdin) mtime_ms = static_cast<std::int64_t>(info.st_mtim.tv_sec) * 1000 + info.st_mtim.tv_nsec / 1000000;
  ::posix_fadvise(input.get(), 0, 0, POSIX_FADV_SEQUENTIAL);

  auto client = Client::connect(args.client);
  if (!client) return fail(client.error());
  auto store = open_store(args);
  if (!store) return fail(store.error());
  cache::DedupIndex dedup(*store);
  hub::XetTokenOptions token_options;
  token_options.write = true;
  hub::XetTokenSource tokens((*client)->hub(), destination.bucket, token_options);
  hub::CasClient cas((*client)->transport(), tokens);
  transfer::UploadOptions options;
  options.global_dedup = !args.no_global_dedup;
  transfer::Uploader uploader(cas, (*client)->hub(), &dedup, options);

  Progress progress(from_stdin ? std::string("stdin") : std::filesystem::path(args.source).filename().string(),
                    S_ISREG(info.st_mode) ? static_cast<std::uint64_t>(info.st_size) : 0);
  const transfer::UploadSource file_source = transfer::fd_source(input.get());
  const transfer::UploadRead counted = [&](std::span<std::byte> buffer) -> std::expected<std::size_t, std::string> {
    auto got = file_source(buffer);
    if (got) progress.advance(*got);
    return got;
  };
  // A regular file stays seekable through the progress counter, so the uploader can drop held
  // bytes while it waits for global dedup answers and re-read them later.
  const transfer::UploadSource source =
      file_source.seekable()
          ? transfer::UploadSource(counted,
                                   [&](std::uint64_t offset, std::span<std::byte> buffer) {
                                     return file_source.read_at(offset, buffer);
                                   })
          : transfer::UploadSource(counted);
  auto uploaded = uploader.upload_and_commit(destination.bucket, destination.path, source, mtime_ms);
  progress.finish();
  if (!uploaded) {
    if (uploaded.error().stale_local_dedup) {
      // Only a source that cannot be read again gets here (the uploader retried a file itself).
      return fail(destination.uri() + ": " + uploaded.error().message +
                  " (the server does not have xorbs the node's dedup index named; copy again)");
    }
    if (uploaded.error().hub) return fail(explain(*uploaded.error().hub, destination.uri()));
    return fail(destination.uri() + ": " + uploaded.error().describe());
  }
  if (progress.visible()) {
    const auto& file = uploaded->file;
    std::fprintf(stderr, "%s -> %s: %s, %s new\n", args.source.c_str(), destination.uri().c_str(),
                 Progress::human(static_cast<double>(file.size)).c_str(),
                 Progress::human(static_cast<double>(file.new_chunk_bytes)).c_str());
  }
  return 0;
}

int download(const CopyArgs& args, const naming::BucketPath& source) {
  if (source.path.empty() || source.trailing_slash) return fail(source.uri() + ": give a file to copy, not a folder");
  auto client = Client::connect(args.client);
  if (!client) return fail(client.error());
  const std::vector<std::string> wanted{source.path};
  auto found = (*client)->hub().paths_info(source.bucket, wanted);
  if (!found) return fail(explain(found.error(), source.uri()));
  if (found->empty()) return fail(source.uri() + ": no such file");
  const hub::FileEntry entry = found->front();

  const bool to_stdout = args.destination == "-";
  std::string target = args.destination;
  if (!to_stdout && std::filesystem::is_directory(target)) {
    target = (std::filesystem::path(target) / std::filesystem::path(source.path).filename()).string();
  }
  // Write next to the target and rename only once every byte verified.
  std::string temporary;
  Fd output(to_stdout ? STDOUT_FILENO : -1);
  if (!to_stdout) {
    temporary = target + ".bucketfs-" + std::to_string(::getpid()) + ".part";
    const int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0) return fail(target + ": " + errno_text());
    output = Fd(fd);
  }
  auto discard = [&] {
    if (!temporary.empty()) ::unlink(temporary.c_str());
  };

  std::unique_ptr<cache::ChunkCache> chunk_cache;
  if (auto store = open_store(args); store) {
    auto size = parse_size(args.cache_size, "--cache-size");
    if (!size) {
      discard();
      return fail(size.error());
    }
    cache::ChunkCacheOptions cache_options;
    cache_options.max_bytes = *size;
    if (auto opened = cache::ChunkCache::open(*store, cache_options); opened) chunk_cache = std::move(*opened);
  } else {
    discard();
    return fail(store.error());
  }
  hub::XetTokenSource tokens((*client)->hub(), source.bucket);
  hub::CasClient cas((*client)->transport(), tokens);
  transfer::Downloader downloader(cas, chunk_cache.get());
  Progress progress(std::filesystem::path(source.path).filename().string(), entry.size);
  std::string write_error;
  auto done = downloader.download_file(entry.xet_hash, entry.size, [&](std::span<const std::byte> bytes) {
    std::size_t written = 0;
    while (written < bytes.size()) {
      const ssize_t n = ::write(output.get(), bytes.data() + written, bytes.size() - written);
      if (n < 0) {
        if (errno == EINTR) continue;
        write_error = errno_text();
        return false;
      }
      written += static_cast<std::size_t>(n);
    }
    progress.advance(bytes.size());
    return true;
  });
  progress.finish();
  if (!write_error.empty()) {
    discard();
    return fail((to_stdout ? std::string("standard output") : target) + ": " + write_error);
  }
  if (!done) {
    discard();
    if (done.error().kind == transfer::DownloadErrorKind::hub) {
      return fail(explain(hub::HubError{done.error().hub_kind, 0, done.error().message}, source.uri()));
    }
    return fail(source.uri() + ": " + done.error().describe());
  }
  if (!to_stdout) {
    if (::fsync(output.get()) != 0 || ::close(output.release()) != 0) {
      discard();
      return fail(target + ": " + errno_text());
    }
    if (entry.mtime_ms) {
      const struct timespec times[2] = {{0, UTIME_OMIT},
                                        {static_cast<time_t>(*entry.mtime_ms / 1000),
                                         static_cast<long>((*entry.mtime_ms % 1000) * 1000000)}};
      ::utimensat(AT_FDCWD, temporary.c_str(), times, 0);
    }
    if (::rename(temporary.c_str(), target.c_str()) != 0) {
      discard();
      return fail(target + ": " + errno_text());
    }
  }
  if (progress.visible()) {
    const auto stats = downloader.stats();
    std::fprintf(stderr, "%s -> %s: %s (%s from the network, %s from the cache)\n", source.uri().c_str(),
                 to_stdout ? "stdout" : target.c_str(), Progress::human(static_cast<double>(entry.size)).c_str(),
                 Progress::human(static_cast<double>(stats.bytes_fetched)).c_str(),
                 Progress::human(static_cast<double>(stats.bytes_from_cache)).c_str());
  }
  return 0;
}

int copy_in_bucket_store(const CopyArgs& args, const naming::BucketPath& source, naming::BucketPath destination) {
  if (source.path.empty()) return fail(source.uri() + ": give a file to copy, not a bucket");
  if (destination.path.empty() || destination.trailing_slash) {
    const std::string name = std::filesystem::path(source.path).filename().string();
    destination.path = destination.path.empty() ? name : destination.path + "/" + name;
  }
  if (auto problem = naming::object_key_problem(destination.path)) {
    return fail(destination.uri() + ": invalid path: " + *problem);
  }
  auto client = Client::connect(args.client);
  if (!client) return fail(client.error());
  const std::vector<std::string> wanted{source.path};
  auto found = (*client)->hub().paths_info(source.bucket, wanted);
  if (!found) return fail(explain(found.error(), source.uri()));
  if (found->empty()) return fail(source.uri() + ": no such file");
  const auto& entry = found->front();
  std::vector<hub::BatchOperation> operations;
  if (source.bucket == destination.bucket) {
    operations.push_back(hub::BatchOperation::add(destination.path, entry.xet_hash, entry.mtime_ms));
  } else {
    operations.push_back(hub::BatchOperation::copy(destination.path, entry.xet_hash, source.bucket.str()));
  }
  auto done = (*client)->hub().batch(destination.bucket, operations);
  if (!done) return fail(explain(done.error(), destination.uri()));
  if (!done->success) {
    return fail(destination.uri() + ": " + (done->failed.empty() ? "refused" : done->failed.front().error));
  }
  return 0;
}

int run_copy(const CopyArgs& args) {
  const bool source_remote = naming::is_bucket_uri(args.source);
  const bool destination_remote = naming::is_bucket_uri(args.destination);
  if (!source_remote && !destination_remote) {
    return fail("one of SRC and DST must be a bucket path (hf://buckets/NAMESPACE/NAME/PATH)");
  }
  if (auto size = parse_size(args.cache_size, "--cache-size"); !size) return fail(size.error());
  if (source_remote) {
    auto source = naming::parse_bucket_path(args.source);
    if (!source) return fail(source.error());
    if (destination_remote) {
      auto destination = naming::parse_bucket_path(args.destination);
      if (!destination) return fail(destination.error());
      return copy_in_bucket_store(args, *source, *destination);
    }
    return download(args, *source);
  }
  auto destination = naming::parse_bucket_path(args.destination);
  if (!destination) return fail(destination.error());
  return upload(args, *destination);
}

}  // namespace

void add_copy_command(CLI::App& app) {
  auto args = std::make_shared<CopyArgs>();
  auto* command = app.add_subcommand(
      "cp", "Copy a file to, from or between bucket paths (hf://buckets/NAMESPACE/NAME/PATH); - is stdin/stdout");
  command->add_option("SRC", args->source, "Local file, -, or hf://buckets/... path")->required();
  command->add_option("DST", args->destination, "Local file or folder, -, or hf://buckets/... path")->required();
  command->add_option("--cache-dir", args->cache_dir, "Node cache: chunk cache and dedup index (default ~/.cache/bucketfs)");
  command->add_option("--cache-size", args->cache_size, "Chunk cache budget, e.g. 10G, 512M")->capture_default_str();
  command->add_flag("--no-global-dedup", args->no_global_dedup, "Upload without asking the global dedup API");
  add_client_options(*command, args->client);
  command->callback([args] {
    const int status = run_copy(*args);
    if (status != 0) throw CLI::RuntimeError(status);
  });
}

}  // namespace bucketfs::cli
