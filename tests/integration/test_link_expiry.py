"""Issue 11 item 4: link expiry read from the link.

An AList-style fake hands out OSS-style links (`x-oss-expires=<unix s>` a
few seconds ahead, as Aliyun OSS writes them); an OSS-like origin answers 403
to a link whose expiry has passed and records when each request arrived and
which expiry it carried. No clock is faked: the links simply live a few
seconds, and the test counts resolutions.

- redirect delivery: a link is reused within its life, renewed before it
  ends, and no Location handed to a client is expired;
- proxy delivery through the cache, a download longer than a link's life:
  the fill renews the link on the way, no request reaches the origin with an
  expired link, the bytes are exact;
- a source that keeps handing out expired links: a clear 502
  (`link_expired`), a bounded number of resolutions, nothing sent upstream.
"""

import http.server
import json
import os
import re
import socketserver
import threading
import time
import urllib.parse

from harness import GatewayTest, random_bytes, wait_until

KiB = 1024
MiB = 1024 * 1024
TOKEN = "alist-oss-token"


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class OssOrigin:
    """Serves `files` with ranges at `rate` bytes/s per request; a request
    whose x-oss-expires is missing or past gets 403 (as OSS answers).
    Records (arrival wall time, expiry, range, status) per request."""

    def __init__(self, files, rate=None):
        self.files, self.rate, self.requests = files, rate, []
        origin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                now = time.time()
                parts = urllib.parse.urlsplit(self.path)
                q = urllib.parse.parse_qs(parts.query)
                exp = int(q.get("x-oss-expires", ["0"])[0])
                data = origin.files.get(parts.path)
                rng = self.headers.get("Range", "")
                status = 206
                if exp <= now:
                    status = 403
                elif data is None:
                    status = 404
                origin.requests.append(dict(at=now, expires=exp, range=rng, status=status))
                if status != 206:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                m = re.match(r"bytes=(\d+)-(\d*)$", rng)
                begin = int(m.group(1)) if m else 0
                end = min(len(data), int(m.group(2)) + 1) if m and m.group(2) else len(data)
                self.send_response(206)
                self.send_header("Content-Length", str(end - begin))
                self.send_header("Content-Range", "bytes %d-%d/%d" % (begin, end - 1, len(data)))
                self.send_header("ETag", '"oss-1"')
                self.end_headers()
                body, sent = data[begin:end], 0
                step = max(1, (origin.rate or len(body)) // 20)
                try:
                    while sent < len(body):
                        self.wfile.write(body[sent:sent + step])
                        sent += step
                        if origin.rate:
                            time.sleep(0.05)
                except OSError:
                    pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class OssAList:
    """AList's /api/fs/link handing out `origin/<path>?x-oss-expires=<now +
    life>&Signature=…`; `life` may be negative (a source that hands out
    expired links). Records each resolution (wall time, expiry written)."""

    def __init__(self, origin_port, life):
        self.origin_port, self.life, self.resolutions = origin_port, life, []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = json.loads(raw.decode())["path"]
                now = time.time()
                exp = int(now + fake.life)
                fake.resolutions.append(dict(at=now, expires=exp, path=path))
                url = "http://127.0.0.1:%d%s?OSSAccessKeyId=LTAI5t&x-oss-expires=%d&Signature=c2lnbg%%3D%%3D" % (
                    fake.origin_port, urllib.parse.quote(path), exp)
                body = json.dumps({"code": 200, "message": "success",
                                   "data": {"url": url, "header": {}}}).encode()
                ok = self.headers.get("Authorization") == TOKEN
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body if ok else b'{"code":401,"message":"token invalid","data":null}')

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def expiry_of(url):
    return int(urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["x-oss-expires"][0])


