// Downloader: see include/bucketfs/transfer/download.h for the pipeline, memory and verification
// contracts. Layout of this file: errors; the buffer pool; the streaming range decoder; one call
// (CallState: jobs, workers, the in-order emitter); the Downloader methods.
#include "bucketfs/transfer/download.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>

#include "bucketfs/xet/chunker.h"
#include "bucketfs/xet/compression.h"
#include "bucketfs/xet/xorb.h"

namespace bucketfs::transfer {

std::string_view to_string(DownloadErrorKind kind) {
  switch (kind) {
    case DownloadErrorKind::hub: return "hub";
    case DownloadErrorKind::corrupt: return "corrupt";
    case DownloadErrorKind::cancelled: return "cancelled";
    case DownloadErrorKind::invalid_argument: return "invalid argument";
  }
  return "unknown";
}

std::string DownloadError::describe() const {
  if (kind == DownloadErrorKind::hub) return std::string("download: ") + std::string(hub::to_string(hub_kind)) + ": " + message;
  return std::string("download: ") + std::string(to_string(kind)) + ": " + message;
}

namespace {

constexpr std::size_t kMiB = std::size_t{1} << 20;

std::unexpected<DownloadError> fail(DownloadErrorKind kind, std::string message) {
  return std::unexpected(DownloadError{kind, hub::HubErrorKind::server, std::move(message)});
}

DownloadError from_hub(const hub::HubError& error) {
  DownloadError out;
  out.kind = error.kind == hub::HubErrorKind::cancelled ? DownloadErrorKind::cancelled : DownloadErrorKind::hub;
  out.hub_kind = error.kind;
  out.message = error.message;
  return out;
}

DownloadError corrupt(std::string message) {
  return DownloadError{DownloadErrorKind::corrupt, hub::HubErrorKind::server, std::move(message)};
}

std::string short_hash(const xet::Hash& hash) { return hash.to_string().substr(0, 16); }

void raise_to(std::atomic<std::uint64_t>& peak, std::uint64_t value) {
  std::uint64_t seen = peak.load(std::memory_order_relaxed);
  while (value > seen && !peak.compare_exchange_weak(seen, value, std::memory_order_relaxed)) {
  }
}

// A decoded-data buffer: uninitialized on allocation (no page is touched until written).
struct Buffer {
  std::unique_ptr<std::byte[]> data;
  std::size_t capacity = 0;
  std::span<std::byte> span() const { return {data.get(), capacity}; }
};

// Idle buffers shared by the calls of one Downloader, at most `limit` bytes of them.
class BufferPool {
 public:
  explicit BufferPool(std::size_t limit) : limit_(limit) {}

  // The smallest idle buffer of at least `need` bytes and at most `max_capacity`, or a new one of
  // `need` bytes.
  Buffer acquire(std::size_t need, std::size_t max_capacity) {
    {
      std::lock_guard lock(mutex_);
      auto best = idle_.end();
      for (auto it = idle_.begin(); it != idle_.end(); ++it) {
        if (it->capacity >= need && it->capacity <= max_capacity &&
            (best == idle_.end() || it->capacity < best->capacity)) {
          best = it;
        }
      }
      if (best != idle_.end()) {
        Buffer out = std::move(*best);
        idle_.erase(best);
        idle_bytes_ -= out.capacity;
        return out;
      }
    }
    allocated_.fetch_add(1, std::memory_order_relaxed);
    return Buffer{std::make_unique_for_overwrite<std::byte[]>(need), need};
  }

  std::uint64_t allocated() const { return allocated_.load(std::memory_order_relaxed); }

  void release(Buffer buffer) {
    if (!buffer.data) return;
    std::lock_guard lock(mutex_);
    // Make room by dropping smaller idle buffers: a large buffer serves more jobs.
    std::sort(idle_.begin(), idle_.end(), [](const Buffer& a, const Buffer& b) { return a.capacity > b.capacity; });
    while (!idle_.empty() && idle_bytes_ + buffer.capacity > limit_ && idle_.back().capacity < buffer.capacity) {
      idle_bytes_ -= idle_.back().capacity;
      idle_.pop_back();
    }
    if (idle_bytes_ + buffer.capacity <= limit_) {
      idle_bytes_ += buffer.capacity;
      idle_.push_back(std::move(buffer));
    }
  }

 private:
  std::mutex mutex_;
  std::size_t limit_;
  std::vector<Buffer> idle_;    // GUARDED_BY(mutex_)
  std::size_t idle_bytes_ = 0;  // GUARDED_BY(mutex_)
  std::atomic<std::uint64_t> allocated_{0};
};

// One fetched (or cache-read) range of a fetch entry, decoded into the job's buffer.
struct DecodedRange {
  bool present = false;
  std::vector<std::size_t> offsets;  // of each chunk in the job buffer
  std::vector<std::uint64_t> sizes;
  std::vector<xet::Hash> hashes;     // filled when hashing was asked for
  // Group values of the chunks that have them (xet::chunk_group_count), back to back in chunk
  // order: hashing a fetched chunk gives them at no extra cost, and the cache keeps them.
  std::vector<xet::Hash> groups;
};

// Per-worker state reused across jobs and calls: the decompressor's buffers and the carry buffer
// that holds a chunk split across network reads.
struct WorkerScratch {
  xet::ChunkDecompressor decompressor;
  xet::Bytes carry;
};

// Decodes the parts of one fetch entry as their bytes arrive (CasClient's XorbRangeSink), chunk
// by chunk, into `out`, hashing every chunk.
class StreamDecoder {
 public:
  StreamDecoder(const xet::XorbFetch& entry, std::span<std::byte> out, std::vector<DecodedRange>& ranges,
                WorkerScratch& scratch)
      : entry_(entry), out_(out), ranges_(ranges), scratch_(scratch) {
    scratch_.carry.clear();
    scratch_.carry.reserve(xet::kChunkHeaderSize + xet::kMaxCompressedChunkSize);
  }

