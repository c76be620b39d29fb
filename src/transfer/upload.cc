// The upload pipeline: see include/bucketfs/transfer/upload.h for the stages and their bounds.
#include "bucketfs/transfer/upload.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "bucketfs/xet/chunker.h"
#include "bucketfs/xet/shard.h"
#include "bucketfs/xet/xorb.h"

namespace bucketfs::transfer {
namespace {

constexpr std::size_t kBlockSlack = xet::kMaxChunkSize;  // room for the open chunk carried over

std::unexpected<UploadError> fail(UploadErrorKind kind, std::string message,
                                  std::optional<hub::HubError> hub = std::nullopt) {
  return std::unexpected(UploadError{kind, std::move(message), std::move(hub)});
}

std::unexpected<UploadError> remote(std::string what, hub::HubError error) {
  const auto kind = error.kind == hub::HubErrorKind::cancelled ? UploadErrorKind::cancelled : UploadErrorKind::remote;
  std::string message = what + ": " + error.describe();
  return fail(kind, std::move(message), std::move(error));
}

// Where a chunk already is: a xorb of the session table (by id) and its index there.
struct Location {
  std::size_t xorb_id = 0;
  std::uint32_t index = 0;
  std::uint32_t size = 0;
};

// A global dedup answer's chunks, keyed with its footer key.
struct KeyedChunks {
  xet::Hash key;  // zero: plain hashes
  std::unordered_map<xet::Hash, Location> chunks;
};

constexpr std::uint64_t kDropped = ~std::uint64_t{0};  // PendingChunk::block_seq of dropped bytes

// A chunk waiting for its decision (64 bytes).
struct PendingChunk {
  xet::Hash hash;
  std::uint64_t file_offset = 0;
  std::uint64_t block_seq = 0;   // kDropped: bytes no longer held, re-read from the source
  std::uint64_t file_index = 0;  // chunk number in the file
  std::uint32_t size = 0;
  bool local = false;  // found in the DedupIndex (FileState::local_hits)
};

// Bytes a block is read into, left uninitialized: only the pages a read fills are touched, so a
// small file's session does not zero (and fault in) a whole read_piece.
struct ReadBuffer {
  std::unique_ptr<std::byte[]> bytes;
  std::size_t length = 0;

  std::byte* data() const { return bytes.get(); }
  std::size_t size() const { return length; }
  std::span<std::byte> span() const { return {bytes.get(), length}; }
};

// Read buffer; chunks lie wholly inside one block.
struct Block {
  ReadBuffer data;
  std::uint64_t start = 0;  // file offset of data[0]
  std::size_t used = 0;
  std::size_t pending = 0;  // chunks in it not decided yet
};

// A global dedup query of one file, in file order.
struct QueryEntry {
  std::uint64_t file_index = 0;
  xet::Hash hash;
  std::uint32_t size = 0;
  enum State : std::uint8_t { queued, in_flight, answered } state = queued;
};

// A term under construction, referencing the session's xorb table.
struct OpenTerm {
  std::size_t xorb_id = 0;
  std::uint32_t start = 0;
  std::uint32_t end = 0;
  std::uint32_t bytes = 0;
};

struct FileRecord {
  xet::Hash file_hash;
  std::vector<OpenTerm> terms;
  std::vector<xet::Hash> verification;
};

struct XorbJob {
  std::size_t id = 0;
  xet::SerializedXorb xorb;
};

}  // namespace

std::string UploadError::describe() const {
  static constexpr const char* kNames[] = {"source", "remote", "rejected", "internal", "cancelled"};
  return std::string(kNames[static_cast<int>(kind)]) + ": " + message;
}

UploadSource::UploadSource(UploadRead read, UploadReadAt read_at)
    : read_(std::move(read)),
      read_at_(read_at ? std::make_shared<const UploadReadAt>(std::move(read_at)) : nullptr) {}

std::expected<std::size_t, std::string> UploadSource::operator()(std::span<std::byte> buffer) const {
  if (!read_) return std::unexpected(std::string("no source"));
  return read_(buffer);
}

UploadSource fd_source(int fd) {
  UploadRead read = [fd](std::span<std::byte> buffer) -> std::expected<std::size_t, std::string> {
    for (;;) {
      const auto n = ::read(fd, buffer.data(), buffer.size());
      if (n >= 0) return static_cast<std::size_t>(n);
      if (errno != EINTR) return std::unexpected(std::string("read: ") + std::strerror(errno));
    }
  };
  struct stat info {};
  const off_t base = ::lseek(fd, 0, SEEK_CUR);
  if (::fstat(fd, &info) != 0 || !S_ISREG(info.st_mode) || base < 0) return UploadSource(std::move(read));
  UploadReadAt read_at = [fd, base](std::uint64_t offset,
                                    std::span<std::byte> buffer) -> std::expected<std::size_t, std::string> {
    std::size_t done = 0;
    while (done < buffer.size()) {
      const auto n = ::pread(fd, buffer.data() + done, buffer.size() - done,
                             static_cast<off_t>(static_cast<std::uint64_t>(base) + offset + done));
      if (n == 0) break;
      if (n > 0) {
        done += static_cast<std::size_t>(n);
      } else if (errno != EINTR) {
        return std::unexpected(std::string("pread: ") + std::strerror(errno));
      }
    }
    return done;
  };
  return UploadSource(std::move(read), std::move(read_at));
}

UploadSource memory_source(std::span<const std::byte> bytes) {
  auto offset = std::make_shared<std::size_t>(0);
  UploadRead read = [bytes, offset](std::span<std::byte> buffer) -> std::expected<std::size_t, std::string> {
    const std::size_t n = std::min(buffer.size(), bytes.size() - *offset);
    if (n > 0) std::memcpy(buffer.data(), bytes.data() + *offset, n);
    *offset += n;
    return n;
  };
  UploadReadAt read_at = [bytes](std::uint64_t offset,
                                 std::span<std::byte> buffer) -> std::expected<std::size_t, std::string> {
    if (offset >= bytes.size()) return 0;
    const std::size_t n = std::min<std::uint64_t>(buffer.size(), bytes.size() - offset);
    std::memcpy(buffer.data(), bytes.data() + offset, n);
    return n;
  };
  return UploadSource(std::move(read), std::move(read_at));
}

// The xorb size a session uses for `wanted`: at least two chunks of the largest size (so that
// every chunk fits some xorb), at most the CAS limit.
static std::size_t clamped_xorb_bytes(std::size_t wanted) {
  return std::clamp<std::size_t>(wanted, 2 * (xet::kChunkHeaderSize + xet::kMaxChunkSize), xet::kMaxXorbSize);
}

std::uint64_t UploadOptions::memory_budget() const {
  const std::uint64_t blocks = (global_dedup ? dedup_window / read_piece : 0) + 2;
  return blocks * (read_piece + kBlockSlack) + xet::kMaxChunkSize +
         (std::max<std::size_t>(parallel_uploads, 1) + 1) * std::uint64_t{clamped_xorb_bytes(max_xorb_bytes)};
}

// ---- UploadSession ---------------------------------------------------------------------------

struct UploadSession::Impl {
  Impl(hub::CasClient& cas_client, cache::DedupIndex* index, UploadOptions opts)
      : cas(cas_client), dedup_index(index), options(opts), builder(opts.compression, xorb_limits(opts.max_xorb_bytes)) {
    options.max_xorb_bytes = clamped_xorb_bytes(options.max_xorb_bytes);
    options.parallel_uploads = std::max<std::size_t>(1, options.parallel_uploads);
    options.read_piece = std::max<std::size_t>(options.read_piece, 2 * xet::kMaxChunkSize);
    max_blocks = (options.global_dedup ? options.dedup_window / options.read_piece : 0) + 2;
  }

