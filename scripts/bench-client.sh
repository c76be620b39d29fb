#!/usr/bin/env bash
# bucketfs cp against curl (resolve) and the npm client, same server, same run; see bench/client_bench.py.
#   BENCH_SIZE_MIB (default 1024), BENCH_RUNS (default 3), BUCKETFS_BUILD (build folder, default build)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash packaging/install-deps.sh
build="${BUCKETFS_BUILD:-build}"
if [ -f "$build/build.ninja" ]; then meson setup --reconfigure "$build" >/dev/null; else meson setup "$build" >/dev/null; fi
ninja -C "$build" -j2 src/cli/bucketfs src/server/bucketfs-server >/dev/null
BUCKETFS_BUILD="$(cd "$build" && pwd)" exec python3 bench/client_bench.py