  bool on_data(std::size_t part, std::uint64_t offset, std::span<const std::byte> data) {
    if (error_) return false;
    if (part >= ranges_.size()) return set_error("part " + std::to_string(part) + " was not asked for");
    // The transport resent the body (a retry): drop what this part and the later ones decoded.
    if (started_ && offset == 0 && (part < part_ || (part == part_ && received_ > 0))) rewind(part);
    if (!started_ || part != part_) {
      if (started_) {
        if (part != part_ + 1) return set_error("parts out of order");
        if (!finish_part()) return false;
      } else if (part != part_) {
        return set_error("parts out of order");
      }
      start_part(part);
    }
    if (offset != received_) return set_error("part " + std::to_string(part) + " resumed at a wrong offset");
    received_ += data.size();
    return feed(data);
  }

  // After the fetch succeeded: every part complete.
  std::optional<DownloadError> finish() {
    if (error_) return error_;
    if (!started_ || part_ + 1 != ranges_.size()) return corrupt("xorb " + short_hash(entry_.xorb) + ": parts missing");
    if (!finish_part()) return error_;
    return std::nullopt;
  }

  const std::optional<DownloadError>& error() const { return error_; }
  std::size_t used() const { return pos_; }

 private:
  bool set_error(std::string message) {
    if (!error_) error_ = corrupt("xorb " + short_hash(entry_.xorb) + ": " + message);
    return false;
  }

  void rewind(std::size_t part) {
    pos_ = part_begin_[part];
    for (std::size_t p = part; p < ranges_.size(); ++p) ranges_[p] = DecodedRange{};
    scratch_.carry.clear();
    started_ = false;
    part_ = part;
    received_ = 0;
  }

  void start_part(std::size_t part) {
    part_ = part;
    started_ = true;
    received_ = 0;
    part_begin_.resize(ranges_.size());
    part_begin_[part] = pos_;
    expected_chunks_ = entry_.ranges[part].chunks.size();
    ranges_[part] = DecodedRange{};
    ranges_[part].present = true;
    ranges_[part].offsets.reserve(expected_chunks_);
    ranges_[part].sizes.reserve(expected_chunks_);
    ranges_[part].hashes.reserve(expected_chunks_);
    scratch_.carry.clear();
  }

  bool finish_part() {
    if (!scratch_.carry.empty()) return set_error("range " + std::to_string(part_) + " ends inside a chunk");
    if (ranges_[part_].sizes.size() != expected_chunks_) {
      return set_error("range " + std::to_string(part_) + " holds " + std::to_string(ranges_[part_].sizes.size()) +
                       " chunks, expected " + std::to_string(expected_chunks_));
    }
    if (received_ != entry_.ranges[part_].bytes.length()) return set_error("range " + std::to_string(part_) + " is short");
    return true;
  }

  // Size of the chunk whose first bytes are `head` (>= 8 bytes), header included.
  std::optional<std::size_t> chunk_total(std::span<const std::byte> head) {
    auto header = xet::decode_chunk_header(head);
    if (!header) {
      set_error("chunk " + std::to_string(entry_.ranges[part_].chunks.start + ranges_[part_].sizes.size()) + ": " +
                header.error().describe());
      return std::nullopt;
    }
    return xet::kChunkHeaderSize + header->stored_size;
  }

  bool feed(std::span<const std::byte> data) {
    auto& carry = scratch_.carry;
    while (!data.empty()) {
      if (carry.empty() && data.size() >= xet::kChunkHeaderSize) {
        const auto total = chunk_total(data);
        if (!total) return false;
        if (data.size() >= *total) {  // a whole chunk in place: no copy
          if (!chunk(data.first(*total))) return false;
          data = data.subspan(*total);
          continue;
        }
      }
      // Accumulate in the carry buffer: first the header, then the rest of the chunk.
      if (carry.size() < xet::kChunkHeaderSize) {
        const std::size_t take = std::min(xet::kChunkHeaderSize - carry.size(), data.size());
        carry.insert(carry.end(), data.begin(), data.begin() + static_cast<std::ptrdiff_t>(take));
        data = data.subspan(take);
        if (carry.size() < xet::kChunkHeaderSize) break;
      }
      const auto total = chunk_total(carry);
      if (!total) return false;
      const std::size_t take = std::min(*total - carry.size(), data.size());
      carry.insert(carry.end(), data.begin(), data.begin() + static_cast<std::ptrdiff_t>(take));
      data = data.subspan(take);
      if (carry.size() == *total) {
        if (!chunk(carry)) return false;
        carry.clear();
      }
    }
    return true;
  }

  bool chunk(std::span<const std::byte> bytes) {
    auto& range = ranges_[part_];
    const std::uint64_t index = entry_.ranges[part_].chunks.start + range.sizes.size();
    if (range.sizes.size() >= expected_chunks_) return set_error("range " + std::to_string(part_) + " has extra chunks");
    auto header = xet::decode_chunk_header(bytes);
    if (!header) return set_error("chunk " + std::to_string(index) + ": " + header.error().describe());
    const std::size_t size = header->uncompressed_size;
    if (size > out_.size() - pos_) {
      return set_error("chunk " + std::to_string(index) + " decodes past the sizes the reconstruction declares");
    }
    const auto destination = out_.subspan(pos_, size);
    auto done = scratch_.decompressor.decompress_into(header->scheme, bytes.subspan(xet::kChunkHeaderSize), destination);
    if (!done) return set_error("chunk " + std::to_string(index) + ": " + done.error().describe());
    range.offsets.push_back(pos_);
    range.sizes.push_back(size);
    if (const std::size_t groups = xet::chunk_group_count(size); groups > 0) {
      range.groups.resize(range.groups.size() + groups);
      range.hashes.push_back(xet::chunk_group_values(destination, std::span(range.groups).last(groups)));
    } else {
      range.hashes.push_back(xet::chunk_hash(destination));
    }
    pos_ += size;
    return true;
  }

  const xet::XorbFetch& entry_;
  std::span<std::byte> out_;
  std::vector<DecodedRange>& ranges_;
  WorkerScratch& scratch_;
  std::optional<DownloadError> error_;
  std::size_t pos_ = 0;
  std::size_t part_ = 0;
  bool started_ = false;
  std::uint64_t received_ = 0;
  std::size_t expected_chunks_ = 0;
  std::vector<std::size_t> part_begin_;  // pos_ where each started part began
};

// A run of consecutive planned terms served by one fetch entry.
struct Job {
  std::size_t fetch = 0;
  std::size_t first_term = 0;
  std::size_t end_term = 0;
  std::uint64_t out_begin = 0;
  std::uint64_t out_end = 0;
  std::vector<std::size_t> needed;  // range indices the terms use, ascending
  std::size_t bound = 0;            // decoded upper bound of the whole entry, rounded up to 1 MiB
  std::optional<std::size_t> previous;  // the last earlier job of the same entry

