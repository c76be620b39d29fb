#!/usr/bin/env bash
# The benchmark suite of issue 7: every mount figure against a ceiling or peer measured in the same
# run (curl, bench/passthrough, local disk and page cache, bucketfs cp, the npm client, b3sum),
# against a bucketfs-server it starts; see bench/suite.py. Prints a table, writes bench/RESULTS.md.
#   --quick (64 MiB files, 1 run: a few minutes), --runs N (default 3), --size S (default 2G),
#   --ckpt-size S (1G), --big-size S (memory rows; default --size, 10G for the issue's figure),
#   --files N, --tree-files N, --fio-seconds N, --only read,write,npm,hash,ckpt,namespace,memory;
#   BUCKETFS_BUILD (build folder, default build; configured here with -Dbenchmarks=true).
# Needs root for drop_caches (else it says so) and FUSE.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash packaging/install-deps.sh
for tool in fio b3sum curl openssl node; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing (bash packaging/install-deps.sh)" >&2; exit 1; }
done
[ -x /usr/bin/time ] || { echo "bench: /usr/bin/time (GNU time) is missing (bash packaging/install-deps.sh)" >&2; exit 1; }
build="${BUCKETFS_BUILD:-build}"
if [ -f "$build/build.ninja" ]; then
  meson configure "$build" -Dbenchmarks=true >/dev/null
else
  meson setup "$build" -Dbenchmarks=true >/dev/null
fi
ninja -C "$build" -j2 src/cli/bucketfs src/server/bucketfs-server bench/passthrough >/dev/null
BUCKETFS_BUILD="$(cd "$build" && pwd)" exec python3 bench/suite.py "$@"
