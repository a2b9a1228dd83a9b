"""Issue 2, "What it must show": the foundation end to end.

Ranges and HEAD on the streaming proxy (`cache = off`) and on a `local`
mount, Content-Disposition for CJK names, 302 delivery with a percent-encoded
Location followed by a real curl, hostile requests, backpressure (RSS bounded
with a slow reader), client abort (the origin sees the upstream transfer end
early), `local` symlink escapes, `slipstream check`, the access log and a
graceful SIGTERM drain.

Every test asserts on statuses, exact headers, byte hashes and what reached
the origin (nginx access log), so each one can fail.
"""

import email.utils
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse

from harness import (BIN, ROOT, REFERER, USER_AGENT, GatewayTest, curl, random_bytes, raw_request,
                     raw_status, request, rss_limit, sha256, wait_until, write_file)

MiB = 1024 * 1024
SMALL = 200_003  # odd size: no range lines up with anything by accident
CJK_NAME = "电影 合集.mkv"
QUOTE_NAME = 'say "hi".txt'

_BIG = None


def big_data():
    """The 64 MiB file of the backpressure and abort tests, made once."""
    global _BIG
    if _BIG is None:
        _BIG = random_bytes(64 * MiB, seed=64)
    return _BIG


# ------------------------------------------------------------------ helpers


def qpath(p):
    """Percent-encodes a decoded request path the way a browser would."""
    return urllib.parse.quote(p, safe="/")


def expected_disposition(name):
    """RFC 6266 value computed independently of policy::contentDisposition:
    the quoted fallback replaces non-ASCII bytes, controls, '"' and '\\' by
    '_'; filename* is the UTF-8 bytes percent-encoded (RFC 5987 attr-chars
    kept)."""
    fallback = "".join("_" if b >= 0x80 or b < 0x20 or b == 0x7F or b in b'"\\' else chr(b)
                       for b in name.encode("utf-8"))
    star = urllib.parse.quote(name, safe="!#$&+^`|~")
    return 'inline; filename="%s"; filename*=UTF-8\'\'%s' % (fallback, star)


def parse_raw(reply):
    """Splits a raw reply into (status, [(name, value)], bytes after the head)."""
    head, sep, rest = reply.partition(b"\r\n\r\n")
    if not sep:
        raise AssertionError("no complete header block in %r" % reply[:300])
    lines = head.decode("latin-1").split("\r\n")
    m = re.match(r"HTTP/1\.[01] (\d{3})", lines[0])
    if not m:
        raise AssertionError("bad status line %r" % lines[0])
    headers = []
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        headers.append((k.strip(), v.strip()))
    return int(m.group(1)), headers, rest


def hget(headers, name):
    for k, v in headers:
        if k.lower() == name.lower():
            return v
    return None


def nginx_uri(logged):
    """nginx writes non-ASCII bytes of $uri as \\xHH: back to text."""
    raw = re.sub(rb"\\x([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]),
                 logged.encode("latin-1"))
    return raw.decode("utf-8")


def health_ok(gw):
    r = gw.get("/-/health", timeout=10)
    return r.status == 200


def connect_refused(port):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=1)
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    s.close()
    return False


def range_cases(n):
    """(Range header or None, status, begin, end, what the origin must get)."""
    mid = n // 2
    return [
        ("bytes=0-0", 206, 0, 1, "bytes=0-0"),
        ("bytes=%d-%d" % (n - 1, n - 1), 206, n - 1, n, "bytes=%d-%d" % (n - 1, n - 1)),
        ("bytes=-500", 206, n - 500, n, "bytes=-500"),
        ("bytes=%d-" % mid, 206, mid, n, "bytes=%d-" % mid),
        ("bytes=%d-%d" % (mid - 1000, mid + 999), 206, mid - 1000, mid + 1000,
         "bytes=%d-%d" % (mid - 1000, mid + 999)),
        ("bytes=0-", 206, 0, n, "bytes=0-"),
        ("bytes=%d-%d" % (n - 10, n + 1000), 206, n - 10, n, "bytes=%d-%d" % (n - 10, n + 1000)),
        ("bytes=-%d" % (10 * n), 206, 0, n, "bytes=-%d" % (10 * n)),
        ("bytes=%d-" % n, 416, None, None, "bytes=%d-" % n),
        ("bytes=%d-%d" % (n + 100, n + 200), 416, None, None, "bytes=%d-%d" % (n + 100, n + 200)),
        (None, 200, 0, n, ""),
        ("bytes=0-1,5-6", 200, 0, n, ""),
        ("bytes=abc", 200, 0, n, ""),
        ("items=0-1", 200, 0, n, ""),
        ("bytes=5-2", 200, 0, n, ""),
    ]


