"""Issue 9 #1 and #8: hostile replies from a source. An AList that answers
its link API with every malformed shape (a string or null `code`, 1e300,
2^32+200, wrong types for `data`, `url`, `header`, cut-short JSON, a list,
deep nesting) while another download runs: each malformed path is a 502 with
a reason, the other download completes byte-exact, the process stays alive.
And CR/LF in `data.header` never reaches the origin: a raw origin records
every byte it receives.

The fake here answers raw bytes per path (so it can say what no JSON library
would write); the real contract is in test_edge.FakeAList.
"""

import http.server
import json
import os
import socket
import socketserver
import threading

from harness import GatewayTest, random_bytes, sha256, wait_until, write_file

KiB = 1024
MiB = 1024 * 1024
TOKEN = "alist-hostile-token"


class RawAList:
    """POST /api/fs/link answering `replies[path]` (bytes, or a dict that is
    sent as JSON) with HTTP 200; unknown paths get AList's "object not found".
    Records the paths asked for."""

    def __init__(self, replies):
        self.replies = replies
        self.asked = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    path = json.loads(raw.decode())["path"]
                except (ValueError, KeyError, TypeError):
                    path = None
                fake.asked.append(path)
                reply = fake.replies.get(path, {"code": 500, "message": "object not found", "data": None})
                body = reply if isinstance(reply, bytes) else json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class RecordingOrigin:
    """A raw HTTP/1.1 origin that keeps every byte of every request head it
    receives and answers ranges of one small body."""

    def __init__(self, body):
        self.body = body
        self.heads = []
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.running = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while self.running:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        buf = b""
        with c:
            while True:
                while b"\r\n\r\n" not in buf:
                    try:
                        chunk = c.recv(65536)
                    except OSError:
                        return
                    if not chunk:
                        return
                    buf += chunk
                head, buf = buf.split(b"\r\n\r\n", 1)
                with self.lock:
                    self.heads.append(head)
                size, begin, end, status = len(self.body), 0, len(self.body), "200 OK"
                extra = ""
                for line in head.split(b"\r\n")[1:]:
                    if line.lower().startswith(b"range: bytes="):
                        a, _, b = line[13:].decode().partition("-")
                        begin, end = int(a), min(size, int(b) + 1) if b else size
                        status = "206 Partial Content"
                        extra = "Content-Range: bytes %d-%d/%d\r\n" % (begin, end - 1, size)
                resp = ("HTTP/1.1 %s\r\nContent-Length: %d\r\nETag: \"r1\"\r\nAccept-Ranges: bytes\r\n%s\r\n"
                        % (status, end - begin, extra)).encode() + self.body[begin:end]
                try:
                    c.sendall(resp)
                except OSError:
                    return

    def all_bytes(self):
        with self.lock:
            return b"\r\n\r\n".join(self.heads)

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def stop(self):
        self.running = False
        self.sock.close()


