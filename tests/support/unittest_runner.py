"""The runner of every Python test file: runs the module's tests (or the names given on the
command line), verbosely on stderr, then prints the one line scripts/summarize-tests.py counts,
`N passed, N failed`, and returns the exit status for meson."""
import sys
import unittest


def run(module_name, names=None):
    module = sys.modules[module_name]
    names = sys.argv[1:] if names is None else names
    loader = unittest.defaultTestLoader
    suite = loader.loadTestsFromNames(names, module) if names else loader.loadTestsFromModule(module)
    result = unittest.TextTestRunner(stream=sys.stderr, verbosity=2).run(suite)
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    passed = result.testsRun - failed - len(result.skipped) - len(result.expectedFailures)
    sys.stderr.flush()
    print(f"{max(passed, 0)} passed, {failed} failed", flush=True)
    return 0 if failed == 0 and result.testsRun > 0 else 1
