#include "bucketfs/cache/chunk_cache.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <limits>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "format.h"

namespace bucketfs::cache {
namespace {

using format::ChunkKey;
using format::Codec;
using format::Location;

struct ChunkKeyHash {
  std::size_t operator()(const ChunkKey& key) const noexcept {
    std::uint64_t word;
    std::memcpy(&word, key.data(), 8);
    std::uint32_t index;
    std::memcpy(&index, key.data() + 32, 4);
    return static_cast<std::size_t>(word ^ (std::uint64_t{index} * 0x9E3779B97F4A7C15ull));
  }
};

// Owns one file descriptor, and optionally a second one of the same file opened with O_DIRECT
// (-1 when the file system refuses O_DIRECT).
class File {
 public:
  explicit File(int fd, int direct_fd = -1) : fd_(fd), direct_fd_(direct_fd) {}
  File(const File&) = delete;
  File& operator=(const File&) = delete;
  ~File() {
    if (fd_ >= 0) ::close(fd_);
    if (direct_fd_ >= 0) ::close(direct_fd_);
  }
  int get() const { return fd_; }
  int direct() const { return direct_fd_; }
  void drop_direct() {
    if (direct_fd_ >= 0) ::close(direct_fd_);
    direct_fd_ = -1;
  }

 private:
  int fd_;
  int direct_fd_;
};

// Direct I/O (O_DIRECT) moves segment bytes between our reused buffers and the disk without
// the page cache. Bulk cache traffic goes that way: on this VM kind every fresh page-cache page
// costs several microseconds (PERF-NOTES trap 1), so a buffered 1 GiB segment write or cold
// read costs about 2 s of CPU, while direct I/O costs almost none. Offsets, lengths and memory
// of direct transfers are multiples of kDirectAlign; unaligned heads and tails go through the
// page cache (the kernel keeps both views coherent).
constexpr std::size_t kDirectAlign = 4096;
constexpr std::size_t kStagingBytes = std::size_t{4} << 20;    // aligned bounce buffer, per writer / reader thread
constexpr std::size_t kDirectReadMin = std::size_t{256} << 10;  // smaller runs are read through the page cache

struct AlignedFree {
  void operator()(std::byte* p) const { std::free(p); }
};
using AlignedBytes = std::unique_ptr<std::byte, AlignedFree>;

AlignedBytes aligned_bytes(std::size_t size) {
  return AlignedBytes(static_cast<std::byte*>(std::aligned_alloc(kDirectAlign, size)));
}

int open_direct(const std::string& path, int flags) { return ::open(path.c_str(), flags | O_DIRECT | O_CLOEXEC); }

Result<void> pwrite_all(int fd, xet::ByteSpan data, std::uint64_t offset, const std::string& what) {
  while (!data.empty()) {
    const ssize_t n = ::pwrite(fd, data.data(), data.size(), static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return std::unexpected(format::io_error(errno, "write " + what));
    }
    data = data.subspan(static_cast<std::size_t>(n));
    offset += static_cast<std::uint64_t>(n);
  }
  return {};
}

// Reads up to `size` bytes at `offset`; fewer only at end of file or on an error (which, for a
// cache read, means the same as a truncated file: the chunks do not verify).
std::size_t pread_full(int fd, std::byte* out, std::size_t size, std::uint64_t offset) {
  std::size_t done = 0;
  while (done < size) {
    const ssize_t n = ::pread(fd, out + done, size - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    done += static_cast<std::size_t>(n);
  }
  return done;
}

std::uint64_t system_clock_ms() {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                        std::chrono::system_clock::now().time_since_epoch())
                                        .count());
}

struct DctxDeleter {
  void operator()(ZSTD_DCtx* ctx) const { ZSTD_freeDCtx(ctx); }
};
struct CctxDeleter {
  void operator()(ZSTD_CCtx* ctx) const { ZSTD_freeCCtx(ctx); }
};

// Per-thread buffers of the read path, reused across calls (fresh pages are expensive here).
struct ReadScratch {
  xet::Bytes compressed;
  std::vector<Location> locations;
  std::unique_ptr<ZSTD_DCtx, DctxDeleter> dctx;
  AlignedBytes direct;  // kStagingBytes, allocated on the first direct read
  xet::Bytes part;      // a chunk's groups (or the whole chunk) read by get_part
};

// Reads up to `size` bytes at `offset` with direct I/O through `bounce` (kStagingBytes,
// aligned); fewer only at end of file. nullopt when the kernel refuses the direct read (the
// caller reads through the page cache instead).
std::optional<std::size_t> pread_direct(int fd, std::byte* out, std::size_t size, std::uint64_t offset,
                                        std::byte* bounce) {
  std::size_t done = 0;
  while (done < size) {
    const std::uint64_t pos = offset + done;
    const std::uint64_t start = pos & ~std::uint64_t{kDirectAlign - 1};
    const std::size_t skip = static_cast<std::size_t>(pos - start);
    const std::size_t want = std::min(size - done, kStagingBytes - skip);
    const std::size_t length = (skip + want + kDirectAlign - 1) & ~(kDirectAlign - 1);
    ssize_t n;
    do {
      n = ::pread(fd, bounce, length, static_cast<off_t>(start));
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
      if (done == 0 && errno == EINVAL) return std::nullopt;
      break;
    }
    if (static_cast<std::size_t>(n) <= skip) break;
    const std::size_t got = std::min(want, static_cast<std::size_t>(n) - skip);
    std::memcpy(out + done, bounce + skip, got);
    done += got;
    if (got < want) break;  // end of file
  }
  return done;
}
thread_local ReadScratch read_scratch;

constexpr std::size_t kMaxOpenFiles = 256;

}  // namespace