  static xet::XorbLimits xorb_limits(std::size_t wanted) {
    xet::XorbLimits limits;
    limits.max_serialized_size = clamped_xorb_bytes(wanted);
    limits.max_uncompressed_size = clamped_xorb_bytes(wanted);
    return limits;
  }

  ~Impl() {
    cancel.cancel();
    stop_workers();
    join_queries();
    give_buffers_back();
  }

  // Hands the session's read blocks and idle xorb buffers to options.buffer_pool (workers joined).
  void give_buffers_back() {
    UploadBufferPool* pool = options.buffer_pool;
    if (pool == nullptr) return;
    for (auto& block : blocks) block_pool.push_back(std::move(block.data));
    blocks.clear();
    for (auto& buffer : block_pool) {
      if (buffer.bytes) pool->give_block(std::move(buffer.bytes), buffer.length);
    }
    block_pool.clear();
    for (auto& buffer : free_buffers) pool->give_xorb_buffer(std::move(buffer));
    free_buffers.clear();
  }

  hub::CasClient& cas;
  cache::DedupIndex* dedup_index;
  UploadOptions options;
  http::CancellationToken cancel;  // fired on the first failure or by the caller's token
  SessionStats stats;
  bool failed = false;
  bool finished = false;

  // -- xorb table and shard content (caller thread) --
  std::vector<xet::Hash> xorb_hashes;  // by id; a new xorb's hash is set when it is finished
  std::unordered_map<xet::Hash, std::size_t> external_ids;  // xorbs the session did not create
  std::vector<xet::Hash> local_xorbs;                        // ... of them, found through dedup_index
  std::unordered_map<xet::Hash, Location> session_chunks;   // chunks of the session's new xorbs
  std::vector<KeyedChunks> answers;                          // global dedup knowledge
  std::vector<FileRecord> files;
  xet::UploadShardBuilder shard;
  xet::XorbBuilder builder;
  std::optional<std::size_t> open_xorb;  // id of the xorb `builder` is filling
  std::uint64_t builder_capacity = 0;    // the capacity of a buffer recycled into `builder`

  // -- read blocks (caller thread) --
  std::deque<Block> blocks;  // blocks[i] has sequence number front_seq + i
  std::uint64_t front_seq = 0;
  std::vector<ReadBuffer> block_pool;
  std::size_t max_blocks = 2;
  std::uint64_t blocks_allocated_bytes = 0;  // read blocks and `reread`
  xet::Bytes reread;                         // a dropped chunk read again

