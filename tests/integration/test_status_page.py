"""Issue 12, item 1: the status page in a real browser.

Headless Chromium (Debian's `chromium`) loads the page embedded in the binary
(`slipstream status-page`) from a small server that answers the admin API with
canned JSON in the documented schema (tests/integration/data/, checked against
the C++ API by tests/unit/admin_api_test.cc). The page's script must have run:
the DOM has each transfer's file name, a block map with the right number of
cells in the right states, a speed, the prefetch progress, the cache figures;
a hostile file name stays text; the page refreshes itself. A phone-sized
screenshot is kept in build/artifacts/status-page.png and must not be blank.

The page served by the running gateway during a real transfer is
tests/integration/test_status_live.py; this test pins the page itself,
with states (fetching blocks, prefetches, accounts) a live gateway does not
show yet.
"""

import html.parser
import http.server
import json
import os
import shutil
import struct
import subprocess
import tempfile
import threading
import unittest
import zlib

from harness import BIN, ROOT

DATA = os.path.join(ROOT, "tests", "integration", "data")
ARTIFACTS = os.path.join(ROOT, "build", "artifacts")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class ApiServer:
    """Serves /-/status (the page) and /-/api/v1/{stats,transfers,prefetch}."""

    def __init__(self, page, page_path="/-/status"):
        self.hits = {}
        self.lock = threading.Lock()
        canned = {}
        for name in ("stats", "transfers", "prefetch"):
            with open(os.path.join(DATA, "api_v1_%s.json" % name), "rb") as f:
                canned["/-/api/v1/" + name] = f.read()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                with outer.lock:
                    outer.hits[self.path] = outer.hits.get(self.path, 0) + 1
                if self.path == page_path:
                    body, ctype = page, "text/html; charset=utf-8"
                elif self.path in canned:
                    body, ctype = canned[self.path], "application/json"
                else:
                    body, ctype = b'{"error": {"reason": "unknown_route"}}', "application/json"
                    self.send_response(404)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class Node:
    def __init__(self, tag, attrs, parent):
        self.tag, self.attrs, self.parent = tag, dict(attrs), parent
        self.children, self.text = [], []

    def classes(self):
        return (self.attrs.get("class") or "").split()

    def all_text(self):
        return "".join(self.text) + "".join(c.all_text() for c in self.children)

    def find_all(self, pred):
        out = []
        for c in self.children:
            if pred(c):
                out.append(c)
            out.extend(c.find_all(pred))
        return out

    def by_class(self, cls):
        return self.find_all(lambda n: cls in n.classes())

    def by_id(self, ident):
        found = self.find_all(lambda n: n.attrs.get("id") == ident)
        return found[0] if found else None


class Dom(html.parser.HTMLParser):
    VOID = {"meta", "link", "br", "img", "input", "hr", "area", "base", "col", "embed", "source",
            "track", "wbr"}

    def __init__(self, text):
        super().__init__()
        self.root = Node("#root", [], None)
        self.cur = self.root
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        n = Node(tag, attrs, self.cur)
        self.cur.children.append(n)
        if tag not in self.VOID:
            self.cur = n

    def handle_endtag(self, tag):
        n = self.cur
        while n is not self.root and n.tag != tag:
            n = n.parent
        if n is not self.root:
            self.cur = n.parent

    def handle_data(self, data):
        self.cur.text.append(data)


