#!/usr/bin/env python3
"""Runs every integration test (tests/integration/test_*.py) against the
gateway binary, prints the ten slowest tests and one closing summary line:

    integration: N tests, F failures, E errors, S skipped in Ts: OK|FAILED

Tests run in parallel worker processes (-j, default the number of cores):
every fixture is per test or per class (free ports, temp dirs), so tests do
not interfere. The unit of work is one test, or one whole class when the
class has class-level fixtures (setUpClass). The longest units of the
previous run (their times are kept in build/integration-times.json) start
first. Each unit's output (its verbose "... ok" lines and figures) is
printed in one piece when it ends, so parallel output never interleaves;
failures and errors are printed together at the end, before the slowest
tests and the summary line.
"""

import argparse
import io
import json
import multiprocessing
import os
import sys
import time
import traceback
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SLOWEST = 10
TIMES = os.path.join(ROOT, "build", "integration-times.json")


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
        for report in SanitizerCheck.failures():
            try:
                raise AssertionError("sanitizer report:\n" + report)
            except AssertionError:
                self.addFailure(test, sys.exc_info())
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


def has_class_fixtures(cls):
    return any(getattr(cls, n).__func__ is not getattr(unittest.TestCase, n).__func__
               for n in ("setUpClass", "tearDownClass"))


def group_key(test):
    """module.Class for a test whose class has class-level fixtures (the
    class runs as one unit), else the test's own id."""
    if has_class_fixtures(type(test)):
        return test.id().rsplit(".", 1)[0]
    return test.id()


def groups_of(tests):
    """[(group_key, [tests in discovery order])], in discovery order."""
    out, index = [], {}
    for t in tests:
        k = group_key(t)
        if k not in index:
            index[k] = len(out)
            out.append((k, []))
        out[index[k]][1].append(t)
    return out


GROUPS = []  # set before the workers fork: they run GROUPS[i] by index


def run_group(i):
    """Runs GROUPS[i] with stdout/stderr captured. Returns a picklable
    summary: output, counts, failures/errors as (description, traceback),
    per-test times and the group's wall time."""
    name, tests = GROUPS[i]
    buf = io.StringIO()
    saved = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = buf
    began = time.monotonic()
    try:
        result = TimedResult(unittest.runner._WritelnDecorator(buf), True, 2)
        suite = unittest.TestSuite(tests)
        try:
            suite(result)
        except Exception:  # noqa: BLE001 - a broken runner must not lose the other groups
            result.errors.append((name, traceback.format_exc()))
    finally:
        sys.stdout, sys.stderr = saved
    describe = result.getDescription
    return dict(
        name=name, output=buf.getvalue(), run=result.testsRun,
        failures=[(describe(t) if hasattr(t, "id") else str(t), tb) for t, tb in result.failures],
        errors=[(describe(t) if hasattr(t, "id") else str(t), tb) for t, tb in result.errors],
        skipped=len(result.skipped), unexpected=len(result.unexpectedSuccesses),
        times=result.times, wall=time.monotonic() - began)


def load_times():
    try:
        with open(TIMES) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def save_times(results, previous):
    if not os.path.isdir(os.path.dirname(TIMES)):
        return
    times = dict(previous)
    for r in results:
        times[r["name"]] = round(r["wall"], 2)
    try:
        with open(TIMES + ".tmp", "w") as f:
            json.dump(times, f, indent=0, sort_keys=True)
        os.replace(TIMES + ".tmp", TIMES)
    except OSError:
        pass


def print_failures(results, out=sys.stdout):
    sep1, sep2 = "=" * 70, "-" * 70
    for r in results:
        for kind, items in (("ERROR", r["errors"]), ("FAIL", r["failures"])):
            for desc, tb in items:
                print(sep1, file=out)
                print("%s: %s" % (kind, desc), file=out)
                print(sep2, file=out)
                print(tb, file=out)


def print_slowest(times, n=SLOWEST, out=sys.stdout):
    if not times or n <= 0:
        return
    print("slowest %d tests:" % min(n, len(times)), file=out)
    for secs, name in sorted(times, reverse=True)[:n]:
        print("  %6.2fs  %s" % (secs, name), file=out)


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


class SanitizerCheck:
    """Fails a test during which a sanitized gateway (or CLI run) reported
    anything, even at exit (a leak) or in a process no test looked at. With
    parallel jobs a report may be charged to a test of another job running
    at the same time: the run fails either way, and the report names the
    process."""
    san_dir = os.environ.get("SLIP_SAN_LOG_DIR")
    seen = set()

    @classmethod
    def failures(cls):
        return sanitizer_reports(cls.san_dir, cls.seen)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=None, help="gateway binary (default build/slipstream)")
    ap.add_argument("-k", dest="pattern", default=None, help="only tests whose id contains this")
    ap.add_argument("-j", dest="jobs", type=int, default=os.cpu_count() or 1,
                    help="test classes run in this many processes at once (default: the cores, %(default)s)")
    ap.add_argument("--slowest", type=int, default=SLOWEST, metavar="N",
                    help="how many of the slowest tests to list (default %d)" % SLOWEST)
    args = ap.parse_args()
    if args.bin:
        os.environ["SLIPSTREAM_BIN"] = os.path.abspath(args.bin)
    sys.path.insert(0, HERE)
    suite = unittest.defaultTestLoader.discover(HERE, pattern="test_*.py", top_level_dir=HERE)
    tests = list(flatten(suite))
    if args.pattern:
        tests = [t for t in tests if args.pattern in t.id()]
    GROUPS[:] = groups_of(tests)
    previous = load_times()
    # Longest first (known ones by their last time, unknown ones first of all
    # since they may be long), so that no long class starts last.
    order = sorted(range(len(GROUPS)), key=lambda i: -previous.get(GROUPS[i][0], 1e9))
    jobs = max(1, min(args.jobs, len(GROUPS)))
    start = time.monotonic()
    # Reports already there are not this run's (workers inherit the set).
    SanitizerCheck.seen = set(os.path.join(SanitizerCheck.san_dir, n) for n in os.listdir(SanitizerCheck.san_dir)) \
        if SanitizerCheck.san_dir and os.path.isdir(SanitizerCheck.san_dir) else set()
    results = []

    def report(r):
        results.append(r)
        sys.stdout.write(r["output"])
        sys.stdout.flush()

    if jobs == 1:
        for i in order:
            report(run_group(i))
    else:
        # fork: the workers inherit the loaded tests (GROUPS) and run them by
        # index; one class at a time each, the next one as soon as it is free.
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            for r in pool.imap_unordered(run_group, order):
                report(r)
    took = time.monotonic() - start
    save_times(results, previous)
    print()
    print_failures(results)
    times = [t for r in results for t in r["times"]]
    print_slowest(times, args.slowest)
    run = sum(r["run"] for r in results)
    failures = sum(len(r["failures"]) for r in results)
    errors = sum(len(r["errors"]) for r in results)
    skipped = sum(r["skipped"] for r in results)
    bad = failures + errors + sum(r["unexpected"] for r in results)
    print("integration: %d tests, %d failures, %d errors, %d skipped in %.1fs: %s" % (
        run, failures, errors, skipped, took, "FAILED" if bad else "OK"))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
