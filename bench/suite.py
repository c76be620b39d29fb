#!/usr/bin/env python3
"""The benchmark suite of issue 7: every figure of the mount next to a ceiling or peer measured in
the same run, on the same machine, against one bucketfs-server started here. Prints a table and
writes bench/RESULTS.md. Run by scripts/bench.sh.

Rows (medians of --runs runs; "daemon peak RSS" is the mount daemon's VmHWM over that mount's
life; every mount has its own runtime folder and, unless a row says warm, an empty cache):
  - cold sequential read of a --size file through a fresh mount, 1 MiB read(2)s, against curl of
    the same bytes through resolve; cold time to first byte (open + first 4 KiB read of a file
    on a fresh mount; median of 5 mounts) against one curl round trip (time_starttransfer of a
    1 KiB resolve, median of 5);
  - warm read (node chunk cache full, page cache dropped) against bench/passthrough serving the
    same file from local disk with the same FUSE settings (page cache dropped); hot read (page
    cache) against the local file read from the page cache; fio 4 KiB random reads (psync) on
    the warm mount against the same job on the passthrough;
  - sequential write of --size new bytes through a fresh mount until fsync returns (dd
    conv=fsync) against `bucketfs cp` of other new bytes (each source written just before its
    writer; the two take turns going first), and the npm @huggingface/hub client
    (tests/npm) uploading and downloading the same sizes;
  - b3sum --num-threads 1 and `bucketfs xet chunks` over the same bytes (page cache);
  - checkpoint series: five --ckpt-size checkpoints written whole through the mount, as a trainer
    does, each the previous with 10% of its bytes rewritten in --ckpt-spot pieces at random,
    unaligned offsets: xorb bytes the server received per checkpoint (/metrics) against the
    bytes changed, and the wall time of checkpoints 2-5 (open to fsync+close; earlier writes are
    synced before each) against the first;
  - namespace: --files small files created through the mount; a bucket of --tree-files files
    added through the API (NDJSON addFile batches naming one uploaded file, a tenth of them in
    one folder `big/`, the rest over 300 folders); `ls -lR`, `ls -l big` and `find` on fresh
    mounts against the same tree on local disk after drop_caches, and stat of a cached entry;
  - memory: daemon peak RSS writing and then reading a --big-size file, and writing it as 4 files
    side by side (one per rank of a sharded checkpoint).
"""
import argparse
import datetime
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import (BUCKETFS, GiB, MiB, NPM_DIR, ROOT, Mount, NpmScripts, Passthrough, Server, cleanup_all,
                      drop_caches, fio, hot_read, log, make_small_files, random_bytes, read_seq, run,
                      write_random)

TOKEN = "hf_bench_suite_0001"
BUCKET = "bench/suite"
SECTIONS = ("read", "write", "npm", "hash", "ckpt", "namespace", "memory")


def parse_size(text):
    """'2G', '512M', '64K', '10GiB' or bytes."""
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    scale = {"K": 1 << 10, "M": MiB, "G": GiB, "T": 1 << 40}
    if text and text[-1] in scale:
        return int(float(text[:-1]) * scale[text[-1]])
    return int(text)


def size_text(size):
    return f"{size / GiB:g} GiB" if size >= GiB else f"{size / MiB:g} MiB"


class Samples:
    """Per-figure samples of the runs: value and the peak RSS (MiB) that went with it."""

    def __init__(self):
        self.values = {}

    def add(self, key, value, rss=None, unit=""):
        self.values.setdefault(key, []).append((value, rss))
        log(f"{key}: {value:,.3f} {unit}" + (f" (peak RSS {rss:,.0f} MiB)" if rss is not None else ""))

    def has(self, key):
        return key in self.values and any(v is not None for v, _ in self.values[key])

    def median(self, key):
        return statistics.median(v for v, _ in self.values[key] if v is not None)

    def rss(self, key):
        values = [r for _, r in self.values.get(key, []) if r is not None]
        return max(values) if values else None


def curl_round_trip(server, bucket, path, times=5):
    """Median time_starttransfer (s) of `times` curls of a small file: one HTTP round trip."""
    seconds = []
    for _ in range(times):
        out = subprocess.run(server.curl(bucket, path, ["-w", "%{time_starttransfer}"]), capture_output=True,
                             text=True, check=True).stdout
        seconds.append(float(out))
    return statistics.median(seconds)


TTFB_SAMPLES = 5


def time_to_first_byte(path):
    """Seconds from open(2) of `path` until its first 4 KiB pread returned."""
    start = time.monotonic()
    fd = os.open(path, os.O_RDONLY)
    try:
        if len(os.pread(fd, 4096, 0)) == 0:
            raise RuntimeError(f"{path} is empty")
        return time.monotonic() - start
    finally:
        os.close(fd)


