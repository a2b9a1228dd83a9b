#!/usr/bin/env python3
"""Sweeps block_size, connections and read_ahead through the benchmark's
per-connection rate-limited relay and prints what the defaults were chosen
from: cold full download speed by one plain curl, cold 1 MiB seek at 60 %
(total time, origin bytes) and the gateway's peak RSS.

    python3 scripts/bench/defaults.py [--size 128] [--rate 16] [--rtt-ms 0]
"""

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

MiB = 1 << 20


def run_one(args, origin, relay, data_dir, block, conns, ahead):
    s = bench.Slipstream(args.bin, relay, args.tmp, 4096 * MiB,
                         mount_extra="connections = %d\nread_ahead = %s" % (conns, ahead),
                         cache_extra="block_size = %s" % block)
    s.start()
    try:
        relay.wait_idle()
        d0 = relay.down()
        out = os.path.join(s.dir, "out.bin")
        r = subprocess.run(["curl", "-sS", "-o", out, "-w", "%{time_total}", s.url()],
                           capture_output=True, text=True, timeout=600)
        full = args.size / float(r.stdout)
        ok = bench.sha256_file(out) == args.sha
        os.unlink(out)
        s.stop()
        s.start()  # cold again for the seek
        relay.wait_idle()
        size = args.size * MiB
        a = int(size * 0.6)
        d1 = relay.down()
        r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-r", "%d-%d" % (a, a + MiB - 1), "-w",
                            "%{time_starttransfer} %{time_total}", s.url()],
                           capture_output=True, text=True, timeout=60)
        ttfb, total = (float(x) * 1000 for x in r.stdout.split())
        time.sleep(1.0)
        seek_origin = (relay.down() - d1) / MiB
        rss = s.stop()["hwm"] / MiB
        return dict(block=block, conns=conns, ahead=ahead, full=full, ok=ok, ttfb=ttfb, total=total,
                    origin=seek_origin, rss=rss, fill=(d1 - d0) / MiB)
    finally:
        if s.proc:
            s.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(bench.ROOT, "build", "slipstream"))
    ap.add_argument("--relay", default=os.path.join(bench.ROOT, "build", "ratelimit_relay"))
    ap.add_argument("--size", type=int, default=128, help="MiB")
    ap.add_argument("--rate", type=float, default=16.0, help="MiB/s per connection")
    ap.add_argument("--rtt-ms", type=int, default=0, help="origin round trip held by the relay (--delay-ms)")
    ap.add_argument("--tmp", default=None)
    args = ap.parse_args()
    args.tmp = args.tmp or bench.mkdtemp("defaults-")
    www = os.path.join(args.tmp, "www")
    os.makedirs(www, exist_ok=True)
    path = os.path.join(www, bench.FILE_NAME.lstrip("/"))
    with open(path, "wb") as f:
        f.write(os.urandom(args.size * MiB))
    args.sha = bench.sha256_file(path)
    origin = bench.Origin(www, args.tmp)
    relay = bench.Relay(args.relay, origin.port, args.rate * MiB, args.tmp, delay_ms=args.rtt_ms)
    grid = [("256K", 16, "64M"), ("1M", 16, "64M"), ("4M", 16, "64M"),
            ("1M", 4, "64M"), ("1M", 8, "64M"), ("1M", 32, "64M"),
            ("1M", 16, "16M"), ("1M", 16, "32M"), ("1M", 16, "128M")]
    rows = []
    try:
        for block, conns, ahead in grid:
            rows.append(run_one(args, origin, relay, www, block, conns, ahead))
            r = rows[-1]
            print("  %s %d %s: %.0f MiB/s seek %.0f ms" % (block, conns, ahead, r["full"], r["total"]), file=sys.stderr)
    finally:
        bench.cleanup_all()
    print("defaults sweep, %s, %s, %d MiB file, R = %.0f MiB/s per connection" % (
        datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M UTC"), " ".join(platform.uname()[0:3:2]),
        args.size, args.rate))
    print("| block_size | connections | read_ahead | cold full MiB/s | bytes ok | cold seek TTFB ms | cold seek total ms | origin MiB for the seek | peak RSS MiB |")
    print("|---|---:|---|---:|---|---:|---:|---:|---:|")
    for r in rows:
        print("| %s | %d | %s | %.1f | %s | %.1f | %.1f | %.2f | %.1f |" % (
            r["block"], r["conns"], r["ahead"], r["full"], "yes" if r["ok"] else "NO", r["ttfb"], r["total"],
            r["origin"], r["rss"]))


if __name__ == "__main__":
    main()
