#!/usr/bin/env python3
"""The Hub token never leaks (issue 6, "Access control and secrets").

A mount is started with the token in a 0600 file and, separately, in $HF_TOKEN; files are written,
committed, read back, one upload fails on purpose (a name the bucket refuses), and the daemon is
unmounted. Then the token must not appear in: the daemon's argv (/proc/PID/cmdline, read while
it runs), its environment as seen by other users (not checked: /proc/PID/environ is 0400), the
log file, `bucketfs status` (text and --json), the state file, or any file under the cache dir
(LMDB environment, chunk segments, staging files, journal). Cache, staging and runtime folders
are 0700 and their files 0600."""
import os
import stat
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support"))
import mount_harness as h  # noqa: E402
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support"))
import unittest_runner  # noqa: E402


def files_under(root):
    for folder, _, names in os.walk(root):
        for name in names:
            yield os.path.join(folder, name)


class SecretsTest(unittest.TestCase):
    def assertNoToken(self, data, where):
        token = h.api.ALICE_W.encode()
        self.assertNotIn(token, data, "the token appears in " + where)

    def check_private(self, root):
        for folder, _, names in os.walk(root):
            mode = stat.S_IMODE(os.stat(folder).st_mode)
            self.assertEqual(mode & 0o077, 0, "%s is mode %o" % (folder, mode))
            for name in names:
                path = os.path.join(folder, name)
                mode = stat.S_IMODE(os.lstat(path).st_mode)
                self.assertEqual(mode & 0o077, 0, "%s is mode %o" % (path, mode))

    def run_mount(self, use_env):
        server = h.start_server(self, "secrets")
        workspace = h.Workspace("secrets")
        self.addCleanup(workspace.cleanup)
        h.create_bucket(server, "alice/secret")
        mount = h.new_mount(self, server, workspace, "alice/secret", user=None if use_env else "alice")
        if use_env:
            env = mount.env()
            env["HF_TOKEN"] = h.api.ALICE_W
            result = subprocess.run([h.BINARY, "mount", "--endpoint", server.base, "--cache-dir", mount.cache_dir,
                                     "alice/secret", mount.mountpoint], env=env, capture_output=True, text=True,
                                    timeout=60)
            self.assertEqual(result.returncode, 0, result.stderr)
            mount.pid = mount.state().get("pid")
        else:
            mount.start()
        with open("/proc/%d/cmdline" % mount.pid, "rb") as handle:
            self.assertNoToken(handle.read(), "the daemon's argv")
        for i in range(5):
            with open(mount.path("f%d.bin" % i), "wb") as handle:
                handle.write(os.urandom(300_000 + i))
                handle.flush()
                os.fsync(handle.fileno())
        with open(mount.path("f1.bin"), "rb") as handle:
            handle.read()
        with self.assertRaises(OSError):
            open(mount.path("bad\\name"), "wb").close()  # refused: logged with its path
        for args in (["status"], ["status", "--json"]):
            result = mount.command(*args)
            self.assertNoToken((result.stdout + result.stderr).encode(), "bucketfs " + " ".join(args))
        state_files = [os.path.join(mount.runtime, n) for n in os.listdir(mount.runtime)]
        log_file = mount.state().get("log_file")
        self.assertEqual(mount.unmount().returncode, 0)
        for path in state_files + ([log_file] if log_file and os.path.exists(log_file) else []):
            if os.path.exists(path):
                with open(path, "rb") as handle:
                    self.assertNoToken(handle.read(), path)
        checked = 0
        for path in files_under(mount.cache_dir):
            with open(path, "rb") as handle:
                self.assertNoToken(handle.read(), path)
            checked += 1
        self.assertGreater(checked, 2)
        self.check_private(mount.cache_dir)
        self.check_private(mount.runtime)
        print("secrets: token absent from argv, status, state, log and %d cache files (%s)" %
              (checked, "HF_TOKEN" if use_env else "token file"), flush=True)

    def test_token_file(self):
        self.run_mount(use_env=False)

    def test_token_in_environment(self):
        self.run_mount(use_env=True)


if __name__ == "__main__":
    sys.exit(unittest_runner.run(__name__))
