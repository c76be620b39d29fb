#pragma once
// `bucketfs mount`, `bucketfs unmount`, `bucketfs status`, and `mount.bucketfs` (the helper
// mount(8) runs for `-t fuse.bucketfs` and /etc/fstab lines).
//
// A mount runs as a daemon: `bucketfs mount` forks, the child connects, checks the bucket and
// the token, opens the node cache, mounts, and only then tells the parent, which exits 0 (or
// prints the child's one-line error and exits 1). The daemon keeps a state file in the runtime
// directory ($BUCKETFS_RUNTIME_DIR, else /run/bucketfs for root, else $XDG_RUNTIME_DIR/bucketfs,
// else /tmp/bucketfs-UID), which `status` reads and `unmount` uses to find the daemon.

#include <CLI/CLI.hpp>

namespace bucketfs::cli {

void add_mount_commands(CLI::App& app);

// mount.bucketfs SOURCE MOUNTPOINT [-o OPTIONS]: argv as mount(8) passes it.
int mount_helper_main(int argc, char** argv);

}  // namespace bucketfs::cli
