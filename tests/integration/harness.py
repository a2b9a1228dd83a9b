"""Fixtures for the integration tests: a real nginx origin, the gateway
binary started on a free loopback port with an inline config, a scriptable
origin of our own (one behaviour per misbehaviour), raw HTTP helpers.

Everything runs on 127.0.0.1, every process is killed at the end, every wait
has a deadline. Python standard library only.
"""

import gzip
import hashlib
import http.client
import http.server
import os
import re
import shutil
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("SLIPSTREAM_BIN", os.path.join(ROOT, "build", "slipstream"))
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

# Set by `make test-san` (the gateway built with ASan/UBSan): ASan's shadow
# memory and quarantine add to the RSS; tests that bound the RSS compare
# against rss_limit() instead of being skipped.
SANITIZER = os.environ.get("SLIP_SANITIZER") == "1"


def rss_limit(nbytes):
    """`nbytes`, or what the same bound is under the sanitizers: ASan keeps
    freed memory in a quarantine (ASAN_OPTIONS quarantine_size_mb, which
    `make test-san` sets to 16) and its shadow and allocator metadata cost
    about as much again as the heap."""
    return 2 * nbytes + 64 * 1024 * 1024 if SANITIZER else nbytes


REFERER = "http://origin.example/"
USER_AGENT = "SlipTest/1.0"


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def random_bytes(n, seed=1):
    """Deterministic pseudo-random bytes (fast enough for tens of MiB)."""
    out = bytearray()
    h = hashlib.sha256(str(seed).encode()).digest()
    block = hashlib.shake_256(h).digest(1 << 20)
    i = 0
    while len(out) < n:
        out += hashlib.shake_256(block + i.to_bytes(8, "big")).digest(min(1 << 20, n - len(out)))
        i += 1
    return bytes(out)


def write_file(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred, timeout=10.0, interval=0.02, what="condition"):
    """Polls pred() until it returns something true (returned); raises
    AssertionError after `timeout` seconds. `what` names the condition in
    the error; it may be a function, called then (to describe the state)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what() if callable(what) else what))


# --------------------------------------------------------------------- HTTP


class Response:
    def __init__(self, status, headers, body, reason=""):
        self.status = status
        self.headers = headers  # list of (name, value) as received
        self.body = body
        self.reason = reason

    def header(self, name, default=None):
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return default

    def header_names(self):
        return sorted({k.lower() for k, _ in self.headers})

    def __repr__(self):
        return "<Response %d %r %d bytes>" % (self.status, self.headers, len(self.body))


def request(url_or_port, path="/", method="GET", headers=None, timeout=30, host="127.0.0.1"):
    """One request with http.client (no redirects followed). Returns Response.
    Raises if the body is shorter than Content-Length (IncompleteRead)."""
    if isinstance(url_or_port, str):
        m = re.match(r"http://([^/:]+|\[[^\]]+\]):(\d+)(/.*)?$", url_or_port)
        host, port, p = m.group(1).strip("[]"), int(m.group(2)), m.group(3) or "/"
        if path == "/":
            path = p
    else:
        port = url_or_port
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        body = r.read()
        return Response(r.status, r.getheaders(), body, r.reason)
    finally:
        conn.close()


def raw_request(port, data, timeout=10, host="127.0.0.1"):
    """Sends raw bytes, returns everything the server sent until it closed
    (or until the timeout with no more data)."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(data)
        try:
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
        return out


def raw_status(reply):
    m = re.match(rb"HTTP/1\.[01] (\d{3})", reply)
    return int(m.group(1)) if m else None


def curl(*args, timeout=120):
    """Runs the real curl; returns CompletedProcess (stdout bytes)."""
    return subprocess.run(["curl", "-sS", *args], capture_output=True, timeout=timeout)


# --------------------------------------------------------------------- nginx

NGINX_LOG_FORMAT = (
    "log_format slip '$connection $connection_requests $msec $request_time $status "
    "$body_bytes_sent \"$request_method\" \"$uri\" \"$http_range\" \"$http_referer\" "
    "\"$http_user_agent\" \"$request_completion\"';"
)

LOG_RE = re.compile(
    r'(\d+) (\d+) ([\d.]+) ([\d.]+) (\d+) (\d+) "([^"]*)" "([^"]*)" "([^"]*)" "([^"]*)" "([^"]*)" "([^"]*)"'
)