class FoundationBase(GatewayTest):
    def check_ranges(self, gw, path, data, content_type=None):
        n = len(data)
        for rng, status, b, e, _ in range_cases(n):
            with self.subTest(path=path, range=rng):
                r = gw.get(qpath(path), headers={"Range": rng} if rng else {})
                self.assertEqual(r.status, status, r.body[:200])
                if status == 416:
                    self.assertEqual(r.header("Content-Range"), "bytes */%d" % n)
                    continue
                self.assertEqual(r.header("Accept-Ranges"), "bytes")
                if content_type:
                    self.assertEqual(r.header("Content-Type"), content_type)
                if status == 206:
                    self.assertEqual(r.header("Content-Range"), "bytes %d-%d/%d" % (b, e - 1, n))
                else:
                    self.assertIsNone(r.header("Content-Range"))
                self.assertEqual(r.header("Content-Length"), str(e - b))
                self.assertEqual(len(r.body), e - b)
                self.assertEqual(sha256(r.body), sha256(data[b:e]))


# ------------------------------------------------------------------ 1, 2, 7: ranges, HEAD, local


class RangesAndHead(FoundationBase):
    def setUp(self):
        super().setUp()
        self.root = os.path.join(self.tmp, "www")
        self.data = random_bytes(SMALL, seed=11)
        self.cjk = random_bytes(70_001, seed=12)
        self.quoted = random_bytes(5_000, seed=13)
        write_file(os.path.join(self.root, "film.bin"), self.data)
        write_file(os.path.join(self.root, CJK_NAME), self.cjk)
        write_file(os.path.join(self.root, QUOTE_NAME), self.quoted)
        # 418 if a client credential leaks upstream.
        self.origin = self.nginx(self.root, picky=True, server_extra=(
            "if ($http_cookie) { return 418; }\n"
            "    if ($http_authorization) { return 418; }"))
        self.gw = self.gateway(
            self.http_mount("movies", self.origin.url(), extra="cache = off")
            + "[mount local]\nsource = local\nroot = %s\n" % self.root)

    def test_ranges_stream_http(self):
        self.origin.clear_log()
        self.check_ranges(self.gw, "/p/movies/film.bin", self.data,
                          content_type="application/octet-stream")
        # Each client request became one upstream request carrying the
        # client's single range as is (none for multi/garbage/absent), with
        # the mount's headers.
        got = [e for e in self.origin.entries() if e["uri"] == "/film.bin"]
        want = [c[4] or "-" for c in range_cases(len(self.data))]  # nginx logs "" as "-"
        self.assertEqual(sorted(e["range"] for e in got), sorted(want))
        for e in got:
            self.assertEqual((e["referer"], e["ua"]), (REFERER, USER_AGENT))
        # A ranged request pulls only its range from the origin, not the file.
        mid = len(self.data) // 2
        crossing = [e for e in got if e["range"] == "bytes=%d-%d" % (mid - 1000, mid + 999)]
        self.assertEqual(len(crossing), 1)
        self.assertEqual(crossing[0]["status"], 206)
        self.assertEqual(crossing[0]["bytes"], 2000)

    def test_client_credentials_not_forwarded(self):
        self.origin.clear_log()
        r = self.gw.get("/p/movies/film.bin", headers={
            "Range": "bytes=0-99", "Referer": "http://client.example/", "User-Agent": "VLC/3.0",
            "Cookie": "session=secret", "Authorization": "Bearer secret"})
        self.assertEqual(r.status, 206, r.body[:200])
        self.assertEqual(r.body, self.data[:100])
        es = self.origin.entries()
        self.assertEqual(len(es), 1, es)
        self.assertEqual((es[0]["status"], es[0]["referer"], es[0]["ua"]), (206, REFERER, USER_AGENT))

    def test_ranges_local(self):
        self.check_ranges(self.gw, "/p/local/film.bin", self.data,
                          content_type="application/octet-stream")
        self.check_ranges(self.gw, "/p/local/" + CJK_NAME, self.cjk, content_type="video/x-matroska")

    def test_ranges_stream_http_cjk_name(self):
        self.check_ranges(self.gw, "/p/movies/" + CJK_NAME, self.cjk, content_type="video/x-matroska")

    def _head_matches_get(self, path, rng=None):
        hdrs = {"Range": rng} if rng else {}
        g = self.gw.get(qpath(path), headers=hdrs)
        h = self.gw.get(qpath(path), headers=hdrs, method="HEAD")
        self.assertIn(g.status, (200, 206))
        self.assertEqual(h.status, g.status)
        names = lambda r: sorted(set(r.header_names()) - {"date"})
        self.assertEqual(names(h), names(g))
        for k in ("Content-Length", "Content-Type", "Content-Range", "ETag", "Last-Modified",
                  "Accept-Ranges", "Content-Disposition", "X-Cache"):
            self.assertEqual(h.header(k), g.header(k), "%s differs between HEAD and GET" % k)
        for k in ("Content-Length", "Content-Type", "ETag", "Last-Modified", "Accept-Ranges",
                  "Content-Disposition"):
            self.assertIsNotNone(g.header(k), "%s missing on %s" % (k, path))
        self.assertEqual(h.body, b"")
        # http.client would hide body bytes after a HEAD: read the raw socket.
        req = "HEAD %s HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n%s\r\n" % (
            qpath(path), "Range: %s\r\n" % rng if rng else "")
        st, raw_hdrs, rest = parse_raw(raw_request(self.gw.port, req.encode(), timeout=5))
        self.assertEqual(st, g.status)
        self.assertEqual(hget(raw_hdrs, "Content-Length"), g.header("Content-Length"))
        self.assertEqual(rest, b"", "HEAD answer carried %d body bytes" % len(rest))
        return g

    def test_head_same_as_get_http(self):
        for path, rng in (("/p/movies/film.bin", None), ("/p/movies/film.bin", "bytes=100-199"),
                          ("/p/movies/" + CJK_NAME, None), ("/p/movies/" + CJK_NAME, "bytes=-10")):
            with self.subTest(path=path, range=rng):
                g = self._head_matches_get(path, rng)
                self.assertEqual(g.header("X-Cache"), "MISS")
        # Validators are the origin's own.
        direct = request(self.origin.url("/film.bin"), method="HEAD",
                         headers={"Referer": REFERER, "User-Agent": USER_AGENT})
        self.assertEqual(direct.status, 200)
        g = self.gw.get("/p/movies/film.bin", method="HEAD")
        self.assertEqual(g.header("ETag"), direct.header("ETag"))
        self.assertEqual(g.header("Last-Modified"), direct.header("Last-Modified"))

    def test_head_same_as_get_local(self):
        for path, rng in (("/p/local/film.bin", None), ("/p/local/film.bin", "bytes=100-199"),
                          ("/p/local/" + CJK_NAME, None), ("/p/local/" + CJK_NAME, "bytes=0-")):
            with self.subTest(path=path, range=rng):
                self._head_matches_get(path, rng)
        g = self.gw.get("/p/local/film.bin", method="HEAD")
        mtime = os.stat(os.path.join(self.root, "film.bin")).st_mtime
        self.assertEqual(g.header("Last-Modified"), email.utils.formatdate(mtime, usegmt=True))

    def test_content_disposition(self):
        self.assertEqual(expected_disposition(CJK_NAME),
                         "inline; filename=\"______ ______.mkv\"; "
                         "filename*=UTF-8''%E7%94%B5%E5%BD%B1%20%E5%90%88%E9%9B%86.mkv")
        for mount in ("movies", "local"):
            for name, data in ((CJK_NAME, self.cjk), (QUOTE_NAME, self.quoted),
                               ("film.bin", self.data)):
                with self.subTest(mount=mount, name=name):
                    for method in ("GET", "HEAD"):
                        r = self.gw.get(qpath("/p/%s/%s" % (mount, name)), method=method)
                        self.assertEqual(r.status, 200)
                        self.assertEqual(r.header("Content-Disposition"), expected_disposition(name))
                        if method == "GET":
                            self.assertEqual(sha256(r.body), sha256(data))