MALFORMED = {
    # path: (reply bytes, text the 502 must carry)
    "/code-string.mkv": (b'{"code":"200","message":"success","data":{"url":"http://127.0.0.1:9/x"}}',
                         "code is a string, not a number"),
    "/code-null.mkv": (b'{"code":null,"data":{"url":"http://127.0.0.1:9/x"}}', "code is missing"),
    "/code-huge.mkv": (b'{"code":1e300,"data":{"url":"http://127.0.0.1:9/x"}}', "not an integer of 64 bits"),
    "/code-wraps.mkv": (b'{"code":4294967496,"message":"wraps","data":{"url":"http://127.0.0.1:9/x"}}',
                        "code 4294967496: wraps"),
    "/code-negative.mkv": (b'{"code":-200,"message":"neg"}', "code -200: neg"),
    "/code-list.mkv": (b'{"code":[200],"data":{"url":"http://127.0.0.1:9/x"}}', "code is a list"),
    "/data-string.mkv": (b'{"code":200,"data":"http://127.0.0.1:9/x"}', "data is a string, not an object"),
    "/data-null.mkv": (b'{"code":200,"message":"success","data":null}', "data is missing"),
    "/url-number.mkv": (b'{"code":200,"data":{"url":12345}}', "data.url is a number, not a string"),
    "/url-object.mkv": (b'{"code":200,"data":{"url":{"href":"http://x/"}}}', "data.url is an object"),
    "/url-file.mkv": (b'{"code":200,"data":{"url":"file:///etc/passwd"}}', "data.url is not an http(s) URL"),
    "/header-string.mkv": (b'{"code":200,"data":{"url":"http://127.0.0.1:9/x","header":{"Referer":"x"}}}',
                           "data.header.Referer is a string, not a list of strings"),
    "/header-number.mkv": (b'{"code":200,"data":{"url":"http://127.0.0.1:9/x","header":{"Referer":[7]}}}',
                           "data.header.Referer holds a number"),
    "/header-list.mkv": (b'{"code":200,"data":{"url":"http://127.0.0.1:9/x","header":[1,2]}}',
                         "data.header is a list, not a map"),
    "/not-json.mkv": (b"<html><body>502 Bad Gateway</body></html>", "the reply is not JSON"),
    "/cut-short.mkv": (b'{"code":200,"data":{"url":"http://127.0.0.1:9', "the reply is not JSON"),
    "/empty.mkv": (b"", "the reply is not JSON"),
    "/array.mkv": (b'[{"code":200}]', "the reply is not a JSON object"),
    "/deep.mkv": (b"[" * 200000 + b"]" * 200000, "the reply is not a JSON object"),
}


class HostileAList(GatewayTest):
    def setUp(self):
        super().setUp()
        self.root = os.path.join(self.tmp, "www")
        self.big = random_bytes(6 * MiB + 17, seed=61)
        write_file(os.path.join(self.root, "big.bin"), self.big)
        # 1 MiB/s per connection, 2 connections: the download runs ~3 s.
        self.origin = self.nginx(self.root, picky=False, limit_rate="1m")

    def alist(self, replies):
        f = RawAList(replies)
        self._fixtures.append(f.stop)
        return f

    def ini(self, alist, extra=""):
        return ("[server]\nlog_level = debug\nshutdown_grace = 1s\n[cache]\ndir = @CACHE@\nmin_free = 0\n"
                "[mount al]\nsource = alist\nurl = %s\ntoken = %s\ndelivery = proxy\nconnections = 2\n%s"
                % (alist.url(), TOKEN, extra))

    def test_malformed_link_replies_are_502s_while_another_download_completes(self):
        replies = {p: body for p, (body, _) in MALFORMED.items()}
        replies["/big.bin"] = {"code": 200, "message": "success",
                               "data": {"url": self.origin.url("/big.bin"), "header": None}}
        fake = self.alist(replies)
        gw = self.gateway(self.ini(fake))
        got = {}

        def download():
            got["r"] = gw.get("/p/al/big.bin", timeout=120)

        t = threading.Thread(target=download)
        t.start()
        wait_until(lambda: "/big.bin" in fake.asked, 10, what="the big download to start")
        for path, (_, reason) in MALFORMED.items():
            with self.subTest(path=path):
                r = gw.get("/p/al" + path)
                self.assertEqual(r.status, 502, "%s: %r %r" % (path, r, r.body[:300]))
                self.assertIn(reason, r.body.decode(errors="replace"), path)
                self.assertIsNone(gw.proc.poll(), "the gateway died on %s" % path)
        self.assertTrue(t.is_alive(), "the big download ended before the malformed replies were all "
                                      "answered: the test did not overlap them")
        t.join(120)
        r = got["r"]
        self.assertEqual(r.status, 200)
        self.assertEqual(len(r.body), len(self.big))
        self.assertEqual(sha256(r.body), sha256(self.big))
        self.assertIsNone(gw.proc.poll())
        self.assertEqual(gw.get("/-/health").status, 200)
        # The reasons are in the log too, with stable codes.
        self.assertIn("reason=source_bad_reply", gw.errors())

    def test_a_path_that_is_not_utf8_is_404_not_a_crash(self):
        fake = self.alist({})
        gw = self.gateway(self.ini(fake))
        r = gw.get("/p/al/%FF%FE.mkv")
        self.assertEqual(r.status, 404, r.body)
        self.assertIn("the path is not UTF-8", r.body.decode(errors="replace"))
        self.assertEqual(fake.asked, [], "AList was asked for a path it cannot hold")
        self.assertIsNone(gw.proc.poll())
        self.assertEqual(gw.get("/-/health").status, 200)


