#!/usr/bin/env python3
"""Writing into a committed file without O_TRUNC (open "r+b", a database page, a checkpoint shard
patched in place), on real mounts against a bucketfs-server of the test's own:

- opening for writing fetches nothing, and neither does closing a handle that wrote nothing;
- reads of a file being modified take the written bytes from staging and the others from the
  version it was opened from (only the chunks they need), with zeros past a truncate;
- close needs no server: the journal records which bytes were written and which version the
  rest comes from, and after a crash the next mount fetches the rest and commits the file whole
  (also after a second edit made while the first was not yet committed);
- an upload that cannot fetch the version (server down) is retried, and commits once it can;
- the committed file is the edited bytes, read back through a fresh mount."""
import hashlib
import os
import random
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from everyday_common import wait_for  # noqa: E402
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support"))
import mount_harness as harness  # noqa: E402
from mount_harness import MiB, RestartableServer, Workspace, metric, new_mount  # noqa: E402
import unittest_runner  # noqa: E402

SIZE = 24 * MiB + 4321


def served(server):
    return metric(server, "bucketfs_xorb_bytes_served_total")


def xet_hash_in_bucket(server):
    response = harness.api.request("POST", "/api/buckets/alice/ckpts/paths-info", {"paths": ["model.bin"]},
                                   token=harness.api.ALICE_W, server=server)
    assert response.status == 200, response
    return response.json()[0]["xetHash"]


def patch(fd, expected, data, at):
    """Writes `data` at `at` through `fd`, and into `expected`."""
    os.pwrite(fd, data, at)
    expected[at:at + len(data)] = data


def sha(data):
    return hashlib.sha256(data).hexdigest()


def read_all(path):
    with open(path, "rb") as handle:
        return handle.read()


