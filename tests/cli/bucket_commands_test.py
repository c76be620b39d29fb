#!/usr/bin/env python3
"""`bucketfs create|delete|ls|rm` against a real bucketfs-server: what they print, and that every
error is one line on stderr with a non-zero exit and changes nothing.

Files are put in place through the HTTP helpers of tests/server/http_api_test.py (the npm
client's captured uploads)."""
import json
import os
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "server"))
import http_api_test as api  # noqa: E402
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support"))
import unittest_runner  # noqa: E402

BINARY = os.environ["BUCKETFS_BINARY"]
SERVER = None
HOME = None


def setUpModule():
    global SERVER, HOME
    with open(os.path.join(api.NPM_DATA, "manifest.json")) as handle:
        api.MANIFEST = json.load(handle)
    for case in api.MANIFEST["cases"]:
        api.CASES[case["name"]] = case
    SERVER = api.Server("cli")
    unittest.addModuleCleanup(SERVER.cleanup)
    SERVER.start()
    HOME = tempfile.mkdtemp(prefix="bucketfs-cli-home-")
    unittest.addModuleCleanup(lambda: subprocess.run(["rm", "-rf", HOME], check=False))
    for name, token in (("alice", api.ALICE_W), ("alice-read", api.ALICE_R), ("bob", api.BOB_W)):
        with open(os.path.join(HOME, name), "w") as handle:
            handle.write(token + "\n")


def bucketfs(*args, token="alice", env_token=None):
    env = {"PATH": os.environ.get("PATH", ""), "HOME": HOME, "HF_ENDPOINT": SERVER.base}
    command = [BINARY, *args]
    if token:
        command += ["--token-file", os.path.join(HOME, token)]
    if env_token:
        env["HF_TOKEN"] = env_token
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=False)


class CliTest(unittest.TestCase):
    def assertFailsWithOneLine(self, result, *fragments):
        self.assertNotEqual(result.returncode, 0, result)
        lines = result.stderr.splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertTrue(lines[0].startswith("bucketfs: "), lines[0])
        for fragment in fragments:
            self.assertIn(fragment, lines[0])
        for secret in (api.ALICE_W, api.ALICE_R, api.BOB_W):
            self.assertNotIn(secret, result.stderr + result.stdout)

    def test_create_list_delete(self):
        r = bucketfs("create", "alice/cli-a")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.strip(), "created hf://buckets/alice/cli-a")
        self.assertFailsWithOneLine(bucketfs("create", "hf://buckets/alice/cli-a"), "already exists")
        self.assertEqual(bucketfs("create", "alice/cli-a", "--exist-ok").returncode, 0)
        r = bucketfs("create", "alice/cli-private", "--private")
        self.assertEqual(r.returncode, 0, r.stderr)
        info = api.request("GET", "/api/buckets/alice/cli-private", token=api.ALICE_W, server=SERVER).json()
        self.assertTrue(info["private"])
        listed = bucketfs("ls", "alice").stdout.split()
        self.assertIn("hf://buckets/alice/cli-a", listed)
        self.assertIn("hf://buckets/alice/cli-private", listed)
        # Bob sees only the public one.
        bob = bucketfs("ls", "alice", token="bob").stdout.split()
        self.assertIn("hf://buckets/alice/cli-a", bob)
        self.assertNotIn("hf://buckets/alice/cli-private", bob)
        r = bucketfs("delete", "alice/cli-a")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(api.request("GET", "/api/buckets/alice/cli-a", token=api.ALICE_W, server=SERVER).status, 404)
        self.assertFailsWithOneLine(bucketfs("delete", "alice/cli-a"), "hf://buckets/alice/cli-a", "not found")

    def test_errors_are_one_line(self):
        self.assertFailsWithOneLine(bucketfs("create", "bob/mine"), "bob/mine", "permission denied")
        self.assertFailsWithOneLine(bucketfs("create", "alice/ro-try", token="alice-read"), "permission denied")
        self.assertFailsWithOneLine(bucketfs("create", "alice/anon", token=None), "not authorized")
        self.assertFailsWithOneLine(bucketfs("create", "alice/bad name"), "alice/bad name")
        self.assertFailsWithOneLine(bucketfs("create", "hf://bucket/alice/x"), "plural")
        self.assertFailsWithOneLine(bucketfs("ls", "hf://buckets/alice/missing"), "not found")
        self.assertFailsWithOneLine(bucketfs("rm", "hf://buckets/alice/missing/file"), "not found")
        # HF_TOKEN from the environment is used when there is no --token-file.
        r = bucketfs("create", "alice/from-env", token=None, env_token=api.ALICE_W)
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_ls_and_rm_files(self):
        api.create_bucket("alice/cli-files", server=SERVER)
        case = api.upload_case("alice/cli-files", "multi_file", server=SERVER)
        paths = sorted(f["path"] for f in case["files"])
        r = bucketfs("ls", "hf://buckets/alice/cli-files")
        self.assertEqual(r.stdout.split("\n")[:-1], ["multi/"], r.stdout)
        r = bucketfs("ls", "-R", "hf://buckets/alice/cli-files")
        self.assertEqual(sorted(r.stdout.splitlines()), paths)
        r = bucketfs("ls", "-l", "hf://buckets/alice/cli-files/multi")
        lines = r.stdout.splitlines()
        sizes = {line.split()[-1]: int(line.split()[0]) for line in lines if not line.endswith("/")}
        self.assertEqual(sizes, {"multi/a.bin": 20000, "multi/c.txt": 5000})
        self.assertIn("multi/sub dir/", [line.split(" ", 2)[-1].strip() for line in lines if line.endswith("/")][0])
        self.assertFailsWithOneLine(bucketfs("ls", "hf://buckets/alice/cli-files/nothing-here"), "no such file")
        # rm of one file; rm of a folder needs -r; invalid paths are refused before any request.
        r = bucketfs("rm", "hf://buckets/alice/cli-files/multi/a.bin")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.strip(), "deleted hf://buckets/alice/cli-files/multi/a.bin")
        self.assertFailsWithOneLine(bucketfs("rm", "hf://buckets/alice/cli-files/multi"), "no such file")
        self.assertFailsWithOneLine(bucketfs("rm", "hf://buckets/alice/cli-files/a/../b"), "invalid path")
        self.assertFailsWithOneLine(bucketfs("rm", "hf://buckets/alice/cli-files/multi/c.txt", token="alice-read"),
                                    "permission denied")
        r = bucketfs("rm", "-r", "hf://buckets/alice/cli-files/multi")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(len(r.stdout.splitlines()), 2)
        self.assertEqual(bucketfs("ls", "-R", "hf://buckets/alice/cli-files").stdout, "")


if __name__ == "__main__":
    sys.exit(unittest_runner.run(__name__))
