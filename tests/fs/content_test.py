#!/usr/bin/env python3
"""What content addressing allows (issue 8), on real mounts against a bucketfs-server of each
test's own:

- zero-byte copy: copy_file_range (cp --reflink=auto, os.copy_file_range) of a whole committed
  file into an empty one commits the source's xet hash at the new path: no xorb byte sent or
  fetched (server metrics), the copy reads back identical; a destination with staged bytes or a
  source with unsaved changes falls back to read+write;
- partial range copy: copy_file_range of a part of a committed file (into an empty file, or
  appended to a committed one) references the stored chunks inside the range and uploads only
  the chunks its edges cut: aligned ranges send nothing, unaligned ones a few chunks; the copies
  read back right through a fresh mount with an empty cache, `bucketfs verify` accepts them;
- atomic checkpoint publish: a writer renames step-N.tmp/ to step-N/ over and over while a reader
  (the tree API, and a second mount with --metadata-ttl 0) never sees a part of a step;
- `bucketfs verify`: re-downloads and rehashes, finds a corrupted xorb on the server;
- `bucketfs warm`: after it, a fresh mount on the same cache dir reads with no xorb-data GET, and
  random reads there are planned without the server (no reconstruction request per read)."""
import hashlib
import os
import random
import re
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import everyday_common as common  # noqa: E402
from everyday_common import api, harness, MiB  # noqa: E402
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support"))
import unittest_runner  # noqa: E402

BINARY = harness.BINARY


def route_requests(server, route):
    """Requests of one route (every status) from the server's /metrics."""
    text = api.request("GET", "/metrics", server=server).body.decode()
    total = 0
    for line in text.splitlines():
        if line.startswith('bucketfs_http_requests_total{route="%s"' % route):
            total += int(float(line.split()[1]))
    return total


def xorb_bytes(server):
    return harness.metric(server, "bucketfs_xorb_bytes_received_total")


def sha256(path):
    return common.sha256_file(path)


def cli(workspace, server, *args, timeout=120):
    command = [BINARY, *args, "--endpoint", server.base, "--token-file", workspace.tokens["alice"]]
    env = dict(os.environ)
    env.pop("HF_TOKEN", None)
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def upload(test, workspace, server, local, remote):
    result = cli(workspace, server, "cp", "--cache-dir", workspace.path("cp-cache"), local, remote)
    test.assertEqual(result.returncode, 0, result.stderr)


def write_random(path, size, rng):
    with open(path, "wb") as handle:
        left = size
        while left:
            block = min(left, 8 * MiB)
            handle.write(rng.randbytes(block))
            left -= block


def copy_range_whole(source, destination):
    """os.copy_file_range of a whole file into a new one; returns seconds taken."""
    started = time.monotonic()
    with open(source, "rb") as src, open(destination, "wb") as dst:
        size = os.fstat(src.fileno()).st_size
        done = 0
        while done < size:
            n = os.copy_file_range(src.fileno(), dst.fileno(), size - done)
            if n == 0:
                break
            done += n
    return time.monotonic() - started


