#include "bucketfs/xet/chunker.h"

#include <algorithm>
#include <optional>
#include <set>
#include <span>
#include <thread>

namespace bucketfs::xet {
namespace {

// Gearhash table of rust-gearhash (DEFAULT_TABLE), which xet-core uses.
constexpr std::uint64_t kGearTable[256] = {
#include "gear_table.inc"
};

constexpr std::uint64_t kBoundaryMask = 0xFFFF000000000000ULL;

// The rolling hash depends only on the last 64 bytes, so hashing may start this many bytes into
// a chunk and still give the exact hash at the first position where a cut is allowed.
constexpr std::size_t kHashWindow = 64;
constexpr std::size_t kSkipAhead = kMinChunkSize - kHashWindow - 1;

inline std::uint64_t roll(std::uint64_t hash, std::uint8_t byte) { return (hash << 1) + kGearTable[byte]; }

struct ScanResult {
  bool cut = false;
  std::size_t end = 0;       // with cut: one past the byte that completes the chunk
  std::uint64_t hash = 0;    // without cut: the rolling hash after the last byte scanned
};

// Finds the first position in [begin, limit) where the rolling hash, continued from `hash`,
// has its top 16 bits zero. The hash at a position depends only on the 64 bytes ending there,
// so the range is split in two lanes scanned together: the second lane starts from zero 64
// bytes early, which gives it the exact hash, and the two independent dependency chains run
// about 1.5x faster than one on this machine.
ScanResult find_cut(const std::uint8_t* bytes, std::size_t begin, std::size_t limit, std::uint64_t hash) {
  constexpr std::size_t kMinTwoLaneSpan = 4096;
  std::size_t pos = begin;
  if (limit - begin >= kMinTwoLaneSpan) {
    const std::size_t half = (limit - begin) / 2;
    const std::size_t second = begin + half;
    std::uint64_t second_hash = 0;
    for (std::size_t i = second - kHashWindow; i < second; ++i) second_hash = roll(second_hash, bytes[i]);
    std::size_t i = 0;
    for (; i < half; ++i) {
      hash = roll(hash, bytes[begin + i]);
      second_hash = roll(second_hash, bytes[second + i]);
      if (__builtin_expect(((hash & kBoundaryMask) == 0) | ((second_hash & kBoundaryMask) == 0), 0)) break;
    }
    if (i == half) {
      // No cut in either lane; the second lane may have a leftover byte when the span is odd.
      for (std::size_t j = second + half; j < limit; ++j) {
        second_hash = roll(second_hash, bytes[j]);
        if ((second_hash & kBoundaryMask) == 0) return {true, j + 1, 0};
      }
      return {false, 0, second_hash};
    }
    if ((hash & kBoundaryMask) == 0) return {true, begin + i + 1, 0};
    // The second lane found one; an earlier cut may still lie in the rest of the first lane.
    const std::size_t second_cut = second + i + 1;
    for (std::size_t j = begin + i + 1; j < second; ++j) {
      hash = roll(hash, bytes[j]);
      if ((hash & kBoundaryMask) == 0) return {true, j + 1, 0};
    }
    return {true, second_cut, 0};
  }
  for (; pos < limit; ++pos) {
    hash = roll(hash, bytes[pos]);
    if ((hash & kBoundaryMask) == 0) return {true, pos + 1, 0};
  }
  return {false, 0, hash};
}

}  // namespace

std::optional<std::size_t> Chunker::next_boundary(ByteSpan data) {
  const auto* bytes = reinterpret_cast<const std::uint8_t*>(data.data());
  const std::size_t size = data.size();
  std::size_t pos = 0;

  if (open_chunk_size_ < kSkipAhead) {
    const std::size_t skip = std::min(kSkipAhead - open_chunk_size_, size);
    pos += skip;
    open_chunk_size_ += skip;
    if (pos == size) return std::nullopt;
  }

  std::uint64_t hash = rolling_hash_;
  // Positions where a cut is not yet allowed: only roll the hash.
  if (open_chunk_size_ < kMinChunkSize - 1) {
    const std::size_t roll_count = std::min(kMinChunkSize - 1 - open_chunk_size_, size - pos);
    for (std::size_t end = pos + roll_count; pos < end; ++pos) hash = roll(hash, bytes[pos]);
    open_chunk_size_ += roll_count;
    if (pos == size) {
      rolling_hash_ = hash;
      return std::nullopt;
    }
  }

  // Every following position may cut; the last one allowed is at kMaxChunkSize.
  const std::size_t limit = pos + std::min(kMaxChunkSize - open_chunk_size_, size - pos);
  const std::size_t scan_start = pos;
  const auto found = find_cut(bytes, pos, limit, hash);
  if (found.cut) {
    reset();
    return found.end;
  }
  open_chunk_size_ += limit - scan_start;
  if (open_chunk_size_ >= kMaxChunkSize) {
    reset();
    return limit;
  }
  rolling_hash_ = found.hash;
  return std::nullopt;
}

std::vector<std::size_t> chunk_lengths(ByteSpan data) {
  std::vector<std::size_t> lengths;
  Chunker chunker;
  while (!data.empty()) {
    const std::size_t before = chunker.open_chunk_size();
    auto cut = chunker.next_boundary(data);
    if (!cut) {
      lengths.push_back(chunker.open_chunk_size());
      break;
    }
    lengths.push_back(before + *cut);
    data = data.subspan(*cut);
  }
  return lengths;
}

std::vector<std::size_t> npm_client_chunk_lengths(ByteSpan data) {
  const auto* bytes = reinterpret_cast<const std::uint8_t*>(data.data());
  std::vector<std::size_t> lengths;
  for (std::size_t start = 0; start < data.size();) {
    const std::size_t scan_end = std::min(data.size(), start + kMaxChunkSize);
    std::size_t end = scan_end;
    std::uint64_t hash = 0;
    for (std::size_t i = std::min(start + kMinChunkSize - kHashWindow - 1, scan_end); i < scan_end; ++i) {
      hash = roll(hash, bytes[i]);
      if ((hash & kBoundaryMask) == 0) {
        end = i + 1;
        break;
      }
    }
    lengths.push_back(end - start);
    start = end;
  }
  return lengths;
}

namespace {

// Next cut of a chunker that cut at `from` (an offset into `bytes`, whose candidates are
// `candidates`), by one of the two rules in use: xet-core's and ours (the spec: test from 8,192
// bytes into a chunk) or the npm client's (its hash restarts 8,127 bytes in, so it also tests
// 8,128 to 8,190 bytes in, with a hash of fewer than 64 bytes). nullopt when that cut is not
// decided within the bytes.
std::optional<std::size_t> next_cut_by_rule(const std::uint8_t* bytes, std::size_t size,
                                            const std::vector<std::size_t>& candidates, std::size_t from,
                                            bool npm_rule) {
  const std::size_t forced = from + kMaxChunkSize;
  std::size_t first_full_window = from + kMinChunkSize;
  if (npm_rule) {
    std::uint64_t hash = 0;
    const std::size_t restart = from + kMinChunkSize - kHashWindow - 1;
    for (std::size_t end = restart + 1; end < restart + kHashWindow && end <= size; ++end) {
      hash = roll(hash, bytes[end - 1]);
      if ((hash & kBoundaryMask) == 0) return end;
    }
    first_full_window = restart + kHashWindow;
  }
  const auto candidate = std::lower_bound(candidates.begin(), candidates.end(), first_full_window);
  if (candidate != candidates.end() && *candidate <= forced) return *candidate;
  if (forced <= size) return forced;
  return std::nullopt;
}

}  // namespace

// Simulates every chunker that may arrive at data's first byte. Its last cut q lies within
// kMaxChunkSize before it, and the bytes before data are unknown. Its next cut then comes no later
// than the first full-window candidate at least kMinChunkSize into data (or kMaxChunkSize): both
// rules cut there at the latest from any q <= 0. So every position up to that bound counts as a
// possible cut. From a cut inside data, each rule's next cut is decided by data's bytes alone,
// and both rules' are followed. A position x is certain when no possible cut before it jumps
// past it: every chunker, under either rule, then cuts at x. Past x only x's successors remain.
// This over-counts the possible cuts (mixing rules, all positions of the first stretch), which
// can only make a position less likely to qualify, never wrongly.
std::vector<std::size_t> certain_boundaries(ByteSpan data) {
  // Possible cuts followed before giving up. Where candidates are rare, forced cuts keep up to
  // 128 Ki phases apart for as long as the rarity lasts (a run of zeros: for ever), while the
  // paths over random data converge within a few chunks: the first stretch (at most 128 Ki
  // positions, each followed once) and then a few thousand.
  constexpr std::size_t kMaxFollowed = std::size_t{1} << 18;
  std::size_t followed = 0;
  const auto* bytes = reinterpret_cast<const std::uint8_t*>(data.data());
  const std::size_t size = data.size();
  std::vector<std::size_t> candidates;  // ends of full 64-byte windows with the top 16 bits zero
  std::uint64_t hash = 0;
  for (std::size_t i = 0; i < size; ++i) {
    hash = roll(hash, bytes[i]);
    if (i + 1 >= kHashWindow && (hash & kBoundaryMask) == 0) candidates.push_back(i + 1);
  }
  std::vector<std::size_t> found;
  auto first_bound = std::lower_bound(candidates.begin(), candidates.end(), kMinChunkSize);
  const std::size_t bound =
      first_bound != candidates.end() ? std::min(*first_bound, kMaxChunkSize) : kMaxChunkSize;
  if (bound > size) return found;
  std::size_t reach = bound;  // the furthest next cut of any possible cut so far
  std::set<std::size_t> open;  // possible cuts past `bound` not yet followed
  auto follow = [&](std::size_t from) -> bool {
    if (++followed > kMaxFollowed) return false;
    for (const bool npm_rule : {false, true}) {
      const auto next = next_cut_by_rule(bytes, size, candidates, from, npm_rule);
      if (!next) return false;
      reach = std::max(reach, *next);
      open.insert(*next);
    }
    return true;
  };
  for (std::size_t from = 0; from <= bound; ++from) {
    if (!follow(from)) return found;
  }
  while (!open.empty()) {
    const std::size_t position = *open.begin();
    open.erase(open.begin());
    if (position <= bound) continue;
    if (reach == position) {
      found.push_back(position);
      open.clear();  // every chunking passes here: only its continuations remain
    }
    if (!follow(position)) break;
  }
  return found;
}

std::vector<HashAndSize> ChunkHashStream::update(ByteSpan data) {
  std::vector<HashAndSize> completed;
  while (!data.empty()) {
    const std::size_t before = chunker_.open_chunk_size();
    auto cut = chunker_.next_boundary(data);
    if (!cut) {
      hash_state_.update(data);
      break;
    }
    hash_state_.update(data.first(*cut));
    completed.push_back({hash_state_.finish(), before + *cut});
    hash_state_.reset();
    data = data.subspan(*cut);
  }
  return completed;
}

std::optional<HashAndSize> ChunkHashStream::finish() {
  const std::size_t size = chunker_.open_chunk_size();
  std::optional<HashAndSize> last;
  if (size > 0) last = HashAndSize{hash_state_.finish(), size};
  chunker_.reset();
  hash_state_.reset();
  return last;
}

namespace {

// Appends to `ends` the end offsets of the chunks that complete in data[start, data.size()),
// a chunk opening at `start`. With `meet` (sorted), stops at the first end found in it and
// returns its index there; otherwise returns meet.size().
std::size_t scan_chunk_ends(ByteSpan data, std::size_t start, std::vector<std::size_t>& ends,
                            std::span<const std::size_t> meet = {}) {
  Chunker chunker;
  std::size_t position = start;
  std::size_t candidate = 0;
  while (position < data.size()) {
    auto cut = chunker.next_boundary(data.subspan(position));
    if (!cut) break;
    position += *cut;
    ends.push_back(position);
    while (candidate < meet.size() && meet[candidate] < position) ++candidate;
    if (candidate < meet.size() && meet[candidate] == position) return candidate;
  }
  return meet.size();
}

void hash_chunks(ByteSpan data, std::size_t start, std::span<const std::size_t> ends, std::vector<HashAndSize>& out) {
  for (std::size_t end : ends) {
    out.push_back({chunk_hash(data.subspan(start, end - start)), end - start});
    start = end;
  }
}

}  // namespace

ChunkedSpan chunk_and_hash(ByteSpan data, bool at_end) {
  ChunkedSpan result;
  std::vector<std::size_t> ends;
  if (data.size() < kParallelChunkingMinBytes) {
    scan_chunk_ends(data, 0, ends);
    hash_chunks(data, 0, ends, result.chunks);
  } else {
    // The helper's chunks start at `middle`; `helper_starts` lists middle and every end after it,
    // the offsets where this thread's sequence may meet the helper's.
    const std::size_t middle = data.size() / 2;
    std::vector<std::size_t> helper_starts{middle};
    std::vector<HashAndSize> helper_chunks;
    std::thread helper([&] {
      std::vector<std::size_t> helper_ends;
      scan_chunk_ends(data, middle, helper_ends);
      hash_chunks(data, middle, helper_ends, helper_chunks);
      helper_starts.insert(helper_starts.end(), helper_ends.begin(), helper_ends.end());
    });
    // The first half cannot meet the helper before `middle`: chunk it without looking.
    Chunker chunker;
    std::size_t position = 0;
    while (position < middle) {
      auto cut = chunker.next_boundary(data.subspan(position, middle - position));
      if (!cut) break;
      position += *cut;
      ends.push_back(position);
    }
    hash_chunks(data, 0, ends, result.chunks);
    helper.join();
    if (position == middle) {
      // A boundary exactly at the middle: the helper's chunks follow directly.
      result.chunks.insert(result.chunks.end(), helper_chunks.begin(), helper_chunks.end());
      ends.insert(ends.end(), helper_starts.begin() + 1, helper_starts.end());
    } else {
      // Go on from the last boundary before the middle until a boundary meets the helper's.
      const std::size_t resume = ends.empty() ? 0 : ends.back();
      std::vector<std::size_t> more;
      const std::size_t met = scan_chunk_ends(data, resume, more, helper_starts);
      hash_chunks(data, resume, more, result.chunks);
      ends.insert(ends.end(), more.begin(), more.end());
      if (met < helper_starts.size()) {
        // helper_chunks[i] ends at helper_starts[i + 1]: after meeting at index `met`, take the
        // helper's chunks from index `met` on.
        result.chunks.insert(result.chunks.end(), helper_chunks.begin() + static_cast<std::ptrdiff_t>(met),
                             helper_chunks.end());
        ends.insert(ends.end(), helper_starts.begin() + static_cast<std::ptrdiff_t>(met) + 1, helper_starts.end());
      }
    }
  }
  result.consumed = ends.empty() ? 0 : ends.back();
  if (at_end && result.consumed < data.size()) {
    const std::size_t last = data.size() - result.consumed;
    result.chunks.push_back({chunk_hash(data.subspan(result.consumed, last)), last});
    result.consumed = data.size();
  }
  return result;
}

}  // namespace bucketfs::xet
