#include "verify_command.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "bucketfs/cache/chunk_cache.h"
#include "bucketfs/cache/node_store.h"
#include "bucketfs/hub/cas_client.h"
#include "bucketfs/hub/xet_token.h"
#include "bucketfs/naming/naming.h"
#include "bucketfs/transfer/download.h"
#include "client.h"
#include "progress.h"

namespace bucketfs::cli {
namespace {

struct ContentArgs {
  ClientOptions client;
  std::vector<std::string> paths;
  std::string cache_dir;
  std::string cache_size = "10G";
  unsigned jobs = 4;
};

struct Target {
  naming::BucketId bucket;
  hub::FileEntry file;
};

// The CAS side of one bucket: its token source, client and downloader (shared by the workers).
struct Remote {
  Remote(Client& client, const naming::BucketId& bucket, cache::ChunkCache* cache)
      : tokens(client.hub(), bucket), cas(client.transport(), tokens), downloader(cas, cache) {}
  hub::XetTokenSource tokens;
  hub::CasClient cas;
  transfer::Downloader downloader;
};

bool under(std::string_view path, std::string_view prefix) {
  return prefix.empty() || path == prefix || (path.starts_with(prefix) && path[prefix.size()] == '/');
}

// Every file under each path (the path itself when it is a file), in listing order.
std::expected<std::vector<Target>, std::string> collect(Client& client, const std::vector<std::string>& paths) {
  std::vector<Target> targets;
  for (const auto& text : paths) {
    auto where = naming::parse_bucket_path(text);
    if (!where) return std::unexpected(where.error());
    std::string prefix = where->path;
    while (!prefix.empty() && prefix.back() == '/') prefix.pop_back();
    const std::size_t before = targets.size();
    auto listed = client.hub().for_each_tree_entry(where->bucket, prefix, hub::TreeOptions{.recursive = true, .limit = std::nullopt},
                                                   [&](hub::TreeEntry&& entry) {
                                                     if (entry.is_directory() || !under(entry.path(), prefix)) return true;
                                                     targets.push_back({where->bucket, std::move(entry.file)});
                                                     return true;
                                                   });
    if (!listed && listed.error().kind != hub::HubErrorKind::entry_not_found) {
      return std::unexpected(explain(listed.error(), where->uri()));
    }
    if (targets.size() == before) return std::unexpected(where->uri() + ": no such file or folder");
  }
  return targets;
}

std::string uri_of(const Target& target) { return "hf://buckets/" + target.bucket.str() + "/" + target.file.path; }

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Runs `work` on every target with `jobs` threads; `work` returns false on a failure.
template <typename Work>
void for_each_parallel(const std::vector<Target>& targets, unsigned jobs, Work work) {
  std::atomic<std::size_t> next{0};
  std::vector<std::thread> threads;
  const unsigned count = std::max(1u, std::min<unsigned>(jobs, static_cast<unsigned>(targets.size())));
  for (unsigned i = 0; i < count; ++i) {
    threads.emplace_back([&] {
      for (std::size_t at = next++; at < targets.size(); at = next++) work(targets[at]);
    });
  }
  for (auto& thread : threads) thread.join();
}

int run_content(const ContentArgs& args, bool warm) {
  std::optional<std::uint64_t> cache_bytes;
  if (warm) {
    auto size = parse_size(args.cache_size, "--cache-size");
    if (!size) return fail(size.error());
    cache_bytes = *size;
  }
  auto client = Client::connect(args.client);
  if (!client) return fail(client.error());
  auto targets = collect(**client, args.paths);
  if (!targets) return fail(targets.error());

  std::shared_ptr<cache::NodeStore> store;
  std::unique_ptr<cache::ChunkCache> chunk_cache;
  if (warm) {
    const std::string dir = args.cache_dir.empty() ? default_cache_dir() : args.cache_dir;
    std::error_code ignored;
    std::filesystem::create_directories(std::filesystem::path(dir).parent_path(), ignored);
    auto opened_store = cache::NodeStore::open(dir);
    if (!opened_store) return fail("cache dir " + dir + ": " + opened_store.error().message);
    store = *opened_store;
    cache::ChunkCacheOptions cache_options;
    cache_options.max_bytes = *cache_bytes;
    auto opened = cache::ChunkCache::open(store, cache_options);
    if (!opened) return fail("cache dir " + dir + ": " + opened.error().message);
    chunk_cache = std::move(*opened);
  }
  std::uint64_t total = 0;
  for (const auto& target : *targets) total += target.file.size;
  if (warm && total > *cache_bytes) {
    std::fprintf(stderr, "bucketfs: warning: %s of files do not fit in a cache of %s; the oldest chunks are evicted\n",
                 Progress::human(static_cast<double>(total)).c_str(),
                 Progress::human(static_cast<double>(*cache_bytes)).c_str());
  }
  std::map<std::string, std::unique_ptr<Remote>> remotes;
  for (const auto& target : *targets) {
    auto& remote = remotes[target.bucket.str()];
    if (!remote) remote = std::make_unique<Remote>(**client, target.bucket, chunk_cache.get());
  }

  const auto start = std::chrono::steady_clock::now();
  Progress progress(warm ? "warming" : "verifying", total);
  std::mutex output_mutex;
  std::atomic<std::uint64_t> mismatches{0}, errors{0}, files_done{0};
  for_each_parallel(*targets, args.jobs, [&](const Target& target) {
    auto& remote = *remotes.at(target.bucket.str());
    std::uint64_t received = 0;
    auto done = remote.downloader.download_file(target.file.xet_hash, target.file.size,
                                                [&](std::span<const std::byte> bytes) {
                                                  received += bytes.size();
                                                  progress.advance(bytes.size());
                                                  return true;
                                                });
    // Counted bytes of a failed file still advance the bar by what was read: add the rest.
    if (received < target.file.size) progress.advance(target.file.size - received);
    if (done && received != target.file.size) {
      done = std::unexpected(transfer::DownloadError{transfer::DownloadErrorKind::corrupt, hub::HubErrorKind::server,
                                                     "read " + std::to_string(received) + " bytes, expected " +
                                                         std::to_string(target.file.size)});
    }
    if (done) {
      ++files_done;
      return;
    }
    const bool mismatch = done.error().kind == transfer::DownloadErrorKind::corrupt;
    ++(mismatch ? mismatches : errors);
    std::lock_guard lock(output_mutex);
    if (progress.visible()) std::fprintf(stderr, "\r\x1b[K");  // the bar is redrawn by the next advance
    std::printf("%s %s: %s\n", mismatch ? "MISMATCH" : "ERROR", uri_of(target).c_str(), done.error().describe().c_str());
    std::fflush(stdout);
  });
  progress.finish();
  transfer::DownloadStats stats;
  for (const auto& [name, remote] : remotes) {
    const auto one = remote->downloader.stats();
    stats.bytes_fetched += one.bytes_fetched;
    stats.bytes_from_cache += one.bytes_from_cache;
    stats.uncached_ranges += one.uncached_ranges;
    stats.chunks_cached += one.chunks_cached;
  }
  const double elapsed = seconds_since(start);
  const auto human = [](std::uint64_t bytes) { return Progress::human(static_cast<double>(bytes)); };
  if (warm) {
    std::printf("warmed %llu of %zu files (%s) in %.1f s: %s fetched, %s already cached, %llu chunks cached",
                static_cast<unsigned long long>(files_done.load()), targets->size(), human(total).c_str(), elapsed,
                human(stats.bytes_fetched).c_str(), human(stats.bytes_from_cache).c_str(),
                static_cast<unsigned long long>(stats.chunks_cached));
    if (stats.uncached_ranges > 0) {
      // A range that starts inside a xorb shared with other files cannot be verified alone.
      std::printf(", %llu ranges not cacheable (parts of shared xorbs)", static_cast<unsigned long long>(stats.uncached_ranges));
    }
    if (errors > 0) std::printf(", %llu errors", static_cast<unsigned long long>(errors.load() + mismatches.load()));
    std::printf("\n");
  } else {
    std::printf("verified %zu files (%s) in %.1f s: %llu ok, %llu mismatches, %llu errors\n", targets->size(),
                human(total).c_str(), elapsed, static_cast<unsigned long long>(files_done.load()),
                static_cast<unsigned long long>(mismatches.load()), static_cast<unsigned long long>(errors.load()));
  }
  return mismatches == 0 && errors == 0 ? 0 : 1;
}

void add_paths(CLI::App& command, ContentArgs& args) {
  command.add_option("PATH", args.paths, "hf://buckets/NAMESPACE/NAME[/PREFIX] (files under a prefix, recursively)")
      ->required();
  command.add_option("-j,--jobs", args.jobs, "Files processed in parallel")->capture_default_str();
  add_client_options(command, args.client);
}

}  // namespace

void add_verify_commands(CLI::App& app) {
  auto verify = std::make_shared<ContentArgs>();
  auto* verify_command = app.add_subcommand(
      "verify", "Re-download files from the store (no cache), recompute their xet hash and size, report mismatches");
  add_paths(*verify_command, *verify);
  verify_command->callback([verify] {
    const int status = run_content(*verify, false);
    if (status != 0) throw CLI::RuntimeError(status);
  });

  auto warm = std::make_shared<ContentArgs>();
  auto* warm_command =
      app.add_subcommand("warm", "Fill the node's chunk cache with every chunk of the files under the paths");
  add_paths(*warm_command, *warm);
  warm_command->add_option("--cache-dir", warm->cache_dir, "Node cache (default ~/.cache/bucketfs)");
  warm_command->add_option("--cache-size", warm->cache_size, "Chunk cache budget, e.g. 10G, 512M")->capture_default_str();
  warm_command->callback([warm] {
    const int status = run_content(*warm, true);
    if (status != 0) throw CLI::RuntimeError(status);
  });
}

}  // namespace bucketfs::cli
