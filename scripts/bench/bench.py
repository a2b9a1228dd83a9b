#!/usr/bin/env python3
"""slipstream benchmark against its peers (issues 3, 9, 11, 14). A benchmark, not a test.

Setup, all on 127.0.0.1:
  origin  nginx serving a random file, demanding a Referer and a User-Agent
          (valid_referers + UA check); no limit_rate.
  relay   build/ratelimit_relay in front of it: caps EACH TCP connection at R
          bytes/s origin->client (token bucket), like a cloud drive; optionally
          holds every answer for a round trip (--delay-ms) and counts requests
          in flight per path. Its byte counter is "what the origin sent".

Tables (--tables, default all; each one documents its rows and columns in
scripts/bench/table_NAME.py, the main one here):
  main    issue 3, below
  player  issue 11: origin 40 ms away; ffprobe cold/warm of a 1 GiB moov-at-end
          MP4, ffmpeg first frame after -ss 10/50/90 %, the seek storm (with and
          without the delay), adaptive connections (capped and uncapped origin)
  https   issue 9: the relay in front of a TLS origin with a bench CA; cold full,
          seek, warm-hit latency during a cold 16-connection HTTPS open
  peers   issue 14: warm full and wrk next to nginx, Varnish and the machine's
          sendfile ceiling
  fast    issue 14: uncapped relay, cold full by one client: direct, nginx,
          slipstream cache off / on, and the cache on a throttled slow disk
  rss     issue 14: RSS over 60 s with 200 slow clients + 2000 idle connections

Main table rows (servers under test, each with the relay as upstream):
  direct      curl with the right headers straight to the relay
  aria2c      aria2c -x16 -s16 -k1M with the headers (download columns only)
  nginx       proxy_cache + slice 1m + proxy_cache_lock on, headers injected
  slipstream  connections = 16, http mount with header lines, cache on
Columns: cold / warm full download by a plain curl, a cold and a warm 1 MiB
range at 60 % of the file, 20 clients together on a cold file, wrk -c50 on warm
random 64 KiB ranges, peak RSS of the server. Every cold measurement starts from
a fresh server with an empty cache; every full download's SHA-256 is checked.

    python3 scripts/bench/bench.py --bin build/slipstream --relay build/ratelimit_relay
        [--tables main,player,https,peers,fast,rss] [--rate MiB/s] [--size MiB]
        [--quick] [--out FILE] [--rows a,b,...] [--media-size MiB] [--rtt-ms N]
        [--slow-disk-mibs N] [--rss-seconds N]

Prints the machine, then each table as markdown with the issues' targets as
PASS/FAIL lines, and notes. Python standard library only; the slow-disk rows
need root (losetup, mount, cgroup block throttle) and say n/a otherwise.
"""

import argparse
import atexit
import datetime
import hashlib
import http.client
import os
import random
import resource
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
import harness  # noqa: E402  (REFERER, USER_AGENT, nginx log format, free_port, wait_until)

if __name__ == "__main__":
    sys.modules["bench"] = sys.modules["__main__"]  # the table_*.py modules share this one's state

MiB = 1 << 20
REFERER = harness.REFERER
USER_AGENT = harness.USER_AGENT
ORIGIN_HEADERS = [("Referer", REFERER), ("User-Agent", USER_AGENT)]
FILE_NAME = "/bench.bin"
ROWS = ["direct", "aria2c", "nginx", "slipstream"]
# --tables: the main table (issue 3) and the ones of issues 9, 11 and 14 (scripts/bench/table_NAME.py)
TABLES = {
    "main": "issue 3: cold, warm, seek, 20 clients, wrk, RSS",
    "player": "Player table (issue 11): 40 ms away, ffprobe, ffmpeg -ss, seek storm, adaptive connections",
    "https": "HTTPS origin (issue 9): cold full, seek, warm hits during a cold 16-connection open",
    "peers": "Warm path at the machine's limits (issue 14): sendfile ceiling, nginx, Varnish, slipstream",
    "fast": "Fast origin (issue 14): uncapped relay, cache on/off, normal and slow disk",
    "rss": "Memory (issue 14): 200 slow clients on different cold files + 2000 idle connections",
}


def log(msg):
    sys.stderr.write("[bench %s] %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stderr.flush()


# --------------------------------------------------------------------- process bookkeeping

_procs = []  # Popen objects started in their own session (pgid == pid)
_dirs = []


def spawn(argv, **kw):
    p = subprocess.Popen(argv, start_new_session=True, **kw)
    _procs.append(p)
    return p


def kill_group(p, sig=signal.SIGTERM, wait=5.0):
    """Stops a process we started and everything in its process group."""
    if p.poll() is None:
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            pass
        try:
            p.wait(wait)
        except subprocess.TimeoutExpired:
            pass
    # Whatever is left in the group (nginx workers, a stuck child): SIGKILL.
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        p.wait(5)
    except subprocess.TimeoutExpired:
        pass
    if p in _procs:
        _procs.remove(p)


def mkdtemp(prefix, base=None):
    d = tempfile.mkdtemp(prefix=prefix, dir=base)
    _dirs.append(d)
    return d


def cleanup_all():
    for p in list(_procs):
        kill_group(p, signal.SIGKILL, 2)
    for d in list(_dirs):
        shutil.rmtree(d, ignore_errors=True)
        _dirs.remove(d)


def _on_signal(signum, _frame):
    raise SystemExit("bench: interrupted by signal %d" % signum)


def group_pids(pgid):
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % pid) as f:
                st = f.read()
            if int(st[st.rindex(")") + 2:].split()[2]) == pgid:  # pgrp
                pids.append(int(pid))
        except (OSError, ValueError):
            continue
    return pids


def group_status(pgid, keys=("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem")):
    """/proc/PID/status memory fields (bytes) summed over a process group."""
    total = dict.fromkeys(keys, 0)
    for pid in group_pids(pgid):
        try:
            with open("/proc/%d/status" % pid) as f:
                for line in f:
                    k = line.split(":", 1)[0]
                    if k in total:
                        total[k] += int(line.split()[1]) * 1024
        except (OSError, ValueError):
            continue
    return total


def group_hwm(pgid):
    """Sum of VmHWM (bytes) over the live processes of a process group."""
    return group_status(pgid)["VmHWM"]


class RssSampler(threading.Thread):
    """Samples a process group's RssAnon / RssFile every 50 ms; keeps the peaks
    (VmHWM alone cannot tell heap from mapped files)."""

    def __init__(self, pgid):
        super().__init__(daemon=True)
        self.pgid = pgid
        self.peak_anon = self.peak_file = 0
        self.stopped = threading.Event()
        self.start()

    def run(self):
        while not self.stopped.is_set():
            st = group_status(self.pgid)
            self.peak_anon = max(self.peak_anon, st["RssAnon"] + st["RssShmem"])
            self.peak_file = max(self.peak_file, st["RssFile"])
            self.stopped.wait(0.05)

    def stop(self):
        self.stopped.set()
        self.join(2)