  // -- xorb upload workers --
  std::mutex mutex;
  std::condition_variable changed;
  std::deque<XorbJob> queue;            // GUARDED_BY(mutex)
  std::size_t alive = 0;                // submitted, not yet uploaded; GUARDED_BY(mutex)
  std::vector<xet::Bytes> free_buffers;  // uploaded xorbs' buffers; GUARDED_BY(mutex)
  std::uint64_t xorb_held_bytes = 0;    // capacity of queued, in-flight and free buffers; GUARDED_BY(mutex)
  std::optional<UploadError> worker_error;  // GUARDED_BY(mutex)
  bool stopping = false;                    // GUARDED_BY(mutex)
  std::vector<std::jthread> workers;

  // -- global dedup queries --
  struct Answer {
    std::uint64_t file_index = 0;
    std::optional<xet::Shard> shard;
    bool error = false;
  };
  std::mutex query_mutex;
  std::condition_variable query_done;
  std::vector<Answer> answered;  // GUARDED_BY(query_mutex)
  std::size_t queries_in_flight = 0;  // GUARDED_BY(query_mutex)
  std::vector<std::jthread> query_threads;

  void sample_peak() {
    std::uint64_t xorbs;
    {
      std::lock_guard lock(mutex);
      xorbs = xorb_held_bytes;
    }
    // A builder that was not given a recycled buffer reserves a whole xorb when it starts.
    const std::uint64_t building = builder.empty() ? builder_capacity
                                                   : std::max<std::uint64_t>(builder_capacity, options.max_xorb_bytes);
    stats.peak_buffered_bytes = std::max(stats.peak_buffered_bytes, blocks_allocated_bytes + xorbs + building);
  }

  // ---- workers ----

  void start_workers() {
    if (!workers.empty()) return;
    for (std::size_t i = 0; i < options.parallel_uploads; ++i) {
      workers.emplace_back([this] { work(); });
    }
  }

  void stop_workers() {
    {
      std::lock_guard lock(mutex);
      stopping = true;
    }
    changed.notify_all();
    workers.clear();  // joins
  }

  void work() {
    for (;;) {
      XorbJob job;
      {
        std::unique_lock lock(mutex);
        changed.wait(lock, [&] { return stopping || !queue.empty(); });
        if (queue.empty()) return;
        job = std::move(queue.front());
        queue.pop_front();
      }
      auto sent = cas.upload_xorb(job.xorb.hash, job.xorb.bytes, &cancel);
      bool index_error = false;
      if (sent && dedup_index != nullptr) {
        std::vector<cache::DedupRecord> records;
        records.reserve(job.xorb.chunks.size());
        for (std::size_t i = 0; i < job.xorb.chunks.size(); ++i) {
          const auto& chunk = job.xorb.chunks[i];
          records.push_back({chunk.hash, {job.xorb.hash, static_cast<std::uint32_t>(i), chunk.uncompressed_size}});
        }
        index_error = !dedup_index->put_many(records);
      }
      {
        std::lock_guard lock(mutex);
        --alive;
        if (sent) {
          stats.xorbs_uploaded++;
          stats.xorb_bytes_sent += job.xorb.bytes.size();
          stats.dedup_index_errors += index_error ? 1 : 0;
          job.xorb.bytes.clear();
          free_buffers.push_back(std::move(job.xorb.bytes));
        } else {
          xorb_held_bytes -= job.xorb.bytes.capacity();
          if (!worker_error) worker_error = remote("upload xorb " + job.xorb.hash.to_string(), sent.error()).error();
          cancel.cancel();
        }
      }
      changed.notify_all();
    }
  }

  std::optional<UploadError> worker_failure() {
    std::lock_guard lock(mutex);
    return worker_error;
  }

  // Finishes the open xorb and queues it, waiting while parallel_uploads xorbs are alive.
  UploadResult<void> submit_open_xorb() {
    if (!open_xorb) return {};
    const std::size_t id = *open_xorb;
    open_xorb.reset();
    sample_peak();
    XorbJob job{id, builder.finish()};
    builder_capacity = 0;
    xorb_hashes[id] = job.xorb.hash;
    auto info = xet::make_xorb_info(job.xorb.hash, job.xorb.chunk_hashes(),
                                    static_cast<std::uint32_t>(job.xorb.bytes.size()));
    if (!info) return fail(UploadErrorKind::internal, "xorb info: " + info.error().describe());
    if (auto added = shard.add_xorb(std::move(*info)); !added) {
      return fail(UploadErrorKind::internal, "shard xorb: " + added.error().describe());
    }
    start_workers();
    {
      std::unique_lock lock(mutex);
      changed.wait(lock, [&] { return worker_error || alive < options.parallel_uploads; });
      if (worker_error) return std::unexpected(*worker_error);
      xorb_held_bytes += job.xorb.bytes.capacity();
      queue.push_back(std::move(job));
      ++alive;
    }
    changed.notify_all();
    return {};
  }

  // Gives the builder an uploaded xorb's buffer, when one is free.
  void recycle_into_builder() {
    if (!builder.empty()) return;
    std::lock_guard lock(mutex);
    if (free_buffers.empty() && builder_capacity == 0 && options.buffer_pool != nullptr) {
      xet::Bytes kept = options.buffer_pool->take_xorb_buffer();
      if (kept.capacity() > 0) {
        stats.pooled_xorb_buffers++;
        builder_capacity = kept.capacity();
        builder.recycle(std::move(kept));
      }
      return;
    }
    if (free_buffers.empty()) return;
    xet::Bytes buffer = std::move(free_buffers.back());
    free_buffers.pop_back();
    xorb_held_bytes -= buffer.capacity();
    builder_capacity = buffer.capacity();
    builder.recycle(std::move(buffer));
  }

