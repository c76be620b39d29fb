#pragma once
// `bucketfs xet ...`: commands that expose the protocol core for inspection and scripting.

#include <CLI/CLI.hpp>

namespace bucketfs::cli {

// Adds the `xet` subcommand group (chunks, ...) to the application.
void add_xet_commands(CLI::App& app);

}  // namespace bucketfs::cli