def cpu_ticks_of(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            st = f.read()
        fields = st[st.rindex(")") + 2:].split()
        return int(fields[11]) + int(fields[12])  # utime + stime
    except (OSError, ValueError):
        return 0


def group_cpu_seconds(pgid):
    return sum(cpu_ticks_of(pid) for pid in group_pids(pgid)) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds():
    """CPU seconds the whole machine spent busy (all cores) since boot."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wait_port(port, proc, timeout, what):
    def up():
        if proc.poll() is not None:
            raise RuntimeError("%s exited with %s" % (what, proc.returncode))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False
    harness.wait_until(up, timeout, what=what)


# --------------------------------------------------------------------- origin and relay


class Origin:
    """nginx serving `root`, 403 without the right Referer and User-Agent."""

    def __init__(self, root, base, tls=None, extra_http="", workers=1, access_log=True):
        """tls = (certificate file, key file): the origin speaks HTTPS (TLS 1.2/1.3).
        workers: 1 (one process, no master) or "auto" (a worker per core, as for a ceiling)."""
        self.dir = mkdtemp("origin-", base)
        self.port = harness.free_port()
        ssl = ""
        if tls:
            ssl = ("ssl_certificate %s; ssl_certificate_key %s; ssl_protocols TLSv1.2 TLSv1.3; "
                   "ssl_session_cache shared:SSL:10m; ssl_session_timeout 1h;" % tls)
        self.log = os.path.join(self.dir, "access.log")
        conf = """
daemon off;
master_process %(master)s;
worker_processes %(workers)s;
%(user)s
pid %(d)s/nginx.pid;
error_log %(d)s/error.log warn;
events { worker_connections 4096; }
http {
  %(fmt)s
  access_log %(log)s;
  sendfile on;
  keepalive_requests 1000000; keepalive_timeout 120s;
  client_body_temp_path %(d)s/tmp; proxy_temp_path %(d)s/tmp;
  fastcgi_temp_path %(d)s/tmp; uwsgi_temp_path %(d)s/tmp; scgi_temp_path %(d)s/tmp;
  default_type application/octet-stream;
  %(extra)s
  server {
    listen 127.0.0.1:%(port)d%(ssl_flag)s backlog=4096;
    %(ssl)s
    root %(root)s;
    location / {
      valid_referers origin.example;
      if ($invalid_referer) { return 403; }
      if ($http_user_agent != "%(ua)s") { return 403; }
    }
  }
}
""" % dict(d=self.dir, fmt=harness.NGINX_LOG_FORMAT, log=self.log + " slip" if access_log else "off",
           port=self.port, root=root, ua=USER_AGENT,
           ssl=ssl, ssl_flag=" ssl" if tls else "", extra=extra_http, workers=workers,
           master="off" if workers == 1 else "on", user="user root;" if os.geteuid() == 0 and workers != 1 else "")
        os.makedirs(os.path.join(self.dir, "tmp"))
        cf = os.path.join(self.dir, "nginx.conf")
        with open(cf, "w") as f:
            f.write(conf)
        self.proc = spawn([harness.NGINX, "-p", self.dir, "-e", os.path.join(self.dir, "error.log"), "-c", cf],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, self.proc, 10, "origin nginx")


class Relay:
    """build/ratelimit_relay in front of an origin port: `rate` bytes/s per
    connection (0 = no cap), `delay_ms` round trip held before each answer."""

    def __init__(self, binary, upstream_port, rate, base, delay_ms=0):
        self.dir = mkdtemp("relay-", base)
        self.log = os.path.join(self.dir, "conns.log")
        self.rate, self.delay_ms = rate, delay_ms
        self.proc = spawn([binary, "--upstream", str(upstream_port), "--rate", str(int(rate)),
                           "--delay-ms", str(int(delay_ms)), "--log", self.log],
                          stdout=subprocess.PIPE, stderr=open(os.path.join(self.dir, "stderr"), "wb"), text=True)
        self.port = self.stats_port = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (self.port is None or self.stats_port is None):
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("relay exited: %s" % self.proc.poll())
            m = re.match(r"(port|stats) (\d+)", line)
            if m and m.group(1) == "port":
                self.port = int(m.group(2))
            elif m:
                self.stats_port = int(m.group(2))

    def command(self, cmd):
        with socket.create_connection(("127.0.0.1", self.stats_port), timeout=5) as s:
            s.sendall(cmd.encode() + b"\n")
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        return data.decode()

    def stats(self):
        """down, up, accepted, active, requests, inflight, max_active, max_inflight."""
        return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", self.command("stats"))}

    def paths(self):
        """path -> {requests, inflight, max_inflight, down} for every path requested so far."""
        out = {}
        for line in self.command("paths").splitlines():
            m = re.match(r"path=(\S*) (.*)", line)
            if m:
                out[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
        return out

    def reset_peaks(self):
        """max_active / max_inflight (global and per path) restart from now."""
        self.command("reset")

    def down(self):
        return self.stats()["down"]

    def wait_idle(self, timeout=10):
        """Until no relayed connection is open (previous server gone)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.stats()["active"] == 0:
                return True
            time.sleep(0.05)
        return False

    def wait_quiet(self, quiet=1.0, timeout=30):
        """Until the down counter has not moved for `quiet` seconds; returns it."""
        last, since = self.down(), time.monotonic()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.1)
            d = self.down()
            if d != last:
                last, since = d, time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
        return last


# --------------------------------------------------------------------- servers under test


class Direct:
    """No server: the client talks to the relay with the right headers."""
    name = "direct curl"
    client_headers = ORIGIN_HEADERS
    cache = False

    def __init__(self, relay):
        self.relay = relay
        self.port = relay.port

    def start(self):
        pass

    def stop(self):
        return None

    def diagnostics(self):
        return ""

    def url(self, path=FILE_NAME):
        return "http://127.0.0.1:%d%s" % (self.port, path)


class OriginDirect(Direct):
    """Calibration: straight to the origin nginx, no relay, no cap."""
    name = "origin, uncapped"

    def __init__(self, origin):
        self.port = origin.port