struct ChunkCache::State {
  std::shared_ptr<NodeStore> store;
  NodeStore::Databases dbs;
  ChunkCacheOptions options;
  std::filesystem::path chunk_dir;

  // --- the writer. Lock order: write_mu, then mu. ---
  std::mutex write_mu;
  std::unique_ptr<ZSTD_CCtx, CctxDeleter> cctx;  // guarded by write_mu
  xet::Bytes compressed;                         // guarded by write_mu
  struct Active {
    std::uint64_t id = 0;
    std::unique_ptr<File> file;  // with a direct descriptor when the file system allows it
    std::uint64_t size = 0;      // bytes appended, staged ones included
  } active;                                    // guarded by write_mu
  // Bytes appended to the active segment at [staged_at, staged_at + staged) that are not yet
  // written: whole kDirectAlign blocks go to the disk directly, only the tail of a put() goes
  // through the page cache. guarded by write_mu.
  AlignedBytes staging;
  std::uint64_t staged_at = 0;
  std::size_t staged = 0;
  std::atomic<std::uint64_t> active_id{0};     // active.id, for the flusher (never evicted by us)
  std::atomic<std::uint64_t> lost_active{0};   // set by the flusher: that segment's record is gone

  // --- queued index entries, visible to get() until committed ---
  mutable std::mutex mu;
  std::unordered_map<ChunkKey, Location, ChunkKeyHash> pending;   // guarded by mu
  std::unordered_map<ChunkKey, Location, ChunkKeyHash> flushing;  // guarded by mu; being committed
  std::unordered_map<std::uint64_t, std::uint64_t> touched;       // guarded by mu; segment -> ms
  std::uint64_t pending_bytes = 0;                                // guarded by mu
  std::chrono::steady_clock::time_point last_flush;               // guarded by mu
  bool stop = false;                                              // guarded by mu
  bool wake = false;                                              // guarded by mu
  std::condition_variable cv;
  std::mutex flush_mu;  // one flush at a time; taken before mu

  // --- data files open for reading ---
  std::mutex files_mu;
  std::unordered_map<std::uint64_t, std::shared_ptr<File>> files;  // guarded by files_mu
  std::atomic<std::uint64_t> seen_evictions{std::numeric_limits<std::uint64_t>::max()};

  std::atomic<std::uint64_t> hits{0}, misses{0}, corruptions{0}, bytes_served{0};
  std::atomic<std::uint64_t> evicted_segments{0}, evicted_bytes{0};

  std::thread flusher;

  lmdb::Environment& env() { return store->environment(); }
  std::uint64_t now() const { return options.clock(); }
  std::string path_of(std::uint64_t id) const { return (chunk_dir / format::segment_file_name(id)).string(); }

