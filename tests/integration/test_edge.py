"""Issue 4: AList-compatible signing, proxy_url delivery and the edge role,
the `alist` source against a fake of AList's /api/fs/link, links that expire
in the middle of an object, and the rules engine end to end.

Everything runs on 127.0.0.1 against real processes: nginx origins (Referer
and User-Agent checks, `secure_link`, `limit_rate`), one or two gateways, and
a small fake of AList's link API written here (http.server in a thread).

Signs are never computed with the gateway's code: with `openssl dgst` in a
subprocess, or in Python exactly as AList does it (Go's
`base64.URLEncoding.EncodeToString(hmac_sha256(token, "<path>:<expiry>"))`,
i.e. base64url *with* '=' padding, then ":<expiry>").
"""

import base64
import hashlib
import hmac
import http.client
import http.server
import json
import os
import re
import socketserver
import subprocess
import threading
import time
import urllib.parse

from harness import (REFERER, USER_AGENT, GatewayTest, curl, free_port, random_bytes, sha256,
                     wait_until, write_file)

KiB = 1024
MiB = 1024 * 1024

SECRET = "s3cr3t-edge"
ALIST_TOKEN = "alist-7f9c2b1e-token"

# --------------------------------------------------------------------- helpers


def alist_sign(secret, path, expiry):
    """AList's pkg/sign: HMAC-SHA256 over "<path>:<expiry>", base64url with
    padding, then ":<expiry>". `path` is the decoded path."""
    mac = hmac.new(secret.encode(), ("%s:%d" % (path, expiry)).encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode() + ":%d" % expiry


def openssl_sign(secret, path, expiry):
    """The same sign, through the shell pipeline from the issue (no Python
    crypto involved)."""
    out = subprocess.run(
        ["bash", "-c",
         "printf '%s' \"$1\" | openssl dgst -sha256 -hmac \"$2\" -binary | base64 | tr '+/' '-_'",
         "_", "%s:%d" % (path, expiry), secret],
        capture_output=True, timeout=20, check=True)
    return out.stdout.decode().strip() + ":%d" % expiry


def enc_path(path):
    """Percent-encodes a decoded path per segment, like AList's
    utils.EncodePath(path, true) (Go's url.PathEscape per segment)."""
    return "/".join(urllib.parse.quote(seg, safe="") for seg in path.split("/"))


def sign_of(url):
    """The decoded ?sign= of a URL."""
    q = urllib.parse.urlsplit(url).query
    vals = urllib.parse.parse_qs(q, keep_blank_values=True).get("sign")
    assert vals and len(vals) == 1, "no single sign= in %r" % url
    return vals[0]


def gw_ini(server="", mounts="", rules="", cache=""):
    # A short shutdown_grace: a test that fails on a hung request still
    # tears its gateway down quickly.
    return ("[server]\nlog_level = debug\nshutdown_grace = 1s\n%s\n[cache]\ndir = @CACHE@\nmin_free = 0\nmax_size = 1G\n%s\n%s\n%s"
            % (server, cache, mounts, rules))


def picky_headers():
    return "header = Referer: %s\nheader = User-Agent: %s\n" % (REFERER, USER_AGENT)


def get_with_source(port, path, source, headers=None, timeout=30):
    """One GET from a chosen loopback source address (e.g. 127.0.0.2)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout, source_address=(source, 0))
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict((k.lower(), v) for k, v in r.getheaders()), r.read()
    finally:
        conn.close()


def log_events(gw, event):
    return [l for l in gw.errors().splitlines() if " event=%s" % event in l]


def settled_entries(origin):
    """The nginx log once the gateways are idle and nginx has logged every
    request that ended (harness: NginxOrigin.entries)."""
    return origin.entries()


def nginx_uri(logged):
    """nginx logs $uri decoded, with non-ASCII bytes written as \\xNN."""
    raw = re.sub(rb"\\x([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]), logged.encode())
    return raw.decode(errors="replace")


def nginx_secure_md5(uri, secret, expires):
    """nginx secure_link_md5 "$secure_link_expires$uri SECRET": base64url
    without padding of the binary MD5."""
    d = hashlib.md5(("%d%s %s" % (expires, uri, secret)).encode()).digest()
    return base64.urlsafe_b64encode(d).decode().rstrip("=")


def last_header_block(dump):
    """The last response's headers from curl -D output (several with -L)."""
    blocks = [b for b in re.split(r"\r?\n\r?\n", dump.decode(errors="replace")) if b.startswith("HTTP/")]
    status_line, *lines = blocks[-1].splitlines()
    hdrs = {}
    for l in lines:
        if ":" in l:
            k, v = l.split(":", 1)
            hdrs[k.strip().lower()] = v.strip()
    return int(status_line.split()[1]), hdrs


def alist_item(name, size=0, is_dir=False, mtime=1700000000.0, sha1=None):
    """One `content` entry of AList's /api/fs/list (server/handles/fsread.go
    ObjResp): Go's time.Time marshals as RFC 3339 with nanoseconds and the
    server's offset (+08:00 here); hash_info is null when unknown."""
    t = time.gmtime(mtime + 8 * 3600)
    modified = time.strftime("%Y-%m-%dT%H:%M:%S", t) + ".%09d+08:00" % int((mtime % 1) * 1e9)
    return dict(name=name, size=size, is_dir=is_dir, modified=modified, created="0001-01-01T00:00:00Z",
                sign="", thumb="", type=1 if is_dir else 0, hashinfo="null",
                hash_info={"sha1": sha1} if sha1 else None)


class FakeAList:
    """AList's POST /api/fs/link and /api/fs/list, faithful to the wire contract:

    - `Authorization: <token>` (the raw token, no scheme); a wrong one is
      HTTP 200 {"code":401,"message":"token is invalidated","data":null}.
    - body {"path": "..."}; an unknown path is HTTP 200
      {"code":500,"message":"object not found","data":null}.
    - success: {"code":200,"message":"success","data":{"url":...,"header":{name:[values]}}}

    `resolve(path, n)` (n = how many link calls for this path came before)
    returns the data dict or None for "object not found". Every call is
    recorded: method, path, authorization, content_type, raw body, parsed
    JSON, answered code.

    /api/fs/list: `folders` maps a folder path to its items (alist_item);
    pages are cut as AList's `pagination` does (page < 1 is 1, per_page < 1
    is everything, a page past the end is `"content": null`); `list_errors`
    maps a folder path to (code, message) answered as HTTP 200; any other
    path is code 500 "object not found"."""

    def __init__(self, token, resolve, folders=None, list_errors=None):
        self.token = token
        self.resolve = resolve
        self.folders = folders or {}
        self.list_errors = list_errors or {}
        self.delay = 0.0  # seconds before answering a link call (to overlap requests)
        self.calls = []
        self.lock = threading.Lock()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _json(self, obj):
                body = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _list(self, rec):
                j = rec["json"]
                if not isinstance(j, dict) or not isinstance(j.get("path"), str):
                    rec["code"] = 400
                    fake._record(rec)
                    return self._json({"code": 400, "message": "invalid character in JSON", "data": None})
                path = j["path"]
                if path in fake.list_errors:
                    code, message = fake.list_errors[path]
                    rec["code"] = code
                    fake._record(rec)
                    return self._json({"code": code, "message": message, "data": None})
                items = fake.folders.get(path)
                if items is None:
                    rec["code"] = 500
                    fake._record(rec)
                    return self._json({"code": 500, "message": "object not found", "data": None})
                page, per_page = j.get("page", 1), j.get("per_page", 0)
                page = page if isinstance(page, int) and page >= 1 else 1
                per_page = per_page if isinstance(per_page, int) and per_page >= 1 else 1 << 62
                start = (page - 1) * per_page
                part = items[start:start + per_page] if start <= len(items) else []
                rec["code"] = 200
                fake._record(rec)
                return self._json({"code": 200, "message": "success", "data": {
                    "content": part or None, "total": len(items), "readme": "", "header": "",
                    "write": False, "provider": "Local"}})

            def do_GET(self):
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n)
                rec = dict(method="POST", path=self.path, authorization=self.headers.get("Authorization"),
                           content_type=self.headers.get("Content-Type"), raw=raw, json=None,
                           user_agent=self.headers.get("User-Agent"))
                try:
                    rec["json"] = json.loads(raw.decode())
                except ValueError:
                    pass
                if self.path not in ("/api/fs/link", "/api/fs/list"):
                    rec["code"] = 404
                    fake._record(rec)
                    return self._json({"code": 404, "message": "404 page not found", "data": None})
                if rec["authorization"] != fake.token:
                    rec["code"] = 401
                    fake._record(rec)
                    return self._json({"code": 401, "message": "token is invalidated", "data": None})
                if self.path == "/api/fs/list":
                    return self._list(rec)
                j = rec["json"]
                if not isinstance(j, dict) or not isinstance(j.get("path"), str):
                    rec["code"] = 400
                    fake._record(rec)
                    return self._json({"code": 400, "message": "invalid character in JSON", "data": None})
                if fake.delay:
                    time.sleep(fake.delay)
                with fake.lock:
                    nth = sum(1 for c in fake.calls if c["path"] == "/api/fs/link" and c.get("code") == 200
                              and c["json"]["path"] == j["path"])
                data = fake.resolve(j["path"], nth)
                if data is None:
                    rec["code"] = 500
                    fake._record(rec)
                    return self._json({"code": 500, "message": "object not found", "data": None})
                rec["code"] = 200
                rec["answer"] = data
                fake._record(rec)
                return self._json({"code": 200, "message": "success", "data": data})

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _record(self, rec):
        with self.lock:
            self.calls.append(rec)

    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def list_calls(self, path=None):
        with self.lock:
            return [c for c in self.calls if c["path"] == "/api/fs/list"
                    and (path is None or (isinstance(c["json"], dict) and c["json"].get("path") == path))]

    def link_calls(self, path=None):
        with self.lock:
            return [c for c in self.calls if c["path"] == "/api/fs/link"
                    and (path is None or (isinstance(c["json"], dict) and c["json"].get("path") == path))]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class EdgeTest(GatewayTest):
    def setUp(self):
        super().setUp()
        # unittest skips tearDown when setUp raises: release what prepare()
        # already started (an nginx, a gateway) before re-raising.
        try:
            self.prepare()
        except BaseException:
            self.tearDown()
            raise

    def prepare(self):
        pass

    def fake_alist(self, token, resolve):
        f = FakeAList(token, resolve)
        self._fixtures.append(f.stop)
        return f

    def assertReason(self, r, status, text):
        self.assertEqual(r.status, status, "expected %d, got %r body=%r" % (status, r, r.body[:300]))
        self.assertIn(text, r.body.decode(errors="replace"), "reason missing from the body")