def write_whole(path, data):
    """Writes `data` to a new `path` in 1 MiB writes, fsync, close; returns seconds."""
    view = memoryview(data)
    start = time.monotonic()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for at in range(0, len(view), MiB):
            os.write(fd, view[at:at + MiB])
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.monotonic() - start


def edit_in_place(source, path, edits):
    """Copies `source` to a new `path` (copy_file_range: on the mount, a zero-byte copy of the
    committed file), then opens it O_RDWR (no O_TRUNC), writes `edits` ((offset, bytes) pairs),
    fsync, close. Returns (seconds until the last write returned, until fsync returned)."""
    start = time.monotonic()
    with open(source, "rb") as src, open(path, "wb") as dst:
        left = os.fstat(src.fileno()).st_size
        while left > 0:
            copied = os.copy_file_range(src.fileno(), dst.fileno(), left)
            if copied == 0:
                raise RuntimeError(f"copy of {source} stopped with {left} bytes left")
            left -= copied
    fd = os.open(path, os.O_RDWR)
    try:
        for at, piece in edits:
            os.pwrite(fd, piece, at)
        written = time.monotonic() - start
        os.fsync(fd)
    finally:
        os.close(fd)
    return written, time.monotonic() - start


def stat_latency(paths):
    """Mean seconds of one os.stat over `paths` (all of them, once)."""
    start = time.monotonic()
    for path in paths:
        os.stat(path)
    return (time.monotonic() - start) / len(paths)