class ZeroByteCopyTest(unittest.TestCase):
    def setUp(self):
        self.rng = random.Random(common.seed_for(self))

    def test_whole_file_copy_sends_and_reads_no_bytes(self):
        server, workspace, bucket = common.setup(self, "zero-copy")
        local = workspace.path("big.bin")
        size = 200 * MiB + 12345
        write_random(local, size, self.rng)
        upload(self, workspace, server, local, "hf://buckets/%s/ckpt/big.bin" % bucket)
        small = workspace.path("small.bin")
        write_random(small, 3 * MiB + 7, self.rng)
        upload(self, workspace, server, small, "hf://buckets/%s/small.bin" % bucket)
        source_hash = common.paths_info(server, bucket, ["ckpt/big.bin"])["ckpt/big.bin"]["xetHash"]

        mount = harness.new_mount(self, server, workspace, bucket)
        mount.start()
        source = mount.path("ckpt", "big.bin")
        self.assertEqual(os.getxattr(source, "user.xet.hash").decode(), source_hash)
        sent_before, gets_before = xorb_bytes(server), route_requests(server, "cas_xorb_data")

        started = time.monotonic()
        result = subprocess.run(["cp", "--reflink=auto", source, mount.path("ckpt", "copy-cp.bin")],
                                capture_output=True, text=True, timeout=120)
        cp_seconds = time.monotonic() - started
        self.assertEqual(result.returncode, 0, result.stderr)
        os.makedirs(mount.path("other"), exist_ok=True)
        py_seconds = copy_range_whole(source, mount.path("other", "copy-py.bin"))
        print("zero-byte copy of %d MiB: cp --reflink=auto %.0f ms, os.copy_file_range %.0f ms"
              % (size // MiB, cp_seconds * 1000, py_seconds * 1000), flush=True)
        self.assertLess(cp_seconds, 1.0)
        self.assertLess(py_seconds, 1.0)
        self.assertEqual(xorb_bytes(server), sent_before, "a zero-byte copy sent xorb bytes")
        self.assertEqual(route_requests(server, "cas_xorb_data"), gets_before, "a zero-byte copy fetched xorbs")

        for name in ("ckpt/copy-cp.bin", "other/copy-py.bin"):
            copy = mount.path(*name.split("/"))
            self.assertEqual(os.stat(copy).st_size, size)
            self.assertEqual(os.getxattr(copy, "user.xet.hash").decode(), source_hash)
            self.assertEqual(os.getxattr(copy, "user.xet.size").decode(), str(size))
        files = common.tree(server, bucket)
        self.assertEqual(files["ckpt/copy-cp.bin"]["xetHash"], source_hash)
        self.assertEqual(files["other/copy-py.bin"]["xetHash"], source_hash)
        self.assertEqual(files["other/copy-py.bin"]["size"], size)

        # A write through the descriptor that made the copy stages the copied bytes again.
        with open(mount.path("small.bin"), "rb") as src:
            fd = os.open(mount.path("edited.bin"), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                self.assertEqual(os.copy_file_range(src.fileno(), fd, 3 * MiB + 7), 3 * MiB + 7)
                os.pwrite(fd, b"EDITED", 1000)
            finally:
                os.close(fd)
        with open(small, "rb") as handle:
            expected_edit = bytearray(handle.read())
        expected_edit[1000:1006] = b"EDITED"
        with open(mount.path("edited.bin"), "rb") as handle:
            self.assertEqual(hashlib.sha256(handle.read()).hexdigest(), hashlib.sha256(expected_edit).hexdigest())

        # A partial range (composed from stored chunks, PartialRangeCopyTest), and a destination
        # with staged bytes and a source with unsaved changes (the kernel's read+write copy) give
        # the right bytes.
        with open(small, "rb") as handle:
            small_bytes = handle.read()
        with open(mount.path("small.bin"), "rb") as src, open(mount.path("part.bin"), "wb") as dst:
            self.assertEqual(os.copy_file_range(src.fileno(), dst.fileno(), MiB, MiB, 0), MiB)
        with open(mount.path("part.bin"), "rb") as handle:
            self.assertEqual(handle.read(), small_bytes[MiB:2 * MiB])
        with open(mount.path("small.bin"), "rb") as src, open(mount.path("prefixed.bin"), "wb") as dst:
            dst.write(b"head")
            dst.flush()
            done = 0
            while done < len(small_bytes):
                done += os.copy_file_range(src.fileno(), dst.fileno(), len(small_bytes) - done)
        with open(mount.path("prefixed.bin"), "rb") as handle:
            self.assertEqual(handle.read(), b"head" + small_bytes)
        with open(mount.path("dirty.bin"), "wb") as writer:
            writer.write(b"x" * 5000)
            writer.flush()
            with open(mount.path("dirty.bin"), "rb") as src, open(mount.path("dirty-copy.bin"), "wb") as dst:
                self.assertEqual(os.copy_file_range(src.fileno(), dst.fileno(), 5000), 5000)
        with open(mount.path("dirty-copy.bin"), "rb") as handle:
            self.assertEqual(handle.read(), b"x" * 5000)

        # Reads back identical (this fetches the bytes, once).
        self.assertEqual(sha256(mount.path("ckpt", "copy-cp.bin")), sha256(local))
        result = mount.unmount()
        self.assertEqual(result.returncode, 0, result.stderr + mount.log())
        # The empty staged files of the copies were not uploaded over them after the copy.
        files = common.tree(server, bucket)
        self.assertEqual(files["ckpt/copy-cp.bin"]["xetHash"], source_hash)
        self.assertEqual(files["other/copy-py.bin"]["xetHash"], source_hash)
        self.assertEqual(files["part.bin"]["size"], MiB)

        again = harness.new_mount(self, server, workspace, bucket, cache_dir=mount.cache_dir, name="again")
        again.start()
        self.assertEqual(again.status()[0].get("recovered_files", 0), 0, "a copy left a journal record")
        self.assertEqual(sha256(again.path("other", "copy-py.bin")), sha256(local))


def chunk_offsets(local):
    """The chunk boundaries of a local file as an upload cuts it (`bucketfs xet chunks`): [0, ..., size]."""
    result = subprocess.run([BINARY, "xet", "chunks", local], capture_output=True, text=True, timeout=60, check=True)
    offsets = [0]
    for line in result.stdout.splitlines():
        if not line.startswith("file "):
            offsets.append(offsets[-1] + int(line.split()[0]))
    return offsets


class PartialRangeCopyTest(unittest.TestCase):
    """copy_file_range of a part of a committed file: stored chunks referenced, edges uploaded."""

    def setUp(self):
        self.rng = random.Random(common.seed_for(self))

    def copy(self, source, destination, offset_in, count, offset_out=0, create=True):
        """One os.copy_file_range call; returns (bytes copied, xorb bytes the server received)."""
        before = xorb_bytes(self.server)
        flags = os.O_WRONLY | (os.O_CREAT | os.O_TRUNC if create else 0)
        with open(source, "rb") as src:
            fd = os.open(destination, flags, 0o644)
            try:
                copied = os.copy_file_range(src.fileno(), fd, count, offset_in, offset_out)
            finally:
                os.close(fd)
        return copied, xorb_bytes(self.server) - before

    def test_partial_ranges_upload_only_their_edges(self):
        server, workspace, bucket = common.setup(self, "range-copy")
        self.server = server
        local = workspace.path("source.bin")
        size = 20 * MiB + 4321
        write_random(local, size, self.rng)
        upload(self, workspace, server, local, "hf://buckets/%s/source.bin" % bucket)
        with open(local, "rb") as handle:
            data = handle.read()
        offsets = chunk_offsets(local)
        self.assertEqual(offsets[-1], size)
        self.assertGreater(len(offsets), 100)

        mount = harness.new_mount(self, server, workspace, bucket)
        mount.start()
        source = mount.path("source.bin")
        expected = {}
        served_before = harness.metric(server, "bucketfs_xorb_bytes_served_total")

        # Aligned to chunk boundaries: every chunk is referenced, nothing is sent.
        start, end = offsets[10], offsets[len(offsets) - 20]
        copied, sent = self.copy(source, mount.path("aligned.bin"), start, end - start)
        self.assertEqual((copied, sent), (end - start, 0))
        expected["aligned.bin"] = data[start:end]

        # Unaligned, in the middle: the two cut chunks are sent again, the rest referenced.
        start, count = 3 * MiB + 12345, 9 * MiB + 777
        copied, sent = self.copy(source, mount.path("middle.bin"), start, count)
        print("range copy of %d bytes: %d xorb bytes sent" % (count, sent), flush=True)
        self.assertEqual(copied, count)
        self.assertGreater(sent, 0)
        self.assertLess(sent, 512 * 1024)
        expected["middle.bin"] = data[start:start + count]

        # A few bytes inside one chunk.
        k = next(i for i in range(5, len(offsets) - 1) if offsets[i + 1] - offsets[i] > 4096)
        start = offsets[k] + 1000
        copied, sent = self.copy(source, mount.path("tiny.bin"), start, 777)
        self.assertEqual(copied, 777)
        self.assertLess(sent, 4096)
        expected["tiny.bin"] = data[start:start + 777]

        # Past the end of the source: a short copy, then 0.
        copied, sent = self.copy(source, mount.path("tail.bin"), size - 1500, 1 * MiB)
        self.assertEqual(copied, 1500)
        self.assertLess(sent, 256 * 1024)
        # Only the cut chunks were read (each at most twice: a part of a xorb is confirmed).
        served = harness.metric(server, "bucketfs_xorb_bytes_served_total") - served_before
        self.assertLess(served, 2 * MiB, "the copies read more than their edges")
        self.assertEqual(self.copy(source, mount.path("tail.bin"), size, MiB, 1500, create=False)[0], 0)
        expected["tail.bin"] = data[size - 1500:]

        # Appended to a committed copy: the destination's chunks are referenced too (opening it
        # for writing without O_TRUNC still fetches its bytes, see README Limitations).
        first = (offsets[3] + 10, offsets[40] - 10)
        second = (offsets[200] + 5, offsets[250] + 5)
        self.copy(source, mount.path("joined.bin"), first[0], first[1] - first[0])
        copied, sent = self.copy(source, mount.path("joined.bin"), second[0], second[1] - second[0],
                                 first[1] - first[0], create=False)
        self.assertEqual(copied, second[1] - second[0])
        self.assertLess(sent, 512 * 1024)
        expected["joined.bin"] = data[first[0]:first[1]] + data[second[0]:second[1]]

        files = common.tree(server, bucket)
        for name, content in expected.items():
            path = mount.path(name)
            with open(path, "rb") as handle:
                self.assertEqual(handle.read(), content, name)
            self.assertEqual(os.stat(path).st_size, len(content), name)
            self.assertEqual(os.getxattr(path, "user.xet.hash").decode(), files[name]["xetHash"], name)
            self.assertEqual(files[name]["size"], len(content), name)

        # A later write to a copy stages its bytes and commits the change (copy-on-write).
        with open(mount.path("middle.bin"), "r+b") as handle:
            handle.seek(5 * MiB)
            handle.write(b"WRITTEN-AFTER-COPY")
        edited = bytearray(expected["middle.bin"])
        edited[5 * MiB:5 * MiB + 18] = b"WRITTEN-AFTER-COPY"
        expected["middle.bin"] = bytes(edited)
        result = mount.unmount()
        self.assertEqual(result.returncode, 0, result.stderr + mount.log())

        # A fresh mount with an empty cache reads exactly the source's bytes of each range.
        fresh = harness.new_mount(self, server, workspace, bucket, name="fresh")
        fresh.start("--read-only")
        for name, content in expected.items():
            with open(fresh.path(name), "rb") as handle:
                self.assertEqual(hashlib.sha256(handle.read()).hexdigest(), hashlib.sha256(content).hexdigest(), name)
        result = cli(workspace, server, "verify", "hf://buckets/" + bucket)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("%d ok, 0 mismatches" % (len(expected) + 1), result.stdout)


class AtomicPublishTest(unittest.TestCase):
    FILES = ("model.safetensors", "optimizer.pt", "trainer_state.json")
    RENAMES = 60

    def content(self, step, name):
        return ("step %d %s " % (step, name)).encode() * (50 + step % 7)

    def test_directory_rename_is_all_or_nothing(self):
        server, workspace, bucket = common.setup(self, "atomic")
        writer = harness.new_mount(self, server, workspace, bucket, name="writer")
        writer.start()
        reader = harness.new_mount(self, server, workspace, bucket, name="reader", extra=("--metadata-ttl", "0"))
        reader.start()
        stop = threading.Event()
        problems = []
        stats = {"listings": 0, "steps_seen": 0, "mount_checks": 0, "files_read": 0}
        step_re = re.compile(r"^step-(\d+)$")

        def api_reader():
            while not stop.is_set():
                response = api.request("GET", "/api/buckets/%s/tree?recursive=true&limit=10000" % bucket,
                                       token=api.ALICE_W, server=server)
                if response.status != 200:
                    problems.append("tree: %d" % response.status)
                    return
                if 'rel="next"' in (response.header("Link") or ""):
                    problems.append("listing was paged; the check needs one page")
                    return
                stats["listings"] += 1
                per_step = {}
                for entry in response.json():
                    if entry["type"] != "file":
                        continue
                    top, _, rest = entry["path"].partition("/")
                    if step_re.match(top):
                        per_step.setdefault(top, set()).add(rest)
                for top, names in per_step.items():
                    stats["steps_seen"] += 1
                    if names != set(self.FILES):
                        problems.append("tree API: %s has %s" % (top, sorted(names)))

        def mount_reader():
            while not stop.is_set():
                try:
                    names = os.listdir(reader.mountpoint)
                except OSError as error:
                    problems.append("listdir: %s" % error)
                    return
                for top in names:
                    match = step_re.match(top)
                    if not match:
                        continue
                    step = int(match.group(1))
                    try:
                        inside = sorted(os.listdir(reader.path(top)))
                    except FileNotFoundError:
                        continue
                    stats["mount_checks"] += 1
                    if inside != sorted(self.FILES):
                        problems.append("mount: %s has %s" % (top, inside))
                        continue
                    for name in self.FILES:
                        with open(reader.path(top, name), "rb") as handle:
                            if handle.read() != self.content(step, name):
                                problems.append("mount: %s/%s has wrong bytes" % (top, name))
                        stats["files_read"] += 1
                    if stop.is_set():
                        break

        threads = [threading.Thread(target=api_reader), threading.Thread(target=mount_reader)]
        for thread in threads:
            thread.start()
        renames = 0
        # A fixed count, not a time window: on a loaded machine the renames only take longer.
        deadline = time.monotonic() + 400
        try:
            for step in range(self.RENAMES):
                if time.monotonic() > deadline or problems:
                    break
                tmp = writer.path("step-%d.tmp" % step)
                os.mkdir(tmp)
                for name in self.FILES:
                    with open(os.path.join(tmp, name), "wb") as handle:
                        handle.write(self.content(step, name))
                os.rename(tmp, writer.path("step-%d" % step))
                renames += 1
        finally:
            time.sleep(0.5)
            stop.set()
            for thread in threads:
                thread.join(60)
        print("atomic publish: %d directory renames; tree API: %d listings, %d steps checked; second mount: "
              "%d steps checked, %d files read" % (renames, stats["listings"], stats["steps_seen"],
                                                 stats["mount_checks"], stats["files_read"]), flush=True)
        self.assertEqual(problems, [])
        self.assertEqual(renames, self.RENAMES)
        self.assertGreater(stats["listings"], 10)
        self.assertGreater(stats["steps_seen"], 0)
        self.assertGreater(stats["mount_checks"], 0)
        files = common.tree(server, bucket)
        self.assertEqual(len(files), renames * len(self.FILES))
        self.assertFalse(any(".tmp" in path for path in files))


def xorb_files(server):
    found = set()
    for directory, _, names in os.walk(server.data):
        for name in names:
            if re.fullmatch(r"[0-9a-f]{64}", name):
                found.add(os.path.join(directory, name))
    return found


class VerifyAndWarmTest(unittest.TestCase):
    def setUp(self):
        self.rng = random.Random(common.seed_for(self))

    def test_verify_finds_a_corrupted_xorb(self):
        server, workspace, bucket = common.setup(self, "verify")
        sizes = {"a.bin": 5 * MiB + 1, "run/b.bin": 2 * MiB + 3, "run/deep/c.bin": 700_001}
        uploaded = {}
        for index, (name, size) in enumerate(sizes.items()):
            local = workspace.path("file-%d" % index)
            write_random(local, size, self.rng)
            before = xorb_files(server)
            upload(self, workspace, server, local, "hf://buckets/%s/%s" % (bucket, name))
            uploaded[name] = xorb_files(server) - before
        result = cli(workspace, server, "verify", "hf://buckets/" + bucket)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("verified 3 files", result.stdout)
        self.assertIn("3 ok, 0 mismatches, 0 errors", result.stdout)
        result = cli(workspace, server, "verify", "hf://buckets/%s/run" % bucket)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("verified 2 files", result.stdout)
        result = cli(workspace, server, "verify", "hf://buckets/%s/run/b.bin" % bucket)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("verified 1 files", result.stdout)
        result = cli(workspace, server, "verify", "hf://buckets/%s/nothing-here" % bucket)
        self.assertEqual(result.returncode, 1)
        self.assertIn("no such file", result.stderr)

        # Flip one byte in the middle of run/b.bin's xorb, on the server's disk.
        self.assertTrue(uploaded["run/b.bin"])
        for path in uploaded["run/b.bin"]:
            with open(path, "r+b") as handle:
                size = os.fstat(handle.fileno()).st_size
                handle.seek(size // 2)
                byte = handle.read(1)
                handle.seek(size // 2)
                handle.write(bytes([byte[0] ^ 0x5A]))
        result = cli(workspace, server, "verify", "hf://buckets/" + bucket)
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertIn("MISMATCH hf://buckets/%s/run/b.bin" % bucket, result.stdout)
        self.assertIn("2 ok, 1 mismatches, 0 errors", result.stdout)
        self.assertNotIn("a.bin", result.stdout.replace("run/b.bin", ""))

    def test_warm_then_a_fresh_mount_reads_without_xorb_requests(self):
        server, workspace, bucket = common.setup(self, "warm")
        sizes = {"ckpt/model.bin": 40 * MiB + 17, "ckpt/optim.bin": 9 * MiB, "ckpt/state.json": 12_345,
                 "other.bin": 3 * MiB}
        locals_ = {}
        for index, (name, size) in enumerate(sizes.items()):
            local = workspace.path("file-%d" % index)
            write_random(local, size, self.rng)
            upload(self, workspace, server, local, "hf://buckets/%s/%s" % (bucket, name))
            locals_[name] = local
        cache_dir = workspace.path("node-cache")
        result = cli(workspace, server, "warm", "--cache-dir", cache_dir, "hf://buckets/%s/ckpt" % bucket)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        print("warm: " + result.stdout.strip(), flush=True)
        self.assertIn("warmed 3 of 3 files", result.stdout)
        self.assertNotIn("not cacheable", result.stdout)
        result = cli(workspace, server, "warm", "--cache-dir", cache_dir, "hf://buckets/%s/ckpt" % bucket)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("0 B fetched", result.stdout)
        print("warm again: " + result.stdout.strip(), flush=True)

        gets_before = route_requests(server, "cas_xorb_data")
        mount = harness.new_mount(self, server, workspace, bucket, cache_dir=cache_dir, name="fresh")
        mount.start("--read-only")
        for name in ("ckpt/model.bin", "ckpt/optim.bin", "ckpt/state.json"):
            self.assertEqual(sha256(mount.path(*name.split("/"))), sha256(locals_[name]), name)
        self.assertEqual(route_requests(server, "cas_xorb_data"), gets_before,
                         "the job's reads fetched xorb ranges after warm")
        # What was not warmed is fetched.
        self.assertEqual(sha256(mount.path("other.bin")), sha256(locals_["other.bin"]))
        self.assertGreater(route_requests(server, "cas_xorb_data"), gets_before)

    def test_a_mount_uploads_16_mib_xorbs(self):
        """The mount's upload settings bound each xorb to 16 MiB (and so its memory), and the file
        reads back whole through a fresh mount."""
        server, workspace, bucket = common.setup(self, "xorbsize")
        local = workspace.path("big")
        write_random(local, 40 * MiB + 3, self.rng)
        before = xorb_files(server)
        mount = harness.new_mount(self, server, workspace, bucket, name="writer")
        mount.start()
        with open(local, "rb") as source, open(mount.path("big.bin"), "wb") as out:
            while True:
                piece = source.read(MiB)
                if not piece:
                    break
                out.write(piece)
            out.flush()
            os.fsync(out.fileno())
        sizes = sorted(os.path.getsize(path) for path in xorb_files(server) - before)
        print("xorbs of a 40 MiB file written through the mount: %s" % sizes, flush=True)
        self.assertGreaterEqual(len(sizes), 3)
        self.assertLessEqual(sizes[-1], 16 * MiB + 64 * 1024)  # chunks, plus a footer if stored
        reader = harness.new_mount(self, server, workspace, bucket, name="reader",
                                   cache_dir=workspace.path("reader-cache"))
        reader.start("--read-only")
        self.assertEqual(sha256(reader.path("big.bin")), sha256(local))

    def test_random_reads_of_a_cached_file_ask_the_server_nothing(self):
        """After warm, random reads are planned from the file's layout and the cache index: at most
        two reconstruction requests per file (the first read's, the layout), no xorb GET, and the
        bytes are right at every offset, also across the terms of a file deduplicated against
        others."""
        server, workspace, bucket = common.setup(self, "random")
        first = workspace.path("first")
        write_random(first, 6 * MiB + 5, self.rng)
        upload(self, workspace, server, first, "hf://buckets/%s/first.bin" % bucket)
        # mixed.bin shares first.bin's chunks around new bytes: several terms, two xorbs or more.
        fresh = workspace.path("fresh")
        write_random(fresh, 3 * MiB + 7, self.rng)
        mixed = workspace.path("mixed")
        with open(mixed, "wb") as out, open(first, "rb") as a, open(fresh, "rb") as b:
            data_a = a.read()
            out.write(data_a[:4 * MiB] + b.read() + data_a)
        upload(self, workspace, server, mixed, "hf://buckets/%s/mixed.bin" % bucket)
        cache_dir = workspace.path("node-cache")
        result = cli(workspace, server, "warm", "--cache-dir", cache_dir, "hf://buckets/%s" % bucket)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

        recon_routes = ("cas_reconstruction_v1", "cas_reconstruction_v2")
        recon_before = sum(route_requests(server, r) for r in recon_routes)
        gets_before = route_requests(server, "cas_xorb_data")
        mount = harness.new_mount(self, server, workspace, bucket, cache_dir=cache_dir, name="random")
        mount.start("--read-only")
        reads = 0
        for name, local in (("mixed.bin", mixed), ("first.bin", first)):
            with open(local, "rb") as handle:
                expected = handle.read()
            fd = os.open(mount.path(name), os.O_RDONLY)
            try:
                # Random offsets and lengths, including reads that cross a term edge of mixed.bin;
                # none near offset 0, where a read starts a sequential stream (one more request).
                offsets = [self.rng.randrange(MiB, len(expected)) for _ in range(150)] + [4 * MiB - 3, 7 * MiB]
                for offset in offsets:
                    length = self.rng.choice([1, 4096, 65536, 200_000])
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    got = os.pread(fd, length, offset)
                    self.assertEqual(got, expected[offset:offset + length], "%s at %d" % (name, offset))
                    reads += 1
            finally:
                os.close(fd)
        recon = sum(route_requests(server, r) for r in recon_routes) - recon_before
        print("random reads: %d reads of 2 cached files, %d reconstruction requests" % (reads, recon), flush=True)
        self.assertEqual(route_requests(server, "cas_xorb_data"), gets_before, "a cached file's reads fetched xorbs")
        self.assertLessEqual(recon, 4, "random reads of cached files asked the server to plan them")


if __name__ == "__main__":
    sys.exit(unittest_runner.run(__name__))