# --------------------------------------------------------------------- 1. sign vectors (CLI)


class SignVectors(EdgeTest):
    PATHS = ["/m/films/a.mkv", "/m/电影/千与千寻 (2001).mkv", "/m/My Films/a b  c.mp4"]

    def test_cli_sign_matches_openssl(self):
        root = os.path.join(self.tmp, "www")
        os.makedirs(root)
        gw = self.gateway(gw_ini(server="sign_secret = %s\n" % SECRET,
                                 mounts="[mount m]\nsource = local\nroot = %s\n" % root))
        for path in self.PATHS:
            with self.subTest(path=path):
                p = gw.cli("sign", path, "--ttl", "0")
                self.assertEqual(p.returncode, 0, p.stderr)
                url = p.stdout.decode().strip()
                parts = urllib.parse.urlsplit(url)
                # The printed URL's path is the percent-encoded /d/ path.
                self.assertEqual(urllib.parse.unquote(parts.path), "/d" + path)
                self.assertNotIn(" ", parts.path)
                got = sign_of(url)
                want = openssl_sign(SECRET, path, 0)
                self.assertEqual(got, want)
                self.assertTrue(got.endswith("=:0"), got)  # padding kept, as AList does
                self.assertEqual(got, alist_sign(SECRET, path, 0))
        # A non-zero expiry: now + ttl, MAC still over "<path>:<expiry>".
        before = int(time.time())
        p = gw.cli("sign", self.PATHS[1], "--ttl", "1h")
        self.assertEqual(p.returncode, 0, p.stderr)
        got = sign_of(p.stdout.decode().strip())
        expiry = int(got.rsplit(":", 1)[1])
        self.assertTrue(before + 3600 <= expiry <= int(time.time()) + 3601, (before, expiry))
        self.assertEqual(got, openssl_sign(SECRET, self.PATHS[1], expiry))


