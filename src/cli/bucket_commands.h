#pragma once
// `bucketfs create|delete|ls|rm`: buckets and their files, like `hf buckets`.

#include <CLI/CLI.hpp>

namespace bucketfs::cli {

void add_bucket_commands(CLI::App& app);

}  // namespace bucketfs::cli