  UploadResult<void> wait_uploads() {
    std::unique_lock lock(mutex);
    changed.wait(lock, [&] { return worker_error || alive == 0; });
    if (worker_error) return std::unexpected(*worker_error);
    return {};
  }

  // ---- global dedup ----

  void launch_query(const xet::Hash& hash, std::uint64_t file_index) {
    {
      std::lock_guard lock(query_mutex);
      ++queries_in_flight;
    }
    query_threads.emplace_back([this, hash, file_index] {
      auto result = cas.dedup_query(hash, &cancel);
      {
        std::lock_guard lock(query_mutex);
        Answer answer;
        answer.file_index = file_index;
        if (result && *result) {
          answer.shard = std::move(**result);
        } else if (!result) {
          answer.error = true;
        }
        answered.push_back(std::move(answer));
        --queries_in_flight;
      }
      query_done.notify_all();
    });
  }

  void join_queries() { query_threads.clear(); }

  std::size_t in_flight_queries() {
    std::lock_guard lock(query_mutex);
    return queries_in_flight;
  }

  std::size_t external_id(const xet::Hash& xorb) {
    auto [it, inserted] = external_ids.try_emplace(xorb, xorb_hashes.size());
    if (inserted) xorb_hashes.push_back(xorb);
    return it->second;
  }

  std::optional<Location> find_in_answers(const xet::Hash& hash, std::uint32_t size) const {
    for (const auto& keyed : answers) {
      auto it = keyed.chunks.find(xet::keyed_chunk_hash(hash, keyed.key));
      if (it != keyed.chunks.end() && it->second.size == size) return it->second;
    }
    return std::nullopt;
  }

  // ---- per file ----

  struct FileState {
    UploadStats stats;
    xet::AggregatedHasher hasher;
    FileRecord record;
    std::optional<OpenTerm> term;
    std::vector<xet::Hash> term_hashes;
    std::deque<PendingChunk> pending;
    std::unordered_map<std::uint64_t, cache::DedupEntry> local_hits;  // by file_index, pending only
    std::deque<QueryEntry> queries;  // not yet answered, or answered behind an unanswered one
    // Every query at or before this chunk index has been answered.
    std::optional<std::uint64_t> answered_prefix;
    std::uint64_t chunk_offset = 0;  // file offset of the next chunk found
    std::uint64_t chunk_count = 0;
    // Positional reads of the source (file offsets as the sequential reads counted them).
    std::shared_ptr<const UploadReadAt> read_at;
    bool seekable = false;  // chunks may still be dropped
  };

  // Takes in the answers that arrived.
  void collect_answers(FileState& f) {
    std::vector<Answer> arrived;
    {
      std::lock_guard lock(query_mutex);
      arrived.swap(answered);
    }
    const auto now = static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
            .count());
    for (auto& answer : arrived) {
      auto entry = std::lower_bound(f.queries.begin(), f.queries.end(), answer.file_index,
                                    [](const QueryEntry& q, std::uint64_t index) { return q.file_index < index; });
      if (entry != f.queries.end() && entry->file_index == answer.file_index) entry->state = QueryEntry::answered;
      if (answer.error) stats.dedup_query_errors++;
      if (!answer.shard) continue;
      const auto& shard_answer = *answer.shard;
      if (shard_answer.footer && shard_answer.footer->expired(now)) continue;
      f.stats.dedup_query_hits++;
      const xet::Hash key = shard_answer.chunk_key().value_or(xet::Hash{});
      auto slot = std::find_if(answers.begin(), answers.end(), [&](const KeyedChunks& k) { return k.key == key; });
      if (slot == answers.end()) slot = answers.insert(answers.end(), KeyedChunks{key, {}});
      for (const auto& xorb : shard_answer.xorbs) {
        const std::size_t id = external_id(xorb.xorb_hash);
        for (std::size_t i = 0; i < xorb.chunks.size(); ++i) {
          slot->chunks.try_emplace(xorb.chunks[i].chunk_hash,
                                   Location{id, static_cast<std::uint32_t>(i), xorb.chunks[i].unpacked_bytes});
        }
      }
    }
    pump_queries(f);
  }

  bool known(const FileState& f, const xet::Hash& hash, std::uint32_t size, std::uint64_t file_index) const {
    if (auto it = session_chunks.find(hash); it != session_chunks.end() && it->second.size == size) return true;
    if (auto it = f.local_hits.find(file_index); it != f.local_hits.end() && it->second.size == size) return true;
    return find_in_answers(hash, size).has_value();
  }