# --------------------------------------------------------------------- 2. signing on /d/


class MainSigning(EdgeTest):
    def prepare(self):
        self.root = os.path.join(self.tmp, "www")
        self.data = random_bytes(700 * KiB + 11, seed=21)
        self.other = random_bytes(300 * KiB, seed=22)
        self.cjk = random_bytes(200 * KiB + 5, seed=23)
        write_file(os.path.join(self.root, "film.mkv"), self.data)
        write_file(os.path.join(self.root, "other.mkv"), self.other)
        write_file(os.path.join(self.root, "电影 1.mkv"), self.cjk)
        self.origin = self.nginx(self.root, picky=True)
        mount = "[mount m]\nsource = http\nbase_url = %s\n%s" % (self.origin.url(), picky_headers())
        self.gw = self.gateway(gw_ini(server="sign_secret = %s\nsign_exempt = 10.0.0.0/8\n" % SECRET,
                                      mounts=mount))
        self.mount = mount

    def test_sign_required_and_checked(self):
        gw = self.gw
        now = int(time.time())
        # Missing: 401 with the reason.
        self.assertReason(gw.get("/d/m/film.mkv"), 401, "missing ?sign=")
        self.assertReason(gw.get("/d/m/film.mkv?sign="), 401, "missing ?sign=")
        good = alist_sign(SECRET, "/m/film.mkv", now + 600)
        e = good.rsplit(":", 1)[1]
        bad = {
            "tampered path": alist_sign(SECRET, "/m/other.mkv", now + 600),
            "tampered expiry": good.rsplit(":", 1)[0] + ":%d" % (now + 6000),
            "expiry 0 on a timed MAC": good.rsplit(":", 1)[0] + ":0",
            "bad base64": "!!!not*base64!!!:" + e,
            "no padding": good.rsplit(":", 1)[0].rstrip("=") + ":" + e,
            "missing colon": good.replace(":", ""),
            "wrong secret": alist_sign("not-" + SECRET, "/m/film.mkv", now + 600),
            "non-numeric expiry": good.rsplit(":", 1)[0] + ":soon",
        }
        for what, s in bad.items():
            with self.subTest(what=what):
                self.assertReason(gw.get("/d/m/film.mkv?sign=" + urllib.parse.quote(s, safe="")),
                                  403, "invalid signature")
        with self.subTest(what="expired"):
            r = gw.get("/d/m/film.mkv?sign=" + alist_sign(SECRET, "/m/film.mkv", now - 30))
            self.assertReason(r, 403, "signature expired")
        # The valid sign, raw (as AList writes it: '=' and ':' unescaped) and
        # percent-encoded (as `slipstream sign` writes it).
        for form in (good, urllib.parse.quote(good, safe="")):
            with self.subTest(form=form):
                r = gw.get("/d/m/film.mkv?sign=" + form)
                self.assertEqual(r.status, 200, r.body[:200])
                self.assertEqual(sha256(r.body), sha256(self.data))
        # Never-expiring sign, CJK name with a space: MAC over the decoded path.
        r = gw.get("/d" + enc_path("/m/电影 1.mkv") + "?sign=" + alist_sign(SECRET, "/m/电影 1.mkv", 0))
        self.assertEqual(r.status, 200, r.body[:200])
        self.assertEqual(sha256(r.body), sha256(self.cjk))
        # A sign for one file does not open another one.
        r = gw.get("/d/m/other.mkv?sign=" + good)
        self.assertReason(r, 403, "invalid signature")
        # /p/ needs no sign.
        r = gw.get("/p/m/other.mkv")
        self.assertEqual(r.status, 200, r.body[:200])
        self.assertEqual(sha256(r.body), sha256(self.other))
        # Rejections never reached the origin: only the three files' fetches did.
        uris = {nginx_uri(e["uri"]) for e in settled_entries(self.origin)}
        self.assertEqual(uris, {"/film.mkv", "/other.mkv", "/电影 1.mkv"})

    def test_sign_exempt_network(self):
        # 10.0.0.0/8 exempt does not cover 127.0.0.1: sign still needed.
        self.assertEqual(self.gw.get("/d/m/film.mkv").status, 401)
        gw2 = self.gateway(gw_ini(server="sign_secret = %s\nsign_exempt = 10.0.0.0/8, 127.0.0.0/8\n" % SECRET,
                                  mounts=self.mount))
        r = gw2.get("/d/m/film.mkv")
        self.assertEqual(r.status, 200, r.body[:200])
        self.assertEqual(sha256(r.body), sha256(self.data))
        # From another loopback address too (127.0.0.0/8, not just .1).
        st, _, body = get_with_source(gw2.port, "/d/m/other.mkv", "127.0.0.2")
        self.assertEqual(st, 200)
        self.assertEqual(sha256(body), sha256(self.other))


# --------------------------------------------------------------------- 3. main -> edge -> nginx