class LocalSource(FoundationBase):
    def setUp(self):
        super().setUp()
        self.root = os.path.join(self.tmp, "www")
        self.data = random_bytes(SMALL, seed=21)
        self.secret = b"outside the mount\n"
        write_file(os.path.join(self.root, "film.bin"), self.data)
        write_file(os.path.join(self.root, "sub", "deep.bin"), self.data[:1000])
        write_file(os.path.join(self.tmp, "outside.bin"), self.secret)
        os.symlink("/etc/hostname", os.path.join(self.root, "abs_etc"))
        os.symlink(os.path.join(self.tmp, "outside.bin"), os.path.join(self.root, "abs_out"))
        os.symlink("../outside.bin", os.path.join(self.root, "rel_out"))
        os.symlink("..", os.path.join(self.root, "dir_out"))
        os.symlink("film.bin", os.path.join(self.root, "in_link"))
        os.symlink("../film.bin", os.path.join(self.root, "sub", "up_link"))
        os.symlink(os.path.join(self.root, "film.bin"), os.path.join(self.root, "abs_in"))
        self.gw = self.gateway("[mount local]\nsource = local\nroot = %s\n" % self.root)

    def test_local_ranges(self):
        self.check_ranges(self.gw, "/p/local/film.bin", self.data,
                          content_type="application/octet-stream")

    def test_symlink_escape_refused(self):
        escapes = ["/p/local/abs_etc", "/p/local/abs_out", "/p/local/rel_out",
                   "/p/local/dir_out/outside.bin"]
        for p in escapes:
            for method in ("GET", "HEAD"):
                with self.subTest(path=p, method=method):
                    r = self.gw.get(p, method=method)
                    self.assertEqual(r.status, 403, r.body)
                    self.assertNotIn(self.secret, r.body)
        lines = self.gw.wait_access(2 * len(escapes))
        refused = [l for l in lines if l.get("status") == "403"]
        self.assertEqual(len(refused), 2 * len(escapes))
        for l in refused:
            self.assertEqual(l.get("reason"), "local_escape", l)

    def test_symlink_inside_root_served(self):
        for p in ("/p/local/in_link", "/p/local/sub/up_link"):
            with self.subTest(path=p):
                r = self.gw.get(p)
                self.assertEqual(r.status, 200, r.body[:200])
                self.assertEqual(sha256(r.body), sha256(self.data))
                r = self.gw.get(p, headers={"Range": "bytes=10-19"})
                self.assertEqual(r.status, 206)
                self.assertEqual(r.body, self.data[10:20])

    def test_absolute_symlink_inside_root_served(self):
        # root/abs_in -> <root>/film.bin: absolute, but it stays inside the root.
        r = self.gw.get("/p/local/abs_in")
        self.assertEqual(r.status, 200, r.body[:200])
        self.assertEqual(sha256(r.body), sha256(self.data))

    def test_directory_and_missing_are_404(self):
        for p in ("/p/local/sub", "/p/local/sub/", "/p/local/", "/p/local", "/p/local/nope.bin",
                  "/p/local/sub/nope/deeper.bin", "/p/local/film.bin/x"):
            with self.subTest(path=p):
                r = self.gw.get(p)
                self.assertEqual(r.status, 404, r.body)
        self.assertEqual(self.gw.get("/p/local/sub/deep.bin").body, self.data[:1000])
        # /d/ on a local mount (auto) serves the bytes too: there is no link to redirect to.
        r = self.gw.get("/d/local/film.bin")
        self.assertEqual(r.status, 200)
        self.assertEqual(sha256(r.body), sha256(self.data))