  // Launches queued queries (in file order) while fewer than max_dedup_queries are in flight; a
  // queued chunk that became known meanwhile needs no query. Then advances the answered prefix.
  void pump_queries(FileState& f) {
    std::size_t flying = in_flight_queries();
    for (auto& q : f.queries) {
      if (flying >= std::max<std::size_t>(1, options.max_dedup_queries)) break;
      if (q.state != QueryEntry::queued) continue;
      if (q.file_index != 0 && known(f, q.hash, q.size, q.file_index)) {
        q.state = QueryEntry::answered;
        continue;
      }
      q.state = QueryEntry::in_flight;
      f.stats.dedup_queries++;
      launch_query(q.hash, q.file_index);
      ++flying;
    }
    while (!f.queries.empty() && f.queries.front().state == QueryEntry::answered) {
      f.answered_prefix = f.queries.front().file_index;
      f.queries.pop_front();
    }
  }

  // Blocks until an answer arrives (or nothing is in flight).
  void wait_for_answer(std::optional<std::chrono::milliseconds> limit) {
    std::unique_lock lock(query_mutex);
    auto arrived = [&] { return !answered.empty() || queries_in_flight == 0; };
    if (limit) {
      query_done.wait_for(lock, *limit, arrived);
    } else {
      query_done.wait(lock, arrived);
    }
  }

  void close_term(FileState& f) {
    if (!f.term) return;
    f.record.verification.push_back(xet::verification_hash(f.term_hashes));
    f.record.terms.push_back(*f.term);
    f.term.reset();
    f.term_hashes.clear();
  }

  void append_to_term(FileState& f, const PendingChunk& chunk, const Location& where) {
    if (f.term && (f.term->xorb_id != where.xorb_id || f.term->end != where.index)) close_term(f);
    if (!f.term) f.term = OpenTerm{where.xorb_id, where.index, where.index, 0};
    f.term->end++;
    f.term->bytes += chunk.size;
    f.term_hashes.push_back(chunk.hash);
  }

  // The bytes of a pending chunk: from its block, or read again from the source and checked.
  UploadResult<xet::ByteSpan> chunk_bytes(FileState& f, const PendingChunk& chunk) {
    if (chunk.block_seq != kDropped) {
      const Block& block = blocks[chunk.block_seq - front_seq];
      return xet::ByteSpan(block.data.span()).subspan(static_cast<std::size_t>(chunk.file_offset - block.start), chunk.size);
    }
    if (reread.empty()) {
      reread.resize(xet::kMaxChunkSize);
      blocks_allocated_bytes += reread.size();
    }
    const auto span = std::span(reread).first(chunk.size);
    auto n = (*f.read_at)(chunk.file_offset, span);
    if (!n) return fail(UploadErrorKind::source, n.error());
    if (*n != chunk.size || xet::chunk_hash(span) != chunk.hash) {
      return fail(UploadErrorKind::source, "the source changed while it was uploaded (chunk at offset " +
                                               std::to_string(chunk.file_offset) + " reads differently)");
    }
    f.stats.reread_bytes += chunk.size;
    return xet::ByteSpan(span);
  }

  // Decides the oldest pending chunk: reference it where it already is, or pack it.
  UploadResult<void> decide_front(FileState& f) {
    PendingChunk chunk = f.pending.front();
    f.pending.pop_front();
    std::optional<cache::DedupEntry> local;
    if (chunk.local) {
      auto it = f.local_hits.find(chunk.file_index);
      local = it->second;
      f.local_hits.erase(it);
    }
    std::optional<Location> where;
    if (auto it = session_chunks.find(chunk.hash); it != session_chunks.end() && it->second.size == chunk.size) {
      where = it->second;
      f.stats.session_dedup_chunks++;
    } else if (local && local->size == chunk.size) {
      where = Location{external_id(local->xorb), local->chunk_index, chunk.size};
      if (std::find(local_xorbs.begin(), local_xorbs.end(), local->xorb) == local_xorbs.end()) {
        local_xorbs.push_back(local->xorb);
      }
      f.stats.local_dedup_chunks++;
    } else if (auto found = find_in_answers(chunk.hash, chunk.size)) {
      where = found;
      f.stats.global_dedup_chunks++;
    }
    if (!where) {
      auto bytes = chunk_bytes(f, chunk);
      if (!bytes) return std::unexpected(bytes.error());
      if (!builder.would_fit(chunk.size)) {
        if (auto submitted = submit_open_xorb(); !submitted) return submitted;
      }
      recycle_into_builder();
      if (!open_xorb) {
        open_xorb = xorb_hashes.size();
        xorb_hashes.emplace_back();
      }
      const auto index = static_cast<std::uint32_t>(builder.chunk_count());
      auto added = builder.add_chunk(*bytes, chunk.hash);
      if (!added) return fail(UploadErrorKind::internal, "xorb: " + added.error().describe());
      where = Location{*open_xorb, index, chunk.size};
      if (session_chunks.size() < options.max_session_chunks) session_chunks.try_emplace(chunk.hash, *where);
      f.stats.new_chunks++;
      f.stats.new_chunk_bytes += chunk.size;
    }
    append_to_term(f, chunk, *where);
    if (chunk.block_seq != kDropped) blocks[chunk.block_seq - front_seq].pending--;
    release_blocks();
    return {};
  }