class ThreeProcess(EdgeTest):
    NAME = "/My Film 电影.mkv"

    def test_main_redirects_edge_serves_and_caches(self):
        root = os.path.join(self.tmp, "www")
        data = random_bytes(3 * MiB + 777, seed=31)
        other = random_bytes(100 * KiB, seed=32)
        write_file(os.path.join(root, self.NAME.lstrip("/")), data)
        write_file(os.path.join(root, "other.mkv"), other)
        origin = self.nginx(root, picky=True, limit_rate="20m")
        # A plain client cannot open the origin.
        direct = curl("-o", "/dev/null", "-w", "%{http_code}", origin.url("/other.mkv"))
        self.assertEqual(direct.stdout, b"403")
        origin.clear_log()

        edge = self.gateway(gw_ini(
            server="role = edge\nsign_secret = %s\n" % SECRET,
            mounts="[mount m]\nsource = http\nbase_url = %s\n%scache = on\n" % (origin.url(), picky_headers())))
        main = self.gateway(gw_ini(
            server="sign_secret = %s\nsign_ttl = 1h\n" % SECRET,
            mounts="[mount m]\nsource = http\nbase_url = %s\n%s" % (origin.url(), picky_headers()),
            rules="[rule to-edge]\npath = /m/**\naction = proxy_url\nproxy_url = http://127.0.0.1:%d\n" % edge.port))

        vpath = "/m" + self.NAME
        main_url = main.url("/d" + enc_path(vpath) + "?sign=" + alist_sign(SECRET, vpath, 0))

        # The main node's answer, not followed: a 302 to the edge with a sign
        # the edge (and AList-compatible nodes) can verify.
        now = int(time.time())
        r = main.get("/d" + enc_path(vpath) + "?sign=" + alist_sign(SECRET, vpath, 0))
        self.assertEqual(r.status, 302, r.body[:200])
        loc = r.header("Location")
        m = re.match(r"http://127\.0\.0\.1:%d(/[^?]*)\?sign=(.+)$" % edge.port, loc or "")
        self.assertTrue(m, "Location %r" % loc)
        self.assertEqual(m.group(1), enc_path(vpath))  # percent-encoded, spaces and CJK included
        self.assertEqual(urllib.parse.unquote(m.group(1)), vpath)
        loc_sign = sign_of(loc)
        expiry = int(loc_sign.rsplit(":", 1)[1])
        self.assertTrue(now + 3590 <= expiry <= now + 3610, "sign_ttl 1h, expiry %d now %d" % (expiry, now))
        self.assertEqual(loc_sign, openssl_sign(SECRET, vpath, expiry))
        self.assertEqual(len(settled_entries(origin)), 0, "the main node must not fetch for proxy_url")

        # curl -L from a plain client: right bytes, one redirect, ends at the edge.
        hdr = os.path.join(self.tmp, "h1")
        out = os.path.join(self.tmp, "o1")
        c = curl("-L", "-D", hdr, "-o", out, "-w", "%{http_code} %{num_redirects} %{url_effective}", main_url)
        self.assertEqual(c.returncode, 0, c.stderr)
        code, nred, eff = c.stdout.decode().split(" ", 2)
        self.assertEqual((code, nred), ("200", "1"))
        self.assertTrue(eff.startswith("http://127.0.0.1:%d/" % edge.port), eff)
        with open(out, "rb") as f:
            self.assertEqual(sha256(f.read()), sha256(data))
        st, h = last_header_block(open(hdr, "rb").read())
        self.assertEqual(st, 200)
        self.assertEqual(h.get("x-cache"), "MISS")
        first = settled_entries(origin)
        self.assertGreater(sum(e["bytes"] for e in first), 0)
        for e in first:
            self.assertEqual((e["referer"], e["ua"]), (REFERER, USER_AGENT))
            self.assertIn(e["status"], (200, 206), e)

        # At the edge: tampered / expired / missing signs.
        edge_path = enc_path(vpath)
        tampered_path = alist_sign(SECRET, "/m/other.mkv", expiry)
        cases = [
            ("tampered path", edge_path + "?sign=" + tampered_path, 403, "invalid signature"),
            ("sign of this path on another file", "/m/other.mkv?sign=" + loc_sign, 403, "invalid signature"),
            ("tampered expiry", edge_path + "?sign=" + loc_sign.rsplit(":", 1)[0] + ":%d" % (expiry + 1),
             403, "invalid signature"),
            ("expired", edge_path + "?sign=" + alist_sign(SECRET, vpath, now - 5), 403, "signature expired"),
            ("wrong secret", edge_path + "?sign=" + alist_sign("x" + SECRET, vpath, 0), 403, "invalid signature"),
            ("missing", edge_path, 401, "missing ?sign="),
        ]
        for what, target, status, text in cases:
            with self.subTest(what=what):
                self.assertReason(edge.get(target), status, text)
        # ...and the same through curl -L from the main: the edge refuses.
        c = curl("-L", "-o", "/dev/null", "-w", "%{http_code}",
                 edge.url(edge_path + "?sign=" + urllib.parse.quote(alist_sign(SECRET, vpath, now - 5))))
        self.assertEqual(c.stdout, b"403")

        # Second download: a HIT at the edge, nothing new from the origin.
        origin.clear_log()
        hdr2 = os.path.join(self.tmp, "h2")
        c = curl("-L", "-D", hdr2, "-o", out, "-w", "%{http_code}", main_url)
        self.assertEqual(c.stdout, b"200", c.stderr)
        with open(out, "rb") as f:
            self.assertEqual(sha256(f.read()), sha256(data))
        st, h = last_header_block(open(hdr2, "rb").read())
        self.assertEqual(h.get("x-cache"), "HIT")
        again = settled_entries(origin)
        self.assertEqual(sum(e["bytes"] for e in again), 0, again)
        # The main node logged a proxy_url delivery; the edge a proxy delivery.
        main_lines = [a for a in main.wait_access(2) if a.get("status") == "302"]
        self.assertTrue(main_lines and all(a.get("delivery") == "proxy_url" for a in main_lines), main_lines)

        # /p/ on the main node is always proxied by the main itself.
        r = main.get("/p/m/other.mkv")
        self.assertEqual(r.status, 200, r.body[:200])
        self.assertEqual(sha256(r.body), sha256(other))

        # proxy_url set on the mount (no rule), and the client exempt on the
        # main: no sign needed there, the edge still gets a signed link.
        main2 = self.gateway(gw_ini(
            server="sign_secret = %s\nsign_exempt = 127.0.0.0/8\n" % SECRET,
            mounts="[mount m]\nsource = http\nbase_url = %s\n%sdelivery = proxy_url\nproxy_url = %s/\n"
                   % (origin.url(), picky_headers(), edge.url(""))))
        r = main2.get("/d" + enc_path(vpath))
        self.assertEqual(r.status, 302, r.body[:200])
        self.assertEqual(r.header("Location"),
                         edge.url(enc_path(vpath)) + "?sign=" + urllib.parse.quote(alist_sign(SECRET, vpath, 0), safe=""))
        origin.clear_log()
        c = curl("-L", "-D", hdr2, "-o", out, "-w", "%{http_code} %{num_redirects}", main2.url("/d" + enc_path(vpath)))
        self.assertEqual(c.stdout, b"200 1", c.stderr)
        with open(out, "rb") as f:
            self.assertEqual(sha256(f.read()), sha256(data))
        self.assertEqual(last_header_block(open(hdr2, "rb").read())[1].get("x-cache"), "HIT")
        self.assertEqual(sum(e["bytes"] for e in settled_entries(origin)), 0)