# ------------------------------------------------------------------ 3: redirect


class Redirect(GatewayTest):
    NAMES = ["a b.bin", "电影/第 1 集.mkv", "x#y.bin", "q?.bin", "100%.bin", "plain.bin"]

    def setUp(self):
        super().setUp()
        self.root = os.path.join(self.tmp, "www")
        self.files = {}
        for i, name in enumerate(self.NAMES):
            d = random_bytes(30_000 + i, seed=30 + i)
            write_file(os.path.join(self.root, name), d)
            self.files[name] = d
        self.origin = self.nginx(self.root, picky=True)
        base = self.origin.url()
        self.gw = self.gateway(
            self.http_mount("rd", base, extra="delivery = redirect\ncache = off")
            + self.http_mount("autoplain", base, picky=False)
            + self.http_mount("autohdr", base, extra="delivery = auto\ncache = off"))

    def test_redirect_location_encoded_and_curl_follows(self):
        for name in self.NAMES:
            with self.subTest(name=name):
                r = self.gw.get(qpath("/d/rd/" + name))
                self.assertEqual(r.status, 302, r.body)
                want = "http://127.0.0.1:%d/%s" % (self.origin.port, urllib.parse.quote(name, safe="/"))
                self.assertEqual(r.header("Location"), want)
                self.assertEqual(r.header("Referrer-Policy"), "no-referrer")
                self.assertEqual(r.header("Cache-Control"), "no-store")
                self.assertEqual(r.body, b"")
                out = os.path.join(self.tmp, "out.bin")
                c = curl("-L", "-H", "Referer: " + REFERER, "-H", "User-Agent: " + USER_AGENT,
                         "-o", out, "-w", "%{http_code} %{num_redirects}", self.gw.url(qpath("/d/rd/" + name)))
                self.assertEqual(c.returncode, 0, c.stderr)
                self.assertEqual(c.stdout, b"200 1")
                with open(out, "rb") as f:
                    self.assertEqual(sha256(f.read()), sha256(self.files[name]))
        # The bytes came from the origin, once per name, with the client's own headers.
        got = [e for e in self.origin.entries() if e["status"] == 200]
        self.assertEqual(sorted(nginx_uri(e["uri"]) for e in got), sorted("/" + n for n in self.NAMES))
        for e in got:
            self.assertEqual((e["referer"], e["ua"]), (REFERER, USER_AGENT))
        # Without the headers the redirect alone does not help (the picky origin).
        c = curl("-L", "-o", "/dev/null", "-w", "%{http_code}", self.gw.url("/d/rd/plain.bin"))
        self.assertEqual(c.stdout, b"403")
        lines = self.gw.wait_access(len(self.NAMES) * 2 + 1)
        self.assertTrue(all(l["delivery"] == "redirect" for l in lines), lines)

    def test_proxy_route_on_redirect_mount_proxies(self):
        r = self.gw.get("/p/rd/plain.bin")
        self.assertEqual(r.status, 200)
        self.assertIsNone(r.header("Location"))
        self.assertEqual(sha256(r.body), sha256(self.files["plain.bin"]))

    def test_auto_delivery(self):
        r = self.gw.get("/d/autoplain/plain.bin")
        self.assertEqual(r.status, 302, r.body)
        self.assertEqual(r.header("Location"), self.origin.url("/plain.bin"))
        r = self.gw.get(qpath("/d/autohdr/电影/第 1 集.mkv"))
        self.assertEqual(r.status, 200, r.body[:200])
        self.assertIsNone(r.header("Location"))
        self.assertEqual(sha256(r.body), sha256(self.files["电影/第 1 集.mkv"]))
        lines = self.gw.wait_access(2)
        self.assertEqual([l["delivery"] for l in lines], ["redirect", "proxy"])


# ------------------------------------------------------------------ 4: hostile requests


