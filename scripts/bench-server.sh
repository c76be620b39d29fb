#!/usr/bin/env bash
# Range GET throughput of stored xorb bytes from bucketfs-server on loopback, against nginx
# serving the same file in the same run. Uploads a 200 MB file through the CAS API with curl,
# asks for its reconstruction, then fetches the signed range of one ~64 MiB xorb repeatedly from
# both servers. Prints a table and writes it to bench/RESULTS-server.md.
#   --runs N   fetches per server, the median is reported (default 15)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs=15
while (($#)); do
  case "$1" in
    --runs) runs=$2; shift ;;
    *) echo "bench-server.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

bash packaging/install-deps.sh
if [ -f build/build.ninja ]; then meson setup --reconfigure build -Dbenchmarks=true >/dev/null; else meson setup build -Dbenchmarks=true >/dev/null; fi
ninja -C build -j2 src/server/bucketfs-server bench/make_upload >/dev/null

work=$(mktemp -d)
server_pid=""
nginx_conf=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  [ -n "$nginx_conf" ] && nginx -c "$nginx_conf" -p "$work/nginx" -s stop 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

token=hf_bench_token_0001
echo "$token write bench" >"$work/tokens"
build/src/server/bucketfs-server --data "$work/data" --tokens "$work/tokens" --listen 127.0.0.1:0 \
  --ready-file "$work/ready" >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 200); do [ -f "$work/ready" ] && break; sleep 0.05; done
url=$(cat "$work/ready")

file_hash=$(build/bench/make_upload "$work/upload" 200000000)
auth=(-H "Authorization: Bearer $token")
curl -sf "${auth[@]}" -X POST "$url/api/buckets/bench/range" >/dev/null
cas=$(curl -sf "${auth[@]}" "$url/api/buckets/bench/range/xet-write-token" | python3 -c 'import json,sys; print(json.load(sys.stdin)["accessToken"])')
for xorb in "$work"/upload/xorbs/*; do
  curl -sf -H "Authorization: Bearer $cas" --data-binary @"$xorb" "$url/v1/xorbs/default/$(basename "$xorb")" >/dev/null
done
curl -sf -H "Authorization: Bearer $cas" --data-binary @"$work/upload/shard.bin" "$url/v1/shards" >/dev/null
printf '{"type":"addFile","path":"model.bin","xetHash":"%s"}\n' "$file_hash" |
  curl -sf "${auth[@]}" -H 'Content-Type: application/x-ndjson' --data-binary @- "$url/api/buckets/bench/range/batch" >/dev/null

# The first fetch entry of the reconstruction: a signed URL and its byte range (inclusive).
read -r fetch_url first last xorb_hash < <(curl -sf -H "Authorization: Bearer $cas" "$url/v2/reconstructions/$file_hash" |
  python3 -c '
import json, sys
r = json.load(sys.stdin)
xorb, entries = max(r["xorbs"].items(), key=lambda kv: kv[1][0]["ranges"][0]["bytes"]["end"])
e = entries[0]
b = e["ranges"][0]["bytes"]
print(e["url"], b["start"], b["end"], xorb)')
stored="$work/data/xorbs/${xorb_hash:0:2}/$xorb_hash"

mkdir -p "$work/nginx/logs" "$work/nginx/root"
ln -s "$stored" "$work/nginx/root/xorb"
nginx_conf="$work/nginx/nginx.conf"
nginx_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$nginx_conf" <<CONF
daemon on;
user root;
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/logs/error.log;
events { worker_connections 64; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  server { listen 127.0.0.1:$nginx_port; root $work/nginx/root; disable_symlinks off; }
}
CONF
nginx -c "$nginx_conf" -p "$work/nginx"

range="bytes=$first-$last"
# Same bytes from both before timing anything.
curl -sf -H "Range: $range" "$fetch_url" -o "$work/from-server"
curl -sf -H "Range: $range" "http://127.0.0.1:$nginx_port/xorb" -o "$work/from-nginx"
cmp "$work/from-server" "$work/from-nginx"
rm -f "$work/from-server" "$work/from-nginx"

measure() {  # URL -> one speed per line (bytes/s)
  for _ in $(seq "$runs"); do
    curl -sf -H "Range: $range" -o /dev/null -w '%{speed_download}\n' "$1"
  done
}
server_speeds=$(measure "$fetch_url")
nginx_speeds=$(measure "http://127.0.0.1:$nginx_port/xorb")

python3 - "$((last - first + 1))" "$runs" <<PY
import statistics, sys, datetime
size, runs = int(sys.argv[1]), int(sys.argv[2])
server = statistics.median(float(x) for x in """$server_speeds""".split())
nginx = statistics.median(float(x) for x in """$nginx_speeds""".split())
text = (f"Measured {datetime.date.today()} on this machine by \`bash scripts/bench-server.sh\` "
        f"(median of {runs} fetches of one {size / 2**20:.1f} MiB signed xorb range over loopback).\n\n"
        "| server | MiB/s | ratio to nginx |\n|---|---:|---:|\n"
        f"| **baseline: nginx 1.22, sendfile, same file and Range** | {nginx / 2**20:,.0f} | 1.00 |\n"
        f"| bucketfs-server signed xorb URL | {server / 2**20:,.0f} | {server / nginx:.2f} |\n")
print(text)
open("bench/RESULTS-server.md", "w").write("# bucketfs-server range GET benchmark\n\n" + text)
PY
