#!/usr/bin/env python3
"""Runs every integration test (tests/integration/test_*.py) against the
gateway binary, prints the ten slowest tests and one closing summary line:

    integration: N tests, F failures, E errors, S skipped in Ts: OK|FAILED
"""

import argparse
import os
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SLOWEST = 10


class TimedResult(unittest.TextTestResult):
    """A TextTestResult that also records each test's wall time (setUp,
    the test and tearDown; class fixtures are charged to the class)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.times = []  # (seconds, test id)
        self._started = {}

    def startTest(self, test):
        self._started[test.id()] = time.monotonic()
        super().startTest(test)

    def stopTest(self, test):
        super().stopTest(test)
        began = self._started.pop(test.id(), None)
        if began is not None:
            self.times.append((time.monotonic() - began, test.id()))


def flatten(suite):
    for t in suite:
        if isinstance(t, unittest.TestSuite):
            yield from flatten(t)
        else:
            yield t


def print_slowest(times, n=SLOWEST, out=sys.stdout):
    if not times or n <= 0:
        return
    print("slowest %d tests:" % min(n, len(times)), file=out)
    for secs, name in sorted(times, reverse=True)[:n]:
        print("  %6.2fs  %s" % (secs, name), file=out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=None, help="gateway binary (default build/slipstream)")
    ap.add_argument("-k", dest="pattern", default=None, help="only tests whose id contains this")
    ap.add_argument("--slowest", type=int, default=SLOWEST, metavar="N",
                    help="how many of the slowest tests to list (default %d)" % SLOWEST)
    args = ap.parse_args()
    if args.bin:
        os.environ["SLIPSTREAM_BIN"] = os.path.abspath(args.bin)
    sys.path.insert(0, HERE)
    suite = unittest.defaultTestLoader.discover(HERE, pattern="test_*.py", top_level_dir=HERE)
    if args.pattern:
        suite = unittest.TestSuite(t for t in flatten(suite) if args.pattern in t.id())
    start = time.monotonic()
    runner = unittest.TextTestRunner(verbosity=2, stream=sys.stdout, resultclass=TimedResult)
    result = runner.run(suite)
    took = time.monotonic() - start
    print_slowest(result.times, args.slowest)
    bad = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    print("integration: %d tests, %d failures, %d errors, %d skipped in %.1fs: %s" % (
        result.testsRun, len(result.failures), len(result.errors), len(result.skipped), took,
        "FAILED" if bad else "OK"))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
