#pragma once
// `bucketfs cp SRC DST`: a local file (or `-`) to a bucket path with dedup upload, a bucket file
// to a local file (or `-`), or a bucket file to another bucket path (server-side, zero bytes).

#include <CLI/CLI.hpp>

namespace bucketfs::cli {

void add_copy_command(CLI::App& app);

}  // namespace bucketfs::cli