  // Filled by the worker.
  Buffer buffer;
  std::vector<DecodedRange> ranges;
  std::vector<std::span<const std::byte>> pieces;  // the job's output, in order
  std::vector<xet::HashAndSize> leaves;            // chunks of its terms, in order (file hash)
  bool done = false;
  std::optional<DownloadError> error;
};

// What read_from_cache() knows of one file: its terms at their file offsets and, per term once
// looked up in the cache index, where each of its chunks ends within the term.
struct FileLayout {
  std::vector<xet::ReconstructionTerm> terms;
  std::vector<std::uint64_t> term_starts;  // file offset of each term, and the file size last
  std::mutex mutex;
  std::vector<std::vector<std::uint32_t>> chunk_ends;  // GUARDED_BY(mutex); empty: not looked up yet
};

}  // namespace

struct Downloader::Impl {
  Impl(hub::CasClient& cas_in, cache::ChunkCache* cache_in, DownloaderOptions options_in)
      : cas(cas_in),
        cache(cache_in),
        options(options_in),
        pool(std::max<std::size_t>(options_in.buffer_budget, kMiB)) {
    options.parallel_fetches = std::max<std::size_t>(options.parallel_fetches, 1);
    options.buffer_budget = std::max<std::size_t>(options.buffer_budget, kMiB);
    if (options.warm_buffer_bytes > 0) {
      const std::size_t bytes = std::min(options.warm_buffer_bytes, options.buffer_budget);
      Buffer warm{std::make_unique_for_overwrite<std::byte[]>(bytes), bytes};
      std::memset(warm.data.get(), 0, bytes);
      pool.release(std::move(warm));
      auto warm_scratch = std::make_unique<WorkerScratch>();
      warm_scratch->carry.resize(xet::kChunkHeaderSize + xet::kMaxCompressedChunkSize);
      warm_scratch->carry.clear();
      scratch.push_back(std::move(warm_scratch));
    }
  }

  std::unique_ptr<WorkerScratch> take_scratch() {
    std::lock_guard lock(scratch_mutex);
    if (scratch.empty()) return std::make_unique<WorkerScratch>();
    auto out = std::move(scratch.back());
    scratch.pop_back();
    return out;
  }
  void return_scratch(std::unique_ptr<WorkerScratch> s) {
    std::lock_guard lock(scratch_mutex);
    if (scratch.size() < options.parallel_fetches * 2) scratch.push_back(std::move(s));
  }

  DownloadResult<void> run(const xet::Hash& file_hash, std::uint64_t file_size, std::optional<xet::FileByteRange> range,
                           const ByteSink& sink);
  DownloadResult<bool> read_from_cache(const xet::Hash& file_hash, std::uint64_t file_size, xet::FileByteRange range,
                                       const ByteSink& sink);
  // The layout of a file, fetched when not known; null when it cannot be had.
  std::shared_ptr<FileLayout> layout(const xet::Hash& file_hash, std::uint64_t file_size);

  hub::CasClient& cas;
  cache::ChunkCache* cache;
  DownloaderOptions options;
  BufferPool pool;
  std::mutex scratch_mutex;
  std::vector<std::unique_ptr<WorkerScratch>> scratch;  // GUARDED_BY(scratch_mutex)
  std::mutex layouts_mutex;
  // Most recently used last; at most kLayouts.
  std::vector<std::pair<xet::Hash, std::shared_ptr<FileLayout>>> layouts;  // GUARDED_BY(layouts_mutex)

  std::atomic<std::uint64_t> bytes_fetched{0};
  std::atomic<std::uint64_t> bytes_from_cache{0};
  std::atomic<std::uint64_t> bytes_delivered{0};
  std::atomic<std::uint64_t> fetches{0};
  std::atomic<std::uint64_t> cache_jobs{0};
  std::atomic<std::uint64_t> chunks_cached{0};
  std::atomic<std::uint64_t> uncached_ranges{0};
  std::atomic<std::uint64_t> refreshes{0};
  std::atomic<std::uint64_t> refetches{0};
  std::atomic<std::uint64_t> confirmations{0};
  std::atomic<std::uint64_t> peak_buffer_bytes{0};
  std::atomic<std::uint64_t> peak_in_flight{0};
  std::atomic<std::uint64_t> reads_from_cache{0};
  std::atomic<std::uint64_t> layouts_fetched{0};
};

namespace {

// Upper bound of the decoded size of fetch entry `f`'s range `r`, from every planned term it
// serves: the sum of their unpacked lengths (each distinct chunk range once) plus kMaxChunkSize
// for every chunk no term covers, capped at kMaxChunkSize per chunk.
std::uint64_t range_bound(const xet::ReadPlan& plan, std::size_t f, std::size_t r) {
  const xet::ChunkRange& chunks = plan.fetches[f].ranges[r].chunks;
  std::vector<std::pair<xet::ChunkRange, std::uint64_t>> uses;
  for (const auto& term : plan.terms) {
    if (term.fetch_index == f && term.range_index == r) uses.emplace_back(term.chunks, term.unpacked_length);
  }
  std::sort(uses.begin(), uses.end(), [](const auto& a, const auto& b) {
    return std::pair(a.first.start, a.first.end) < std::pair(b.first.start, b.first.end);
  });
  uses.erase(std::unique(uses.begin(), uses.end(), [](const auto& a, const auto& b) { return a.first == b.first; }),
             uses.end());
  std::uint64_t sum = 0;
  std::uint64_t covered = 0;
  std::uint64_t reach = chunks.start;
  for (const auto& [c, unpacked] : uses) {
    sum += unpacked;
    const std::uint64_t begin = std::max(c.start, reach);
    if (c.end > begin) {
      covered += c.end - begin;
      reach = c.end;
    }
  }
  const std::uint64_t cap = chunks.size() * xet::kMaxChunkSize;
  return std::min(cap, sum + (chunks.size() - std::min(covered, chunks.size())) * xet::kMaxChunkSize);
}

std::vector<Job> make_jobs(const xet::ReadPlan& plan) {
  std::vector<Job> jobs;
  std::map<std::size_t, std::uint64_t> entry_bounds;
  for (std::size_t t = 0; t < plan.terms.size(); ++t) {
    const auto& term = plan.terms[t];
    if (jobs.empty() || jobs.back().fetch != term.fetch_index) {
      Job job;
      job.fetch = term.fetch_index;
      job.first_term = t;
      job.out_begin = term.output_offset;
      jobs.push_back(std::move(job));
    }
    Job& job = jobs.back();
    job.end_term = t + 1;
    job.out_end = term.output_offset + term.take;
    if (std::find(job.needed.begin(), job.needed.end(), term.range_index) == job.needed.end()) {
      job.needed.push_back(term.range_index);
    }
  }
  std::map<std::size_t, std::size_t> last_job;
  for (std::size_t j = 0; j < jobs.size(); ++j) {
    Job& job = jobs[j];
    if (auto it = last_job.find(job.fetch); it != last_job.end()) job.previous = it->second;
    last_job[job.fetch] = j;
    std::sort(job.needed.begin(), job.needed.end());
    auto [it, fresh] = entry_bounds.try_emplace(job.fetch, 0);
    if (fresh) {
      for (std::size_t r = 0; r < plan.fetches[job.fetch].ranges.size(); ++r) it->second += range_bound(plan, job.fetch, r);
    }
    job.bound = static_cast<std::size_t>((it->second + kMiB - 1) / kMiB * kMiB);
  }
  return jobs;
}

// One read: the plan, its jobs, the workers and the emitter.
class Call {
 public:
  Call(Downloader::Impl& impl, const xet::Hash& file_hash, std::optional<xet::FileByteRange> requested,
       xet::ReadPlan plan, bool hash_chunks_always)
      : impl_(impl),
        file_hash_(file_hash),
        requested_(requested),
        plan_(std::move(plan)),
        jobs_(make_jobs(plan_)),
        verify_file_(hash_chunks_always) {
    for (const auto& f : plan_.fetches) urls_.push_back(f.url);
    if (impl_.options.cancel) {
      outer_cancel_ = impl_.options.cancel->on_cancel([this] { stop_token_.cancel(); });
    }
  }

