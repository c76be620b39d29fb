#include "bucketfs/lmdb/lmdb.h"

#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <fstream>

namespace bucketfs::lmdb {
namespace {

MDB_val to_val(std::string_view text) {
  return MDB_val{text.size(), const_cast<char*>(text.data())};
}

std::string_view to_view(const MDB_val& value) {
  return {static_cast<const char*>(value.mv_data), value.mv_size};
}

}  // namespace

Error make_error(int code, std::string_view what) {
  return Error{code, std::string(what) + ": " + mdb_strerror(code)};
}

Transaction& Transaction::operator=(Transaction&& other) noexcept {
  if (this != &other) {
    abort();
    txn_ = std::exchange(other.txn_, nullptr);
  }
  return *this;
}

Result<std::optional<std::string_view>> Transaction::get(Database db, std::string_view key) const {
  MDB_val k = to_val(key);
  MDB_val v;
  const int rc = mdb_get(txn_, db.handle, &k, &v);
  if (rc == MDB_NOTFOUND) return std::optional<std::string_view>{};
  if (rc != 0) return std::unexpected(make_error(rc, "lmdb get"));
  return std::optional<std::string_view>{to_view(v)};
}

Result<void> Transaction::put(Database db, std::string_view key, std::string_view value, unsigned flags) {
  MDB_val k = to_val(key);
  MDB_val v = to_val(value);
  const int rc = mdb_put(txn_, db.handle, &k, &v, flags);
  if (rc != 0) return std::unexpected(make_error(rc, "lmdb put"));
  return {};
}

Result<bool> Transaction::erase(Database db, std::string_view key) {
  MDB_val k = to_val(key);
  const int rc = mdb_del(txn_, db.handle, &k, nullptr);
  if (rc == MDB_NOTFOUND) return false;
  if (rc != 0) return std::unexpected(make_error(rc, "lmdb delete"));
  return true;
}

Result<Cursor> Transaction::cursor(Database db) const {
  MDB_cursor* cursor = nullptr;
  const int rc = mdb_cursor_open(txn_, db.handle, &cursor);
  if (rc != 0) return std::unexpected(make_error(rc, "lmdb cursor open"));
  return Cursor(cursor);
}

Result<std::size_t> Transaction::count(Database db) const {
  MDB_stat stat;
  const int rc = mdb_stat(txn_, db.handle, &stat);
  if (rc != 0) return std::unexpected(make_error(rc, "lmdb stat"));
  return stat.ms_entries;
}

Result<void> Transaction::commit() {
  MDB_txn* txn = std::exchange(txn_, nullptr);
  if (txn == nullptr) return std::unexpected(Error{EINVAL, "lmdb commit: no open transaction"});
  const int rc = mdb_txn_commit(txn);
  if (rc != 0) return std::unexpected(make_error(rc, "lmdb commit"));
  return {};
}

void Transaction::abort() {
  if (MDB_txn* txn = std::exchange(txn_, nullptr)) mdb_txn_abort(txn);
}

Cursor& Cursor::operator=(Cursor&& other) noexcept {
  if (this != &other) {
    if (cursor_) mdb_cursor_close(cursor_);
    cursor_ = std::exchange(other.cursor_, nullptr);
  }
  return *this;
}

Cursor::~Cursor() {
  if (cursor_) mdb_cursor_close(cursor_);
}

Result<std::optional<Cursor::Entry>> Cursor::move(MDB_cursor_op op, std::string_view key) {
  MDB_val k = to_val(key);
  MDB_val v;
  const int rc = mdb_cursor_get(cursor_, &k, &v, op);
  if (rc == MDB_NOTFOUND) return std::optional<Entry>{};
  if (rc != 0) return std::unexpected(make_error(rc, "lmdb cursor"));
  return std::optional<Entry>{Entry{to_view(k), to_view(v)}};
}

Result<std::optional<Cursor::Entry>> Cursor::seek(std::string_view key) {
  if (key.empty()) return first();
  return move(MDB_SET_RANGE, key);
}
Result<std::optional<Cursor::Entry>> Cursor::first() { return move(MDB_FIRST); }
Result<std::optional<Cursor::Entry>> Cursor::last() { return move(MDB_LAST); }
Result<std::optional<Cursor::Entry>> Cursor::next() { return move(MDB_NEXT); }
Result<std::optional<Cursor::Entry>> Cursor::previous() { return move(MDB_PREV); }

Result<void> Cursor::erase_current() {
  const int rc = mdb_cursor_del(cursor_, 0);
  if (rc != 0) return std::unexpected(make_error(rc, "lmdb cursor delete"));
  return {};
}

Environment& Environment::operator=(Environment&& other) noexcept {
  if (this != &other) {
    if (env_) mdb_env_close(env_);
    env_ = std::exchange(other.env_, nullptr);
  }
  return *this;
}

Environment::~Environment() {
  if (env_) mdb_env_close(env_);
}

Result<Environment> Environment::open(const std::string& directory, const Options& options) {
  MDB_env* raw = nullptr;
  int rc = mdb_env_create(&raw);
  if (rc != 0) return std::unexpected(make_error(rc, "lmdb create environment"));
  Environment env(raw);
  if ((rc = mdb_env_set_mapsize(raw, options.map_size)) != 0 ||
      (rc = mdb_env_set_maxdbs(raw, options.max_databases)) != 0 ||
      (rc = mdb_env_set_maxreaders(raw, options.max_readers)) != 0) {
    return std::unexpected(make_error(rc, "lmdb configure " + directory));
  }
  rc = mdb_env_open(raw, directory.c_str(), MDB_NOTLS | options.extra_flags, options.file_mode);
  if (rc != 0) return std::unexpected(make_error(rc, "lmdb open " + directory));
  int dead = 0;
  mdb_reader_check(raw, &dead);
  return env;
}

Result<Database> Environment::open_database(const std::string& name, unsigned flags) {
  auto txn = begin_write();
  if (!txn) return std::unexpected(txn.error());
  MDB_dbi dbi = 0;
  const int rc = mdb_dbi_open(txn->get(), name.c_str(), flags, &dbi);
  if (rc != 0) return std::unexpected(make_error(rc, "lmdb open database " + name));
  if (auto committed = txn->commit(); !committed) return std::unexpected(committed.error());
  return Database{dbi};
}

Result<Transaction> Environment::begin_read() const {
  MDB_txn* txn = nullptr;
  const int rc = mdb_txn_begin(env_, nullptr, MDB_RDONLY, &txn);
  if (rc != 0) return std::unexpected(make_error(rc, "lmdb begin read"));
  return Transaction(txn);
}

Result<Transaction> Environment::begin_write() {
  MDB_txn* txn = nullptr;
  const int rc = mdb_txn_begin(env_, nullptr, 0, &txn);
  if (rc != 0) return std::unexpected(make_error(rc, "lmdb begin write"));
  return Transaction(txn);
}

Result<int> Environment::clear_stale_readers() {
  int dead = 0;
  const int rc = mdb_reader_check(env_, &dead);
  if (rc != 0) return std::unexpected(make_error(rc, "lmdb reader check"));
  return dead;
}

Result<void> Environment::release_mapped_pages() {
  MDB_envinfo info{};
  MDB_stat environment_stat{};
  int rc = mdb_env_info(env_, &info);
  if (rc == 0) rc = mdb_env_stat(env_, &environment_stat);
  mdb_filehandle_t fd = -1;
  if (rc == 0) rc = mdb_env_get_fd(env_, &fd);
  if (rc != 0) return std::unexpected(make_error(rc, "lmdb environment info"));
  struct stat file {};
  if (::fstat(fd, &file) != 0) return std::unexpected(make_error(errno, "lmdb stat of the data file"));
  const std::size_t used = (static_cast<std::size_t>(info.me_last_pgno) + 1) * environment_stat.ms_psize;
  // LMDB does not say where it mapped the file (me_mapaddr is only set with MDB_FIXEDMAP): the
  // mapping is the one of the data file's device and inode in /proc/self/maps.
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    std::uintptr_t begin = 0, end = 0;
    unsigned long long offset = 0, inode = 0;
    unsigned major = 0, minor = 0;
    char permissions[8] = {};
    if (std::sscanf(line.c_str(), "%" SCNxPTR "-%" SCNxPTR " %7s %llx %x:%x %llu", &begin, &end, permissions,
                    &offset, &major, &minor, &inode) != 7) {
      continue;
    }
    if (inode != file.st_ino || makedev(major, minor) != file.st_dev || offset >= used) continue;
    const std::size_t length = std::min<std::size_t>(end - begin, used - offset);
    if (::madvise(reinterpret_cast<void*>(begin), length, MADV_DONTNEED) != 0) {
      return std::unexpected(make_error(errno, "lmdb unmap touched pages"));
    }
  }
  return {};
}

}  // namespace bucketfs::lmdb
