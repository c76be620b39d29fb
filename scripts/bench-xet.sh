#!/usr/bin/env bash
# Benchmarks of the Xet core's per-byte stages, each next to its baseline measured in the same
# run on the same machine: `b3sum --num-threads 1` over the same 64 MiB of random bytes (the
# hashing ceiling of the issue), and LZ4 decompression against chunking plus hashing.
# Prints a table and writes it to bench/RESULTS-xet.md.
#   --repetitions N   runs of each figure, the median is reported (default 5)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repetitions=5
while (($#)); do
  case "$1" in
    --repetitions) repetitions=$2; shift ;;
    *) echo "bench-xet.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

bash packaging/install-deps.sh
if [ -f build/build.ninja ]; then meson setup --reconfigure build -Dbenchmarks=true >/dev/null; else meson setup build -Dbenchmarks=true >/dev/null; fi
ninja -C build -j2 bench/xet_bench >/dev/null

work=$(mktemp -d /dev/shm/bucketfs-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
BUCKETFS_BENCH_WRITE_INPUT="$work/input.bin" build/bench/xet_bench

# Baseline: b3sum, one thread, over the same bytes (mmap of a file in /dev/shm).
b3sum_times=()
for _ in $(seq "$repetitions"); do
  start=$(date +%s.%N)
  b3sum --num-threads 1 "$work/input.bin" >/dev/null
  end=$(date +%s.%N)
  b3sum_times+=("$(echo "$end - $start" | bc -l)")
done

build/bench/xet_bench --benchmark_repetitions="$repetitions" --benchmark_report_aggregates_only=true \
  --benchmark_format=json >"$work/bench.json"

python3 - "$work/bench.json" "$(stat -c %s "$work/input.bin")" "${b3sum_times[@]}" <<'PY'
import json, statistics, sys, subprocess, datetime
bench = json.load(open(sys.argv[1]))
size = int(sys.argv[2])
b3 = size / statistics.median(float(t) for t in sys.argv[3:]) / 1e6
rows = {}
for b in bench["benchmarks"]:
    if b.get("aggregate_name") != "median":
        continue
    rows[b["run_name"]] = (b["bytes_per_second"] / 1e6, b.get("ratio"))
labels = [
    ("BM_Blake3Keyed64KiB", "BLAKE3 keyed, 64 KiB pieces"),
    ("BM_ChunkBoundaries", "chunk boundaries (Gearhash)"),
    ("BM_ChunkAndHash", "chunking + chunk hashing"),
    ("BM_CompressLz4/0", "LZ4 compress, random"),
    ("BM_CompressLz4/1", "LZ4 compress, bf16"),
    ("BM_CompressBg4Lz4/1", "BG4+LZ4 compress, bf16"),
    ("BM_CompressPredicted/0", "predicted scheme compress, random"),
    ("BM_CompressPredicted/1", "predicted scheme compress, bf16"),
    ("BM_DecompressLz4/0", "LZ4 decompress, random (stored raw)"),
    ("BM_DecompressLz4/1", "LZ4 decompress, bf16"),
    ("BM_DecompressBg4Lz4/1", "BG4+LZ4 decompress, bf16"),
]
chunk_hash = rows["BM_ChunkAndHash"][0]
out = []
out.append(f"Measured {datetime.date.today()} on this machine by `bash scripts/bench-xet.sh` "
           f"(median of {len(sys.argv) - 3} runs, one core).\n")
out.append("| stage | MB/s | ratio to b3sum --num-threads 1 | stored/original |")
out.append("|---|---:|---:|---:|")
out.append(f"| **baseline: b3sum --num-threads 1, same 64 MiB** | {b3:,.0f} | 1.00 | |")
for key, label in labels:
    if key not in rows:
        continue
    mbps, ratio = rows[key]
    out.append(f"| {label} | {mbps:,.0f} | {mbps / b3:.2f} | {'' if ratio is None else f'{ratio:.3f}'} |")
out.append("")
out.append(f"Target: chunking + chunk hashing >= 0.5 x b3sum: **{chunk_hash / b3:.2f} x**. "
           f"LZ4 decompression of xorb chunks faster than chunking + hashing: "
           f"**{rows['BM_DecompressLz4/1'][0] / chunk_hash:.1f} x** (bf16), "
           f"BG4: **{rows['BM_DecompressBg4Lz4/1'][0] / chunk_hash:.1f} x**.")
text = "\n".join(out)
print(text)
open("bench/RESULTS-xet.md", "w").write("# Xet core benchmarks\n\n" + text + "\n")
PY
