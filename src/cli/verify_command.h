#pragma once
// `bucketfs verify PATH...`: re-downloads every file under the bucket paths from the store (no
//   cache), recomputes its xet hash and size, reports mismatches; exit 1 on any.
// `bucketfs warm PATH...`: fills the node's chunk cache with every chunk of the files under the
//   bucket paths, so that later reads (a mount, `cp`) do not touch the network.

#include <CLI/CLI.hpp>

namespace bucketfs::cli {

void add_verify_commands(CLI::App& app);

}  // namespace bucketfs::cli
