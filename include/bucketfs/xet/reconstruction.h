#pragma once
// File reconstructions (file-reconstruction.md, download-protocol.md, api.md): the JSON answers of
// the CAS reconstruction API as typed values, and read plans that say which xorb byte ranges to
// fetch and how to cut their decompressed chunks back into exactly the file bytes asked for.
// Pure functions over values: no I/O, no shared state, safe to call from any thread. Nothing here
// throws; every malformed input is an Error naming the field.
//
// Protocol facts this file relies on (and where they come from):
//  * Chunk ranges (`terms[].range`, v1 `fetch_info[].range`, v2 `ranges[].chunks`) are
//    end-EXCLUSIVE chunk indices [start, end) (download-protocol.md "Fields"; xet-core cas_types
//    `ChunkRange`).
//  * Byte ranges into the serialized xorb (v1 `url_range`, v2 `ranges[].bytes`) are end-INCLUSIVE
//    [start, end], copied verbatim into `Range: bytes=start-end` (download-protocol.md: "The
//    `bytes` ranges are end-inclusive"; xet-core `HttpRange` "Start and inclusive-end range for
//    HTTP range content", whose length is end - start + 1; @huggingface/hub XetBlob sends
//    `bytes=${url_range.start}-${url_range.end}` unchanged).
//  * The v2 shape: `xorbs` maps a xorb hash to a LIST of fetch entries (typically one; several only
//    when the signed URL would grow past ~8 KiB). An entry is one signed `url` plus `ranges`, each
//    {chunks, bytes}, sorted ascending. The URL's signature covers exactly that set of ranges, so an
//    entry is fetched whole, with one GET whose Range header lists every range in order
//    (multipart/byteranges when there are several). xet-core downloads every entry whole this way.
//  * The v1 shape: `fetch_info` maps a xorb hash to a list of {range, url, url_range}: one range
//    per URL. xet-core converts v1 into v2 by making each v1 entry a one-range v2 entry; so do we.
//  * A term's chunks lie inside ONE fetch range of its xorb (the download protocol finds "an entry
//    whose range contains the term's range"; xet-core reports "No xorb chunk range found for file
//    term" otherwise). Several terms may share one fetch range, and the same chunk range may
//    appear in several terms; the range is still fetched once.
//  * `unpacked_length` is the decompressed size of the term's whole chunk range; the decompressed
//    chunk sizes MUST add up to it, else the data is corrupt (download-protocol.md Step 3).
//  * `offset_into_first_range`: for a Range request [a, b], the number of decompressed bytes of the
//    term stream that precede file byte a (0 without Range, or when a is 0). It may span several
//    chunks of the first term. The terms may end past b (whole chunks are served); a client cuts the
//    tail itself (xet-core shrinks the last term; download-protocol.md "Range Downloads"). If b is
//    past the end of the file the terms simply end at the end of the file.
//  * The reconstruction Range header is `bytes=start-end`, end inclusive; a start >= the file size
//    gets 416 Range Not Satisfiable (api.md). plan_read() treats a start at or past the end of a
//    whole-file reconstruction the same way, with an empty plan.
//  * The batch endpoint (POST /v1/reconstructions) answers {files: {file id -> [terms]},
//    fetch_info: {xorb -> [v1 entries]}}, fetch_info shared by all files (api.md section 6).
//  * The spec's second example response (download-protocol.md) has a 61-digit xorb hash
//    "fedcba09...543"; it is a typo in the document and is rejected as kInvalidHash.

#include <cstddef>
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "bucketfs/xet/error.h"
#include "bucketfs/xet/hash.h"

namespace bucketfs::xet {

// Chunk indices [start, end) within one xorb.
struct ChunkRange {
  std::uint64_t start = 0;
  std::uint64_t end = 0;

  std::uint64_t size() const { return end > start ? end - start : 0; }
  // Whether `inner` is non-empty and lies within this range.
  bool contains(const ChunkRange& inner) const {
    return start <= inner.start && inner.end <= end && inner.start < inner.end;
  }
  bool operator==(const ChunkRange&) const = default;
};

// Byte offsets [first, last] within a serialized xorb, BOTH INCLUSIVE, as they go into an HTTP
// Range header. The JSON calls them {start, end}.
struct HttpByteRange {
  std::uint64_t first = 0;
  std::uint64_t last = 0;