class InPlaceTest(unittest.TestCase):
    def setUp(self):
        self.workspace = Workspace("in-place")
        self.addCleanup(self.workspace.cleanup)

    def start_server(self, name):
        server = RestartableServer(name)
        self.addCleanup(server.cleanup)
        server.start()
        harness.create_bucket(server, "alice/ckpts")
        return server

    def commit_original(self, server, seed):
        """A SIZE-byte file committed at ckpts/model.bin by a mount that is then unmounted."""
        data = random.Random(seed).randbytes(SIZE)
        writer = new_mount(self, server, self.workspace, "alice/ckpts", name="writer").start()
        with open(writer.path("model.bin"), "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        self.assertEqual(writer.unmount().returncode, 0)
        return data

    def editor_with_the_server_down(self, name, seed, cache_dir=None):
        """The original committed, a fresh mount that has looked it up, then the server killed."""
        server = self.start_server(name)
        expected = bytearray(self.commit_original(server, seed))
        mount = new_mount(self, server, self.workspace, "alice/ckpts", name="editor", cache_dir=cache_dir).start()
        self.assertEqual(os.stat(mount.path("model.bin")).st_size, SIZE)
        server.kill()
        return server, expected, mount

    def assert_bucket_holds(self, server, expected, name):
        fresh = new_mount(self, server, self.workspace, "alice/ckpts", name=name).start()
        got = read_all(fresh.path("model.bin"))
        self.assertEqual(len(got), len(expected))
        self.assertTrue(sha(got) == sha(expected), "the committed file has other bytes")
        self.assertEqual(fresh.unmount().returncode, 0)

    def test_writes_in_place_fetch_only_what_reads_need(self):
        server = self.start_server("in-place")
        expected = bytearray(self.commit_original(server, 1))
        mount = new_mount(self, server, self.workspace, "alice/ckpts", name="editor").start()
        path = mount.path("model.bin")
        self.assertEqual(os.stat(path).st_size, SIZE)
        before = served(server)
        original_hash = xet_hash_in_bucket(server)

        # Opened for writing and closed without a write: nothing fetched, nothing committed.
        fd = os.open(path, os.O_RDWR)
        os.close(fd)
        self.assertEqual(served(server), before, "opening for writing fetched bytes")
        self.assertEqual(xet_hash_in_bucket(server), original_hash, "a handle that wrote nothing committed")

        fd = os.open(path, os.O_RDWR)
        try:
            self.assertEqual(served(server), before, "opening for writing fetched bytes")
            at = 10 * MiB + 5
            patch(fd, expected, b"P" * 1000, at)
            self.assertEqual(served(server), before, "a write fetched bytes")
            # A read across the patch's edges: the version's bytes around the written ones.
            window = os.pread(fd, 8192, at - 3000)
            self.assertEqual(window, bytes(expected[at - 3000:at - 3000 + 8192]))
            # Past the end: the gap is zeros, not the version's bytes.
            expected += b"\0" * 50
            patch(fd, expected, b"T" * 100, SIZE + 50)
            self.assertEqual(os.pread(fd, 300, SIZE - 100), bytes(expected[SIZE - 100:]))
            # Cut inside the version and extended again: zeros from the cut on.
            cut = 20 * MiB + 7
            os.ftruncate(fd, cut)
            os.ftruncate(fd, cut + 4096)
            del expected[cut:]
            expected += b"\0" * 4096
            self.assertEqual(os.pread(fd, 8192, cut - 4096), bytes(expected[cut - 4096:]))
            fetched = served(server) - before
            print("FIGURES in-place edit of a %d-byte file: %d bytes fetched by open, writes, truncates and "
                  "reads of 16 KiB before fsync" % (SIZE, fetched), flush=True)
            self.assertLess(fetched, SIZE // 2, "reads of a few KiB fetched most of the file")
            os.fsync(fd)  # fetches the rest and commits
        finally:
            os.close(fd)
        self.assertEqual(sha(read_all(path)), sha(bytes(expected)))
        self.assertEqual(mount.unmount().returncode, 0)
        self.assert_bucket_holds(server, bytes(expected), "check")

    def test_close_without_the_server_is_journaled_and_a_crash_loses_nothing(self):
        cache = self.workspace.path("cache-editor")
        server, expected, mount = self.editor_with_the_server_down("in-place-crash", 2, cache_dir=cache)
        path = mount.path("model.bin")

        # The server is gone: open, write and close still succeed, as they would on a local disk.
        fd = os.open(path, os.O_RDWR)
        patch(fd, expected, b"1" * 5000, 3 * MiB + 1)
        os.close(fd)
        # A second edit of the closed, uncommitted version: made on a copy of what it holds.
        fd = os.open(path, os.O_WRONLY)
        patch(fd, expected, b"2" * 7000, 17 * MiB + 2)
        os.ftruncate(fd, 22 * MiB)
        del expected[22 * MiB:]
        os.close(fd)
        mount.kill()

        server.restart_on_same_port()
        recovered = new_mount(self, server, self.workspace, "alice/ckpts", name="recovered", cache_dir=cache).start()
        state = recovered.state()
        self.assertEqual(state.get("recovered_files", 0), 1, recovered.log())
        self.assertEqual(state.get("recovery_failed", 0), 0, recovered.log())
        self.assertEqual(state.get("recovery_conflicts", 0), 0, recovered.log())
        self.assertEqual(recovered.unmount().returncode, 0)
        self.assert_bucket_holds(server, bytes(expected), "check")

    def test_an_upload_that_cannot_fetch_the_version_is_retried_until_it_can(self):
        server, expected, mount = self.editor_with_the_server_down("in-place-retry", 3)
        path = mount.path("model.bin")
        fd = os.open(path, os.O_RDWR)
        patch(fd, expected, b"R" * 3000, 6 * MiB + 3)
        os.close(fd)  # journaled; its upload fails to fetch the rest while the server is down
        wait_for(lambda: mount.state().get("upload_failures", 0) > 0, what="a failed upload attempt")
        server.restart_on_same_port()
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # waits for the retry's commit
        finally:
            os.close(fd)
        self.assertEqual(mount.unmount().returncode, 0)
        self.assert_bucket_holds(server, bytes(expected), "check")


if __name__ == "__main__":
    sys.exit(unittest_runner.run(__name__))
