#!/usr/bin/env python3
"""A randomized model test of the mount: one seeded sequence of file-system operations (open with
every flag mix, create, pwrite at random offsets, append, pread, truncate/ftruncate, fsync, fstat,
close, rename of files and directories, unlink, mkdir, rmdir, stat, listdir, whole-file read and
write), several files open at once, applied to a real mount and to a plain local directory. The
result of every step (return value or errno, bytes read) must be the same on both; the whole trees
(names, types, sizes, bytes) are compared periodically and at the end, and again after unmount and
a remount with a fresh, empty cache dir (what the bucket itself holds). Halfway through, the same
remount happens too, so the second half works on files that exist only in the bucket (their bytes
are fetched as the base of a modification); now and then a `settle` step fsyncs every file, so the
reads that follow come from the bucket rather than from staging files.

Documented differences that are modelled:
  * empty directories exist on the mount only until a file was written under them: a directory
    that once held a file and has none left may vanish once the bucket is listed again. Such
    directories are removed on both sides as soon as they hold no file (the mount may already
    have dropped them: ENOENT is accepted there). After the remount, directories without any
    file are ignored on both sides.
  * hard links and symlinks are not supported: the model never makes them.

Env: BUCKETFS_MODEL_SEED (default: random, always printed), BUCKETFS_MODEL_OPS (default 25000),
BUCKETFS_MODEL_SECONDS (time bound of the random phase, default 45), BUCKETFS_MODEL_HALF (the
step of the halfway remount; printed with a mismatch, for an exact replay).
On a mismatch the seed, the step and the last 20 operations are printed."""
import collections
import errno
import os
import random
import shutil
import stat
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support"))
from mount_harness import Workspace, create_bucket, new_mount, start_server, metric  # noqa: E402
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support"))
import unittest_runner  # noqa: E402

SEED = int(os.environ.get("BUCKETFS_MODEL_SEED") or random.SystemRandom().randrange(1 << 32))
OPS = int(os.environ.get("BUCKETFS_MODEL_OPS", "25000"))
SECONDS = float(os.environ.get("BUCKETFS_MODEL_SECONDS", "45"))
# The step of the remount halfway through (default: half the operations or half the time).
HALF = int(os.environ["BUCKETFS_MODEL_HALF"]) if os.environ.get("BUCKETFS_MODEL_HALF") else None
MAX_OPEN = 8
MAX_FILE = 3 << 20
# Names the bucket can store (no '.', '..', backslash or control characters); files and
# directories share the pool so that EEXIST, ENOTDIR, EISDIR and ENOTEMPTY come up.
NAMES = ["a", "b.bin", "c d", "e#1", ".hid", "f.txt", "d1", "d2", "sub", "x y", "é"]
DIR_NAMES = ["d1", "d2", "sub", "x y", "a"]

