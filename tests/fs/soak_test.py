#!/usr/bin/env python3
"""Soak (issue 6): 4 writers and 4 readers on one mount for a bounded time, against a
bucketfs-server that fails >= 10% of requests with every fault kind (500/503/429, connection
resets, stalls past the client's stall timeout, truncated bodies, flipped xorb bytes).

Writers (threads, each in its own folder) create files of a few KiB to ~20 MiB, rewrite them
(O_TRUNC), append to them (which fetches a committed file into staging first), rename them (to
new names and over other files) and delete them, and fsync some. The model keeps, per path, only
the recipe of its content (seeded segments) and its SHA-256: bytes are regenerated when needed.
Readers (threads) read files no writer is changing, whole or a random range, and stat them: every
read returns the right bytes or EIO (counted and named), never wrong bytes.

At the end: everything is drained (unmount, nothing left pending), then the server is restarted
without faults and a fresh read-only mount with an empty cache must show exactly the model's
files (none lost, none extra) with the right bytes. The daemon's open descriptors, counted when
idle after a warm-up and again when idle at the end, grow by at most FD_MARGIN (chunk cache
segment files aside: two per segment, bounded by the cache size; sockets aside: kept connections,
at most SOCKET_BOUND) and none names a staging file;
its peak RSS (VmHWM) stays under RSS_BOUND_MIB.

BUCKETFS_SOAK_SECONDS sets the duration (default 60), BUCKETFS_SOAK_SEED replays a seed (printed;
thread interleavings still differ between runs), BUCKETFS_SOAK_FAULT_KINDS narrows the fault kinds
(default all five) to find which one a failure needs. The figures are printed in one SOAK line."""
import errno
import hashlib
import os
import random
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mount_harness import MiB, Workspace, api, new_mount  # noqa: E402
# Importing faults_test sets BUCKETFS_HTTP_STALL_TIMEOUT_MS (4 s) for our mounts: stalls of 5 s.
from faults_test import ALL_KINDS, STALL_MS, RestartableServer, create_bucket, faults  # noqa: E402
import unittest_runner  # noqa: E402

DURATION = float(os.environ.get("BUCKETFS_SOAK_SECONDS", "60"))
SEED = int(os.environ.get("BUCKETFS_SOAK_SEED", str(int(time.time() * 1000) % 1_000_000)))
FAULT_RATE = 0.12
FAULT_KINDS = os.environ.get("BUCKETFS_SOAK_FAULT_KINDS", ALL_KINDS)  # to narrow a failure down
WRITERS = 4
READERS = 4
FILES_PER_WRITER = 24       # live files a writer keeps at most
MAX_FILE = 24 * MiB         # appends stop growing a file past this
PENDING_LIMIT = 48          # writers pause while the mount has more uploads pending
FD_MARGIN = 8               # descriptors the idle daemon may hold more at the end than after warm-up
SOCKET_BOUND = 64           # idle connections kept: at most 32 idle curl handles (max_idle_slots) in
#                             each of the Hub and CAS transports, however busy the soak was
RSS_BOUND_MIB = 768         # peak RSS of the daemon: measured 142-616 MiB in 60 s runs (4 read
#                             streams of 32 MiB rings, upload workers and streaming uploads of 64 MiB xorbs)
IDLE_TIMEOUT = 150          # seconds to wait for the pending uploads to commit


def segment(key, size):
    return random.Random(key).randbytes(size)


def content(recipe):
    return b"".join(segment(key, size) for key, size in recipe)


def pick_size(rng):
    roll = rng.random()
    if roll < 0.4:
        return rng.randrange(1, 64 << 10)
    if roll < 0.7:
        return rng.randrange(64 << 10, 2 * MiB)
    if roll < 0.9:
        return rng.randrange(2 * MiB, 8 * MiB)
    return rng.randrange(8 * MiB, 20 * MiB)


class Entry:
    """What a closed file must contain: its recipe (seeded segments), size and SHA-256."""

    def __init__(self, recipe):
        self.recipe = list(recipe)
        data = content(self.recipe)
        self.size = len(data)
        self.digest = hashlib.sha256(data).hexdigest()
        self.busy = False   # a writer is changing it (or its name)
        self.readers = 0