  // Whether the oldest pending chunk may be decided now without losing a dedup answer (the rule
  // of step 3 in upload.h).
  bool front_ready(FileState& f, bool eof) {
    const PendingChunk& chunk = f.pending.front();
    if (!options.global_dedup) return true;
    if (known(f, chunk.hash, chunk.size, chunk.file_index)) return true;
    if (f.answered_prefix && *f.answered_prefix >= chunk.file_index) return true;
    return eof && f.queries.empty();
  }

  // Decides pending chunks: those that are ready; with `free_block`, also the oldest ones until
  // the oldest block is released (the window is full); with `eof`, waits for every answer first.
  UploadResult<void> drain(FileState& f, bool free_block, bool eof) {
    collect_answers(f);
    if (eof && options.global_dedup) {
      while (!f.queries.empty()) {
        if (cancel.cancelled()) return cancelled_or_worker_error();
        wait_for_answer(std::nullopt);
        collect_answers(f);
      }
    }
    if (free_block && in_flight_queries() > 0) {
      const auto deadline = std::chrono::steady_clock::now() + options.dedup_wait;
      while (in_flight_queries() > 0) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0) break;
        wait_for_answer(left);
        collect_answers(f);
      }
    }
    collect_answers(f);
    const std::uint64_t block_to_free = front_seq;
    while (!f.pending.empty()) {
      const PendingChunk& front = f.pending.front();
      const bool forced = eof || (free_block && (front.block_seq == block_to_free || front.block_seq == kDropped));
      if (!forced && !front_ready(f, eof)) break;
      if (auto decided = decide_front(f); !decided) return decided;
    }
    return {};
  }

  // Drops the bytes of the oldest block; its undecided chunks wait as metadata (seekable only).
  void drop_front_block(FileState& f) {
    for (auto& chunk : f.pending) {
      if (chunk.block_seq == kDropped) continue;
      if (chunk.block_seq != front_seq) break;
      chunk.block_seq = kDropped;
    }
    blocks.front().pending = 0;
    release_blocks();
  }

  void release_blocks() {
    // The last block is the one being read into; keep it.
    while (blocks.size() > 1 && blocks.front().pending == 0) {
      block_pool.push_back(std::move(blocks.front().data));
      blocks.pop_front();
      front_seq++;
    }
  }

  ReadBuffer take_block_buffer() {
    if (!block_pool.empty()) {
      auto buffer = std::move(block_pool.back());
      block_pool.pop_back();
      return buffer;
    }
    const std::size_t size = options.read_piece + kBlockSlack;
    std::unique_ptr<std::byte[]> kept = options.buffer_pool != nullptr ? options.buffer_pool->take_block(size) : nullptr;
    if (kept) {
      std::lock_guard lock(mutex);
      stats.pooled_blocks++;
    }
    ReadBuffer buffer{kept ? std::move(kept) : std::make_unique_for_overwrite<std::byte[]>(size), size};
    blocks_allocated_bytes += buffer.size();
    return buffer;
  }

  // Looks the block's new chunks up in the DedupIndex and queues global dedup queries for the
  // first chunk and every eligible chunk not known already.
  void classify(FileState& f, std::size_t first_new) {
    if (dedup_index != nullptr && options.local_dedup_lookups && first_new < f.pending.size()) {
      std::vector<xet::Hash> hashes;
      hashes.reserve(f.pending.size() - first_new);
      for (std::size_t i = first_new; i < f.pending.size(); ++i) hashes.push_back(f.pending[i].hash);
      if (auto found = dedup_index->get_many(hashes)) {
        for (std::size_t i = 0; i < found->size(); ++i) {
          if (!(*found)[i]) continue;
          PendingChunk& chunk = f.pending[first_new + i];
          chunk.local = true;
          f.local_hits.insert_or_assign(chunk.file_index, *(*found)[i]);
        }
      } else {
        std::lock_guard lock(mutex);
        stats.dedup_index_errors++;
      }
    }
    if (!options.global_dedup) return;
    for (std::size_t i = first_new; i < f.pending.size(); ++i) {
      const PendingChunk& chunk = f.pending[i];
      const bool first = chunk.file_index == 0;
      if (!first && !xet::hash_is_global_dedup_eligible(chunk.hash)) continue;
      if (!first && known(f, chunk.hash, chunk.size, chunk.file_index)) continue;
      f.queries.push_back(QueryEntry{chunk.file_index, chunk.hash, chunk.size});
    }
    pump_queries(f);
  }

  UploadResult<UploadStats> add_file(const UploadSource& source, const http::CancellationToken* caller) {
    if (failed || finished) return fail(UploadErrorKind::internal, "upload session already failed or finished");
    http::CancellationToken::Registration link;
    if (caller != nullptr) link = caller->on_cancel([this] { cancel.cancel(); });
    auto result = run_file(source);
    join_queries();
    if (!result) failed = true;
    return result;
  }

  UploadResult<UploadStats> run_file(const UploadSource& source) {
    FileState f;
    if (source.seekable()) {
      f.read_at = source.positional();
      f.seekable = true;
    }
    std::uint64_t open_start = 0;  // file offset of the open chunk
    std::uint64_t read_total = 0;
    bool eof = false;
    while (!eof) {
      if (cancel.cancelled()) return cancelled_or_worker_error();
      if (auto error = worker_failure()) return std::unexpected(*error);
      while (blocks.size() >= max_blocks) {
        if (f.seekable && f.read_at && f.pending.size() < options.max_held_chunks) {
          if (auto drained = drain(f, false, false); !drained) return std::unexpected(drained.error());
          if (blocks.size() >= max_blocks) drop_front_block(f);
          continue;
        }
        if (auto drained = drain(f, /*free_block=*/true, /*eof=*/false); !drained) return std::unexpected(drained.error());
      }
      // New block: carry the open chunk's bytes over, then read.
      Block next;
      next.data = take_block_buffer();
      const std::size_t carry = static_cast<std::size_t>(read_total - open_start);
      if (carry > 0) {
        const Block& previous = blocks.back();
        std::memcpy(next.data.data(), previous.data.data() + previous.used - carry, carry);
      }
      next.used = carry;
      next.start = open_start;
      while (next.used < next.data.size()) {
        auto n = source(next.data.span().subspan(next.used));
        if (!n) return fail(UploadErrorKind::source, n.error());
        if (*n == 0) {
          eof = true;
          break;
        }
        next.used += *n;
      }
      const std::size_t fresh = next.used - carry;
      read_total += fresh;
      blocks.push_back(std::move(next));
      const std::uint64_t seq = front_seq + blocks.size() - 1;
      Block& block = blocks.back();
      const std::size_t first_new = f.pending.size();
      auto add_chunk = [&](const xet::HashAndSize& chunk) {
        PendingChunk pending;
        pending.hash = chunk.hash;
        pending.size = static_cast<std::uint32_t>(chunk.size);
        pending.block_seq = seq;
        pending.file_offset = open_start;
        pending.file_index = f.chunk_count++;
        f.hasher.add(chunk);
        open_start += chunk.size;
        f.chunk_offset = open_start;
        block.pending++;
        f.pending.push_back(pending);
      };
      // The block starts with the open chunk's bytes (the carry), so it starts at a boundary.
      for (const auto& chunk : xet::chunk_and_hash(xet::ByteSpan(block.data.span()).first(block.used), eof).chunks) {
        add_chunk(chunk);
      }
      f.stats.peak_held_chunks = std::max<std::uint64_t>(f.stats.peak_held_chunks, f.pending.size());
      classify(f, first_new);
      if (auto drained = drain(f, false, eof); !drained) return std::unexpected(drained.error());
      release_blocks();
      sample_peak();
    }
    close_term(f);
    f.stats.size = read_total;
    f.stats.chunks = f.chunk_count;
    f.stats.terms = f.record.terms.size();
    f.stats.seekable = f.read_at != nullptr && f.seekable;
    f.stats.file_hash = f.chunk_count == 0 ? xet::Hash{} : xet::file_hash_from_root(f.hasher.finish());
    f.record.file_hash = f.stats.file_hash;
    files.push_back(std::move(f.record));
    stats.files++;
    // Keep the last block only while it has undecided chunks (none now).
    while (!blocks.empty() && blocks.front().pending == 0) {
      block_pool.push_back(std::move(blocks.front().data));
      blocks.pop_front();
      front_seq++;
    }
    return f.stats;
  }

  std::unexpected<UploadError> cancelled_or_worker_error() {
    if (auto error = worker_failure()) return std::unexpected(*error);
    return fail(UploadErrorKind::cancelled, "upload cancelled");
  }

  UploadResult<SessionStats> finish(const http::CancellationToken* caller) {
    if (failed || finished) return fail(UploadErrorKind::internal, "upload session already failed or finished");
    finished = true;
    http::CancellationToken::Registration link;
    if (caller != nullptr) link = caller->on_cancel([this] { cancel.cancel(); });
    if (auto submitted = submit_open_xorb(); !submitted) return std::unexpected(submitted.error());
    if (auto waited = wait_uploads(); !waited) return std::unexpected(waited.error());
    stop_workers();
    for (const auto& record : files) {
      xet::FileInfo info;
      info.file_hash = record.file_hash;
      info.verification = record.verification;
      for (const auto& term : record.terms) {
        info.terms.push_back(xet::FileTerm{xorb_hashes[term.xorb_id], 0, term.bytes, term.start, term.end});
      }
      if (auto added = shard.add_file(std::move(info)); !added) {
        return fail(UploadErrorKind::internal, "shard file: " + added.error().describe());
      }
    }
    if (shard.empty()) return stats;
    auto bytes = shard.serialize();
    if (!bytes) return fail(UploadErrorKind::internal, "shard: " + bytes.error().describe());
    stats.shard_bytes = bytes->size();
    if (cancel.cancelled()) return fail(UploadErrorKind::cancelled, "upload cancelled");
    auto uploaded = cas.upload_shard(*bytes, &cancel);
    if (!uploaded) {
      auto error = remote("upload shard", uploaded.error());
      if (uploaded.error().kind == hub::HubErrorKind::invalid && dedup_index != nullptr && !local_xorbs.empty()) {
        error.error().stale_local_dedup = true;
        auto forgotten = dedup_index->forget_xorbs(local_xorbs);
        error.error().message += forgotten ? "; dropped " + std::to_string(*forgotten) + " dedup index entries of " +
                                                 std::to_string(local_xorbs.size()) + " xorbs it referenced"
                                           : "; dropping the dedup index entries it referenced failed: " +
                                                 forgotten.error().message;
      }
      return error;
    }
    return stats;
  }
};

