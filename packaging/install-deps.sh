#!/usr/bin/env bash
# Installs every build and test dependency of bucketfs from Debian's packages (and the pinned npm
# client for the interop tests). Idempotent: quick when everything is already present.
set -euo pipefail

packages=(
  build-essential g++ meson ninja-build pkg-config
  libfuse3-dev fuse3 libcurl4-openssl-dev nlohmann-json3-dev liblmdb-dev lmdb-utils
  libzstd-dev liblz4-dev libgtest-dev libgmock-dev libbenchmark-dev
  libcli11-dev libmicrohttpd-dev nginx-light librust-blake3-dev b3sum clang libclang-rt-14-dev
  rsync attr sqlite3 fio psmisc time
  curl python3 bc
)

# node and npm: this machine kind ships them (nodejs from its own repository, with npm inside);
# Debian's separate npm package conflicts with that, so only install nodejs when npm is absent.
if ! command -v npm >/dev/null 2>&1; then packages+=(nodejs npm); fi

missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$package")
  fi
done

if ((${#missing[@]} > 0)); then
  echo "install-deps: installing ${missing[*]}"
  sudo_cmd=()
  if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The npm reference client, pinned by tests/npm/package-lock.json.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -f "$here/tests/npm/package-lock.json" ]; then
  if [ ! -d "$here/tests/npm/node_modules" ] ||
     [ "$here/tests/npm/package-lock.json" -nt "$here/tests/npm/node_modules/.package-lock.json" ]; then
    (cd "$here/tests/npm" && npm ci --no-audit --no-fund --loglevel=error)
  fi
fi
