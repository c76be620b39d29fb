#!/usr/bin/env python3
"""Faults and corruption (issue 6), on real mounts against a bucketfs-server that misbehaves on
purpose (`--inject-faults`):

- a tree of files of mixed sizes written through a mount, drained, and read back through a fresh
  mount with an empty cache, while the server fails >= 10% of requests with every fault kind
  (500/503/429, connection resets, stalls past the client's stall timeout, truncated bodies,
  flipped bytes in xorb ranges): identical bytes;
- flipped bytes at a high rate: every read returns the right bytes or EIO, never wrong bytes, and
  nothing from a flipped response lands in the chunk cache;
- a damaged chunk cache segment is detected and its chunks fetched again;
- the server killed and restarted (same port, same data) in the middle of an upload and of a
  read: the transfer completes or fails cleanly, and a later fsync commits.

The figures (faults injected by kind, files and bytes checked) are printed for the README."""
import errno
import glob
import hashlib
import os
import random
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support"))
import mount_harness  # noqa: E402
from mount_harness import MiB, RestartableServer, Workspace, api, metric, new_mount  # noqa: E402
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support"))
import unittest_runner  # noqa: E402

# Stalls of 5 s against a client that gives up after 4 s without a byte: the stall fault really
# exceeds the client's timeout, at a cost the suite can afford.
STALL_TIMEOUT_MS = 4000
STALL_MS = 5000
os.environ["BUCKETFS_HTTP_STALL_TIMEOUT_MS"] = str(STALL_TIMEOUT_MS)
ALL_KINDS = "status+reset+stall+truncate+flip"


def start(test, name, *extra):
    server = RestartableServer(name, extra_args=extra)
    test.addCleanup(server.cleanup)
    server.start()
    return server


def create_bucket(server, bucket):
    for _ in range(30):  # the request itself may meet an injected fault
        try:
            response = api.request("POST", "/api/buckets/" + bucket, token=api.ALICE_W, server=server)
        except OSError:
            continue
        if response.status in (200, 409):
            return
    raise AssertionError("cannot create " + bucket)


def faults(server):
    text = api.request("GET", "/metrics", server=server).body.decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("bucketfs_injected_faults_total{"):
            kind = line.split('kind="', 1)[1].split('"', 1)[0]
            out[kind] = int(float(line.split()[1]))
    return out


def requests_of(server, route):
    text = api.request("GET", "/metrics", server=server).body.decode()
    total = 0
    for line in text.splitlines():
        if line.startswith('bucketfs_http_requests_total{route="%s",' % route):
            status = line.split('status="', 1)[1].split('"', 1)[0]
            if status.startswith("2"):
                total += int(float(line.split()[1]))
    return total