std::unique_ptr<std::byte[]> UploadBufferPool::take_block(std::size_t size) {
  std::lock_guard lock(mutex_);
  for (auto it = blocks_.begin(); it != blocks_.end(); ++it) {
    if (it->second != size) continue;
    auto block = std::move(it->first);
    idle_bytes_ -= size;
    blocks_.erase(it);
    return block;
  }
  return nullptr;
}

void UploadBufferPool::give_block(std::unique_ptr<std::byte[]> block, std::size_t size) {
  if (!block) return;
  std::lock_guard lock(mutex_);
  if (idle_bytes_ + size > max_idle_bytes_) return;
  idle_bytes_ += size;
  blocks_.emplace_back(std::move(block), size);
}

xet::Bytes UploadBufferPool::take_xorb_buffer() {
  std::lock_guard lock(mutex_);
  if (xorb_buffers_.empty()) return {};
  xet::Bytes buffer = std::move(xorb_buffers_.back());
  xorb_buffers_.pop_back();
  idle_bytes_ -= buffer.capacity();
  return buffer;
}

void UploadBufferPool::give_xorb_buffer(xet::Bytes buffer) {
  if (buffer.capacity() == 0) return;
  buffer.clear();
  std::lock_guard lock(mutex_);
  if (idle_bytes_ + buffer.capacity() > max_idle_bytes_) return;
  idle_bytes_ += buffer.capacity();
  xorb_buffers_.push_back(std::move(buffer));
}

