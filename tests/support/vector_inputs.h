#pragma once
// Inputs of tests/data/xet-vectors.json, regenerated exactly as its generate.mjs describes them,
// and the loader for that file. Shared by the xet unit tests.

#include <array>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace bucketfs::testing {

inline std::string test_data_path(const std::string& name) {
  const char* dir = std::getenv("BUCKETFS_TEST_DATA");
  return std::string(dir ? dir : "tests/data") + "/" + name;
}

inline nlohmann::json load_json(const std::string& name) {
  std::ifstream in(test_data_path(name));
  if (!in) throw std::runtime_error("cannot open test data " + test_data_path(name));
  return nlohmann::json::parse(in);
}

// SplitMix64 outputs written as little-endian 8-byte words, cut to n bytes.
inline std::vector<std::byte> splitmix(std::uint64_t seed, std::size_t n) {
  std::vector<std::byte> out(n);
  std::uint64_t state = seed;
  for (std::size_t i = 0; i < n; i += 8) {
    state += 0x9E3779B97F4A7C15ULL;
    std::uint64_t z = state;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    for (std::size_t b = 0; b < 8 && i + b < n; ++b) out[i + b] = std::byte((z >> (8 * b)) & 0xff);
  }
  return out;
}

inline std::vector<std::byte> text_like(std::size_t n) {
  static const char* kWords[] = {"tensor", "layer", "weight", "bias", "grad",
                                 "step",   "loss",  "adam",   "epoch", "shard"};
  const auto random = splitmix(7, n);
  auto at = [&](std::size_t r) { return std::to_integer<unsigned>(random[r % n]); };
  std::vector<std::byte> out(n);
  std::size_t i = 0, r = 0;
  while (i < n) {
    std::string word = kWords[at(r++) % 10];
    word += (at(r++) % 4 == 0) ? '\n' : ' ';
    for (std::size_t k = 0; k < word.size() && i < n; ++k) out[i++] = std::byte(word[k]);
  }
  return out;
}

inline std::vector<std::byte> triggering(std::size_t n, std::size_t padding) {
  static const std::uint8_t kTrigger[128] = {
      154, 52,  42,  34,  159, 75,  126, 224, 70,  236, 12,  196, 79,  236, 178, 124, 127, 50,  99,
      178, 44,  176, 174, 126, 250, 235, 205, 174, 252, 122, 35,  10,  20,  101, 214, 69,  193, 8,
      115, 105, 158, 228, 120, 111, 136, 162, 198, 251, 211, 183, 253, 252, 164, 147, 63,  16,  186,
      162, 117, 23,  170, 36,  205, 187, 174, 76,  210, 174, 211, 175, 12,  173, 145, 59,  2,   70,
      222, 181, 159, 227, 182, 156, 189, 51,  226, 106, 24,  50,  183, 157, 140, 10,  8,   23,  212,
      70,  10,  234, 23,  33,  219, 254, 39,  236, 70,  49,  191, 116, 9,   115, 15,  101, 26,  159,
      165, 220, 15,  170, 56,  125, 92,  163, 94,  235, 38,  40,  49,  81};
  std::vector<std::byte> data;
  for (auto b : kTrigger) data.push_back(std::byte(b));
  data.resize(data.size() + padding, std::byte{0});
  while (data.size() < n) {
    const std::size_t take = std::min(n - data.size(), data.size());
    data.insert(data.end(), data.begin(), data.begin() + static_cast<std::ptrdiff_t>(take));
  }
  return data;
}

// The bytes a vectors.json case describes, or nullopt for a case name this file does not know.
inline std::optional<std::vector<std::byte>> vector_input(const std::string& name) {
  if (name == "random_1000000_seed0") return splitmix(0, 1000000);
  if (name == "const59_1000000") return std::vector<std::byte>(1000000, std::byte{59});
  if (name.rfind("trigger_65536_pad", 0) == 0) return triggering(65536, std::stoul(name.substr(17)));
  if (name == "empty") return std::vector<std::byte>{};
  if (name == "one_byte") return std::vector<std::byte>{std::byte{0x61}};
  if (name == "random_8191") return splitmix(1, 8191);
  if (name == "random_8192") return splitmix(1, 8192);
  if (name == "random_200000") return splitmix(1, 200000);
  if (name == "random_3000000") return splitmix(2, 3000000);
  if (name == "zeros_1MiB") return std::vector<std::byte>(1 << 20, std::byte{0});
  if (name == "text_like_1MiB") return text_like(1 << 20);
  if (name == "edit_base_2MiB") return splitmix(3, 2 * 1024 * 1024);
  if (name == "edit_modified") {
    const auto base = splitmix(3, 2 * 1024 * 1024);
    std::vector<std::byte> edited(base.begin(), base.begin() + 1500000);
    edited.insert(edited.end(), 10, std::byte{0xAB});
    edited.insert(edited.end(), base.begin() + 1500000, base.end());
    for (std::size_t k = 0; k < 100; ++k) edited[1000000 + k] ^= std::byte{0xFF};
    return edited;
  }
  return std::nullopt;
}

}  // namespace bucketfs::testing
