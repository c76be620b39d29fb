#!/usr/bin/env python3
"""Mount benchmark (issue 5): reads and writes through `bucketfs mount` against baselines measured
in the same run on the same machine, all against one bucketfs-server started here.

Rows (medians of --runs runs; mount rows also give the daemon's peak RSS, VmHWM of its pid from
the state file in $BUCKETFS_RUNTIME_DIR):
  - sequential read, cold (fresh mount, empty --cache-dir): 1 MiB read(2)s of the big file through
    the mount (what dd bs=1M does; stopped after --read-cap seconds), against `bucketfs cp hf://... -`
    (cold cache) and curl of its resolve URL;
  - warm (chunk cache full, second mount with the same cache dir, page cache dropped) against
    the same reads of the file on local disk after drop_caches;
  - hot (the same bytes read again in the same mount: page cache) against a local file read from
    page cache;
  - fio random reads, 4 KiB and 1 MiB, psync, bounded time, on the warm mount (page cache
    dropped) against the same job on the local file;
  - sequential write of new random data through the mount until fsync returns (dd conv=fsync)
    against `bucketfs cp local hf://...` of other new random bytes, fresh caches for both;
  - 10,000 files of 1 KiB created in a directory (until the last close, and until all are
    committed), then `ls -l` and `find` each on a fresh mount, against the same on local disk
    (page cache dropped before each listing); --small-runs times (default once).

Writes bench/RESULTS-mount.md. Run by scripts/bench-mount.sh."""
import argparse
import datetime
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import (BUCKETFS, MiB, ROOT, Mount, Server, cleanup_all, drop_caches, fio, is_mounted, log,
                      make_small_files, read_seq, resident_mib, run, write_random)

TOKEN = "hf_bench_mount_0001"
BUCKET = "bench/mount"