class Suite:
    def __init__(self, args, cfg, work):
        self.args = args
        self.cfg = cfg
        self.work = work
        self.s = Samples()
        self.server = None
        self.notes = {}
        self.checkpoint_rows = []

    # --- helpers ------------------------------------------------------------------------------
    def path(self, *parts):
        return os.path.join(self.work, *parts)

    def bucketfs(self, *command, cache):
        return [BUCKETFS, *command, *self.server.common, "--cache-dir", self.path(cache)]

    def mount(self, bucket, name, cache):
        return Mount(self.work, self.server.url, bucket, name, self.path(cache)).start()

    def wanted(self, section):
        return section in self.cfg.sections

    # --- set-up -------------------------------------------------------------------------------
    def setup(self):
        self.server = Server(self.work, TOKEN)
        self.server.create(BUCKET)
        os.makedirs(self.path("local"))
        self.big = self.path("local", "big.bin")
        log(f"writing {size_text(self.cfg.size)} of random data and uploading it")
        write_random(self.big, self.cfg.size)
        subprocess.run(self.bucketfs("cp", self.big, f"hf://buckets/{BUCKET}/big.bin", cache="seed-cache"),
                       check=True)
        self.tiny = self.path("tiny.bin")
        write_random(self.tiny, 1024)
        subprocess.run(self.bucketfs("cp", self.tiny, f"hf://buckets/{BUCKET}/tiny.bin", cache="seed-cache"),
                       check=True)
        shutil.rmtree(self.path("seed-cache"), ignore_errors=True)

    # --- reads --------------------------------------------------------------------------------
    # Hot reads: the median of three reads of bytes already in the page cache (the first pass after
    # a read that filled the cache runs up to 1.5 x slower than the next ones, mount and local alike).
    def reads(self, r):
        cfg, s = self.cfg, self.s
        size = cfg.size
        curl = self.server.curl(BUCKET, "big.bin")
        run(curl)  # the server's files in the page cache for curl and the mount alike
        s.add("curl", size / MiB / run(curl)[0], unit="MiB/s")
        s.add("curl rtt", curl_round_trip(self.server, BUCKET, "tiny.bin") * 1000, unit="ms")

        # One sample is a few milliseconds and this VM's wake-ups alone move it by as much: the
        # median of TTFB_SAMPLES fresh mounts, each with an empty cache, like curl's round trip.
        samples, peak = [], 0.0
        for k in range(TTFB_SAMPLES):
            mount = self.mount(BUCKET, f"ttfb-{r}-{k}", f"cache-ttfb-{r}-{k}")
            samples.append(time_to_first_byte(mount.path("big.bin")) * 1000)
            mount.unmount()
            peak = max(peak, mount.peak_rss())
            shutil.rmtree(self.path(f"cache-ttfb-{r}-{k}"), ignore_errors=True)
        s.add("mount ttfb", statistics.median(samples), peak, unit="ms")

        cache = f"cache-read-{r}"
        mount = self.mount(BUCKET, f"cold-{r}", cache)
        got, seconds = read_seq(mount.path("big.bin"), cfg.read_cap)
        s.add("mount cold", got / MiB / seconds, mount.peak_rss(), unit="MiB/s")
        s.add("mount cold MiB", got / MiB)
        mount.unmount()
        if got < size:  # the cold read stopped at its cap: the rest into the chunk cache
            run(self.bucketfs("cp", f"hf://buckets/{BUCKET}/big.bin", "-", cache=cache))

        mount = self.mount(BUCKET, f"warm-{r}", cache)
        drop_caches()
        warm_bytes, seconds = read_seq(mount.path("big.bin"), cfg.read_cap)
        s.add("mount warm", warm_bytes / MiB / seconds, mount.peak_rss(), unit="MiB/s")
        s.add("mount hot", hot_read(mount.path("big.bin"), cfg.read_cap, warm_bytes), mount.peak_rss(), unit="MiB/s")
        drop_caches()
        result = fio(mount.path("big.bin"), "4k", cfg.fio_seconds, size, mount)
        s.add("mount fio 4k", result[0] if result else None, mount.peak_rss(), unit="IOPS")
        mount.cleanup() if result is None else mount.unmount()
        shutil.rmtree(self.path(cache), ignore_errors=True)

        passthrough = Passthrough(self.work, self.path("local"), f"pt-{r}", read_only=True).start()
        try:
            drop_caches()
            got, seconds = read_seq(passthrough.path("big.bin"), cfg.read_cap)
            s.add("passthrough", got / MiB / seconds, passthrough.peak_rss(), unit="MiB/s")
            s.add("passthrough hot", hot_read(passthrough.path("big.bin"), cfg.read_cap, got),
                  passthrough.peak_rss(), unit="MiB/s")
            drop_caches()
            result = fio(passthrough.path("big.bin"), "4k", cfg.fio_seconds, size, passthrough)
            s.add("passthrough fio 4k", result[0] if result else None, passthrough.peak_rss(), unit="IOPS")
        finally:
            passthrough.stop()
        drop_caches()
        got, seconds = read_seq(self.big, 600)
        s.add("local disk", got / MiB / seconds, unit="MiB/s")
        s.add("local hot", hot_read(self.big, 600, size), unit="MiB/s")

    # --- writes -------------------------------------------------------------------------------
    def writes(self, r):
        s, size = self.s, self.cfg.size
        sources = {name: self.path(f"w-{name}-{r}.bin") for name in ("mount", "cp", "npm")}
        if self.wanted("npm"):
            write_random(sources["npm"], size)

        def mount_write():
            self.server.create(f"bench/write-{r}")
            mount = self.mount(f"bench/write-{r}", f"write-{r}", f"cache-w-{r}")
            seconds = run(["dd", f"if={sources['mount']}", f"of={mount.path('big.bin')}", "bs=1M", "conv=fsync"])[0]
            s.add("mount write", size / MiB / seconds, mount.peak_rss(), unit="MiB/s")
            mount.unmount()

        def cp_write():
            self.server.create(f"bench/cp-{r}")
            seconds, rss = run(self.bucketfs("cp", sources["cp"], f"hf://buckets/bench/cp-{r}/big.bin",
                                             cache=f"cache-cp-{r}"))
            s.add("cp write", size / MiB / seconds, rss, unit="MiB/s")

        if self.wanted("write"):
            # Both writers start from the same state: the source written just before (its
            # dirty pages flushed, or the writer would run against their writeback), and each
            # goes first in every other run. Run after the other, a writer reuses the memory the
            # other just freed, which this VM hands out much faster than memory it has to take
            # back from the host (PERF-NOTES trap 1); `cp` always ran after the mount before.
            writers = [("mount", mount_write), ("cp", cp_write)]
            for name, writer in writers if r % 2 == 0 else reversed(writers):
                write_random(sources[name], size)
                os.sync()
                writer()
        if self.wanted("npm"):
            with NpmScripts() as npm:
                seconds, rss = run(npm.upload(self.server, BUCKET, sources["npm"], f"npm-{r}.bin"), cwd=NPM_DIR)
                s.add("npm upload", size / MiB / seconds, rss, unit="MiB/s")
                seconds, rss = run(npm.download(self.server, BUCKET, "big.bin", size), cwd=NPM_DIR)
                s.add("npm download", size / MiB / seconds, rss, unit="MiB/s")
        for path in list(sources.values()) + [self.path(f"cache-w-{r}"), self.path(f"cache-cp-{r}")]:
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.exists(path):
                os.unlink(path)

    # --- hashing ------------------------------------------------------------------------------
    def hashing(self, r):
        s, size = self.s, self.cfg.size
        read_seq(self.big, 600)  # in the page cache for both
        s.add("b3sum", size / MiB / run(["b3sum", "--num-threads", "1", self.big])[0], unit="MiB/s")
        s.add("xet chunks", size / MiB / run([BUCKETFS, "xet", "chunks", self.big])[0], unit="MiB/s")

    # --- checkpoint series --------------------------------------------------------------------
    def checkpoints(self, r):
        cfg, s = self.cfg, self.s
        size, spot = cfg.ckpt_size, cfg.ckpt_spot
        spots = max(1, size // 10 // spot)
        slot = size // spots
        rng = random.Random(7 + r)
        bucket = f"bench/ckpt-{r}"
        self.server.create(bucket)
        data = bytearray(random_bytes(size, f"ckpt-{r}"))
        mount = self.mount(bucket, f"ckpt-{r}", f"cache-ckpt-{r}")
        try:
            committed_files = 0
            for k in range(1, 6):
                changed = size
                if k > 1:
                    fresh = random_bytes(spots * spot, f"ckpt-{r}-{k}")
                    for i in range(spots):
                        at = i * slot + rng.randrange(slot - spot + 1)  # any offset, aligned or not
                        data[at:at + spot] = fresh[i * spot:(i + 1) * spot]
                    changed = spots * spot
                # Writeback of earlier sections' files (the 2 GiB source written at setup is
                # flushed about 30 s later, during checkpoint 1 or 2 of an `--only ckpt` run)
                # must not land inside a checkpoint's time.
                os.sync()
                before = self.server.metrics()["bucketfs_xorb_bytes_received_total"]
                start = time.monotonic()
                seconds = write_whole(mount.path(f"ckpt-{k}.bin"), data)
                committed_files += 1
                if not mount.wait_committed(committed_files):
                    raise RuntimeError(f"checkpoint {k} was not committed")
                committed = time.monotonic() - start
                sent = self.server.metrics()["bucketfs_xorb_bytes_received_total"] - before
                s.add(f"ckpt {k} seconds", seconds, mount.peak_rss(), unit="s")
                s.add(f"ckpt {k} committed seconds", committed, unit="s")
                s.add(f"ckpt {k} xorb bytes", sent, unit="bytes")
                s.add(f"ckpt {k} changed bytes", changed, unit="bytes")
                s.add(f"ckpt {k} sent/changed", sent / changed, mount.peak_rss(), unit="x")
            # The same series made in place: each checkpoint a zero-byte copy of the previous,
            # opened without O_TRUNC, 10% rewritten, fsync.
            rng = random.Random(70 + r)
            previous = mount.path("ckpt-1.bin")
            for k in range(2, 6):
                fresh = random_bytes(spots * spot, f"ckpt-{r}-place-{k}")
                edits = [(i * slot + rng.randrange(slot - spot + 1), fresh[i * spot:(i + 1) * spot])
                         for i in range(spots)]
                os.sync()
                before = self.server.metrics()
                path = mount.path(f"place-{k}.bin")
                written, seconds = edit_in_place(previous, path, edits)
                committed_files += 2  # the copy, then the edit
                if not mount.wait_committed(committed_files):
                    raise RuntimeError(f"in-place checkpoint {k} was not committed")
                after = self.server.metrics()
                sent = after["bucketfs_xorb_bytes_received_total"] - before["bucketfs_xorb_bytes_received_total"]
                served = after["bucketfs_xorb_bytes_served_total"] - before["bucketfs_xorb_bytes_served_total"]
                s.add(f"place {k} written seconds", written, unit="s")
                s.add(f"place {k} seconds", seconds, mount.peak_rss(), unit="s")
                s.add(f"place {k} xorb bytes", sent, unit="bytes")
                s.add(f"place {k} served bytes", served, unit="bytes")
                s.add(f"place {k} sent/changed", sent / (spots * spot), mount.peak_rss(), unit="x")
                previous = path
        finally:
            mount.unmount()
            shutil.rmtree(self.path(f"cache-ckpt-{r}"), ignore_errors=True)

    # --- namespace ----------------------------------------------------------------------------
    def namespace_setup(self):
        cfg, s = self.cfg, self.s
        # Small files through the mount, and on local disk with an fsync each (close is durable).
        self.server.create("bench/small")
        mount = self.mount("bench/small", "small", "cache-small")
        start = time.monotonic()
        s.add("create mount", make_small_files(mount.path("d"), cfg.files), mount.peak_rss(), unit="s")
        mount.wait_committed(cfg.files)
        s.add("create mount committed", time.monotonic() - start, mount.peak_rss(), unit="s")
        mount.unmount()
        shutil.rmtree(self.path("cache-small"), ignore_errors=True)
        s.add("create local fsync", make_small_files(self.path("local-small"), cfg.files, fsync_each=True), unit="s")
        shutil.rmtree(self.path("local-small"))

        # The big tree through the API: addFile lines naming one uploaded file.
        self.server.create("bench/tree")
        subprocess.run(self.bucketfs("cp", self.tiny, "hf://buckets/bench/tree/tiny.bin", cache="cache-tree"),
                       check=True)
        shutil.rmtree(self.path("cache-tree"), ignore_errors=True)
        _, headers, _ = self.server.request("HEAD", "/buckets/bench/tree/resolve/tiny.bin")
        xet_hash = {k.lower(): v for k, v in headers.items()}["x-xet-hash"]
        self.tree_paths = tree_layout(cfg.tree_files)
        start = time.monotonic()
        for at in range(0, len(self.tree_paths), 25000):
            body = "".join(json.dumps({"type": "addFile", "path": p, "xetHash": xet_hash}) + "\n"
                           for p in self.tree_paths[at:at + 25000])
            self.server.request("POST", "/api/buckets/bench/tree/batch", body.encode(),
                                {"Content-Type": "application/x-ndjson"})
        s.add("tree api", time.monotonic() - start, unit="s")
        local = self.path("local-tree")
        for path in self.tree_paths:
            full = os.path.join(local, path)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            os.close(os.open(full, os.O_WRONLY | os.O_CREAT, 0o644))
        self.big_dir = [p for p in self.tree_paths if p.startswith("big/")]

    def listings(self, r):
        s = self.s
        local = self.path("local-tree")
        for name, command in (("ls -lR", ["ls", "-lR"]), ("ls -l big", ["ls", "-l"]), ("find", ["find"])):
            mount = self.mount("bench/tree", f"list-{r}-{name.replace(' ', '')}", f"cache-list-{r}")
            drop_caches()
            target = "big" if name == "ls -l big" else ""
            s.add(f"{name} mount", run([*command, os.path.join(mount.mountpoint, target)])[0], mount.peak_rss(),
                  unit="s")
            if name == "ls -l big":  # entries and attributes now cached (readdirplus, 10 s TTL)
                s.add("stat mount", stat_latency([mount.path(p) for p in self.big_dir]) * 1e6, mount.peak_rss(),
                      unit="us")
            mount.unmount()
            shutil.rmtree(self.path(f"cache-list-{r}"), ignore_errors=True)
            drop_caches()
            s.add(f"{name} local", run([*command, os.path.join(local, target)])[0], unit="s")
            if name == "ls -l big":
                s.add("stat local", stat_latency([os.path.join(local, p) for p in self.big_dir]) * 1e6, unit="us")

    # --- memory -------------------------------------------------------------------------------
    def memory(self):
        s, size = self.s, self.cfg.big_size
        self.server.create("bench/memory")
        mount = self.mount("bench/memory", "mem-write", "cache-mem-w")
        zeros = subprocess.Popen(["head", "-c", str(size), "/dev/zero"], stdout=subprocess.PIPE)
        stream = subprocess.Popen(["openssl", "enc", "-aes-128-ctr", "-nosalt", "-pbkdf2", "-pass", "pass:memory"],
                                  stdin=zeros.stdout, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        zeros.stdout.close()
        seconds = run(["dd", f"of={mount.path('big.bin')}", "bs=1M", "iflag=fullblock", "conv=fsync"],
                      stdin=stream.stdout)[0]
        stream.stdout.close()
        stream.wait()
        zeros.wait()
        mount.unmount()  # waits for the drain, watching the daemon's peak until it exits
        s.add("memory write", size / MiB / seconds, mount.peak_rss(), unit="MiB/s")
        shutil.rmtree(self.path("cache-mem-w"), ignore_errors=True)
        mount = self.mount("bench/memory", "mem-read", "cache-mem-r")
        got, seconds = read_seq(mount.path("big.bin"), 3600)
        s.add("memory read", got / MiB / seconds, mount.peak_rss(), unit="MiB/s")
        mount.unmount()
        shutil.rmtree(self.path("cache-mem-r"), ignore_errors=True)
        # A sharded checkpoint: one file per rank, the ranks writing side by side.
        ranks = 4
        mount = self.mount("bench/memory", "mem-ranks", "cache-mem-p")
        started = time.monotonic()
        writers = [subprocess.Popen(
            ["bash", "-c", f"head -c {size // ranks} /dev/zero | openssl enc -aes-128-ctr -nosalt -pbkdf2 "
             f"-pass pass:rank{rank} 2>/dev/null | dd of={mount.path(f'rank{rank}.bin')} bs=1M iflag=fullblock "
             "conv=fsync status=none"]) for rank in range(ranks)]
        for writer in writers:
            if writer.wait() != 0:
                raise RuntimeError("a rank's writer failed")
        seconds = time.monotonic() - started
        mount.unmount()
        s.add("memory ranks", size / MiB / seconds, mount.peak_rss(), unit="MiB/s")
        shutil.rmtree(self.path("cache-mem-p"), ignore_errors=True)


def tree_layout(count):
    """`count` paths: a tenth in big/, the rest over 300 folders."""
    big = count // 10
    paths = [f"big/f{i:06d}" for i in range(big)]
    folders = 300
    paths += [f"d{i % folders:03d}/f{i:06d}" for i in range(count - big)]
    return paths


def build_rows(cfg, s):
    """The summary table: (what, figure, baseline, ratio, target, met, daemon peak RSS)."""
    rows = []

    def fmt(value, unit):
        if unit == "MiB/s":
            return f"{value:,.0f} MiB/s"
        if unit == "IOPS":
            return f"{value:,.0f} IOPS"
        if unit == "ms":
            return f"{value:,.1f} ms"
        if unit == "us":
            return f"{value:,.1f} µs"
        if unit == "s":
            return f"{value:,.2f} s"
        if unit == "MiB":
            return f"{value:,.0f} MiB"
        return f"{value:,.2f} x"

    def rss_text(value):
        return "" if value is None or value != value else f"{value:,.0f} MiB"

    def add(what, key, unit, baseline_key=None, baseline_name="", target=None, rss_key=None, figure=None,
            baseline=None):
        """`target` is (text, test of the ratio or figure, 'ratio'|'figure')."""
        if figure is None:
            if not s.has(key):
                return
            figure = s.median(key)
        if baseline is None and baseline_key is not None:
            if not s.has(baseline_key):
                return
            baseline = s.median(baseline_key)
        ratio = figure / baseline if baseline else None
        met = ""
        if target:
            value = ratio if target[2] == "ratio" else figure
            met = "**yes**" if value is not None and target[1](value) else "no"
        rows.append((what, fmt(figure, unit), f"{baseline_name}: {fmt(baseline, unit)}" if baseline is not None else "",
                     f"{ratio:.2f}" if ratio is not None else "", target[0] if target else "", met,
                     rss_text(s.rss(rss_key or key))))

    size = size_text(cfg.size)
    add(f"cold sequential read, {size}, fresh mount", "mount cold", "MiB/s", "curl", "curl of resolve",
        ("≥ 0.8 x", lambda v: v >= 0.8, "ratio"))
    add("cold time to first byte (open + 4 KiB read; median of 5 fresh mounts)", "mount ttfb", "ms", "curl rtt", "one curl round trip",
        ("≤ 3 x", lambda v: v <= 3, "ratio"))
    add("warm read (chunk cache, page cache dropped)", "mount warm", "MiB/s", "passthrough", "passthrough",
        ("≥ 0.8 x", lambda v: v >= 0.8, "ratio"))
    add("hot read (page cache)", "mount hot", "MiB/s", "local hot", "local page cache",
        ("≥ 0.9 x", lambda v: v >= 0.9, "ratio"))
    add("hot read against the FUSE ceiling", "mount hot", "MiB/s", "passthrough hot", "passthrough, page cache")
    add("4 KiB random reads, warm (fio psync)", "mount fio 4k", "IOPS", "passthrough fio 4k", "passthrough",
        ("≥ 0.7 x", lambda v: v >= 0.7, "ratio"))
    add(f"sequential write of {size} until fsync returns", "mount write", "MiB/s", "cp write", "bucketfs cp",
        ("≥ 0.9 x", lambda v: v >= 0.9, "ratio"))
    add("cold read vs the npm client's download", "mount cold", "MiB/s", "npm download", "npm downloadFile",
        ("> 1 x", lambda v: v > 1, "ratio"))
    add("write until fsync vs the npm client's upload", "mount write", "MiB/s", "npm upload", "npm uploadFiles",
        ("> 1 x", lambda v: v > 1, "ratio"))
    add("cold read vs hashing the same bytes on one core", "mount cold", "MiB/s", "b3sum",
        "b3sum --num-threads 1")
    add("chunking + hashing (`bucketfs xet chunks`, one core)", "xet chunks", "MiB/s", "b3sum",
        "b3sum --num-threads 1", ("≥ 0.5 x", lambda v: v >= 0.5, "ratio"))
    if s.has("ckpt 1 seconds"):
        ratios = {k: s.median(f"ckpt {k} sent/changed") for k in range(2, 6) if s.has(f"ckpt {k} sent/changed")}
        if ratios:
            worst = max(ratios, key=ratios.get)
            add(f"checkpoints 2-5: xorb bytes sent / bytes changed (worst: #{worst})", f"ckpt {worst} sent/changed",
                "x", figure=ratios[worst], target=("≤ 1.2 x", lambda v: v <= 1.2, "figure"))
            times = {k: s.median(f"ckpt {k} seconds") for k in range(2, 6)}
            worst = max(times, key=times.get)
            add(f"checkpoint wall time, 2-5 vs 1 (worst: #{worst})", f"ckpt {worst} seconds", "s",
                "ckpt 1 seconds", "checkpoint 1", ("≤ 0.35 x", lambda v: v <= 0.35, "ratio"))
    if s.has("place 2 seconds"):
        times = {k: s.median(f"place {k} seconds") for k in range(2, 6)}
        worst = max(times, key=times.get)
        add(f"checkpoint made in place (copy, 10% rewritten, fsync), 2-5 vs 1 (worst: #{worst})",
            f"place {worst} seconds", "s", "ckpt 1 seconds", "checkpoint 1", ("≤ 0.35 x", lambda v: v <= 0.35, "ratio"))
    add(f"create {cfg.files:,} small files through the mount (last close)", "create mount", "s",
        "create local fsync", "local disk, fsync each")
    tree = f"{cfg.tree_files:,}"
    add(f"`ls -lR` of {tree} files, fresh mount", "ls -lR mount", "s", "ls -lR local", "local, cold",
        ("< 3 s", lambda v: v < 3, "figure"))
    add(f"`ls -l` of one folder of {cfg.tree_files // 10:,}, fresh mount", "ls -l big mount", "s", "ls -l big local",
        "local, cold", ("< 3 s", lambda v: v < 3, "figure"))
    add(f"`find` over {tree} files, fresh mount", "find mount", "s", "find local", "local, cold",
        ("< 3 s", lambda v: v < 3, "figure"))
    add("stat of a cached entry", "stat mount", "us", "stat local", "local")
    for what, key in ((f"memory: writing a {size_text(cfg.big_size)} file", "memory write"),
                      (f"memory: reading it (fresh mount)", "memory read"),
                      (f"memory: 4 files of {size_text(cfg.big_size // 4)} written at once (one per rank)",
                       "memory ranks"),
                      (f"memory: listing {tree} entries (`ls -lR`)", "ls -lR mount")):
        if s.has(key):
            add(what, key, "MiB", figure=s.rss(key), target=("< 256 MiB", lambda v: v < 256, "figure"))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="development run: 64 MiB files, 1 run, 1,000 small files, a tree of 10,000, 3 s fio")
    parser.add_argument("--runs", type=int, help="runs, medians reported (default 3; quick 1)")
    parser.add_argument("--size", help="size of the read/write file (default 2G; quick 64M)")
    parser.add_argument("--ckpt-size", help="size of each checkpoint (default 1G; quick 64M)")
    parser.add_argument("--ckpt-spot", default="1M", help="size of each rewritten piece of a checkpoint (default 1M)")
    parser.add_argument("--big-size", help="file of the memory rows (default: --size; 10G for the issue's figure)")
    parser.add_argument("--files", type=int, help="small files created through the mount (default 10000; quick 1000)")
    parser.add_argument("--tree-files", type=int, help="files of the API-made bucket (default 100000; quick 10000)")
    parser.add_argument("--fio-seconds", type=int, help="duration of each fio job (default 10; quick 3)")
    parser.add_argument("--read-cap", type=int, default=120, help="seconds after which a mount read stops (120)")
    parser.add_argument("--only", help=f"comma-separated sections to run: {','.join(SECTIONS)} (default all)")
    parser.add_argument("--output", default=os.path.join(ROOT, "bench/RESULTS.md"))
    args = parser.parse_args()
    quick = args.quick
    size = parse_size(args.size) if args.size else (64 * MiB if quick else 2 * GiB)
    cfg = argparse.Namespace(
        runs=args.runs or (1 if quick else 3), size=size,
        ckpt_size=parse_size(args.ckpt_size) if args.ckpt_size else (64 * MiB if quick else GiB),
        ckpt_spot=parse_size(args.ckpt_spot), big_size=parse_size(args.big_size) if args.big_size else size,
        files=args.files or (1000 if quick else 10000), tree_files=args.tree_files or (10000 if quick else 100000),
        fio_seconds=args.fio_seconds or (3 if quick else 10), read_cap=args.read_cap,
        sections=set(args.only.split(",")) if args.only else set(SECTIONS))
    unknown = cfg.sections - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    if not drop_caches():
        log("drop_caches not permitted: cold and warm rows may hit the page cache")
        cfg.can_drop = False
    else:
        cfg.can_drop = True
    cfg.uptime_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    started = time.monotonic()
    work = tempfile.mkdtemp(prefix="bucketfs-bench-suite-", dir=os.environ.get("BENCH_WORK_DIR"))
    suite = Suite(args, cfg, work)
    try:
        suite.setup()
        if "namespace" in cfg.sections:
            suite.namespace_setup()
        for r in range(cfg.runs):
            log(f"run {r + 1} of {cfg.runs}")
            if "read" in cfg.sections:
                suite.reads(r)
            if cfg.sections & {"write", "npm"}:
                suite.writes(r)
            if "hash" in cfg.sections:
                suite.hashing(r)
            if "ckpt" in cfg.sections:
                suite.checkpoints(r)
            if "namespace" in cfg.sections:
                suite.listings(r)
        if "memory" in cfg.sections:
            suite.memory()
        cfg.server_peak = suite.server.peak_rss()
    finally:
        cleanup_all()
        if suite.server:
            suite.server.stop()
        shutil.rmtree(work, ignore_errors=True)
    cfg.minutes = (time.monotonic() - started) / 60
    cfg.uptime_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    write_results(args, cfg, suite.s)


def write_results(args, cfg, s):
    rows = build_rows(cfg, s)
    command = "bash scripts/bench.sh" + " ".join([""] + sys.argv[1:])
    lines = [
        f"Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on this machine (2 vCPUs) by "
        f"`{command}` in {cfg.minutes:.0f} min: medians of {cfg.runs} run{'s' if cfg.runs > 1 else ''}; the "
        "mount daemon, bucketfs-server and the tools share the 2 cores. Ratio = figure / baseline, both from "
        "this run. Page cache dropped where a row says so: "
        f"{'yes' if cfg.can_drop else 'NOT PERMITTED (cold/warm rows hit the page cache)'}.", "",
        f"Load: before `{cfg.uptime_before}`; after `{cfg.uptime_after}`.", "",
        "| what | figure | baseline | ratio | target | met? | daemon peak RSS |",
        "|---|---:|---:|---:|---|---|---:|"]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    def checkpoint_table(intro, prefix, first, columns):
        """Rows of checkpoints `first`..5 measured under `prefix`: (header, key, format) columns."""
        if not s.has(f"{prefix} {first} seconds"):
            return
        lines.extend(["", intro, "", "| checkpoint | " + " | ".join(header for header, _, _ in columns) + " |",
                      "|---:|" + "---:|" * len(columns)])
        for k in range(first, 6):
            if s.has(f"{prefix} {k} seconds"):
                cells = [form(s.median(f"{prefix} {k} {key}")) for _, key, form in columns]
                lines.append(f"| {k} | " + " | ".join(cells) + " |")

    seconds = lambda v: f"{v:.2f} s"  # noqa: E731
    mib = lambda v: f"{v / MiB:,.1f} MiB"  # noqa: E731
    ratio = lambda v: f"{v:.2f}"  # noqa: E731
    checkpoint_table(f"Checkpoints ({size_text(cfg.ckpt_size)} each, written whole in 1 MiB writes then fsync; "
                     f"10% rewritten in {size_text(cfg.ckpt_spot)} pieces at random unaligned offsets):", "ckpt", 1,
                     [("write until fsync+close", "seconds", seconds),
                      ("until committed", "committed seconds", seconds),
                      ("xorb bytes received", "xorb bytes", mib), ("bytes changed", "changed bytes", mib),
                      ("sent / changed", "sent/changed", ratio)])
    checkpoint_table("The same checkpoints made in place: a zero-byte copy of the previous one (`copy_file_range`), "
                     "opened `O_RDWR` without `O_TRUNC`, the same share rewritten, `fsync` (the upload fetches the "
                     "unwritten bytes first; xorb bytes served counts what the server sent for that):", "place", 2,
                     [("copy + writes returned", "written seconds", seconds),
                      ("until fsync returned", "seconds", seconds),
                      ("xorb bytes received", "xorb bytes", mib), ("xorb bytes served", "served bytes", mib),
                      ("sent / changed", "sent/changed", ratio)])
    details = []
    for key, what in (("curl", "curl of resolve, MiB/s"), ("passthrough", "passthrough read, page cache dropped, MiB/s"),
                      ("local disk", "local file after drop_caches, MiB/s"), ("cp write", "bucketfs cp upload, MiB/s"),
                      ("npm upload", "npm uploadFiles, MiB/s"), ("npm download", "npm downloadFile, MiB/s"),
                      ("mount cold MiB", "MiB read by the cold mount read (cap --read-cap)"),
                      ("create mount committed", f"{cfg.files:,} small files, until all committed, s"),
                      ("tree api", f"{cfg.tree_files:,} files added through the API (NDJSON batches), s")):
        if s.has(key):
            rss = s.rss(key)
            details.append(f"- {what}: {s.median(key):,.2f}" + (f" (peak RSS {rss:,.0f} MiB)" if rss else ""))
    if getattr(cfg, "server_peak", None):
        details.append(f"- bucketfs-server peak RSS over the run: {cfg.server_peak:,.0f} MiB")
    if details:
        lines += ["", "Baselines and other figures of this run:", ""] + details
    text = "\n".join(lines) + "\n"
    print(text)
    with open(args.output, "w") as handle:
        handle.write("# Benchmark suite (issue 7)\n\n" + text)


if __name__ == "__main__":
    sys.exit(main())
