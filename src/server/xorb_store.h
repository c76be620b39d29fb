#pragma once
// Serialized xorbs as content-addressed files: DATA/xorbs/<first 2 hex>/<xorb hash>.
// A xorb is written to a temporary name in the same folder, fsynced, renamed into place and the
// folder fsynced, so a file under its final name is always complete, even after a crash.

#include <cstdint>
#include <expected>
#include <string>

#include "bucketfs/xet/bytes.h"
#include "bucketfs/xet/hash.h"

namespace bucketfs::server {

class XorbStore {
 public:
  // Creates DATA/xorbs if needed and removes temporary files a crash left behind.
  static std::expected<XorbStore, std::string> open(const std::string& data_dir);

  // The final path of a xorb (whether or not it exists).
  std::string path_of(const xet::Hash& xorb_hash) const;
  bool contains(const xet::Hash& xorb_hash) const;
  // Stores `bytes` under `xorb_hash` durably. Returns false when it was already stored.
  std::expected<bool, std::string> put(const xet::Hash& xorb_hash, xet::ByteSpan bytes);

 private:
  explicit XorbStore(std::string root) : root_(std::move(root)) {}
  std::string root_;
};

}  // namespace bucketfs::server