# --------------------------------------------------------------------- 4. AList contract


class AListContract(EdgeTest):
    def prepare(self):
        self.root = os.path.join(self.tmp, "www")
        self.files = {
            "/film.mkv": random_bytes(2 * MiB + 99, seed=41),
            "/电影/片 1.mkv": random_bytes(300 * KiB, seed=42),
            "/noscheme.mkv": random_bytes(200 * KiB + 1, seed=43),
        }
        for p, d in self.files.items():
            write_file(os.path.join(self.root, p.lstrip("/")), d)
        self.origin = self.nginx(self.root, picky=True)

        def resolve(path, nth):
            if path not in self.files:
                return None
            url = "http://127.0.0.1:%d%s" % (self.origin.port, enc_path(path))
            if path == "/noscheme.mkv" and nth == 0:
                url = url[len("http:"):]  # "//127.0.0.1:port/file", as some AList drivers return
            return {"url": url, "header": {"Referer": [REFERER], "User-Agent": [USER_AGENT]}}

        self.fake = self.fake_alist(ALIST_TOKEN, resolve)

    def edge_ini(self, token, extra=""):
        # Configured like alist-proxy: the AList token is both the sign secret
        # and the API credential; one mount at /.
        return gw_ini(server="role = edge\nsign_secret = %s\n" % ALIST_TOKEN,
                      mounts="[mount alist]\nsource = alist\nurl = %s\ntoken = %s\nprefix = /\n%s"
                             % (self.fake.url(), token, extra))

    def test_edge_like_alist_proxy(self):
        edge = self.gateway(self.edge_ini(ALIST_TOKEN, "revalidate = 0\nlink_ttl = 1h\n"))
        # A link exactly as AList writes it: encoded path, raw sign.
        for path, data in self.files.items():
            with self.subTest(path=path):
                r = edge.get(enc_path(path) + "?sign=" + alist_sign(ALIST_TOKEN, path, 0))
                self.assertEqual(r.status, 200, r.body[:300])
                self.assertEqual(sha256(r.body), sha256(data))
                self.assertEqual(r.header("Content-Length"), str(len(data)))
                calls = self.fake.link_calls(path)
                self.assertEqual(len(calls), 1, calls)
                c = calls[0]
                self.assertEqual(c["authorization"], ALIST_TOKEN)
                self.assertEqual(c["json"], {"path": path})
                self.assertIn("application/json", c["content_type"] or "")
        # The picky origin got the headers from data.header (map of lists).
        ents = settled_entries(self.origin)
        self.assertTrue(ents)
        for e in ents:
            self.assertEqual((e["status"] in (200, 206), e["referer"], e["ua"]), (True, REFERER, USER_AGENT), e)

        # A second request within link_ttl: revalidated upstream (revalidate = 0)
        # with the cached link, no new /api/fs/link call.
        n_calls = len(self.fake.link_calls())
        self.origin.clear_log()
        r = edge.get("/film.mkv?sign=" + alist_sign(ALIST_TOKEN, "/film.mkv", int(time.time()) + 60))
        self.assertEqual(r.status, 200, r.body[:300])
        self.assertEqual(sha256(r.body), sha256(self.files["/film.mkv"]))
        self.assertEqual(len(self.fake.link_calls()), n_calls)
        self.assertGreaterEqual(len([e for e in settled_entries(self.origin) if e["uri"] == "/film.mkv"]), 1,
                                "revalidate = 0: the cached link must have been used upstream")

        # Unknown path: AList's code 500 "object not found" in an HTTP 200 → 404.
        r = edge.get("/missing.mkv?sign=" + alist_sign(ALIST_TOKEN, "/missing.mkv", 0))
        self.assertReason(r, 404, "object not found")
        self.assertEqual(self.fake.link_calls("/missing.mkv")[-1]["code"], 500)
        # Unsigned or wrongly signed: refused before AList is asked.
        before = len(self.fake.calls)
        self.assertEqual(edge.get("/film.mkv").status, 401)
        self.assertEqual(edge.get("/film.mkv?sign=" + alist_sign("other", "/film.mkv", 0)).status, 403)
        self.assertEqual(len(self.fake.calls), before)

    def test_edge_head_ranges_and_coalesced_resolution(self):
        self.fake.delay = 0.5
        edge = self.gateway(self.edge_ini(ALIST_TOKEN))
        path = "/电影/片 1.mkv"
        data = self.files[path]
        target = enc_path(path) + "?sign=" + alist_sign(ALIST_TOKEN, path, int(time.time()) + 300)
        ranges = [(0, 999), (1000, 65535), (100000, len(data) - 1), (len(data) - 10, len(data) - 1)]
        results = [None] * len(ranges)

        def fetch(i):
            b, e = ranges[i]
            results[i] = edge.get(target, headers={"Range": "bytes=%d-%d" % (b, e)})

        threads = [threading.Thread(target=fetch, args=(i,)) for i in range(len(ranges))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for (b, e), r in zip(ranges, results):
            self.assertIsNotNone(r)
            self.assertEqual(r.status, 206, r)
            self.assertEqual(r.header("Content-Range"), "bytes %d-%d/%d" % (b, e, len(data)))
            self.assertEqual(r.body, data[b:e + 1])
        # Four clients at once on a cold path: one resolution.
        self.assertEqual(len(self.fake.link_calls(path)), 1, self.fake.link_calls(path))
        # HEAD at the edge: signed like GET, headers only.
        r = edge.get(target, method="HEAD")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.header("Content-Length"), str(len(data)))
        self.assertEqual(r.body, b"")
        self.assertEqual(edge.get(enc_path(path), method="HEAD").status, 401)

    def test_client_bound_links_keyed_by_user_agent(self):
        # link_bind = ua (115-style links): one resolution per client UA, the
        # client's UA is what AList sees when it makes the link.
        edge = self.gateway(self.edge_ini(ALIST_TOKEN, "link_bind = ua\ncache = off\n"))
        target = "/film.mkv?sign=" + alist_sign(ALIST_TOKEN, "/film.mkv", 0)
        want = self.files["/film.mkv"]
        for ua in ("Player-A/1.0", "Player-B/2.0", "Player-A/1.0"):
            r = edge.get(target, headers={"User-Agent": ua, "Range": "bytes=0-1023"})
            self.assertEqual(r.status, 206, r.body[:300])
            self.assertEqual(r.body, want[:1024])
        calls = self.fake.link_calls("/film.mkv")
        self.assertEqual([c["user_agent"] for c in calls], ["Player-A/1.0", "Player-B/2.0"])

    def test_wrong_token_is_502_with_alists_message(self):
        edge = self.gateway(self.edge_ini("wrong-" + ALIST_TOKEN))
        r = edge.get("/film.mkv?sign=" + alist_sign(ALIST_TOKEN, "/film.mkv", 0))
        self.assertReason(r, 502, "token is invalidated")
        calls = self.fake.link_calls()
        self.assertGreaterEqual(len(calls), 1)
        self.assertEqual(calls[0]["authorization"], "wrong-" + ALIST_TOKEN)
        self.assertEqual(calls[0]["code"], 401)
        self.assertEqual(settled_entries(self.origin), [], "no upstream fetch without a link")

    def test_alist_unreachable_is_502(self):
        dead = "http://127.0.0.1:%d" % free_port()
        edge = self.gateway(gw_ini(server="role = edge\nsign_secret = %s\n" % ALIST_TOKEN,
                                   mounts="[mount alist]\nsource = alist\nurl = %s\ntoken = %s\nprefix = /\n"
                                          % (dead, ALIST_TOKEN)))
        r = edge.get("/film.mkv?sign=" + alist_sign(ALIST_TOKEN, "/film.mkv", 0), timeout=30)
        self.assertReason(r, 502, "could not resolve")