def nginx_conf(dir, log_format, log, http):
    """A whole nginx.conf for a foreground, single-process nginx whose
    files all live under `dir`: the common part, then `http` (types, maps,
    servers) inside the http block."""
    return """
daemon off;
master_process off;
worker_processes 1;
pid %(dir)s/nginx.pid;
error_log %(dir)s/error.log warn;
events { worker_connections 1024; }
http {
  %(fmt)s
  access_log %(log)s slip;
  client_body_temp_path %(dir)s/tmp; proxy_temp_path %(dir)s/tmp;
  fastcgi_temp_path %(dir)s/tmp; uwsgi_temp_path %(dir)s/tmp; scgi_temp_path %(dir)s/tmp;
  keepalive_requests 100000;
  default_type application/octet-stream;
%(http)s
}
""" % dict(dir=dir, fmt=log_format, log=log, http=http)


def start_nginx(dir, conf):
    """Writes `conf` to dir/nginx.conf and starts nginx on it; returns
    (path of the config, the process)."""
    os.makedirs(os.path.join(dir, "tmp"), exist_ok=True)
    path = os.path.join(dir, "nginx.conf")
    with open(path, "w") as f:
        f.write(conf)
    proc = subprocess.Popen([NGINX, "-p", dir, "-c", path], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    return path, proc


def launch_nginx(origin, make_conf, what="nginx to listen", attempts=5):
    """Starts nginx for `origin` (an NginxOrigin) on a free port: sets
    origin.port, origin.conf and origin.proc. `make_conf(port)` returns the
    whole nginx.conf. free_port() only proposes a port; another process
    (a test running in parallel) may take it before nginx binds, so a bind
    failure is retried on a new port."""
    for attempt in range(attempts):
        origin.port = free_port()
        origin.conf, origin.proc = start_nginx(origin.dir, make_conf(origin.port))
        try:
            wait_until(origin._up, 10, what=what)
            return
        except AssertionError as e:
            if "Address already in use" not in str(e) or attempt == attempts - 1:
                raise


FENCE_PREFIX = "/__slip_fence__/"
_fence_counter = [0]


class NginxOrigin:
    """A real nginx on a loopback port serving `root`.

    picky=True demands Referer REFERER (valid_referers) and User-Agent
    USER_AGENT, answering 403 otherwise. limit_rate is per request (nginx
    syntax, e.g. "2m"). `locations` adds raw nginx location blocks."""

    def __init__(self, root, picky=True, limit_rate=None, locations="", server_extra=""):
        self.root = root
        self.dir = tempfile.mkdtemp(prefix="slip-nginx-")
        self.log = os.path.join(self.dir, "access.log")
        checks = ""
        if picky:
            checks = (
                "valid_referers origin.example;\n"
                "      if ($invalid_referer) { return 403; }\n"
                '      if ($http_user_agent != "%s") { return 403; }\n' % USER_AGENT
            )
        rate = "limit_rate %s;" % limit_rate if limit_rate else ""

        def make_conf(port):
            http = """
  types { video/x-matroska mkv; video/mp4 mp4; application/octet-stream bin; }
  server {
    listen 127.0.0.1:%(port)d;
    root %(root)s;
    %(server_extra)s
    %(locations)s
    location / {
      %(checks)s
      %(rate)s
    }
  }
""" % dict(port=port, root=root, checks=checks, rate=rate, locations=locations,
           server_extra=server_extra)
            return nginx_conf(self.dir, NGINX_LOG_FORMAT, self.log, http)

        launch_nginx(self, make_conf)

    def _up(self):
        if self.proc.poll() is not None:
            raise AssertionError("nginx exited: %s" % self.proc.stderr.read().decode())
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def url(self, path="/"):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    log_re = LOG_RE  # a subclass with a longer log format parses more fields

    def _entry(self, g):
        end, dur = float(g[2]), float(g[3])
        return dict(conn=int(g[0]), nreq=int(g[1]), end=end, time=dur, start=end - dur,
                    status=int(g[4]), bytes=int(g[5]), method=g[6], uri=g[7],
                    range=g[8], referer=g[9], ua=g[10], complete=g[11] == "OK")

    def entries(self, settle=True):
        """Parsed access-log lines: dicts with conn, nreq, end, time, start,
        status, bytes, method, uri, range, referer, ua, complete.

        nginx writes a line when a request ends. With `settle` (the
        default) the log is read once it is settled: every gateway of this
        process is idle (no upstream transfer, no block in flight; see
        settle_gateways()) and a fence request made after that is in the log, so
        every request that ended before it is too. settle=0 reads the log
        as it is (for polling)."""
        if settle:
            settle_gateways()
            self.fence()
        return self._read_log()

    def _read_log(self):
        out = []
        if not os.path.exists(self.log):
            return out
        with open(self.log) as f:
            for line in f:
                m = self.log_re.match(line)
                if m:
                    e = self._entry(m.groups())
                    if not e["uri"].startswith(FENCE_PREFIX):
                        out.append(e)
        return out

    def fence(self, timeout=10):
        """Makes one request of our own and waits until its log line is
        written. nginx (one process, one worker) logs a request as it ends,
        in the order they end: once the fence's line is there, so is the
        line of every request that ended before the fence was sent."""
        _fence_counter[0] += 1
        path = "%s%d-%d" % (FENCE_PREFIX, os.getpid(), _fence_counter[0])
        request(self.port, path, timeout=timeout)

        def logged():
            try:
                with open(self.log) as f:
                    return path in f.read()
            except FileNotFoundError:
                return False

        wait_until(logged, timeout, interval=0.005, what="nginx to log the fence request")

    def clear_log(self):
        open(self.log, "w").close()
        # nginx keeps appending to the same inode: truncation is enough.

    def body_bytes(self, uri=None):
        return sum(e["bytes"] for e in self.entries() if uri is None or e["uri"] == uri)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if not self.keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    keep_dir = False  # stop() removes the prefix dir (its own temp dir)


# --------------------------------------------------------------------- gateway


HARNESS_UA = "slipstream-test-harness"  # the harness's own requests (filtered from access())
_running_gateways = []  # Gateway objects of this process not cleaned up yet

# Gauges that are 0 when a gateway has nothing going on upstream: no
# transfer running, no block reserved (a fetch in flight or backing off), no
# bytes queued for the disk thread. The cache ones exist with a cache only.
IDLE_GAUGES = ("slipstream_upstream_transfers", "slipstream_cache_reserved_bytes",
               "slipstream_disk_queue_bytes")


def settle_gateways(timeout=10):
    """Waits until every running gateway of this process is idle (see
    Gateway.wait_idle): what a client asked for is stored and read-ahead has
    finished, so origin logs read afterwards are complete. A gateway that
    stays busy (a test holding a transfer open on purpose) is waited for at
    most `timeout` seconds, without failing."""
    for g in list(_running_gateways):
        try:
            g.wait_idle(timeout)
        except AssertionError as e:
            print("\n    [harness] settling went on without it: %s" % e, file=sys.stderr)


def with_test_workers(text):
    """SLIP_TEST_WORKERS=N runs a suite with front-end worker threads (issue
    14; e.g. the cache tests under ThreadSanitizer): `workers = N` in
    [server], unless the configuration sets it. Every configuration a test
    writes for a gateway goes through here (the first and a reloaded one)."""
    if os.environ.get("SLIP_TEST_WORKERS") and not re.search(r"(?m)^workers\s*=", text):
        text = text.replace("[server]", "[server]\nworkers = %s" % os.environ["SLIP_TEST_WORKERS"], 1)
    return text


class Gateway:
    """build/slipstream on a free loopback port with an inline config.

    `ini` is the config text without the listen line ([server] is added if
    missing; listen = 127.0.0.1:0 and access_log are set by the fixture)."""

    def __init__(self, ini, cache_dir=None, keep_dir=None):
        self.dir = keep_dir or tempfile.mkdtemp(prefix="slip-gw-")
        self.cache_dir = cache_dir or os.path.join(self.dir, "cache")
        self.access_log = os.path.join(self.dir, "access.log")
        self.err_log = os.path.join(self.dir, "error.log")
        text = ini.replace("@CACHE@", self.cache_dir)
        if "[server]" not in text:
            text = "[server]\n" + text
        text = text.replace("[server]", "[server]\nlisten = 127.0.0.1:0\naccess_log = %s\n" % self.access_log, 1)
        # Never the system's /var/cache/slipstream: gateways of tests running
        # in parallel would refuse each other's cache directory (DirLock).
        if "[cache]" not in text:
            text += "\n[cache]\ndir = %s\n" % self.cache_dir
        # SLIP_TEST_WORKERS=2 runs a suite with front-end worker threads (issue
        # 14; e.g. the cache tests under ThreadSanitizer), unless a test sets them.
        text = with_test_workers(text)
        self.ini = os.path.join(self.dir, "slipstream.ini")
        with open(self.ini, "w") as f:
            f.write(text)
        self.proc = None
        _running_gateways.append(self)
        try:
            self.start()
        except BaseException:
            _running_gateways.remove(self)
            raise

    def start(self):
        self.errf = open(self.err_log, "ab")
        self._err_offset = os.path.getsize(self.err_log)
        # The tag lets a test find processes this gateway spawned (token
        # helpers inherit the environment) among those of tests running in
        # parallel.
        env = dict(os.environ, SLIPSTREAM_TEST_GATEWAY=self.dir)
        self.proc = subprocess.Popen([BIN, "run", "-c", self.ini], stdout=subprocess.DEVNULL,
                                     stderr=self.errf, env=env)
        m = wait_until(self._listening, 15, what="gateway to listen")
        self.port = int(m.group(1))

    def _listening(self):
        """The port, once the gateway is listening *and* has said `started`
        (its signal handlers are in place: a SIGHUP sent before would kill it;
        with worker threads the gap between the two lines is wider)."""
        if self.proc.poll() is not None:
            raise AssertionError("gateway exited with %s:\n%s" % (self.proc.returncode, self.errors()))
        with open(self.err_log, "rb") as f:
            f.seek(self._err_offset)
            text = f.read()
        if b" event=started " not in text:
            return None
        return re.search(rb"event=listening address=127\.0\.0\.1:(\d+)", text)

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def get(self, path, headers=None, method="GET", timeout=60):
        return request(self.port, path, method=method, headers=headers, timeout=timeout)

    def errors(self):
        with open(self.err_log, "rb") as f:
            return f.read().decode(errors="replace")

    def access(self):
        """Access-log lines as dicts of their key=value fields (without the
        harness's own /-/metrics requests, see metrics())."""
        out = []
        if not os.path.exists(self.access_log):
            return out
        with open(self.access_log) as f:
            for line in f:
                fields = dict(re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', line))
                if fields.get("ua", "").strip('"').startswith(HARNESS_UA):
                    continue
                out.append(fields)
        return out

    def settled_access(self, timeout=10):
        """access() once every request that ended before this call is in the
        log (it is written in batches): asks for /-/health with a unique
        User-Agent and waits for that line, written after theirs."""
        _fence_counter[0] += 1
        ua = "%s/fence-%d-%d" % (HARNESS_UA, os.getpid(), _fence_counter[0])
        request(self.port, "/-/health", headers={"User-Agent": ua}, timeout=timeout)

        def logged():
            try:
                with open(self.access_log) as f:
                    return ua in f.read()
            except FileNotFoundError:
                return False

        wait_until(logged, timeout, interval=0.01, what="the access log to show the fence request")
        return self.access()

    def metrics(self, timeout=10):
        """/-/metrics as {sample name (with labels): number}, fetched with the
        harness's User-Agent so that access() leaves the request out. None if
        the gateway refuses (admin_allow)."""
        r = request(self.port, "/-/metrics", headers={"User-Agent": HARNESS_UA}, timeout=timeout)
        if r.status != 200:
            return None
        out = {}
        for line in r.body.decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                try:
                    out[name] = float(value) if "." in value else int(value)
                except ValueError:
                    pass
        return out

    def busy(self):
        """The gauges that keep the gateway from being idle ({} when idle,
        or when it cannot tell: not running, not answering, no metrics)."""
        if self.proc is None or self.proc.poll() is not None:
            return {}
        try:
            m = self.metrics()
        except (OSError, http.client.HTTPException):
            return {}
        if m is None:
            return {}
        return {k: m[k] for k in IDLE_GAUGES if m.get(k)}

    def wait_idle(self, timeout=10):
        """Waits until the gateway has nothing going on upstream (IDLE_GAUGES
        all 0) twice in a row; raises AssertionError after `timeout`."""
        state = {"idle": 0, "last": {}}

        def idle():
            b = self.busy()
            state["last"] = b
            state["idle"] = state["idle"] + 1 if not b else 0
            return state["idle"] >= 2

        wait_until(idle, timeout, interval=0.01, what=lambda: "the gateway to be idle (busy: %r)" % (state["last"],))

    def wait_access(self, n, timeout=5):
        return wait_until(lambda: len(self.access()) >= n and self.access(), timeout,
                          what="%d access-log lines" % n)

    def status_field(self, key):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        return 0

    def rss(self):
        return self.status_field("VmRSS")

    def peak_rss(self):
        return self.status_field("VmHWM")

    def cli(self, *args, timeout=60):
        return subprocess.run([BIN, *args, "-c", self.ini], capture_output=True, timeout=timeout)

    def signal(self, sig):
        self.proc.send_signal(sig)

    def kill9(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.errf.close()

    def stop(self, timeout=15):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if not self.errf.closed:
            self.errf.close()
        return self.proc.returncode

    def restart(self):
        self.stop()
        self.start()

    def cleanup(self):
        self.stop()
        if self in _running_gateways:
            _running_gateways.remove(self)
        shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------- scriptable origin


class ScriptedOrigin:
    """An HTTP/1.1 origin of our own with one behaviour per path prefix, for
    the misbehaviours a real server rarely shows on demand.

    files: {path: bytes}. behaviours are chosen by the path's first segment:
      /ok/NAME           normal ranges, ETag, keep-alive
      /norange/NAME      ignores Range: always 200 with the whole body
      /drop/NAME         closes the connection after `drop_after` body bytes
                         of every response whose range starts at `drop_at`
                         (once per start offset), else normal
      /etagflip/NAME     ETag alternates between requests
      /slow/NAME         sends `slow_rate` bytes/s
      /status/NAME       answers `status_code` (and Retry-After) `status_times`
                         times, then normally
      /deny/NAME         403 after `deny_after` requests until `allow()`
    The misbehaving-origin table (test_misbehaving.py, issue 9) adds modes
    that misbehave until `fix(mode)`; "once" ones only on the first request
    for body bytes (not the 1-byte probe) of each path:
      /cut/NAME          once: half the body, then a clean close
      /rst/NAME          once: part of the body, then a TCP RST
      /cutall/NAME       every body request (the 1-byte probe is spared): the
                         head, then a close before any body byte
      /badrange/NAME     once: a 206 whose Content-Range starts one byte late
      /shortrange/NAME   once: a 206 that ends one byte before what was asked
      /longrange/NAME    206s that run to the end of the file (more than asked)
      /gzip/NAME         Content-Encoding: gzip over the range's bytes
      /gzipbody/NAME     the same, but the 1-byte probe is answered plainly
      /chunked/NAME      206/200 with Transfer-Encoding: chunked, no length
      /busy1/NAME        once (any request): 429 Retry-After: 1
      /busyhuge/NAME     503 Retry-After: 86400
      /busyabsurd/NAME   503 Retry-After: 99999999999999999
      /blackhole/NAME    once: reads the request, never answers
      /trickle/NAME      once: the head, then 4 bytes a second
      /redirmeta/NAME    302 to http://169.254.169.254/latest/meta-data/
      /redirfile/NAME    302 to file:///etc/passwd
      /redirloop/NAME    302 to itself
      /malformed/NAME    a status line that is not HTTP ("HTTP/1.1 2OO OK")
      /bigheaders/NAME   100 KiB of response headers
    Every request is recorded: (method, path, range, status, body bytes sent,
    start, end, connection id)."""

    def __init__(self, files):
        self.files = dict(files)
        self.requests = []
        self.lock = threading.Lock()
        self.drop_after = 100_000
        self.dropped = set()
        self.slow_rate = 256 * 1024
        self.status_code = 503
        self.status_times = 1
        self.retry_after = None
        self.deny_after = 10**9
        self.etag_counter = 0
        self.conn_counter = 0
        self.in_flight = 0  # requests being answered (recorded when they end)
        # Called with each request's record (a dict) as it arrives, before it
        # is answered: a test may add what it saw at that instant (say, what
        # the gateway had logged), for ordering checks without clocks.
        self.on_request = None
        self.fixed = set()   # misbehaving modes that behave again
        self.spent = set()   # paths whose "once" misbehaviour happened
        self.stopping = threading.Event()
        origin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def setup(self):
                super().setup()
                with origin.lock:
                    origin.conn_counter += 1
                    self.conn_id = origin.conn_counter

            def do_HEAD(self):
                self.handle_one(head=True)

            def do_GET(self):
                self.handle_one(head=False)

            def handle_one(self, head):
                with origin.lock:
                    origin.in_flight += 1
                try:
                    origin._serve(self, head)
                finally:
                    with origin.lock:
                        origin.in_flight -= 1

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path="/"):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def _record(self, **kw):
        with self.lock:
            self.requests.append(kw)

    def _serve(self, h, head):
        start = time.monotonic()
        path = h.path.split("?")[0]
        parts = path.split("/", 2)
        mode = parts[1] if len(parts) > 2 else "ok"
        name = "/" + parts[2] if len(parts) > 2 else path
        rng = h.headers.get("Range", "")
        data = self.files.get(name)
        rec = dict(method=h.command, path=path, range=rng, conn=h.conn_id, start=start)
        if self.on_request:
            self.on_request(rec)

        def reply(status, headers, body=b""):
            h.send_response(status)
            for k, v in headers:
                h.send_header(k, v)
            h.end_headers()
            sent = 0
            if not head and body:
                try:
                    h.wfile.write(body)
                    sent = len(body)
                except OSError:
                    pass
            rec.update(status=status, bytes=sent, end=time.monotonic())
            self._record(**rec)

        if data is None:
            return reply(404, [("Content-Length", "0")])
        if mode in self.MISBEHAVING and mode not in self.fixed:
            if self._misbehave(h, head, mode, path, rng, data, rec):
                return
        with self.lock:
            nreq = sum(1 for r in self.requests if r["path"] == path)
        if mode == "status" and nreq < self.status_times:
            hdrs = [("Content-Length", "0")]
            if self.retry_after is not None:
                hdrs.append(("Retry-After", str(self.retry_after)))
            return reply(self.status_code, hdrs)
        if mode == "deny" and nreq >= self.deny_after:
            return reply(403, [("Content-Length", "0")])
        etag = '"v1-%d"' % len(data)
        if mode == "etagflip" and mode not in self.fixed:
            with self.lock:
                self.etag_counter += 1
                etag = '"flip-%d"' % (self.etag_counter % 2)
        size = len(data)
        begin, end = 0, size
        status = 200
        if rng and mode != "norange":
            m = re.match(r"bytes=(\d*)-(\d*)$", rng)
            if m and (m.group(1) or m.group(2)):
                if m.group(1):
                    begin = int(m.group(1))
                    end = min(size, int(m.group(2)) + 1) if m.group(2) else size
                else:
                    begin = max(0, size - int(m.group(2)))
                if begin >= size:
                    return reply(416, [("Content-Range", "bytes */%d" % size), ("Content-Length", "0")])
                status = 206
        hdrs = [("Content-Length", str(end - begin)), ("ETag", etag),
                ("Last-Modified", "Wed, 21 Oct 2015 07:28:00 GMT"), ("Accept-Ranges", "bytes"),
                ("Content-Type", "application/octet-stream")]
        if status == 206:
            hdrs.append(("Content-Range", "bytes %d-%d/%d" % (begin, end - 1, size)))
        body = data[begin:end]
        if mode == "drop" and not head:
            with self.lock:
                first = begin not in self.dropped
                self.dropped.add(begin)
            if first and len(body) > self.drop_after:
                h.send_response(status)
                for k, v in hdrs:
                    h.send_header(k, v)
                h.end_headers()
                try:
                    h.wfile.write(body[: self.drop_after])
                    h.wfile.flush()
                except OSError:
                    pass
                rec.update(status=status, bytes=self.drop_after, end=time.monotonic(), dropped=True)
                self._record(**rec)
                h.close_connection = True
                try:
                    h.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
        if mode == "slow" and not head:
            h.send_response(status)
            for k, v in hdrs:
                h.send_header(k, v)
            h.end_headers()
            sent = 0
            step = max(1, self.slow_rate // 20)
            try:
                while sent < len(body):
                    h.wfile.write(body[sent : sent + step])
                    sent += min(step, len(body) - sent)
                    time.sleep(0.05)
            except OSError:
                pass
            rec.update(status=status, bytes=sent, end=time.monotonic())
            self._record(**rec)
            return
        reply(status, hdrs, body)

    MISBEHAVING = {"cut", "rst", "cutall", "badrange", "shortrange", "longrange", "gzip", "gzipbody", "chunked", "busy1",
                   "busyhuge", "busyabsurd", "blackhole", "trickle", "redirmeta", "redirfile",
                   "redirloop", "malformed", "bigheaders"}
    ONCE = {"cut", "rst", "badrange", "shortrange", "blackhole", "trickle"}

    def fix(self, mode):
        """`mode` behaves from now on (a blackhole or trickle in progress ends)."""
        with self.lock:
            self.fixed.add(mode)

    def _misbehave(self, h, head, mode, path, rng, data, rec):
        """Answers one request the way `mode` misbehaves; False to answer
        normally (a "once" mode already spent, or a probe it spares)."""
        size = len(data)
        begin, end, ranged = 0, size, False
        m = re.match(r"bytes=(\d*)-(\d*)$", rng or "")
        if m and (m.group(1) or m.group(2)):
            ranged = True
            if m.group(1):
                begin = int(m.group(1))
                end = min(size, int(m.group(2)) + 1) if m.group(2) else size
            else:
                begin = max(0, size - int(m.group(2)))
        if mode in self.ONCE:
            if rng == "bytes=0-0":
                return False  # the 1-byte probe is spared: the body requests misbehave
            with self.lock:
                if path in self.spent:
                    return False
                self.spent.add(path)
        if mode == "cutall" and rng == "bytes=0-0":
            return False
        if mode == "busy1":
            with self.lock:
                if path in self.spent:
                    return False
                self.spent.add(path)
        etag = '"v1-%d"' % size
        status = 206 if ranged else 200
        base = [("ETag", etag), ("Last-Modified", "Wed, 21 Oct 2015 07:28:00 GMT"),
                ("Accept-Ranges", "bytes"), ("Content-Type", "application/octet-stream")]

        def cr(b, e):
            return [("Content-Range", "bytes %d-%d/%d" % (b, e - 1, size))] if status == 206 else []

        def send(status_line, headers, body=b"", close=False):
            out = status_line.encode() + b"\r\n"
            for k, v in headers:
                out += ("%s: %s\r\n" % (k, v)).encode()
            out += b"\r\n"
            try:
                h.wfile.write(out)
                if not head and body:
                    h.wfile.write(body)
                h.wfile.flush()
            except OSError:
                pass
            rec.update(status=int(status_line.split()[1]) if status_line.split()[1].isdigit() else 0,
                       bytes=0 if head else len(body), end=time.monotonic(), mode=mode)
            self._record(**rec)
            if close:
                h.close_connection = True

        def line(st):
            return "HTTP/1.1 %d %s" % (st, http.client.responses.get(st, "X"))

        if mode in ("cut", "rst", "cutall"):
            body = data[begin:end]
            part = b"" if mode == "cutall" else body[: max(1, len(body) // 2)]
            send(line(status), base + cr(begin, end) + [("Content-Length", str(len(body)))], part, close=True)
            if mode == "rst":
                try:
                    h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
            try:
                h.connection.shutdown(socket.SHUT_RDWR) if mode == "cut" else h.connection.close()
            except OSError:
                pass
            return True
        if mode == "badrange" and ranged:
            b = min(begin + 1, end - 1)
            send(line(206), base + [("Content-Range", "bytes %d-%d/%d" % (b, end - 1, size)),
                                    ("Content-Length", str(end - b))], data[b:end])
            return True
        if mode == "shortrange" and ranged and end - begin > 1:
            send(line(206), base + [("Content-Range", "bytes %d-%d/%d" % (begin, end - 2, size)),
                                    ("Content-Length", str(end - 1 - begin))], data[begin:end - 1])
            return True
        if mode == "longrange" and ranged:
            send(line(206), base + [("Content-Range", "bytes %d-%d/%d" % (begin, size - 1, size)),
                                    ("Content-Length", str(size - begin))], data[begin:])
            return True
        if mode == "gzipbody" and rng == "bytes=0-0":
            return False
        if mode in ("gzip", "gzipbody"):
            z = gzip.compress(data[begin:end])
            send(line(status), base + cr(begin, end) + [("Content-Encoding", "gzip"),
                                                        ("Content-Length", str(len(z)))], z)
            return True
        if mode == "chunked":
            body = data[begin:end]
            chunks = b"".join(b"%x\r\n" % len(body[i:i + 7000]) + body[i:i + 7000] + b"\r\n"
                              for i in range(0, len(body), 7000)) + b"0\r\n\r\n"
            send(line(status), base + cr(begin, end) + [("Transfer-Encoding", "chunked")], chunks)
            return True
        if mode in ("busy1", "busyhuge", "busyabsurd"):
            st, ra = {"busy1": (429, "1"), "busyhuge": (503, "86400"),
                      "busyabsurd": (503, "99999999999999999")}[mode]
            send(line(st), [("Retry-After", ra), ("Content-Length", "0")])
            return True
        if mode == "blackhole":
            rec.update(status=0, bytes=0, end=time.monotonic(), mode=mode)
            self._record(**rec)
            while mode not in self.fixed and not self.stopping.wait(0.05):
                pass
            h.close_connection = True
            return True
        if mode == "trickle":
            body = data[begin:end]
            hdr = line(status) + "\r\n" + "".join("%s: %s\r\n" % kv for kv in base + cr(begin, end)) + \
                "Content-Length: %d\r\n\r\n" % len(body)
            sent = 0
            try:
                h.wfile.write(hdr.encode())
                while sent < len(body) and mode not in self.fixed and not self.stopping.is_set():
                    h.wfile.write(body[sent:sent + 1])
                    h.wfile.flush()
                    sent += 1
                    self.stopping.wait(0.25)
            except OSError:
                pass
            rec.update(status=status, bytes=sent, end=time.monotonic(), mode=mode)
            self._record(**rec)
            h.close_connection = True
            return True
        if mode in ("redirmeta", "redirfile", "redirloop"):
            loc = {"redirmeta": "http://169.254.169.254/latest/meta-data/",
                   "redirfile": "file:///etc/passwd",
                   "redirloop": self.url(path)}[mode]
            send(line(302), [("Location", loc), ("Content-Length", "0")])
            return True
        if mode == "malformed":
            send("HTTP/1.1 2OO OK", base + [("Content-Length", str(end - begin))], data[begin:end], close=True)
            return True
        if mode == "bigheaders":
            pad = [("X-Pad-%d" % i, "p" * 100) for i in range(1000)]
            send(line(status), base + cr(begin, end) + pad + [("Content-Length", str(end - begin))],
                 data[begin:end])
            return True
        return False

    def count(self, path=None):
        with self.lock:
            return sum(1 for r in self.requests if path is None or r["path"] == path)

    def settle(self, timeout=10):
        """Waits until the gateways of this process are idle (see
        settle_gateways) and no request is being answered, so `requests`
        holds every request the gateway made. Returns a copy of it."""
        settle_gateways(timeout)

        def quiet():
            with self.lock:
                return self.in_flight == 0
        wait_until(quiet, timeout, interval=0.005, what="the scripted origin to finish its answers")
        with self.lock:
            return [dict(r) for r in self.requests]

    def sent(self, path=None):
        with self.lock:
            return sum(r.get("bytes", 0) for r in self.requests if path is None or r["path"] == path)

    def stop(self):
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


# --------------------------------------------------------------------- base class


class GatewayTest(unittest.TestCase):
    """Tracks fixtures and tears them down even when a test fails."""

    def setUp(self):
        self._fixtures = []
        self.tmp = tempfile.mkdtemp(prefix="slip-test-")
        self._fixtures.append(lambda: shutil.rmtree(self.tmp, ignore_errors=True))

    def tearDown(self):
        for fn in reversed(self._fixtures):
            try:
                fn()
            except Exception:
                pass

    def nginx(self, root, **kw):
        n = NginxOrigin(root, **kw)
        self._fixtures.append(n.stop)
        return n

    def gateway(self, ini, **kw):
        g = Gateway(ini, **kw)
        self._fixtures.append(g.cleanup)
        return g

    def scripted(self, files):
        o = ScriptedOrigin(files)
        self._fixtures.append(o.stop)
        return o

    def http_mount(self, name, base_url, picky=True, extra=""):
        hdr = ""
        if picky:
            hdr = "header = Referer: %s\nheader = User-Agent: %s\n" % (REFERER, USER_AGENT)
        return "[mount %s]\nsource = http\nbase_url = %s\n%s%s\n" % (name, base_url, hdr, extra)