  // Runs the jobs and streams the output. `hasher` (for whole files) receives every job's leaves.
  DownloadResult<void> run(const ByteSink& sink, xet::AggregatedHasher* hasher) {
    if (jobs_.empty()) return {};
    const std::size_t workers = jobs_.size() == 1 ? 0 : std::min(impl_.options.parallel_fetches, jobs_.size());
    std::vector<std::jthread> threads;
    if (workers == 0) {
      worker();  // one job: materialize it here, no thread
    } else {
      threads.reserve(workers);
      for (std::size_t i = 0; i < workers; ++i) threads.emplace_back([this] { worker(); });
    }
    std::optional<DownloadError> error;
    for (std::size_t j = 0; j < jobs_.size() && !error; ++j) {
      Job& job = jobs_[j];
      {
        std::unique_lock lock(mutex_);
        cv_.wait(lock, [&] { return job.done || first_error_.has_value(); });
        if (!job.done || job.error) {
          error = first_error_ ? first_error_ : job.error;
          break;
        }
      }
      for (const auto piece : job.pieces) {
        if (!sink(piece)) {
          error = DownloadError{DownloadErrorKind::cancelled, hub::HubErrorKind::cancelled, "the sink stopped the download"};
          break;
        }
        impl_.bytes_delivered.fetch_add(piece.size(), std::memory_order_relaxed);
      }
      if (hasher) {
        for (const auto& leaf : job.leaves) hasher->add(leaf);
      }
      release(job);
    }
    if (error) {
      std::lock_guard lock(mutex_);
      if (!first_error_) first_error_ = error;
    }
    stop_token_.cancel();
    cv_.notify_all();
    threads.clear();  // joins
    for (auto& job : jobs_) {
      if (job.buffer.data) release(job);
    }
    if (error) return std::unexpected(*error);
    return {};
  }

 private:
  void release(Job& job) {
    const std::size_t capacity = job.buffer.capacity;
    impl_.pool.release(std::move(job.buffer));
    job.buffer = Buffer{};
    job.pieces.clear();
    job.ranges.clear();
    job.leaves.clear();
    {
      std::lock_guard lock(mutex_);
      held_ -= capacity;
    }
    cv_.notify_all();
  }

  void worker() {
    auto scratch = impl_.take_scratch();
    while (true) {
      std::size_t j = 0;
      {
        std::unique_lock lock(mutex_);
        cv_.wait(lock, [&] {
          return first_error_.has_value() || next_ == jobs_.size() || held_ == 0 ||
                 held_ + jobs_[next_].bound <= impl_.options.buffer_budget;
        });
        if (first_error_ || next_ == jobs_.size()) break;
        j = next_++;
        Job& job = jobs_[j];
        const std::size_t room = impl_.options.buffer_budget > held_ ? impl_.options.buffer_budget - held_ : 0;
        job.buffer = impl_.pool.acquire(job.bound, std::max(room, job.bound));
        held_ += job.buffer.capacity;
        ++in_flight_;
        raise_to(impl_.peak_buffer_bytes, held_);
        raise_to(impl_.peak_in_flight, in_flight_);
      }
      if (impl_.cache && jobs_[j].previous) {
        // An earlier job of this call is materializing the same entry: its verified chunks will
        // be in the cache when it is done, so wait rather than fetch the entry twice at once.
        std::unique_lock lock(mutex_);
        cv_.wait(lock, [&] { return jobs_[*jobs_[j].previous].done || first_error_.has_value(); });
      }
      auto result = materialize(jobs_[j], *scratch);
      {
        std::lock_guard lock(mutex_);
        --in_flight_;
        jobs_[j].done = true;
        if (!result) {
          jobs_[j].error = result.error();
          if (!first_error_) first_error_ = result.error();
        }
      }
      if (!result) stop_token_.cancel();
      cv_.notify_all();
    }
    impl_.return_scratch(std::move(scratch));
  }