class Hostile(GatewayTest):
    def setUp(self):
        super().setUp()
        self.root = os.path.join(self.tmp, "www")
        self.data = random_bytes(10_000, seed=41)
        write_file(os.path.join(self.root, "film.bin"), self.data)
        write_file(os.path.join(self.root, "x"), b"secret x\n")
        self.origin = self.nginx(self.root, picky=True)
        self.gw = self.gateway("[server]\nmax_request_line = 1K\n"
                               + self.http_mount("movies", self.origin.url(), extra="cache = off"))

    def raw(self, data):
        if isinstance(data, str):
            data = data.encode("latin-1")
        return raw_request(self.gw.port, data, timeout=5)

    def get_raw(self, target, extra=""):
        return self.raw("GET %s HTTP/1.1\r\nHost: gw\r\n%sConnection: close\r\n\r\n" % (target, extra))

    def test_hostile_requests(self):
        origin_host = "127.0.0.1:%d" % self.origin.port
        self.origin.clear_log()
        cases = [
            ("traversal raw", self.get_raw("/p/movies/../x"), 400),
            ("traversal at end", self.get_raw("/p/movies/.."), 400),
            ("traversal encoded", self.get_raw("/p/movies/%2e%2e/x"), 400),
            ("traversal encoded slash", self.get_raw("/p/movies/%2E%2e%2fx"), 400),
            ("traversal encoded backslash", self.get_raw("/p/movies/..%5cx"), 400),
            ("traversal across mount", self.get_raw("/p/movies/a/../../movies/x"), 400),
            ("raw backslash", self.get_raw("/p/movies/a\\x"), 400),
            ("encoded NUL", self.get_raw("/p/movies/x%00.bin"), 400),
            ("absolute-form", self.raw("GET http://other.host/ HTTP/1.1\r\nHost: other.host\r\n\r\n"), 400),
            ("absolute-form at the origin",
             self.raw("GET http://%s/film.bin HTTP/1.1\r\nHost: %s\r\nReferer: %s\r\nUser-Agent: %s\r\n\r\n"
                      % (origin_host, origin_host, REFERER, USER_AGENT)), 400),
            ("unknown mount", self.get_raw("/p/nosuch/film.bin"), 404),
            ("unknown route", self.get_raw("/x/movies/film.bin"), 404),
            ("64 KiB header", self.get_raw("/p/movies/film.bin", "X-Big: %s\r\n" % ("a" * 65536)), 431),
            ("long request line", self.get_raw("/p/movies/" + "a" * 2000 + ".bin"), 414),
        ]
        for what, reply, want in cases:
            with self.subTest(what):
                self.assertEqual(raw_status(reply), want, reply[:300])
                self.assertTrue(health_ok(self.gw))
        for target in ("other.host:443", origin_host):
            with self.subTest("CONNECT " + target):
                reply = self.raw("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, target))
                self.assertIn(raw_status(reply), (400, 405), reply[:300])
                self.assertTrue(health_ok(self.gw))
        for method in ("POST", "PUT", "DELETE", "OPTIONS", "PATCH"):
            with self.subTest(method):
                reply = self.raw("%s /p/movies/film.bin HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\n"
                                 "Connection: close\r\n\r\n" % method)
                st, hdrs, _ = parse_raw(reply)
                self.assertEqual(st, 405)
                self.assertEqual(hget(hdrs, "Allow"), "GET, HEAD")
                self.assertTrue(health_ok(self.gw))
        # None of it reached the origin.
        self.assertEqual(self.origin.entries(), [])
        # And a normal request still works.
        r = self.gw.get("/p/movies/film.bin")
        self.assertEqual(r.status, 200)
        self.assertEqual(sha256(r.body), sha256(self.data))

    def test_post_with_body_is_405(self):
        # A real POST carries a body; it must get the same 405 + Allow.
        self.origin.clear_log()
        reply = self.raw("POST /p/movies/film.bin HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n"
                         "Connection: close\r\n\r\nhello")
        st, hdrs, _ = parse_raw(reply)
        self.assertEqual(st, 405, reply[:300])
        self.assertEqual(hget(hdrs, "Allow"), "GET, HEAD")
        self.assertTrue(health_ok(self.gw))
        self.assertEqual(self.origin.entries(), [])

    def test_huge_head_gets_431_and_414(self):
        # Far above the limits (max_header_size 32K default, max_request_line 1K).
        with self.subTest("200 KB header"):
            reply = self.get_raw("/p/movies/film.bin", "X-Big: %s\r\n" % ("a" * 200_000))
            self.assertEqual(raw_status(reply), 431, reply[:300])
        with self.subTest("200 KB request line"):
            reply = self.get_raw("/p/movies/" + "a" * 200_000)
            self.assertEqual(raw_status(reply), 414, reply[:300])
        self.assertTrue(health_ok(self.gw))

    def test_connect_answer_is_delimited(self):
        # The refusal of a CONNECT must end: either a Content-Length the body
        # matches, or the connection closed. A client must not wait for the
        # idle timeout to learn that the answer is over.
        with socket.create_connection(("127.0.0.1", self.gw.port), timeout=5) as s:
            s.sendall(b"CONNECT other.host:443 HTTP/1.1\r\nHost: other.host:443\r\n\r\n")
            s.settimeout(0.2)
            buf, eof = b"", False
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                try:
                    chunk = s.recv(65536)
                except socket.timeout:
                    chunk = None
                if chunk == b"":
                    eof = True
                    break
                if chunk:
                    buf += chunk
                head, sep, body = buf.partition(b"\r\n\r\n")
                m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                if sep and m and len(body) >= int(m.group(1)):
                    break
        st, hdrs, body = parse_raw(buf)
        self.assertIn(st, (400, 405))
        cl = hget(hdrs, "Content-Length")
        self.assertTrue(eof or (cl is not None and len(body) == int(cl)),
                        "answer neither delimited nor closed within 2 s: %r" % buf[:300])

    def test_double_encoding_decoded_once(self):
        # %252e%252e is the literal name "%2e%2e", not "..": forwarded as a name.
        self.origin.clear_log()
        reply = self.get_raw("/p/movies/%252e%252e/x")
        self.assertEqual(raw_status(reply), 404, reply[:300])
        self.assertEqual([e["uri"] for e in self.origin.entries()], ["/%2e%2e/x"])


# ------------------------------------------------------------------ 5, 6: backpressure, abort


class SlowAndAbort(GatewayTest):
    def setUp(self):
        super().setUp()
        self.root = os.path.join(self.tmp, "www")
        self.big = big_data()
        write_file(os.path.join(self.root, "big.bin"), self.big)
        self.small = random_bytes(SMALL, seed=51)
        write_file(os.path.join(self.root, "small.bin"), self.small)

    def test_backpressure_slow_reader_bounded_rss(self):
        origin = self.nginx(self.root, picky=True)  # no limit_rate: the origin is fast
        gw = self.gateway(self.http_mount("movies", origin.url(), extra="cache = off"))
        # Without backpressure the gateway would hold the whole 64 MiB within
        # a fraction of a second (the origin is not rate-limited): 3 s of a
        # slow reader are plenty to see memory stay bounded.
        rate, duration = 512 * 1024, 3.0
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        s.settimeout(5)
        s.connect(("127.0.0.1", gw.port))
        got = bytearray()
        samples = []
        try:
            s.sendall(b"GET /p/movies/big.bin HTTP/1.1\r\nHost: gw\r\n\r\n")
            start = time.monotonic()
            next_sample = start
            while True:
                now = time.monotonic()
                if now - start >= duration:
                    break
                if now >= next_sample:
                    samples.append(gw.rss())
                    next_sample = now + 0.2
                allowed = int(rate * (now - start)) + 16 * 1024
                if len(got) < allowed:
                    chunk = s.recv(min(8192, allowed - len(got)))
                    if not chunk:
                        break
                    got += chunk
                else:
                    time.sleep(0.01)
            samples.append(gw.rss())
            peak = gw.peak_rss()
        finally:
            s.close()
        st, hdrs, body = parse_raw(bytes(got))
        self.assertEqual(st, 200)
        self.assertEqual(hget(hdrs, "Content-Length"), str(len(self.big)))
        print("\n  backpressure: read %.2f MiB in %.1fs; gateway RSS max %.1f MiB, VmHWM %.1f MiB"
              % (len(body) / MiB, duration, max(samples) / MiB, peak / MiB), file=sys.stderr)
        self.assertGreater(len(body), MiB, "the slow reader got almost nothing")
        self.assertLess(len(body), 4 * MiB, "the client read faster than intended")
        self.assertEqual(sha256(body), sha256(self.big[:len(body)]))
        self.assertLess(max(samples), rss_limit(40 * MiB), "RSS samples %r" % samples)
        self.assertLess(peak, rss_limit(40 * MiB))
        # The gateway stays usable.
        self.assertTrue(wait_until(lambda: health_ok(gw), 5, what="health after slow reader"))

    def test_client_abort_cancels_upstream(self):
        origin = self.nginx(self.root, picky=True, limit_rate="8m")
        gw = self.gateway(self.http_mount("movies", origin.url(), extra="cache = off"))
        origin.clear_log()
        s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
        got = bytearray()
        try:
            s.sendall(b"GET /p/movies/big.bin HTTP/1.1\r\nHost: gw\r\n\r\n")
            deadline = time.monotonic() + 10
            while len(got) < MiB + 4096 and time.monotonic() < deadline:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
        finally:
            s.close()
        st, hdrs, body = parse_raw(bytes(got))
        self.assertEqual(st, 200)
        self.assertGreaterEqual(len(body), MiB)
        self.assertEqual(sha256(body), sha256(self.big[:len(body)]))

        def ended():
            es = [e for e in origin.entries(settle=0) if e["uri"] == "/big.bin"]
            return es if es else None

        # A transfer left running would end only when nginx sent the rest
        # (~8 s at 8 MB/s) or timed out (60 s): the line comes from the cancel.
        es = wait_until(ended, 10, interval=0.05, what="the origin to log the aborted transfer")
        self.assertEqual(len(es), 1, es)
        e = es[0]
        print("\n  abort: origin sent %.1f MiB of 64, the client got %.1f MiB"
              % (e["bytes"] / MiB, len(body) / MiB), file=sys.stderr)
        self.assertEqual(e["status"], 200)
        self.assertFalse(e["complete"], e)
        # How soon the gateway cancelled, in bytes: at 8 MB/s the origin had
        # sent less than half the file, i.e. the cancel came within ~4 s.
        self.assertLess(e["bytes"], len(self.big) // 2, e)
        gw.wait_idle(5)  # no upstream transfer outlives its client
        lines = gw.wait_access(1)
        self.assertEqual(lines[0]["status"], "200")
        self.assertLess(int(lines[0]["bytes"]), len(self.big))
        # The gateway keeps serving.
        r = gw.get("/p/movies/small.bin")
        self.assertEqual(r.status, 200)
        self.assertEqual(sha256(r.body), sha256(self.small))
        r = gw.get("/p/movies/big.bin", headers={"Range": "bytes=1000000-2999999"})
        self.assertEqual(r.status, 206)
        self.assertEqual(sha256(r.body), sha256(self.big[1000000:3000000]))


# ------------------------------------------------------------------ 8: slipstream check


class ConfigCheck(unittest.TestCase):
    SHIPPED = os.path.join(ROOT, "conf", "slipstream.ini")

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="slip-check-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def check(self, path):
        return subprocess.run([BIN, "check", "-c", path], capture_output=True, timeout=30)

    def require_shipped(self):
        if not os.path.exists(self.SHIPPED):
            self.fail("conf/slipstream.ini does not exist: issue 2 requires a commented example "
                      "config that `slipstream check` accepts")

    def test_shipped_config_passes(self):
        self.require_shipped()
        p = self.check(self.SHIPPED)
        self.assertEqual(p.returncode, 0, p.stdout.decode() + p.stderr.decode())

    def test_broken_copy_of_shipped_config(self):
        self.require_shipped()
        with open(self.SHIPPED, encoding="utf-8") as f:
            lines = f.read().split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        # max_size = 10Q in [cache]: replace an active max_size there, else
        # insert right after the [cache] header, else add the section.
        section, cache_hdr, size_line = None, None, None
        for i, ln in enumerate(lines):
            t = ln.strip()
            m = re.match(r"\[([^\]]+)\]", t)
            if m:
                section = m.group(1).strip()
                if section == "cache":
                    cache_hdr = i
                continue
            if section == "cache" and re.match(r"max_size\s*=", t):
                size_line = i
        if size_line is not None:
            lines[size_line] = "max_size = 10Q"
        elif cache_hdr is not None:
            lines.insert(cache_hdr + 1, "max_size = 10Q")
            size_line = cache_hdr + 1
        else:
            lines += ["", "[cache]", "max_size = 10Q"]
            size_line = len(lines) - 1
        lines += ["", "[mount x]", "source = http", "base_ur = http://a"]
        mount_line, bad_key_line = len(lines) - 2, len(lines)  # 1-based below
        path = os.path.join(self.tmp, "broken.ini")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        p = self.check(path)
        out = p.stdout.decode() + p.stderr.decode()
        self.assertNotEqual(p.returncode, 0, out)
        self.assertRegex(out, r"(?m)^%s:%d:.*max_size" % (re.escape(path), size_line + 1))
        self.assertRegex(out, r"(?m)^%s:%d:.*base_ur\b.*did you mean .base_url." % (re.escape(path), bad_key_line))
        self.assertRegex(out, r"(?m)^%s:%d:.*base_url.*(missing|required)" % (re.escape(path), mount_line))

    def test_inline_broken_config_lists_every_error(self):
        text = ("[server]\n"                      # 1
                "listen = 127.0.0.1:0\n"          # 2
                "max_request_line = 1Q\n"         # 3
                "\n"                              # 4
                "[cache]\n"                       # 5
                "dir = %s/cache\n"                # 6
                "max_size = 10Q\n"                # 7
                "\n"                              # 8
                "[mount x]\n"                     # 9
                "source = http\n"                 # 10
                "base_ur = http://a\n"            # 11
                "delivery = sometimes\n"          # 12
                "\n"                              # 13
                "[mount y]\n"                     # 14
                "source = nosuch\n"               # 15
                "[bogus]\n") % self.tmp           # 16
        path = os.path.join(self.tmp, "bad.ini")
        with open(path, "w") as f:
            f.write(text)
        p = self.check(path)
        out = p.stdout.decode() + p.stderr.decode()
        self.assertNotEqual(p.returncode, 0, out)
        for line, frag in ((3, "max_request_line"), (7, "max_size"), (9, "base_url"),
                           (11, "did you mean 'base_url'"), (12, "delivery"), (15, "source"),
                           (16, "bogus")):
            with self.subTest(line=line, frag=frag):
                self.assertRegex(out, r"(?m)^%s:%d:.*%s" % (re.escape(path), line, re.escape(frag)))
        ok = os.path.join(self.tmp, "ok.ini")
        with open(ok, "w") as f:
            f.write("[server]\nlisten = 127.0.0.1:0\n[mount x]\nsource = http\nbase_url = http://a\n"
                    "cache = off\n")
        p = self.check(ok)
        self.assertEqual(p.returncode, 0, p.stderr)


# ------------------------------------------------------------------ 9: access log


class AccessLog(GatewayTest):
    def test_one_line_per_request(self):
        root = os.path.join(self.tmp, "www")
        data = random_bytes(SMALL, seed=91)
        write_file(os.path.join(root, "film.bin"), data)
        origin = self.nginx(root, picky=True)
        gw = self.gateway(self.http_mount("movies", origin.url(), extra="cache = off"))
        origin.clear_log()
        r = gw.get("/p/movies/film.bin", headers={"Range": "bytes=1000-5999"})
        self.assertEqual(r.status, 206)
        self.assertEqual(r.body, data[1000:6000])
        self.assertEqual(gw.get("/p/movies/film.bin", method="HEAD").status, 200)
        self.assertEqual(gw.get("/p/nosuch/film.bin").status, 404)
        # A fourth line for these three would be a bug. Lines are written in
        # the order requests end: once the line of a later request is there,
        # any extra line of theirs would be too.
        self.assertEqual(gw.get("/-/health", headers={"User-Agent": "fence"}).status, 200)
        lines = gw.wait_access(4)
        self.assertEqual(len(lines), 4, lines)
        self.assertEqual((lines[3]["path"].strip('"'), lines[3]["ua"].strip('"')), ("/-/health", "fence"), lines)
        lines = lines[:3]
        first = lines[0]
        for k in ("client", "method", "path", "status", "delivery", "bytes", "ms", "upstream_bytes"):
            self.assertIn(k, first, first)
        self.assertEqual(first["client"], "127.0.0.1")
        self.assertEqual(first["method"], "GET")
        self.assertEqual(first["path"].strip('"'), "/p/movies/film.bin")
        self.assertEqual(first["status"], "206")
        self.assertEqual(first["delivery"], "proxy")
        self.assertEqual(int(first["bytes"]), 5000)
        self.assertGreaterEqual(int(first["upstream_bytes"]), 5000)
        self.assertRegex(first["ms"], r"^\d+\.\d$")
        origin_bytes = sum(e["bytes"] for e in origin.entries() if e["range"] == "bytes=1000-5999")
        self.assertEqual(origin_bytes, 5000)
        self.assertLessEqual(int(first["upstream_bytes"]), origin_bytes)
        self.assertEqual((lines[1]["method"], lines[1]["status"], lines[1]["bytes"]), ("HEAD", "200", "0"))
        self.assertEqual((lines[2]["status"], lines[2]["bytes"] != "0"), ("404", True))
        self.assertEqual(lines[2]["upstream_bytes"], "0")


# ------------------------------------------------------------------ 10: graceful stop


class GracefulStop(GatewayTest):
    def test_sigterm_drains_running_download(self):
        root = os.path.join(self.tmp, "www")
        data = random_bytes(3 * MiB, seed=101)
        write_file(os.path.join(root, "film.bin"), data)
        origin = self.nginx(root, picky=True, limit_rate="1m")  # ~3 s for the whole file
        gw = self.gateway("[server]\nshutdown_grace = 20s\n"
                          + self.http_mount("movies", origin.url(), extra="cache = off"))
        port = gw.port
        progress = {"bytes": 0, "reply": b"", "error": None}

        def download():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
                    s.sendall(b"GET /p/movies/film.bin HTTP/1.1\r\nHost: gw\r\n\r\n")
                    buf = bytearray()
                    while True:
                        chunk = s.recv(65536)
                        if not chunk:
                            break
                        buf += chunk
                        progress["bytes"] = len(buf)
                        head, sep, body = bytes(buf).partition(b"\r\n\r\n")
                        m = re.search(rb"(?i)content-length:\s*(\d+)", head)
                        if sep and m and len(body) >= int(m.group(1)):
                            break
                    progress["reply"] = bytes(buf)
            except Exception as e:  # noqa: BLE001 - reported by the assertion below
                progress["error"] = repr(e)

        t = threading.Thread(target=download, daemon=True)
        t.start()
        wait_until(lambda: progress["bytes"] > 64 * 1024, 10, what="the download to start")
        gw.signal(signal.SIGTERM)
        wait_until(lambda: connect_refused(port), 3, what="the listener to close after SIGTERM")
        self.assertIsNone(gw.proc.poll(), "exited before the running download finished")
        t.join(20)
        self.assertFalse(t.is_alive(), "download did not finish")
        self.assertIsNone(progress["error"])
        st, hdrs, body = parse_raw(progress["reply"])
        self.assertEqual(st, 200)
        self.assertEqual(len(body), len(data))
        self.assertEqual(sha256(body), sha256(data))
        # It exits once the download is done, not when the 20 s grace ends
        # (that would time this wait out and log grace_expired).
        rc = gw.proc.wait(10)
        self.assertEqual(rc, 0, gw.errors()[-2000:])
        log = gw.errors()
        self.assertRegex(log, r"event=draining active=1 grace_ms=20000\b")
        self.assertRegex(log, r"event=stopped active=0\b")
        self.assertNotIn("event=grace_expired", log)
        self.assertTrue(connect_refused(port))


if __name__ == "__main__":
    unittest.main()
