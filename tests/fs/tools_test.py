#!/usr/bin/env python3
"""Everyday tools on a real mount (issue 5): cp -a, rsync -a, tar, find, du, stat, mv, rm -r,
sqlite3, and a program writing a 200 MiB file with fsync and random reads.

Every test has its own bucketfs-server and folders; what the tools wrote is checked through the
HTTP API (the bucket, not this node's view of it) and after a remount with an empty cache."""
import datetime
import os
import random
import sqlite3
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import everyday_common as common  # noqa: E402
from everyday_common import api, harness, MiB  # noqa: E402
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support"))
import unittest_runner  # noqa: E402


def run(*command, cwd=None):
    result = subprocess.run(list(command), capture_output=True, text=True, cwd=cwd, timeout=300)
    if result.returncode != 0:
        raise AssertionError("%s failed (%d): %s" % (" ".join(command), result.returncode, result.stderr[-2000:]))
    return result.stdout


class ToolsTest(unittest.TestCase):
    def setUp(self):
        self.seed = common.seed_for(self)
        self.rng = random.Random(self.seed)

    def mounted(self, server, workspace, bucket, **kwargs):
        mount = harness.new_mount(self, server, workspace, bucket, **kwargs)
        if kwargs.get("name") == "fresh":
            self.assertFalse(os.path.exists(mount.cache_dir), "the remount's cache must start empty")
        mount.start()
        return mount

    def unmount_ok(self, mount):
        result = mount.unmount()
        self.assertEqual(result.returncode, 0, result.stderr + mount.log())
        self.assertFalse(mount.is_mounted())

    def assertTreesEqual(self, expected, actual, mtimes=True, what=""):
        if not mtimes:
            expected, actual = common.without_mtimes(expected), common.without_mtimes(actual)
        self.assertEqual(sorted(expected), sorted(actual), what)
        for path in expected:
            self.assertEqual(expected[path], actual[path], "%s: %s" % (what, path))

    def test_cp_rsync_round_trip_and_remount_with_empty_cache(self):
        server, workspace, bucket = common.setup(self, "tools-cp")
        source = workspace.path("src")
        sizes = common.make_tree(source, self.rng)
        expected = common.snapshot(source)
        mount = self.mounted(server, workspace, bucket)

        run("cp", "-a", source, mount.path("cp-tree"))
        run("rsync", "-a", source + "/", mount.path("rsync-tree") + "/")
        for name in ("cp-tree", "rsync-tree"):
            # Contents, sizes, types and mtimes (utimens) as this mount shows them.
            self.assertTreesEqual(expected, common.snapshot(mount.path(name)), what="on the mount: " + name)

        # find, du and stat see what a local file system would show.
        found = run("find", ".", "-type", "f", cwd=mount.path("cp-tree")).split("\n")[:-1]
        self.assertEqual(sorted(f[2:] for f in found), sorted(sizes))
        dirs = run("find", ".", "-mindepth", "1", "-type", "d", cwd=mount.path("cp-tree")).split("\n")[:-1]
        self.assertEqual(sorted(d[2:] for d in dirs), sorted(p for p, v in expected.items() if v[0] == "d"))
        du = run("du", "-ab", "--apparent-size", ".", cwd=mount.path("cp-tree"))
        du_sizes = {line.split("\t", 1)[1][2:]: int(line.split("\t", 1)[0]) for line in du.splitlines()}
        for relative, size in sizes.items():
            self.assertEqual(du_sizes[relative], size, relative)
        blocks = int(run("du", "-s", "--block-size=1", mount.path("cp-tree")).split()[0])
        self.assertGreaterEqual(blocks, sum(sizes.values()))
        self.assertLess(blocks, sum(sizes.values()) + 64 * 4096 + 1024 * len(sizes))
        stat_line = run("stat", "-c", "%F|%s|%Y|%a", mount.path("cp-tree", "a/b/c/deep.bin")).strip()
        kind, size, mtime_s, mode = stat_line.split("|")
        self.assertEqual((kind, int(size), mode), ("regular file", 100_000, "644"))
        self.assertEqual(int(mtime_s), expected["a/b/c/deep.bin"][3] // 1000)
        self.assertEqual(run("stat", "-c", "%F", mount.path("cp-tree", "a/b")).strip(), "directory")

        # Out again with the same tools.
        run("cp", "-a", mount.path("cp-tree"), workspace.path("out-cp"))
        run("rsync", "-a", mount.path("rsync-tree") + "/", workspace.path("out-rsync") + "/")
        self.assertTreesEqual(expected, common.snapshot(workspace.path("out-cp")), what="cp -a back out")
        self.assertTreesEqual(expected, common.snapshot(workspace.path("out-rsync")), what="rsync -a back out")

        # Unmount drains; the bucket holds every file with its size, content hash and mtime.
        self.unmount_ok(mount)
        listed = common.tree(server, bucket)
        for name in ("cp-tree", "rsync-tree"):
            for relative, (kind, size, _digest, mtime_ms) in expected.items():
                if kind != "f":
                    continue
                entry = listed.get(name + "/" + relative)
                self.assertIsNotNone(entry, name + "/" + relative)
                self.assertEqual(entry["size"], size, relative)
                self.assertEqual(entry["xetHash"], common.xet_hash(os.path.join(source, relative)), relative)
                self.assertEqual(common.iso_ms(entry["mtime"]), mtime_ms, "mtime of " + relative)
        # rsync's temporary names never reach the bucket.
        self.assertEqual(sorted(listed), sorted("%s/%s" % (n, p) for n in ("cp-tree", "rsync-tree")
                                                for p, v in expected.items() if v[0] == "f"))
        ls = subprocess.run([common.BINARY, "ls", "-R", "-l", "--endpoint", server.base, "--token-file",
                             workspace.tokens["alice"], "hf://buckets/%s/cp-tree/a/b/c" % bucket],
                            capture_output=True, text=True, check=True).stdout
        mtime = datetime.datetime.fromtimestamp(expected["a/b/c/deep.bin"][3] // 1000, datetime.timezone.utc)
        self.assertIn("%14d %s cp-tree/a/b/c/deep.bin" % (100_000, mtime.strftime("%Y-%m-%dT%H:%M:%SZ")),
                      ls.splitlines())

        # A new mount with an EMPTY cache reads the bytes from the bucket.
        fresh = self.mounted(server, workspace, bucket, name="fresh")
        for name in ("cp-tree", "rsync-tree"):
            self.assertTreesEqual(expected, common.snapshot(fresh.path(name)), what="after remount: " + name)
        # rsync sees nothing to do: sizes and mtimes were committed.
        itemized = run("rsync", "-a", "--itemize-changes", source + "/", fresh.path("rsync-tree") + "/")
        self.assertEqual([line for line in itemized.splitlines() if line.startswith(">f")], [], itemized)

        # An update: rsync -a --delete replaces changed files (temporary file renamed over the
        # committed one) and deletes the removed one.
        with open(os.path.join(source, "k64.bin"), "r+b") as handle:
            handle.seek(1000)
            handle.write(b"changed")
        with open(os.path.join(source, "a/b/c/deep.bin"), "wb") as handle:
            handle.write(self.rng.randbytes(123_456))
        os.unlink(os.path.join(source, "x/y/z.dat"))
        with open(os.path.join(source, "added.txt"), "w") as handle:
            handle.write("added")
        expected = common.snapshot(source)
        itemized = run("rsync", "-a", "--delete", "--itemize-changes", source + "/", fresh.path("rsync-tree") + "/")
        changed = sorted(line.split(" ", 1)[1] for line in itemized.splitlines() if line.startswith(">f"))
        self.assertEqual(changed, ["a/b/c/deep.bin", "added.txt", "k64.bin"], itemized)
        self.assertTreesEqual(expected, common.snapshot(fresh.path("rsync-tree")), what="after the update")
        self.unmount_ok(fresh)
        listed = common.tree(server, bucket, "rsync-tree")
        self.assertEqual(sorted(listed), sorted("rsync-tree/" + p for p, v in expected.items() if v[0] == "f"))
        for relative in ("k64.bin", "a/b/c/deep.bin", "added.txt"):
            entry = listed["rsync-tree/" + relative]
            self.assertEqual(entry["xetHash"], common.xet_hash(os.path.join(source, relative)), relative)
            self.assertEqual(common.iso_ms(entry["mtime"]), expected[relative][3], relative)

    def test_find_ls_du_on_a_large_folder(self):
        # 2,500 entries (more than a page of the tree API) put in place with one batch of the API:
        # the mount must list every page.
        server, workspace, bucket = common.setup(self, "tools-large")
        mount = self.mounted(server, workspace, bucket)
        with open(mount.path("seed.bin"), "wb") as handle:
            handle.write(self.rng.randbytes(5000))
            handle.flush()
            os.fsync(handle.fileno())
        xet = common.paths_info(server, bucket, ["seed.bin"])["seed.bin"]["xetHash"]
        names = ["big/f%04d.bin" % i for i in range(2000)] + ["big/sub%d/g%03d" % (i % 5, i) for i in range(500)]
        response = api.batch(bucket, [api.add_line(name, xet) for name in names], server=server)
        self.assertEqual(response.status, 200, response)
        self.unmount_ok(mount)
        fresh = self.mounted(server, workspace, bucket, name="fresh")
        self.assertEqual(len(os.listdir(fresh.path("big"))), 2005)
        found = run("find", ".", "-type", "f", cwd=fresh.path("big")).split()
        self.assertEqual(sorted(f[2:] for f in found), sorted(n[4:] for n in names))
        self.assertEqual(int(run("du", "-sb", "--apparent-size", fresh.path("big")).split()[0]) - 6 * 4096,
                         5000 * len(names))
        ls = run("ls", "-l", fresh.path("big", "sub3")).splitlines()
        self.assertEqual(len(ls), 101)  # "total" and 100 files
        self.unmount_ok(fresh)

    def test_tar_create_on_and_extract_from_the_mount(self):
        server, workspace, bucket = common.setup(self, "tools-tar")
        source = workspace.path("src")
        common.make_tree(source, self.rng, big_sizes=(2 * MiB + 7,))
        expected = common.snapshot(source)
        local_tar = workspace.path("local.tar")
        # POSIX (pax) archives keep sub-second mtimes, which the mount stores to the millisecond.
        pax = ("--format=posix", "--sort=name", "--pax-option=delete=atime,delete=ctime,exthdr.name=%d/PaxHeaders/%f")
        run("tar", *pax, "-cf", local_tar, "-C", source, ".")
        mount = self.mounted(server, workspace, bucket)

        # Extract a local archive into the mount; tar -d finds no difference (contents, sizes, mtimes).
        os.mkdir(mount.path("extracted"))
        run("tar", "-xf", local_tar, "-C", mount.path("extracted"))
        self.assertTreesEqual(expected, common.snapshot(mount.path("extracted")), what="extracted on the mount")
        run("tar", "-df", local_tar, "-C", mount.path("extracted"))

        # Create an archive on the mount, of a local tree and of a tree on the mount.
        run("tar", *pax, "-cf", mount.path("archive.tar"), "-C", source, ".")
        run("tar", *pax, "-czf", mount.path("from-mount.tar.gz"), "-C", mount.path("extracted"), ".")
        self.assertEqual(common.sha256_file(mount.path("archive.tar")), common.sha256_file(local_tar))
        listing = run("tar", "-tf", mount.path("archive.tar")).split()
        self.assertIn("./a/b/c/deep.bin", listing)

        # Remount (empty cache): extract both archives from the mount to local disk.
        self.unmount_ok(mount)
        fresh = self.mounted(server, workspace, bucket, name="fresh")
        for archive in ("archive.tar", "from-mount.tar.gz"):
            out = workspace.path("out-" + archive)
            os.mkdir(out)
            run("tar", "-xf", fresh.path(archive), "-C", out)
            self.assertTreesEqual(expected, common.snapshot(out), what="extracted from " + archive)
        run("tar", "-df", fresh.path("archive.tar"), "-C", fresh.path("extracted"))
        self.unmount_ok(fresh)

    def test_mv_directory_and_rm_r(self):
        server, workspace, bucket = common.setup(self, "tools-mv")
        mount = self.mounted(server, workspace, bucket)
        old, new = "old #1?%", "new &=+ dir"
        contents = {}
        for relative in ("a.bin", "sub/b.bin", "sub/deeper/c.txt", "d.bin", "sub/x%2Fy.bin"):
            data = self.rng.randbytes(self.rng.randrange(1, 300_000))
            contents[relative] = data
            os.makedirs(os.path.dirname(mount.path(old, relative)), exist_ok=True)
            with open(mount.path(old, relative), "wb") as handle:
                handle.write(data)
        # Some committed (fsync), some still pending when mv runs.
        with open(mount.path(old, "a.bin"), "rb+") as handle:
            os.fsync(handle.fileno())
        hash_before = os.getxattr(mount.path(old, "a.bin"), "user.xet.hash").decode()
        self.assertEqual(hash_before, common.paths_info(server, bucket, [old + "/a.bin"])[old + "/a.bin"]["xetHash"])
        run("mv", mount.path(old), mount.path(new))

        def check_moved(at, prefix):
            # The bucket: every file under the new folder, none under the old one.
            listed = common.tree(server, bucket)
            listed.pop("keep.txt", None)
            self.assertEqual(sorted(listed), sorted(prefix + "/" + r for r in contents), listed)
            self.assertEqual(listed[prefix + "/a.bin"]["xetHash"], hash_before)
            for relative, data in contents.items():
                with open(at.path(prefix, relative), "rb") as handle:
                    self.assertTrue(handle.read() == data, relative)
                self.assertEqual(os.getxattr(at.path(prefix, relative), "user.xet.hash").decode(),
                                 listed[prefix + "/" + relative]["xetHash"])
        check_moved(mount, new)
        self.assertFalse(os.path.exists(mount.path(old)))
        # mv into a new folder.
        os.mkdir(mount.path("parent"))
        run("mv", mount.path(new), mount.path("parent", "moved"))
        check_moved(mount, "parent/moved")
        with open(mount.path("keep.txt"), "wb") as handle:
            handle.write(b"kept")
        self.unmount_ok(mount)
        # On a new mount, the tree is only in the bucket: mv lists it from there.
        fresh = self.mounted(server, workspace, bucket, name="fresh")
        run("mv", fresh.path("parent", "moved"), fresh.path(old))
        check_moved(fresh, old)
        self.assertLessEqual({old, "keep.txt"}, set(os.listdir(fresh.mountpoint)))
        # rm -r removes every key.
        run("rm", "-r", fresh.path(old))
        self.assertFalse(os.path.exists(fresh.path(old)))
        self.assertEqual(sorted(common.tree(server, bucket)), ["keep.txt"])
        self.unmount_ok(fresh)
        again = self.mounted(server, workspace, bucket, name="again")
        self.assertEqual(os.listdir(again.mountpoint), ["keep.txt"])
        self.unmount_ok(again)

    def test_sqlite_transactions_survive_remount(self):
        server, workspace, bucket = common.setup(self, "tools-sqlite")
        mount = self.mounted(server, workspace, bucket)
        os.mkdir(mount.path("db"))
        path = mount.path("db", "data.sqlite")
        expected = []
        connection = sqlite3.connect(path)
        connection.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, payload BLOB)")
        connection.commit()
        for transaction in range(12):
            rows = [(transaction * 100 + i, "row-%d-%d" % (transaction, i), self.rng.randbytes(self.rng.randrange(2000)))
                    for i in range(100)]
            connection.executemany("INSERT INTO items VALUES (?, ?, ?)", rows)
            expected += rows
            if transaction % 4 == 3:
                # A transaction that is rolled back leaves nothing.
                connection.commit()
                connection.execute("DELETE FROM items WHERE id % 2 = 0")
                connection.rollback()
            else:
                connection.commit()
        connection.execute("UPDATE items SET name = name || '!' WHERE id % 7 = 0")
        connection.commit()
        expected = [(i, n + "!" if i % 7 == 0 else n, p) for i, n, p in expected]
        self.assertEqual(connection.execute("SELECT * FROM items ORDER BY id").fetchall(), expected)
        connection.close()
        # The journal went away; the database is a committed file in the bucket (sqlite fsyncs).
        listed = common.tree(server, bucket)
        self.assertEqual(sorted(listed), ["db/data.sqlite"])
        self.assertEqual(listed["db/data.sqlite"]["size"], os.path.getsize(path))
        out = run("sqlite3", path, "PRAGMA integrity_check; SELECT count(*) FROM items;")
        self.assertEqual(out.split(), ["ok", str(len(expected))])

        self.unmount_ok(mount)
        fresh = self.mounted(server, workspace, bucket, name="fresh")
        connection = sqlite3.connect(fresh.path("db", "data.sqlite"))
        self.assertEqual(connection.execute("PRAGMA integrity_check").fetchone()[0], "ok")
        self.assertEqual(connection.execute("SELECT * FROM items ORDER BY id").fetchall(), expected)
        # And it is still writable on the new mount.
        connection.execute("INSERT INTO items VALUES (99999, 'after remount', NULL)")
        connection.commit()
        connection.close()
        out = run("sqlite3", fresh.path("db", "data.sqlite"), "SELECT name FROM items WHERE id = 99999;")
        self.assertEqual(out.strip(), "after remount")
        self.unmount_ok(fresh)

    def test_200_mib_file_fsync_commits_then_random_reads(self):
        server, workspace, bucket = common.setup(self, "tools-big")
        mount = self.mounted(server, workspace, bucket)
        size = 200 * MiB
        local = workspace.path("local-copy.bin")
        os.mkdir(mount.path("out"))
        target = mount.path("out", "big.bin")
        # Mostly random, some repeated blocks (so dedup inside the file is exercised too).
        blocks = [self.rng.randbytes(MiB) for _ in range(16)]
        with open(target, "wb") as remote, open(local, "wb") as copy:
            for index in range(size // MiB):
                block = self.rng.randbytes(MiB) if index % 3 else blocks[index % 16]
                self.assertEqual(remote.write(block), MiB)
                copy.write(block)
            remote.flush()
            os.fsync(remote.fileno())
            # fsync returned: the file is committed, before close.
            info = common.paths_info(server, bucket, ["out/big.bin"])
            self.assertIn("out/big.bin", info, "fsync returned but the file is not in the bucket")
            self.assertEqual(info["out/big.bin"]["size"], size)
            expected_hash = common.xet_hash(local)
            self.assertEqual(info["out/big.bin"]["xetHash"], expected_hash)
        self.assertEqual(os.getxattr(target, "user.xet.hash").decode(), expected_hash)

        def check_reads(path, count):
            with open(path, "rb") as remote, open(local, "rb") as copy:
                for _ in range(count):
                    offset = self.rng.randrange(size + MiB)  # some past the end
                    length = self.rng.choice((1, 17, 4096, 65536, 300_000, MiB + 3))
                    remote.seek(offset)
                    copy.seek(offset)
                    self.assertEqual(remote.read(length), copy.read(length), "read %d at %d" % (length, offset))

        check_reads(target, 100)
        self.assertEqual(common.sha256_file(target), common.sha256_file(local))
        self.unmount_ok(mount)
        fresh = self.mounted(server, workspace, bucket, name="fresh")
        check_reads(fresh.path("out", "big.bin"), 100)
        self.assertEqual(os.stat(fresh.path("out", "big.bin")).st_size, size)
        self.unmount_ok(fresh)


if __name__ == "__main__":
    sys.exit(unittest_runner.run(__name__))
