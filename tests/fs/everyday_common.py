"""Helpers shared by the everyday-tools, semantics and lifecycle mount tests (tests/fs/tools_test.py,
semantics_test.py, lifecycle_test.py): the bucket as the HTTP API shows it, checksums of trees,
a tree of mixed sizes, seeds, and errno helpers. Not a test file itself."""
import datetime
import errno
import hashlib
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support"))
import mount_harness as harness  # noqa: E402
from mount_harness import api, MiB  # noqa: E402,F401

BINARY = harness.BINARY


def seed_for(test):
    """A seed for `test`, printed so that a failure can be replayed (BUCKETFS_TEST_SEED)."""
    seed = int(os.environ.get("BUCKETFS_TEST_SEED", str(time.time_ns() % (1 << 31))))
    print("%s: seed %d (BUCKETFS_TEST_SEED=%d replays it)" % (test.id(), seed, seed), flush=True)
    return seed


def setup(test, name, bucket=None):
    """A server and a Workspace of the test's own, and a bucket `alice/<name>`; all cleaned up."""
    server = harness.start_server(test, name)
    workspace = harness.Workspace(name)
    test.addCleanup(workspace.cleanup)
    bucket = bucket or "alice/" + name
    harness.create_bucket(server, bucket)
    return server, workspace, bucket


def iso_ms(text):
    """Unix milliseconds of the API's ISO-8601 times (2024-01-02T03:04:05.678Z)."""
    parsed = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)
    return round(parsed.timestamp() * 1000)


def tree(server, bucket, prefix="", token=None):
    """Every file of the bucket under `prefix` (recursive tree API, all pages): {path: entry}."""
    target = "/api/buckets/%s/tree%s?recursive=true" % (bucket, ("/" + api.q(prefix)) if prefix else "")
    files = {}
    while target:
        response = api.request("GET", target, token=token or api.ALICE_W, server=server)
        if response.status == 404:
            return files
        assert response.status == 200, response
        for entry in response.json():
            if entry["type"] == "file":
                files[entry["path"]] = entry
        link = response.header("Link") or ""
        target = None
        if 'rel="next"' in link:
            target = link.split("<", 1)[1].split(">", 1)[0]
    return files


def paths_info(server, bucket, paths, token=None):
    """{path: entry} of the paths that exist (paths-info API)."""
    response = api.request("POST", "/api/buckets/%s/paths-info" % bucket, {"paths": list(paths)},
                           token=token or api.ALICE_W, server=server)
    assert response.status == 200, response
    return {entry["path"]: entry for entry in response.json()}


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            block = handle.read(MiB)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()


def xet_hash(path):
    """The Xet file hash of a local file (`bucketfs xet chunks`), as the API reports xetHash."""
    result = subprocess.run([BINARY, "xet", "chunks", path], capture_output=True, text=True, check=True)
    last = result.stdout.strip().splitlines()[-1].split()
    assert last[0] == "file", result.stdout[-200:]
    return last[1]


def snapshot(root):
    """{relative path: (kind, size, sha256, mtime_ms)} of a tree; directories have kind 'd'."""
    out = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs:
            relative = os.path.relpath(os.path.join(directory, name), root)
            out[relative] = ("d", None, None, None)
        for name in files:
            full = os.path.join(directory, name)
            st = os.lstat(full)
            out[os.path.relpath(full, root)] = ("f", st.st_size, sha256_file(full), st.st_mtime_ns // 1_000_000)
    return out


def without_mtimes(snap):
    return {path: value[:3] for path, value in snap.items()}


def make_tree(root, rng, big_sizes=(3 * MiB + 12345,)):
    """A tree of mixed sizes (0 B, 1 B, 8191, 8192, 64 KiB, MiBs) in nested folders, with mtimes
    set to distinct whole milliseconds in the past. Returns {relative path: size}."""
    sizes = {
        "empty": 0,
        "one": 1,
        "k8191.bin": 8191,
        "k8192.bin": 8192,
        "k64.bin": 64 * 1024,
        "text file.txt": 0,  # filled with text below
        "a/b/c/deep.bin": 100_000,
        "a/b/sibling": 8192,
        "a/empty-in-dir": 0,
        "a/zweite Datei ü.bin": 4096,
        "x/y/z.dat": 77_777,
        # Characters with a meaning in URLs, in file and folder names.
        "odd/per%cent #hash?q=1&x+y;z.bin": 3000,
        "odd/dir %2F#1?/inner @[x]=y.txt": 10,
    }
    for index, size in enumerate(big_sizes):
        sizes["big/big-%d.bin" % index] = size
    text = "".join("line %d of a text file\n" % i for i in range(3000)).encode()
    sizes["text file.txt"] = len(text)
    base_ms = 1_600_000_000_000 + rng.randrange(10_000_000) * 1000
    for index, (relative, size) in enumerate(sorted(sizes.items())):
        path = os.path.join(root, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            if relative == "text file.txt":
                handle.write(text)
            else:
                handle.write(rng.randbytes(size))
        mtime_ms = base_ms + index * 1_000_003 + rng.randrange(1000)
        os.utime(path, ns=(mtime_ms * 1_000_000, mtime_ms * 1_000_000))
    return sizes


def os_error(function, *args):
    """The errno `function(*args)` fails with (None when it succeeds)."""
    try:
        function(*args)
    except OSError as error:
        return error.errno
    return None


def errname(code):
    return errno.errorcode.get(code, str(code)) if code is not None else "success"


def wait_for(predicate, timeout=30, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("timed out waiting for " + what)
