#!/usr/bin/env python3
"""Runs every integration test (tests/integration/test_*.py) against the
gateway binary and prints one closing summary line."""

import argparse
import os
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=None, help="gateway binary (default build/slipstream)")
    ap.add_argument("-k", dest="pattern", default=None, help="only tests whose id contains this")
    args = ap.parse_args()
    if args.bin:
        os.environ["SLIPSTREAM_BIN"] = os.path.abspath(args.bin)
    sys.path.insert(0, HERE)
    suite = unittest.defaultTestLoader.discover(HERE, pattern="test_*.py", top_level_dir=HERE)
    if args.pattern:
        def flatten(s):
            for t in s:
                if isinstance(t, unittest.TestSuite):
                    yield from flatten(t)
                else:
                    yield t
        suite = unittest.TestSuite(t for t in flatten(suite) if args.pattern in t.id())
    start = time.monotonic()
    result = unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(suite)
    took = time.monotonic() - start
    bad = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    print("integration: %d tests, %d failures, %d errors, %d skipped in %.1fs: %s" % (
        result.testsRun, len(result.failures), len(result.errors), len(result.skipped), took,
        "FAILED" if bad else "OK"))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