class HeaderInjection(GatewayTest):
    """#8: CR/LF (and friends) in AList's data.header never reach the origin."""

    def test_crlf_in_data_header_never_reaches_the_origin(self):
        body = random_bytes(1000, seed=7)
        origin = RecordingOrigin(body)
        self._fixtures.append(origin.stop)
        url = origin.url("/f.bin")
        bad = {
            "/crlf.bin": ({"X-A": ["v\r\nX-Injected: 1"]}, "header 'X-A': value contains CR, LF or NUL"),
            "/lf.bin": ({"X-B": ["v\nX-Injected: 2"]}, "header 'X-B': value contains CR, LF or NUL"),
            "/nul.bin": ({"X-C": ["v\u0000X-Injected: 3"]}, "header 'X-C': value contains CR, LF or NUL"),
            "/name.bin": ({"X-D\r\nX-Injected": ["4"]}, "bad header name 'X-D\\x0d\\x0aX-Injected'"),
            "/ctl.bin": ({"X-E": ["v\u0001"]}, "header 'X-E': value contains a control character"),
            "/length.bin": ({"Content-Length": ["0"]}, "header 'Content-Length' is set by slipstream itself"),
            "/te.bin": ({"Transfer-Encoding": ["chunked"]}, "is set by slipstream itself"),
        }
        replies = {p: {"code": 200, "message": "success", "data": {"url": url, "header": h}}
                   for p, (h, _) in bad.items()}
        replies["/good.bin"] = {"code": 200, "message": "success",
                                "data": {"url": url, "header": {"X-Good": ["yes"], "Cookie": ["a=1; b=2"]}}}
        fake = RawAList(replies)
        self._fixtures.append(fake.stop)
        for cache in ("on", "off"):
            gw = self.gateway("[server]\n[cache]\ndir = @CACHE@\nmin_free = 0\n"
                              "[mount al]\nsource = alist\nurl = %s\ntoken = %s\ndelivery = proxy\ncache = %s\n"
                              % (fake.url(), TOKEN, cache))
            for path, (_, reason) in bad.items():
                with self.subTest(cache=cache, path=path):
                    r = gw.get("/p/al" + path)
                    self.assertEqual(r.status, 502, r.body[:300])
                    text = r.body.decode(errors="replace")
                    self.assertIn("cannot be sent upstream", text)
                    self.assertIn(reason, text)
                    self.assertNotIn("X-Injected: ", text)
            self.assertNotIn(b"X-Injected", origin.all_bytes())
            self.assertEqual(origin.heads, [], "a request with a refused header reached the origin")
            self.assertIn("reason=source_bad_header", gw.errors())
            # A clean header goes through: the recorder works.
            r = gw.get("/p/al/good.bin")
            self.assertEqual((r.status, sha256(r.body)), (200, sha256(body)))
            heads = origin.all_bytes()
            self.assertIn(b"\r\nX-Good: yes", heads)
            self.assertIn(b"\r\nCookie: a=1; b=2", heads)
            self.assertNotIn(b"X-Injected", heads)
            gw.cleanup()
            with origin.lock:
                origin.heads.clear()