  DownloadResult<void> materialize(Job& job, WorkerScratch& scratch) {
    const xet::XorbFetch& entry = plan_.fetches[job.fetch];
    job.ranges.assign(entry.ranges.size(), DecodedRange{});
    bool from_cache = impl_.cache != nullptr && read_cache(job);
    if (!from_cache) {
      job.ranges.assign(entry.ranges.size(), DecodedRange{});
      if (auto fetched = fetch(job, scratch); !fetched) return fetched;
    }
    // Cut: the spans of the needed ranges that fall in this job's output, in output order.
    struct Cut {
      std::uint64_t output_offset;
      std::span<const std::byte> bytes;
    };
    std::vector<Cut> cuts;
    for (const std::size_t r : job.needed) {
      const DecodedRange& range = job.ranges[r];
      auto spans = xet::copy_spans(plan_, job.fetch, r, range.sizes);
      if (!spans) return std::unexpected(corrupt("xorb " + short_hash(entry.xorb) + ": " + spans.error().describe()));
      const std::uint64_t first_chunk = entry.ranges[r].chunks.start;
      for (const auto& s : *spans) {
        if (s.output_offset < job.out_begin || s.output_offset >= job.out_end) continue;  // another run
        const std::size_t at = range.offsets[s.chunk - first_chunk] + s.chunk_offset;
        cuts.push_back({s.output_offset, std::span<const std::byte>(job.buffer.data.get() + at, s.length)});
      }
    }
    std::sort(cuts.begin(), cuts.end(), [](const Cut& a, const Cut& b) { return a.output_offset < b.output_offset; });
    std::uint64_t expect = job.out_begin;
    job.pieces.reserve(cuts.size());
    for (const auto& cut : cuts) {
      if (cut.output_offset != expect) return std::unexpected(corrupt("the planned output has a gap"));
      expect += cut.bytes.size();
      job.pieces.push_back(cut.bytes);
    }
    if (expect != job.out_end) return std::unexpected(corrupt("the planned output has a gap at its end"));
    if (verify_file_) {
      for (std::size_t t = job.first_term; t < job.end_term; ++t) {
        const auto& term = plan_.terms[t];
        const DecodedRange& range = job.ranges[term.range_index];
        const std::uint64_t first_chunk = entry.ranges[term.range_index].chunks.start;
        for (std::uint64_t c = term.chunks.start; c < term.chunks.end; ++c) {
          const std::size_t i = static_cast<std::size_t>(c - first_chunk);
          job.leaves.push_back({range.hashes[i], range.sizes[i]});
        }
      }
    }
    return {};
  }

  // Every chunk of the needed ranges from the cache, or false (then nothing of it is used). Reads
  // runs of chunks at once (large reads: the cache reads them with direct I/O); the chunk hashes
  // the cache verified against the bytes feed the file hash, so nothing is hashed twice.
  bool read_cache(Job& job) {
    const xet::XorbFetch& entry = plan_.fetches[job.fetch];
    const auto out = job.buffer.span();
    std::size_t pos = 0;
    for (const std::size_t r : job.needed) {
      DecodedRange& range = job.ranges[r];
      range.present = true;
      const xet::ChunkRange& chunks = entry.ranges[r].chunks;
      range.offsets.reserve(chunks.size());
      range.sizes.reserve(chunks.size());
      range.hashes.reserve(chunks.size());
      std::uint64_t c = chunks.start;
      while (c < chunks.end) {
        if (stop_token_.cancelled()) return false;
        auto got = impl_.cache->get_range(entry.xorb, static_cast<std::uint32_t>(c),
                                          static_cast<std::uint32_t>(chunks.end), out.subspan(pos));
        if (!got || !*got) return false;  // a miss, or a cache error (treated as a miss)
        const cache::RangeRead& read = **got;
        if (read.end <= c || read.chunks.size() != read.end - c) return false;
        std::size_t at = pos;
        for (const auto& chunk : read.chunks) {
          range.offsets.push_back(at);
          range.sizes.push_back(chunk.size);
          range.hashes.push_back(chunk.hash);
          at += static_cast<std::size_t>(chunk.size);
        }
        if (at != pos + read.size) return false;
        pos = at;
        c = read.end;
      }
    }
    impl_.bytes_from_cache.fetch_add(pos, std::memory_order_relaxed);
    impl_.cache_jobs.fetch_add(1, std::memory_order_relaxed);
    return true;
  }

  DownloadResult<void> fetch(Job& job, WorkerScratch& scratch) {
    // Refetches after bytes that did not verify (framing, decompression, sizes, a short body) and
    // after a fetch of an unverifiable range that agrees with no earlier one. The first confirming
    // fetch of an unverifiable range is not counted. Any two fetches that agree are accepted, so one
    // damaged answer costs one refetch, not two.
    int refetches = 0;
    std::vector<std::vector<std::vector<xet::Hash>>> earlier;  // per fetch: chunk hashes of its unverified ranges
    auto retry = [&](const DownloadError& error) -> std::optional<DownloadError> {
      if (refetches >= impl_.options.max_refetches || stop_token_.cancelled()) return error;
      ++refetches;
      impl_.refetches.fetch_add(1, std::memory_order_relaxed);
      job.ranges.assign(plan_.fetches[job.fetch].ranges.size(), DecodedRange{});
      return std::nullopt;
    };
    while (true) {
      xet::XorbFetch entry;
      std::uint64_t generation = 0;
      {
        std::lock_guard lock(url_mutex_);
        entry.xorb = plan_.fetches[job.fetch].xorb;
        entry.ranges = plan_.fetches[job.fetch].ranges;
        entry.url = urls_[job.fetch];
        generation = url_generation_;
      }
      StreamDecoder decoder(entry, job.buffer.span(), job.ranges, scratch);
      std::uint64_t received = 0;
      auto fetched = impl_.cas.fetch(
          entry,
          [&](std::size_t part, std::uint64_t offset, std::span<const std::byte> data) {
            received += data.size();
            return decoder.on_data(part, offset, data);
          },
          &stop_token_);
      impl_.bytes_fetched.fetch_add(received, std::memory_order_relaxed);
      std::optional<DownloadError> bad;
      if (decoder.error()) {
        bad = *decoder.error();
      } else if (!fetched) {
        if (fetched.error().kind == hub::HubErrorKind::url_expired) {
          if (auto refreshed = refresh(generation); !refreshed) return refreshed;
          job.ranges.assign(entry.ranges.size(), DecodedRange{});
          continue;
        }
        // A body of the wrong length or status (the transport already retried network errors).
        if (fetched.error().kind != hub::HubErrorKind::bad_response) return std::unexpected(from_hub(fetched.error()));
        bad = corrupt("xorb " + short_hash(entry.xorb) + ": " + fetched.error().message);
      } else if (auto failed = decoder.finish()) {
        bad = *failed;
      }
      if (bad) {
        if (auto given_up = retry(*bad)) return std::unexpected(*given_up);
        continue;
      }
      const std::vector<bool> verified = verify(job, entry);
      if (impl_.options.confirm_unverified) {
        std::vector<std::vector<xet::Hash>> unverified;
        for (std::size_t r = 0; r < entry.ranges.size(); ++r) {
          if (!verified[r]) unverified.push_back(job.ranges[r].hashes);
        }
        if (!unverified.empty() && std::find(earlier.begin(), earlier.end(), unverified) == earlier.end()) {
          // First sight, or a disagreement with every earlier fetch: fetch again and compare.
          const bool first = earlier.empty();
          earlier.push_back(std::move(unverified));
          impl_.confirmations.fetch_add(1, std::memory_order_relaxed);
          if (first) {
            job.ranges.assign(entry.ranges.size(), DecodedRange{});
            continue;
          }
          if (auto given_up = retry(corrupt("xorb " + short_hash(entry.xorb) +
                                            ": two fetches of a range that cannot be checked against the xorb hash "
                                            "disagree"))) {
            return std::unexpected(*given_up);
          }
          continue;
        }
      }
      impl_.fetches.fetch_add(1, std::memory_order_relaxed);
      store(job, entry, verified);
      return {};
    }
  }

