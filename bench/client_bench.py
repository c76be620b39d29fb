#!/usr/bin/env python3
"""Client benchmark: bucketfs cp against curl (through resolve) and the npm @huggingface/hub client,
all against one bucketfs-server started here, on the same 1 GiB file, in the same run. Reports
the median wall time of several runs, throughput, and the peak RSS of each client process.
Writes bench/RESULTS-client.md. Run by scripts/bench-client.sh."""
import datetime
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

from benchlib import BUCKETFS, NPM_DIR, ROOT, NpmScripts, Server, run, write_random

SIZE = int(os.environ.get("BENCH_SIZE_MIB", "1024")) << 20
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
TOKEN = "hf_bench_client_0001"
BUCKET = "bench/client"


def main():
    work = tempfile.mkdtemp(prefix="bucketfs-client-bench-")
    server = None
    npm = NpmScripts()
    try:
        npm.__enter__()
        server = Server(work, TOKEN)
        npm_dir = NPM_DIR
        common = server.common
        server.create(BUCKET)
        source = os.path.join(work, "data.bin")
        write_random(source, SIZE)
        results = {}

        def measure(label, make_command, stdout=subprocess.DEVNULL, cwd=None):
            samples = [run(make_command(i), stdout=stdout, cwd=cwd) for i in range(RUNS)]
            results[label] = (statistics.median(s[0] for s in samples), max(s[1] for s in samples))

        # Uploads of new data: each run a different random file would cost time; instead each
        # run uses a fresh server-side name and a fresh cache, and the data is new to the store
        # only in the first run, so upload runs use distinct files.
        uploads = []
        for i in range(RUNS):
            path = os.path.join(work, f"up-{i}.bin")
            write_random(path, SIZE)
            uploads.append(path)
        measure("upload: bucketfs cp", lambda i: [BUCKETFS, "cp", uploads[i], f"hf://buckets/bench/client/cli-{i}.bin",
                                                  *common, "--cache-dir", os.path.join(work, f"upcache-{i}")])
        npm_uploads = []
        for i in range(RUNS):
            path = os.path.join(work, f"npm-up-{i}.bin")
            write_random(path, SIZE)
            npm_uploads.append(path)
        measure("upload: npm @huggingface/hub", lambda i: npm.upload(server, BUCKET, npm_uploads[i], f"npm-{i}.bin"),
                cwd=npm_dir)
        subprocess.run([BUCKETFS, "cp", source, "hf://buckets/bench/client/model.bin", *common, "--cache-dir",
                        os.path.join(work, "seed-cache")], check=True)
        measure("download: curl of resolve (baseline)", lambda i: server.curl(BUCKET, "model.bin"))
        measure("download: bucketfs cp (cold cache)", lambda i: [BUCKETFS, "cp", "hf://buckets/bench/client/model.bin",
                                                                 "-", *common, "--cache-dir",
                                                                 os.path.join(work, f"downcache-{i}")])
        measure("download: bucketfs cp (warm node cache)", lambda i: [BUCKETFS, "cp",
                                                                      "hf://buckets/bench/client/model.bin", "-",
                                                                      *common, "--cache-dir",
                                                                      os.path.join(work, "downcache-0")])
        measure("download: npm @huggingface/hub", lambda i: npm.download(server, BUCKET, "model.bin", SIZE),
                cwd=npm_dir)
    finally:
        if server:
            server.stop()
        npm.__exit__(None, None, None)
        shutil.rmtree(work, ignore_errors=True)

    mib = SIZE / 2**20
    baseline_down = results["download: curl of resolve (baseline)"][0]
    npm_down = results["download: npm @huggingface/hub"][0]
    npm_up = results["upload: npm @huggingface/hub"][0]
    lines = [f"Measured {datetime.date.today()} on this machine by `bash scripts/bench-client.sh` "
             f"({mib:.0f} MiB of random data, median of {RUNS} runs; client and server share the 2 cores).", "",
             "| operation | seconds | MiB/s | ratio | client peak RSS |", "|---|---:|---:|---|---:|"]
    for label, (seconds, rss) in results.items():
        if label.startswith("download"):
            ratio = f"{baseline_down / seconds:.2f} x curl, {npm_down / seconds:.2f} x npm"
        else:
            ratio = f"{npm_up / seconds:.2f} x npm"
        lines.append(f"| {label} | {seconds:.2f} | {mib / seconds:,.0f} | {ratio} | {rss:,.0f} MiB |")
    text = "\n".join(lines) + "\n"
    print(text)
    with open(os.path.join(ROOT, "bench/RESULTS-client.md"), "w") as handle:
        handle.write("# Client benchmark\n\n" + text)


if __name__ == "__main__":
    sys.exit(main())
