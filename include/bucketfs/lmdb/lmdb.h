#pragma once
// A small RAII layer over LMDB, shared by the node cache (cache/) and bucketfs-server (server/).
//
// Ownership: Environment owns the MDB_env, Transaction owns an MDB_txn, Cursor owns an
// MDB_cursor; all are move-only. A Transaction aborts in its destructor unless commit() was
// called; commit() gives up the handle before mdb_txn_commit because LMDB frees it either way.
//
// Threads: environments are opened with MDB_NOTLS, so a read transaction may be used by any
// one thread at a time (not concurrently) and is not tied to the thread that began it. LMDB
// admits one write transaction at a time: begin_write() blocks while another is open.
//
// Lifetimes: every std::string_view returned by get() or a cursor points into the memory map
// and stays valid only until the transaction ends (commit, abort, destruction) or, in a write
// transaction, until the next write to the same database.

#include <lmdb.h>
#include <sys/types.h>

#include <cstddef>
#include <expected>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

namespace bucketfs::lmdb {

struct Error {
  int code = 0;         // an MDB_* code or an errno value
  std::string message;  // mdb_strerror text with what was being done
};

template <typename T>
using Result = std::expected<T, Error>;

// A named database inside an environment; opened once at start-up and valid for the
// environment's lifetime.
struct Database {
  MDB_dbi handle = 0;
};

class Cursor;

class Transaction {
 public:
  Transaction() = default;
  Transaction(Transaction&& other) noexcept : txn_(std::exchange(other.txn_, nullptr)) {}
  Transaction& operator=(Transaction&& other) noexcept;
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;
  ~Transaction() { abort(); }

  // The value stored under `key`, or nullopt when there is none.
  Result<std::optional<std::string_view>> get(Database db, std::string_view key) const;
  Result<void> put(Database db, std::string_view key, std::string_view value, unsigned flags = 0);
  // True when the key existed and was removed.
  Result<bool> erase(Database db, std::string_view key);
  Result<Cursor> cursor(Database db) const;
  // Entries in the database (from its statistics).
  Result<std::size_t> count(Database db) const;

  // Makes the writes durable (subject to the environment's sync flags). The transaction is
  // finished afterwards whether or not it succeeded.
  Result<void> commit();
  void abort();

  bool active() const { return txn_ != nullptr; }
  MDB_txn* get() const { return txn_; }

 private:
  friend class Environment;
  explicit Transaction(MDB_txn* txn) : txn_(txn) {}
  MDB_txn* txn_ = nullptr;
};

// Iterates a database in key order. Valid while its transaction is.
class Cursor {
 public:
  using Entry = std::pair<std::string_view, std::string_view>;

  Cursor(Cursor&& other) noexcept : cursor_(std::exchange(other.cursor_, nullptr)) {}
  Cursor& operator=(Cursor&& other) noexcept;
  Cursor(const Cursor&) = delete;
  Cursor& operator=(const Cursor&) = delete;
  ~Cursor();

  // The first entry whose key is >= `key` (MDB_SET_RANGE).
  Result<std::optional<Entry>> seek(std::string_view key);
  Result<std::optional<Entry>> first();
  Result<std::optional<Entry>> last();
  Result<std::optional<Entry>> next();
  Result<std::optional<Entry>> previous();
  // Deletes the entry at the cursor (write transactions only).
  Result<void> erase_current();

 private:
  friend class Transaction;
  explicit Cursor(MDB_cursor* cursor) : cursor_(cursor) {}
  Result<std::optional<Entry>> move(MDB_cursor_op op, std::string_view key = {});
  MDB_cursor* cursor_ = nullptr;
};

class Environment {
 public:
  struct Options {
    std::size_t map_size = std::size_t{64} << 30;  // address space reserved; the file grows as used
    unsigned max_databases = 16;
    unsigned max_readers = 256;
    unsigned extra_flags = 0;  // e.g. MDB_NOSYNC for caches that may lose recent entries
    mode_t file_mode = 0600;
  };

  Environment(Environment&& other) noexcept : env_(std::exchange(other.env_, nullptr)) {}
  Environment& operator=(Environment&& other) noexcept;
  Environment(const Environment&) = delete;
  Environment& operator=(const Environment&) = delete;
  ~Environment();

  // Opens (creating if needed) the environment in `directory`, which must exist.
  static Result<Environment> open(const std::string& directory, const Options& options);

  // Opens or creates a named database. Call at start-up, before concurrent use.
  Result<Database> open_database(const std::string& name, unsigned flags = MDB_CREATE);

  Result<Transaction> begin_read() const;
  Result<Transaction> begin_write();

  // Clears stale reader slots left by crashed processes; returns how many were cleared.
  Result<int> clear_stale_readers();

  // Unmaps from this process the pages of the database file it has touched (madvise
  // MADV_DONTNEED on the used part of the map). LMDB reads through a shared file mapping, so every
  // page a lookup or a put walked stays in the process's resident set: a daemon's RSS grew with
  // the entries it had touched (about 12 MiB per GiB of chunks read), though the pages are the
  // file's, shared and held by the page cache. Nothing is lost; the next access maps a page
  // again from the page cache. Safe with transactions open on other threads.
  Result<void> release_mapped_pages();

  MDB_env* get() const { return env_; }

 private:
  explicit Environment(MDB_env* env) : env_(env) {}
  MDB_env* env_ = nullptr;
};

// "what: mdb_strerror(code)" as an Error.
Error make_error(int code, std::string_view what);

}  // namespace bucketfs::lmdb
