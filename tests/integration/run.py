#!/usr/bin/env python3
"""Runs every integration test (tests/integration/test_*.py) against the
gateway binary and prints one closing summary line."""

import argparse
import os
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))


def sanitizer_reports(d, seen):
    """Report files ASan/UBSan/LSan wrote into `d` (their log_path) since
    `seen`; each one is a failure of the test that was running."""
    if not d or not os.path.isdir(d):
        return []
    out = []
    for name in sorted(os.listdir(d)):
        path = os.path.join(d, name)
        if path in seen:
            continue
        seen.add(path)
        with open(path, errors="replace") as f:
            text = f.read()
        if text.strip():
            out.append("%s:\n%s" % (path, text[:20000]))
    return out


class Result(unittest.TextTestResult):
    """Fails a test during which a sanitized gateway (or CLI run) reported
    anything, even at exit (a leak) or in a process no test looked at."""
    san_dir = os.environ.get("SLIP_SAN_LOG_DIR")
    seen = set()

    def stopTest(self, test):
        for report in sanitizer_reports(self.san_dir, self.seen):
            try:
                raise AssertionError("sanitizer report:\n" + report)
            except AssertionError:
                self.addFailure(test, sys.exc_info())
        super().stopTest(test)


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
    Result.seen = set(os.path.join(Result.san_dir, n) for n in os.listdir(Result.san_dir)) \
        if Result.san_dir and os.path.isdir(Result.san_dir) else set()
    result = unittest.TextTestRunner(verbosity=2, stream=sys.stdout, resultclass=Result).run(suite)
    took = time.monotonic() - start
    bad = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    print("integration: %d tests, %d failures, %d errors, %d skipped in %.1fs: %s" % (
        result.testsRun, len(result.failures), len(result.errors), len(result.skipped), took,
        "FAILED" if bad else "OK"))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
