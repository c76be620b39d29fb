"""Helpers shared by the benchmark scripts in bench/ (suite.py, mount_bench.py, client_bench.py):
a bucketfs-server of their own, `bucketfs mount` daemons that are always detached, the bench
passthrough FUSE filesystem, timed processes with their peak RSS, page-cache control, fast random
data, sequential and fio reads, and the npm client scripts."""
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("BUCKETFS_BUILD", os.path.join(ROOT, "build"))
BUCKETFS = os.path.join(BUILD, "src/cli/bucketfs")
SERVER = os.path.join(BUILD, "src/server/bucketfs-server")
PASSTHROUGH = os.path.join(BUILD, "bench/passthrough")
NPM_DIR = os.path.join(ROOT, "tests/npm")
MiB = 1 << 20
GiB = 1 << 30


def log(text):
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def drop_caches():
    """Empties the kernel page cache (whole machine); False when not permitted."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as handle:
            handle.write("3\n")
        return True
    except OSError:
        return False


def run(command, stdout=subprocess.DEVNULL, env=None, cwd=None, stdin=None):
    """Runs `command`; returns (seconds, peak RSS in MiB of that process).

    The peak comes from GNU time, which forks the command from its own small process. The wait4
    figure of a command started straight from this script counts this script's resident size as
    well: exec records the high-water mark of the memory it replaces, which for a child started
    by vfork is this script's, 2 GiB once the checkpoint section has held its data."""
    with tempfile.NamedTemporaryFile("r", prefix="bench-rss-") as peak:
        start = time.monotonic()
        process = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", peak.name, *command], stdout=stdout,
                                   stderr=subprocess.PIPE, env=env, cwd=cwd, stdin=stdin)
        _, err = process.communicate()
        elapsed = time.monotonic() - start
        if process.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}): {err.decode()[-2000:]}")
        lines = peak.read().split()
    return elapsed, int(lines[-1]) / 1024


def write_random(path, size, seed=None):
    """Writes `size` new pseudo-random bytes to `path` (a different stream per call unless `seed`)."""
    seed = seed if seed is not None else f"{os.getpid()}-{time.monotonic_ns()}-{path}"
    with open(path, "wb") as out:
        zeros = subprocess.Popen(["head", "-c", str(size), "/dev/zero"], stdout=subprocess.PIPE)
        subprocess.run(["openssl", "enc", "-aes-128-ctr", "-nosalt", "-pbkdf2", "-pass", f"pass:{seed}"],
                       stdin=zeros.stdout, stdout=out, stderr=subprocess.DEVNULL, check=True)
        zeros.stdout.close()
        zeros.wait()
    if os.path.getsize(path) != size:
        raise RuntimeError(f"write_random: {path} has {os.path.getsize(path)} bytes, not {size}")


def random_bytes(size, seed=None):
    """`size` new pseudo-random bytes in memory (see write_random)."""
    seed = seed if seed is not None else f"{os.getpid()}-{time.monotonic_ns()}"
    zeros = subprocess.Popen(["head", "-c", str(size), "/dev/zero"], stdout=subprocess.PIPE)
    out = subprocess.run(["openssl", "enc", "-aes-128-ctr", "-nosalt", "-pbkdf2", "-pass", f"pass:{seed}"],
                         stdin=zeros.stdout, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=True).stdout
    zeros.stdout.close()
    zeros.wait()
    return out


