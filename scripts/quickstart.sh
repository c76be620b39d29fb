#!/usr/bin/env bash
# The main job on a fresh machine: install the dependencies, build bucketfs, and mount a bucket
# as a directory, in the foreground (Ctrl-C unmounts, after committing pending uploads).
#
# Without a Hub token (HF_TOKEN, HF_TOKEN_PATH or ~/.cache/huggingface/token) it runs the local
# store, bucketfs-server, with a bucket `local/demo`, and mounts that. With a token it mounts
# BUCKETFS_BUCKET (NS/NAME[/PREFIX]) of the Hub at HF_ENDPOINT (default https://huggingface.co).
#   BUCKETFS_MOUNT  the mount point (default ~/bucketfs/demo)
#   BUCKETFS_BUCKET the Hub bucket to mount when a token is given (required then)
#   BUCKETFS_DATA   where the local store keeps its data (default ~/.local/share/bucketfs-server)
#   BUCKETFS_LISTEN host:port of the local store (default 127.0.0.1:8080)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash packaging/install-deps.sh
if [ -f build/build.ninja ]; then meson setup --reconfigure build >/dev/null; else meson setup build >/dev/null; fi
ninja -C build -j2 >/dev/null
bucketfs=$PWD/build/src/cli/bucketfs

mountpoint=${BUCKETFS_MOUNT:-$HOME/bucketfs/demo}
mkdir -p "$mountpoint"

hub_token=${HF_TOKEN:-}
if [ -z "$hub_token" ]; then
  token_path=${HF_TOKEN_PATH:-$HOME/.cache/huggingface/token}
  [ -s "$token_path" ] && hub_token=present
fi

server=
cleanup() {
  "$bucketfs" unmount "$mountpoint" 2>/dev/null || true
  if [ -n "$server" ]; then kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true; fi
}
trap cleanup EXIT INT TERM

if [ -n "$hub_token" ]; then
  if [ -z "${BUCKETFS_BUCKET:-}" ]; then
    echo "quickstart: a Hub token is set: name the bucket to mount in BUCKETFS_BUCKET=NS/NAME" >&2
    exit 1
  fi
  source=$BUCKETFS_BUCKET
  "$bucketfs" mount "$source" "$mountpoint"
  where=${HF_ENDPOINT:-https://huggingface.co}
else
  data=${BUCKETFS_DATA:-$HOME/.local/share/bucketfs-server}
  listen=${BUCKETFS_LISTEN:-127.0.0.1:8080}
  mkdir -p "$(dirname "$data")"
  ready=$(mktemp)
  rm -f "$ready"
  build/src/server/bucketfs-server --data "$data" --listen "$listen" --ready-file "$ready" &
  server=$!
  for _ in $(seq 200); do [ -s "$ready" ] && break; sleep 0.05; done
  url=$(cat "$ready")
  rm -f "$ready"
  token_file="$data/quickstart-token"
  awk '!/^#/ && NF { print $1; exit }' "$data/tokens" > "$token_file"
  chmod 600 "$token_file"
  curl -s -o /dev/null -H "Authorization: Bearer $(cat "$token_file")" -X POST "$url/api/buckets/local/demo"
  source=local/demo
  "$bucketfs" mount --endpoint "$url" --token-file "$token_file" "$source" "$mountpoint"
  where="$url (bucketfs-server, data in $data)"
fi

cat <<TEXT

Bucket $source of $where is mounted at $mountpoint.
  cp -r some/folder $mountpoint/        write files; close() queues the upload, fsync() commits
  ls -l $mountpoint                      read them back (from any machine that mounts the bucket)
  $bucketfs status                       pending uploads, cache use, errors
Ctrl-C commits what is pending and unmounts.
TEXT
while "$bucketfs" status --json | grep -q "\"mountpoint\": \"$(realpath "$mountpoint")\""; do sleep 2; done