# --------------------------------------------------------------------- 5./6. link expiry


SECURE = "nginx-secure-9"


def secure_locations(rate):
    # The expiry goes in `deadline`, a name the gateway does not read as one
    # (issue 11 reads `expires`, `x-oss-expires`, ... and renews such links
    # before they die: test_link_expiry.py): these tests are about links that
    # die without saying when, so the upstream's 403/410 is what they meet.
    return """
    location /s/ {
      secure_link $arg_md5,$arg_deadline;
      secure_link_md5 "$secure_link_expires$uri %s";
      if ($secure_link = "") { return 403; }
      if ($secure_link = "0") { return 410; }
      %s
    }
""" % (SECURE, "limit_rate %s;" % rate if rate else "")


class LinkExpiry(EdgeTest):
    BIG = 5 * MiB  # at 2 x 512 KiB/s: ~5 s, longer than any link (2-3 s)

    def prepare(self):
        self.root = os.path.join(self.tmp, "www")
        self.data = random_bytes(self.BIG + 4321, seed=51)
        write_file(os.path.join(self.root, "s", "big.bin"), self.data)
        self.origin = self.nginx(self.root, picky=False, locations=secure_locations("512k"))
        self.mint_log = []

    def mint(self, life):
        """A secure link to /s/big.bin living `life` seconds (negative: dead)."""
        expires = int(time.time()) + life
        uri = "/s/big.bin"
        self.mint_log.append(expires)
        return {"url": "http://127.0.0.1:%d%s?md5=%s&deadline=%d" % (
            self.origin.port, uri, nginx_secure_md5(uri, SECURE, expires), expires),
            "header": {"User-Agent": [USER_AGENT]}}

    def gw_for(self, fake, extra=""):
        return self.gateway(gw_ini(
            mounts="[mount a]\nsource = alist\nurl = %s\ntoken = %s\nlink_ttl = 1h\nconnections = 2\n"
                   "read_ahead = 32M\n%s" % (fake.url(), ALIST_TOKEN, extra),
            cache="block_size = 256K\n"))

    def test_origin_refuses_stale_links(self):
        # The origin really enforces the links (so the tests below mean something).
        ok = self.mint(60)["url"]
        dead = self.mint(-5)["url"]
        forged = re.sub(r"md5=[^&]+", "md5=AAAAAAAAAAAAAAAAAAAAAA", ok)
        for url, want in ((ok, b"206"), (dead, b"410"), (forged, b"403")):
            c = curl("-o", "/dev/null", "-r", "0-0", "-w", "%{http_code}", url)
            self.assertEqual(c.stdout, want, url)

    def test_link_expires_mid_object(self):
        fake = self.fake_alist(ALIST_TOKEN, lambda path, nth: self.mint(2) if path == "/big.bin" else None)
        gw = self.gw_for(fake)
        r = gw.get("/p/a/big.bin", timeout=90)
        self.assertEqual(r.status, 200, r.body[:300])
        self.assertEqual(len(r.body), len(self.data))
        self.assertEqual(sha256(r.body), sha256(self.data))
        # The download outlived a link: the origin refused one (below), AList
        # was asked again.
        # The client saw exactly one response.
        acc = gw.wait_access(1)
        self.assertEqual([(a["path"], a["status"]) for a in acc], [("/p/a/big.bin", "200")])
        # AList was asked again; the gateway says why.
        self.assertGreater(len(fake.link_calls("/big.bin")), 1)
        refused = log_events(gw, "link_refused")
        self.assertTrue(refused, gw.errors()[-3000:])
        # nginx refused expired links (410, or 403) and then served ranges again.
        ents = settled_entries(self.origin)
        statuses = [e["status"] for e in ents]
        first_refusal = next((i for i, s in enumerate(statuses) if s in (403, 410)), None)
        self.assertIsNotNone(first_refusal, statuses)
        self.assertTrue(any(s == 206 for s in statuses[first_refusal + 1:]), statuses)

    def refused_on_first_request(self, extra, logged=True):
        """A link cached by an earlier request dies; the next request's first
        upstream request (probe or range) is refused: the gateway must
        re-resolve and answer, the client none the wiser."""
        fake = self.fake_alist(ALIST_TOKEN, lambda path, nth: self.mint(2))
        gw = self.gw_for(fake, extra)
        r = gw.get("/p/a/big.bin", headers={"Range": "bytes=0-99"}, timeout=30)
        self.assertEqual(r.status, 206, r.body[:300])
        self.assertEqual(r.body, self.data[:100])
        self.assertEqual(len(fake.link_calls()), 1)
        last = max(self.mint_log)
        wait_until(lambda: time.time() > last + 1.2, 6, what="the cached link to expire")
        self.origin.clear_log()
        r = gw.get("/p/a/big.bin", headers={"Range": "bytes=300000-300099"}, timeout=10)
        self.assertEqual(r.status, 206, "%r %r\n%s" % (r, r.body[:300], gw.errors()[-2000:]))
        self.assertEqual(r.body, self.data[300000:300100])
        self.assertEqual(len(fake.link_calls()), 2)
        if logged:
            self.assertTrue(log_events(gw, "link_refused"), gw.errors()[-2000:])
        statuses = [e["status"] for e in settled_entries(self.origin)]
        self.assertIn(statuses[:1], ([410], [403]), statuses)
        self.assertIn(206, statuses[1:])

    def test_link_refused_when_revalidating(self):
        # revalidate = 0: the cached object is re-probed on every request.
        self.refused_on_first_request("revalidate = 0\n")

    def test_link_refused_with_cache_off(self):
        # One upstream transfer per request (stream path): same contract; the
        # log line is not required of this path.
        self.refused_on_first_request("cache = off\n", logged=False)

    def test_dead_links_clean_502(self):
        fake = self.fake_alist(ALIST_TOKEN, lambda path, nth: self.mint(-10))
        gw = self.gw_for(fake)
        r = gw.get("/p/a/big.bin", timeout=60)
        self.assertEqual(r.status, 502, r)
        self.assertIn("refused the link", r.body.decode(errors="replace"))
        self.assertLess(len(r.body), 1000)
        # Re-resolved once, then gave up (no loop).
        self.assertEqual(len(fake.link_calls()), 2, fake.link_calls())
        ents = settled_entries(self.origin)
        self.assertEqual([e["status"] for e in ents], [410, 410])

    def test_links_die_after_headers(self):
        # The first link lives 2 s, every later one is dead on arrival.
        fake = self.fake_alist(ALIST_TOKEN, lambda path, nth: self.mint(2 if nth == 0 else -10))
        gw = self.gw_for(fake)
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=60)
        body = b""
        complete = False
        try:
            conn.request("GET", "/p/a/big.bin")
            r = conn.getresponse()
            self.assertEqual(r.status, 200)
            self.assertEqual(r.getheader("Content-Length"), str(len(self.data)))
            try:
                body = r.read()
                complete = True
            except http.client.IncompleteRead as e:
                body = e.partial
        finally:
            conn.close()
        if complete:
            # Allowed only if it is the whole, right file.
            self.assertEqual(sha256(body), sha256(self.data))
        else:
            self.assertLess(len(body), len(self.data))
            self.assertEqual(body, self.data[:len(body)], "the bytes sent before closing must be right")
            fails = log_events(gw, "request_failed")
            self.assertTrue(any("reason=upstream_denied" in l for l in fails), gw.errors()[-3000:])
        # In this set-up the links do die before the end: expect the close.
        self.assertFalse(complete, "5 MiB at 1 MiB/s cannot finish on a 2-3 s link")
        # curl agrees: a partial transfer is an error, never success.
        c = curl("-o", "/dev/null", "-w", "%{http_code} %{size_download}", gw.url("/p/a/big.bin"))
        self.assertNotEqual(c.returncode, 0, c.stdout)