OPEN_FLAGS = [
    ("RDONLY", os.O_RDONLY),
    ("RDWR", os.O_RDWR),
    ("WRONLY", os.O_WRONLY),
    ("RDWR|CREAT", os.O_RDWR | os.O_CREAT),
    ("WRONLY|CREAT|TRUNC", os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
    ("RDWR|CREAT|EXCL", os.O_RDWR | os.O_CREAT | os.O_EXCL),
    ("WRONLY|CREAT|APPEND", os.O_WRONLY | os.O_CREAT | os.O_APPEND),
    ("RDWR|TRUNC", os.O_RDWR | os.O_TRUNC),
    ("RDWR|APPEND", os.O_RDWR | os.O_APPEND),
]


class Mismatch(AssertionError):
    pass


def outcome(function):
    """('ok', value) or ('err', errno name) of calling function()."""
    try:
        return ("ok", function())
    except OSError as error:
        return ("err", errno.errorcode.get(error.errno, str(error.errno)))


def describe(value, limit=60):
    if isinstance(value, (bytes, bytearray)):
        return "<%d bytes>" % len(value)
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def walk_tree(root):
    """{relative path: ('dir', None) | ('file', bytes)} of everything under root."""
    tree = {}
    for directory, dirs, files in os.walk(root):
        rel_dir = os.path.relpath(directory, root)
        rel_dir = "" if rel_dir == "." else rel_dir
        for name in dirs:
            tree[os.path.join(rel_dir, name)] = ("dir", None)
        for name in files:
            path = os.path.join(directory, name)
            with open(path, "rb") as handle:
                data = handle.read()
            size = os.stat(path).st_size
            if size != len(data):
                raise Mismatch("%s: stat size %d but %d bytes read" % (os.path.join(rel_dir, name), size, len(data)))
            tree[os.path.join(rel_dir, name)] = ("file", data)
    return tree


def without_fileless_dirs(tree):
    keep = {}
    holding = set()
    for path, (kind, _) in tree.items():
        if kind == "file":
            parent = os.path.dirname(path)
            while parent:
                holding.add(parent)
                parent = os.path.dirname(parent)
    for path, entry in tree.items():
        if entry[0] == "file" or path in holding:
            keep[path] = entry
    return keep


def tree_difference(mounted, local):
    problems = []
    for path in sorted(set(mounted) | set(local)):
        m, l = mounted.get(path), local.get(path)
        if m is None:
            problems.append("missing on the mount: %s (%s)" % (path, l[0]))
        elif l is None:
            problems.append("only on the mount: %s (%s)" % (path, m[0]))
        elif m[0] != l[0]:
            problems.append("%s: %s on the mount, %s locally" % (path, m[0], l[0]))
        elif m[0] == "file" and m[1] != l[1]:
            first = next((i for i, (x, y) in enumerate(zip(m[1], l[1])) if x != y), min(len(m[1]), len(l[1])))
            problems.append("%s: %d bytes on the mount, %d locally, first difference at %d" %
                            (path, len(m[1]), len(l[1]), first))
    return problems


class Model:
    def __init__(self, rng, mount_root, local_root):
        self.rng = rng
        self.roots = {"m": mount_root, "l": local_root}
        self.handles = {}  # id -> {"m": fd, "l": fd, "flags": name, "path": path at open}
        self.next_handle = 1
        self.touched = set()  # directories that held a file at some point (may vanish when emptied)
        self.history = collections.deque(maxlen=20)
        self.full_history = []  # written to a file on a mismatch
        self.half_step = None
        self.step = 0
        self.counts = collections.Counter()
        self.normalized = 0

    # ---- the local tree, which drives the choices --------------------------------------------------

    def scan(self):
        files, dirs = [], [""]
        root = self.roots["l"]
        for directory, subdirs, names in os.walk(root):
            rel = os.path.relpath(directory, root)
            rel = "" if rel == "." else rel
            dirs += [os.path.join(rel, d) for d in subdirs]
            files += [os.path.join(rel, f) for f in names]
        return files, dirs

    def pick_path(self, files, dirs, want):
        r = self.rng.random()
        if want in ("new", "new-dir"):
            r = 0.1 + 0.9 * r  # a name in an existing directory
        if want == "file" and files and r < 0.75:
            return self.rng.choice(files)
        if want == "dir" and len(dirs) > 1 and r < 0.6:
            return self.rng.choice(dirs[1:])
        if r < 0.04 and files:  # under a file: ENOTDIR
            return os.path.join(self.rng.choice(files), self.rng.choice(NAMES))
        if r < 0.07:  # under a missing directory: ENOENT
            return os.path.join("nodir", self.rng.choice(NAMES))
        parent = self.rng.choice(dirs) if len(dirs) < 8 or self.rng.random() < 0.7 else ""
        if parent.count("/") >= 2:
            parent = os.path.dirname(parent)
        name = self.rng.choice(DIR_NAMES if want in ("dir", "new-dir") else NAMES)
        return os.path.join(parent, name)

    def data(self):
        r = self.rng.random()
        if r < 0.05:
            n = 0
        elif r < 0.6:
            n = self.rng.randrange(1, 9000)
        elif r < 0.93:
            n = self.rng.randrange(9000, 200_000)
        else:
            n = self.rng.randrange(200_000, 1_200_000)
        if self.rng.random() < 0.3:  # repetitive content: dedup inside and across files
            block = self.rng.randbytes(self.rng.choice([1, 7, 4096]))
            return (block * (n // len(block) + 1))[:n]
        return self.rng.randbytes(n)

    def offset(self, limit=400_000):
        r = self.rng.random()
        if r < 0.2:
            return 0
        if r < 0.3:
            return self.rng.choice([8191, 8192, 65535, 65536, 65537])
        return self.rng.randrange(0, limit)

    # ---- one operation on one side -------------------------------------------------------------------

    def run(self, side, op):
        root = self.roots[side]
        kind = op[0]

        def p(rel):
            return os.path.join(root, rel)

        if kind == "open":
            _, path, flags_name, flags = op
            return outcome(lambda: os.open(p(path), flags | os.O_CLOEXEC, 0o644))
        if kind == "pwrite":
            _, handle, offset, data = op
            return outcome(lambda: os.pwrite(self.handles[handle][side], data, offset))
        if kind == "append":
            _, handle, data = op
            return outcome(lambda: os.write(self.handles[handle][side], data))
        if kind == "pread":
            _, handle, offset, length = op
            return outcome(lambda: os.pread(self.handles[handle][side], length, offset))
        if kind == "ftruncate":
            _, handle, size = op
            return outcome(lambda: os.ftruncate(self.handles[handle][side], size))
        if kind == "fsync":
            return outcome(lambda: os.fsync(self.handles[op[1]][side]))
        if kind == "fstat":
            def fstat():
                st = os.fstat(self.handles[op[1]][side])
                return ("dir" if stat.S_ISDIR(st.st_mode) else "file", None if stat.S_ISDIR(st.st_mode) else st.st_size)
            return outcome(fstat)
        if kind == "close":
            return outcome(lambda: os.close(self.handles[op[1]][side]))
        if kind == "truncate":
            return outcome(lambda: os.truncate(p(op[1]), op[2]))
        if kind == "stat":
            def stat_path():
                st = os.stat(p(op[1]))
                return ("dir" if stat.S_ISDIR(st.st_mode) else "file", None if stat.S_ISDIR(st.st_mode) else st.st_size)
            return outcome(stat_path)
        if kind == "listdir":
            return outcome(lambda: sorted(os.listdir(p(op[1]))))
        if kind == "readfile":
            def read_file():
                with open(p(op[1]), "rb") as handle:
                    return handle.read()
            return outcome(read_file)
        if kind == "writefile":
            def write_file():
                fd = os.open(p(op[1]), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
                try:
                    view = memoryview(op[2])
                    while view:
                        view = view[os.write(fd, view):]
                finally:
                    os.close(fd)
                return len(op[2])
            return outcome(write_file)
        if kind == "rename":
            return outcome(lambda: os.rename(p(op[1]), p(op[2])))
        if kind == "unlink":
            return outcome(lambda: os.unlink(p(op[1])))
        if kind == "mkdir":
            return outcome(lambda: os.mkdir(p(op[1])))
        if kind == "rmdir":
            return outcome(lambda: os.rmdir(p(op[1])))
        if kind == "settle":
            # fsync of every file (through read-only descriptors): every closed file is committed
            # when this returns, so the reads that follow come from the bucket, not staging.
            def settle():
                count = 0
                for directory, _, names in os.walk(root):
                    for name in names:
                        fd = os.open(os.path.join(directory, name), os.O_RDONLY | os.O_CLOEXEC)
                        try:
                            os.fsync(fd)
                        finally:
                            os.close(fd)
                        count += 1
                return count
            return outcome(settle)
        raise AssertionError(kind)

    # ---- the random sequence -------------------------------------------------------------------------

    def choose(self):
        files, dirs = self.scan()
        rng = self.rng
        handle_ops = ["pwrite", "pwrite", "pwrite", "pread", "pread", "ftruncate", "fsync", "fstat", "close", "close",
                      "append"]
        r = rng.random()
        if self.handles and (r < 0.45 or len(self.handles) >= MAX_OPEN):
            handle = rng.choice(sorted(self.handles))
            kind = "close" if len(self.handles) >= MAX_OPEN and rng.random() < 0.5 else rng.choice(handle_ops)
            if kind == "pwrite":
                data = self.data()
                return ("pwrite", handle, min(self.offset(), MAX_FILE - len(data)), data)
            if kind == "append":
                return ("append", handle, self.data()[:50_000])
            if kind == "pread":
                return ("pread", handle, self.offset(), rng.choice([1, 100, 4096, 65536, 300_000, 2 << 20]))
            if kind == "ftruncate":
                return ("ftruncate", handle, self.offset())
            return (kind, handle)
        if rng.random() < 0.004:
            return ("settle",)
        r = rng.random()
        if len(files) < 12 and r < 0.3:  # keep the tree populated
            return ("writefile", self.pick_path(files, dirs, "new"), self.data())
        if len(dirs) < 5 and r < 0.4:
            return ("mkdir", self.pick_path(files, dirs, "new-dir"))
        r = rng.random()
        if r < 0.20:
            name, flags = rng.choice(OPEN_FLAGS)
            return ("open", self.pick_path(files, dirs, "file"), name, flags)
        if r < 0.32:
            return ("writefile", self.pick_path(files, dirs, "file"), self.data())
        if r < 0.42:
            return ("readfile", self.pick_path(files, dirs, "file"))
        if r < 0.47:
            return ("stat", self.pick_path(files, dirs, rng.choice(["file", "dir"])))
        if r < 0.52:
            return ("listdir", rng.choice(dirs + [self.pick_path(files, dirs, "dir")]))
        if r < 0.57:
            return ("truncate", self.pick_path(files, dirs, "file"), self.offset())
        if r < 0.71:
            what = "dir" if rng.random() < 0.3 else "file"
            source = self.pick_path(files, dirs, what)
            target = self.pick_path(files, dirs, rng.choice(["file", "dir"]) if rng.random() < 0.3 else what)
            return ("rename", source, target)
        if r < 0.81:
            return ("unlink", self.pick_path(files, dirs, "file"))
        if r < 0.92:
            return ("mkdir", self.pick_path(files, dirs, "dir"))
        return ("rmdir", self.pick_path(files, dirs, "dir"))

    def fail(self, message):
        replay = "BUCKETFS_MODEL_SEED=%d BUCKETFS_MODEL_OPS=%d" % (SEED, OPS)
        if self.half_step is not None:
            replay += " BUCKETFS_MODEL_HALF=%d" % self.half_step
        lines = ["MODEL MISMATCH at step %d (seed %d; replay with %s)" % (self.step, SEED, replay), message,
                 "last operations:"]
        lines += ["  " + entry for entry in self.history]
        try:  # what differs between the trees now (names, types, sizes)
            shapes = []
            for root in (self.roots["m"], self.roots["l"]):
                shape = {}
                for directory, dirs, files in os.walk(root):
                    rel = os.path.relpath(directory, root)
                    for name in dirs:
                        shape[os.path.normpath(os.path.join(rel, name))] = "dir"
                    for name in files:
                        shape[os.path.normpath(os.path.join(rel, name))] = os.stat(os.path.join(directory, name)).st_size
                shapes.append(shape)
            differ = ["%s: mount %s, local %s" % (k, shapes[0].get(k), shapes[1].get(k))
                      for k in sorted(set(shapes[0]) | set(shapes[1])) if shapes[0].get(k) != shapes[1].get(k)]
            lines.append("trees now differ in: " + ("; ".join(differ[:20]) or "nothing"))
        except OSError as error:
            lines.append("cannot compare the trees now: %s" % error)
        path = os.path.join(tempfile.gettempdir(), "bucketfs-model-%d.log" % SEED)
        try:
            with open(path, "w") as handle:
                handle.write("\n".join(self.full_history + ["", message, ""]))
            lines.append("every operation: " + path)
        except OSError:
            pass
        raise Mismatch("\n".join(lines))

    def record(self, op, result=None):
        text = "#%d %s" % (self.step, " ".join(describe(x) for x in op if not isinstance(x, int) or x >= 0))
        if op[0] == "open":
            text = "#%d open %s %s" % (self.step, op[1], op[2])
        if result is not None:
            text += " -> " + describe(result[1] if result[0] == "ok" else result, 40)
        self.history.append(text)
        self.full_history.append(text)

    def apply(self, op):
        self.step += 1
        got = {side: self.run(side, op) for side in ("m", "l")}
        self.counts[op[0] + ("" if got["l"][0] == "ok" else "!")] += 1
        self.record(op, got["l"])
        m, l = got["m"], got["l"]
        if op[0] == "open":
            if m[0] == "ok" and l[0] == "ok":
                self.handles[self.next_handle] = {"m": m[1], "l": l[1], "flags": op[2], "path": op[1]}
                self.history[-1] += " (h%d)" % self.next_handle
                self.full_history[-1] = self.history[-1]
                self.next_handle += 1
                return
            for side, result in got.items():
                if result[0] == "ok":
                    os.close(result[1])
            if m != l:
                self.fail("open %s %s: mount %s, local %s" % (op[1], op[2], m, l))
            return
        if op[0] == "close":
            del self.handles[op[1]]
        if m != l:
            self.fail("%s: mount %s, local %s" % (self.history[-1], describe(m, 200), describe(l, 200)))
        if m[0] == "ok" and op[0] in ("rename", "rmdir", "unlink"):
            self.after_namespace_change(op)

    def after_namespace_change(self, op):
        if op[0] == "rename":
            source, target = op[1], op[2]
            moved = {d for d in self.touched if d == source or d.startswith(source + "/")}
            self.touched -= {d for d in self.touched if d == target or d.startswith(target + "/")}
            self.touched -= moved
            self.touched |= {target + d[len(source):] for d in moved}
        elif op[0] == "rmdir":
            self.touched.discard(op[1])

    def mark_and_normalize(self):
        """Marks the directories holding files; removes, on both sides, those that held a file once
        and hold none now (the mount may drop them when it lists the bucket again)."""
        files, dirs = self.scan()
        holding = set()
        for path in files:
            parent = os.path.dirname(path)
            while parent:
                holding.add(parent)
                parent = os.path.dirname(parent)
        self.touched |= holding
        empty = [d for d in dirs if d and d in self.touched and d not in holding]
        # Whole file-free subtrees, deepest first.
        doomed = set()
        for d in empty:
            doomed.add(d)
            doomed |= {x for x in dirs if x.startswith(d + "/")}
        for d in sorted(doomed, key=lambda x: -x.count("/")):
            local = outcome(lambda: os.rmdir(os.path.join(self.roots["l"], d)))
            mounted = outcome(lambda: os.rmdir(os.path.join(self.roots["m"], d)))
            self.history.append("   (normalize: rmdir %s: mount %s)" % (d, mounted))
            self.full_history.append(self.history[-1])
            if local[0] != "ok":
                self.fail("normalizing: local rmdir %s: %s" % (d, local))
            if mounted != local and mounted != ("err", "ENOENT"):
                self.fail("normalizing: the mount refused rmdir of %s, file-free locally: %s" % (d, mounted))
            self.touched.discard(d)
            self.normalized += 1

    def compare_trees(self, what):
        local = walk_tree(self.roots["l"])
        mounted = walk_tree(self.roots["m"])
        problems = tree_difference(mounted, local)
        if problems:
            self.fail("tree comparison (%s):\n  " % what + "\n  ".join(problems[:30]))
        return len(local)

    def close_all(self):
        for handle in sorted(self.handles):
            op = ("close", handle)
            self.apply(op)


class ModelTest(unittest.TestCase):
    def test_random_operations_match_a_local_directory(self):
        print("model seed %d (BUCKETFS_MODEL_SEED=%d), up to %d operations or %.0f s" % (SEED, SEED, OPS, SECONDS),
              flush=True)
        server = start_server(self, "model")
        create_bucket(server, "alice/model")
        workspace = Workspace("model")
        self.addCleanup(workspace.cleanup)
        local = tempfile.mkdtemp(prefix="bucketfs-model-local-")
        self.addCleanup(shutil.rmtree, local, True)
        mount = new_mount(self, server, workspace, "alice/model", name="model").start("--metadata-ttl", "1")
        model = Model(random.Random(SEED), mount.mountpoint, local)
        model.mount = mount

        def close_leftovers():
            for handles in model.handles.values():
                for side in ("m", "l"):
                    try:
                        os.close(handles[side])
                    except OSError:
                        pass
            model.handles.clear()
        self.addCleanup(close_leftovers)

        def remount(name):
            """Unmount (which commits everything), then mount again with a fresh, empty cache: the
            mount now shows what the bucket holds. Directories without files are gone from it:
            they are dropped locally too."""
            unmounted = model.mount.unmount()
            self.assertEqual(unmounted.returncode, 0, unmounted.stderr + model.mount.log())
            self.assertFalse(model.mount.is_mounted())
            model.mount = new_mount(self, server, workspace, "alice/model", name=name,
                                    cache_dir=workspace.path("cache-" + name)).start("--metadata-ttl", "1")
            model.roots["m"] = model.mount.mountpoint
            local_tree = walk_tree(local)
            kept = without_fileless_dirs(local_tree)
            for path in sorted((p for p in local_tree if p not in kept), key=lambda x: -x.count("/")):
                os.rmdir(os.path.join(local, path))
            model.touched = {p for p, e in kept.items() if e[0] == "dir"}
            problems = tree_difference(walk_tree(model.mount.mountpoint), kept)
            self.assertFalse(problems, "after remount (seed %d, step %d):\n  " % (SEED, model.step)
                             + "\n  ".join(problems[:30]))
            return kept

        try:
            started = time.monotonic()
            half = False
            while model.step < OPS and time.monotonic() - started < SECONDS:
                if not half and (model.step >= HALF if HALF is not None else
                                 model.step >= OPS // 2 or time.monotonic() - started >= SECONDS / 2):
                    # Halfway: everything goes to the bucket and comes back from it; the second half
                    # then modifies files that exist only remotely (their bytes fetched as a base).
                    half = True
                    model.half_step = model.step
                    model.close_all()
                    model.mark_and_normalize()
                    model.compare_trees("before the halfway remount")
                    kept = remount("half")
                    model.history.append("   (halfway remount at step %d: %d entries)" % (model.step, len(kept)))
                    model.full_history.append(model.history[-1])
                model.apply(model.choose())
                model.mark_and_normalize()
                if model.step % 300 == 0:
                    model.compare_trees("periodic")
            elapsed = time.monotonic() - started
            model.close_all()
            model.mark_and_normalize()
            entries = model.compare_trees("end")
            print("%d operations in %.1f s (name! counts those that failed alike on both sides: %s); %d entries"
                  " at the end; %d emptied directories removed"
                  % (model.step, elapsed, ", ".join("%s %d" % kv for kv in sorted(model.counts.items())), entries,
                     model.normalized), flush=True)
        except Mismatch as mismatch:
            raise AssertionError(str(mismatch) + "\n--- mount log ---\n" + model.mount.log()) from None

        # Everything is in the bucket: a remount with a fresh cache shows the same files.
        kept = remount("end")
        print("after the final remount: %d entries identical, %d files (server: %d bytes of files committed)"
              % (len(kept), sum(1 for e in kept.values() if e[0] == "file"),
                 metric(server, "bucketfs_file_bytes_committed_total")), flush=True)
        self.assertEqual(model.mount.unmount().returncode, 0)


if __name__ == "__main__":
    sys.exit(unittest_runner.run(__name__))
