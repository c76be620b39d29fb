#!/usr/bin/env python3
"""The checkpoint workflow end to end (issue 8): examples/checkpoint_trainer.py (plain-Python
backend) checkpoints into a mount (step-N.tmp/ renamed to step-N/, last K kept), is killed with
SIGKILL mid-run, and resumes on a fresh mount with an empty cache dir. It must end with the same
weights as an uninterrupted run, the bucket must hold exactly the last K checkpoints, and the
test prints the bytes the trainer wrote against the xorb bytes the store received."""
import os
import re
import signal
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import everyday_common as common  # noqa: E402
from everyday_common import harness, MiB  # noqa: E402
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support"))
import unittest_runner  # noqa: E402

TRAINER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples", "checkpoint_trainer.py")
ARGS = ["--steps", "60", "--save-every", "5", "--keep", "3", "--seed", "7", "--backend", "python"]


def written(output):
    return sum(int(m.group(1)) for m in re.finditer(r"^saved step-\d+: (\d+) bytes", output, re.M))


def digest(output):
    match = re.search(r"weights sha256 ([0-9a-f]{64})", output)
    assert match, output[-2000:]
    return match.group(1)


class CheckpointExampleTest(unittest.TestCase):
    def test_killed_trainer_resumes_on_a_fresh_mount(self):
        server, workspace, bucket = common.setup(self, "trainer")
        reference = subprocess.run([sys.executable, TRAINER, "--dir", workspace.path("reference"), *ARGS],
                                   capture_output=True, text=True, timeout=120, check=True)
        expected = digest(reference.stdout)

        received_before = harness.metric(server, "bucketfs_xorb_bytes_received_total")
        first = harness.new_mount(self, server, workspace, bucket, name="first")
        first.start()
        run_dir = first.path("run-1")
        log_path = workspace.path("trainer-first.log")
        with open(log_path, "w") as log:
            process = subprocess.Popen([sys.executable, TRAINER, "--dir", run_dir, "--step-sleep", "0.1", *ARGS],
                                       stdout=log, stderr=subprocess.STDOUT)
        self.addCleanup(lambda: process.poll() is None and process.kill())
        deadline = time.monotonic() + 90
        while not os.path.isdir(os.path.join(run_dir, "step-25")):
            self.assertIsNone(process.poll(), "the trainer ended early")
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.01)
        time.sleep(0.33)  # somewhere in the next steps, maybe inside a save
        self.assertIsNone(process.poll(), "the trainer ended before the kill")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        with open(log_path) as log:
            output = log.read()
        self.assertEqual(process.returncode, -signal.SIGKILL, output)
        self.assertNotIn("done:", output)
        first_written = written(output)
        result = first.unmount()
        self.assertEqual(result.returncode, 0, result.stderr + first.log())

        second = harness.new_mount(self, server, workspace, bucket, name="second")
        self.assertFalse(os.path.exists(second.cache_dir))
        second.start()
        resumed = subprocess.run([sys.executable, TRAINER, "--dir", second.path("run-1"), *ARGS],
                                 capture_output=True, text=True, timeout=120)
        self.assertEqual(resumed.returncode, 0, resumed.stderr)
        match = re.search(r"^resumed from step-(\d+)$", resumed.stdout, re.M)
        self.assertTrue(match, resumed.stdout)
        self.assertGreaterEqual(int(match.group(1)), 25)
        self.assertEqual(digest(resumed.stdout), expected, "the resumed run did not end with the same weights")
        result = second.unmount()
        self.assertEqual(result.returncode, 0, result.stderr + second.log())

        files = common.tree(server, bucket)
        steps = sorted({path.split("/")[1] for path in files})
        self.assertEqual(steps, ["step-50", "step-55", "step-60"])
        self.assertEqual(len(files), 9)
        total_written = first_written + written(resumed.stdout)
        received = harness.metric(server, "bucketfs_xorb_bytes_received_total") - received_before
        print("checkpoint trainer: %.1f MiB written by the trainer (%d checkpoints), %.1f MiB of xorbs sent to "
              "the store (%.1f%%); resumed from step-%s on a fresh mount with an empty cache"
              % (total_written / MiB, len(re.findall("^saved", output + resumed.stdout, re.M)), received / MiB,
                 100.0 * received / max(total_written, 1), match.group(1)), flush=True)
        self.assertLess(received, total_written)


if __name__ == "__main__":
    sys.exit(unittest_runner.run(__name__))