# --------------------------------------------------------------------- 7. explain


class Explain(EdgeTest):
    RULES = """
[rule lan-deny]
client = 10.0.0.0/8
action = deny

[rule vlc]
user_agent = VLC
ignore_case = on
action = proxy

[rule big-iso]
ext = iso
min_size = 1G
action = redirect
"""

    def prepare(self):
        root = os.path.join(self.tmp, "www")
        os.makedirs(root)
        self.gw = self.gateway(gw_ini(
            mounts="[mount m]\nsource = http\nbase_url = http://127.0.0.1:9/pub\ndelivery = proxy\n",
            rules=self.RULES))

    def explain(self, *args):
        p = self.gw.cli("explain", *args)
        self.assertEqual(p.returncode, 0, p.stderr)
        return p.stdout.decode()

    def line(self, out, prefix):
        ls = [l for l in out.splitlines() if l.startswith(prefix)]
        self.assertEqual(len(ls), 1, "one %r line expected in:\n%s" % (prefix, out))
        return ls[0]

    def test_explain_three_rules(self):
        out = self.explain("--path", "/d/m/film.mkv", "--client", "192.168.1.20", "--user-agent", "vlc/3.0.20")
        l1 = self.line(out, "rule lan-deny:")
        self.assertIn("no match", l1)
        self.assertIn("192.168.1.20", l1)
        self.assertIn("10.0.0.0/8", l1)
        self.assertIn("matched", self.line(out, "rule vlc:"))
        self.assertNotIn("no match", self.line(out, "rule vlc:"))
        self.assertNotIn("rule big-iso:", out)  # first match wins, later rules not tried
        d = self.line(out, "decision:")
        self.assertTrue(d.startswith("decision: proxy "), d)
        self.assertIn("rule vlc", d)

        # Falls through all three to the mount's delivery.
        out = self.explain("--path", "/d/m/film.mkv", "--client", "192.168.1.20", "--user-agent", "curl/8.5")
        self.assertIn("no match", self.line(out, "rule lan-deny:"))
        l2 = self.line(out, "rule vlc:")
        self.assertIn("no match", l2)
        self.assertIn("curl/8.5", l2)
        l3 = self.line(out, "rule big-iso:")
        self.assertIn("no match", l3)
        self.assertIn("mkv", l3)
        d = self.line(out, "decision:")
        self.assertTrue(d.startswith("decision: proxy "), d)
        self.assertIn("mount m", d)
        self.assertNotIn("rule ", d)

        # An .iso of 2G hits rule 3.
        out = self.explain("--path", "/d/m/disc/image.iso", "--client", "192.168.1.20",
                           "--user-agent", "curl/8.5", "--size", "2G")
        self.assertIn("matched", self.line(out, "rule big-iso:"))
        d = self.line(out, "decision:")
        self.assertTrue(d.startswith("decision: redirect "), d)
        self.assertIn("rule big-iso", d)

        # Below min_size: says so, and falls through.
        out = self.explain("--path", "/d/m/disc/image.iso", "--client", "192.168.1.20",
                           "--user-agent", "curl/8.5", "--size", "512M")
        l3 = self.line(out, "rule big-iso:")
        self.assertIn("no match", l3)
        self.assertIn("min_size", l3)
        self.assertTrue(self.line(out, "decision:").startswith("decision: proxy "))

        # A client in 10.0.0.0/8 is denied whatever its UA.
        out = self.explain("--path", "/d/m/film.mkv", "--client", "10.1.2.3", "--user-agent", "VLC/3.0.20")
        self.assertIn("matched", self.line(out, "rule lan-deny:"))
        self.assertTrue(self.line(out, "decision:").startswith("decision: deny "))