class NginxCache:
    name = "nginx slice 1m"
    client_headers = []
    cache = True

    def __init__(self, relay, base, cache_max, cache_parent=None, ca_file=None, extra_http=""):
        """ca_file: the upstream speaks TLS (relay in front of an HTTPS origin), verified against it.
        cache_parent: where the cache directory goes (default: inside the instance's temp dir)."""
        self.relay, self.base, self.cache_max = relay, base, cache_max
        self.cache_parent, self.ca_file, self.extra_http = cache_parent, ca_file, extra_http
        self.proc = None

    def start(self):
        self.dir = mkdtemp("nginx-cache-", self.base)
        cache_dir = mkdtemp("nginx-cache-", self.cache_parent) if self.cache_parent else os.path.join(self.dir, "cache")
        self.cache_dir = cache_dir
        scheme, tls = "http", ""
        if self.ca_file:
            scheme = "https"
            tls = ("proxy_ssl_trusted_certificate %s; proxy_ssl_verify on; proxy_ssl_name localhost; "
                   "proxy_ssl_session_reuse on;" % self.ca_file)
        self.port = harness.free_port()
        # Workers keep our uid (the temp dirs are private, 0700).
        user = "user root;" if os.geteuid() == 0 else ""
        conf = """
daemon off;
%(user)s
worker_processes auto;
pid %(d)s/nginx.pid;
error_log %(d)s/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  keepalive_requests 1000000;
  %(extra)s
  client_body_temp_path %(d)s/tmp; proxy_temp_path %(d)s/tmp;
  fastcgi_temp_path %(d)s/tmp; uwsgi_temp_path %(d)s/tmp; scgi_temp_path %(d)s/tmp;
  proxy_cache_path %(cache)s levels=1:2 keys_zone=bench:16m max_size=%(max)dm inactive=1d use_temp_path=off;
  upstream relay { server 127.0.0.1:%(relay)d; keepalive 32; }
  server {
    listen 127.0.0.1:%(port)d backlog=4096;
    location / {
      slice 1m;
      proxy_cache bench;
      proxy_cache_key $uri$is_args$args$slice_range;
      proxy_set_header Range $slice_range;
      proxy_cache_valid 200 206 1d;
      proxy_cache_lock on;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Referer "%(ref)s";
      proxy_set_header User-Agent "%(ua)s";
      %(tls)s
      proxy_pass %(scheme)s://relay;
      add_header X-Cache $upstream_cache_status;
    }
  }
}
""" % dict(d=self.dir, user=user, max=self.cache_max // MiB, relay=self.relay.port, port=self.port, ref=REFERER,
           ua=USER_AGENT, extra=self.extra_http, cache=cache_dir, tls=tls, scheme=scheme)
        os.makedirs(os.path.join(self.dir, "tmp"))
        cf = os.path.join(self.dir, "nginx.conf")
        with open(cf, "w") as f:
            f.write(conf)
        self.proc = spawn([harness.NGINX, "-p", self.dir, "-e", os.path.join(self.dir, "error.log"), "-c", cf],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, self.proc, 10, "nginx cache")
        self.sampler = RssSampler(self.proc.pid)

    def stop(self):
        """Stops it (cache dir removed); returns peak RSS: VmHWM summed over
        master + workers + cache manager/loader."""
        if not self.proc:
            return None
        hwm = group_hwm(self.proc.pid)
        self.sampler.stop()
        kill_group(self.proc, signal.SIGTERM)
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)
        shutil.rmtree(self.cache_dir, ignore_errors=True)
        return dict(hwm=hwm, anon=self.sampler.peak_anon, file=self.sampler.peak_file)

    def url(self, path=FILE_NAME):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def diagnostics(self, n=8):
        try:
            with open(os.path.join(self.dir, "error.log"), "rb") as f:
                lines = f.read().decode(errors="replace").splitlines()
        except OSError:
            return ""
        return "nginx error.log tail:\n" + "\n".join(lines[-n:]) if lines else ""


class Slipstream:
    name = "slipstream c=16"
    client_headers = []
    cache = True

    def __init__(self, binary, relay, base, cache_max, mount_extra="", cache_extra="", server_extra="",
                 cache_parent=None, scheme="http", cache_on=True):
        """scheme https: the relay fronts a TLS origin (pass ca_file = ... in mount_extra).
        cache_parent: where the cache directory goes (default: inside the instance's temp dir)."""
        self.binary, self.relay, self.base, self.cache_max = binary, relay, base, cache_max
        self.server_extra, self.cache_parent, self.scheme = server_extra, cache_parent, scheme
        self.cache_on = cache_on
        # scripts/bench/defaults.py sweeps these; the benchmark row uses connections = 16
        self.mount_extra = mount_extra or "connections = 16"
        self.cache_extra = cache_extra
        self.proc = None
        self.err_copies = []  # stderr of previous instances (for the notes)

    def start(self):
        self.dir = mkdtemp("slipstream-", self.base)
        self.cache_dir = (mkdtemp("slip-cache-", self.cache_parent) if self.cache_parent
                          else os.path.join(self.dir, "cache"))
        self.err = os.path.join(self.dir, "stderr.log")
        ini = """[server]
listen = 127.0.0.1:0
access_log = off
log_level = info
shutdown_grace = 1s
%(server_extra)s

[cache]
dir = %(cache_dir)s
max_size = %(max)dM
%(cache_extra)s

[mount bench]
prefix = /bench
source = http
base_url = %(scheme)s://127.0.0.1:%(relay)d
header = Referer: %(ref)s
header = User-Agent: %(ua)s
delivery = proxy
cache = %(cache_on)s
%(mount_extra)s
""" % dict(d=self.dir, max=self.cache_max // MiB, relay=self.relay.port, ref=REFERER, ua=USER_AGENT,
           mount_extra=self.mount_extra, cache_extra=self.cache_extra, server_extra=self.server_extra,
           cache_dir=self.cache_dir, scheme=self.scheme, cache_on="on" if self.cache_on else "off")
        self.ini = os.path.join(self.dir, "slipstream.ini")
        with open(self.ini, "w") as f:
            f.write(ini)
        errf = open(self.err, "wb")
        self.proc = spawn([self.binary, "run", "-c", self.ini], stdout=subprocess.DEVNULL, stderr=errf)
        errf.close()

        def listening():
            if self.proc.poll() is not None:
                raise RuntimeError("slipstream exited with %s:\n%s" % (self.proc.returncode, self.stderr_tail()))
            with open(self.err, "rb") as f:
                return re.search(rb"event=listening address=127\.0\.0\.1:(\d+)", f.read())
        self.port = int(harness.wait_until(listening, 15, what="slipstream to listen").group(1))
        self.sampler = RssSampler(self.proc.pid)

    def stderr_text(self):
        try:
            with open(self.err, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def stderr_tail(self, n=15):
        return "\n".join(self.stderr_text().splitlines()[-n:])

    def diagnostics(self):
        return "gateway stderr tail:\n" + self.stderr_tail() if self.proc else ""

    def stop(self):
        if not self.proc:
            return None
        hwm = group_hwm(self.proc.pid)
        self.sampler.stop()
        alive = self.proc.poll() is None
        kill_group(self.proc, signal.SIGTERM, wait=10)
        self.err_copies.append((alive, self.proc.returncode, self.stderr_text()))
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)
        shutil.rmtree(self.cache_dir, ignore_errors=True)
        return dict(hwm=hwm, anon=self.sampler.peak_anon, file=self.sampler.peak_file)

    def url(self, path=FILE_NAME):
        return "http://127.0.0.1:%d/p/bench%s" % (self.port, path)  # /p/ = always proxied


# --------------------------------------------------------------------- clients


def curl_argv(url, out, headers=(), rng=None, hdr_file=None):
    argv = ["curl", "-sS", "-o", out, "-w", "%{http_code} %{size_download} %{time_starttransfer} %{time_total}"]
    for k, v in headers:
        argv += ["-H", "%s: %s" % (k, v)]
    if rng:
        argv += ["-r", "%d-%d" % rng]
    if hdr_file:
        argv += ["-D", hdr_file]
    return argv + [url]


