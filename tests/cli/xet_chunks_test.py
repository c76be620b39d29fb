#!/usr/bin/env python3
"""`bucketfs xet chunks FILE|-` prints xet-core's chunks and file hash for vector inputs.

Builds three inputs exactly as tests/data/xet-vectors.json describes them, runs the real
binary on a file and on stdin, and compares every line with the vectors."""
import json
import os
import subprocess
import sys
import tempfile

BINARY = os.environ["BUCKETFS_BINARY"]
DATA = os.environ["BUCKETFS_TEST_DATA"]


def splitmix(seed, n):
    mask = (1 << 64) - 1
    state = seed
    out = bytearray()
    while len(out) < n:
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        z ^= z >> 31
        out += z.to_bytes(8, "little")
    return bytes(out[:n])


INPUTS = {
    "random_1000000_seed0": splitmix(0, 1000000),
    "const59_1000000": bytes([59]) * 1000000,
    "random_3000000": splitmix(2, 3000000),
    "empty": b"",
    "one_byte": b"a",
}


def expected_lines(case):
    lines = [f"{length} {digest}" for length, digest in case["chunks"]]
    lines.append(f"file {case['file_hash']}")
    return lines


def main():
    with open(os.path.join(DATA, "xet-vectors.json")) as f:
        cases = {c["name"]: c for c in json.load(f)["cases"]}
    failures = 0
    checks = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in INPUTS.items():
            path = os.path.join(tmp, name)
            with open(path, "wb") as f:
                f.write(data)
            want = expected_lines(cases[name])
            from_file = subprocess.run([BINARY, "xet", "chunks", path], capture_output=True, check=False)
            from_stdin = subprocess.run([BINARY, "xet", "chunks", "-"], input=data, capture_output=True, check=False)
            for how, result in (("file", from_file), ("stdin", from_stdin)):
                checks += 1
                got = result.stdout.decode().splitlines()
                if result.returncode != 0 or got != want:
                    failures += 1
                    print(f"FAIL {name} via {how}: exit {result.returncode}, stderr {result.stderr.decode()!r}")
                    print(f"  want {want[:3]}... ({len(want)} lines), got {got[:3]}... ({len(got)} lines)")
        # A missing file: one clear line naming the path, non-zero exit, nothing on stdout.
        missing = os.path.join(tmp, "does-not-exist")
        result = subprocess.run([BINARY, "xet", "chunks", missing], capture_output=True, check=False)
        checks += 1
        err = result.stderr.decode()
        if result.returncode == 0 or missing not in err or result.stdout or err.count("\n") != 1:
            failures += 1
            print(f"FAIL missing file: exit {result.returncode}, stderr {err!r}")
    print(f"{checks - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
