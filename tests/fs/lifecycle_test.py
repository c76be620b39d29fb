#!/usr/bin/env python3
"""The life of a mount (issue 5): start-up errors (one line, non-zero exit, nothing mounted),
`bucketfs status --json`, `bucketfs unmount` and SIGTERM draining what is pending, the mount(8)
helpers (mount.bucketfs with -o; mount -t fuse.bucketfs / -t bucketfs in a private mount namespace
where the helpers are visible in /sbin), and who may use a mount (owner only; allow_other with
default_permissions)."""
import os
import pwd
import random
import shutil
import signal
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import everyday_common as common  # noqa: E402
from everyday_common import api, harness, MiB  # noqa: E402
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support"))
import unittest_runner  # noqa: E402

OTHER_USER = "bucketfs-test-other"


def write_files(rng, mount, count, max_size=3 * MiB):
    """`count` files of random sizes under the mount, closed without fsync: {relative: bytes}."""
    written = {}
    for index in range(count):
        relative = "batch/%d/file-%d.bin" % (index % 3, index)
        data = rng.randbytes(rng.choice((0, 1, 8192, rng.randrange(max_size))))
        os.makedirs(os.path.dirname(mount.path(relative)), exist_ok=True)
        with open(mount.path(relative), "wb") as handle:
            handle.write(data)
        written[relative] = data
    return written


def write_pending(test, rng, server, bucket, mount, written):
    """Adds a 64 MiB file, closed without fsync, and checks that its upload is still pending (the
    bucket does not have it yet) so that what follows really has something to drain."""
    data = rng.randbytes(64 * MiB)
    with open(mount.path("last-64MiB.bin"), "wb") as handle:
        handle.write(data)
    test.assertEqual(common.paths_info(server, bucket, ["last-64MiB.bin"]), {}, "nothing left to drain")
    written["last-64MiB.bin"] = data


def local_xet_hash(workspace, data):
    path = workspace.path("hash-input")
    with open(path, "wb") as handle:
        handle.write(data)
    return common.xet_hash(path)


