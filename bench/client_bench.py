#!/usr/bin/env python3
"""Client benchmark: bucketfs cp against curl (through resolve) and the npm @huggingface/hub client,
all against one bucketfs-server started here, on the same 1 GiB file, in the same run. Reports
the median wall time of several runs, throughput, and the peak RSS of each client process.
Writes bench/RESULTS-client.md. Run by scripts/bench-client.sh."""
import datetime
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("BUCKETFS_BUILD", os.path.join(ROOT, "build"))
BUCKETFS = os.path.join(BUILD, "src/cli/bucketfs")
SERVER = os.path.join(BUILD, "src/server/bucketfs-server")
SIZE = int(os.environ.get("BENCH_SIZE_MIB", "1024")) << 20
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
TOKEN = "hf_bench_client_0001"

NPM_UPLOAD = """
import { uploadFiles } from "@huggingface/hub";
import { openAsBlob } from "node:fs";
const [url, token, path, dest] = process.argv.slice(2);
await uploadFiles({ repo: { type: "bucket", name: "bench/client" }, hubUrl: url, accessToken: token,
  files: [{ path: dest, content: await openAsBlob(path) }] });
"""
NPM_DOWNLOAD = """
import { downloadFile } from "@huggingface/hub";
const [url, token, path] = process.argv.slice(2);
const blob = await downloadFile({ repo: { type: "bucket", name: "bench/client" }, path, hubUrl: url, accessToken: token });
let n = 0; const reader = blob.stream().getReader();
for (;;) { const { done, value } = await reader.read(); if (done) break; n += value.length; }
if (n !== Number(process.argv[5])) throw new Error("short download " + n);
"""


def run(command, stdout=subprocess.DEVNULL, cwd=None):
    """Runs `command`; returns (seconds, peak RSS in MiB of that process)."""
    start = time.monotonic()
    process = subprocess.Popen(command, stdout=stdout, stderr=subprocess.PIPE, cwd=cwd)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.monotonic() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{command[0]} failed: {process.stderr.read().decode()[-2000:]}")
    return elapsed, usage.ru_maxrss / 1024


def main():
    work = tempfile.mkdtemp(prefix="bucketfs-client-bench-")
    server = None
    try:
        with open(os.path.join(work, "tokens"), "w") as handle:
            handle.write(f"{TOKEN} write bench\n")
        with open(os.path.join(work, "token"), "w") as handle:
            handle.write(TOKEN + "\n")
        ready = os.path.join(work, "ready")
        server = subprocess.Popen([SERVER, "--data", os.path.join(work, "data"), "--tokens",
                                   os.path.join(work, "tokens"), "--ready-file", ready],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            if os.path.exists(ready) and open(ready).read().strip():
                break
            time.sleep(0.05)
        url = open(ready).read().strip()
        npm_dir = os.path.join(ROOT, "tests/npm")
        for name, text in (("up.mjs", NPM_UPLOAD), ("down.mjs", NPM_DOWNLOAD)):
            with open(os.path.join(npm_dir, f".bench-{name}"), "w") as handle:
                handle.write(text)
        common = ["--endpoint", url, "--token-file", os.path.join(work, "token")]
        subprocess.run([BUCKETFS, "create", "bench/client", *common], check=True, stdout=subprocess.DEVNULL)
        source = os.path.join(work, "data.bin")
        with open(source, "wb") as handle:
            for _ in range(SIZE >> 20):
                handle.write(os.urandom(1 << 20))
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
            with open(path, "wb") as handle:
                for _ in range(SIZE >> 20):
                    handle.write(os.urandom(1 << 20))
            uploads.append(path)
        measure("upload: bucketfs cp", lambda i: [BUCKETFS, "cp", uploads[i], f"hf://buckets/bench/client/cli-{i}.bin",
                                                  *common, "--cache-dir", os.path.join(work, f"upcache-{i}")])
        npm_uploads = []
        for i in range(RUNS):
            path = os.path.join(work, f"npm-up-{i}.bin")
            with open(path, "wb") as handle:
                for _ in range(SIZE >> 20):
                    handle.write(os.urandom(1 << 20))
            npm_uploads.append(path)
        measure("upload: npm @huggingface/hub", lambda i: ["node", ".bench-up.mjs", url, TOKEN, npm_uploads[i],
                                                            f"npm-{i}.bin"], cwd=npm_dir)
        subprocess.run([BUCKETFS, "cp", source, "hf://buckets/bench/client/model.bin", *common, "--cache-dir",
                        os.path.join(work, "seed-cache")], check=True)
        measure("download: curl of resolve (baseline)", lambda i: ["curl", "-sf", "-o", "/dev/null", "-H",
                                                                   f"Authorization: Bearer {TOKEN}",
                                                                   f"{url}/buckets/bench/client/resolve/model.bin"])
        measure("download: bucketfs cp (cold cache)", lambda i: [BUCKETFS, "cp", "hf://buckets/bench/client/model.bin",
                                                                 "-", *common, "--cache-dir",
                                                                 os.path.join(work, f"downcache-{i}")])
        measure("download: bucketfs cp (warm node cache)", lambda i: [BUCKETFS, "cp",
                                                                      "hf://buckets/bench/client/model.bin", "-",
                                                                      *common, "--cache-dir",
                                                                      os.path.join(work, "downcache-0")])
        measure("download: npm @huggingface/hub", lambda i: ["node", ".bench-down.mjs", url, TOKEN, "model.bin",
                                                             str(SIZE)], cwd=npm_dir)
    finally:
        if server:
            server.terminate()
            server.wait(timeout=20)
        for name in ("up.mjs", "down.mjs"):
            try:
                os.unlink(os.path.join(ROOT, "tests/npm", f".bench-{name}"))
            except OSError:
                pass
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