def timed_listing(command):
    return run(command)[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=None, help="size of the big file (default 1024; 64 quick)")
    parser.add_argument("--runs", type=int, default=None, help="runs, medians reported (default 3; 1 quick)")
    parser.add_argument("--quick", action="store_true",
                        help="small smoke run: 64 MiB, 1 run, 1,000 files, 3 s fio jobs, 10 s read cap")
    parser.add_argument("--files", type=int, default=None, help="small files to create (default 10000)")
    parser.add_argument("--small-runs", type=int, default=1,
                        help="runs of the small-files rows (default 1: each commits every file one by one)")
    parser.add_argument("--fio-seconds", type=int, default=None, help="duration of each fio job (default 10)")
    parser.add_argument("--read-cap", type=int, default=None,
                        help="seconds after which a sequential read through the mount stops (default 20)")
    parser.add_argument("--output", default=os.path.join(ROOT, "bench/RESULTS-mount.md"))
    args = parser.parse_args()
    cfg = argparse.Namespace(
        size_mib=args.size_mib or (64 if args.quick else 1024), runs=args.runs or (1 if args.quick else 3),
        files=args.files or (1000 if args.quick else 10000), fio_seconds=args.fio_seconds or (3 if args.quick else 10),
        read_cap=args.read_cap or (10 if args.quick else 20), small_runs=args.small_runs)
    size = cfg.size_mib * MiB
    cfg.uptime_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()

    work = tempfile.mkdtemp(prefix="bucketfs-mount-bench-", dir=os.environ.get("BENCH_WORK_DIR"))
    server = None
    samples = {}      # label -> [(bytes, seconds, peak RSS MiB or None)]
    fio_samples = {}  # label -> [(IOPS, MiB/s, peak RSS MiB or None)]
    cfg.can_drop = drop_caches()
    cfg.resident_before_hot = []
    if not cfg.can_drop:
        log("drop_caches not permitted: local 'warm' reads may hit the page cache")

    def add(label, nbytes, seconds, rss=None):
        samples.setdefault(label, []).append((nbytes, seconds, rss))
        log(f"{label}: {nbytes / MiB:,.0f} MiB in {seconds:.3f} s = {nbytes / MiB / seconds:,.0f} MiB/s"
            + (f", peak RSS {rss:,.0f} MiB" if rss is not None else ""))

    try:
        server = Server(work, TOKEN)
        url = server.url
        common = server.common

        def bucketfs(*command, cache):
            return [BUCKETFS, *command, *common, "--cache-dir", os.path.join(work, cache)]

        create = server.create

        create(BUCKET)
        big = os.path.join(work, "big.bin")
        log(f"writing {cfg.size_mib} MiB of random data and uploading it")
        write_random(big, size)
        subprocess.run(bucketfs("cp", big, f"hf://buckets/{BUCKET}/big.bin", cache="seed-cache"), check=True)
        remote = f"hf://buckets/{BUCKET}/big.bin"
        resolve = server.curl(BUCKET, "big.bin")

        for r in range(cfg.runs):
            log(f"run {r + 1} of {cfg.runs}")
            # --- cold sequential read; the server's files in page cache for all three ------------
            run(resolve)
            cache = os.path.join(work, f"cache-read-{r}")
            mount = Mount(work, url, BUCKET, f"cold-{r}", cache).start()
            add("read cold: mount, 1 MiB reads", *read_seq(mount.path("big.bin"), cfg.read_cap), mount.peak_rss())
            mount.unmount()
            seconds, rss = run(bucketfs("cp", remote, "-", cache=f"cp-cache-{r}"))
            add("read cold: bucketfs cp to stdout (cold cache)", size, seconds, rss)
            seconds, rss = run(resolve)
            add("read cold: curl of resolve", size, seconds, rss)
            shutil.rmtree(os.path.join(work, f"cp-cache-{r}"), ignore_errors=True)
            # The whole file in the mount's chunk cache even if the cold read stopped at its cap.
            run(bucketfs("cp", remote, "-", cache=f"cache-read-{r}"))

            # --- warm (chunk cache) and hot (page cache) -----------------------------------------
            mount = Mount(work, url, BUCKET, f"warm-{r}", cache).start()
            drop_caches()
            warm_bytes, seconds = read_seq(mount.path("big.bin"), cfg.read_cap)
            add("read warm: mount, 1 MiB reads", warm_bytes, seconds, mount.peak_rss())
            cfg.resident_before_hot.append(resident_mib(mount.path("big.bin")))
            add("read hot: mount, same bytes again (page cache)",
                *read_seq(mount.path("big.bin"), cfg.read_cap, limit=warm_bytes), mount.peak_rss())
            drop_caches()
            add("read warm: local file after drop_caches, 1 MiB reads", *read_seq(big, 600))
            add("read hot: local file again (page cache)", *read_seq(big, 600))

            # --- random reads ---------------------------------------------------------------------
            for block in ("4k", "1m"):
                for where in ("mount", "local file"):
                    drop_caches()
                    path = mount.path("big.bin") if where == "mount" else big
                    rss = mount.peak_rss() if where == "mount" else None
                    got = fio(path, block, cfg.fio_seconds, size, mount if where == "mount" else None)
                    label = f"random read {block.upper()}iB: {where}"
                    if got is None:  # hung: record it, and go on with a new mount
                        fio_samples.setdefault(label, []).append((None, None, rss))
                        mount.cleanup()
                        mount = Mount(work, url, BUCKET, f"warm-{r}-{block}", cache).start()
                        continue
                    iops, mibs = got
                    rss = mount.peak_rss() if where == "mount" else None
                    fio_samples.setdefault(label, []).append((iops, mibs, rss))
                    log(f"fio {block} {where}: {iops:,.0f} IOPS, {mibs:,.0f} MiB/s")
            mount.unmount()
            shutil.rmtree(cache, ignore_errors=True)

            # --- sequential write of new data; new buckets, fresh caches ----------------------------
            for name in ("w-mount", "w-cp"):
                write_random(os.path.join(work, f"{name}.bin"), size)
            create(f"bench/write-{r}")
            create(f"bench/cp-{r}")
            mount = Mount(work, url, f"bench/write-{r}", f"write-{r}", os.path.join(work, f"cache-w-{r}")).start()
            seconds = run(["dd", f"if={os.path.join(work, 'w-mount.bin')}", f"of={mount.path('big.bin')}", "bs=1M",
                           "conv=fsync"])[0]
            add("write: mount, dd bs=1M conv=fsync", size, seconds, mount.peak_rss())
            mount.unmount()
            seconds, rss = run(bucketfs("cp", os.path.join(work, "w-cp.bin"), f"hf://buckets/bench/cp-{r}/big.bin",
                                        cache=f"cache-cp-{r}"))
            add("write: bucketfs cp (fresh cache)", size, seconds, rss)
            for name in ("w-mount.bin", "w-cp.bin", f"cache-w-{r}", f"cache-cp-{r}"):
                target = os.path.join(work, name)
                shutil.rmtree(target, ignore_errors=True) if os.path.isdir(target) else os.unlink(target)

            # --- many small files -----------------------------------------------------------------
            if r >= cfg.small_runs:
                continue
            bucket = f"bench/small-{r}"
            create(bucket)
            small_cache = os.path.join(work, f"cache-s-{r}")
            mount = Mount(work, url, bucket, f"small-{r}", small_cache).start()
            start = time.monotonic()
            seconds = make_small_files(mount.path("d"), cfg.files)
            add("files: create through the mount (last close returned)", cfg.files, seconds, mount.peak_rss())
            while mount.state().get("files_committed", 0) < cfg.files and time.monotonic() - start < 1800:
                time.sleep(0.1)
            add("files: create through the mount, until all committed", mount.state().get("files_committed", 0),
                time.monotonic() - start, mount.peak_rss())
            mount.unmount()
            for listing, command in (("ls -l", ["ls", "-l"]), ("find", ["find"])):
                mount = Mount(work, url, bucket, f"list-{r}-{listing[:2]}", small_cache).start()
                drop_caches()
                add(f"files: {listing} on a fresh mount", cfg.files, timed_listing([*command, mount.path("d")]),
                    mount.peak_rss())
                mount.unmount()
            local = os.path.join(work, f"local-small-{r}")
            add("files: create on local disk", cfg.files, make_small_files(local, cfg.files))
            shutil.rmtree(local)
            add("files: create on local disk, fsync each", cfg.files, make_small_files(local, cfg.files, True))
            for listing, command in (("ls -l", ["ls", "-l"]), ("find", ["find"])):
                drop_caches()
                add(f"files: {listing} on local disk after drop_caches", cfg.files, timed_listing([*command, local]))
            shutil.rmtree(local)
            shutil.rmtree(small_cache, ignore_errors=True)
    finally:
        cleanup_all()
        if server:
            server.stop()
        for name in os.listdir(work):
            if name.startswith("mnt-") and is_mounted(os.path.join(work, name)):
                subprocess.run(["fusermount3", "-u", "-z", "-q", os.path.join(work, name)], check=False)
        shutil.rmtree(work, ignore_errors=True)

    cfg.uptime_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    write_results(args, cfg, samples, fio_samples)


