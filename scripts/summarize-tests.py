#!/usr/bin/env python3
"""Prints one closing line 'tests: N passed, N failed' over meson test logs.

Counts the individual cases inside each meson test: GoogleTest's '[  PASSED  ] N tests.' and
'[  FAILED  ] N tests,' lines, and the 'N passed, N failed' line our script tests print. A meson
test that failed without such a line counts as one failure."""
import json
import re
import sys

passed = failed = 0
for log in sys.argv[1:]:
    with open(log) as f:
        for line in f:
            entry = json.loads(line)
            out = entry.get("stdout", "") or ""
            ok = entry.get("result") == "OK"
            gtest_pass = re.findall(r"^\[  PASSED  \] (\d+) tests?\.", out, re.M)
            gtest_fail = re.findall(r"^\[  FAILED  \] (\d+) tests?,", out, re.M)
            plain = re.findall(r"^(\d+) passed, (\d+) failed", out, re.M)
            # node --test (TAP reporter): "# pass N" and "# fail N".
            node_pass = re.findall(r"^# pass (\d+)$", out, re.M)
            node_fail = re.findall(r"^# fail (\d+)$", out, re.M)
            if node_pass or node_fail:
                plain += [(p, f) for p, f in zip(node_pass or ["0"], node_fail or ["0"])]
            if gtest_pass or gtest_fail:
                passed += sum(map(int, gtest_pass))
                failed += sum(map(int, gtest_fail))
            elif plain:
                passed += sum(int(p) for p, _ in plain)
                failed += sum(int(f) for _, f in plain)
            else:
                passed += 1 if ok else 0
            if not ok and not (gtest_fail or any(int(f) for _, f in plain)):
                failed += 1
print(f"tests: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