  // ---------------------------------------------------------------- writing
  Result<void> roll_segment() {
    if (active.file) {
      if (auto written = write_staged(); !written) return written;
      if (options.sync_data) ::fdatasync(active.file->get());
    }
    active.file.reset();
    auto txn = env().begin_write();
    if (!txn) return std::unexpected(format::store_error(txn.error()));
    auto next = format::get_counter(*txn, dbs.meta, format::kMetaNextSegment);
    if (!next) return std::unexpected(next.error());
    const std::uint64_t id = std::max<std::uint64_t>(*next, 1);
    if (auto set = format::set_counter(*txn, dbs.meta, format::kMetaNextSegment, id + 1); !set) return set;
    const std::uint64_t ms = now();
    const auto key = format::segment_key(id);
    const auto record = format::encode(format::SegmentRecord{0, ms, ms, static_cast<std::uint32_t>(::getpid())});
    if (auto put = txn->put(dbs.segments, {key.data(), key.size()}, {record.data(), record.size()}); !put) {
      return std::unexpected(format::store_error(put.error()));
    }
    if (auto committed = txn->commit(); !committed) return std::unexpected(format::store_error(committed.error()));
    // The record is committed before the file exists, so a file without a record is garbage.
    const std::string path = path_of(id);
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0 && errno == EEXIST) {  // a leftover that reuses a fresh id: nobody else can own it
      ::unlink(path.c_str());
      fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    }
    if (fd < 0) return std::unexpected(format::io_error(errno, "create " + path));
    active = Active{id, std::make_unique<File>(fd, open_direct(path, O_WRONLY)), 0};
    staged = 0;
    active_id.store(id);
    return {};
  }

  // After a failed write the active segment's size is uncertain: start a new one next time.
  Result<void> abandon_active(Result<void> failed) {
    active.file.reset();
    active.id = 0;
    staged = 0;
    return failed;
  }

  // Appends `payload` to the active segment at active.size: into the staging buffer when the
  // segment has a direct descriptor (bytes up to the next kDirectAlign boundary are written
  // through the page cache first), else with a plain pwrite.
  Result<void> append(xet::ByteSpan payload) {
    while (!payload.empty()) {
      if (staged == 0 && (active.file->direct() < 0 || active.size % kDirectAlign != 0)) {
        const std::size_t take = active.file->direct() < 0
                                     ? payload.size()
                                     : std::min<std::size_t>(payload.size(), kDirectAlign - active.size % kDirectAlign);
        if (auto written = pwrite_all(active.file->get(), payload.first(take), active.size, path_of(active.id));
            !written) {
          return written;
        }
        active.size += take;
        payload = payload.subspan(take);
        continue;
      }
      if (!staging) {
        staging = aligned_bytes(kStagingBytes);
        if (!staging) return std::unexpected(format::io_error(ENOMEM, "staging buffer"));
      }
      if (staged == 0) staged_at = active.size;
      const std::size_t take = std::min(kStagingBytes - staged, payload.size());
      std::memcpy(staging.get() + staged, payload.data(), take);
      staged += take;
      active.size += take;
      payload = payload.subspan(take);
      if (staged == kStagingBytes) {
        if (auto written = write_staged(); !written) return written;
      }
    }
    return {};
  }

  // Writes the staged bytes: the whole blocks directly, the tail through the page cache.
  Result<void> write_staged() {
    if (staged == 0) return {};
    const std::size_t blocks = staged & ~(kDirectAlign - 1);
    std::size_t done = 0;
    while (done < blocks) {
      const ssize_t n = ::pwrite(active.file->direct(), staging.get() + done, blocks - done,
                                 static_cast<off_t>(staged_at + done));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EINVAL) {  // direct I/O refused after all: use the page cache from now on
        active.file->drop_direct();
        break;
      }
      if (n < 0) return std::unexpected(format::io_error(errno, "write " + path_of(active.id)));
      done += static_cast<std::size_t>(n);
      if (done % kDirectAlign != 0) break;  // a short direct write: finish through the page cache
    }
    const xet::ByteSpan rest(staging.get() + done, staged - done);
    const std::uint64_t at = staged_at + done;
    staged = 0;
    return pwrite_all(active.file->get(), rest, at, path_of(active.id));
  }

  Result<void> put(const xet::Hash& xorb, std::uint32_t first, std::span<const ChunkData> chunks) {
    if (chunks.empty()) return {};
    if (chunks.size() - 1 > std::numeric_limits<std::uint32_t>::max() - first) {
      return std::unexpected(Error{ErrorCode::kInvalidArgument, 0, "chunk index past 2^32"});
    }
    // Group values (for reads of part of a chunk) are hashed outside the write lock.
    std::vector<std::array<xet::Hash, xet::kMaxChunkGroups>> group_values(chunks.size());
    for (std::size_t i = 0; i < chunks.size(); ++i) {
      const std::size_t groups = xet::chunk_group_count(chunks[i].data.size());
      if (groups == 0) continue;
      if (chunks[i].groups.size() == groups) {
        std::copy(chunks[i].groups.begin(), chunks[i].groups.end(), group_values[i].begin());
      } else {
        xet::chunk_group_values(chunks[i].data, group_values[i]);
      }
    }
    std::vector<std::pair<ChunkKey, Location>> entries;
    entries.reserve(chunks.size());
    {
      std::lock_guard lock(write_mu);
      if (active.file && lost_active.load() == active.id) {
        active.file.reset();  // evicted by someone else: start a new segment
        active.id = 0;
      }
      for (std::size_t i = 0; i < chunks.size(); ++i) {
        const xet::ByteSpan data = chunks[i].data;
        if (data.size() > std::numeric_limits<std::uint32_t>::max()) {
          return std::unexpected(Error{ErrorCode::kInvalidArgument, 0, "chunk larger than 4 GiB"});
        }
        xet::ByteSpan payload = data;
        Codec codec = Codec::kRaw;
        if (cctx && !data.empty()) {
          const std::size_t bound = ZSTD_compressBound(data.size());
          if (compressed.size() < bound) compressed.resize(bound);
          const std::size_t n = ZSTD_compressCCtx(cctx.get(), compressed.data(), compressed.size(), data.data(),
                                                  data.size(), options.compression_level);
          if (!ZSTD_isError(n) && n < data.size() - data.size() / 32) {
            payload = xet::ByteSpan(compressed.data(), n);
            codec = Codec::kZstd;
          }
        }
        if (!active.file || (active.size > 0 && active.size + payload.size() > options.segment_bytes)) {
          if (auto rolled = roll_segment(); !rolled) return abandon_active(rolled);
        }
        const std::uint64_t offset = active.size;
        if (auto written = append(payload); !written) return abandon_active(written);  // advances active.size
        Location loc{active.id, offset, static_cast<std::uint32_t>(payload.size()),
                     static_cast<std::uint32_t>(data.size()), codec, chunks[i].hash};
        if (codec == Codec::kRaw) {
          loc.group_count = static_cast<std::uint8_t>(xet::chunk_group_count(data.size()));
          loc.groups = group_values[i];
        }
        entries.emplace_back(format::chunk_key(xorb, first + static_cast<std::uint32_t>(i)), loc);
      }
      if (auto written = write_staged(); !written) return abandon_active(written);
      if (options.sync_data && ::fdatasync(active.file->get()) != 0) {
        return std::unexpected(format::io_error(errno, "fdatasync " + path_of(active.id)));
      }
    }
    const std::uint64_t ms = now();
    bool backpressure = false;
    {
      std::lock_guard lock(mu);
      for (auto& [key, loc] : entries) {
        pending_bytes += loc.stored_size;
        touched[loc.segment] = ms;
        pending.insert_or_assign(key, loc);
      }
      if (pending_bytes >= options.flush_bytes) {
        wake = true;
        cv.notify_one();
      }
      backpressure = pending_bytes >= 4 * options.flush_bytes;
    }
    if (backpressure) return flush();  // the flusher is behind: commit on the caller's time
    return {};
  }

  // ---------------------------------------------------------------- committing
  Result<void> flush() {
    std::lock_guard flush_lock(flush_mu);
    std::unordered_map<std::uint64_t, std::uint64_t> touched_now;
    {
      std::lock_guard lock(mu);
      last_flush = std::chrono::steady_clock::now();
      if (pending.empty() && touched.empty()) return {};
      flushing.swap(pending);
      pending_bytes = 0;
      touched_now.swap(touched);
    }
    auto committed = commit(touched_now);
    std::lock_guard lock(mu);
    flushing.clear();
    return committed;
  }

  // Removes segment `id` and the chunk entries still pointing into it; returns its size.
  Result<std::uint64_t> evict_segment(lmdb::Transaction& txn, std::uint64_t id) {
    const auto prefix = format::segment_key(id);
    const std::string_view prefix_view(prefix.data(), prefix.size());
    std::vector<std::pair<std::string, std::string>> reverse;  // (reverse key, chunk key)
    {
      auto cursor = txn.cursor(dbs.segment_chunks);
      if (!cursor) return std::unexpected(format::store_error(cursor.error()));
      for (auto entry = cursor->seek(prefix_view);; entry = cursor->next()) {
        if (!entry) return std::unexpected(format::store_error(entry.error()));
        if (!*entry || !(*entry)->first.starts_with(prefix_view)) break;
        reverse.emplace_back(std::string((*entry)->first), std::string((*entry)->second));
      }
    }
    for (const auto& [reverse_key, chunk] : reverse) {
      auto value = txn.get(dbs.chunks, chunk);
      if (!value) return std::unexpected(format::store_error(value.error()));
      if (*value) {
        const auto loc = format::decode_location(**value);
        if (!loc || loc->segment == id) {
          if (auto erased = txn.erase(dbs.chunks, chunk); !erased) return std::unexpected(format::store_error(erased.error()));
        }
      }
      if (auto erased = txn.erase(dbs.segment_chunks, reverse_key); !erased) {
        return std::unexpected(format::store_error(erased.error()));
      }
    }
    std::uint64_t size = 0;
    auto record = txn.get(dbs.segments, prefix_view);
    if (!record) return std::unexpected(format::store_error(record.error()));
    if (*record) {
      if (auto rec = format::decode_segment(**record)) size = rec->size;
      if (auto erased = txn.erase(dbs.segments, prefix_view); !erased) return std::unexpected(format::store_error(erased.error()));
    }
    if (auto sub = format::add_counter(txn, dbs.meta, format::kMetaUsedBytes, -static_cast<std::int64_t>(size)); !sub) {
      return std::unexpected(sub.error());
    }
    return size;
  }

  // Evicts least recently used segments (never this instance's active one) until the committed
  // bytes fit the budget. Returns the evicted segment ids.
  Result<std::vector<std::uint64_t>> evict_to_budget(lmdb::Transaction& txn) {
    std::vector<std::uint64_t> evicted;
    auto used = format::get_counter(txn, dbs.meta, format::kMetaUsedBytes);
    if (!used) return std::unexpected(used.error());
    if (*used <= options.max_bytes) return evicted;
    struct Candidate {
      std::uint64_t last_used, id;
    };
    std::vector<Candidate> candidates;
    {
      auto cursor = txn.cursor(dbs.segments);
      if (!cursor) return std::unexpected(format::store_error(cursor.error()));
      for (auto entry = cursor->first();; entry = cursor->next()) {
        if (!entry) return std::unexpected(format::store_error(entry.error()));
        if (!*entry) break;
        if ((*entry)->first.size() != 8) continue;
        const std::uint64_t id = format::get_be((*entry)->first.data(), 8);
        const auto rec = format::decode_segment((*entry)->second);
        if (id == active_id.load()) continue;
        candidates.push_back({rec ? rec->last_used_ms : 0, id});
      }
    }
    std::sort(candidates.begin(), candidates.end(), [](const Candidate& a, const Candidate& b) {
      return std::tie(a.last_used, a.id) < std::tie(b.last_used, b.id);
    });
    std::uint64_t remaining = *used;
    for (const Candidate& candidate : candidates) {
      if (remaining <= options.max_bytes) break;
      auto size = evict_segment(txn, candidate.id);
      if (!size) return std::unexpected(size.error());
      remaining -= std::min(remaining, *size);
      evicted.push_back(candidate.id);
      evicted_bytes += *size;
    }
    if (!evicted.empty()) {
      if (auto bumped = format::add_counter(txn, dbs.meta, format::kMetaEvictions, 1); !bumped) {
        return std::unexpected(bumped.error());
      }
    }
    return evicted;
  }

  // One write transaction: the `flushing` entries, recency, dedup records, eviction.
  Result<void> commit(std::unordered_map<std::uint64_t, std::uint64_t>& touched_now) {
    // `flushing` is only modified by flush(), which holds flush_mu, so reading it unlocked is safe.
    std::unordered_map<std::uint64_t, std::uint64_t> added;  // segment -> bytes
    for (const auto& [key, loc] : flushing) added[loc.segment] += loc.stored_size;

    auto txn = env().begin_write();
    if (!txn) return std::unexpected(format::store_error(txn.error()));
    const std::uint64_t ms = now();
    std::set<std::uint64_t> lost;
    std::uint64_t used_delta = 0;
    auto update_segment = [&](std::uint64_t id, std::uint64_t bytes, std::uint64_t used_ms) -> Result<bool> {
      const auto key = format::segment_key(id);
      auto value = txn->get(dbs.segments, {key.data(), key.size()});
      if (!value) return std::unexpected(format::store_error(value.error()));
      if (!*value) return false;
      auto rec = format::decode_segment(**value).value_or(format::SegmentRecord{});
      rec.size += bytes;
      rec.last_used_ms = std::max(rec.last_used_ms, used_ms);
      const auto encoded = format::encode(rec);
      if (auto put = txn->put(dbs.segments, {key.data(), key.size()}, {encoded.data(), encoded.size()}); !put) {
        return std::unexpected(format::store_error(put.error()));
      }
      return true;
    };
    for (const auto& [id, bytes] : added) {
      const auto it = touched_now.find(id);
      auto exists = update_segment(id, bytes, it != touched_now.end() ? it->second : ms);
      if (!exists) return std::unexpected(exists.error());
      if (!*exists) lost.insert(id);
      else used_delta += bytes;
      if (it != touched_now.end()) touched_now.erase(it);
    }
    for (const auto& [id, used_ms] : touched_now) {
      if (auto exists = update_segment(id, 0, used_ms); !exists) return std::unexpected(exists.error());
    }
    std::vector<DedupRecord> dedup;
    if (options.feed_dedup) dedup.reserve(flushing.size());
    for (const auto& [key, loc] : flushing) {
      if (lost.contains(loc.segment)) continue;
      const auto value = format::encode(loc);
      if (auto put = txn->put(dbs.chunks, format::view(key), {value.data(), value.size()}); !put) {
        return std::unexpected(format::store_error(put.error()));
      }
      const auto reverse = format::segment_chunk_key(loc.segment, loc.offset);
      if (auto put = txn->put(dbs.segment_chunks, {reverse.data(), reverse.size()}, format::view(key)); !put) {
        return std::unexpected(format::store_error(put.error()));
      }
      if (options.feed_dedup) {
        dedup.push_back(DedupRecord{loc.hash, DedupEntry{format::get_hash(key.data()),
                                                         static_cast<std::uint32_t>(format::get_be(key.data() + 32, 4)),
                                                         loc.raw_size}});
      }
    }
    if (auto add = format::add_counter(*txn, dbs.meta, format::kMetaUsedBytes, static_cast<std::int64_t>(used_delta)); !add) {
      return add;
    }
    if (auto put = format::put_dedup(*txn, dbs, dedup, store->options().dedup_max_entries); !put) return put;
    auto evicted = evict_to_budget(*txn);
    if (!evicted) return std::unexpected(evicted.error());
    if (auto committed = txn->commit(); !committed) return std::unexpected(format::store_error(committed.error()));

    for (const std::uint64_t id : lost) {
      if (id == active_id.load()) lost_active.store(id);
      ::unlink(path_of(id).c_str());  // ours; whoever dropped the record may have removed it already
    }
    for (const std::uint64_t id : *evicted) ::unlink(path_of(id).c_str());
    if (!lost.empty() || !evicted->empty()) {
      std::lock_guard lock(files_mu);
      for (const std::uint64_t id : lost) files.erase(id);
      for (const std::uint64_t id : *evicted) files.erase(id);
    }
    evicted_segments += evicted->size();
    return {};
  }

  void run_flusher() {
    std::unique_lock lock(mu);
    while (!stop) {
      cv.wait_for(lock, options.flush_interval, [&] { return stop || wake; });
      if (stop) break;
      wake = false;
      const bool due = !pending.empty() ||
                       (!touched.empty() && std::chrono::steady_clock::now() - last_flush >= options.recency_interval);
      if (!due) continue;
      lock.unlock();
      (void)flush();  // on failure the queued entries are dropped: the cache may lose entries
      lock.lock();
    }
  }

  // ---------------------------------------------------------------- reading
  std::optional<Location> find_queued(const ChunkKey& key) const {
    std::lock_guard lock(mu);
    if (auto it = pending.find(key); it != pending.end()) return it->second;
    if (auto it = flushing.find(key); it != flushing.end()) return it->second;
    return std::nullopt;
  }

  // Closes cached descriptors of segments evicted by any process since we last looked, so
  // that their disk space is released.
  void forget_evicted(const lmdb::Transaction& txn) {
    auto evictions = format::get_counter(txn, dbs.meta, format::kMetaEvictions);
    if (!evictions || *evictions == seen_evictions.load(std::memory_order_relaxed)) return;
    std::lock_guard lock(files_mu);
    std::erase_if(files, [&](const auto& entry) {
      const auto key = format::segment_key(entry.first);
      auto value = txn.get(dbs.segments, {key.data(), key.size()});
      return value && !*value;
    });
    seen_evictions.store(*evictions, std::memory_order_relaxed);
  }

  Result<std::optional<Location>> find_committed(const lmdb::Transaction& txn, const ChunkKey& key) const {
    auto value = txn.get(dbs.chunks, format::view(key));
    if (!value) return std::unexpected(format::store_error(value.error()));
    if (!*value) return std::optional<Location>{};
    auto loc = format::decode_location(**value);
    if (!loc) return std::unexpected(Error{ErrorCode::kFormat, 0, "malformed chunk entry"});
    return loc;
  }

  std::shared_ptr<File> file_for(std::uint64_t id) {
    {
      std::lock_guard lock(files_mu);
      if (auto it = files.find(id); it != files.end()) return it->second;
    }
    const int fd = ::open(path_of(id).c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return nullptr;
    auto file = std::make_shared<File>(fd, open_direct(path_of(id), O_RDONLY));
    std::lock_guard lock(files_mu);
    if (files.size() >= kMaxOpenFiles) files.clear();  // in-flight readers keep theirs alive
    return files.try_emplace(id, std::move(file)).first->second;
  }

  // Reads `run` (consecutive entries; several only when raw and back to back in one segment)
  // into `out` and returns how many chunks verified, in order.
  std::size_t read_run(std::span<const Location> run, std::byte* out) {
    const Location& head = run.front();
    auto file = file_for(head.segment);
    if (!file) return 0;
    if (head.codec == Codec::kRaw) {
      std::uint64_t total = 0;
      for (const Location& loc : run) total += loc.stored_size;
      std::optional<std::size_t> direct;
      if (total >= kDirectReadMin && file->direct() >= 0) {
        ReadScratch& scratch = read_scratch;
        if (!scratch.direct) scratch.direct = aligned_bytes(kStagingBytes);
        if (scratch.direct) {
          direct = pread_direct(file->direct(), out, static_cast<std::size_t>(total), head.offset, scratch.direct.get());
        }
      }
      const std::size_t got =
          direct ? *direct : pread_full(file->get(), out, static_cast<std::size_t>(total), head.offset);
      std::size_t pos = 0;
      for (std::size_t k = 0; k < run.size(); ++k) {
        if (pos + run[k].raw_size > got) return k;
        if (xet::chunk_hash(xet::ByteSpan(out + pos, run[k].raw_size)) != run[k].hash) return k;
        pos += run[k].raw_size;
      }
      return run.size();
    }
    ReadScratch& scratch = read_scratch;
    if (scratch.compressed.size() < head.stored_size) scratch.compressed.resize(head.stored_size);
    if (!scratch.dctx) scratch.dctx.reset(ZSTD_createDCtx());
    if (pread_full(file->get(), scratch.compressed.data(), head.stored_size, head.offset) != head.stored_size) return 0;
    const std::size_t n = ZSTD_decompressDCtx(scratch.dctx.get(), out, head.raw_size, scratch.compressed.data(),
                                              head.stored_size);
    if (ZSTD_isError(n) || n != head.raw_size) return 0;
    return xet::chunk_hash(xet::ByteSpan(out, head.raw_size)) == head.hash ? 1 : 0;
  }

  // Drops an entry whose bytes did not verify (only if it still points where we read). Returns
  // whether that was a corruption: when the segment's record is gone, another instance evicted
  // it between our lookup and our read, which is a plain miss.
  bool drop_entry(const ChunkKey& key, const Location& loc) {
    {
      std::lock_guard lock(mu);
      if (auto it = pending.find(key); it != pending.end() && it->second.same_place(loc)) pending.erase(it);
    }
    bool corrupt = true;  // when LMDB cannot tell us otherwise
    auto txn = env().begin_write();
    if (txn) {
      const auto segment = format::segment_key(loc.segment);
      auto record = txn->get(dbs.segments, {segment.data(), segment.size()});
      corrupt = !record || *record;
      auto value = txn->get(dbs.chunks, format::view(key));
      bool changed = false;
      if (value && *value) {
        auto current = format::decode_location(**value);
        if (!current || current->same_place(loc)) changed = txn->erase(dbs.chunks, format::view(key)).value_or(false);
      }
      if (corrupt) changed = format::add_counter(*txn, dbs.meta, format::kMetaCorruptions, 1).has_value() || changed;
      if (changed) (void)txn->commit();
    }
    if (corrupt) ++corruptions;
    else ++misses;
    return corrupt;
  }

  void note_hit(std::uint64_t segment, std::size_t chunks, std::size_t bytes) {
    hits += chunks;
    bytes_served += bytes;
    const std::uint64_t ms = now();
    std::lock_guard lock(mu);
    auto& latest = touched[segment];
    latest = std::max(latest, ms);
  }

  // Where chunk `key` is: queued in this instance, else committed (read in `txn`, begun on first
  // need; one read transaction serves a whole range and is never held across file I/O).
  Result<std::optional<Location>> locate(std::optional<lmdb::Transaction>& txn, const ChunkKey& key) {
    if (auto queued = find_queued(key)) return queued;
    if (!txn) {
      auto begun = env().begin_read();
      if (!begun) return std::unexpected(format::store_error(begun.error()));
      txn.emplace(std::move(*begun));
      forget_evicted(*txn);
    }
    return find_committed(*txn, key);
  }

  Result<std::optional<std::vector<std::uint32_t>>> chunk_sizes(const xet::Hash& xorb, std::uint32_t first,
                                                                 std::uint32_t last) {
    if (first >= last) return std::unexpected(Error{ErrorCode::kInvalidArgument, 0, "empty chunk range"});
    std::vector<std::uint32_t> sizes;
    sizes.reserve(last - first);
    std::optional<lmdb::Transaction> txn;
    for (std::uint32_t index = first; index < last; ++index) {
      auto loc = locate(txn, format::chunk_key(xorb, index));
      if (!loc) return std::unexpected(loc.error());
      if (!*loc) return std::optional<std::vector<std::uint32_t>>{};
      sizes.push_back((*loc)->raw_size);
    }
    return std::optional<std::vector<std::uint32_t>>{std::move(sizes)};
  }

  Result<std::optional<RangeRead>> get_range(const xet::Hash& xorb, std::uint32_t first, std::uint32_t last,
                                             std::span<std::byte> out) {
    if (first >= last) return std::unexpected(Error{ErrorCode::kInvalidArgument, 0, "empty chunk range"});
    std::vector<Location>& locs = read_scratch.locations;
    locs.clear();
    std::optional<lmdb::Transaction> txn;
    std::size_t total = 0;
    bool stopped_on_miss = false;
    for (std::uint32_t index = first; index < last; ++index) {
      auto located = locate(txn, format::chunk_key(xorb, index));
      if (!located) return std::unexpected(located.error());
      const std::optional<Location>& loc = *located;
      if (!loc) {
        stopped_on_miss = true;
        break;
      }
      if (total + loc->raw_size > out.size()) {
        if (index == first) {
          return std::unexpected(Error{ErrorCode::kBufferTooSmall, 0,
                                       "chunk of " + std::to_string(loc->raw_size) + " bytes, buffer of " +
                                           std::to_string(out.size())});
        }
        break;
      }
      locs.push_back(*loc);
      total += loc->raw_size;
    }
    txn.reset();  // no read transaction held across file I/O
    if (stopped_on_miss) ++misses;
    if (locs.empty()) return std::optional<RangeRead>{};

    std::size_t done = 0;  // chunks verified
    std::size_t pos = 0;
    while (done < locs.size()) {
      std::size_t end = done + 1;
      if (locs[done].codec == Codec::kRaw) {
        while (end < locs.size() && locs[end].codec == Codec::kRaw && locs[end].segment == locs[done].segment &&
               locs[end].offset == locs[end - 1].offset + locs[end - 1].stored_size) {
          ++end;
        }
      }
      const std::span<const Location> run(locs.data() + done, end - done);
      const std::size_t good = read_run(run, out.data() + pos);
      std::size_t good_bytes = 0;
      for (std::size_t k = 0; k < good; ++k) good_bytes += run[k].raw_size;
      if (good > 0) note_hit(run.front().segment, good, good_bytes);
      pos += good_bytes;
      done += good;
      if (good < run.size()) {
        drop_entry(format::chunk_key(xorb, first + static_cast<std::uint32_t>(done)), run[good]);
        break;
      }
    }
    if (done == 0) return std::optional<RangeRead>{};
    RangeRead read{first + static_cast<std::uint32_t>(done), pos, {}};
    read.chunks.reserve(done);
    for (std::size_t k = 0; k < done; ++k) read.chunks.push_back({locs[k].hash, locs[k].raw_size});
    return std::optional<RangeRead>{std::move(read)};
  }

  Result<std::optional<std::size_t>> get_part(const xet::Hash& xorb, std::uint32_t index, std::uint64_t offset,
                                              std::span<std::byte> out) {
    const ChunkKey key = format::chunk_key(xorb, index);
    std::optional<Location> found;
    {
      std::optional<lmdb::Transaction> txn;
      auto located = locate(txn, key);
      if (!located) return std::unexpected(located.error());
      found = *located;
    }  // no read transaction held across file I/O
    if (!found) {
      ++misses;
      return std::optional<std::size_t>{};
    }
    const Location& loc = *found;
    if (offset > loc.raw_size || out.size() > loc.raw_size - offset) {
      return std::unexpected(Error{ErrorCode::kInvalidArgument, 0,
                                   "bytes [" + std::to_string(offset) + ", +" + std::to_string(out.size()) +
                                       ") of a chunk of " + std::to_string(loc.raw_size)});
    }
    if (out.empty()) return std::optional<std::size_t>{0};  // nothing to read or verify
    xet::Bytes& buffer = read_scratch.part;
    bool verified = false;
    std::size_t read_bytes = loc.raw_size;
    if (loc.group_count > 0) {
      // Only the groups holding the bytes are read; with the other groups' stored values they
      // must give the chunk hash.
      const std::size_t first_group = offset / xet::kChunkGroupBytes;
      const std::size_t end_group = (offset + out.size() + xet::kChunkGroupBytes - 1) / xet::kChunkGroupBytes;
      const std::size_t start = first_group * xet::kChunkGroupBytes;
      read_bytes = std::min<std::size_t>(end_group * xet::kChunkGroupBytes, loc.raw_size) - start;
      if (buffer.size() < read_bytes) buffer.resize(read_bytes);
      auto file = file_for(loc.segment);
      if (file && pread_full(file->get(), buffer.data(), read_bytes, loc.offset + start) == read_bytes) {
        std::array<xet::Hash, xet::kMaxChunkGroups> groups = loc.groups;
        for (std::size_t g = first_group; g < end_group; ++g) {
          const std::size_t at = g * xet::kChunkGroupBytes - start;
          groups[g] = xet::chunk_group_value(
              xet::ByteSpan(buffer.data() + at, std::min(xet::kChunkGroupBytes, read_bytes - at)), g);
        }
        verified = xet::chunk_hash_from_groups(std::span(groups).first(loc.group_count), loc.raw_size) == loc.hash;
      }
      if (verified) std::memcpy(out.data(), buffer.data() + (offset - start), out.size());
    } else {
      if (buffer.size() < loc.raw_size) buffer.resize(loc.raw_size);
      if (read_run(std::span(&loc, 1), buffer.data()) == 1) {
        verified = true;
        std::memcpy(out.data(), buffer.data() + offset, out.size());
      }
    }
    if (!verified) {
      drop_entry(key, loc);
      return std::optional<std::size_t>{};
    }
    note_hit(loc.segment, 1, read_bytes);
    return std::optional<std::size_t>{out.size()};
  }

  Result<ChunkCacheStats> stats() {
    ChunkCacheStats s;
    s.max_bytes = options.max_bytes;
    {
      auto txn = env().begin_read();
      if (!txn) return std::unexpected(format::store_error(txn.error()));
      auto used = format::get_counter(*txn, dbs.meta, format::kMetaUsedBytes);
      if (!used) return std::unexpected(used.error());
      auto corrupt = format::get_counter(*txn, dbs.meta, format::kMetaCorruptions);
      if (!corrupt) return std::unexpected(corrupt.error());
      auto entries = txn->count(dbs.chunks);
      if (!entries) return std::unexpected(format::store_error(entries.error()));
      auto segments = txn->count(dbs.segments);
      if (!segments) return std::unexpected(format::store_error(segments.error()));
      s.used_bytes = *used;
      s.corruptions_total = *corrupt;
      s.entries = *entries;
      s.segments = *segments;
    }
    {
      std::lock_guard lock(mu);
      s.pending_bytes = pending_bytes;
    }
    s.hits = hits.load();
    s.misses = misses.load();
    s.corruptions = corruptions.load();
    s.bytes_served = bytes_served.load();
    s.evicted_segments = evicted_segments.load();
    s.evicted_bytes = evicted_bytes.load();
    return s;
  }

  // At start-up: delete data files that no record names (a crash between an eviction's commit
  // and its unlink), and drop records of non-empty segments whose file is gone.
  Result<void> sweep() {
    std::set<std::uint64_t> on_disk;
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(chunk_dir, ec)) {
      if (auto id = format::parse_segment_file_name(entry.path().filename().string())) on_disk.insert(*id);
    }
    if (ec) return std::unexpected(format::io_error(ec.value(), "list " + chunk_dir.string()));
    // Listed before reading the records: a record is committed before its file is created, so a
    // listed file whose record is absent now is garbage even with other processes running.
    std::set<std::uint64_t> recorded, missing;
    {
      auto txn = env().begin_read();
      if (!txn) return std::unexpected(format::store_error(txn.error()));
      auto cursor = txn->cursor(dbs.segments);
      if (!cursor) return std::unexpected(format::store_error(cursor.error()));
      for (auto entry = cursor->first();; entry = cursor->next()) {
        if (!entry) return std::unexpected(format::store_error(entry.error()));
        if (!*entry) break;
        if ((*entry)->first.size() != 8) continue;
        const std::uint64_t id = format::get_be((*entry)->first.data(), 8);
        recorded.insert(id);
        const auto rec = format::decode_segment((*entry)->second);
        if (rec && rec->size > 0 && !on_disk.contains(id)) missing.insert(id);
      }
    }
    for (const std::uint64_t id : on_disk) {
      if (!recorded.contains(id)) ::unlink(path_of(id).c_str());
    }
    std::erase_if(missing, [&](std::uint64_t id) {
      struct stat st;
      return ::stat(path_of(id).c_str(), &st) == 0;  // created after our listing: not missing
    });
    if (missing.empty()) return {};
    auto txn = env().begin_write();
    if (!txn) return std::unexpected(format::store_error(txn.error()));
    for (const std::uint64_t id : missing) {
      if (auto evicted = evict_segment(*txn, id); !evicted) return std::unexpected(evicted.error());
    }
    if (auto bumped = format::add_counter(*txn, dbs.meta, format::kMetaEvictions, 1); !bumped) return bumped;
    if (auto committed = txn->commit(); !committed) return std::unexpected(format::store_error(committed.error()));
    return {};
  }
};