  // REQUIRES: first <= last and last < UINT64_MAX (guaranteed for parsed responses).
  std::uint64_t length() const { return last - first + 1; }
  bool operator==(const HttpByteRange&) const = default;
};

// File bytes [start, end), end exclusive.
struct FileByteRange {
  std::uint64_t start = 0;
  std::uint64_t end = 0;

  std::uint64_t length() const { return end > start ? end - start : 0; }
  bool operator==(const FileByteRange&) const = default;
};

// One term: the decompressed chunks `chunks` of xorb `xorb`, `unpacked_length` bytes in all.
struct ReconstructionTerm {
  Hash xorb;
  ChunkRange chunks;
  std::uint64_t unpacked_length = 0;
  bool operator==(const ReconstructionTerm&) const = default;
};

// One contiguous piece of a xorb: chunks `chunks`, stored at serialized bytes `bytes`.
struct XorbByteRange {
  ChunkRange chunks;
  HttpByteRange bytes;
  bool operator==(const XorbByteRange&) const = default;
};

// One fetch entry: a signed URL valid for exactly `ranges` of xorb `xorb`, to be fetched with one
// GET carrying range_header(). A v1 entry becomes a XorbFetch with one range.
struct XorbFetch {
  Hash xorb;
  std::string url;
  std::vector<XorbByteRange> ranges;  // ascending, non-overlapping, non-empty

  // "bytes=a-b" or "bytes=a-b,c-d,...", ranges in order, ends inclusive. The signed URL accepts
  // this set and no other; with several ranges the answer is multipart/byteranges, parts in order.
  std::string range_header() const;
  bool operator==(const XorbFetch&) const = default;
};

// A reconstruction response of either version, in one form.
struct Reconstruction {
  std::uint64_t offset_into_first_range = 0;
  std::vector<ReconstructionTerm> terms;  // in file order
  // Fetch entries, grouped by xorb (xorbs in the order of their hash strings), each xorb's entries
  // in response order.
  std::vector<XorbFetch> fetches;

  // Sum of the terms' unpacked_length. REQUIRES: it fits 64 bits (validated by the parsers).
  std::uint64_t total_unpacked_length() const;
  bool operator==(const Reconstruction&) const = default;
};

// The batch response: each file's terms, and the fetch entries shared by all of them.
struct BatchReconstruction {
  std::map<Hash, std::vector<ReconstructionTerm>> files;
  std::vector<XorbFetch> fetches;  // as in Reconstruction

