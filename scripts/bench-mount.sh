#!/usr/bin/env bash
# Reads and writes through `bucketfs mount` against curl, bucketfs cp and local disk, same server,
# same run; see bench/mount_bench.py. Writes bench/RESULTS-mount.md.
#   --size-mib N (big file, default 1024), --runs N (default 3), --quick (64 MiB, 1 run, 1,000 files),
#   BUCKETFS_BUILD (build folder, default build). Needs root for drop_caches (else it says so).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash packaging/install-deps.sh
command -v fio >/dev/null || { echo "bench-mount: fio is missing (apt-get install fio)" >&2; exit 1; }
build="${BUCKETFS_BUILD:-build}"
if [ -f "$build/build.ninja" ]; then meson setup --reconfigure "$build" >/dev/null; else meson setup "$build" >/dev/null; fi
ninja -C "$build" -j2 src/cli/bucketfs src/server/bucketfs-server >/dev/null
BUCKETFS_BUILD="$(cd "$build" && pwd)" exec python3 bench/mount_bench.py "$@"