Result<std::unique_ptr<ChunkCache>> ChunkCache::open(std::shared_ptr<NodeStore> store, ChunkCacheOptions options) {
  if (!store) return std::unexpected(Error{ErrorCode::kInvalidArgument, 0, "no node store"});
  if (options.max_bytes == 0) return std::unexpected(Error{ErrorCode::kInvalidArgument, 0, "max_bytes is 0"});
  if (options.compression_level < 0 || options.compression_level > ZSTD_maxCLevel()) {
    return std::unexpected(Error{ErrorCode::kInvalidArgument, 0, "zstd level out of range"});
  }
  if (options.segment_bytes == 0) {
    options.segment_bytes = std::clamp<std::uint64_t>(options.max_bytes / 16, 256 << 10, 64 << 20);
  }
  if (options.flush_bytes == 0) options.flush_bytes = std::min<std::uint64_t>(options.segment_bytes, 64 << 20);
  if (!options.clock) options.clock = system_clock_ms;

  auto state = std::make_unique<State>();
  state->dbs = store->databases();
  state->chunk_dir = store->chunk_directory();
  state->store = std::move(store);
  state->options = std::move(options);
  state->last_flush = std::chrono::steady_clock::now();
  if (state->options.compression_level > 0) {
    state->cctx.reset(ZSTD_createCCtx());
    if (!state->cctx) return std::unexpected(Error{ErrorCode::kIo, ENOMEM, "ZSTD_createCCtx"});
  }
  if (auto swept = state->sweep(); !swept) return std::unexpected(swept.error());
  State* raw = state.get();
  state->flusher = std::thread([raw] { raw->run_flusher(); });
  return std::unique_ptr<ChunkCache>(new ChunkCache(std::move(state)));
}

