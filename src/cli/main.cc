// The `bucketfs` command.

#include <CLI/CLI.hpp>
#include <string_view>

#include "bucket_commands.h"
#include "copy_command.h"
#include "mount_command.h"
#include "verify_command.h"
#include "xet_commands.h"

int main(int argc, char** argv) {
  // Installed as mount.bucketfs (and mount.fuse.bucketfs), mount(8) runs us with its own argv.
  std::string_view invoked = argv[0];
  if (const auto slash = invoked.rfind('/'); slash != std::string_view::npos) invoked.remove_prefix(slash + 1);
  if (invoked.starts_with("mount.")) return bucketfs::cli::mount_helper_main(argc, argv);
  CLI::App app{"bucketfs: Hugging Face Storage Buckets as local folders", "bucketfs"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("bucketfs ") + BUCKETFS_VERSION);
  bucketfs::cli::add_bucket_commands(app);
  bucketfs::cli::add_copy_command(app);
  bucketfs::cli::add_xet_commands(app);
  bucketfs::cli::add_mount_commands(app);
  bucketfs::cli::add_verify_commands(app);
  CLI11_PARSE(app, argc, argv);
  return 0;
}
