#!/usr/bin/env bash
# The main job on a fresh machine: install the dependencies, build bucketfs, and run it.
# Today bucketfs's first command shows how a file is cut into Xet chunks; this script will start
# a local bucketfs-server and mount a bucket as soon as those parts exist.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash packaging/install-deps.sh
if [ -f build/build.ninja ]; then meson setup --reconfigure build >/dev/null; else meson setup build >/dev/null; fi
ninja -C build -j2 >/dev/null

sample=$(mktemp)
trap 'rm -f "$sample"' EXIT
head -c 300000 /dev/urandom >"$sample"
cat "$sample" "$sample" >"$sample.twice" && mv "$sample.twice" "$sample"
echo "bucketfs xet chunks on a 600,000-byte file whose second half repeats the first:"
build/src/cli/bucketfs xet chunks "$sample"