  // One file's reconstruction (offset 0, its terms, the entries of the xorbs it uses), or
  // kInvalidArgument naming the id when the batch does not hold it.
  Result<Reconstruction> file(const Hash& file_id) const;
};

// Parsers of the JSON texts. Unknown extra fields are ignored. Errors:
//  kInvalidFormat  not JSON; a field missing, of the wrong type, or not a non-negative integer;
//                  a chunk range with end <= start; a byte range with end < start or end = 2^64-1;
//                  an entry's ranges out of order or overlapping; a term no fetch range of its xorb
//                  covers; lengths whose sum overflows 64 bits; offset_into_first_range not inside
//                  the terms (>= their total, or non-zero with no terms).
//  kInvalidHash    a xorb or file hash that is not 64 hex digits.
// Every message names the field, e.g. `terms[2].range.end` or `xorbs["a1b2..."][0].ranges[1]`.
Result<Reconstruction> parse_reconstruction_v1(std::string_view json);  // offset, terms, fetch_info
Result<Reconstruction> parse_reconstruction_v2(std::string_view json);  // offset, terms, xorbs
// Either version: v2 when the object has `xorbs`, else v1.
Result<Reconstruction> parse_reconstruction(std::string_view json);
Result<BatchReconstruction> parse_batch_reconstruction(std::string_view json);

// The checks the parsers make, for reconstructions built by hand (e.g. by a server). Same errors.
Result<void> validate_reconstruction(const Reconstruction& reconstruction);

// JSON texts of the responses, for a server. v2 keeps the entries as they are; v1 has one entry per
// range (each with its entry's URL, which a real v1 server would sign per range). The batch form
// is the v1 shape. Parsing the output gives back the input (for v1: with one range per entry).
std::string to_json_v1(const Reconstruction& reconstruction);
std::string to_json_v2(const Reconstruction& reconstruction);
std::string to_json_batch(const BatchReconstruction& batch);

// The Range header for a reconstruction request of file bytes `range`: "bytes=start-(end-1)".
// kInvalidArgument when the range is empty (there is no such header; do not ask the server).
Result<std::string> reconstruction_range_header(FileByteRange range);

// One term's part in a read: copy decompressed bytes [skip, skip + take) of the term's chunks to
// output offset `output_offset`. The term's chunks come from fetches[fetch_index].ranges[range_index]
// of the plan; the bytes dropped at the end of the term are unpacked_length - skip - take.
struct PlannedTerm {
  std::size_t term_index = 0;  // into Reconstruction::terms
  Hash xorb;
  ChunkRange chunks;
  std::uint64_t unpacked_length = 0;
  std::size_t fetch_index = 0;  // into ReadPlan::fetches
  std::size_t range_index = 0;  // into ReadPlan::fetches[fetch_index].ranges
  std::uint64_t skip = 0;
  std::uint64_t take = 0;           // > 0
  std::uint64_t output_offset = 0;  // relative to ReadPlan::range.start
  bool operator==(const PlannedTerm&) const = default;
};

// How to produce file bytes `range`: GET every entry of `fetches` (each once, whole, in this order,
// which is the order of first use in the file), then cut the terms as `terms` says. The outputs of
// the terms are contiguous and in file order: terms[0].output_offset is 0 and each next term starts
// where the previous ended, so the plan yields exactly range.length() bytes.
struct ReadPlan {
  FileByteRange range;
  std::vector<XorbFetch> fetches;
  std::vector<PlannedTerm> terms;
  bool operator==(const ReadPlan&) const = default;
};

// Plans file bytes `wanted` from a reconstruction answered to a request whose Range started at file
// byte `requested_start` (0 when the request had no Range). The reconstruction's term stream then
// begins at file byte requested_start - offset_into_first_range; `wanted` may be any range within
// the bytes the terms describe, not only the one requested, so a whole-file reconstruction serves
// every read of the file.
//  * The plan covers [wanted.start, min(wanted.end, end of the terms)). The terms end at the end of
//    the file or past the requested range, so for a `wanted` inside the requested range a shorter
//    plan means end of file: for a whole-file reconstruction a read at or past the end of the file
//    gets an empty plan (range {wanted.start, wanted.start}), as read(2) returns 0.
//  * An empty `wanted` gets an empty plan.
//  * Errors: kInvalidArgument when wanted.end < wanted.start or wanted starts before the term
//    stream; kInvalidFormat when offset_into_first_range > requested_start, when the term stream's
//    end overflows, or when no fetch range covers a needed term.
// Only the fetch entries of terms in the plan are listed. Cost: linear in the number of terms.
Result<ReadPlan> plan_read(const Reconstruction& reconstruction, std::uint64_t requested_start,
                           FileByteRange wanted);

// The whole file from a reconstruction requested without Range: plan_read(r, 0, [0, total)).
// kInvalidArgument when offset_into_first_range is not 0 (a Range answer is not the whole file).
Result<ReadPlan> plan_whole_file(const Reconstruction& reconstruction);

// A piece of one decompressed chunk to copy into the plan's output.
struct CopySpan {
  std::uint64_t chunk = 0;          // chunk index within the xorb
  std::uint64_t chunk_offset = 0;   // first byte within that chunk's decompressed data
  std::uint64_t length = 0;         // > 0
  std::uint64_t output_offset = 0;  // relative to ReadPlan::range.start
  bool operator==(const CopySpan&) const = default;
};

// The copies that fetched range plan.fetches[fetch_index].ranges[range_index] contributes, given
// the decompressed sizes of its chunks, in chunk order (one size per chunk of the range; they are
// in the chunk headers, so they are known before decompressing). Spans are ordered by chunk, then
// offset in the chunk, so a caller can decompress one chunk at a time, copy its spans, and drop
// it. A chunk used by several terms (a repeated range) yields one span per use.
// Verifies, for every term of the plan served by this range, that its chunk sizes add up to its
// unpacked_length: kSizeMismatch naming the term otherwise (the plan's offsets would be wrong).
// kSizeMismatch too when chunk_sizes has the wrong count; kInvalidArgument for indices out of range.
Result<std::vector<CopySpan>> copy_spans(const ReadPlan& plan, std::size_t fetch_index,
                                         std::size_t range_index,
                                         std::span<const std::uint64_t> chunk_sizes);

}  // namespace bucketfs::xet