def write_results(args, cfg, samples, fio_samples):
    def med(label):
        """Median MiB, seconds, MiB/s (or items/s) and the largest peak RSS of a row's runs."""
        values = samples[label]
        rss = [v[2] for v in values if v[2] is not None]
        return (statistics.median(v[0] for v in values) / MiB, statistics.median(v[1] for v in values),
                statistics.median(v[0] / MiB / v[1] for v in values), max(rss) if rss else None)

    def rss_text(rss):
        return "" if rss is None else f"{rss:,.0f} MiB"

    seq = []

    def seq_row(label, baselines, baseline=False):
        mib, seconds, rate, rss = med(label)
        ratios = ", ".join(f"{rate / med(b)[2]:.2f} x {name}" for name, b in baselines)
        seq.append((f"**{label}**" if baseline else label, f"{mib:,.0f}", f"{seconds:.2f}", f"{rate:,.0f}", ratios,
                    rss_text(rss)))

    curl, cp = "read cold: curl of resolve", "read cold: bucketfs cp to stdout (cold cache)"
    warm_local = "read warm: local file after drop_caches, 1 MiB reads"
    hot_local = "read hot: local file again (page cache)"
    write_cp = "write: bucketfs cp (fresh cache)"
    seq_row(curl, [("curl", curl)], True)
    seq_row(cp, [("curl", curl)])
    seq_row("read cold: mount, 1 MiB reads", [("curl", curl), ("cp", cp)])
    seq_row(warm_local, [("local", warm_local)], True)
    seq_row("read warm: mount, 1 MiB reads", [("local", warm_local)])
    seq_row(hot_local, [("local", hot_local)], True)
    seq_row("read hot: mount, same bytes again (page cache)", [("local", hot_local)])
    seq_row(write_cp, [("cp", write_cp)], True)
    seq_row("write: mount, dd bs=1M conv=fsync", [("cp", write_cp)])

    fio_rows = []
    for block in ("4K", "1M"):
        local = fio_samples[f"random read {block}iB: local file"]
        local_iops = statistics.median(v[0] for v in local)
        for where in ("local file", "mount"):
            label = f"random read {block}iB: {where}"
            values = fio_samples[label]
            done = [v for v in values if v[0] is not None]
            rss = [v[2] for v in values if v[2] is not None]
            hung = len(values) - len(done)
            if not done:
                fio_rows.append((label, f"HUNG ({hung} of {len(values)} runs)", "", "", rss_text(max(rss) if rss else None)))
                continue
            iops = statistics.median(v[0] for v in done)
            note = f" (hung in {hung} of {len(values)} runs)" if hung else ""
            fio_rows.append((f"**{label}**" if where == "local file" else label, f"{iops:,.0f}{note}",
                             f"{statistics.median(v[1] for v in done):,.1f}", f"{iops / local_iops:.3f} x local",
                             rss_text(max(rss) if rss else None)))

    small = []
    base = {"create": "files: create on local disk", "ls -l": "files: ls -l on local disk after drop_caches",
            "find": "files: find on local disk after drop_caches"}
    order = [("files: create on local disk", "create"), ("files: create on local disk, fsync each", "create"),
             ("files: create through the mount (last close returned)", "create"),
             ("files: create through the mount, until all committed", "create"),
             (base["ls -l"], "ls -l"), ("files: ls -l on a fresh mount", "ls -l"),
             (base["find"], "find"), ("files: find on a fresh mount", "find")]
    for label, kind in order:
        values = samples[label]
        seconds = statistics.median(v[1] for v in values)
        count = statistics.median(v[0] for v in values)
        rss = [v[2] for v in values if v[2] is not None]
        ratio = statistics.median(v[1] for v in samples[base[kind]]) / seconds
        name = label.replace("files: ", f"{cfg.files:,} files: ")
        small.append((f"**{name}**" if label == base[kind] else name, f"{seconds:.3f}", f"{count / seconds:,.0f}",
                      f"{ratio:.3f} x local", rss_text(max(rss) if rss else None)))

    command = "bash scripts/bench-mount.sh" + (" --quick" if args.quick else "")
    for option in ("size_mib", "runs", "files", "fio_seconds", "read_cap"):
        if getattr(args, option):
            command += f" --{option.replace('_', '-')} {getattr(args, option)}"
    resident = ", ".join("?" if v is None else f"{v:,.0f}" for v in cfg.resident_before_hot)
    lines = [
        f"Measured {datetime.date.today()} on this machine by `{command}`: a {cfg.size_mib} MiB file of random "
        f"data, median of {cfg.runs} run{'s' if cfg.runs > 1 else ''} (small files: {cfg.small_runs}); mount "
        f"daemon, bucketfs-server and the tools share the 2 cores. Page cache dropped "
        f"(/proc/sys/vm/drop_caches) where a row says so: {'yes' if cfg.can_drop else 'NOT PERMITTED'}. "
        f"Sequential reads through the mount stop after {cfg.read_cap} s (the MiB column says how much was read); "
        "ratios compare MiB/s (> 1: faster than the baseline; bold rows are baselines). Peak RSS: the mount "
        "daemon's VmHWM over that mount's life, else the client process's.", "",
        f"Load: before `{cfg.uptime_before}`; after `{cfg.uptime_after}`.", "",
        "| operation | MiB | seconds | MiB/s | ratio | peak RSS |", "|---|---:|---:|---:|---|---:|"]
    lines += [f"| {' | '.join(row)} |" for row in seq]
    lines += ["", f"Mount's page cache just before the hot read, MiB resident (fincore), per run: {resident}.", "",
              f"Random reads (fio randread, psync, {cfg.fio_seconds} s per job, on the warm mount and on the local "
              "file, page cache dropped before each job):", "",
              "| job | IOPS | MiB/s | ratio | daemon peak RSS |", "|---|---:|---:|---|---:|"]
    lines += [f"| {' | '.join(row)} |" for row in fio_rows]
    lines += ["", f"{cfg.files:,} files of 1 KiB in one directory, then listings on a fresh mount (local disk: "
              "after drop_caches):", "",
              "| operation | seconds | files/s | ratio | daemon peak RSS |", "|---|---:|---:|---|---:|"]
    lines += [f"| {' | '.join(row)} |" for row in small]
    text = "\n".join(lines) + "\n"
    print(text)
    with open(args.output, "w") as handle:
        handle.write("# Mount benchmark\n\n" + text)


if __name__ == "__main__":
    sys.exit(main())
