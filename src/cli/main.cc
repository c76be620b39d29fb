// The `bucketfs` command.

#include <CLI/CLI.hpp>

#include "bucket_commands.h"
#include "copy_command.h"
#include "xet_commands.h"

int main(int argc, char** argv) {
  CLI::App app{"bucketfs: Hugging Face Storage Buckets as local folders", "bucketfs"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("bucketfs ") + BUCKETFS_VERSION);
  bucketfs::cli::add_bucket_commands(app);
  bucketfs::cli::add_copy_command(app);
  bucketfs::cli::add_xet_commands(app);
  CLI11_PARSE(app, argc, argv);
  return 0;
}
