#pragma once
// A new file made of byte ranges of files already stored, uploading only what the range edges
// cut (the partial copy of copy_file_range(2) in a mount, issue 8).
//
// A stored file is a list of chunks in xorbs. For each part [start, end) of a stored file:
//   * every chunk wholly inside the range is referenced where it is stored: the new file's
//     terms name the same xorb and chunk indices (consecutive chunks of one xorb form one term),
//     and no byte of it is read or sent;
//   * a chunk the range cuts (at most the first and the last of a part, or the one chunk a small
//     range falls in) is read whole through the Downloader, checked against its listed chunk
//     hash, and the bytes of it inside the range are chunked again (with the bytes of the
//     neighbouring part's edge when two edges meet) and packed into a new, small xorb.
// Then one shard with the new xorb(s) and the file's terms, verification hashes and file hash
// (the Xet file hash over the resulting chunk list, hashing.md). That hash differs from the one
// an upload of the same bytes would get (the edges are chunked on their own), but it is a valid
// Xet file: the server checks the terms against its chunks, and every client reconstructs it.
//
// The chunk hashes come from CasClient::file_chunks, a bucketfs-server extension: the Xet API
// gives a client no chunk hashes of a stored file without downloading it. Against another
// server the call fails with kind remote and hub kind entry_not_found before anything is sent,
// and the caller copies the bytes instead.
//
// Memory: chunk lists are asked for in slices of kComposeSliceBytes of file; held are one slice's
// chunk list, the new file's terms (one per run of consecutive chunks), one open term's chunk
// hashes (at most a xorb's) and the pending edge bytes (a few chunks).
//
// Thread-safety: calls may run concurrently (CasClient and Downloader are thread-safe).

#include <cstdint>
#include <span>

#include "bucketfs/hub/cas_client.h"
#include "bucketfs/transfer/download.h"
#include "bucketfs/transfer/upload.h"
#include "bucketfs/xet/hash.h"
#include "bucketfs/xet/reconstruction.h"

namespace bucketfs::transfer {

inline constexpr std::uint64_t kComposeSliceBytes = std::uint64_t{1} << 30;

// Bytes [range.start, range.end) of the stored file `file_hash` of `file_size` bytes.
// REQUIRES: range.start < range.end <= file_size.
struct StoredRange {
  xet::Hash file_hash;
  std::uint64_t file_size = 0;
  xet::FileByteRange range;
};

struct ComposedFile {
  xet::Hash file_hash;
  std::uint64_t size = 0;
  std::uint64_t referenced_chunks = 0;  // chunks referenced where they are stored
  std::uint64_t edge_chunks_read = 0;   // chunks the range edges cut, read whole
  std::uint64_t new_chunks = 0;         // chunks of the edge bytes, uploaded
  std::uint64_t new_chunk_bytes = 0;
  std::uint64_t xorb_bytes_sent = 0;    // serialized bytes of the new xorbs
  std::uint64_t terms = 0;
};

// Uploads the file made of `parts` in order (see the top) and its shard; the caller then commits
// `file_hash` with a batch addFile. `cas` needs a write token (it also reads the chunk lists);
// `downloader` reads the edge chunks (through the node chunk cache when it has one).
// Errors: kind internal for empty `parts` or a part outside its file, kind remote for a failed
// or refused CAS call (entry_not_found: the server has no chunk list, see the top),
// kind source when an edge chunk could not be read or does not match its listed hash.
UploadResult<ComposedFile> compose_file(hub::CasClient& cas, Downloader& downloader,
                                        std::span<const StoredRange> parts,
                                        const http::CancellationToken* cancel = nullptr);

}  // namespace bucketfs::transfer