std::size_t UploadBufferPool::idle_bytes() const {
  std::lock_guard lock(mutex_);
  return idle_bytes_;
}

UploadSession::UploadSession(hub::CasClient& cas, cache::DedupIndex* dedup_index, UploadOptions options)
    : impl_(std::make_unique<Impl>(cas, dedup_index, options)) {}

UploadSession::~UploadSession() = default;

UploadResult<UploadStats> UploadSession::add_file(const UploadSource& source, const http::CancellationToken* cancel) {
  return impl_->add_file(source, cancel);
}

UploadResult<SessionStats> UploadSession::finish(const http::CancellationToken* cancel) {
  auto result = impl_->finish(cancel);
  if (!result) impl_->failed = true;
  return result;
}

const SessionStats& UploadSession::stats() const { return impl_->stats; }

// ---- Uploader --------------------------------------------------------------------------------

Uploader::Uploader(hub::CasClient& cas, hub::HubClient& hub, cache::DedupIndex* dedup_index, UploadOptions options)
    : cas_(cas), hub_(hub), dedup_index_(dedup_index), options_(options) {}

UploadResult<UploadedFile> Uploader::upload(const UploadSource& source, const http::CancellationToken* cancel) {
  auto attempt = [&](const UploadSource& from, UploadOptions options) -> UploadResult<UploadedFile> {
    UploadSession session(cas_, dedup_index_, options);
    auto file = session.add_file(from, cancel);
    if (!file) return std::unexpected(file.error());
    auto totals = session.finish(cancel);
    if (!totals) return std::unexpected(totals.error());
    return UploadedFile{*file, *totals};
  };
  auto uploaded = attempt(source, options_);
  if (uploaded || !uploaded.error().stale_local_dedup || !source.seekable()) return uploaded;
  // Once more from byte 0, through the positional reader, without index lookups.
  auto offset = std::make_shared<std::uint64_t>(0);
  const UploadSource again(
      [offset, positional = source.positional()](std::span<std::byte> buffer) -> std::expected<std::size_t, std::string> {
        auto got = (*positional)(*offset, buffer);
        if (got) *offset += *got;
        return got;
      },
      [positional = source.positional()](std::uint64_t at, std::span<std::byte> buffer) {
        return (*positional)(at, buffer);
      });
  UploadOptions without_lookups = options_;
  without_lookups.local_dedup_lookups = false;
  return attempt(again, without_lookups);
}

UploadResult<void> Uploader::commit(const naming::BucketId& bucket, const std::string& path,
                                    const xet::Hash& file_hash, std::optional<std::int64_t> mtime_ms,
                                    const http::CancellationToken* cancel) {
  const std::vector operations{hub::BatchOperation::add(path, file_hash, mtime_ms)};
  auto result = hub_.batch(bucket, operations, cancel);
  if (!result) return remote("commit " + path, result.error());
  if (!result->success || !result->failed.empty()) {
    std::string why = result->failed.empty() ? std::string("refused") : result->failed.front().error;
    return fail(UploadErrorKind::rejected, "commit " + path + ": " + why);
  }
  return {};
}

UploadResult<UploadedFile> Uploader::upload_and_commit(const naming::BucketId& bucket, const std::string& path,
                                                       const UploadSource& source,
                                                       std::optional<std::int64_t> mtime_ms,
                                                       const http::CancellationToken* cancel) {
  auto uploaded = upload(source, cancel);
  if (!uploaded) return uploaded;
  if (auto committed = commit(bucket, path, uploaded->file.file_hash, mtime_ms, cancel); !committed) {
    return std::unexpected(committed.error());
  }
  return uploaded;
}

}  // namespace bucketfs::transfer