def parse_curl(stdout):
    code, size, ttfb, total = stdout.split()
    return dict(code=int(code), size=int(size), ttfb=float(ttfb), total=float(total))


def header_value(hdr_file, name):
    try:
        with open(hdr_file, "rb") as f:
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    vals = re.findall(r"(?im)^%s:\s*(.*?)\s*$" % re.escape(name), text)
    return vals[-1] if vals else None


def curl_run(url, out, headers=(), rng=None, hdr_file=None, timeout=120):
    p = subprocess.run(curl_argv(url, out, headers, rng, hdr_file), capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError("curl exit %d: %s" % (p.returncode, p.stderr.strip()[:300]))
    return parse_curl(p.stdout)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(4 * MiB)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


class Bench:
    def __init__(self, args):
        self.args = args
        self.size = int(args.size * MiB)
        self.rate = args.rate * MiB
        self.results = {}  # row -> col -> number, "n/a", "skip" or "ERRn" (n indexes self.errors)
        self.notes = []
        self.errors = []
        self.phase_rss = {}  # row -> {phase: {hwm, anon, file}} in bytes
        self.sections = []  # (title, markdown lines) of the tables after the main one
        self.hwm_marks = {}  # row -> [(step, VmHWM bytes)]

    # -- helpers

    def err(self, row, col, msg, srv=None):
        diag = srv.diagnostics() if srv is not None else ""
        if diag:
            msg += "\n    " + diag.replace("\n", "\n    ")
        self.errors.append("%s / %s: %s" % (row, col, msg))
        self.results[row][col] = "ERR%d" % len(self.errors)
        log("ERROR %s / %s: %s" % (row, col, msg))

    def full_timeout(self):
        return max(60.0, 4.0 * self.size / self.rate + 30)

    def expected_range(self, start, end):
        with open(self.file, "rb") as f:
            f.seek(start)
            return f.read(end - start + 1)

    def full_download(self, row, col, srv):
        out = os.path.join(self.outdir, "full.bin")
        hf = os.path.join(self.outdir, "full.hdr")
        try:
            c0 = self.cpu_snap(srv)
            r = curl_run(srv.url(), out, srv.client_headers, hdr_file=hf, timeout=self.full_timeout())
            self.cpu_note(row, col.replace("_", " "), srv, c0)
            xc = header_value(hf, "X-Cache")
            if r["code"] != 200 or r["size"] != self.size:
                raise RuntimeError("status %d, %d bytes of %d" % (r["code"], r["size"], self.size))
            digest = sha256_file(out)
            if digest != self.sha:
                raise RuntimeError("SHA-256 mismatch (%s…)" % digest[:16])
            mibs = self.size / MiB / r["total"]
            self.results[row][col] = mibs
            log("%s %s: %.1f MiB/s (%.2fs, TTFB %.0f ms, X-Cache %s)" % (row, col, mibs, r["total"], r["ttfb"] * 1e3, xc))
            if xc:
                self.notes.append("%s %s: X-Cache %s" % (row, col, xc))
            return True
        except Exception as e:  # noqa: BLE001 - every failure becomes a cell note
            self.err(row, col, str(e), srv)
            return False
        finally:
            for p in (out, hf):
                if os.path.exists(p):
                    os.unlink(p)

    def range_request(self, row, kind, srv, watch_origin):
        start = self.size * 6 // 10
        end = start + MiB - 1
        out = os.path.join(self.outdir, "range.bin")
        hf = os.path.join(self.outdir, "range.hdr")
        try:
            d0 = self.relay.down()
            t0 = time.monotonic()
            p = subprocess.Popen(curl_argv(srv.url(), out, srv.client_headers, (start, end), hf),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            origin_1s = None
            if watch_origin:
                time.sleep(max(0.0, t0 + 1.0 - time.monotonic()))
                origin_1s = self.relay.down() - d0
            try:
                so, se = p.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()
                raise RuntimeError("range request still running after 60 s")
            if p.returncode != 0:
                raise RuntimeError("curl exit %d: %s" % (p.returncode, se.strip()[:300]))
            r = parse_curl(so)
            xc = header_value(hf, "X-Cache")
            with open(out, "rb") as f:
                body = f.read()
            if r["code"] != 206 or body != self.expected_range(start, end):
                raise RuntimeError("status %d, %d bytes, content %s" % (
                    r["code"], len(body), "right" if body == self.expected_range(start, end) else "WRONG"))
            self.results[row][kind + "_ttfb"] = r["ttfb"] * 1e3
            self.results[row][kind + "_total"] = r["total"] * 1e3
            if watch_origin:
                self.results[row]["origin_1s"] = origin_1s / MiB
                time.sleep(2.0)
                self.notes.append("%s cold seek: origin bytes 0-1 s %.2f MiB, 0-3 s %.2f MiB%s" % (
                    row, origin_1s / MiB, (self.relay.down() - d0) / MiB, ", X-Cache %s" % xc if xc else ""))
            elif xc:
                self.notes.append("%s %s seek: X-Cache %s" % (row, kind, xc))
            log("%s %s seek: TTFB %.1f ms, total %.1f ms%s" % (
                row, kind, r["ttfb"] * 1e3, r["total"] * 1e3,
                ", origin %.2f MiB in 1 s" % (origin_1s / MiB) if watch_origin else ""))
        except Exception as e:  # noqa: BLE001
            self.err(row, kind + "_total", str(e), srv)
        finally:
            for q in (out, hf):
                if os.path.exists(q):
                    os.unlink(q)

    def spot_check_ranges(self, row, srv, n=8):
        """A few random 64 KiB ranges by http.client, compared to the file."""
        rnd = random.Random(7)
        port = int(srv.url().split(":")[2].split("/")[0])
        path = srv.url()[srv.url().index("/", 8):]
        for _ in range(n):
            s = rnd.randrange(0, self.size - 65536)
            e = s + 65535
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                h = dict(srv.client_headers)
                h["Range"] = "bytes=%d-%d" % (s, e)
                conn.request("GET", path, headers=h)
                resp = conn.getresponse()
                body = resp.read()
            finally:
                conn.close()
            if resp.status != 206 or body != self.expected_range(s, e):
                raise RuntimeError("range %d-%d: status %d, %d bytes, content %s" % (
                    s, e, resp.status, len(body), "right" if body == self.expected_range(s, e) else "WRONG"))

    def wrk(self, row, srv):
        lua = os.path.join(self.tmp, "ranges.lua")
        hdrs = "".join('  h["%s"] = "%s"\n' % kv for kv in srv.client_headers)
        with open(lua, "w") as f:
            f.write("""-- random 64 KiB ranges over the file: half aligned to 64 KiB, half anywhere
local size = %(size)d
local len = 65536
local counter = 1
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end
function init(args)
  math.randomseed(os.time() * 1000 + (tid or 0) * 7919)
end
function request()
  local off
  if math.random() < 0.5 then
    off = math.floor(math.random(0, math.floor((size - len) / len))) * len
  else
    off = math.floor(math.random(0, size - len))
  end
  local h = {}
%(hdrs)s  h["Range"] = "bytes=" .. string.format("%%d", off) .. "-" .. string.format("%%d", off + len - 1)
  return wrk.format("GET", nil, h)
end
""" % dict(size=self.size, hdrs=hdrs))
        try:
            self.spot_check_ranges(row, srv)
            argv = ["wrk", "-t%d" % self.args.wrk_threads, "-c%d" % self.args.wrk_conns, "-d%ds" % self.args.wrk_duration,
                    "--latency", "--timeout", "10s", "-s", lua, srv.url()]
            d0 = self.relay.down()
            p = subprocess.run(argv, capture_output=True, text=True, timeout=self.args.wrk_duration + 60)
            out = p.stdout
            if srv.cache:
                self.notes.append("%s wrk: origin sent %.2f MiB during the run" % (row, (self.relay.down() - d0) / MiB))
            if p.returncode != 0:
                raise RuntimeError("wrk exit %d: %s" % (p.returncode, (p.stderr or out).strip()[:300]))
            rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
            m = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
            p99 = float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[m.group(2)]
            bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
            sock = re.search(r"Socket errors:(.*)", out)
            reqs = re.search(r"(\d+) requests in", out)
            if bad and int(bad.group(1)) > 0:
                raise RuntimeError("%s non-2xx responses of %s (%.0f req/s, p99 %.2f ms)" % (
                    bad.group(1), reqs.group(1) if reqs else "?", rps, p99))
            self.results[row]["wrk_rps"] = rps
            self.results[row]["wrk_p99"] = p99
            if sock:
                self.notes.append("%s wrk socket errors:%s" % (row, sock.group(1)))
            log("%s wrk: %.0f req/s, p99 %.2f ms" % (row, rps, p99))
        except Exception as e:  # noqa: BLE001
            self.err(row, "wrk_rps", str(e), srv)

    def many_clients(self, row, srv):
        n = self.args.clients
        outs = [os.path.join(self.outdir, "c%02d.bin" % i) for i in range(n)]
        try:
            c0 = self.cpu_snap(srv)
            a0 = self.relay.stats()["accepted"]
            d0 = self.relay.down()
            # When did the origin transfer end? (last change of the relay's counter)
            watch = {"last": d0, "t_last": 0.0, "stop": threading.Event()}

            def watcher():
                while not watch["stop"].wait(0.02):
                    d = self.relay.down()
                    if d != watch["last"]:
                        watch["last"], watch["t_last"] = d, time.monotonic() - t0
            t0 = time.monotonic()
            wt = threading.Thread(target=watcher, daemon=True)
            wt.start()
            procs = [subprocess.Popen(curl_argv(srv.url(), o, srv.client_headers), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True) for o in outs]
            deadline = t0 + self.full_timeout() * 2
            results = []
            for p in procs:
                try:
                    so, se = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    for q in procs:
                        q.kill()
                    raise RuntimeError("clients still running after %.0f s" % (deadline - t0))
                results.append((p.returncode, so, se))
            wall = time.monotonic() - t0
            self.cpu_note(row, "%d clients" % n, srv, c0)
            origin = self.relay.wait_quiet(1.0, 30) - d0
            watch["stop"].set()
            wt.join(2)
            totals = sorted(parse_curl(so)["total"] for rc, so, _ in results if rc == 0 and so.strip())
            if totals:
                via = ""
                if not isinstance(srv, OriginDirect):
                    via = "; origin transfer ended at %.2f s over %d upstream connections" % (
                        watch["t_last"], self.relay.stats()["accepted"] - a0)
                self.notes.append("%s %d clients: finished between %.2f and %.2f s (median %.2f)%s" % (
                    row, n, totals[0], totals[-1], totals[len(totals) // 2], via))
            problems = []
            for i, (rc, so, se) in enumerate(results):
                if rc != 0:
                    problems.append("client %d: curl exit %d %s" % (i, rc, se.strip()[:120]))
                    continue
                r = parse_curl(so)
                if r["code"] != 200 or r["size"] != self.size:
                    problems.append("client %d: status %d, %d bytes" % (i, r["code"], r["size"]))
                elif sha256_file(outs[i]) != self.sha:
                    problems.append("client %d: SHA-256 mismatch" % i)
                os.unlink(outs[i])
            self.results[row]["many_origin"] = origin / self.size
            if problems:
                raise RuntimeError("%d/%d clients wrong (wall %.2f s): %s" % (len(problems), n, wall, "; ".join(problems[:4])))
            self.results[row]["many_wall"] = wall
            log("%s %d clients: wall %.2f s, origin %.3f × size" % (row, n, wall, origin / self.size))
        except Exception as e:  # noqa: BLE001
            self.err(row, "many_wall", str(e), srv)
        finally:
            for o in outs:
                if os.path.exists(o):
                    os.unlink(o)

    # -- rows

    def fresh(self, row, srv, phase):
        self.relay.wait_idle(10)
        srv.start()

    def done(self, row, srv, phase):
        mem = srv.stop()
        if mem is not None:
            self.phase_rss.setdefault(row, {})[phase] = mem
        self.relay.wait_idle(10)

    def cpu_snap(self, srv):
        pg = srv.proc.pid if getattr(srv, "proc", None) is not None else None
        return (time.monotonic(), group_cpu_seconds(pg) if pg else 0.0,
                cpu_ticks_of(self.relay.proc.pid) / os.sysconf("SC_CLK_TCK"), machine_busy_seconds())

    def cpu_note(self, row, step, srv, snap0):
        t1, s1, r1, m1 = self.cpu_snap(srv)
        t0, s0, r0, m0 = snap0
        wall = max(t1 - t0, 1e-6)
        cores = os.cpu_count() or 1
        server = "server %.0f %% of a core, " % ((s1 - s0) / wall * 100) if getattr(srv, "proc", None) else ""
        self.notes.append("%s %s CPU over %.1f s: %srelay %.0f %% of a core, whole machine %.0f %% of %d cores" % (
            row, step, wall, server, (r1 - r0) / wall * 100, (m1 - m0) / wall / cores * 100, cores))

    def mark(self, row, srv, label):
        """VmHWM so far, to see which step raised the peak."""
        if getattr(srv, "proc", None) is not None:
            self.hwm_marks.setdefault(row, []).append((label, group_hwm(srv.proc.pid)))

    def run_server_row(self, row, srv):
        self.results[row] = {}
        # A: cold full, warm full, wrk on warm ranges.
        self.fresh(row, srv, "A")
        try:
            a0 = self.relay.stats()["accepted"]
            ok = self.full_download(row, "cold_full", srv)
            self.mark(row, srv, "A cold full")
            if isinstance(srv, Slipstream) or isinstance(srv, NginxCache):
                self.notes.append("%s cold full: %d upstream connections opened" % (
                    row, self.relay.stats()["accepted"] - a0))
                time.sleep(0.5)  # let the last blocks land in the store
                d0 = self.relay.down()
                self.full_download(row, "warm_full", srv)
                self.mark(row, srv, "A warm full")
                warm_origin = self.relay.down() - d0
                if warm_origin > 0:
                    self.notes.append("%s warm full: origin sent %.2f MiB" % (row, warm_origin / MiB))
            else:
                self.results[row]["warm_full"] = self.results[row].get("cold_full", "n/a")
            if ok:
                c0 = self.cpu_snap(srv)
                self.wrk(row, srv)
                self.cpu_note(row, "wrk", srv, c0)
                self.mark(row, srv, "A wrk")
            else:
                self.results[row]["wrk_rps"] = "skip"
        finally:
            self.done(row, srv, "A")
        # B: cold 1 MiB range at 60 %, then the same range warm.
        self.fresh(row, srv, "B")
        try:
            self.range_request(row, "cold", srv, watch_origin=True)
            self.range_request(row, "warm", srv, watch_origin=False)
            self.mark(row, srv, "B seeks")
        finally:
            self.done(row, srv, "B")
        # C: N clients at once on the cold file.
        self.fresh(row, srv, "C")
        try:
            self.many_clients(row, srv)
            self.mark(row, srv, "C clients")
        finally:
            self.done(row, srv, "C")
        if row in self.phase_rss:
            self.results[row]["rss"] = max(m["hwm"] for m in self.phase_rss[row].values()) / MiB

    def run_aria2c(self, row):
        self.results[row] = {}
        self.relay.wait_idle(10)
        d = mkdtemp("aria2-", self.outdir)
        out = os.path.join(d, "bench.bin")
        argv = ["aria2c", "-x16", "-s16", "-k1M", "--referer=" + REFERER, "--user-agent=" + USER_AGENT,
                "--file-allocation=none", "--allow-overwrite=true", "--auto-file-renaming=false",
                "--console-log-level=error", "--summary-interval=0", "--download-result=hide", "-q",
                "-d", d, "-o", "bench.bin", "http://127.0.0.1:%d%s" % (self.relay.port, FILE_NAME)]
        try:
            a0 = self.relay.stats()["accepted"]
            t0 = time.monotonic()
            p = subprocess.run(argv, capture_output=True, text=True, timeout=self.full_timeout())
            el = time.monotonic() - t0
            if p.returncode != 0:
                raise RuntimeError("aria2c exit %d: %s" % (p.returncode, (p.stderr + p.stdout).strip()[:300]))
            if os.path.getsize(out) != self.size or sha256_file(out) != self.sha:
                raise RuntimeError("wrong bytes (%d of %d, or SHA-256 mismatch)" % (os.path.getsize(out), self.size))
            self.results[row]["cold_full"] = self.results[row]["warm_full"] = self.size / MiB / el
            self.notes.append("%s: %d connections to the relay" % (row, self.relay.stats()["accepted"] - a0))
            log("%s: %.1f MiB/s (%.2f s)" % (row, self.size / MiB / el, el))
        except Exception as e:  # noqa: BLE001
            self.err(row, "cold_full", str(e))
        finally:
            shutil.rmtree(d, ignore_errors=True)

    # -- the other tables (scripts/bench/table_*.py); each returns (title, markdown lines)

    def run_table(self, table):
        log("==== table %s" % table)
        t0 = time.monotonic()
        mod = __import__("table_" + table)
        try:
            title, lines = mod.run(self)
        except Exception as e:  # noqa: BLE001 - a broken table must not lose the others
            import traceback
            log("table %s failed:\n%s" % (table, traceback.format_exc()))
            title, lines = TABLES[table], ["not measured: %s" % self.fail(table, "setup", str(e))]
        self.sections.append((title, lines + ["", "(%s table: %.0f s)" % (table, time.monotonic() - t0)]))

    def fail(self, table, what, msg, srv=None):
        """Records an error of a cell in one of the other tables; returns its "ERRn" reference."""
        diag = srv.diagnostics() if srv is not None else ""
        if diag:
            msg += "\n    " + diag.replace("\n", "\n    ")
        self.errors.append("%s / %s: %s" % (table, what, msg))
        log("ERROR %s / %s: %s" % (table, what, msg))
        return "ERR%d" % len(self.errors)

    # -- main

    def setup(self):
        a = self.args
        self.tmp = mkdtemp("slip-bench-", a.tmp)
        root = self.www = os.path.join(self.tmp, "www")
        os.makedirs(root)
        self.file = root + FILE_NAME
        # Client output goes to tmpfs when there is room, so writing the
        # downloaded files costs a memcpy and no disk writeback.
        need = self.size * (a.clients + 2)
        shm = "/dev/shm"
        if os.path.isdir(shm) and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > need + 512 * MiB:
            self.outdir = mkdtemp("slip-bench-out-", shm)
        else:
            self.outdir = mkdtemp("out-", self.tmp)
        log("writing a %d MiB random file" % (self.size // MiB))
        h = hashlib.sha256()
        with open(self.file, "wb") as f:
            left = self.size
            while left:
                b = os.urandom(min(4 * MiB, left))
                h.update(b)
                f.write(b)
                left -= len(b)
        self.sha = h.hexdigest()
        if os.access(a.bin, os.X_OK):
            # Run a private copy: other work may rebuild build/slipstream during the run.
            self.bin_copy = os.path.join(self.tmp, "slipstream")
            shutil.copy2(a.bin, self.bin_copy)
        self.origin = Origin(root, self.tmp)
        self.relay = Relay(a.relay, self.origin.port, self.rate, self.tmp)
        # The origin must refuse a request without the headers.
        url = "http://127.0.0.1:%d%s" % (self.relay.port, FILE_NAME)
        bare = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", url],
                              capture_output=True, text=True, timeout=30).stdout
        ok = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-r", "0-0", "-w", "%{http_code}", "-H", "Referer: " + REFERER,
                             "-H", "User-Agent: " + USER_AGENT, url], capture_output=True, text=True, timeout=30).stdout
        if bare != "403" or ok != "206":
            raise RuntimeError("origin check failed: without headers %s (want 403), with %s (want 206)" % (bare, ok))

    def our_cpu(self):
        ru = resource.getrusage(resource.RUSAGE_SELF)
        rc = resource.getrusage(resource.RUSAGE_CHILDREN)
        live = sum(cpu_ticks_of(p.pid) for p in _procs) / os.sysconf("SC_CLK_TCK")
        return ru.ru_utime + ru.ru_stime + rc.ru_utime + rc.ru_stime + live

    def run(self):
        t_start = time.monotonic()
        self.load_start = os.getloadavg()
        self.busy0, self.ours0 = machine_busy_seconds(), self.our_cpu()
        self.setup()
        cache_max = max(4096 * MiB, 4 * self.size)
        for row in (self.args.rows if "main" in self.args.tables else []):
            log("---- %s" % row)
            if row == "direct":
                self.run_server_row(row, Direct(self.relay))
            elif row == "aria2c":
                self.run_aria2c(row)
            elif row == "nginx":
                self.run_server_row(row, NginxCache(self.relay, self.tmp, cache_max))
            elif row == "slipstream":
                self.slip = Slipstream(self.bin_copy, self.relay, self.tmp, cache_max)
                self.run_server_row(row, self.slip)
        if "main" in self.args.tables and self.args.clients > 0 and not self.args.no_ceiling:
            # What N plain curl clients cost this machine when the server is as fast as it gets.
            log("---- ceiling: %d clients straight from the origin" % self.args.clients)
            self.results["ceiling"] = {}
            self.many_clients("ceiling", OriginDirect(self.origin))
        for table in self.args.tables:
            if table != "main":
                self.run_table(table)
        self.elapsed = time.monotonic() - t_start
        self.load_end = os.getloadavg()
        self.busy = machine_busy_seconds() - self.busy0
        self.ours = self.our_cpu() - self.ours0
        return self.report()

    # -- report

    def cell(self, row, col, fmt):
        v = self.results.get(row, {}).get(col, "n/a")
        if isinstance(v, (int, float)):
            return fmt % v
        return v

    def report(self):
        a = self.args
        names = {"direct": "direct curl (headers)", "aria2c": "aria2c -x16 -s16 -k1M",
                 "nginx": "nginx proxy_cache slice 1m + lock", "slipstream": "slipstream connections=16"}
        cpu = "?"
        try:
            with open("/proc/cpuinfo") as f:
                m = re.search(r"model name\s*:\s*(.*)", f.read())
                cpu = m.group(1).strip() if m else "?"
        except OSError:
            pass
        date = subprocess.run(["date", "-u"], capture_output=True, text=True).stdout.strip()
        uname = subprocess.run(["uname", "-srm"], capture_output=True, text=True).stdout.strip()
        rev = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"], capture_output=True,
                             text=True).stdout.strip() or "?"

        def ver(argv, pat):
            try:
                p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
                m = re.search(pat, p.stdout + p.stderr)
                return m.group(1) if m else "?"
            except (OSError, subprocess.TimeoutExpired):
                return "?"
        versions = "nginx %s, curl %s, aria2 %s, wrk %s" % (
            ver([harness.NGINX, "-v"], r"nginx/(\S+)"), ver(["curl", "--version"], r"curl (\S+)"),
            ver(["aria2c", "--version"], r"aria2 version (\S+)"), ver(["wrk", "-v"], r"wrk (\S+)"))
        L = []
        L.append("slipstream benchmark — %s" % date)
        L.append("")
        L.append("- machine: %s, %s, %d cores" % (uname, cpu, os.cpu_count() or 0))
        L.append("- origin: nginx on loopback demanding Referer + User-Agent, behind ratelimit_relay capping "
                 "each TCP connection at R = %g MiB/s (token bucket, 64 KiB burst)" % a.rate)
        L.append("- file: %d MiB random; seek = 1 MiB at 60 %% (bytes %d-%d); %d clients; "
                 "wrk -t%d -c%d -d%ds random 64 KiB ranges (half 64 KiB-aligned)" % (
                     self.size // MiB, self.size * 6 // 10, self.size * 6 // 10 + MiB - 1, a.clients,
                     a.wrk_threads, a.wrk_conns, a.wrk_duration))
        L.append("- slipstream binary %s (%s); load average at start %.2f, at end %.2f; the machine was busy "
                 "%.0f CPU-s during the run, ≈ %.0f CPU-s of it outside this benchmark's processes" % (
                     self.bin_id(), a.bin, self.load_start[0], self.load_end[0], self.busy,
                     max(0.0, self.busy - self.ours)))
        other = max(0.0, self.busy - self.ours) / max(self.elapsed * (os.cpu_count() or 1), 1e-6)
        if other > 0.10:
            L.append("- **WARNING: other processes took ≈ %.0f %% of the machine's CPU during this run; the figures "
                     "are disturbed — rerun on a quiet machine**" % (other * 100))
        L.append("- slipstream tree %s (defaults but connections = 16, access_log off); %s (nginx cache: "
                 "worker_processes auto, sendfile on, tcp_nopush off, access_log off)%s" % (
                     rev, versions, "; QUICK run" if a.quick else ""))
        L.append("")
        if "main" in a.tables:
            hdr = ["server", "cold full MiB/s", "warm full MiB/s", "cold seek TTFB ms", "cold seek total ms",
                   "origin MiB in 1 s", "warm seek TTFB ms", "warm seek total ms", "%d clients wall s" % a.clients,
                   "origin ÷ size", "wrk req/s", "wrk p99 ms", "peak RSS MiB"]
            L.append("| " + " | ".join(hdr) + " |")
            L.append("|" + "|".join(["---"] + ["---:"] * (len(hdr) - 1)) + "|")
            for row in a.rows:
                cells = [names[row],
                         self.cell(row, "cold_full", "%.1f"), self.cell(row, "warm_full", "%.1f"),
                         self.cell(row, "cold_ttfb", "%.1f"), self.cell(row, "cold_total", "%.1f"),
                         self.cell(row, "origin_1s", "%.2f"),
                         self.cell(row, "warm_ttfb", "%.1f"), self.cell(row, "warm_total", "%.1f"),
                         self.cell(row, "many_wall", "%.2f"), self.cell(row, "many_origin", "%.3f"),
                         self.cell(row, "wrk_rps", "%.0f"), self.cell(row, "wrk_p99", "%.2f"),
                         self.cell(row, "rss", "%.1f")]
                L.append("| " + " | ".join(cells) + " |")
            L.append("")
            L.append("direct curl and aria2c have no cache: their warm columns repeat the cold figure; aria2c only "
                     "downloads. origin bytes are counted by the relay (bytes it passed origin→client, headers "
                     "included). nginx RSS = VmHWM summed over master, workers and cache processes. Peak RSS = max "
                     "over the three fresh instances (A: full+wrk, B: seek, C: clients).")
            L.append("")
            ceil = self.results.get("ceiling", {}).get("many_wall")
            if isinstance(ceil, float):
                L.append("Machine ceiling for the %d-clients column: the same %d curl clients straight from the origin "
                         "nginx (no relay, no cap, page cache) take %.2f s." % (a.clients, a.clients, ceil))
                L.append("")
            L += self.targets()
        for title, lines in self.sections:
            L.append("")
            L.append("### " + title)
            L.append("")
            L += lines
        if self.notes or self.errors:
            L.append("")
            L.append("Notes:")
            for n in self.notes:
                L.append("- " + n)
            for row, ph in sorted(self.phase_rss.items()):
                L.append("- %s peak RSS per instance (VmHWM; sampled peak anon / file-backed): %s" % (row, "; ".join(
                    "%s %.1f MiB (%.1f / %.1f)" % (k, v["hwm"] / MiB, v["anon"] / MiB, v["file"] / MiB)
                    for k, v in sorted(ph.items()))))
                if row in self.hwm_marks:
                    L.append("- %s VmHWM after each step: %s" % (row, ", ".join(
                        "%s %.1f MiB" % (k, v / MiB) for k, v in self.hwm_marks[row])))
            for i, e in enumerate(self.errors, 1):
                L.append("- ERR%d %s" % (i, e))
        if hasattr(self, "slip"):
            L += self.gateway_notes()
        L.append("")
        L.append("run time: %.0f s" % self.elapsed)
        return "\n".join(L) + "\n"

    def bin_id(self):
        try:
            path = getattr(self, "bin_copy", self.args.bin)
            st = os.stat(path)
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for b in iter(lambda: f.read(MiB), b""):
                    h.update(b)
            return "sha256 %s…, built %s" % (h.hexdigest()[:12], datetime.datetime.fromtimestamp(
                st.st_mtime, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ"))
        except OSError as e:
            return "unreadable: %s" % e

    def targets(self):
        r = self.results
        s = r.get("slipstream", {})
        n = r.get("nginx", {})
        d = r.get("direct", {})
        R = self.args.rate
        out = ["Targets (issue 3), slipstream this run:"]

        def num(x):
            return isinstance(x, (int, float))

        def line(label, got, need, ok_fn, unit, fmt="%.1f"):
            if not num(got) or (need is not None and not num(need)):
                out.append("- %s: not measured (%s)" % (label, got if not num(got) else need))
                return
            ok = ok_fn(got, need)
            if need is None:
                out.append("- %s: %s%s: %s" % (label, fmt % got, unit, "PASS" if ok else "FAIL"))
            else:
                out.append("- %s: %s%s vs %s%s (%.2f×): %s" % (label, fmt % got, unit, fmt % need, unit,
                                                                 got / need if need else float("inf"),
                                                                 "PASS" if ok else "FAIL"))
        line("cold full ≥ 0.9×16×R", s.get("cold_full", "n/a"), 0.9 * 16 * R, lambda g, x: g >= x, " MiB/s")
        line("warm full ≥ nginx warm", s.get("warm_full", "n/a"), n.get("warm_full", "n/a"), lambda g, x: g >= x, " MiB/s")
        line("wrk req/s ≥ nginx", s.get("wrk_rps", "n/a"), n.get("wrk_rps", "n/a"), lambda g, x: g >= x, " req/s", "%.0f")
        line("wrk p99 ≤ nginx", s.get("wrk_p99", "n/a"), n.get("wrk_p99", "n/a"), lambda g, x: g <= x, " ms", "%.2f")
        line("cold 1 MiB seek total ≤ direct curl", s.get("cold_total", "n/a"), d.get("cold_total", "n/a"),
             lambda g, x: g <= x, " ms")
        line("cold seek origin bytes in 1 s ≤ 4 MiB", s.get("origin_1s", "n/a"), 4.0, lambda g, x: g <= x, " MiB", "%.2f")
        line("%d cold clients origin ÷ size ≤ 1.01" % self.args.clients, s.get("many_origin", "n/a"), 1.01,
             lambda g, x: g <= x, "", "%.3f")
        line("%d cold clients wall ≤ 2.5 × size/(16R)" % self.args.clients, s.get("many_wall", "n/a"),
             2.5 * self.size / (16 * self.rate), lambda g, x: g <= x, " s", "%.2f")
        line("peak RSS ≤ 64 MiB", s.get("rss", "n/a"), 64.0, lambda g, x: g <= x, " MiB")
        return out

    def gateway_notes(self):
        """Summary of the gateway's key=value stderr: event counts, warnings."""
        L = []
        events, warns = {}, []
        for alive, rc, text in self.slip.err_copies:
            if not alive:
                L.append("- slipstream instance had exited (status %s) before it was stopped" % rc)
            if rc not in (0, None, -15):
                L.append("- slipstream exit status on SIGTERM: %s" % rc)
            for line in text.splitlines():
                m = re.search(r"\bevent=(\S+)", line)
                if m:
                    events[m.group(1)] = events.get(m.group(1), 0) + 1
                if re.search(r"\blevel=(warn|error)\b", line):
                    warns.append(line.strip())
        if events:
            L.append("- slipstream stderr events: " + ", ".join("%s×%d" % kv for kv in sorted(events.items())))
        if warns:
            L.append("- slipstream warn/error lines: %d, first ones:" % len(warns))
            for w in warns[:5]:
                L.append("    " + w[:300])
        return L


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "slipstream"))
    ap.add_argument("--relay", default=os.path.join(ROOT, "build", "ratelimit_relay"))
    ap.add_argument("--rate", type=float, default=16.0, help="per-connection cap R in MiB/s (default 16)")
    ap.add_argument("--size", type=float, default=None, help="file size in MiB (default 256, 64 with --quick)")
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--wrk-duration", type=int, default=None, help="seconds (default 10, 3 with --quick)")
    ap.add_argument("--wrk-conns", type=int, default=50)
    ap.add_argument("--wrk-threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 64 MiB file, 3 s wrk, 128 MiB MP4, 8 s seek storm, 20 s rss")
    ap.add_argument("--rows", default=",".join(ROWS), help="rows of the main table, subset of " + ",".join(ROWS))
    ap.add_argument("--tables", default=",".join(TABLES), help="tables to run, subset of " + ",".join(TABLES))
    ap.add_argument("--media-size", type=float, default=None,
                    help="player table MP4 size in MiB (default 1024, 128 with --quick)")
    ap.add_argument("--rtt-ms", type=int, default=40, help="player table: origin round trip (default 40)")
    ap.add_argument("--slow-disk-mibs", type=float, default=20.0,
                    help="fast table: write cap of the slow cache disk in MiB/s (default 20)")
    ap.add_argument("--rss-seconds", type=int, default=None, help="rss table duration (default 60, 20 with --quick)")
    ap.add_argument("--no-ceiling", action="store_true", help="skip the uncapped-origin calibration of the clients column")
    ap.add_argument("--tmp", default=None, help="parent of the temp dirs (default $TMPDIR or /tmp)")
    ap.add_argument("--out", default=None, help="also write the report to this file")
    ap.add_argument("--timeout", type=float, default=5400, help="abort the whole run after this many seconds")
    args = ap.parse_args()
    if args.size is None:
        args.size = 64 if args.quick else 256
    if args.wrk_duration is None:
        args.wrk_duration = 3 if args.quick else 10
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    args.tables = [t.strip() for t in args.tables.split(",") if t.strip()]
    for t in args.tables:
        if t not in TABLES:
            ap.error("unknown table %r (choose from %s)" % (t, ",".join(TABLES)))
    if args.media_size is None:
        args.media_size = 128 if args.quick else 1024
    if args.rss_seconds is None:
        args.rss_seconds = 20 if args.quick else 60
    for r in args.rows:
        if r not in ROWS:
            ap.error("unknown row %r" % r)
    args.bin = os.path.abspath(args.bin)
    args.relay = os.path.abspath(args.relay)
    for exe in (args.relay, args.bin):
        if not os.access(exe, os.X_OK):
            ap.error("%s is not an executable (make all build/ratelimit_relay)" % exe)
    for tool in ("curl", "aria2c", "wrk"):
        if not shutil.which(tool):
            ap.error("%s not found (scripts/deps.sh bench)" % tool)

    atexit.register(cleanup_all)
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, _on_signal)
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(SystemExit("bench: overall timeout %.0f s" % args.timeout)))
    signal.alarm(int(args.timeout))
    try:
        text = Bench(args).run()
    finally:
        signal.alarm(0)
        cleanup_all()
    sys.stdout.write(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