class Model:
    def __init__(self):
        self.lock = threading.Lock()
        self.files = {}

    def claim_for_write(self, rng, prefix, count=1):
        """Up to `count` distinct files under `prefix` that nobody reads or writes, marked busy."""
        with self.lock:
            free = [p for p, e in self.files.items() if p.startswith(prefix) and not e.busy and e.readers == 0]
            chosen = rng.sample(free, min(count, len(free)))
            for path in chosen:
                self.files[path].busy = True
            return chosen

    def claim_for_read(self, rng):
        with self.lock:
            free = [p for p, e in self.files.items() if not e.busy]
            if not free:
                return None, None
            path = rng.choice(free)
            entry = self.files[path]
            entry.readers += 1
            return path, entry

    def release_read(self, entry):
        with self.lock:
            entry.readers -= 1


class Figures:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {}
        self.eio = []      # (operation, path)
        self.wrong = []    # descriptions
        self.errors = []   # unexpected errors, with their context

    def add(self, name, value=1):
        with self.lock:
            self.counts[name] = self.counts.get(name, 0) + value


def fd_targets(pid):
    out = []
    folder = "/proc/%d/fd" % pid
    for name in os.listdir(folder):
        try:
            out.append(os.readlink(os.path.join(folder, name)))
        except OSError:
            pass
    return out


def staging_file_fds(targets):
    """Descriptors of staging files; not the daemon's owner lock in that folder, which it holds
    open while it runs (src/fs/staging.h)."""
    return [t for t in targets if "/staging/" in t and "/staging/owner-" not in t]


def segment_fds(targets):
    """Descriptors of chunk cache segment files: they grow with the cache (bounded by
    --cache-size), not with the work done, so the leak check leaves them out."""
    return [t for t in targets if t.endswith(".seg")]


def socket_fds(targets):
    """Connections kept for reuse: their number follows the peak concurrency (bounded by the
    transports' idle pools), not the work done; checked against SOCKET_BOUND instead."""
    return [t for t in targets if t.startswith("socket:")]


def file_fds(targets):
    return [t for t in targets if t not in segment_fds(targets) and t not in socket_fds(targets)]


def peak_rss_kib(pid):
    with open("/proc/%d/status" % pid) as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def staging_digest(path):
    try:
        with open(path.removesuffix(" (deleted)"), "rb") as handle:
            data = handle.read()
        return len(data), hashlib.sha256(data).hexdigest()
    except OSError as error:
        return None, str(error)


def describe_staging(targets, model, seen):
    """Which model files (or versions) the staging files held open hold, for the failure message."""
    lines = []
    for target in targets:
        size, digest = seen.get(target, (None, "?"))
        owners = [p for p, e in model.files.items() if e.digest == digest]
        lines.append("%s: %s bytes, the bytes of %s" % (target, size, owners or "no current file"))
    return "\n".join(lines)


def read_whole(path):
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while True:
            piece = handle.read(MiB)
            if not piece:
                return size, digest.hexdigest()
            size += len(piece)
            digest.update(piece)