  // Which fetched ranges verify as whole xorbs: they start at chunk 0 and the xorb hash of their
  // chunks is the entry's (see the header).
  std::vector<bool> verify(const Job& job, const xet::XorbFetch& entry) const {
    std::vector<bool> verified(entry.ranges.size(), false);
    for (std::size_t r = 0; r < entry.ranges.size(); ++r) {
      const DecodedRange& range = job.ranges[r];
      if (entry.ranges[r].chunks.start != 0) continue;
      std::vector<xet::HashAndSize> leaves;
      leaves.reserve(range.sizes.size());
      for (std::size_t i = 0; i < range.sizes.size(); ++i) leaves.push_back({range.hashes[i], range.sizes[i]});
      verified[r] = xet::xorb_hash(leaves) == entry.xorb;
    }
    return verified;
  }

  // Puts the ranges that verified as whole xorbs into the cache (see the header).
  void store(const Job& job, const xet::XorbFetch& entry, const std::vector<bool>& verified) {
    for (std::size_t r = 0; r < entry.ranges.size(); ++r) {
      const DecodedRange& range = job.ranges[r];
      if (!verified[r]) {
        impl_.uncached_ranges.fetch_add(1, std::memory_order_relaxed);
        continue;
      }
      if (!impl_.cache) continue;
      std::vector<cache::ChunkData> chunks;
      chunks.reserve(range.sizes.size());
      std::size_t group = 0;
      for (std::size_t i = 0; i < range.sizes.size(); ++i) {
        const std::size_t groups = xet::chunk_group_count(range.sizes[i]);
        std::span<const xet::Hash> values;
        if (group + groups <= range.groups.size()) values = std::span(range.groups).subspan(group, groups);
        group += groups;
        chunks.push_back(
            {range.hashes[i], xet::ByteSpan(job.buffer.data.get() + range.offsets[i], range.sizes[i]), values});
      }
      if (impl_.cache->put(entry.xorb, static_cast<std::uint32_t>(entry.ranges[r].chunks.start), chunks)) {
        impl_.chunks_cached.fetch_add(chunks.size(), std::memory_order_relaxed);
      }
    }
  }

  // New signed URLs for the plan's entries, unless another worker got them since `seen`.
  DownloadResult<void> refresh(std::uint64_t seen) {
    std::lock_guard refresh_lock(refresh_mutex_);
    {
      std::lock_guard lock(url_mutex_);
      if (url_generation_ != seen) return {};
    }
    if (refreshes_ >= impl_.options.max_reconstruction_refreshes) {
      return std::unexpected(DownloadError{DownloadErrorKind::hub, hub::HubErrorKind::url_expired,
                                           "signed URLs expired again after refreshing the reconstruction"});
    }
    ++refreshes_;
    impl_.refreshes.fetch_add(1, std::memory_order_relaxed);
    auto recon = impl_.cas.get_reconstruction(file_hash_, requested_, &stop_token_);
    if (!recon) return std::unexpected(from_hub(recon.error()));
    std::vector<std::string> fresh(plan_.fetches.size());
    for (std::size_t f = 0; f < plan_.fetches.size(); ++f) {
      const auto& old = plan_.fetches[f];
      auto match = std::find_if(recon->fetches.begin(), recon->fetches.end(), [&](const xet::XorbFetch& e) {
        return e.xorb == old.xorb && e.ranges == old.ranges;
      });
      if (match == recon->fetches.end()) {
        return std::unexpected(DownloadError{DownloadErrorKind::hub, hub::HubErrorKind::bad_response,
                                             "the refreshed reconstruction lacks an entry of xorb " + short_hash(old.xorb)});
      }
      fresh[f] = match->url;
    }
    std::lock_guard lock(url_mutex_);
    urls_ = std::move(fresh);
    ++url_generation_;
    return {};
  }

  Downloader::Impl& impl_;
  const xet::Hash file_hash_;
  const std::optional<xet::FileByteRange> requested_;
  const xet::ReadPlan plan_;
  std::vector<Job> jobs_;
  const bool verify_file_;

  http::CancellationToken stop_token_;
  http::CancellationToken::Registration outer_cancel_;

  std::mutex mutex_;  // lock order: refresh_mutex_ -> url_mutex_; mutex_ is never held with another
  std::condition_variable cv_;
  std::size_t next_ = 0;       // GUARDED_BY(mutex_): the next job to admit
  std::size_t held_ = 0;       // GUARDED_BY(mutex_): buffer bytes of admitted, unreleased jobs
  std::size_t in_flight_ = 0;  // GUARDED_BY(mutex_)
  std::optional<DownloadError> first_error_;  // GUARDED_BY(mutex_)