# --------------------------------------------------------------------- 8. rules end to end


class RulesEndToEnd(EdgeTest):
    def test_deny_redirect_and_size_rules(self):
        root = os.path.join(self.tmp, "www")
        film = random_bytes(600 * KiB + 3, seed=81)
        big = random_bytes(3 * MiB + 1, seed=82)
        small = random_bytes(1 * MiB - 1, seed=83)
        write_file(os.path.join(root, "film.mkv"), film)
        write_file(os.path.join(root, "sized", "big.bin"), big)
        write_file(os.path.join(root, "sized", "small.bin"), small)
        origin = self.nginx(root, picky=False)
        gw = self.gateway(gw_ini(
            mounts="[mount m]\nsource = http\nbase_url = %s\ndelivery = proxy\n" % origin.url(),
            rules="""
[rule bad-bots]
user_agent = ^BadBot
action = deny

[rule blocked-host]
client = 127.0.0.2/32
action = deny

[rule players-direct]
user_agent = ^vlc/
ignore_case = on
action = redirect

[rule big-direct]
path = /m/sized/*
min_size = 2M
action = redirect
"""))
        # deny by UA and by client address
        r = gw.get("/d/m/film.mkv", headers={"User-Agent": "BadBot/2.0"})
        self.assertReason(r, 403, "denied by rule")
        st, _, body = get_with_source(gw.port, "/d/m/film.mkv", "127.0.0.2", headers={"User-Agent": "curl/8"})
        self.assertEqual(st, 403)
        self.assertIn(b"denied by rule", body)
        # redirect for VLC (any case), the file itself for everyone else
        r = gw.get("/d/m/film.mkv", headers={"User-Agent": "VLC/3.0.20 LibVLC/3.0.20"})
        self.assertEqual(r.status, 302, r.body[:200])
        self.assertEqual(r.header("Location"), origin.url("/film.mkv"))
        r2 = curl("-L", "-A", "VLC/3.0.20", "-w", "%{http_code} %{num_redirects}", "-o",
                  os.path.join(self.tmp, "v"), gw.url("/d/m/film.mkv"))
        self.assertEqual(r2.stdout, b"200 1")
        with open(os.path.join(self.tmp, "v"), "rb") as f:
            self.assertEqual(sha256(f.read()), sha256(film))
        r = gw.get("/d/m/film.mkv", headers={"User-Agent": "mpv/0.36"})
        self.assertEqual(r.status, 200, r.body[:200])
        self.assertEqual(sha256(r.body), sha256(film))
        self.assertIsNotNone(r.header("X-Cache"))
        # size rule: the gateway learns the size, then decides
        origin.clear_log()
        r = gw.get("/d/m/sized/big.bin", headers={"User-Agent": "curl/8"})
        self.assertEqual(r.status, 302, r.body[:200])
        self.assertEqual(r.header("Location"), origin.url("/sized/big.bin"))
        probes = [e for e in settled_entries(origin) if e["uri"] == "/sized/big.bin"]
        self.assertTrue(probes, "the size must have been learnt from the origin")
        self.assertLessEqual(sum(e["bytes"] for e in probes), 1, probes)
        r = gw.get("/d/m/sized/small.bin", headers={"User-Agent": "curl/8"})
        self.assertEqual(r.status, 200, r.body[:200])
        self.assertEqual(sha256(r.body), sha256(small))
        self.assertIsNotNone(r.header("X-Cache"))
        acc = gw.wait_access(7)
        by = [(a["path"], a["status"], a["delivery"]) for a in acc]
        self.assertIn(("/d/m/sized/big.bin", "302", "redirect"), by)
        self.assertIn(("/d/m/sized/small.bin", "200", "proxy"), by)
        # Asked again: the size now comes from the cache index, the answer
        # must be the same (and the whole file).
        r = gw.get("/d/m/sized/big.bin", headers={"User-Agent": "curl/8"}, timeout=10)
        self.assertEqual(r.status, 302, r.body[:200])
        r = gw.get("/d/m/sized/small.bin", headers={"User-Agent": "curl/8"}, timeout=10)
        self.assertEqual(r.status, 200, r.body[:200])
        self.assertEqual(r.header("X-Cache"), "HIT")
        self.assertEqual(sha256(r.body), sha256(small))

    def test_size_rule_on_local_mount(self):
        # A local mount knows sizes at once (fstat): the rule is decided
        # without any upstream, and the files below the bound still stream.
        root = os.path.join(self.tmp, "nas")
        small = random_bytes(3 * MiB + 5, seed=84)
        big = random_bytes(6 * MiB, seed=85)
        write_file(os.path.join(root, "small.bin"), small)
        write_file(os.path.join(root, "big.bin"), big)
        gw = self.gateway(gw_ini(
            mounts="[mount nas]\nsource = local\nroot = %s\n" % root,
            rules="[rule no-huge]\nmin_size = 5M\naction = deny\n"))
        r = gw.get("/d/nas/big.bin", timeout=10)
        self.assertReason(r, 403, "denied by rule")
        r = gw.get("/d/nas/small.bin", timeout=10)
        self.assertEqual(r.status, 200, r.body[:200])
        self.assertEqual(sha256(r.body), sha256(small))
        r = gw.get("/d/nas/small.bin", headers={"Range": "bytes=1000-"}, timeout=10)
        self.assertEqual(r.status, 206, r.body[:200])
        self.assertEqual(r.body, small[1000:])


if __name__ == "__main__":
    import unittest
    unittest.main()