def vm_hwm_mib(pid):
    """Peak RSS (VmHWM) of a live process in MiB, NaN when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def is_mounted(path):
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as handle:
        return any(line.split()[4] == real for line in handle)


class Server:
    """A bucketfs-server on a fresh data folder in `work`, with one write token for namespace
    `namespace`; `token_file` holds the token for the clients. stop() always ends it."""

    def __init__(self, work, token, namespace="bench"):
        self.work = work
        self.token = token
        self.token_file = os.path.join(work, "token")
        with open(os.path.join(work, "tokens"), "w") as handle:
            handle.write(f"{token} write {namespace}\n")
        with open(self.token_file, "w") as handle:
            handle.write(token + "\n")
        os.chmod(self.token_file, 0o600)
        ready = os.path.join(work, "ready")
        self.process = subprocess.Popen([SERVER, "--data", os.path.join(work, "data"), "--tokens",
                                         os.path.join(work, "tokens"), "--ready-file", ready],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(400):
            if os.path.exists(ready) and open(ready).read().strip():
                break
            if self.process.poll() is not None:
                raise RuntimeError("bucketfs-server exited at start")
            time.sleep(0.05)
        self.url = open(ready).read().strip()
        self.common = ["--endpoint", self.url, "--token-file", self.token_file]

    def create(self, bucket):
        subprocess.run([BUCKETFS, "create", bucket, *self.common], check=True, stdout=subprocess.DEVNULL)

    def resolve_url(self, bucket, path):
        return f"{self.url}/buckets/{bucket}/resolve/{path}"

    def curl(self, bucket, path, extra=()):
        """The curl command that downloads `path` of `bucket` through resolve to /dev/null."""
        return ["curl", "-sf", "-o", "/dev/null", "-H", f"Authorization: Bearer {self.token}", *extra,
                self.resolve_url(bucket, path)]

    def request(self, method, target, body=None, headers=None):
        request = urllib.request.Request(self.url + target, data=body, method=method,
                                         headers={"Authorization": f"Bearer {self.token}", **(headers or {})})
        with urllib.request.urlopen(request, timeout=600) as response:
            return response.status, dict(response.headers), response.read()

    def metrics(self):
        """The server's /metrics counters without labels, as {name: float}."""
        _, _, body = self.request("GET", "/metrics")
        values = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#") and "{" not in line:
                name, value = line.split()
                values[name] = float(value)
        return values

    def peak_rss(self):
        return vm_hwm_mib(self.process.pid)

    def stop(self):
        end_process(self.process)