  std::mutex refresh_mutex_;
  int refreshes_ = 0;  // GUARDED_BY(refresh_mutex_)
  std::mutex url_mutex_;
  std::vector<std::string> urls_;    // GUARDED_BY(url_mutex_)
  std::uint64_t url_generation_ = 0;  // GUARDED_BY(url_mutex_)
};

}  // namespace

DownloadResult<void> Downloader::Impl::run(const xet::Hash& file_hash, std::uint64_t file_size,
                                           std::optional<xet::FileByteRange> range, const ByteSink& sink) {
  if (options.cancel && options.cancel->cancelled()) return fail(DownloadErrorKind::cancelled, "cancelled");
  const bool whole = !range.has_value();
  http::CancellationToken planning_cancel;  // the reconstruction request honours options.cancel
  http::CancellationToken::Registration registration;
  if (options.cancel) registration = options.cancel->on_cancel([&] { planning_cancel.cancel(); });
  auto recon = cas.get_reconstruction(file_hash, range, &planning_cancel);
  if (!recon) return std::unexpected(from_hub(recon.error()));
  auto plan = whole ? xet::plan_whole_file(*recon) : xet::plan_read(*recon, range->start, *range);
  if (!plan) return std::unexpected(corrupt("reconstruction of " + short_hash(file_hash) + ": " + plan.error().describe()));
  const std::uint64_t expected = whole ? file_size : range->length();
  if (plan->range.length() != expected) {
    return std::unexpected(corrupt("the reconstruction of " + short_hash(file_hash) + " describes " +
                                   std::to_string(plan->range.length()) + " bytes, expected " + std::to_string(expected)));
  }
  registration.reset();
  std::optional<xet::AggregatedHasher> hasher;
  if (whole) hasher.emplace();
  Call call(*this, file_hash, range, std::move(*plan), whole);
  if (auto done = call.run(sink, hasher ? &*hasher : nullptr); !done) return done;
  if (whole) {
    if (hasher->total_size() != file_size) {
      return std::unexpected(corrupt("file " + short_hash(file_hash) + ": chunks hold " +
                                     std::to_string(hasher->total_size()) + " bytes, expected " + std::to_string(file_size)));
    }
    const xet::Hash computed = xet::file_hash_from_root(hasher->finish());
    if (computed != file_hash) {
      return std::unexpected(corrupt("file hash mismatch: computed " + computed.to_string() + ", expected " +
                                     file_hash.to_string() + " (the bytes streamed are wrong)"));
    }
  }
  return {};
}

std::shared_ptr<FileLayout> Downloader::Impl::layout(const xet::Hash& file_hash, std::uint64_t file_size) {
  {
    std::lock_guard lock(layouts_mutex);
    for (auto it = layouts.begin(); it != layouts.end(); ++it) {
      if (it->first != file_hash) continue;
      auto found = std::move(*it);
      layouts.erase(it);
      layouts.push_back(std::move(found));
      return layouts.back().second;
    }
  }
  if (options.cancel && options.cancel->cancelled()) return nullptr;
  http::CancellationToken cancel;
  http::CancellationToken::Registration registration;
  if (options.cancel) registration = options.cancel->on_cancel([&] { cancel.cancel(); });
  auto recon = cas.get_reconstruction(file_hash, std::nullopt, &cancel);
  if (!recon || recon->offset_into_first_range != 0) return nullptr;
  layouts_fetched.fetch_add(1, std::memory_order_relaxed);
  auto made = std::make_shared<FileLayout>();
  made->terms = std::move(recon->terms);
  made->term_starts.reserve(made->terms.size() + 1);
  std::uint64_t at = 0;
  for (const auto& term : made->terms) {
    // A term longer than a chunk index can describe is not a term this path plans.
    if (term.unpacked_length == 0 || term.unpacked_length > UINT32_MAX || term.chunks.size() == 0) return nullptr;
    made->term_starts.push_back(at);
    at += term.unpacked_length;
  }
  if (at != file_size) return nullptr;
  made->term_starts.push_back(at);
  made->chunk_ends.resize(made->terms.size());
  std::lock_guard lock(layouts_mutex);
  if (layouts.size() >= kLayouts) layouts.erase(layouts.begin());
  layouts.emplace_back(file_hash, made);
  return made;
}

DownloadResult<bool> Downloader::Impl::read_from_cache(const xet::Hash& file_hash, std::uint64_t file_size,
                                                       xet::FileByteRange range, const ByteSink& sink) {
  range.end = std::min(range.end, file_size);
  if (range.start >= range.end || file_hash.is_zero()) return true;
  if (cache == nullptr || range.length() > kMaxCacheRead) return false;
  const auto file = layout(file_hash, file_size);
  if (!file) return false;
  // Each piece: chunks [first, end) of a term's xorb, and the bytes of the range they hold.
  struct Piece {
    std::size_t term;
    std::uint32_t first;
    std::uint32_t end;
    std::uint64_t skip;  // bytes of chunk `first` before the range
    std::uint64_t take;
    std::uint32_t first_size;  // of chunk `first`
    std::uint32_t last_size;   // of chunk `end - 1`
    std::uint64_t last_take;   // bytes of the range in chunk `end - 1`
  };
  std::vector<Piece> pieces;
  std::uint64_t need = 0;
  {
    std::lock_guard lock(file->mutex);
    auto t = static_cast<std::size_t>(
        std::upper_bound(file->term_starts.begin(), file->term_starts.end(), range.start) - file->term_starts.begin() - 1);
    for (; t < file->terms.size() && file->term_starts[t] < range.end; ++t) {
      const auto& term = file->terms[t];
      auto& ends = file->chunk_ends[t];
      if (ends.empty()) {
        auto sizes = cache->chunk_sizes(term.xorb, static_cast<std::uint32_t>(term.chunks.start),
                                        static_cast<std::uint32_t>(term.chunks.end));
        if (!sizes || !*sizes) return false;
        std::uint64_t sum = 0;
        std::vector<std::uint32_t> made;
        made.reserve((*sizes)->size());
        for (const std::uint32_t size : **sizes) {
          sum += size;
          if (sum > term.unpacked_length) return false;  // the index disagrees with the reconstruction
          made.push_back(static_cast<std::uint32_t>(sum));
        }
        if (sum != term.unpacked_length) return false;
        ends = std::move(made);
      }
      const std::uint64_t term_start = file->term_starts[t];
      const std::uint64_t from = std::max(range.start, term_start) - term_start;
      const std::uint64_t to = std::min(range.end, file->term_starts[t + 1]) - term_start;
      // Chunk i holds term bytes [ends[i-1], ends[i]).
      const auto first = static_cast<std::size_t>(std::upper_bound(ends.begin(), ends.end(), from) - ends.begin());
      const auto last = static_cast<std::size_t>(std::lower_bound(ends.begin(), ends.end(), to) - ends.begin());
      const std::uint64_t first_start = first == 0 ? 0 : ends[first - 1];
      const std::uint64_t last_start = last == 0 ? 0 : ends[last - 1];
      pieces.push_back({t, static_cast<std::uint32_t>(term.chunks.start + first),
                        static_cast<std::uint32_t>(term.chunks.start + last + 1), from - first_start, to - from,
                        static_cast<std::uint32_t>(ends[first] - first_start),
                        static_cast<std::uint32_t>(ends[last] - last_start), to - std::max(last_start, from)});
      need += ends[last] - first_start;
    }
  }
  Buffer buffer = pool.acquire(static_cast<std::size_t>(need), static_cast<std::size_t>(need) + kMiB);
  std::vector<std::span<const std::byte>> out;
  std::size_t pos = 0;
  bool complete = true;
  // Reads bytes [at, at + length) of chunk `c` (only the 16 KiB groups holding them, where the
  // cache keeps group values) to buffer[pos].
  auto read_part = [&](const xet::Hash& xorb, std::uint32_t c, std::uint64_t at, std::uint64_t length) {
    // Chunks read whole before may have been longer than the index said (checked after the piece).
    if (length > buffer.span().size() - pos) return false;
    auto got = cache->get_part(xorb, c, at, buffer.span().subspan(pos, static_cast<std::size_t>(length)));
    if (!got || !*got) return false;
    pos += **got;
    return true;
  };
  for (const Piece& piece : pieces) {
    const xet::Hash& xorb = file->terms[piece.term].xorb;
    const std::size_t piece_start = pos;
    // The first and last chunks, when the range holds only part of them, are read in part; the
    // chunks between whole, in runs.
    std::uint32_t first = piece.first;
    std::uint32_t end = piece.end;
    const bool single = end - first == 1;
    if (piece.skip > 0 || (single && piece.take < piece.first_size)) {
      complete = read_part(xorb, first, piece.skip, single ? piece.take : piece.first_size - piece.skip);
      ++first;
    }
    const bool tail = !single && piece.last_take < piece.last_size;
    if (tail) --end;
    for (std::uint32_t c = first; c < end && complete;) {
      auto got = cache->get_range(xorb, c, end, buffer.span().subspan(pos));
      if (!got || !*got || (*got)->end <= c) {
        complete = false;
        break;
      }
      pos += (*got)->size;
      c = (*got)->end;
    }
    if (complete && tail) complete = read_part(xorb, end, 0, piece.last_take);
    if (!complete) break;
    if (pos - piece_start != piece.take) {  // chunks of other sizes than the index said
      complete = false;
      break;
    }
    out.emplace_back(buffer.data.get() + piece_start, static_cast<std::size_t>(piece.take));
  }
  std::optional<DownloadError> stopped;
  if (complete) {
    for (const auto bytes : out) {
      if (!sink(bytes)) {
        stopped = DownloadError{DownloadErrorKind::cancelled, hub::HubErrorKind::cancelled, "the sink stopped the download"};
        break;
      }
      bytes_delivered.fetch_add(bytes.size(), std::memory_order_relaxed);
    }
    bytes_from_cache.fetch_add(pos, std::memory_order_relaxed);
    reads_from_cache.fetch_add(1, std::memory_order_relaxed);
  }
  pool.release(std::move(buffer));
  if (stopped) return std::unexpected(*stopped);
  return complete;
}

Downloader::Downloader(hub::CasClient& cas, cache::ChunkCache* cache, DownloaderOptions options)
    : impl_(std::make_unique<Impl>(cas, cache, options)) {}

Downloader::~Downloader() = default;

DownloadResult<void> Downloader::download_file(const xet::Hash& file_hash, std::uint64_t file_size,
                                               const ByteSink& sink) {
  if (file_size == 0 || file_hash.is_zero()) {
    if (file_size != 0 || !file_hash.is_zero()) {
      return fail(DownloadErrorKind::corrupt, "the empty file has the zero hash and size 0; got hash " +
                                                  short_hash(file_hash) + " and size " + std::to_string(file_size));
    }
    return {};
  }
  return impl_->run(file_hash, file_size, std::nullopt, sink);
}

DownloadResult<void> Downloader::read_range(const xet::Hash& file_hash, std::uint64_t file_size,
                                            xet::FileByteRange range, const ByteSink& sink) {
  if (range.end < range.start) return fail(DownloadErrorKind::invalid_argument, "range ends before it starts");
  range.end = std::min(range.end, file_size);
  if (range.start >= range.end || file_hash.is_zero()) return {};
  return impl_->run(file_hash, file_size, range, sink);
}

DownloadResult<bool> Downloader::read_from_cache(const xet::Hash& file_hash, std::uint64_t file_size,
                                                  xet::FileByteRange range, const ByteSink& sink) {
  if (range.end < range.start) return fail(DownloadErrorKind::invalid_argument, "range ends before it starts");
  return impl_->read_from_cache(file_hash, file_size, range, sink);
}

DownloadStats Downloader::stats() const {
  DownloadStats out;
  out.bytes_fetched = impl_->bytes_fetched.load();
  out.bytes_from_cache = impl_->bytes_from_cache.load();
  out.bytes_delivered = impl_->bytes_delivered.load();
  out.fetches = impl_->fetches.load();
  out.cache_jobs = impl_->cache_jobs.load();
  out.chunks_cached = impl_->chunks_cached.load();
  out.uncached_ranges = impl_->uncached_ranges.load();
  out.reconstruction_refreshes = impl_->refreshes.load();
  out.refetches = impl_->refetches.load();
  out.confirmations = impl_->confirmations.load();
  out.peak_buffer_bytes = impl_->peak_buffer_bytes.load();
  out.buffers_allocated = impl_->pool.allocated();
  out.peak_in_flight = impl_->peak_in_flight.load();
  out.reads_from_cache = impl_->reads_from_cache.load();
  out.layouts_fetched = impl_->layouts_fetched.load();
  return out;
}

}  // namespace bucketfs::transfer
