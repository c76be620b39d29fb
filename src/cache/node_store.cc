#include "bucketfs/cache/node_store.h"

#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>

#include <map>
#include <mutex>
#include <thread>
#include <string>
#include <tuple>
#include <utility>

#include "format.h"

namespace bucketfs::cache {
namespace {

// Creates `path` (and missing parents) with mode 0700, or tightens an existing directory of
// ours to 0700. Refuses a directory owned by another user.
Result<void> make_private_directory(const std::filesystem::path& path) {
  std::filesystem::path partial;
  for (const auto& part : path) {
    partial /= part;
    if (::mkdir(partial.c_str(), 0700) != 0 && errno != EEXIST) {
      return std::unexpected(format::io_error(errno, "mkdir " + partial.string()));
    }
  }
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return std::unexpected(format::io_error(errno, "stat " + path.string()));
  if (!S_ISDIR(st.st_mode)) return std::unexpected(format::io_error(ENOTDIR, path.string()));
  if (st.st_uid != ::geteuid()) {
    return std::unexpected(Error{ErrorCode::kIo, EPERM, path.string() + " belongs to another user"});
  }
  if ((st.st_mode & 07777) != 0700 && ::chmod(path.c_str(), 0700) != 0) {
    return std::unexpected(format::io_error(errno, "chmod 0700 " + path.string()));
  }
  return {};
}

// Removes every file in `dir` (not recursing); used when a fresh index meets old data files.
void remove_files(const std::filesystem::path& dir) {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    if (entry.is_regular_file(ec)) std::filesystem::remove(entry.path(), ec);
  }
}

// One NodeStore per directory per process (see the header). Keyed by (pid, device, inode) so a
// forked child opens its own environment instead of using the parent's.
std::mutex registry_mutex;
std::map<NodeStore::RegistryKey, std::weak_ptr<NodeStore>>& registry() {
  static auto* map = new std::map<NodeStore::RegistryKey, std::weak_ptr<NodeStore>>();
  return *map;
}

}  // namespace

NodeStore::NodeStore(std::filesystem::path directory, Options options, lmdb::Environment env, Databases dbs,
                     RegistryKey key)
    : directory_(std::move(directory)), options_(options), env_(std::move(env)), databases_(dbs), key_(key) {}

NodeStore::~NodeStore() {
  std::lock_guard lock(registry_mutex);
  env_.reset();
  registry().erase(key_);
}

Result<std::shared_ptr<NodeStore>> NodeStore::open(const std::filesystem::path& directory, const Options& options) {
  if (auto made = make_private_directory(directory); !made) return std::unexpected(made.error());
  struct stat st;
  if (::stat(directory.c_str(), &st) != 0) return std::unexpected(format::io_error(errno, "stat " + directory.string()));
  const auto key = std::make_tuple(::getpid(), st.st_dev, st.st_ino);

  std::unique_lock lock(registry_mutex);
  // An expired entry belongs to a store whose destructor is waiting for the mutex to close its
  // environment; wait until it has (two open copies would share, then lose, the POSIX locks).
  for (auto it = registry().find(key); it != registry().end(); it = registry().find(key)) {
    if (auto existing = it->second.lock()) return existing;
    lock.unlock();
    std::this_thread::yield();
    lock.lock();
  }

  const std::filesystem::path chunks = directory / "chunks";
  if (auto made = make_private_directory(chunks); !made) return std::unexpected(made.error());

  auto env = lmdb::Environment::open(directory.string(), lmdb::Environment::Options{
      .map_size = options.map_size,
      .max_databases = 16,  // 7 used
      .max_readers = options.max_readers,
      .extra_flags = MDB_NOMETASYNC | MDB_NORDAHEAD,
      .file_mode = 0600,
  });
  if (!env) return std::unexpected(format::store_error(env.error()));

  Databases dbs;
  const std::pair<lmdb::Database*, const char*> names[] = {
      {&dbs.meta, "meta"},   {&dbs.segments, "segments"}, {&dbs.chunks, "chunks"},
      {&dbs.segment_chunks, "segment_chunks"}, {&dbs.dedup, "dedup"}, {&dbs.dedup_order, "dedup_order"},
      {&dbs.journal, "journal"},
  };
  for (const auto& [db, name] : names) {
    auto opened = env->open_database(name);
    if (!opened) return std::unexpected(format::store_error(opened.error()));
    *db = *opened;
  }

  // Format check; a fresh index adopts the current version and forgets any stray data files
  // (their records are gone, and segment ids restart).
  {
    auto txn = env->begin_write();
    if (!txn) return std::unexpected(format::store_error(txn.error()));
    auto version = txn->get(dbs.meta, format::kMetaFormat);
    if (!version) return std::unexpected(format::store_error(version.error()));
    if (!*version) {
      char bytes[4];
      format::put_le(bytes, kCacheFormatVersion, 4);
      if (auto put = txn->put(dbs.meta, format::kMetaFormat, {bytes, 4}); !put) {
        return std::unexpected(format::store_error(put.error()));
      }
      remove_files(chunks);
      if (auto committed = txn->commit(); !committed) return std::unexpected(format::store_error(committed.error()));
    } else if ((*version)->size() == 4 && format::get_le((*version)->data(), 4) == 1) {
      // Version 1 differs only in that no chunk entry has group values: adopt it as it is, and
      // mark it so that a build that reads only version 1 refuses it rather than its entries.
      char bytes[4];
      format::put_le(bytes, kCacheFormatVersion, 4);
      if (auto put = txn->put(dbs.meta, format::kMetaFormat, {bytes, 4}); !put) {
        return std::unexpected(format::store_error(put.error()));
      }
      if (auto committed = txn->commit(); !committed) return std::unexpected(format::store_error(committed.error()));
    } else if ((*version)->size() != 4 || format::get_le((*version)->data(), 4) != kCacheFormatVersion) {
      const auto found = (*version)->size() == 4 ? std::to_string(format::get_le((*version)->data(), 4)) : "?";
      return std::unexpected(Error{ErrorCode::kFormat, 0,
                                   directory.string() + " holds cache format " + found + ", this build reads " +
                                       std::to_string(kCacheFormatVersion)});
    }
  }

  std::shared_ptr<NodeStore> store(new NodeStore(directory, options, std::move(*env), dbs, key));
  registry()[key] = store;
  return store;
}

Result<void> NodeStore::sync() {
  const int rc = mdb_env_sync(env_->get(), 1);
  if (rc != 0) return std::unexpected(format::store_error(lmdb::make_error(rc, "lmdb sync")));
  return {};
}

Result<void> NodeStore::release_mapped_pages() {
  if (auto released = env_->release_mapped_pages(); !released) {
    return std::unexpected(format::store_error(released.error()));
  }
  return {};
}

}  // namespace bucketfs::cache