class SoakTest(unittest.TestCase):
    def setUp(self):
        self.workspace = Workspace("soak")
        self.addCleanup(self.workspace.cleanup)

    def test_writers_and_readers_under_faults(self):
        print("soak seed %d, %.0f s (replay: BUCKETFS_SOAK_SEED=%d; longer: BUCKETFS_SOAK_SECONDS)"
              % (SEED, DURATION, SEED), file=sys.stderr, flush=True)
        spec = "rate=%g,seed=%d,kinds=%s,stall_ms=%d" % (FAULT_RATE, SEED, FAULT_KINDS, STALL_MS)
        server = RestartableServer("soak", extra_args=["--inject-faults", spec])
        self.addCleanup(server.cleanup)
        server.start()
        create_bucket(server, "alice/soak")
        mount = new_mount(self, server, self.workspace, "alice/soak", name="soak").start()
        pid = mount.pid
        self.assertTrue(pid, mount.state())
        model = Model()
        figures = Figures()

        def pending():
            state = mount.state()
            return state.get("pending_uploads", 0) + state.get("uploads_in_flight", 0)

        def wait_idle(what):
            deadline = time.monotonic() + IDLE_TIMEOUT
            while time.monotonic() < deadline:
                if pending() == 0:
                    time.sleep(1.5)  # the state file is rewritten every second
                    if pending() == 0:
                        return
                time.sleep(0.2)
            self.fail("%s: uploads still pending after %d s: %s\n%s" % (what, IDLE_TIMEOUT, mount.state(), mount.log()))

        # A writer's step numbers go on from one phase to the next: the names made from them
        # (f-KEY.bin, r-KEY.bin) must not repeat, or a "create" would land on a live file.
        steps = [0] * WRITERS

        def writer(number, seconds):
            rng = random.Random("%d:writer:%d:%f" % (SEED, number, seconds))
            prefix = "w%d/" % number
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and not figures.errors:
                steps[number] += 1
                if pending() > PENDING_LIMIT:
                    time.sleep(0.2)
                    continue
                try:
                    self.writer_step(mount, model, figures, rng, prefix, "%d-%d-%d" % (SEED, number, steps[number]))
                except Exception as error:  # noqa: BLE001  (reported in the main thread)
                    figures.errors.append("writer %d: %r" % (number, error))

        def reader(number, seconds):
            rng = random.Random("%d:reader:%d:%f" % (SEED, number, seconds))
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and not figures.errors:
                path, entry = model.claim_for_read(rng)
                if path is None:
                    time.sleep(0.05)
                    continue
                try:
                    self.reader_step(mount, figures, rng, path, entry)
                except Exception as error:  # noqa: BLE001
                    figures.errors.append("reader %d on %s: %r" % (number, path, error))
                finally:
                    model.release_read(entry)

        def run_phase(seconds):
            threads = [threading.Thread(target=writer, args=(n, seconds)) for n in range(WRITERS)]
            threads += [threading.Thread(target=reader, args=(n, seconds)) for n in range(READERS)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=seconds + 600)
                self.assertFalse(thread.is_alive(), "a soak thread hangs\n" + mount.log())
            self.assertEqual(figures.errors, [], mount.log())

        started = time.monotonic()
        warm_up = min(10.0, DURATION / 6)
        run_phase(warm_up)
        wait_idle("after the warm-up")
        fds_start = fd_targets(pid)
        run_phase(DURATION - warm_up)
        soaked = time.monotonic() - started
        wait_idle("at the end")
        fds_end = fd_targets(pid)
        for _ in range(50):  # FUSE releases arrive after close() returned: give them 10 s
            if not staging_file_fds(fds_end):
                break
            time.sleep(0.2)
            fds_end = fd_targets(pid)
        rss_kib = peak_rss_kib(pid)
        staging_seen = {t: staging_digest(t) for t in staging_file_fds(fds_end)}
        drain_started = time.monotonic()
        result = mount.unmount(timeout=240)
        self.assertEqual(result.returncode, 0, result.stderr + mount.log())
        drained = time.monotonic() - drain_started
        injected = faults(server)
        requests = sum(int(float(line.split()[1])) for line in
                       api.request("GET", "/metrics", server=server).body.decode().splitlines()
                       if line.startswith("bucketfs_http_requests_total{"))

        # The bucket alone, without faults, through a fresh mount with an empty cache.
        server.kill()
        server.restart_on_same_port([])
        check = new_mount(self, server, self.workspace, "alice/soak", name="check").start("--read-only")
        present = set()
        for folder, _, names in os.walk(check.mountpoint):
            for name in names:
                present.add(os.path.relpath(os.path.join(folder, name), check.mountpoint))
        lost = sorted(set(model.files) - present)
        extra = sorted(present - set(model.files))
        wrong = []
        checked = 0
        for path in sorted(set(model.files) & present):
            entry = model.files[path]
            size, digest = read_whole(check.path(path))
            checked += 1
            if (size, digest) != (entry.size, entry.digest):
                wrong.append("%s: %d bytes, expected %d" % (path, size, entry.size))
        self.assertEqual(check.unmount().returncode, 0)

        counts = figures.counts
        staging_fds = staging_file_fds(fds_end)
        print("SOAK seed %d: %.0f s with %d writers and %d readers (drain %.1f s) under faults (%s): "
              "faults injected %d (%s) among about %d requests; operations %d (%s); "
              "bytes written %d, read %d; files checked %d (%d bytes); EIO reads %d%s; "
              "lost=%d wrong=%d extra=%d (wrong during soak %d); fd start/end %d/%d (of them chunk cache segments "
              "%d/%d, sockets %d/%d); peak RSS %.0f MiB (bound %d MiB)"
              % (SEED, soaked, WRITERS, READERS, drained, spec, sum(injected.values()),
                 ", ".join("%s %d" % kv for kv in sorted(injected.items())), requests + injected.get("reset", 0),
                 sum(v for k, v in counts.items() if k.startswith("op ")),
                 ", ".join("%s %d" % (k[3:], v) for k, v in sorted(counts.items()) if k.startswith("op ")),
                 counts.get("bytes written", 0), counts.get("bytes read", 0), checked,
                 sum(model.files[p].size for p in model.files), len(figures.eio),
                 (" (" + ", ".join("%s %s" % e for e in figures.eio[:10]) + ")") if figures.eio else "",
                 len(lost), len(wrong), len(extra), len(figures.wrong), len(fds_start), len(fds_end),
                 len(segment_fds(fds_start)), len(segment_fds(fds_end)),
                 len(socket_fds(fds_start)), len(socket_fds(fds_end)),
                 rss_kib / 1024, RSS_BOUND_MIB), file=sys.stderr, flush=True)

        # Every check, then one failure naming all that broke.
        problems = []
        if figures.wrong:
            problems.append("reads returned wrong bytes during the soak: %s" % figures.wrong[:10])
        if lost:
            problems.append("files lost: %s" % lost)
        if wrong:
            problems.append("files with wrong bytes in the bucket: %s" % wrong)
        if extra:
            problems.append("files in the bucket that the model does not have (deleted or renamed away on the "
                            "mount): %s" % extra)
        if staging_fds:
            problems.append("the idle daemon still holds staging files open:\n" +
                            describe_staging(staging_fds, model, staging_seen))
        if len(file_fds(fds_end)) > len(file_fds(fds_start)) + FD_MARGIN:
            problems.append("descriptors (besides chunk cache segments and sockets) grew from %d to %d "
                            "(margin %d); new targets: %s" % (len(file_fds(fds_start)), len(file_fds(fds_end)),
                                                             FD_MARGIN, sorted(set(fds_end) - set(fds_start))))
        if len(socket_fds(fds_end)) > SOCKET_BOUND:
            problems.append("%d sockets open when idle (bound %d)" % (len(socket_fds(fds_end)), SOCKET_BOUND))
        if rss_kib >= RSS_BOUND_MIB * 1024:
            problems.append("peak RSS %.0f MiB over the bound %d MiB" % (rss_kib / 1024, RSS_BOUND_MIB))
        if sum(injected.values()) < 0.1 * (requests + injected.get("reset", 0)):
            problems.append("fewer than 10%% of requests failed: %s of %d" % (injected, requests))
        for kind in [k for k in ("status", "reset", "stall", "truncate") if k in FAULT_KINDS]:
            if injected.get(kind, 0) == 0:
                problems.append("no %s fault was injected: %s" % (kind, injected))
        self.assertEqual(problems, [], "\n".join(problems))

    # One change by a writer: create, rewrite, append, rename, rename over, or delete.
    def writer_step(self, mount, model, figures, rng, prefix, key):
        with model.lock:
            mine = [p for p in model.files if p.startswith(prefix)]
        roll = rng.random()
        if len(mine) < 4 or (roll < 0.35 and len(mine) < FILES_PER_WRITER):
            path = prefix + rng.choice(["a/", "b/", "b/c/", ""]) + "f-%s.bin" % key
            with model.lock:
                assert path not in model.files, "a new file's name %s is taken" % path
                model.files[path] = entry = Entry([])
                entry.busy = True
            self.write_version(mount, model, figures, rng, path, [(key, pick_size(rng))], "create")
        elif roll < 0.55:
            for path in model.claim_for_write(rng, prefix):
                self.write_version(mount, model, figures, rng, path, [(key, pick_size(rng))], "rewrite")
        elif roll < 0.68:
            for path in model.claim_for_write(rng, prefix):
                grow = model.files[path].size <= MAX_FILE
                recipe = (model.files[path].recipe if grow else []) + [(key, rng.randrange(1, 3 * MiB))]
                self.write_version(mount, model, figures, rng, path, recipe, "append" if grow else "rewrite")
        elif roll < 0.86:
            over = rng.random() < 0.3
            claimed = model.claim_for_write(rng, prefix, 2 if over else 1)
            if not claimed:
                return
            source = claimed[0]
            target = claimed[1] if len(claimed) == 2 else \
                prefix + rng.choice(["a/", "b/", ""]) + "r-%s.bin" % key
            with model.lock:
                assert len(claimed) == 2 or target not in model.files, "a rename's new name %s is taken" % target
            try:
                os.makedirs(os.path.dirname(mount.path(target)), exist_ok=True)
                os.rename(mount.path(source), mount.path(target))
                figures.add("op rename-over" if len(claimed) == 2 else "op rename")
            except OSError as error:
                if error.errno != errno.EIO:
                    raise
                figures.eio.append(("rename", source))
            # After EIO the mount's own view says what happened; the final check holds the bucket
            # to it. (Both paths are busy: nobody else changes them meanwhile.)
            moved = os.path.exists(mount.path(target)) and not os.path.exists(mount.path(source))
            with model.lock:
                if moved:
                    model.files[target] = model.files.pop(source)
                for path in (source, target):
                    if path in model.files:
                        model.files[path].busy = False
        else:
            for path in model.claim_for_write(rng, prefix):
                try:
                    os.unlink(mount.path(path))
                    figures.add("op delete")
                except OSError as error:
                    if error.errno != errno.EIO:
                        raise
                    figures.eio.append(("unlink", path))
                still_there = os.path.exists(mount.path(path))
                with model.lock:
                    if still_there:
                        model.files[path].busy = False
                    else:
                        del model.files[path]

    def write_version(self, mount, model, figures, rng, path, recipe, how):
        """Writes `recipe` to `path` (appending its last segment when `how` is "append"), then
        records it in the model and frees the path."""
        full = mount.path(path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        old = model.files[path].recipe
        appending = how == "append" and recipe[:-1] == old and old
        data = segment(*recipe[-1]) if appending else content(recipe)
        piece = rng.choice([4096, 128 << 10, MiB, 4 * MiB])
        with open(full, "ab" if appending else "wb") as handle:
            for at in range(0, len(data), piece):
                handle.write(data[at:at + piece])
            handle.flush()
            if rng.random() < 0.25:
                try:
                    os.fsync(handle.fileno())
                    figures.add("op fsync")
                except OSError as error:
                    # fsync reports a failed upload attempt; the upload is retried (README).
                    if error.errno != errno.EIO:
                        raise
                    figures.eio.append(("fsync", path))
        figures.add("op " + how)
        figures.add("bytes written", len(data))
        entry = Entry(recipe)
        with model.lock:
            model.files[path] = entry

    def reader_step(self, mount, figures, rng, path, entry):
        full = mount.path(path)
        try:
            size = os.stat(full).st_size
            if size != entry.size:
                figures.wrong.append("%s: stat says %d bytes, expected %d" % (path, size, entry.size))
                return
            if entry.size > MiB and rng.random() < 0.3:
                offset = rng.randrange(entry.size)
                length = rng.randrange(1, 2 * MiB)
                with open(full, "rb") as handle:
                    handle.seek(offset)
                    got = handle.read(length)
                expected = content(entry.recipe)[offset:offset + length]
                figures.add("op read-range")
                figures.add("bytes read", len(got))
                if got != expected:
                    figures.wrong.append("%s@%d+%d: wrong bytes (%d read)" % (path, offset, length, len(got)))
            else:
                got_size, digest = read_whole(full)
                figures.add("op read-whole")
                figures.add("bytes read", got_size)
                if (got_size, digest) != (entry.size, entry.digest):
                    figures.wrong.append("%s: wrong bytes (%d read, %d expected)" % (path, got_size, entry.size))
        except OSError as error:
            if error.errno != errno.EIO:
                raise
            figures.eio.append(("read", path))


if __name__ == "__main__":
    sys.exit(unittest_runner.run(__name__))
