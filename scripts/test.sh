#!/usr/bin/env bash
# Installs the dependencies, configures, builds and runs every test of bucketfs.
# The README's test command and what CI (.ci/run) runs. Options:
#   --no-sanitize   skip the second build of the unit tests under AddressSanitizer+UBSan
#   --fuzz-seconds N  how long each parser mutation test runs (default 10)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

sanitize=1
export BUCKETFS_FUZZ_SECONDS=${BUCKETFS_FUZZ_SECONDS:-10}
while (($#)); do
  case "$1" in
    --no-sanitize) sanitize=0 ;;
    --fuzz-seconds) BUCKETFS_FUZZ_SECONDS=$2; shift ;;
    *) echo "test.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

bash packaging/install-deps.sh

jobs=2
configure() {  # DIR [meson options...]
  local dir=$1; shift
  if [ -f "$dir/build.ninja" ]; then
    meson setup --reconfigure "$dir" "$@" >/dev/null
  else
    meson setup "$dir" "$@" >/dev/null
  fi
}

status=0
echo "== build (debugoptimized)"
configure build -Dbenchmarks=false  # the bench scripts turn them back on for themselves
ninja -C build -j"$jobs"
echo "== tests"
# Three at a time: the mount tests spend much of their time waiting (fsync, injected stalls,
# metadata TTLs), so a third process fills the gaps; each test has its own server and folders.
meson test -C build --num-processes 3 --print-errorlogs || status=1
logs=(build/meson-logs/testlog.json)

if ((sanitize)); then
  echo "== unit tests under AddressSanitizer + UndefinedBehaviorSanitizer"
  configure build-asan -Db_sanitize=address,undefined -Db_lundef=false -Dbenchmarks=false
  # Only the unit-test programs: the daemon, server and CLI are exercised in the first build.
  mapfile -t unit_targets < <(meson introspect build-asan --tests | python3 -c '
import json, os, sys
root = os.path.realpath("build-asan")
for test in json.load(sys.stdin):
    if any(s.endswith(":unit") or s == "unit" for s in test["suite"]):
        print(os.path.relpath(os.path.realpath(test["cmd"][0]), root))')
  ninja -C build-asan -j"$jobs" "${unit_targets[@]}"
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 ASAN_OPTIONS=detect_leaks=1 \
    meson test -C build-asan --no-rebuild --suite unit --num-processes "$jobs" --print-errorlogs || status=1
  logs+=(build-asan/meson-logs/testlog.json)
fi

# One closing line over every test case run (GoogleTest cases and script checks alike).
python3 scripts/summarize-tests.py "${logs[@]}" || status=1
exit "$status"
