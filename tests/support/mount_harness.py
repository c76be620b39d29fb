"""Shared pieces of the mount tests: a bucketfs-server of the test's own (from
tests/server/http_api_test.py), real mounts through /dev/fuse with their own runtime, cache and
log folders, and a cleanup that always unmounts (fusermount3 -u -z) and stops the daemons, even
when a test fails.

Every test gets fresh folders and a server on a free port, so tests run in parallel."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "server"))
import http_api_test as api  # noqa: E402,F401  (re-exported: Server, request, tokens)

BINARY = os.environ["BUCKETFS_BINARY"]
MOUNT_HELPER = os.path.join(os.path.dirname(BINARY), "mount.bucketfs")
MiB = 1 << 20


def metric(server, name):
    """A counter or gauge from the server's /metrics (labels included in `name` if any)."""
    text = api.request("GET", "/metrics", server=server).body.decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return int(float(line.split()[1]))
    return 0


def create_bucket(server, bucket, token=None):
    response = api.request("POST", "/api/buckets/" + bucket, token=token or api.ALICE_W, server=server)
    assert response.status in (200, 409), (response.status, response.body)


class Workspace:
    """A temporary folder with the token files of the test users, removed at the end."""

    def __init__(self, name):
        self.root = tempfile.mkdtemp(prefix="bucketfs-" + name + "-")
        self.tokens = {}
        for user, token in (("alice", api.ALICE_W), ("alice-read", api.ALICE_R), ("bob", api.BOB_W)):
            path = os.path.join(self.root, "token-" + user)
            with open(path, "w") as handle:
                handle.write(token + "\n")
            os.chmod(path, 0o600)
            self.tokens[user] = path

    def path(self, *parts):
        return os.path.join(self.root, *parts)

    def cleanup(self):
        shutil.rmtree(self.root, ignore_errors=True)


class Mount:
    """One `bucketfs mount` of `source` (NS/BUCKET[/PREFIX]) on a fresh mount point.

    runtime and cache folders default to ones private to this mount; pass `cache_dir` to share a
    cache (e.g. to remount with the same one)."""

    def __init__(self, server, workspace, source, user="alice", cache_dir=None, name=None, extra=()):
        self.server = server
        self.workspace = workspace
        self.source = source
        self.user = user
        name = name or "m%d" % len([p for p in os.listdir(workspace.root) if p.startswith("mnt-")])
        self.mountpoint = workspace.path("mnt-" + name)
        self.runtime = workspace.path("run-" + name)
        self.cache_dir = cache_dir or workspace.path("cache-" + name)
        os.makedirs(self.mountpoint, exist_ok=True)
        self.extra = list(extra)
        self.pid = None

    def env(self):
        env = dict(os.environ)
        env["BUCKETFS_RUNTIME_DIR"] = self.runtime
        env.pop("HF_TOKEN", None)
        return env

    def command(self, *args, check=False, timeout=300):
        return subprocess.run([BINARY, *args], capture_output=True, text=True, env=self.env(), timeout=timeout,
                              check=check)

    def mount(self, *extra):
        args = ["mount", "--endpoint", self.server.base, "--cache-dir", self.cache_dir]
        if self.user:
            args += ["--token-file", self.workspace.tokens[self.user]]
        result = self.command(*args, *self.extra, *extra, self.source, self.mountpoint, timeout=60)
        if result.returncode == 0:
            self.pid = self.state().get("pid")
        return result

    def start(self, *extra):
        result = self.mount(*extra)
        if result.returncode != 0:
            raise AssertionError("mount failed: " + result.stderr + self.log())
        return self

    def state(self):
        for name in os.listdir(self.runtime) if os.path.isdir(self.runtime) else []:
            if name.endswith(".json"):
                with open(os.path.join(self.runtime, name)) as handle:
                    state = json.load(handle)
                if state.get("mountpoint") == os.path.realpath(self.mountpoint):
                    return state
        return {}

    def status(self):
        result = self.command("status", "--json", check=True)
        return json.loads(result.stdout)

    def log(self):
        path = self.state().get("log_file")
        if not path or not os.path.exists(path):
            return ""
        with open(path, errors="replace") as handle:
            return handle.read()[-4000:]

    def path(self, *parts):
        return os.path.join(self.mountpoint, *parts)

    def is_mounted(self):
        real = os.path.realpath(self.mountpoint)
        with open("/proc/self/mountinfo") as handle:
            return any(line.split()[4] == real for line in handle)

    def unmount(self, timeout=120):
        result = self.command("unmount", self.mountpoint, timeout=timeout + 30)
        return result

    def kill(self, sig=signal.SIGKILL):
        """Kills the daemon (as a crash would) and detaches the dead mount."""
        if self.pid:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
            wait_gone(self.pid)
        subprocess.run(["fusermount3", "-u", "-z", "-q", self.mountpoint], check=False, capture_output=True)

    def cleanup(self):
        if self.is_mounted():
            subprocess.run([BINARY, "unmount", "--timeout", "20", self.mountpoint], env=self.env(),
                           capture_output=True, check=False, timeout=60)
        if self.is_mounted():
            subprocess.run(["fusermount3", "-u", "-z", "-q", self.mountpoint], check=False, capture_output=True)
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def wait_gone(pid, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open("/proc/%d/stat" % pid) as handle:
                if handle.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return
        time.sleep(0.02)
    raise AssertionError("process %d did not exit" % pid)


class RestartableServer(api.Server):
    """A bucketfs-server that can be killed and started again on the same port and data."""

    def restart_on_same_port(self, extra_args=None):
        if extra_args is not None:
            self.extra_args = list(extra_args)
        if getattr(self, "log", None):
            self.log.close()
        os.unlink(self.ready) if os.path.exists(self.ready) else None
        self.log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [api.SERVER_BINARY, "--data", self.data, "--tokens", self.tokens, "--listen",
             "127.0.0.1:%d" % self.port, "--ready-file", self.ready] + self.extra_args,
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.wait_ready("did not restart")

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)


def start_server(test, name, *extra_args):
    """A bucketfs-server for `test` (a unittest.TestCase), stopped by its cleanups."""
    server = api.Server(name, extra_args=extra_args)
    test.addCleanup(server.cleanup)
    server.start()
    return server


def new_mount(test, server, workspace, source, **kwargs):
    """A Mount unmounted by the test's cleanups whatever happens (not yet mounted)."""
    mount = Mount(server, workspace, source, **kwargs)
    test.addCleanup(mount.cleanup)
    return mount
