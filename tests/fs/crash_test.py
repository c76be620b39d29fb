#!/usr/bin/env python3
"""Nothing a program closed is lost when the mount daemon is killed (issue 6, "Crash").

For each seed (printed): a writer process writes and closes files in a loop on the mount (new
files of seeded random sizes, and a `latest.bin` overwritten again and again, the way trainers
write checkpoints), logging each file right after its close() returned. The daemon is killed
with SIGKILL at a seeded random moment. The dead mount is detached and the bucket mounted again
with the same cache dir, which replays the write journal. Then, through a fresh mount with an
empty cache (so every byte comes from the bucket):
  * every closed file is there with the bytes of its last closed version;
  * no file is half: every file in the bucket has exactly the bytes of one version written to
    its path (a file whose close was under way when the daemon died may be there, whole);
  * none twice: no conflict copies, no other names.

BUCKETFS_CRASH_SEEDS=N runs N seeds (default 3); BUCKETFS_CRASH_SEED=S runs only seed S.

And while the next mount replays the journal (before it reports itself ready), `bucketfs status`
shows it "recovering" with the files still to commit: the server is stopped while files are
closed (so they stay in the journal), the daemon killed, and the server started again slowed
down (every request stalled) so the replay takes seconds to watch."""
import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support"))
import mount_harness as h  # noqa: E402
import unittest_runner  # noqa: E402
from mount_harness import RestartableServer  # noqa: E402

WRITER = r'''
import hashlib, os, random, sys
root, log_path, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])

def content(path, version):
    rng = random.Random("%d:%s:%d" % (seed, path, version))
    size = rng.choice([0, 1, 8191, 70000, rng.randrange(1, 3 << 20), rng.randrange(8 << 20, 24 << 20)])
    return rng.randbytes(size)

log = open(log_path, "a")
os.makedirs(root, exist_ok=True)
i = 0
try:
    while True:
        path = "latest.bin" if i % 4 == 3 else "f%05d.bin" % i
        version = i
        data = content(path, version)
        with open(os.path.join(root, path), "wb") as handle:
            for at in range(0, len(data), 1 << 20):
                handle.write(data[at:at + (1 << 20)])
        # close() returned: the file is acknowledged.
        log.write("%s %d %s\n" % (path, version, hashlib.sha256(data).hexdigest()))
        log.flush()
        os.fsync(log.fileno())
        i += 1
except OSError:
    pass
'''


def content(seed, path, version):
    rng = random.Random("%d:%s:%d" % (seed, path, version))
    size = rng.choice([0, 1, 8191, 70000, rng.randrange(1, 3 << 20), rng.randrange(8 << 20, 24 << 20)])
    return rng.randbytes(size)


def sha(data):
    return hashlib.sha256(data).hexdigest()


def seeds():
    if os.environ.get("BUCKETFS_CRASH_SEED"):
        return [int(os.environ["BUCKETFS_CRASH_SEED"])]
    count = int(os.environ.get("BUCKETFS_CRASH_SEEDS", "3"))
    base = int(time.time()) % 100000
    return [base + n for n in range(count)]