class LinkExpiry(GatewayTest):
    LIFE = 4  # seconds: usable for 4 s minus a fifth

    def setup_fakes(self, life, files, rate=None):
        origin = OssOrigin(files, rate)
        self._fixtures.append(origin.stop)
        alist = OssAList(origin.port, life)
        self._fixtures.append(alist.stop)
        return origin, alist

    def ini(self, alist, delivery, extra=""):
        return ("[server]\nlog_level = debug\n[cache]\ndir = @CACHE@\nblock_size = 256K\nmax_size = 1G\n"
                "min_free = 0\n[mount a]\nsource = alist\nurl = http://127.0.0.1:%d\ntoken = %s\n"
                "delivery = %s\n%s" % (alist.port, TOKEN, delivery, extra))

    def test_redirect_links_reused_in_their_life_renewed_before_it_never_expired(self):
        origin, alist = self.setup_fakes(self.LIFE, {"/f.bin": b"x" * 1000})
        gw = self.gateway(self.ini(alist, "redirect"))
        handed = []

        def get():
            r = gw.get("/d/a/f.bin")
            self.assertEqual(r.status, 302, r)
            handed.append((time.time(), r.header("Location")))
            return r.header("Location")

        first = get()
        self.assertEqual(len(alist.resolutions), 1)
        self.assertEqual(expiry_of(first), alist.resolutions[0]["expires"])
        # Reused while well inside its life.
        while time.time() < alist.resolutions[0]["at"] + self.LIFE * 0.5:
            self.assertEqual(get(), first)
            time.sleep(0.2)
        self.assertEqual(len(alist.resolutions), 1, "a link was resolved again within its life")
        # Past four fifths of its life, before it expires: a new one.
        wait_until(lambda: time.time() > alist.resolutions[0]["at"] + self.LIFE * 0.8 + 0.3, self.LIFE * 2)
        second = get()
        self.assertNotEqual(second, first)
        self.assertEqual(len(alist.resolutions), 2)
        # (No wall-clock bound on when the renewal happened: it happens when a
        # client asks past the margin. What matters is checked below: no
        # link a client received had expired when it got it.)
        for at, loc in handed:
            self.assertGreater(expiry_of(loc), at, "an expired link was handed to a client: %s" % loc)

    def test_proxy_download_longer_than_a_link_renews_it_on_the_way(self):
        data = random_bytes(3 * MiB, seed=5)
        # 256 KiB/s per connection, 2 connections: about 6 s, longer than a link's 4 s.
        origin, alist = self.setup_fakes(self.LIFE, {"/film.bin": data}, rate=256 * KiB)
        gw = self.gateway(self.ini(alist, "proxy", "connections = 2\n"))
        r = gw.get("/p/a/film.bin", timeout=60)
        self.assertEqual(r.status, 200)
        self.assertEqual(r.body, data)
        reqs = origin.requests
        print("\n    [fig] %d origin requests over %.1fs, %d link resolutions" % (
            len(reqs), reqs[-1]["at"] - reqs[0]["at"], len(alist.resolutions)), end="")
        self.assertGreaterEqual(len(alist.resolutions), 2, "the link was never renewed")
        self.assertFalse([q for q in reqs if q["status"] != 206], "a request reached the origin expired: %r" % reqs)
        self.assertGreater(len({q["expires"] for q in reqs}), 1, "every request used one link")

    def test_a_source_that_hands_out_expired_links_is_a_clear_502(self):
        origin, alist = self.setup_fakes(-10, {"/f.bin": b"y" * 1000})
        for delivery, path in (("redirect", "/d/a/f.bin"), ("proxy", "/p/a/f.bin")):
            with self.subTest(delivery=delivery):
                gw = self.gateway(self.ini(alist, delivery))
                before = len(alist.resolutions)
                r = gw.get(path)
                self.assertEqual(r.status, 502, r)
                self.assertIn("expir", r.body.decode())
                self.assertIsNone(r.header("Location"))
                self.assertEqual(len(alist.resolutions) - before, 3)  # LinkCache::kExpiredResolutions
                line = gw.wait_access(1)[-1]
                self.assertEqual(line.get("reason"), "link_expired", line)
        self.assertEqual(origin.requests, [], "an expired link was sent upstream")
