#!/usr/bin/env python3
"""bucketfs-server survives kill -9 at any instant: what it acknowledged is still there after a
restart, nothing half-written is visible, and SIGTERM stops it cleanly.

Uses the HTTP helpers of http_api_test.py and the npm client's captured uploads."""
import json
import os
import random
import signal
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import http_api_test as api  # noqa: E402

SEED = int(os.environ.get("BUCKETFS_CRASH_SEED", str(int(time.time()))))
ROUNDS = int(os.environ.get("BUCKETFS_CRASH_ROUNDS", "4"))


def setUpModule():
    with open(os.path.join(api.NPM_DATA, "manifest.json")) as handle:
        api.MANIFEST = json.load(handle)
    for case in api.MANIFEST["cases"]:
        api.CASES[case["name"]] = case


def xorb_files():
    folder = os.path.join(api.NPM_DATA, "xorbs")
    return sorted(name[:-5] for name in os.listdir(folder) if name.endswith(".xorb"))


def leftover_temporaries(server):
    found = []
    for root, _, files in os.walk(os.path.join(server.data, "xorbs")):
        found += [os.path.join(root, f) for f in files if f.startswith(".tmp-")]
    return found


class CrashTest(unittest.TestCase):
    def setUp(self):
        self.server = api.Server("crash")
        self.addCleanup(self.server.cleanup)
        self.server.start()

    def kill_and_restart(self):
        self.server.process.send_signal(signal.SIGKILL)
        self.server.process.wait(timeout=10)
        self.server.log.close()
        self.server.log = None
        os.unlink(self.server.ready)
        self.server.start()

    def test_acknowledged_commit_survives_kill_9(self):
        api.create_bucket("alice/crash", server=self.server)
        case = api.upload_case("alice/crash", "random_1000000_seed0", server=self.server)
        self.kill_and_restart()
        path = case["files"][0]["path"]
        got = api.request("GET", f"/buckets/alice/crash/resolve/{path}", server=self.server)
        self.assertEqual(got.status, 200, got)
        self.assertEqual(got.body, api.input_of(path))
        listed = api.request("GET", "/api/buckets/alice/crash/tree", token=api.ALICE_W, server=self.server).json()
        self.assertEqual([e["path"] for e in listed], [path])

    def test_kill_9_during_uploads_loses_nothing_acknowledged(self):
        """Uploads run in threads while the server is killed at a random instant; every xorb and
        batch the server answered 200 must be there after the restart, whole."""
        rng = random.Random(SEED)
        api.create_bucket("alice/storm", server=self.server)
        for round_number in range(ROUNDS):
            cas = api.xet_token("alice/storm", api.ALICE_W, server=self.server)
            acknowledged_xorbs, acknowledged_paths = set(), set()
            stop = threading.Event()

            def uploader(worker):
                names = xorb_files()
                k = 0
                while not stop.is_set():
                    name = names[(worker + k) % len(names)]
                    k += 1
                    try:
                        r = api.upload_xorb(name, cas, server=self.server)
                        if r.status == 200:
                            acknowledged_xorbs.add(name)
                        path = f"r{round_number}/w{worker}/f{k}"
                        r = api.batch("alice/storm", [api.add_line(path, api.ZERO_HASH)], server=self.server)
                        if r.status == 200:
                            acknowledged_paths.add(path)
                    except (OSError, api.http.client.HTTPException, AssertionError):
                        return  # the server went away mid-request

            threads = [threading.Thread(target=uploader, args=(w,)) for w in range(4)]
            for thread in threads:
                thread.start()
            time.sleep(rng.uniform(0.05, 0.6))
            self.server.process.send_signal(signal.SIGKILL)
            self.server.process.wait(timeout=10)
            stop.set()
            for thread in threads:
                thread.join(30)
            self.server.log.close()
            self.server.log = None
            os.unlink(self.server.ready)
            self.server.start()
            self.assertEqual(leftover_temporaries(self.server), [], "temporary xorb files visible after restart")
            cas = api.xet_token("alice/storm", api.ALICE_W, server=self.server)
            for name in acknowledged_xorbs:
                r = api.request("HEAD", f"/v1/xorbs/default/{name}", token=cas, server=self.server)
                self.assertEqual(r.status, 200, f"acknowledged xorb {name} lost (seed {SEED})")
                size = os.path.getsize(os.path.join(api.NPM_DATA, "xorbs", name + ".xorb"))
                self.assertEqual(int(r.header("Content-Length")), size)
                stored = os.path.join(self.server.data, "xorbs", name[:2], name)
                with open(stored, "rb") as a, open(os.path.join(api.NPM_DATA, "xorbs", name + ".xorb"), "rb") as b:
                    self.assertEqual(a.read(), b.read(), f"stored xorb {name} differs (seed {SEED})")
            infos = api.request("POST", "/api/buckets/alice/storm/paths-info",
                                {"paths": sorted(acknowledged_paths)}, token=api.ALICE_W, server=self.server).json()
            self.assertEqual({i["path"] for i in infos}, acknowledged_paths, f"acknowledged entries lost (seed {SEED})")
            total = api.request("GET", "/api/buckets/alice/storm", token=api.ALICE_W, server=self.server).json()
            listed = api.request("GET", "/api/buckets/alice/storm/tree?limit=10000", token=api.ALICE_W,
                                 server=self.server).json()
            self.assertEqual(total["totalFiles"], len(listed), "bucket totals disagree with its entries")

    def test_sigterm_stops_cleanly(self):
        self.server.process.send_signal(signal.SIGTERM)
        code = self.server.process.wait(timeout=15)
        self.assertEqual(code, 0, self.server.log_text())
        self.assertIn("SIGTERM received, stopping", self.server.log_text())


def main():
    suite = unittest.defaultTestLoader.loadTestsFromModule(sys.modules[__name__])
    result = unittest.TextTestRunner(stream=sys.stderr, verbosity=2).run(suite)
    failed = len(result.failures) + len(result.errors)
    print(f"crash test seed {SEED} (BUCKETFS_CRASH_SEED to repeat, BUCKETFS_CRASH_ROUNDS={ROUNDS} for more)",
          file=sys.stderr)
    print(f"{result.testsRun - failed} passed, {failed} failed", flush=True)
    return 0 if failed == 0 and result.testsRun > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