def tree(seed, sizes):
    """{relative path: bytes}: random (incompressible) and text-like (compressible) payloads."""
    rng = random.Random(seed)
    files = {}
    for i, size in enumerate(sizes):
        if i % 3 == 2:
            words = [b"step", b"loss", b"0.125", b"tensor", b"layer", b"\n", b"weight"]
            data = b" ".join(rng.choice(words) for _ in range(size // 4 + 1))[:size]
        else:
            data = rng.randbytes(size)
        files["d%d/sub%d/f%03d.bin" % (i % 4, i % 2, i)] = data
    return files


def write_tree(mount, files, fsync_every=3):
    for i, (rel, data) in enumerate(sorted(files.items())):
        path = mount.path(rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            for at in range(0, len(data), MiB):
                handle.write(data[at:at + MiB])
            handle.flush()
            if i % fsync_every == 0:
                os.fsync(handle.fileno())


def read_file(path):
    with open(path, "rb") as handle:
        chunks = []
        while True:
            piece = handle.read(MiB)
            if not piece:
                return b"".join(chunks)
            chunks.append(piece)


class FaultsTest(unittest.TestCase):
    def setUp(self):
        self.workspace = Workspace("faults")
        self.addCleanup(self.workspace.cleanup)

    def test_write_and_read_back_with_every_fault_kind(self):
        spec = "rate=0.2,seed=11,kinds=%s,stall_ms=%d" % (ALL_KINDS, STALL_MS)
        server = start(self, "faults-rw", "--inject-faults", spec)
        create_bucket(server, "alice/ckpt")
        sizes = [0, 1, 100, 4096, 70_000, 300_000, MiB, 3 * MiB + 17, 9 * MiB, 24 * MiB] + \
                [random.Random(i).randrange(1, 200_000) for i in range(20)]
        files = tree(6, sizes)
        started = time.monotonic()
        writer = new_mount(self, server, self.workspace, "alice/ckpt", name="writer").start()
        write_tree(writer, files)
        result = writer.unmount(timeout=240)
        self.assertEqual(result.returncode, 0, result.stderr + writer.log())
        written = time.monotonic() - started

        reader = new_mount(self, server, self.workspace, "alice/ckpt", name="reader").start("--read-only")
        checked = 0
        for rel, data in sorted(files.items()):
            got = read_file(reader.path(rel))
            self.assertTrue(got == data, "%s differs (%d bytes read, %d expected)" % (rel, len(got), len(data)))
            checked += 1
        # Random ranges too (partial xorb ranges: the unverifiable kind of fetch).
        rng = random.Random(3)
        ranges = 0
        for rel, data in sorted(files.items()):
            if len(data) < 2 * MiB:
                continue
            with open(reader.path(rel), "rb") as handle:
                for _ in range(8):
                    offset = rng.randrange(len(data))
                    handle.seek(offset)
                    self.assertTrue(handle.read(100_000) == data[offset:offset + 100_000], rel)
                    ranges += 1
        reader.unmount()
        counts = faults(server)
        total = sum(counts.values())
        requests = sum(int(float(line.split()[1])) for line in
                       api.request("GET", "/metrics", server=server).body.decode().splitlines()
                       if line.startswith("bucketfs_http_requests_total{"))
        print("FIGURES mount write+read under faults (%s): %d files (%d bytes) written through a mount in "
              "%.1f s, drained, read back whole through a fresh mount and %d random ranges: all identical; "
              "faults injected: %d (%s) among about %d requests"
              % (spec, checked, sum(map(len, files.values())), written, ranges, total,
                 ", ".join("%s %d" % kv for kv in sorted(counts.items())), requests + counts.get("reset", 0)),
              file=sys.stderr, flush=True)
        # Xorb range GETs are a small share of the requests, so flips may not come up here: the
        # flip test below injects them at a high rate.
        for kind in ("status", "reset", "truncate"):
            self.assertGreater(counts.get(kind, 0), 0, "no %s fault was injected: %s" % (kind, counts))
        self.assertGreaterEqual(total, 0.1 * (requests + counts.get("reset", 0)), "fewer than 10% of requests failed")

    def test_flipped_bytes_are_never_returned_nor_cached(self):
        server = start(self, "faults-flip")
        create_bucket(server, "alice/flip")
        sizes = [5 * MiB, 12 * MiB, 700_000, 30_000, 150_000, 2 * MiB, 9 * MiB, 3 * MiB] + \
                [random.Random(i).randrange(1000, 400_000) for i in range(12)]
        files = tree(9, sizes)
        writer = new_mount(self, server, self.workspace, "alice/flip", name="writer").start()
        write_tree(writer, files, fsync_every=1)
        self.assertEqual(writer.unmount().returncode, 0)
        server.kill()
        server.restart_on_same_port(["--inject-faults", "rate=0.6,seed=5,kinds=flip"])

        cache = self.workspace.path("flip-cache")
        reader = new_mount(self, server, self.workspace, "alice/flip", name="flipped", cache_dir=cache)
        reader.start("--read-only")
        correct = eio = 0
        for rel, data in sorted(files.items()):
            try:
                got = read_file(reader.path(rel))
            except OSError as error:
                self.assertEqual(error.errno, errno.EIO, rel)
                eio += 1
                continue
            self.assertTrue(got == data, "%s: WRONG BYTES returned under flips" % rel)
            correct += 1
        # Ranges of the larger files: parts of xorbs, which no xorb hash can check.
        rng = random.Random(8)
        for rel, data in sorted(files.items()):
            if len(data) < MiB:
                continue
            for _ in range(6):
                offset = rng.randrange(len(data))
                try:
                    with open(reader.path(rel), "rb") as handle:
                        handle.seek(offset)
                        got = handle.read(100_000)
                except OSError as error:
                    self.assertEqual(error.errno, errno.EIO, rel)
                    eio += 1
                    continue
                self.assertTrue(got == data[offset:offset + 100_000], "%s@%d: WRONG BYTES under flips" % (rel, offset))
                correct += 1
        self.assertEqual(reader.unmount().returncode, 0)
        flips = faults(server).get("flip", 0)
        self.assertGreater(flips, 0)

        # The same cache through a server that no longer flips: were a flipped chunk cached, it
        # would come back from the cache (the cache checks bytes against the hash taken at put).
        server.kill()
        server.restart_on_same_port([])
        again = new_mount(self, server, self.workspace, "alice/flip", name="clean", cache_dir=cache)
        again.start("--read-only")
        for rel, data in sorted(files.items()):
            self.assertTrue(read_file(again.path(rel)) == data, "%s differs after the flips" % rel)
        self.assertEqual(again.unmount().returncode, 0)
        print("FIGURES flips at 60%% of xorb range GETs: %d flipped responses; %d reads (whole files and ranges) "
              "correct, %d EIO, "
              "0 wrong; then all %d correct from the same cache without flips"
              % (flips, correct, eio, len(files)), file=sys.stderr, flush=True)

    def test_damaged_cache_segment_is_detected_and_refetched(self):
        server = start(self, "faults-cache")
        create_bucket(server, "alice/cache")
        files = tree(12, [6 * MiB, 2 * MiB + 5])
        writer = new_mount(self, server, self.workspace, "alice/cache", name="writer").start()
        write_tree(writer, files, fsync_every=1)
        self.assertEqual(writer.unmount().returncode, 0)
        cache = self.workspace.path("shared-cache")

        def read_all(name, random_reads=0):
            mount = new_mount(self, server, self.workspace, "alice/cache", name=name, cache_dir=cache)
            mount.start("--read-only")
            before = requests_of(server, "cas_xorb_data")
            # Small random reads first: those read and verify only the 16 KiB groups of a chunk
            # that hold them, which must catch a damaged byte there as a whole-chunk read does.
            offsets = random.Random(2)
            for rel, data in sorted(files.items()):
                fd = os.open(mount.path(rel), os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
                    for _ in range(random_reads):
                        at = offsets.randrange(MiB, len(data) - 4096)
                        self.assertEqual(os.pread(fd, 4096, at), data[at:at + 4096], "%s at %d (%s)" % (rel, at, name))
                finally:
                    os.close(fd)
            for rel, data in sorted(files.items()):
                self.assertTrue(read_file(mount.path(rel)) == data, "%s differs (%s)" % (rel, name))
            fetched = requests_of(server, "cas_xorb_data") - before
            self.assertEqual(mount.unmount().returncode, 0)
            return fetched

        self.assertGreater(read_all("cold"), 0)
        self.assertEqual(read_all("warm", random_reads=20), 0, "a warm cache must not fetch")
        segments = sorted(glob.glob(os.path.join(cache, "chunks", "*.seg")))
        self.assertTrue(segments, os.listdir(cache))
        damaged = 0
        rng = random.Random(1)
        for path in segments:
            size = os.path.getsize(path)
            with open(path, "r+b") as handle:
                for _ in range(16):
                    at = rng.randrange(size)
                    handle.seek(at)
                    byte = handle.read(1)
                    handle.seek(at)
                    handle.write(bytes([byte[0] ^ 0xFF]))
                    damaged += 1
        refetched = read_all("damaged", random_reads=200)
        self.assertGreater(refetched, 0, "damaged cache bytes were not refetched")
        print("FIGURES cache damage: %d bytes inverted in %d segment files; read back correct, %d xorb range "
              "GETs to refetch" % (damaged, len(segments), refetched), file=sys.stderr, flush=True)

    def test_daemon_survives_a_server_restart_during_transfers(self):
        server = start(self, "faults-restart")
        create_bucket(server, "alice/restart")
        rng = random.Random(4)
        big = rng.randbytes(48 * MiB)
        mount = new_mount(self, server, self.workspace, "alice/restart", name="m").start()
        # An upload in flight: close queues it; kill the server while it runs.
        with open(mount.path("big.bin"), "wb") as handle:
            for at in range(0, len(big), MiB):
                handle.write(big[at:at + MiB])
        time.sleep(0.3)
        server.kill()
        time.sleep(2)
        server.restart_on_same_port()
        fd = os.open(mount.path("big.bin"), os.O_RDONLY)
        try:
            os.fsync(fd)  # waits for the commit: must succeed once the server is back
        finally:
            os.close(fd)
        # Another file written after the restart commits too.
        with open(mount.path("after.bin"), "wb") as handle:
            handle.write(b"after restart\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.assertEqual(mount.unmount().returncode, 0, mount.log())

        # A read in flight through a fresh mount (empty cache) while the server is killed.
        reader = new_mount(self, server, self.workspace, "alice/restart", name="r").start("--read-only")
        outcome = {}

        def read_big():  # slowly, so that the kill lands in the middle of the download
            try:
                with open(reader.path("big.bin"), "rb") as handle:
                    pieces = []
                    while True:
                        piece = handle.read(MiB)
                        if not piece:
                            break
                        pieces.append(piece)
                        time.sleep(0.05)
                outcome["data"] = b"".join(pieces)
            except OSError as error:
                outcome["errno"] = error.errno

        thread = threading.Thread(target=read_big)
        thread.start()
        time.sleep(0.8)
        server.kill()
        time.sleep(1.5)
        server.restart_on_same_port()
        thread.join(timeout=180)
        self.assertFalse(thread.is_alive(), "the read hangs after the restart")
        if "data" in outcome:
            self.assertTrue(outcome["data"] == big, "the interrupted read returned wrong bytes")
            how = "completed with the right bytes"
        else:
            self.assertEqual(outcome.get("errno"), errno.EIO, outcome)
            how = "failed with EIO"
            self.assertTrue(read_file(reader.path("big.bin")) == big)
        self.assertTrue(read_file(reader.path("after.bin")) == b"after restart\n")
        self.assertEqual(reader.unmount().returncode, 0)
        print("FIGURES server restart: a 48 MiB upload interrupted by kill -9 of the server committed at the "
              "next fsync; an interrupted read %s" % how, file=sys.stderr, flush=True)


class FsyncRetryTest(unittest.TestCase):
    """fsync means "in the bucket": it waits through failed upload attempts (a server restart, a
    network blip longer than one request's retries) for --fsync-retry seconds, and answers EIO at
    once only when retrying cannot help."""

    def setUp(self):
        self.workspace = Workspace("faults-fsync")
        self.addCleanup(self.workspace.cleanup)

    @staticmethod
    def failures(mount):
        mine = [s for s in mount.status() if s.get("mountpoint") == os.path.realpath(mount.mountpoint)]
        return mine[0]["upload_failures"] if mine else 0

    @staticmethod
    def written(path, data):
        """A file opened and written while the server answers (creating a name needs a listing)."""
        handle = open(path, "wb")
        handle.write(data)
        handle.flush()
        return handle

    def fsync_in_thread(self, handle):
        outcome = {}

        def run():
            started = time.monotonic()
            try:
                os.fsync(handle.fileno())
                outcome["ok"] = True
            except OSError as error:
                outcome["errno"] = error.errno
            outcome["seconds"] = time.monotonic() - started
            handle.close()

        thread = threading.Thread(target=run)
        thread.start()
        return thread, outcome

    def wait_for_a_failure(self, mount):
        deadline = time.monotonic() + 60
        while self.failures(mount) == 0:
            self.assertLess(time.monotonic(), deadline, "no upload attempt failed: " + mount.log())
            time.sleep(0.2)

    def test_fsync_waits_through_a_server_outage(self):
        server = start(self, "faults-fsync-outage")
        create_bucket(server, "alice/fsync")
        mount = new_mount(self, server, self.workspace, "alice/fsync", name="m").start()
        data = random.Random(11).randbytes(4 * MiB)
        handle = self.written(mount.path("a.bin"), data)
        server.kill()
        thread, outcome = self.fsync_in_thread(handle)
        self.wait_for_a_failure(mount)  # one whole attempt (its requests' retries) failed
        self.assertTrue(thread.is_alive(), "fsync returned at the first failed attempt: %r" % outcome)
        server.restart_on_same_port()
        thread.join(timeout=90)
        self.assertFalse(thread.is_alive(), "fsync still waits after the server came back")
        self.assertEqual(outcome.get("ok"), True, "%r %s" % (outcome, mount.log()))
        listed = api.request("POST", "/api/buckets/alice/fsync/paths-info", {"paths": ["a.bin"]},
                             token=api.ALICE_W, server=server).json()
        self.assertEqual(listed[0]["size"], len(data))
        self.assertEqual(mount.unmount().returncode, 0, mount.log())

        # --fsync-retry 0: EIO at the first failed attempt, as before this option existed.
        impatient = new_mount(self, server, self.workspace, "alice/fsync", name="z").start("--fsync-retry", "0")
        handle = self.written(impatient.path("b.bin"), data)
        server.kill()
        thread, outcome = self.fsync_in_thread(handle)
        thread.join(timeout=60)
        self.assertFalse(thread.is_alive(), "fsync with --fsync-retry 0 waits on")
        self.assertEqual(outcome.get("errno"), errno.EIO, outcome)
        server.restart_on_same_port()
        self.assertEqual(impatient.unmount().returncode, 0, impatient.log())  # drained: b.bin commits
        listed = api.request("POST", "/api/buckets/alice/fsync/paths-info", {"paths": ["b.bin"]},
                             token=api.ALICE_W, server=server).json()
        self.assertEqual(listed[0]["size"], len(data))

    def test_fsync_answers_eio_at_once_when_retrying_cannot_help(self):
        server = start(self, "faults-fsync-gone")
        create_bucket(server, "alice/gone")
        mount = new_mount(self, server, self.workspace, "alice/gone", name="g").start("--drain-timeout", "1")
        handle = self.written(mount.path("a.bin"), b"x" * 1000)
        reply = api.request("DELETE", "/api/buckets/alice/gone", token=api.ALICE_W, server=server)
        self.assertEqual(reply.status, 200, reply)
        thread, outcome = self.fsync_in_thread(handle)
        thread.join(timeout=40)  # far below the 60 s default window
        self.assertFalse(thread.is_alive(), "fsync waits on a bucket that is gone")
        self.assertEqual(outcome.get("errno"), errno.EIO, outcome)
        self.assertLess(outcome["seconds"], 30, outcome)
        self.assertIn("bucket not found", mount.log())
        mount.unmount()


class LostXorbsTest(unittest.TestCase):
    """The node's dedup index remembers where this node stored each chunk. A server that lost
    those xorbs (its store wiped, or a xorb garbage-collected) refuses a shard that references
    them (400); the upload must then do without the index and commit, not fail forever."""

    def setUp(self):
        self.workspace = Workspace("faults-lost")
        self.addCleanup(self.workspace.cleanup)

    def test_an_upload_refused_for_a_lost_xorb_is_sent_again_without_the_dedup_index(self):
        cache = self.workspace.path("cache")
        data = random.Random(9).randbytes(3 * MiB)
        first = start(self, "faults-lost-1")
        create_bucket(first, "alice/lost")
        mount = new_mount(self, first, self.workspace, "alice/lost", cache_dir=cache, name="a").start()
        with open(mount.path("a.bin"), "wb") as handle:
            handle.write(data)
        self.assertEqual(mount.unmount().returncode, 0, mount.log())  # committed: the index knows its xorbs

        second = start(self, "faults-lost-2")  # a new store: none of those xorbs
        create_bucket(second, "alice/lost")
        mount = new_mount(self, second, self.workspace, "alice/lost", cache_dir=cache, name="b").start()

        def committed_size(path):
            listed = api.request("POST", "/api/buckets/alice/lost/paths-info", {"paths": [path]},
                                 token=api.ALICE_W, server=second).json()
            return listed[0].get("size") if listed else None

        # fsync means "in the bucket": the refused attempt is followed at once by one without the
        # index, so fsync succeeds (no EIO) and the file is committed when it returns.
        with open(mount.path("b.bin"), "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
            self.assertEqual(committed_size("b.bin"), len(data), mount.log())
        log = mount.log()
        self.assertIn("which was not uploaded", log)  # the first attempt met the lost xorb
        self.assertRegex(log, r"dropped [1-9][0-9]* dedup index entries")
        # The lost xorbs' entries are gone from the index: the same bytes again are not refused.
        with open(mount.path("c.bin"), "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        self.assertEqual(mount.log().count("which was not uploaded"), log.count("which was not uploaded"),
                         mount.log())
        status = [s for s in mount.status() if s.get("mountpoint") == os.path.realpath(mount.mountpoint)][0]
        self.assertEqual(status["upload_failures"], 0, status)
        self.assertEqual(mount.unmount().returncode, 0, mount.log())
        fresh = new_mount(self, second, self.workspace, "alice/lost", name="c").start()
        for name in ("b.bin", "c.bin"):
            with open(fresh.path(name), "rb") as handle:
                self.assertTrue(handle.read() == data, name)
        self.assertEqual(fresh.unmount().returncode, 0)

    def test_bucketfs_cp_uploads_again_without_the_stale_index(self):
        cache = self.workspace.path("cache")
        source = self.workspace.path("source.bin")
        with open(source, "wb") as handle:
            handle.write(random.Random(10).randbytes(2 * MiB))
        first = start(self, "faults-lost-cp-1")
        create_bucket(first, "alice/lost")
        copy = self.workspace.path("copy.bin")

        def cp(server, *args):
            env = dict(os.environ)
            env.pop("HF_TOKEN", None)
            return subprocess.run([mount_harness.BINARY, "cp", "--cache-dir", cache, *args, "--endpoint", server.base,
                                   "--token-file", self.workspace.tokens["alice"]],
                                  capture_output=True, text=True, timeout=120, env=env)

        done = cp(first, source, "hf://buckets/alice/lost/copy.bin")
        self.assertEqual(done.returncode, 0, done.stderr)
        second = start(self, "faults-lost-cp-2")  # a new store: none of those xorbs
        create_bucket(second, "alice/lost")
        done = cp(second, source, "hf://buckets/alice/lost/copy.bin")
        self.assertEqual(done.returncode, 0, done.stderr)
        done = cp(second, "hf://buckets/alice/lost/copy.bin", copy)
        self.assertEqual(done.returncode, 0, done.stderr)
        with open(source, "rb") as a, open(copy, "rb") as b:
            self.assertTrue(a.read() == b.read())
        # From a pipe the upload cannot be read again: it fails once with a message that says
        # why, having dropped the stale entries, and the next run succeeds.
        third = start(self, "faults-lost-cp-3")
        create_bucket(third, "alice/lost")

        def cp_stdin(server):
            with open(source, "rb") as handle:
                data = handle.read()
            env = dict(os.environ)
            env.pop("HF_TOKEN", None)
            done = subprocess.run([mount_harness.BINARY, "cp", "--cache-dir", cache, "-",
                                   "hf://buckets/alice/lost/piped.bin", "--endpoint", server.base,
                                   "--token-file", self.workspace.tokens["alice"]],
                                  input=data, capture_output=True, timeout=120, env=env)  # a pipe
            done.stderr = done.stderr.decode()
            return done

        done = cp_stdin(third)
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("which was not uploaded", done.stderr)
        self.assertIn("dedup index entries", done.stderr)
        self.assertEqual(done.stderr.count("\n"), 1, done.stderr)  # one line
        done = cp_stdin(third)
        self.assertEqual(done.returncode, 0, done.stderr)


if __name__ == "__main__":
    sys.exit(unittest_runner.run(__name__))
