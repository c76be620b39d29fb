#!/usr/bin/env python3
"""`bucketfs cp` against a real bucketfs-server: dedup of a modified 256 MiB checkpoint (with the
node's dedup index, and with a fresh --cache-dir so only global dedup helps), and copies that
still succeed byte for byte when the server fails one request in ten."""
import os
import random
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "server"))
import http_api_test as api  # noqa: E402
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support"))
import unittest_runner  # noqa: E402

BINARY = os.environ["BUCKETFS_BINARY"]
MiB = 1 << 20
SIZE = int(os.environ.get("BUCKETFS_DEDUP_TEST_MIB", "256")) * MiB


def metric(server, name):
    text = api.request("GET", "/metrics", server=server).body.decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return int(float(line.split()[1]))
    raise AssertionError(f"metric {name} missing")


class CopyTest(unittest.TestCase):
    def start(self, *extra):
        server = api.Server("cp", extra_args=extra)
        self.addCleanup(server.cleanup)
        server.start()
        work = tempfile.mkdtemp(prefix="bucketfs-cp-test-")
        self.addCleanup(subprocess.run, ["rm", "-rf", work], check=False)
        with open(os.path.join(work, "token"), "w") as handle:
            handle.write(api.ALICE_W + "\n")
        return server, work

    def cp(self, server, work, source, destination, cache="cache"):
        result = subprocess.run(
            [BINARY, "cp", source, destination, "--endpoint", server.base, "--token-file", os.path.join(work, "token"),
             "--cache-dir", os.path.join(work, cache)], capture_output=True, timeout=600, check=False)
        self.assertEqual(result.returncode, 0, result.stderr.decode())
        return result

    def test_modified_checkpoint_sends_only_changed_chunks(self):
        server, work = self.start()
        api.create_bucket("alice/ckpt", server=server)
        # Seeded data: global dedup can only find a copy through chunks the store indexes (a
        # file's first chunk, here changed by the insertion, and chunks whose hash is eligible);
        # about one random 256 MiB file in 55 has none, so the data is fixed, not drawn anew.
        seeded = random.Random(20261123)
        base = bytearray(b"".join(seeded.randbytes(MiB) for _ in range(SIZE // MiB)))
        with open(os.path.join(work, "step-1.bin"), "wb") as handle:
            handle.write(base)

        def variant(seed):
            data = bytearray(base)
            rng = random.Random(seed)
            for k in range(3):  # three 1 MiB regions rewritten
                start = (k + 1) * SIZE // 4 + rng.randrange(MiB)
                data[start:start + MiB] = rng.randbytes(MiB)
            data[1000:1000] = rng.randbytes(100)  # 100 bytes inserted near the start
            return data

        self.cp(server, work, os.path.join(work, "step-1.bin"), "hf://buckets/alice/ckpt/step-1.bin")
        for name, cache, seed in (("step-2.bin", "cache", 2), ("step-3.bin", "fresh-cache", 3)):
            data = variant(seed)
            with open(os.path.join(work, name), "wb") as handle:
                handle.write(data)
            before = metric(server, "bucketfs_xorb_bytes_received_total")
            self.cp(server, work, os.path.join(work, name), f"hf://buckets/alice/ckpt/{name}", cache=cache)
            sent = metric(server, "bucketfs_xorb_bytes_received_total") - before
            print(f"{name} ({cache}): {sent} new xorb bytes, {100 * sent / len(data):.2f}% of {len(data)}",
                  file=sys.stderr)
            self.assertLessEqual(sent, 0.05 * len(data), f"{name} with {cache} sent {sent} bytes")
            self.assertGreater(sent, 3 * MiB, "the rewritten regions must be uploaded")
            # And it reads back whole.
            self.cp(server, work, f"hf://buckets/alice/ckpt/{name}", os.path.join(work, name + ".back"),
                    cache="download-cache")
            with open(os.path.join(work, name + ".back"), "rb") as handle:
                self.assertTrue(handle.read() == bytes(data), f"{name} differs after download")

    def test_copies_survive_a_server_failing_one_request_in_ten(self):
        server, work = self.start("--inject-faults", "rate=0.1,seed=7")
        for attempt in range(20):  # bucket creation itself may meet an injected fault
            r = api.request("POST", "/api/buckets/alice/faulty", {"private": False}, token=api.ALICE_W, server=server)
            if r.status == 200:
                break
        self.assertEqual(r.status, 200, r)
        payloads = {f"f{i}.bin": os.urandom(size) for i, size in enumerate((0, 1, 70_000, 5 * MiB, 30 * MiB))}
        for name, data in payloads.items():
            with open(os.path.join(work, name), "wb") as handle:
                handle.write(data)
            self.cp(server, work, os.path.join(work, name), f"hf://buckets/alice/faulty/{name}")
            self.cp(server, work, f"hf://buckets/alice/faulty/{name}", os.path.join(work, name + ".back"),
                    cache=f"cache-{name}")
            with open(os.path.join(work, name + ".back"), "rb") as handle:
                self.assertTrue(handle.read() == data, f"{name} differs")
        faults = api.request("GET", "/metrics", server=server).body.decode().count('route="injected_fault"')
        self.assertGreater(faults, 0, "no fault was injected; the test proves nothing")


if __name__ == "__main__":
    sys.exit(unittest_runner.run(__name__))