class CrashTest(unittest.TestCase):
    def test_killed_daemon_loses_no_closed_file(self):
        server = h.start_server(self, "crash")
        workspace = h.Workspace("crash")
        self.addCleanup(workspace.cleanup)
        h.create_bucket(server, "alice/ckpts")
        cache = workspace.path("cache")
        for seed in seeds():
            with self.subTest(seed=seed):
                print("crash test seed %d (rerun: BUCKETFS_CRASH_SEED=%d)" % (seed, seed), flush=True)
                self.run_seed(server, workspace, cache, seed)

    def run_seed(self, server, workspace, cache, seed):
        rng = random.Random(seed)
        folder = "s%d" % seed
        mount = h.new_mount(self, server, workspace, "alice/ckpts", cache_dir=cache, name="w%d" % seed).start()
        log_path = workspace.path("log-%d.txt" % seed)
        writer = subprocess.Popen([sys.executable, "-c", WRITER, mount.path(folder), log_path, str(seed)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: writer.poll() is None and writer.kill())
        delay = rng.uniform(0.4, 3.0)
        time.sleep(delay)
        mount.kill(signal.SIGKILL)
        try:
            writer.wait(timeout=30)
        except subprocess.TimeoutExpired:
            writer.kill()
            writer.wait()
        closed = {}
        versions = {}
        with open(log_path) as handle:
            for line in handle:
                path, version, digest = line.split()
                closed[path] = digest  # the last closed version wins
                versions.setdefault(path, set()).add(int(version))
        print("  seed %d: killed after %.2f s, %d files closed" % (seed, delay, len(closed)), flush=True)

        # Remount with the same cache dir: the journal is replayed before the mount is ready.
        recovered = h.new_mount(self, server, workspace, "alice/ckpts", cache_dir=cache, name="r%d" % seed).start()
        state = recovered.state()
        print("  seed %d: recovered %d file(s) from the journal" % (seed, state.get("recovered_files", 0)), flush=True)
        self.assertEqual(state.get("recovery_failed", 0), 0, recovered.log())
        self.assertEqual(state.get("recovery_conflicts", 0), 0, recovered.log())
        self.assertEqual(recovered.unmount().returncode, 0)

        # Read everything back from the bucket alone.
        fresh = h.new_mount(self, server, workspace, "alice/ckpts", name="v%d" % seed).start()
        present = sorted(os.listdir(fresh.path(folder))) if os.path.isdir(fresh.path(folder)) else []
        for path, digest in closed.items():
            self.assertIn(path, present, "seed %d: closed file %s is missing" % (seed, path))
        # The writer may have been writing `latest.bin` or a new file when the daemon died: a
        # version whose close was under way may be there too, but only whole.
        last = max((v for vs in versions.values() for v in vs), default=-1)
        for path in present:
            with open(fresh.path(folder, path), "rb") as handle:
                data = handle.read()
            candidates = {v for v in versions.get(path, set())}
            candidates.add(last + 1)  # the one in flight
            match = [v for v in candidates if sha(content(seed, path, v)) == sha(data)]
            self.assertTrue(match, "seed %d: %s (%d bytes) matches no version written to it" % (seed, path, len(data)))
            if path in closed and path != "latest.bin":
                self.assertEqual(sha(data), closed[path], "seed %d: %s has other bytes" % (seed, path))
            if path == "latest.bin" and path in closed:
                newest_closed = max(versions[path])
                self.assertGreaterEqual(max(match), newest_closed,
                                        "seed %d: latest.bin went back to an older version" % seed)
            self.assertNotIn("conflict", path)
        self.assertEqual(fresh.unmount().returncode, 0)
        print("  seed %d: %d files checked, none lost, none half, none twice" % (seed, len(present)), flush=True)


class LeftoverTest(unittest.TestCase):
    """What a killed daemon leaves besides its journal: a dead mount at its mount point, and the
    staging files of files it had open and never closed. `bucketfs mount` at the same point
    detaches the dead mount, replays the journal and removes those files, but not the staging
    files of a daemon still running on the same cache dir."""

    def test_remount_at_the_same_point_clears_what_the_killed_daemon_left(self):
        server = h.start_server(self, "crash-leftover")
        workspace = h.Workspace("crash-leftover")
        self.addCleanup(workspace.cleanup)
        h.create_bucket(server, "alice/left")
        cache = workspace.path("cache")
        staging = os.path.join(cache, "staging")
        killed = h.new_mount(self, server, workspace, "alice/left", cache_dir=cache, name="k").start()
        running = h.new_mount(self, server, workspace, "alice/left", cache_dir=cache, name="r").start()

        def staging_files_of(pid):
            return sorted(n for n in os.listdir(staging) if n.startswith("f%d-" % pid))

        running_bytes = random.Random(2).randbytes(3 << 20)
        running_handle = open(running.path("running.bin"), "wb")
        self.addCleanup(running_handle.close)
        running_handle.write(running_bytes[:1 << 20])
        running_handle.flush()
        closed_bytes = random.Random(3).randbytes(700_000)
        with open(killed.path("closed.bin"), "wb") as handle:
            handle.write(closed_bytes)
        never_closed = open(killed.path("open.bin"), "wb")
        never_closed.write(random.Random(4).randbytes(2 << 20))
        never_closed.flush()
        self.assertTrue(staging_files_of(killed.pid), os.listdir(staging))
        os.kill(killed.pid, signal.SIGKILL)
        h.wait_gone(killed.pid)
        try:
            never_closed.close()
        except OSError:
            pass  # the daemon is gone
        with self.assertRaises(OSError):  # a dead mount: ENOTCONN (or ECONNABORTED)
            os.listdir(killed.mountpoint)
        killed_pid = killed.pid

        result = killed.mount()  # the same mount point, the same cache dir
        self.assertEqual(result.returncode, 0, result.stderr + killed.log())
        self.assertIn("dead bucketfs mount", result.stderr)
        self.assertIn("staging: removed 1 file(s) (2097152 bytes)", killed.log())
        self.assertEqual(staging_files_of(killed_pid), [])
        self.assertFalse([n for n in os.listdir(staging) if n.startswith("owner-%d-" % killed_pid)])
        self.assertEqual(len(staging_files_of(running.pid)), 1, os.listdir(staging))
        self.assertEqual(sorted(os.listdir(killed.mountpoint)), ["closed.bin"])
        with open(killed.path("new.bin"), "wb") as handle:
            handle.write(b"after the restart\n")

        # The other daemon's open file was left alone: it closes and commits whole.
        running_handle.write(running_bytes[1 << 20:])
        running_handle.close()
        self.assertEqual(running.unmount().returncode, 0, running.log())
        self.assertEqual(killed.unmount().returncode, 0, killed.log())
        fresh = h.new_mount(self, server, workspace, "alice/left", name="v").start()
        for name, data in (("running.bin", running_bytes), ("closed.bin", closed_bytes),
                           ("new.bin", b"after the restart\n")):
            with open(fresh.path(name), "rb") as handle:
                self.assertTrue(handle.read() == data, name)
        self.assertEqual(sorted(os.listdir(fresh.mountpoint)), ["closed.bin", "new.bin", "running.bin"])
        self.assertEqual(fresh.unmount().returncode, 0)


NAMESPACED_WRITER = r'''
import os, subprocess, sys, time
binary, endpoint, token_file, cache, mountpoint, runtime, folder, count = sys.argv[1:9]
env = dict(os.environ, BUCKETFS_RUNTIME_DIR=runtime)
daemon = subprocess.Popen([binary, "mount", "--foreground", "--endpoint", endpoint, "--token-file", token_file,
                           "--cache-dir", cache, "alice/ns", mountpoint], env=env,
                          stdout=subprocess.DEVNULL, stderr=open(os.path.join(folder, "daemon.log"), "w"))
def marker(name):
    return os.path.join(folder, name)
deadline = time.monotonic() + 30
while not any(line.split()[4] == mountpoint for line in open("/proc/self/mountinfo")):
    if time.monotonic() > deadline or daemon.poll() is not None:
        sys.exit("the namespaced mount did not start")
    time.sleep(0.05)
os.listdir(mountpoint)  # the root listing is known before the server goes
open(marker("ready"), "w").close()
while not os.path.exists(marker("go")):
    time.sleep(0.02)
for i in range(int(count)):
    with open(os.path.join(mountpoint, "n%d.bin" % i), "wb") as handle:
        handle.write(os.urandom(50_000 + i))
open(marker("written"), "w").close()
time.sleep(3600)  # pid 1 of the namespace: killing it takes the daemon and its mount with it
'''


class PidNamespaceTest(unittest.TestCase):
    """Pods on one node may share a cache dir from separate pid namespaces. A pid from another
    namespace means nothing here, so a record's owner is judged by its staging owner lock: a
    mount started next to a running daemon of another namespace must not replay that daemon's
    journal (committing its files and unlinking staging files it still uses)."""

    def test_a_running_daemon_of_another_pid_namespace_keeps_its_journal(self):
        if subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True).returncode:
            self.skipTest("unshare --pid is not permitted here (needs CAP_SYS_ADMIN)")
        server = RestartableServer("crash-pidns")
        self.addCleanup(server.cleanup)
        server.start()
        workspace = h.Workspace("crash-pidns")
        self.addCleanup(workspace.cleanup)
        h.create_bucket(server, "alice/ns")
        cache = workspace.path("cache")
        folder = workspace.path("ns")
        mountpoint = workspace.path("mnt-ns")
        os.makedirs(folder)
        os.makedirs(mountpoint)
        namespaced = subprocess.Popen(
            ["unshare", "--pid", "--kill-child", "--mount-proc", "--propagation", "private", sys.executable, "-c",
             NAMESPACED_WRITER, h.BINARY, server.base, workspace.tokens["alice"], cache, mountpoint,
             workspace.path("run-ns"), folder, "4"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: namespaced.poll() is None and (namespaced.kill(), namespaced.wait()))
        deadline = time.monotonic() + 30
        def daemon_log():
            path = os.path.join(folder, "daemon.log")
            return open(path, errors="replace").read()[-3000:] if os.path.exists(path) else ""

        while not os.path.exists(os.path.join(folder, "ready")):
            self.assertIsNone(namespaced.poll(), daemon_log())
            self.assertLess(time.monotonic(), deadline, "the namespaced mount did not start")
            time.sleep(0.05)
        server.kill()  # its closes stay in the journal: their uploads fail
        open(os.path.join(folder, "go"), "w").close()
        while not os.path.exists(os.path.join(folder, "written")):
            self.assertIsNone(namespaced.poll(), daemon_log())
            self.assertLess(time.monotonic(), deadline + 30, "the namespaced writer did not finish")
            time.sleep(0.02)
        staging = os.path.join(cache, "staging")
        staged = sorted(n for n in os.listdir(staging) if n.startswith("f"))
        self.assertEqual(len(staged), 4, os.listdir(staging))

        # Its retries back off (2 s, 4 s, 8 s, ...): after 7 s the next one is several seconds
        # away, and this mount's replay (if it wrongly took the daemon for dead) runs before it.
        time.sleep(7)
        server.restart_on_same_port()
        here = h.new_mount(self, server, workspace, "alice/ns", cache_dir=cache, name="here").start()
        state = here.state()
        self.assertEqual(state.get("recovered_files", 0), 0, here.log())
        # What is gone, the running daemon committed itself (a retry that came early).
        left = sorted(n for n in os.listdir(staging) if n.startswith("f"))
        self.assertTrue(set(left) <= set(staged), left)
        self.assertEqual(here.unmount().returncode, 0, here.log())


class CommittedRecordTest(unittest.TestCase):
    def test_a_rename_after_the_commit_does_not_bring_back_a_record(self):
        """A file closed (journaled), committed, and written again without a close has no record:
        renaming it must not write one, or a crash would commit bytes no close acknowledged."""
        server = h.start_server(self, "crash-rename")
        workspace = h.Workspace("crash-rename")
        self.addCleanup(workspace.cleanup)
        h.create_bucket(server, "alice/ren")
        cache = workspace.path("cache")
        mount = h.new_mount(self, server, workspace, "alice/ren", cache_dir=cache, name="w").start()
        fd = os.open(mount.path("a.bin"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.write(fd, b"closed? no, fsynced\n")
            os.close(os.open(mount.path("a.bin"), os.O_WRONLY))  # a close: journaled
            os.fsync(fd)  # committed; its record removed
            os.write(fd, b"never closed\n")
            os.rename(mount.path("a.bin"), mount.path("b.bin"))
            mount.kill(signal.SIGKILL)
        finally:
            try:
                os.close(fd)
            except OSError:  # ENOTCONN: the daemon is gone
                pass
        again = h.new_mount(self, server, workspace, "alice/ren", cache_dir=cache, name="r").start()
        self.assertEqual(again.state().get("recovered_files", 0), 0, again.log())
        self.assertEqual(sorted(os.listdir(again.mountpoint)), ["b.bin"])
        with open(again.path("b.bin"), "rb") as handle:
            self.assertEqual(handle.read(), b"closed? no, fsynced\n")
        self.assertEqual(again.unmount().returncode, 0, again.log())


class RecoveryStatusTest(unittest.TestCase):
    def test_status_lists_the_journaled_files_during_replay(self):
        server = RestartableServer("crash-status")
        self.addCleanup(server.cleanup)
        server.start()
        workspace = h.Workspace("crash-status")
        self.addCleanup(workspace.cleanup)
        h.create_bucket(server, "alice/replay")
        cache = workspace.path("cache")
        mount = h.new_mount(self, server, workspace, "alice/replay", cache_dir=cache, name="w").start()
        with open(mount.path("warm.txt"), "wb") as handle:  # the root listing is now known
            handle.write(b"warm\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.listdir(mount.mountpoint)
        server.kill()  # uploads now fail: closed files stay in the journal
        files = {"p%d.bin" % i: random.Random(i).randbytes(size)
                 for i, size in enumerate([5000, 700_000, 2 << 20, 3 << 20])}
        for name, data in files.items():
            with open(mount.path(name), "wb") as handle:
                handle.write(data)
        mount.kill(signal.SIGKILL)

        # Every request answered 0.7 s late (below the client's stall timeout): a slow replay.
        server.restart_on_same_port(["--inject-faults", "rate=1,kinds=stall,stall_ms=700"])
        recovering = h.new_mount(self, server, workspace, "alice/replay", cache_dir=cache, name="r")
        outcome = {}
        thread = threading.Thread(target=lambda: outcome.update(result=recovering.mount()))
        thread.start()
        seen = []  # (pending paths, recovered so far) of each "recovering" state observed
        text = ""
        while thread.is_alive():
            for entry in recovering.status():
                if entry.get("mountpoint") == os.path.realpath(recovering.mountpoint) and \
                        entry.get("state") == "recovering":
                    observed = (tuple(entry.get("recovery_pending", [])), entry.get("recovered_files"))
                    self.assertEqual(entry.get("pending_uploads"), len(observed[0]), entry)
                    if not seen or seen[-1] != observed:
                        seen.append(observed)
                    if not text and observed[0]:
                        text = recovering.command("status", check=True).stdout
            time.sleep(0.1)
        thread.join()
        result = outcome["result"]
        self.assertEqual(result.returncode, 0, result.stderr + recovering.log())
        recovering.pid = recovering.state().get("pid")
        self.assertTrue(seen, "status never showed the mount recovering")
        self.assertEqual(sorted(seen[0][0]), sorted(files), "the first status must list every journaled file")
        for earlier, later in zip(seen, seen[1:]):  # files leave the list as they are committed
            self.assertTrue(set(later[0]) <= set(earlier[0]), seen)
        self.assertIn("recovering", text)
        for name in seen[0][0][:1]:
            self.assertIn(name, text)
        state = recovering.state()
        self.assertEqual(state.get("state"), "mounted")
        self.assertNotIn("recovery_pending", state)
        self.assertEqual(state.get("recovered_files"), len(files), recovering.log())
        for name, data in files.items():
            with open(recovering.path(name), "rb") as handle:
                self.assertTrue(handle.read() == data, name)
        self.assertEqual(recovering.unmount().returncode, 0)
        print("recovery status: %d states observed while %d journaled files were replayed (first: %s)"
              % (len(seen), len(files), ", ".join(seen[0][0])), flush=True)


if __name__ == "__main__":
    sys.exit(unittest_runner.run(__name__))
