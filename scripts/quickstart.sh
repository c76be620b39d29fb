#!/usr/bin/env bash
# The main job on a fresh machine: install the dependencies, build bucketfs, and run the local
# store, bucketfs-server, in the foreground (Ctrl-C stops it), with a bucket `local/demo` ready.
# Until the mount lands (issue 5) this is the part of bucketfs that runs end to end: any Hub
# client (the npm @huggingface/hub, curl) can create buckets, upload and download against it.
#   BUCKETFS_DATA   where the store keeps its data (default ~/.local/share/bucketfs-server)
#   BUCKETFS_LISTEN host:port to listen on (default 127.0.0.1:8080)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash packaging/install-deps.sh
if [ -f build/build.ninja ]; then meson setup --reconfigure build >/dev/null; else meson setup build >/dev/null; fi
ninja -C build -j2 >/dev/null

data=${BUCKETFS_DATA:-$HOME/.local/share/bucketfs-server}
listen=${BUCKETFS_LISTEN:-127.0.0.1:8080}
mkdir -p "$(dirname "$data")"
ready=$(mktemp)
rm -f "$ready"
build/src/server/bucketfs-server --data "$data" --listen "$listen" --ready-file "$ready" &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; rm -f "$ready"' EXIT INT TERM
for _ in $(seq 200); do [ -s "$ready" ] && break; sleep 0.05; done
url=$(cat "$ready")
token=$(awk '!/^#/ && NF { print $1; exit }' "$data/tokens")
curl -s -o /dev/null -H "Authorization: Bearer $token" -X POST "$url/api/buckets/local/demo"
cat <<TEXT

bucketfs-server is serving $url with bucket local/demo (data in $data).
The write token for namespace 'local' is in $data/tokens (mode 0600).
  curl -H "Authorization: Bearer \$(awk '!/^#/{print \$1; exit}' $data/tokens)" $url/api/buckets/local/demo
  npm @huggingface/hub: uploadFiles({repo: {type: "bucket", name: "local/demo"}, hubUrl: "$url", accessToken, files})
Ctrl-C stops it.
TEXT
wait "$server"
