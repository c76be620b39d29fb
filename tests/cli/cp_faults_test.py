#!/usr/bin/env python3
"""`bucketfs cp` up and down against a bucketfs-server that injects every fault kind (issue 6):
500/503/429, connection resets, stalls past the client's stall timeout, truncated bodies and
flipped bytes in xorb ranges, at 15% of requests. Every copy must succeed byte for byte; the
faults injected are printed by kind."""
import os
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "server"))
import http_api_test as api  # noqa: E402
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support"))
import unittest_runner  # noqa: E402

BINARY = os.environ["BUCKETFS_BINARY"]
MiB = 1 << 20
STALL_TIMEOUT_MS = 4000  # the client's stall timeout for this test; the server stalls 5 s


def faults(server):
    out = {}
    for line in api.request("GET", "/metrics", server=server).body.decode().splitlines():
        if line.startswith("bucketfs_injected_faults_total{"):
            out[line.split('kind="', 1)[1].split('"', 1)[0]] = int(float(line.split()[1]))
    return out


class CopyFaultsTest(unittest.TestCase):
    def test_copies_survive_every_fault_kind(self):
        spec = "rate=0.15,seed=3,kinds=status+reset+stall+truncate+flip,stall_ms=5000"
        server = api.Server("cp-faults", extra_args=["--inject-faults", spec])
        self.addCleanup(server.cleanup)
        server.start()
        work = tempfile.mkdtemp(prefix="bucketfs-cp-faults-")
        self.addCleanup(subprocess.run, ["rm", "-rf", work], check=False)
        token = os.path.join(work, "token")
        with open(token, "w") as handle:
            handle.write(api.ALICE_W + "\n")
        for _ in range(30):  # bucket creation itself may meet an injected fault
            try:
                r = api.request("POST", "/api/buckets/alice/faulty", {"private": False}, token=api.ALICE_W,
                                server=server)
            except OSError:
                continue
            if r.status == 200:
                break
        self.assertEqual(r.status, 200, r)
        env = dict(os.environ, BUCKETFS_HTTP_STALL_TIMEOUT_MS=str(STALL_TIMEOUT_MS))

        def cp(source, destination, cache):
            result = subprocess.run(
                [BINARY, "cp", source, destination, "--endpoint", server.base, "--token-file", token,
                 "--cache-dir", os.path.join(work, cache)], capture_output=True, timeout=600, check=False, env=env)
            self.assertEqual(result.returncode, 0, result.stderr.decode())

        sizes = (0, 1, 70_000, 900_000, 5 * MiB, 17 * MiB + 3, 30 * MiB)
        payloads = {f"f{i}.bin": os.urandom(size) for i, size in enumerate(sizes)}
        # A modified copy: its download reads parts of the first file's xorbs (unverifiable ranges).
        variant = bytearray(payloads["f6.bin"])
        variant[10 * MiB:11 * MiB] = os.urandom(MiB)
        payloads["f6-variant.bin"] = bytes(variant)
        started = time.monotonic()
        for name, data in payloads.items():
            with open(os.path.join(work, name), "wb") as handle:
                handle.write(data)
            cp(os.path.join(work, name), f"hf://buckets/alice/faulty/{name}", "cache-up")
            cp(f"hf://buckets/alice/faulty/{name}", os.path.join(work, name + ".back"), f"cache-{name}")
            with open(os.path.join(work, name + ".back"), "rb") as handle:
                self.assertTrue(handle.read() == data, f"{name} differs")
        counts = faults(server)
        print("FIGURES cp under faults (%s): %d files (%d bytes) uploaded and downloaded in %.1f s, all "
              "identical; faults injected: %d (%s)"
              % (spec, len(payloads), sum(map(len, payloads.values())), time.monotonic() - started,
                 sum(counts.values()), ", ".join("%s %d" % kv for kv in sorted(counts.items()))),
              file=sys.stderr, flush=True)
        for kind in ("status", "reset", "truncate"):
            self.assertGreater(counts.get(kind, 0), 0, "no %s fault was injected: %s" % (kind, counts))

        # Flipped bytes at a high rate: each download succeeds with the right bytes or fails
        # cleanly (non-zero exit, no file written), never writes wrong bytes.
        server.stop()
        server.extra_args = ["--inject-faults", "rate=0.4,seed=9,kinds=flip"]
        os.unlink(server.ready)
        server.start()
        ok = failed = 0
        for round_ in range(2):
            for name, data in payloads.items():
                target = os.path.join(work, "%s.flip%d" % (name, round_))
                result = subprocess.run(
                    [BINARY, "cp", f"hf://buckets/alice/faulty/{name}", target, "--endpoint", server.base,
                     "--token-file", token, "--cache-dir", os.path.join(work, "flip-cache-%s-%d" % (name, round_))],
                    capture_output=True, timeout=600, check=False, env=env)
                if result.returncode == 0:
                    with open(target, "rb") as handle:
                        self.assertTrue(handle.read() == data, f"{name}: WRONG BYTES under flips")
                    ok += 1
                else:
                    self.assertFalse(os.path.exists(target), f"{name}: a failed copy left a file")
                    failed += 1
        flips = faults(server).get("flip", 0)
        self.assertGreater(flips, 0)
        print("FIGURES cp downloads with flips at 40%% of xorb range GETs: %d flipped responses; %d copies "
              "identical, %d failed cleanly, 0 wrong" % (flips, ok, failed), file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(unittest_runner.run(__name__))