class LifecycleTest(unittest.TestCase):
    def setUp(self):
        self.seed = common.seed_for(self)
        self.rng = random.Random(self.seed)

    def assertOneLineFailure(self, result, *fragments):
        self.assertNotEqual(result.returncode, 0, result)
        lines = result.stderr.splitlines()
        self.assertEqual(len(lines), 1, "not one line: %r" % result.stderr)
        self.assertTrue(lines[0].startswith("bucketfs: "), lines[0])
        for fragment in fragments:
            self.assertIn(fragment, lines[0])
        for secret in (api.ALICE_W, api.ALICE_R, api.BOB_W, "hf_garbage"):
            self.assertNotIn(secret, result.stderr + result.stdout)

    def assertInBucket(self, server, bucket, written, workspace):
        listed = common.tree(server, bucket)
        self.assertEqual(sorted(listed), sorted(written))
        for relative, data in written.items():
            self.assertEqual(listed[relative]["size"], len(data), relative)
            self.assertEqual(listed[relative]["xetHash"], local_xet_hash(workspace, data), relative)

    def test_mount_errors_are_one_line(self):
        server, workspace, bucket = common.setup(self, "life-errors")
        garbage = workspace.path("token-garbage")
        with open(garbage, "w") as handle:
            handle.write("hf_garbage_not_a_token\n")

        def attempt(source, mountpoint=None, token_file=None, name="e"):
            mount = harness.new_mount(self, server, workspace, source, name=name)
            args = ["mount", "--endpoint", server.base, "--cache-dir", mount.cache_dir, "--token-file",
                    token_file or workspace.tokens["alice"], source, mountpoint or mount.mountpoint]
            result = mount.command(*args, timeout=60)
            return mount, result

        mount, result = attempt("alice/no-such-bucket", name="missing-bucket")
        self.assertOneLineFailure(result, "alice/no-such-bucket", "not found")
        self.assertFalse(mount.is_mounted())
        mount, result = attempt(bucket, token_file=garbage, name="garbage-token")
        self.assertOneLineFailure(result, bucket)
        self.assertFalse(mount.is_mounted())
        mount, result = attempt(bucket, mountpoint=workspace.path("does", "not", "exist"), name="no-mountpoint")
        self.assertOneLineFailure(result, "does not exist")
        for source in ("alice", "hf://models/alice/x", "alice/bad name", "/alice/x"):
            mount, result = attempt(source, name="bad-source")
            self.assertOneLineFailure(result, source)
            self.assertFalse(mount.is_mounted())
        not_a_dir = workspace.path("plain-file")
        open(not_a_dir, "w").close()
        mount, result = attempt(bucket, mountpoint=not_a_dir, name="file-mountpoint")
        self.assertOneLineFailure(result, "not a directory")
        for value in ("-1", "nan", "100000"):
            mount = harness.new_mount(self, server, workspace, bucket, name="bad-fsync-retry")
            result = mount.mount("--fsync-retry", value)
            self.assertOneLineFailure(result, "--fsync-retry")
            self.assertFalse(mount.is_mounted())
        # Busy: a second mount on the same folder fails, and the first keeps working.
        first = harness.new_mount(self, server, workspace, bucket, name="busy").start()
        with open(first.path("hello.txt"), "w") as handle:
            handle.write("hello")
        second = first.mount()
        self.assertOneLineFailure(second, first.mountpoint)
        self.assertTrue("busy" in second.stderr or "already a mount" in second.stderr, second.stderr)
        with open(first.path("hello.txt")) as handle:
            self.assertEqual(handle.read(), "hello")
        # Not through our state file either: a different runtime dir sees only the kernel's mount.
        other_runtime = dict(first.env(), BUCKETFS_RUNTIME_DIR=workspace.path("other-runtime"))
        third = subprocess.run([common.BINARY, "mount", "--endpoint", server.base, "--cache-dir",
                                workspace.path("cache-third"), "--token-file", workspace.tokens["alice"], bucket,
                                first.mountpoint], capture_output=True, text=True, env=other_runtime, timeout=60)
        self.assertOneLineFailure(third, "already a mount")
        self.assertEqual(first.unmount().returncode, 0)
        self.assertEqual(common.tree(server, bucket)["hello.txt"]["size"], 5)

    def test_status_json_and_unmount_drains(self):
        server, workspace, bucket = common.setup(self, "life-status")
        mount = harness.new_mount(self, server, workspace, bucket).start()
        statuses = [s for s in mount.status() if s.get("mountpoint") == os.path.realpath(mount.mountpoint)]
        self.assertEqual(len(statuses), 1, statuses)
        status = statuses[0]
        self.assertEqual(status["bucket"], bucket)
        self.assertEqual(status["pid"], mount.pid)
        self.assertEqual(status["state"], "mounted")
        self.assertFalse(status["read_only"])
        for key in ("pending_uploads", "files_committed", "bytes_committed", "upload_failures"):
            self.assertIn(key, status)
        # A file open with written bytes is pending. Another process holds it open: a fork of this
        # one (each `bucketfs status`) would close an inherited copy of the descriptor at exec, and
        # FUSE turns every close into a flush, which queues the upload.
        writer = subprocess.Popen(
            [sys.executable, "-c", "import sys\nf = open(sys.argv[1], 'wb')\nf.write(b'x' * 1000)\nf.flush()\n"
             "print('written', flush=True)\nsys.stdin.read()\nf.close()\n", mount.path("open.bin")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            self.assertEqual(writer.stdout.readline().strip(), "written")

            def pending():
                mine = [s for s in mount.status() if s.get("pid") == mount.pid]
                return mine and mine[0]["pending_uploads"] == 1 and mine[0]["files_committed"] == 0
            common.wait_for(pending, timeout=10, what="status to show 1 pending upload")
            self.assertEqual(common.paths_info(server, bucket, ["open.bin"]), {})
        finally:
            writer.communicate(timeout=30)
        self.assertEqual(writer.returncode, 0)

        def committed():
            mine = [s for s in mount.status() if s.get("pid") == mount.pid]
            return mine and mine[0]["files_committed"] >= 1 and mine[0]["pending_uploads"] == 0 and mine[0]
        status = common.wait_for(committed, timeout=30, what="status to show the commit")
        self.assertGreaterEqual(status["bytes_committed"], 1000)
        # Several files closed without fsync, then unmount at once: every one is in the bucket.
        written = write_files(self.rng, mount, 10)
        written["open.bin"] = b"x" * 1000
        write_pending(self, self.rng, server, bucket, mount, written)
        result = mount.unmount()
        self.assertEqual(result.returncode, 0, result.stderr + mount.log())
        self.assertFalse(mount.is_mounted())
        harness.wait_gone(mount.pid)
        self.assertInBucket(server, bucket, written, workspace)
        # The mount is gone from status.
        self.assertEqual([s for s in mount.status() if s.get("pid") == mount.pid and s["state"] != "stopped"], [])

    def test_sigterm_drains(self):
        server, workspace, bucket = common.setup(self, "life-sigterm")
        mount = harness.new_mount(self, server, workspace, bucket).start()
        written = write_files(self.rng, mount, 10)
        write_pending(self, self.rng, server, bucket, mount, written)
        os.kill(mount.pid, signal.SIGTERM)
        harness.wait_gone(mount.pid, timeout=120)
        self.assertFalse(mount.is_mounted())
        self.assertIn("committing pending uploads", mount.log())
        self.assertInBucket(server, bucket, written, workspace)
        # A remount reads them back.
        fresh = harness.new_mount(self, server, workspace, bucket, name="fresh").start()
        for relative, data in written.items():
            with open(fresh.path(relative), "rb") as handle:
                self.assertTrue(handle.read() == data, relative)
        self.assertEqual(fresh.unmount().returncode, 0)

    def test_mount_helper_with_dash_o(self):
        server, workspace, bucket = common.setup(self, "life-helper")
        mount = harness.new_mount(self, server, workspace, bucket)
        options = "endpoint=%s,token_file=%s,cache_dir=%s,metadata_ttl=5,noauto,_netdev" % (
            server.base, workspace.tokens["alice"], mount.cache_dir)
        result = subprocess.run([harness.MOUNT_HELPER, bucket, mount.mountpoint, "-o", options], capture_output=True,
                                text=True, env=mount.env(), timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        mount.pid = mount.state().get("pid")
        self.assertTrue(mount.is_mounted())
        with open("/proc/self/mountinfo") as handle:
            line = [l for l in handle if l.split()[4] == os.path.realpath(mount.mountpoint)][0]
        self.assertIn("fuse.bucketfs", line)
        self.assertIn("bucketfs:" + bucket, line)
        with open(mount.path("via-helper.txt"), "w") as handle:
            handle.write("helper")
        self.assertEqual(mount.unmount().returncode, 0)
        self.assertEqual(common.tree(server, bucket)["via-helper.txt"]["size"], 6)
        self.assertTrue(os.path.isdir(mount.cache_dir), "cache_dir= was not used")
        # An unknown helper option is one line.
        bad = subprocess.run([harness.MOUNT_HELPER, bucket, mount.mountpoint, "-o", "metadata_ttl=soon"],
                             capture_output=True, text=True, env=mount.env(), timeout=60)
        self.assertOneLineFailure(bad, "metadata_ttl=soon")

    @unittest.skipUnless(shutil.which("unshare") and os.geteuid() == 0, "needs root and unshare(1)")
    def test_mount_t_fuse_bucketfs_through_mount8(self):
        # mount(8) looks for its helpers in /sbin, /sbin/fs.d and /sbin/fs only. Rather than install
        # into the host's /sbin, the test runs mount(8) in a private mount namespace whose /usr/sbin
        # (= /sbin) is a folder holding the build's helper symlinks.
        server, workspace, bucket = common.setup(self, "life-mount8")
        sbin = workspace.path("sbin")
        os.mkdir(sbin)
        for helper in ("mount.bucketfs", "mount.fuse.bucketfs"):
            os.symlink(os.path.realpath(common.BINARY), os.path.join(sbin, helper))
        mounts = {}
        for kind in ("fuse.bucketfs", "bucketfs"):
            mounts[kind] = harness.new_mount(self, server, workspace, bucket, name=kind.replace(".", "-"))
        script = ["set -e", "mount --make-rprivate /", "mount --bind '%s' /usr/sbin" % sbin]
        for kind, mount in mounts.items():
            options = "endpoint=%s,token_file=%s,cache_dir=%s" % (server.base, workspace.tokens["alice"],
                                                                   mount.cache_dir)
            script += [
                "mount -t %s %s '%s' -o %s" % (kind, bucket, mount.mountpoint, options),
                "grep -q ' %s .* - fuse.bucketfs bucketfs:%s ' /proc/self/mountinfo" % (
                    os.path.realpath(mount.mountpoint), bucket),
                "printf '%s' > '%s/via-%s.txt'" % (kind, mount.mountpoint, kind),
                "cat '%s/via-%s.txt' > /dev/null" % (mount.mountpoint, kind),
                "'%s' unmount '%s'" % (common.BINARY, mount.mountpoint),
            ]
        env = mounts["bucketfs"].env()
        result = subprocess.run(["unshare", "--mount", "sh", "-c", "\n".join(script)], capture_output=True,
                                text=True, env=env, timeout=120)
        for mount in mounts.values():  # a failed script may leave a daemon in the namespace
            state = mount.state()
            if state.get("pid"):
                mount.pid = state["pid"]
                try:
                    harness.wait_gone(mount.pid, timeout=5)
                except AssertionError:
                    os.kill(mount.pid, signal.SIGKILL)
        self.assertEqual(result.returncode, 0, result.stderr + result.stdout)
        listed = common.tree(server, bucket)
        self.assertEqual(sorted(listed), ["via-bucketfs.txt", "via-fuse.bucketfs.txt"])

    @unittest.skipUnless(os.geteuid() == 0, "needs root (a second Unix user)")
    def test_owner_only_unless_allow_other(self):
        server, workspace, bucket = common.setup(self, "life-owner")
        try:
            pwd.getpwnam(OTHER_USER)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", OTHER_USER],
                           check=True, capture_output=True)
        other = pwd.getpwnam(OTHER_USER)
        os.chmod(workspace.root, 0o755)  # so that only the mount itself can refuse the other user
        python = "/usr/bin/python3"
        probe = (
            "import errno, os, sys\n"
            "def attempt(f, *a):\n"
            "    try:\n"
            "        f(*a)\n"
            "        return 'ok'\n"
            "    except OSError as e:\n"
            "        return errno.errorcode[e.errno]\n"
            "m = sys.argv[1]\n"
            "print(attempt(os.listdir, m), attempt(lambda: open(m + '/dir/f.txt').read()),"
            " attempt(lambda: open(m + '/mine.txt', 'w')), attempt(lambda: open(m + '/dir/f.txt', 'a')))\n"
        )

        def as_other(mount):
            result = subprocess.run(["setpriv", "--reuid=%d" % other.pw_uid, "--regid=%d" % other.pw_gid,
                                     "--clear-groups", "--", python, "-c", probe, mount.mountpoint],
                                    capture_output=True, text=True, timeout=60, cwd="/")
            self.assertEqual(result.returncode, 0, result.stderr)
            return result.stdout.split()

        private = harness.new_mount(self, server, workspace, bucket, name="private").start()
        os.mkdir(private.path("dir"))
        with open(private.path("dir", "f.txt"), "w") as handle:
            handle.write("shared?")
        # The owner (root) reads; the other user gets EACCES for everything.
        self.assertEqual(os.listdir(private.mountpoint), ["dir"])
        self.assertEqual(as_other(private), ["EACCES"] * 4)
        self.assertEqual(private.unmount().returncode, 0)

        shared = harness.new_mount(self, server, workspace, bucket, name="shared").start("-o", "allow_other")
        self.assertEqual(os.stat(shared.path("dir", "f.txt")).st_mode & 0o777, 0o644)
        # allow_other: the other user lists and reads; default_permissions keeps the modes (0755
        # folders and 0644 files of root), so it cannot write.
        self.assertEqual(as_other(shared), ["ok", "ok", "EACCES", "EACCES"])
        self.assertEqual(shared.unmount().returncode, 0)


if __name__ == "__main__":
    sys.exit(unittest_runner.run(__name__))
