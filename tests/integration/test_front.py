"""The front end of our own (bufferevents + llhttp): RFC 9112 framing with
raw sockets, unknown methods, request bodies and their limit, connections
counted at accept, the header timeout, running out of file descriptors,
a failure right after the headers, the gateway's own requests refused,
SIGHUP, and the access log's fields.

Every test talks to the real binary over loopback and asserts statuses,
bytes, closes, log lines and counters — never durations (the EMFILE test
reads the process's CPU ticks from /proc, a counter).
"""

import os
import re
import resource
import signal
import socket
import threading
import time

from harness import GatewayTest, random_bytes, request, sha256, wait_until, write_file
from test_edge import FakeAList, get_with_source

KiB = 1024
MiB = 1024 * 1024
STATUS_RE = re.compile(rb"HTTP/1\.[01] (\d{3}) ")  # not anchored: pipelined answers follow bodies


def converse(port, data, timeout=5.0, source="127.0.0.1"):
    """Sends `data` without half-closing and reads until the server closes.
    Returns (bytes received, closed by the server within `timeout`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0)) as s:
        if data:
            s.sendall(data)
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                return out, False
            except ConnectionResetError:
                return out, True
            if not chunk:
                return out, True
            out += chunk
        return out, False


def statuses(reply):
    return [int(m) for m in STATUS_RE.findall(reply)]


def head_of(reply):
    head, _, body = reply.partition(b"\r\n\r\n")
    fields = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        k, _, v = line.partition(":")
        fields[k.strip().lower()] = v.strip()
    return fields, body


def log_lines(gw, event):
    return [l for l in gw.errors().splitlines() if " event=%s " % event in l + " "]


def cpu_ticks(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def metric(text, name):
    m = re.search(r"(?m)^%s (\d+)$" % re.escape(name), text)
    return int(m.group(1)) if m else None


class FrontTest(GatewayTest):
    def local_gateway(self, server=""):
        self.root = os.path.join(self.tmp, "www")
        self.data = random_bytes(200 * KiB, seed=77)
        write_file(os.path.join(self.root, "f.bin"), self.data)
        return self.gateway("[server]\nlog_level = debug\nshutdown_grace = 1s\n%s\n"
                            "[mount loc]\nsource = local\nroot = %s\n" % (server, self.root))


# ------------------------------------------------------------------ framing


class Framing(FrontTest):
    def test_framing_refused_and_closed(self):
        gw = self.local_gateway()
        smuggled = b"GET /-/health HTTP/1.1\r\nHost: gw\r\n\r\n"
        h = b"Host: gw\r\n"
        rows = [
            ("duplicate differing Content-Length",
             b"POST /p/loc/f.bin HTTP/1.1\r\n" + h + b"Content-Length: 5\r\nContent-Length: 41\r\n\r\nhello" + smuggled,
             400),
            ("Content-Length and Transfer-Encoding",
             b"POST /p/loc/f.bin HTTP/1.1\r\n" + h + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"0\r\n\r\n" + smuggled, 400),
            ("unknown coding xchunked",
             b"POST /p/loc/f.bin HTTP/1.1\r\n" + h + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + smuggled, 501),
            ("gzip, chunked", b"POST /p/loc/f.bin HTTP/1.1\r\n" + h + b"Transfer-Encoding: gzip, chunked\r\n\r\n"
             b"0\r\n\r\n" + smuggled, 501),
            ("CONNECT", b"CONNECT other.host:443 HTTP/1.1\r\nHost: other.host:443\r\n\r\n" + smuggled, 405),
            ("absolute-form", b"GET http://other.host/ HTTP/1.1\r\nHost: other.host\r\n\r\n" + smuggled, 400),
            ("HTTP/1.2", b"GET /p/loc/f.bin HTTP/1.2\r\n" + h + b"\r\n" + smuggled, 505),
            ("no Host", b"GET /p/loc/f.bin HTTP/1.1\r\n\r\n" + smuggled, 400),
            ("two Hosts", b"GET /p/loc/f.bin HTTP/1.1\r\n" + h + h + b"\r\n" + smuggled, 400),
            ("unrecognised method", b"FOO /p/loc/f.bin HTTP/1.1\r\n" + h + b"\r\n" + smuggled, 501),
            ("bare LF", b"GET /p/loc/f.bin HTTP/1.1\nHost: gw\n\n" + smuggled, 400),
            # Raw UTF-8 is read as its percent-encoded form (test_dav.py); invalid UTF-8 is refused.
            ("Latin-1 target", b"GET /p/loc/caf\xe9 HTTP/1.1\r\n" + h + b"\r\n" + smuggled, 400),
        ]
        for what, raw, want in rows:
            with self.subTest(what):
                reply, closed = converse(gw.port, raw)
                self.assertEqual(statuses(reply), [want], reply[:400])
                self.assertTrue(closed, "connection left open after %r: %r" % (what, reply[:300]))
                fields, _ = head_of(reply)
                self.assertEqual(fields.get("connection"), "close")
        # The same connection handles keep-alive and pipelining correctly.
        pipelined = (b"GET /p/loc/f.bin HTTP/1.1\r\n" + h + b"Range: bytes=0-9\r\n\r\n"
                     b"HEAD /p/loc/f.bin HTTP/1.1\r\n" + h + b"\r\n"
                     b"GET /-/health HTTP/1.1\r\n" + h + b"Connection: close\r\n\r\n")
        reply, closed = converse(gw.port, pipelined)
        self.assertEqual(statuses(reply), [206, 200, 200], reply[:600])
        self.assertTrue(closed)
        self.assertIn(b"\r\n\r\n" + self.data[:10] + b"HTTP/1.1 200 OK", reply)
        # Nothing smuggled was ever answered, and the refusals were counted by reason.
        lines = gw.wait_access(len(rows) + 3)
        self.assertEqual([l["path"] for l in lines].count("/-/health"), 1)
        text = gw.get("/-/metrics").body.decode()
        for reason, n in (("bad_framing", 2), ("unsupported_coding", 2), ("bad_version", 1),
                          ("bad_host", 2), ("unknown_method", 1), ("absolute_target", 1)):
            self.assertEqual(metric(text, 'slipstream_request_failures_total{reason="%s"}' % reason), n, reason)

    def test_every_other_method_reaches_the_router_as_405(self):
        gw = self.local_gateway()
        for method, path in (("PROPFIND", "/p/loc/f.bin"), ("OPTIONS", "/p/loc/f.bin"), ("MKCOL", "/p/loc/"),
                             ("PUT", "/p/loc/f.bin"), ("PROPFIND", "/davx"), ("DELETE", "/-/metrics")):
            with self.subTest(method=method, path=path):
                reply, closed = converse(gw.port, ("%s %s HTTP/1.1\r\nHost: gw\r\nDepth: 1\r\n"
                                                   "Content-Length: 0\r\n\r\n" % (method, path)).encode())
                self.assertEqual(statuses(reply), [405], reply[:300])
                fields, body = head_of(reply)
                self.assertEqual(fields.get("allow"), "GET, HEAD")
                self.assertEqual(int(fields["content-length"]), len(body))
        lines = gw.wait_access(6)
        self.assertEqual([l["method"] for l in lines][:3], ["PROPFIND", "OPTIONS", "MKCOL"])
        self.assertEqual({l["reason"] for l in lines}, {"method_not_allowed"})


class Bodies(FrontTest):
    def test_request_body_limit(self):
        gw = self.local_gateway("max_request_body = 1K\n")
        h = b"Host: gw\r\n"
        with self.subTest("Content-Length over the limit: refused at the head"):
            reply, closed = converse(gw.port, b"PROPFIND /p/loc/ HTTP/1.1\r\n" + h + b"Content-Length: 2000\r\n\r\n")
            self.assertEqual(statuses(reply), [413], reply[:300])
            self.assertTrue(closed)
        with self.subTest("chunked over the limit"):
            chunks = b"".join(b"200\r\n" + b"x" * 512 + b"\r\n" for _ in range(3)) + b"0\r\n\r\n"
            reply, closed = converse(gw.port, b"PROPFIND /p/loc/ HTTP/1.1\r\n" + h +
                                     b"Transfer-Encoding: chunked\r\n\r\n" + chunks)
            self.assertEqual(statuses(reply), [413], reply[:300])
            self.assertTrue(closed)
        with self.subTest("within the limit: read, then the method is judged"):
            body = b"<?xml version=\"1.0\"?><propfind xmlns=\"DAV:\"><allprop/></propfind>" * 10
            reply, _ = converse(gw.port, b"PROPFIND /p/loc/ HTTP/1.1\r\n" + h + b"Content-Length: %d\r\n\r\n"
                                % len(body) + body)
            self.assertEqual(statuses(reply), [405], reply[:300])
        with self.subTest("Expect: 100-continue"):
            with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
                s.sendall(b"PROPFIND /p/loc/ HTTP/1.1\r\n" + h + b"Expect: 100-continue\r\n"
                          b"Content-Length: 10\r\nConnection: close\r\n\r\n")
                got = b""
                while b"\r\n\r\n" not in got:
                    got += s.recv(4096)
                self.assertTrue(got.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), got)
                s.sendall(b"0123456789")
                while True:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    got += chunk
            self.assertEqual(statuses(got), [100, 405], got[:300])
        with self.subTest("a GET must not carry a body"):
            reply, closed = converse(gw.port, b"GET /p/loc/f.bin HTTP/1.1\r\n" + h + b"Content-Length: 5\r\n\r\nhello")
            self.assertEqual(statuses(reply), [400], reply[:300])
            self.assertTrue(closed)
        self.assertEqual(gw.get("/p/loc/f.bin").body, self.data)


# ------------------------------------------------------------------ connections


class Connections(FrontTest):
    def test_connections_counted_at_accept_and_silent_ones_reaped(self):
        gw = self.local_gateway("max_connections = 4\nheader_timeout = 1s\n")
        fds = lambda: len(os.listdir("/proc/%d/fd" % gw.proc.pid))  # noqa: E731
        base = fds()
        idle = [socket.create_connection(("127.0.0.1", gw.port), timeout=10) for _ in range(4)]
        try:
            wait_until(lambda: fds() >= base + 4, 10, what="four idle connections to be accepted")
            # The fifth is over the limit before it says a word.
            reply, closed = converse(gw.port, b"", timeout=5)
            self.assertEqual(statuses(reply), [503], reply[:300])
            self.assertTrue(closed)
            # The silent ones are closed after header_timeout, without a response.
            for s in idle:
                s.settimeout(10)
                self.assertEqual(s.recv(100), b"")
            # A client that sends part of a request, then stalls: 408 and close.
            reply, closed = converse(gw.port, b"GET /p/loc/f.bin HTTP/1.1\r\nHost: gw\r\n", timeout=10)
            self.assertEqual(statuses(reply), [408], reply[:300])
            self.assertTrue(closed)
        finally:
            for s in idle:
                s.close()
        self.assertEqual(gw.get("/p/loc/f.bin").body, self.data)
        text = gw.get("/-/metrics").body.decode()
        self.assertEqual(metric(text, "slipstream_refused_connections_total"), 1)
        self.assertEqual(metric(text, 'slipstream_request_failures_total{reason="overloaded"}'), 1)
        self.assertEqual(metric(text, 'slipstream_request_failures_total{reason="request_timeout"}'), 1)

    def test_out_of_descriptors_pauses_accept_without_spinning(self):
        gw = self.local_gateway("header_timeout = 1s\n")
        pid = gw.proc.pid
        self.assertEqual(gw.get("/-/health").status, 200)
        fds = [int(n) for n in os.listdir("/proc/%d/fd" % pid)]
        limit = len(fds) + 12
        free = limit - sum(1 for fd in fds if fd < limit)  # descriptors it can still open
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, limit))
        # More idle clients than descriptors: the kernel queues the rest.
        # After one header_timeout the first batch is reaped and the rest
        # of the queue fits, so this is one episode.
        idle = [socket.create_connection(("127.0.0.1", gw.port), timeout=10) for _ in range(free + free // 2)]
        try:
            wait_until(lambda: log_lines(gw, "accept_paused"), 10, what="accept to pause")
            before = cpu_ticks(pid)
            time.sleep(2.0)
            spent = cpu_ticks(pid) - before
            print("\n    [fig] %d CPU ticks in 2 s while out of descriptors (free=%d)" % (spent, free), end="")
            self.assertLess(spent, 20, "the gateway spun while out of file descriptors")
            r = gw.get("/p/loc/f.bin", timeout=20)
            self.assertEqual(r.status, 200)
            self.assertEqual(sha256(r.body), sha256(self.data))
        finally:
            for s in idle:
                s.close()
        paused = log_lines(gw, "accept_paused")
        # One episode: one line per thread that accepts on the address (each
        # has its own listener with `workers`, and each ran out).
        threads = int(os.environ.get("SLIP_TEST_WORKERS") or os.cpu_count() or 1)  # default: auto
        self.assertTrue(1 <= len(paused) <= threads, paused)
        self.assertIn("error=\"Too many open files\"", paused[0])
        self.assertLess(len(gw.errors()), 200 * KiB, "the error log flooded")
        self.assertEqual(metric(gw.get("/-/metrics").body.decode(), "slipstream_accept_pauses_total"), len(paused))


# ------------------------------------------------------------------ a failure after the headers


class CuttingOrigin:
    """Answers /len/NAME with the whole file's Content-Length and
    /chunked/NAME chunked, sends `cut` bytes of the body, then closes."""

    def __init__(self, data, cut):
        self.data, self.cut = data, cut
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.stopped = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(c,), daemon=True).start()

    def _one(self, c):
        with c:
            got = b""
            while b"\r\n\r\n" not in got:
                chunk = c.recv(4096)
                if not chunk:
                    return
                got += chunk
            path = got.split(b" ")[1].decode()
            part = self.data[: self.cut]
            if path.startswith("/len/"):
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(self.data) + part)
            else:
                c.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % len(part) + part + b"\r\n")
            c.shutdown(socket.SHUT_WR)
            c.settimeout(2)
            try:
                c.recv(4096)
            except OSError:
                pass

    def stop(self):
        self.stopped = True
        self.sock.close()


class FailAfterHeaders(FrontTest):
    def test_status_and_short_body_reach_the_client(self):
        data = random_bytes(MiB, seed=78)
        origin = CuttingOrigin(data, 64 * KiB)
        self._fixtures.append(origin.stop)
        gw = self.gateway("[server]\nlog_level = debug\n[mount cut]\nsource = http\nbase_url = http://127.0.0.1:%d\n"
                          "cache = off\n" % origin.port)
        for kind in ("len", "chunked"):
            with self.subTest(kind):
                reply, closed = converse(gw.port, b"GET /p/cut/%s/f.bin HTTP/1.1\r\nHost: gw\r\n\r\n" % kind.encode(),
                                         timeout=15)
                self.assertTrue(closed, "the gateway kept the connection after a failed body")
                self.assertEqual(statuses(reply)[:1], [200], "no status line: %r" % reply[:200])
                fields, body = head_of(reply)
                if kind == "len":
                    self.assertEqual(fields.get("content-length"), str(len(data)))
                    self.assertGreater(len(body), 0)
                    self.assertLess(len(body), len(data))
                    self.assertEqual(body, data[: len(body)])
                else:
                    self.assertEqual(fields.get("transfer-encoding"), "chunked")
                    self.assertFalse(body.endswith(b"0\r\n\r\n"), "a cut body presented as complete")
                    # What came is a well-formed chunk of the file's first bytes.
                    m = re.match(rb"([0-9a-f]+)\r\n", body)
                    self.assertTrue(m, body[:40])
                    n = int(m.group(1), 16)
                    self.assertEqual(body[m.end(): m.end() + n], data[:n])
        lines = gw.wait_access(2)
        self.assertEqual([(l["status"], l["reason"]) for l in lines], [("200", "upstream_reset")] * 2)


# ------------------------------------------------------------------ the gateway's own requests


class SelfRequests(FrontTest):
    def test_links_pointing_at_the_gateway_are_refused(self):
        holder = {}

        def resolve(path, nth):
            # The gateway's own address as bound: refused when the source
            # returns it (502 source_bad_link), never fetched.
            if path == "/metrics.bin":
                return {"url": "http://127.0.0.1:%d/-/metrics" % holder["port"], "header": {}}
            if path == "/loop.bin":
                return {"url": "http://127.0.0.1:%d/p/raw/loop.bin" % holder["port"], "header": {}}
            # Another name for it: only the request itself can tell (508 self_request).
            if path == "/alias-metrics.bin":
                return {"url": "http://localhost:%d/-/metrics" % holder["port"], "header": {}}
            if path == "/alias-loop.bin":
                return {"url": "http://localhost:%d/p/raw/alias-loop.bin" % holder["port"], "header": {}}
            return None

        fake = FakeAList("tok", resolve)
        self._fixtures.append(fake.stop)
        # `al` goes through the cache; `raw` (cache = off) answers without the
        # fill's retries, which is where a loop would spin fastest.
        gw = self.gateway("[server]\nlog_level = debug\nadmin_allow = 127.0.0.1/32\n"
                          "[cache]\ndir = @CACHE@\nmin_free = 0\nmax_size = 64M\n"
                          "[mount al]\nsource = alist\nurl = %s\ntoken = tok\n"
                          "[mount raw]\nsource = alist\nurl = %s\ntoken = tok\ncache = off\n" % (fake.url(), fake.url()))
        holder["port"] = gw.port
        # 127.0.0.2 is not an admin client...
        st, _, _ = get_with_source(gw.port, "/-/metrics", "127.0.0.2")
        self.assertEqual(st, 403)
        # ... and cannot reach the admin page through a link either, nor loop.
        paths = ("/p/al/metrics.bin", "/p/raw/metrics.bin", "/p/raw/loop.bin",
                 "/p/al/alias-metrics.bin", "/p/raw/alias-metrics.bin", "/p/raw/alias-loop.bin")
        for path in paths:
            with self.subTest(path):
                st, _, body = get_with_source(gw.port, path, "127.0.0.2", timeout=60)
                self.assertEqual(st, 502, body[:300])
                self.assertNotIn(b"slipstream_", body)
        wait_until(lambda: {l["path"] for l in gw.access() if l["status"] == "502"} >= set(paths),
                   5, what="the access log")  # written every 200 ms
        by_path = {l["path"]: l for l in gw.access() if l["path"] in paths and l["status"] == "502"}
        for path in paths[:3]:
            self.assertEqual(by_path[path]["reason"], "source_bad_link", path)
        own = [l for l in gw.access() if l["status"] == "508"]
        self.assertEqual({l["reason"] for l in own}, {"self_request"})
        self.assertEqual(sorted({l["path"] for l in own}), ["/-/metrics", "/p/raw/alias-loop.bin"])
        # The loop was cut at the first turn: one request of the gateway's own per client request.
        self.assertEqual(sum(1 for l in own if l["path"] == "/p/raw/alias-loop.bin"), 1)
        text = gw.get("/-/metrics").body.decode()  # from 127.0.0.1: an admin client
        self.assertEqual(metric(text, "slipstream_cache_objects"), 0)
        self.assertGreaterEqual(metric(text, 'slipstream_request_failures_total{reason="self_request"}'), 3)
        self.assertGreaterEqual(metric(text, 'slipstream_request_failures_total{reason="source_bad_link"}'), 3)


# ------------------------------------------------------------------ signals and the access log


class SignalsAndLog(FrontTest):
    def test_sighup_is_logged_and_survived(self):
        gw = self.local_gateway()
        for n in (1, 2):
            gw.signal(signal.SIGHUP)
            wait_until(lambda: len(log_lines(gw, "reloaded")) >= n, 10, what="the SIGHUP log line")
        self.assertIsNone(gw.proc.poll(), "SIGHUP killed the gateway")
        self.assertEqual(gw.get("/p/loc/f.bin").body, self.data)
        self.assertEqual(gw.stop(), 0)

    def test_access_log_has_range_user_agent_and_ttfb(self):
        gw = self.local_gateway()
        r = gw.get("/p/loc/f.bin", headers={"Range": "bytes=100-199", "User-Agent": "VLC/3.0.20 LibVLC/3.0.20"})
        self.assertEqual((r.status, r.body), (206, self.data[100:200]))
        r = request(gw.port, "/p/nosuch/x.bin", headers={"User-Agent": "curl/8"})
        self.assertEqual(r.status, 404)
        first, second = gw.wait_access(2)[:2]
        self.assertEqual(first["range"], '"bytes=100-199"')
        self.assertEqual(first["ua"], '"VLC/3.0.20 LibVLC/3.0.20"')
        self.assertLessEqual(float(first["ttfb_ms"]), float(first["ms"]))
        self.assertEqual((second["range"], second["ua"], second["reason"]), ("-", "curl/8", "unknown_mount"))
        self.assertNotEqual(second["ttfb_ms"], "-")
        # The state trail of each request, at debug level.
        trails = {l.split(" id=")[1].split()[0]: l.split(" trail=")[1] for l in log_lines(gw, "request_trail")}
        self.assertEqual(trails[first["id"]], "parsing>deciding>opening>streaming>done")
        self.assertEqual(trails[second["id"]], "parsing>deciding>failed")
        text = gw.get("/-/metrics").body.decode()
        self.assertEqual(metric(text, 'slipstream_request_failures_total{reason="unknown_mount"}'), 1)