class Mount:
    """One `bucketfs mount` daemon with its own runtime folder; always detached by cleanup()."""

    live = []

    def __init__(self, work, endpoint, source, name, cache_dir, extra=()):
        self.work = work
        self.endpoint = endpoint
        self.source = source
        self.mountpoint = os.path.join(work, "mnt-" + name)
        self.runtime = os.path.join(work, "run-" + name)
        self.cache_dir = cache_dir
        self.extra = list(extra)
        self.pid = None
        self.peak = float("nan")
        os.makedirs(self.mountpoint, exist_ok=True)

    def env(self):
        env = dict(os.environ)
        env["BUCKETFS_RUNTIME_DIR"] = self.runtime
        env.pop("HF_TOKEN", None)
        return env

    def state(self):
        for name in os.listdir(self.runtime) if os.path.isdir(self.runtime) else []:
            if name.endswith(".json"):
                try:
                    with open(os.path.join(self.runtime, name)) as handle:
                        state = json.load(handle)
                except (OSError, ValueError):  # being rewritten
                    continue
                if state.get("mountpoint") == os.path.realpath(self.mountpoint):
                    return state
        return {}

    def start(self):
        Mount.live.append(self)
        result = subprocess.run([BUCKETFS, "mount", "--endpoint", self.endpoint, "--token-file",
                                 os.path.join(self.work, "token"), "--cache-dir", self.cache_dir, *self.extra,
                                 self.source, self.mountpoint], capture_output=True, text=True, env=self.env(),
                                timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"mount failed: {result.stderr}")
        for _ in range(100):
            self.pid = self.state().get("pid")
            if self.pid:
                break
            time.sleep(0.05)
        if not self.pid:
            raise RuntimeError("mount state has no pid")
        return self

    def path(self, *parts):
        return os.path.join(self.mountpoint, *parts)

    def peak_rss(self):
        """The daemon's VmHWM in MiB; after it exited, the last value seen (unmount() watches it)."""
        now = vm_hwm_mib(self.pid)
        if now == now:  # not NaN: the daemon is alive
            self.peak = now if self.peak != self.peak else max(self.peak, now)
        return self.peak

    def pending(self):
        return self.state().get("pending_uploads", 0)

    def wait_committed(self, files, timeout=1800):
        """Waits until the daemon says `files` files are committed; returns whether they are."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            state = self.state()
            if state.get("files_committed", 0) >= files and state.get("pending_uploads", 1) == 0:
                return True
            time.sleep(0.05)
        return False

    def unmount(self, timeout=300):
        if is_mounted(self.mountpoint):
            process = subprocess.Popen([BUCKETFS, "unmount", "--timeout", str(timeout), self.mountpoint],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=self.env())
            end = time.monotonic() + timeout + 30
            while process.poll() is None and time.monotonic() < end:
                self.peak_rss()  # the drain may still allocate
                time.sleep(0.02)
            if process.poll() is None:
                process.kill()
            _, err = process.communicate()
            if process.returncode != 0:
                raise RuntimeError(f"unmount failed: {err}")
        if self in Mount.live:
            Mount.live.remove(self)

    def cleanup(self):
        try:
            if is_mounted(self.mountpoint):
                subprocess.run([BUCKETFS, "unmount", "--timeout", "20", self.mountpoint], env=self.env(),
                               capture_output=True, check=False, timeout=60)
        except subprocess.TimeoutExpired:
            pass
        if is_mounted(self.mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", "-q", self.mountpoint], check=False, capture_output=True)
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self in Mount.live:
            Mount.live.remove(self)


class Passthrough:
    """bench/passthrough serving `source` at a mount point in `work`: the FUSE ceiling, with the
    FUSE settings of bucketfs's mount. Detached by stop()/cleanup()."""

    live = []

    def __init__(self, work, source, name, read_only=False):
        self.mountpoint = os.path.join(work, "mnt-" + name)
        os.makedirs(self.mountpoint, exist_ok=True)
        self.source = source
        self.read_only = read_only
        self.process = None

    def start(self):
        if not os.path.exists(PASSTHROUGH):
            raise RuntimeError(f"{PASSTHROUGH} is missing (configure with -Dbenchmarks=true)")
        Passthrough.live.append(self)
        self.process = subprocess.Popen([PASSTHROUGH, *(["--read-only"] if self.read_only else []), self.source,
                                         self.mountpoint], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(200):
            if is_mounted(self.mountpoint):
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"passthrough failed: {self.process.stderr.read().decode()}")
            time.sleep(0.025)
        raise RuntimeError("passthrough did not mount")

    def path(self, *parts):
        return os.path.join(self.mountpoint, *parts)

    def peak_rss(self):
        return vm_hwm_mib(self.process.pid)

    def stop(self):
        if self.process:
            end_process(self.process)
        if is_mounted(self.mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", "-q", self.mountpoint], check=False, capture_output=True)
        if self in Passthrough.live:
            Passthrough.live.remove(self)

    cleanup = stop


def cleanup_all():
    """Detaches every mount and passthrough these helpers started and still hold."""
    for mount in list(Mount.live):
        mount.cleanup()
    for passthrough in list(Passthrough.live):
        passthrough.cleanup()


def end_process(process):
    """SIGTERM, up to 20 s to exit, then SIGKILL; nothing when it has ended."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def hot_read(path, cap_seconds, limit, passes=3):
    """MiB/s of the median of `passes` sequential reads of the first `limit` bytes of `path`."""
    rates = []
    for _ in range(passes):
        got, seconds = read_seq(path, cap_seconds, limit=limit)
        rates.append(got / MiB / seconds)
    return statistics.median(rates)


def read_seq(path, cap_seconds, limit=None, first_byte=False):
    """Reads `path` from its start in 1 MiB read(2) calls into one reused buffer (what dd bs=1M
    does), until the end, `limit` bytes, or `cap_seconds`; returns (bytes, seconds), and with
    `first_byte` also the seconds from open until the first read returned."""
    buffer = bytearray(MiB)
    view = memoryview(buffer)
    done = 0
    first = None
    start = time.monotonic()
    fd = os.open(path, os.O_RDONLY)
    try:
        while limit is None or done < limit:
            got = os.readv(fd, [view if limit is None else view[:min(MiB, limit - done)]])
            if first is None:
                first = time.monotonic() - start
            if got == 0:
                break
            done += got
            if time.monotonic() - start > cap_seconds:
                break
    finally:
        os.close(fd)
    elapsed = time.monotonic() - start
    return (done, elapsed, first) if first_byte else (done, elapsed)


def resident_mib(path):
    """MiB of `path` in the page cache (fincore), or None."""
    try:
        out = subprocess.run(["fincore", "-b", "-n", "-o", "RES", path], capture_output=True, text=True, check=True)
        return int(out.stdout.split()[0]) / MiB
    except (OSError, subprocess.CalledProcessError, ValueError, IndexError):
        return None


def abort_fuse(mountpoint):
    """Aborts the FUSE connection of `mountpoint` (frees processes stuck on an unanswered request)."""
    try:
        dev = os.stat(mountpoint).st_dev
        with open(f"/sys/fs/fuse/connections/{os.minor(dev)}/abort", "w") as handle:
            handle.write("1")
    except OSError:
        pass


def fio(path, block, seconds, size, mount=None):
    """IOPS and MiB/s of a psync random-read job on `path` for `seconds`; None when the job hangs
    (no answer 60 s after its end: then the mount's FUSE connection is aborted and its daemon
    killed)."""
    process = subprocess.Popen(["fio", "--name=rand", f"--filename={path}", "--readonly", "--rw=randread",
                                f"--bs={block}", "--ioengine=psync", "--direct=0", "--invalidate=1",
                                f"--size={size}", "--time_based", f"--runtime={seconds}", "--output-format=json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = process.communicate(timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        log(f"fio {block} on {path} hung: aborting the FUSE connection")
        if mount:
            abort_fuse(mount.mountpoint)
            pid = getattr(mount, "pid", None) or getattr(getattr(mount, "process", None), "pid", None)
            try:
                if pid:
                    os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process.kill()
        process.communicate()
        return None
    if process.returncode != 0:
        raise RuntimeError(f"fio failed: {err[-2000:]}")
    job = json.loads(out[out.index("{"):])["jobs"][0]["read"]
    return job["iops"], job["bw_bytes"] / MiB


def make_small_files(folder, count, fsync_each=False):
    """Creates `count` files of 1 KiB in `folder` (which must not exist); returns seconds."""
    payload = os.urandom(1024)
    start = time.monotonic()
    os.mkdir(folder)
    for i in range(count):
        fd = os.open(os.path.join(folder, f"f{i:05d}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, payload[:1016] + i.to_bytes(8, "little"))
        if fsync_each:
            os.fsync(fd)
        os.close(fd)
    return time.monotonic() - start


# The npm @huggingface/hub client (pinned in tests/npm): argv url, token, bucket, then the rest.
NPM_UPLOAD = """
import { uploadFiles } from "@huggingface/hub";
import { openAsBlob } from "node:fs";
const [url, token, bucket, path, dest] = process.argv.slice(2);
await uploadFiles({ repo: { type: "bucket", name: bucket }, hubUrl: url, accessToken: token,
  files: [{ path: dest, content: await openAsBlob(path) }] });
"""
NPM_DOWNLOAD = """
import { downloadFile } from "@huggingface/hub";
const [url, token, bucket, path, size] = process.argv.slice(2);
const blob = await downloadFile({ repo: { type: "bucket", name: bucket }, path, hubUrl: url, accessToken: token });
let n = 0; const reader = blob.stream().getReader();
for (;;) { const { done, value } = await reader.read(); if (done) break; n += value.length; }
if (n !== Number(size)) throw new Error("short download " + n);
"""


class NpmScripts:
    """Writes the npm client scripts into tests/npm (where node finds the pinned package) for the
    life of a `with` block; upload()/download() give their commands (run with cwd=NPM_DIR)."""

    def __init__(self):
        self.paths = {}

    def __enter__(self):
        for name, text in (("up", NPM_UPLOAD), ("down", NPM_DOWNLOAD)):
            path = os.path.join(NPM_DIR, f".bench-{name}-{os.getpid()}.mjs")
            with open(path, "w") as handle:
                handle.write(text)
            self.paths[name] = path
        return self

    def upload(self, server, bucket, local, dest):
        return ["node", self.paths["up"], server.url, server.token, bucket, local, dest]

    def download(self, server, bucket, path, size):
        return ["node", self.paths["down"], server.url, server.token, bucket, path, str(size)]

    def __exit__(self, *exc):
        for path in self.paths.values():
            try:
                os.unlink(path)
            except OSError:
                pass
