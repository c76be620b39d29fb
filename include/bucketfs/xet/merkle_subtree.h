#pragma once
// A contiguous run of a file's chunks, summarized as the part of xet-core's aggregated merkle tree
// (the tree of xorb_hash(), and of file_hash() before its salt) that the run decides whatever
// chunks come before and after it: xet-core's MerkleHashSubtree. The CAS endpoint
// GET /v2/file-chunk-hashes returns one per unchanged gap of a file a client edits; the client
// merges them with the subtrees of the windows it re-chunked into the new file hash, without ever
// learning the gaps' chunk hashes.
//
// The tree groups 2 to 9 sibling nodes, a group ending at a natural cut (is_natural_cut) once it
// has 3 or more. Where a group boundary falls depends on the nodes before it, except after three
// natural cuts whose two gaps both lie in (2, 8): the boundary after the middle one is "stable".
// So, level by level, the nodes from the run's start up to its first stable boundary (the left
// part) and those after its last (the right part) stay unmerged, and the groups between become
// the next level's nodes. A run at the file's start (end) has no left (right) part on any level
// that has not kept one yet.
#include <cstddef>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "bucketfs/xet/hash.h"

namespace bucketfs::xet {

struct MerkleSubtree {
  // Every level's left part, from level 0 up, then every level's right part, from the top down.
  std::vector<HashAndSize> nodes;
  // Per level from 0: {nodes in its left part, nodes in its right part}.
  std::vector<std::pair<std::size_t, std::size_t>> levels;
  bool at_start = false;  // the run begins the file
  bool at_end = false;    // the run ends the file
};

// The subtree of `chunks`, a run of a file's chunks in order.
MerkleSubtree merkle_subtree(std::span<const HashAndSize> chunks, bool at_start, bool at_end);

// For a run that is the whole file (at_start and at_end): its aggregated root, which equals
// xorb_hash(chunks) (the zero hash for no chunks). nullopt for a partial run.
std::optional<Hash> merkle_subtree_root(const MerkleSubtree& subtree);

// The wire form: {"nodes": [{"hash": API hash string, "size": n}...], "levels": [[left, right]...],
// "at_start": bool, "at_end": bool} (serde's form of xet-core's struct, what clients parse).
nlohmann::json to_json(const MerkleSubtree& subtree);

}  // namespace bucketfs::xet
