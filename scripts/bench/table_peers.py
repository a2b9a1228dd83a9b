"""Warm path at the machine's limits (issue 14): warm full download and
`wrk -c50` on warm random 64 KiB ranges, next to the peers and the machine's
own sendfile ceiling, all in the same run.

Rows (each a fresh instance; the cached ones are filled first by one cold
full download of the main bench file through the capped relay):
  sendfile ceiling  nginx (worker_processes auto, sendfile on, access_log off)
                    serving the file straight from the page cache, no relay:
                    what this machine can push to one curl / to wrk
  nginx slice 1m    the main table's nginx proxy_cache configuration
  Varnish           varnishd (malloc storage, file size × 2 + 256 MiB; VCL sets
                    the origin's Referer and User-Agent in vcl_backend_fetch,
                    TTL 1 d), the relay as backend
  slipstream c=16   the main table's configuration
Columns: fill MiB/s (the cold download that filled the cache), warm full
MiB/s (best of two plain curl downloads, SHA-256 checked), wrk req/s and p99
(wrk -t2 -c50 on random 64 KiB ranges, spot-checked bytes), peak RSS (VmHWM
summed over the instance's processes).
"""

import os
import shutil
import signal
import subprocess

import bench
import tablelib as tl

MiB = bench.MiB


class Varnish:
    name = "varnish"
    client_headers = []
    cache = True

    def __init__(self, relay, base, storage):
        self.relay, self.base, self.storage = relay, base, storage
        self.proc = None

    def start(self):
        self.dir = bench.mkdtemp("varnish-", self.base)
        self.port = bench.harness.free_port()
        vcl = os.path.join(self.dir, "bench.vcl")
        with open(vcl, "w") as f:
            f.write("""vcl 4.1;
backend relay { .host = "127.0.0.1"; .port = "%d"; .connect_timeout = 10s; .first_byte_timeout = 60s; }
sub vcl_backend_fetch {
  set bereq.http.Referer = "%s";
  set bereq.http.User-Agent = "%s";
}
sub vcl_backend_response { set beresp.ttl = 1d; }
sub vcl_deliver { if (obj.hits > 0) { set resp.http.X-Cache = "HIT"; } else { set resp.http.X-Cache = "MISS"; } }
""" % (self.relay.port, bench.REFERER, bench.USER_AGENT))
        self.log = os.path.join(self.dir, "varnishd.log")
        argv = ["varnishd", "-F", "-n", os.path.join(self.dir, "n"), "-a", "127.0.0.1:%d" % self.port, "-f", vcl,
                "-s", "malloc,%dM" % (self.storage // MiB), "-T", "none", "-p", "thread_pool_min=50"]
        if os.geteuid() == 0:
            argv += ["-j", "none"]  # stay root: the bench's private temp dirs are 0700
        logf = open(self.log, "wb")
        self.proc = bench.spawn(argv, stdout=logf, stderr=subprocess.STDOUT)
        logf.close()
        bench.wait_port(self.port, self.proc, 30, "varnishd")
        self.sampler = bench.RssSampler(self.proc.pid)

    def stop(self):
        if not self.proc:
            return None
        hwm = bench.group_hwm(self.proc.pid)
        self.sampler.stop()
        bench.kill_group(self.proc, signal.SIGTERM, wait=10)
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)
        return dict(hwm=hwm, anon=self.sampler.peak_anon, file=self.sampler.peak_file)

    def url(self, path=bench.FILE_NAME):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def diagnostics(self, n=8):
        try:
            with open(self.log, "rb") as f:
                lines = f.read().decode(errors="replace").splitlines()
        except OSError:
            return ""
        return "varnishd log tail:\n" + "\n".join(lines[-n:]) if lines else ""


class Ceiling(bench.Direct):
    """nginx with a worker per core serving the file from the page cache, no relay."""
    name = "sendfile ceiling"
    cache = False

    def __init__(self, b):
        self.b = b
        self.relay = b.relay  # for the wrk note only
        self.proc = None

    def start(self):
        self.origin = bench.Origin(self.b.www, self.b.tmp, workers="auto", access_log=False)
        self.proc, self.port = self.origin.proc, self.origin.port
        self.sampler = bench.RssSampler(self.proc.pid)

    def stop(self):
        if not self.proc:
            return None
        hwm = bench.group_hwm(self.proc.pid)
        self.sampler.stop()
        bench.kill_group(self.proc)
        self.proc = None
        return dict(hwm=hwm)


def row(b, key, srv):
    res = {}
    b.relay.wait_idle(10)
    srv.start()
    try:
        if srv.cache:
            res["fill"], _ = tl.full_download(b, srv, bench.FILE_NAME, b.size, b.sha)
            b.relay.wait_quiet(0.5, 30)
        else:
            tl.full_download(b, srv, bench.FILE_NAME, b.size, b.sha)  # page cache warm
        d0 = b.relay.down()
        res["warm"] = max(tl.full_download(b, srv, bench.FILE_NAME, b.size, b.sha)[0] for _ in range(2))
        if srv.cache and b.relay.down() > d0:
            res["warm_origin"] = (b.relay.down() - d0) / MiB
        b.results["peers " + key] = {}
        b.wrk("peers " + key, srv)
        res["rps"] = b.results["peers " + key].get("wrk_rps")
        res["p99"] = b.results["peers " + key].get("wrk_p99")
    except Exception as e:  # noqa: BLE001
        res.setdefault("warm", b.fail("peers", key, str(e), srv))
    finally:
        mem = srv.stop()
        if mem:
            res["rss"] = mem["hwm"] / MiB
    return res


def run(b):
    cache_max = max(4096 * MiB, 4 * b.size)
    rows = [("ceiling", "sendfile ceiling: nginx from page cache, no relay", Ceiling(b)),
            ("nginx", "nginx proxy_cache slice 1m + lock", bench.NginxCache(b.relay, b.tmp, cache_max))]
    if shutil.which("varnishd"):
        rows.append(("varnish", "Varnish %s malloc" % varnish_version(),
                     Varnish(b.relay, b.tmp, 2 * b.size + 256 * MiB)))
    rows.append(("slipstream", "slipstream connections=16", bench.Slipstream(b.bin_copy, b.relay, b.tmp, cache_max)))
    res, names = {}, {}
    for key, name, srv in rows:
        bench.log("---- peers %s" % key)
        names[key] = name
        res[key] = row(b, key, srv)
    if not shutil.which("varnishd"):
        names["varnish"], res["varnish"] = "Varnish", {"warm": "n/a (varnishd not installed: scripts/deps.sh bench)"}
    return report(b, names, res)


def varnish_version():
    try:
        p = subprocess.run(["varnishd", "-V"], capture_output=True, text=True, timeout=10)
        return (p.stdout + p.stderr).split("varnish-")[1].split()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


def report(b, names, res):
    a = b.args
    L = ["%d MiB file; warm full = best of two plain curl downloads; wrk -t%d -c%d -d%ds on random 64 KiB ranges "
         "(half 64 KiB-aligned); cached rows filled through the relay at R = %g MiB/s per connection." % (
             b.size // MiB, a.wrk_threads, a.wrk_conns, a.wrk_duration, a.rate), ""]
    hdr = ["row", "fill MiB/s", "warm full MiB/s", "wrk req/s", "wrk p99 ms", "peak RSS MiB"]
    rows = []
    for key in ("ceiling", "nginx", "varnish", "slipstream"):
        r = res.get(key, {})
        rows.append([names.get(key, key), tl.fmt(r.get("fill", "—")), tl.fmt(r.get("warm")), tl.fmt(r.get("rps"), "%.0f"),
                     tl.fmt(r.get("p99"), "%.2f"), tl.fmt(r.get("rss"))])
    L += tl.table(hdr, rows)
    L.append("")
    for key, r in res.items():
        if tl.num(r.get("warm_origin")):
            L.append("- %s: the warm downloads still took %.2f MiB from the origin" % (names[key], r["warm_origin"]))
    s = res.get("slipstream", {})
    peers = [res.get(k, {}) for k in ("nginx", "varnish")]
    best_warm = max([p["warm"] for p in peers if tl.num(p.get("warm"))], default="n/a")
    best_rps = max([p["rps"] for p in peers if tl.num(p.get("rps"))], default="n/a")
    best_p99 = min([p["p99"] for p in peers if tl.num(p.get("p99"))], default="n/a")
    ceil = res.get("ceiling", {}).get("warm")
    out = ["Targets (issue 14), slipstream this run:"]
    tl.target(out, "warm full ≥ best peer (nginx, Varnish)", s.get("warm"), best_warm, lambda g, x: g >= x, " MiB/s")
    tl.target(out, "warm full ≥ 0.9 × the sendfile ceiling", s.get("warm"), 0.9 * ceil if tl.num(ceil) else ceil,
              lambda g, x: g >= x, " MiB/s")
    tl.target(out, "wrk req/s ≥ best peer", s.get("rps"), best_rps, lambda g, x: g >= x, " req/s", "%.0f")
    tl.target(out, "wrk p99 ≤ best peer's", s.get("p99"), best_p99, lambda g, x: g <= x, " ms", "%.2f")
    L += out
    return "Warm path at the machine's limits (issue 14)", L