def png_colours(path, limit=64):
    """Distinct RGB(A) pixel values in a PNG (8-bit, non-interlaced), counted
    up to `limit`: a blank page has one."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            width, height, depth, ctype = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8 and ctype in (2, 6), "unexpected PNG format %d/%d" % (depth, ctype)
            bpp = 3 if ctype == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + n
    raw = zlib.decompress(idat)
    stride = width * bpp
    prev = bytearray(stride)
    colours = set()
    for y in range(height):
        line = raw[y * (stride + 1):(y + 1) * (stride + 1)]
        ftype, cur = line[0], bytearray(line[1:])
        for i in range(stride):  # undo the PNG row filter
            a = cur[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if ftype == 1:
                cur[i] = (cur[i] + a) & 255
            elif ftype == 2:
                cur[i] = (cur[i] + b) & 255
            elif ftype == 3:
                cur[i] = (cur[i] + (a + b) // 2) & 255
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                cur[i] = (cur[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        if y % 8 == 0:  # every 8th row is plenty to tell blank from drawn
            for x in range(0, stride, bpp * 2):
                colours.add(bytes(cur[x:x + bpp]))
            if len(colours) >= limit:
                return len(colours)
        prev = cur
    return len(colours)


@unittest.skipUnless(CHROMIUM, "chromium is not installed (scripts/deps.sh installs it)")
class StatusPageTest(unittest.TestCase):
    def setUp(self):
        page = subprocess.run([BIN, "status-page"], check=True, capture_output=True).stdout
        self.assertTrue(page.startswith(b"<!doctype html>"))
        # Self-contained: nothing is loaded from anywhere else.
        for needle in (b"http://", b"https://", b"//", b"<link", b"@import", b"src=", b"url("):
            self.assertNotIn(needle, page.replace(b"// ", b""), "the page must not load %r" % needle)
        self.page = page
        self.server = ApiServer(page)
        self.addCleanup(self.server.stop)
        self.profile = tempfile.mkdtemp(prefix="slip-chromium-")
        self.addCleanup(shutil.rmtree, self.profile, True)

    def chromium(self, *args, size="412,915"):
        cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--hide-scrollbars",
               "--user-data-dir=" + self.profile, "--window-size=" + size,
               "--virtual-time-budget=8000"] + list(args) + [self.server.url("/-/status")]
        r = subprocess.run(cmd, capture_output=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr.decode(errors="replace")[-2000:])
        return r.stdout.decode()

    def test_page_renders_transfers_block_maps_and_figures(self):
        dom = Dom(self.chromium("--dump-dom")).root
        transfers = dom.by_class("transfer")
        self.assertEqual(len(transfers), 2, "one element per transfer")
        film, episode = transfers
        self.assertEqual(film.by_class("name")[0].all_text(), "Big Buck Bunny (2008).mkv")
        self.assertEqual(film.by_class("speed")[0].all_text(), "2.4 MB/s")
        self.assertEqual(film.by_class("conns")[0].all_text(), "4 upstream")
        self.assertEqual(film.by_class("sent")[0].all_text(), "12.0 MiB of 40.0 MiB")
        # 40 blocks: one cell each, in the blocks' states.
        bar = film.by_class("blockmap")[0]
        cells = bar.by_class("cell")
        self.assertEqual(bar.attrs.get("data-blocks"), "40")
        self.assertEqual(len(cells), 40)
        states = "".join({"s": "S", "f": "F", "m": "-"}[c.classes()[1]] for c in cells)
        self.assertEqual(states, "S" * 12 + "F" * 4 + "-" * 24)
        # 1000 blocks: drawn with 100 cells of 10 blocks each.
        cells = episode.by_class("blockmap")[0].by_class("cell")
        self.assertEqual(len(cells), 100)
        states = "".join({"s": "S", "f": "F", "m": "-"}[c.classes()[1]] for c in cells)
        self.assertEqual(states, "S" * 10 + "F" * 3 + "-" * 87)
        self.assertEqual(episode.by_class("speed")[0].all_text(), "11.5 MB/s")
        # A file name is text, never markup.
        self.assertIn("<img src=x onerror=", episode.by_class("name")[0].all_text())
        self.assertEqual(dom.find_all(lambda n: n.tag == "img"), [])
        self.assertNotIn("pwned", dom.find_all(lambda n: n.tag == "title")[0].all_text())

        prefetch = dom.by_class("prefetch")
        self.assertEqual(len(prefetch), 1)
        self.assertEqual(prefetch[0].by_class("name")[0].all_text(), "Sintel.mkv")
        self.assertEqual(prefetch[0].by_class("progress")[0].all_text(), "42 %")
        self.assertEqual(prefetch[0].by_class("state")[0].all_text(), "running")

        cache = dom.by_id("cache").all_text()
        self.assertIn("30.0 GiB of 50.0 GiB", cache)
        self.assertIn("70.0 %", cache)
        self.assertIn("75.0 %", cache)
        mounts = dom.by_id("mounts").all_text()
        self.assertIn("rate_limited: 429 from getDownloadUrl (1m 40s ago)", mounts)
        accounts = dom.by_id("accounts").all_text()
        self.assertIn("authorized", accounts)
        self.assertIn("3 open, 1 waiting", accounts)
        process = dom.by_id("process").all_text()
        self.assertIn("/etc/slipstream/slipstream.ini", process)
        self.assertIn("0.4 ms (max 6.2)", process)
        self.assertEqual(dom.by_id("version").all_text(), "v0.1.0")
        self.assertEqual(dom.by_id("uptime").all_text(), "up 1h 1m")
        self.assertTrue(dom.by_id("conn").all_text().startswith("updated "))
        # It refreshed itself: more than one round of API calls.
        body = dom.find_all(lambda n: n.tag == "body")[0]
        self.assertGreaterEqual(int(body.attrs.get("data-refreshes", "0")), 2)
        self.assertGreaterEqual(self.server.hits.get("/-/api/v1/transfers", 0), 2)
        self.assertEqual(self.server.hits.get("/-/api/v1/stats"),
                         self.server.hits.get("/-/api/v1/transfers"))

    def test_screenshot_on_a_phone_is_not_blank(self):
        os.makedirs(ARTIFACTS, exist_ok=True)
        shot = os.path.join(ARTIFACTS, "status-page.png")
        if os.path.exists(shot):
            os.unlink(shot)
        self.chromium("--screenshot=" + shot)
        self.assertTrue(os.path.exists(shot), "chromium wrote no screenshot")
        self.assertGreater(os.path.getsize(shot), 10_000)
        # White page + text would have a handful; the block maps alone add
        # their three colours on top of the background and the text.
        self.assertGreaterEqual(png_colours(shot), 8)

    def test_api_errors_show_on_the_page(self):
        # Served from a path whose api/v1/ answers 404: the page says why.
        srv = ApiServer(self.page, page_path="/other/status")
        self.addCleanup(srv.stop)
        cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync",
               "--user-data-dir=" + self.profile, "--virtual-time-budget=3000", "--dump-dom",
               srv.url("/other/status")]
        out = subprocess.run(cmd, capture_output=True, timeout=120).stdout.decode()
        conn = Dom(out).root.by_id("conn")
        self.assertEqual(conn.attrs.get("class"), "bad")
        # Whichever of the three parallel calls failed first.
        self.assertRegex(conn.all_text(),
                         r"^cannot reach the gateway \((stats|transfers|prefetch): unknown_route\)$")
        self.assertEqual(Dom(out).root.by_class("transfer"), [])


if __name__ == "__main__":
    unittest.main()
