#include "bucketfs/xet/merkle_subtree.h"

#include <algorithm>

namespace bucketfs::xet {
namespace {

constexpr std::size_t kMinGroupNodes = 2;
constexpr std::size_t kMaxGroupNodes = 9;

bool stable_gap(std::size_t gap) { return gap > kMinGroupNodes && gap < kMaxGroupNodes - 1; }

// The first index at which a group starts whatever nodes precede `nodes`.
std::optional<std::size_t> first_stable_boundary(std::span<const HashAndSize> nodes) {
  if (nodes.size() <= kMinGroupNodes) return std::nullopt;
  std::optional<std::size_t> earlier_cut;
  std::optional<std::size_t> last_cut;
  for (std::size_t i = 0; i < nodes.size(); ++i) {
    if (!is_natural_cut(nodes[i].hash)) continue;
    if (last_cut && earlier_cut && stable_gap(i - *last_cut) && stable_gap(*last_cut - *earlier_cut)) {
      return *last_cut + 1;
    }
    earlier_cut = last_cut;
    last_cut = i;
  }
  return std::nullopt;
}

// The last index at which a group starts whatever nodes follow `nodes`: the mirror image.
std::optional<std::size_t> last_stable_boundary(std::span<const HashAndSize> nodes) {
  if (nodes.size() <= kMinGroupNodes) return std::nullopt;
  std::optional<std::size_t> later_cut;
  std::optional<std::size_t> next_cut;
  for (std::size_t i = nodes.size(); i-- > 0;) {
    if (!is_natural_cut(nodes[i].hash)) continue;
    if (next_cut && later_cut && stable_gap(*next_cut - i) && stable_gap(*later_cut - *next_cut)) {
      return *next_cut + 1;
    }
    later_cut = next_cut;
    next_cut = i;
  }
  return std::nullopt;
}

// How many nodes from the start of `nodes` (all of which are grouped) form the first group.
std::size_t first_group_size(std::span<const HashAndSize> nodes) {
  if (nodes.size() <= kMinGroupNodes) return nodes.size();
  const std::size_t limit = std::min(kMaxGroupNodes, nodes.size());
  for (std::size_t i = kMinGroupNodes; i < limit; ++i) {
    if (is_natural_cut(nodes[i].hash)) return i + 1;
  }
  return limit;
}

struct Split {
  std::size_t left = 0;   // leading nodes left unmerged
  std::size_t right = 0;  // trailing nodes left unmerged
};

// Merges the groups between `nodes`' stable boundaries into `parents`.
Split merge_stable_middle(std::span<const HashAndSize> nodes, bool at_start, bool at_end,
                          std::vector<HashAndSize>& parents) {
  const Split none{nodes.size(), 0};
  if (nodes.size() <= 1) return none;
  std::size_t begin = 0;
  if (!at_start) {
    const auto stable = first_stable_boundary(nodes);
    if (!stable) return none;
    begin = *stable;
  }
  std::size_t end = nodes.size();
  if (!at_end) {
    const auto stable = last_stable_boundary(nodes.subspan(begin));
    if (!stable) return none;
    end = begin + *stable;
  }
  if (begin >= end) return none;
  for (std::size_t at = begin; at < end;) {
    const std::size_t size = first_group_size(nodes.subspan(at, end - at));
    parents.push_back(merged_node(nodes.subspan(at, size)));
    at += size;
  }
  return {begin, nodes.size() - end};
}

}  // namespace

MerkleSubtree merkle_subtree(std::span<const HashAndSize> chunks, bool at_start, bool at_end) {
  std::vector<std::vector<HashAndSize>> lefts;
  std::vector<std::vector<HashAndSize>> rights;
  std::vector<HashAndSize> level(chunks.begin(), chunks.end());
  bool left_kept = false;
  bool right_kept = false;
  for (;;) {
    std::vector<HashAndSize> parents;
    const Split split = merge_stable_middle(level, at_start && !left_kept, at_end && !right_kept, parents);
    lefts.emplace_back(level.begin(), level.begin() + static_cast<std::ptrdiff_t>(split.left));
    rights.emplace_back(level.end() - static_cast<std::ptrdiff_t>(split.right), level.end());
    left_kept = left_kept || split.left > 0;
    right_kept = right_kept || split.right > 0;
    if (parents.empty()) break;
    if (parents.size() == 1) {
      lefts.push_back(std::move(parents));
      rights.emplace_back();
      break;
    }
    level = std::move(parents);
  }
  MerkleSubtree subtree;
  subtree.at_start = at_start;
  subtree.at_end = at_end;
  for (std::size_t i = 0; i < lefts.size(); ++i) {
    subtree.levels.emplace_back(lefts[i].size(), rights[i].size());
    subtree.nodes.insert(subtree.nodes.end(), lefts[i].begin(), lefts[i].end());
  }
  for (std::size_t i = rights.size(); i-- > 0;) {
    subtree.nodes.insert(subtree.nodes.end(), rights[i].begin(), rights[i].end());
  }
  return subtree;
}

std::optional<Hash> merkle_subtree_root(const MerkleSubtree& subtree) {
  if (!subtree.at_start || !subtree.at_end) return std::nullopt;
  if (subtree.nodes.empty()) return Hash{};
  // Fully closed: every level keeps nothing but the top, which holds the root alone.
  std::size_t before_top = 0;
  for (std::size_t i = 0; i + 1 < subtree.levels.size(); ++i) {
    before_top += subtree.levels[i].first + subtree.levels[i].second;
  }
  const auto& top = subtree.levels.back();
  if (before_top != 0 || top.first != 1 || top.second != 0) return std::nullopt;
  return subtree.nodes.front().hash;
}

nlohmann::json to_json(const MerkleSubtree& subtree) {
  auto nodes = nlohmann::json::array();
  for (const auto& node : subtree.nodes) nodes.push_back({{"hash", node.hash.to_string()}, {"size", node.size}});
  auto levels = nlohmann::json::array();
  for (const auto& [left, right] : subtree.levels) levels.push_back(nlohmann::json::array({left, right}));
  return {{"nodes", std::move(nodes)}, {"levels", std::move(levels)}, {"at_start", subtree.at_start},
          {"at_end", subtree.at_end}};
}

}  // namespace bucketfs::xet