ChunkCache::ChunkCache(std::unique_ptr<State> state) : state_(std::move(state)) {}

ChunkCache::~ChunkCache() {
  {
    std::lock_guard lock(state_->mu);
    state_->stop = true;
  }
  state_->cv.notify_all();
  if (state_->flusher.joinable()) state_->flusher.join();
  (void)state_->flush();
}

Result<void> ChunkCache::put(const xet::Hash& xorb, std::uint32_t first_index, std::span<const ChunkData> chunks) {
  return state_->put(xorb, first_index, chunks);
}

Result<std::optional<xet::ByteSpan>> ChunkCache::get(const xet::Hash& xorb, std::uint32_t index,
                                                     std::span<std::byte> out) {
  auto read = state_->get_range(xorb, index, index + 1, out);
  if (!read) return std::unexpected(read.error());
  if (!*read) return std::optional<xet::ByteSpan>{};
  return std::optional<xet::ByteSpan>{xet::ByteSpan(out.data(), (*read)->size)};
}

Result<std::optional<RangeRead>> ChunkCache::get_range(const xet::Hash& xorb, std::uint32_t first,
                                                       std::uint32_t last, std::span<std::byte> out) {
  return state_->get_range(xorb, first, last, out);
}

Result<std::optional<std::size_t>> ChunkCache::get_part(const xet::Hash& xorb, std::uint32_t index,
                                                        std::uint64_t offset, std::span<std::byte> out) {
  return state_->get_part(xorb, index, offset, out);
}

Result<std::optional<std::vector<std::uint32_t>>> ChunkCache::chunk_sizes(const xet::Hash& xorb,
                                                                          std::uint32_t first, std::uint32_t last) {
  return state_->chunk_sizes(xorb, first, last);
}

Result<void> ChunkCache::flush() { return state_->flush(); }

Result<ChunkCacheStats> ChunkCache::stats() const { return state_->stats(); }

const ChunkCacheOptions& ChunkCache::options() const { return state_->options; }

}  // namespace bucketfs::cache
