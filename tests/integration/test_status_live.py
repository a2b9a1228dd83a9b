"""Issue 12, items 1 and 2 on the running gateway: /-/status and the admin
API served by the front end, during a real transfer.

An nginx origin with `limit_rate` makes a cached download slow. While it
runs, the API reports it (client, mount, path, delivery, cache status,
bytes sent, a speed the gateway samples on its loop, the store's block
map); headless Chromium loads /-/status from the gateway and, after the
page's script ran, the DOM has the file's name, a block map with one cell
per block, a non-zero speed; a phone-sized screenshot is kept in
build/artifacts/status-live.png (not blank). `slipstream status` prints the
same transfer. The download still arrives byte-exact. The admin protection
(admin_allow, Bearer, Basic with the token as password), the JSON errors,
the access log and /-/metrics for the admin routes are checked too.
"""

import base64
import http.client
import json
import os
import re
import shutil
import subprocess
import tempfile

from harness import (BIN, ROOT, GatewayTest, Response, random_bytes, request, sha256_file, wait_until,
                     write_file)
from test_status_page import CHROMIUM, Dom, png_colours

ARTIFACTS = os.path.join(ROOT, "build", "artifacts")
MiB = 1024 * 1024
NAME = "Big Buck Bunny (2008).mkv"
URL_NAME = "Big%20Buck%20Bunny%20(2008).mkv"
SIZE = 8 * MiB + 5  # 9 blocks of 1 MiB
TOKEN = "live-test-token-0123456789"


def metric(text, name):
    m = re.search(r"(?m)^%s (\d+)$" % re.escape(name), text)
    return int(m.group(1)) if m else 0


class StatusLiveTest(GatewayTest):
    def setUp(self):
        super().setUp()
        web = os.path.join(self.tmp, "web")
        self.film = random_bytes(SIZE, seed=21)
        write_file(os.path.join(web, NAME), self.film)
        self.origin = self.nginx(web, picky=False, limit_rate="200k")

    def start(self, server=""):
        self.gw = self.gateway(
            "[server]\nadmin_token = %s\n%s\n"
            "[cache]\ndir = @CACHE@\nblock_size = 1M\nmax_size = 1G\nmin_free = 0\n"
            "[mount web]\nsource = http\nbase_url = %s\nconnections = 2\ndelivery = proxy\n"
            % (TOKEN, server, self.origin.url("/")))
        return self.gw

    def api(self, route, headers=None):
        r = self.gw.get("/-/api/v1/" + route, headers=headers)
        return r.status, json.loads(r.body) if r.body else None

    def start_download(self):
        out = os.path.join(self.tmp, "download.mkv")
        proc = subprocess.Popen(["curl", "-sS", "-o", out, self.gw.url("/d/web/" + URL_NAME)],
                                stderr=subprocess.PIPE)
        self._fixtures.append(lambda: proc.poll() is None and proc.kill())
        return proc, out

    def running_transfer(self):
        """The download as the API reports it, once a speed was sampled."""
        def ready():
            status, body = self.api("transfers")
            self.assertEqual(status, 200)
            ts = [t for t in body["transfers"] if t["path"] == "/web/" + NAME]
            return (ts[0] if ts and ts[0]["speed_bps"] > 0 and ts[0]["blocks"] and "F" in ts[0]["blocks"]["states"]
                    else None)
        return wait_until(ready, 30, interval=0.1, what="the transfer with a speed")

    def chromium(self, profile, *args):
        cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--hide-scrollbars", "--user-data-dir=" + profile,
               "--window-size=412,915", "--virtual-time-budget=6000", "--enable-logging=stderr"] + list(args)
        r = subprocess.run(cmd, capture_output=True, timeout=120)
        err = r.stderr.decode(errors="replace")
        self.assertEqual(r.returncode, 0, err[-2000:])
        # The page runs under its Content-Security-Policy: nothing of it blocked.
        self.assertNotIn("Content Security Policy", err)
        return r.stdout.decode()

    # ------------------------------------------------------------------ the page and the API, live

    def test_page_api_and_cli_during_a_slow_transfer(self):
        if not CHROMIUM:
            self.skipTest("chromium is not installed (scripts/deps.sh installs it)")
        gw = self.start()
        proc, out = self.start_download()
        t = self.running_transfer()
        self.assertEqual((t["mount"], t["client"], t["delivery"], t["cache"]), ("web", "127.0.0.1", "proxy", "MISS"))
        self.assertEqual((t["range"]["begin"], t["range"]["end"]), (0, SIZE))
        self.assertEqual((t["blocks"]["count"], t["blocks"]["size"], t["blocks"]["block_size"]), (9, SIZE, MiB))
        # The fill's live state: blocks being fetched, the object's connections.
        self.assertRegex(t["blocks"]["states"], r"^[SF-]{9}$")
        self.assertIn("F", t["blocks"]["states"])
        self.assertGreaterEqual(t["upstream_connections"], 1)
        self.assertLessEqual(t["upstream_connections"], 2)  # connections = 2
        self.assertGreater(t["bytes_sent"], 0)
        self.assertLess(t["bytes_sent"], SIZE)

        profile = tempfile.mkdtemp(prefix="slip-chromium-")
        self._fixtures.append(lambda: shutil.rmtree(profile, True))
        dom = Dom(self.chromium(profile, "--dump-dom", gw.url("/-/status"))).root
        self.assertIsNone(proc.poll(), "the download must still run while the page is looked at")
        transfers = dom.by_class("transfer")
        self.assertEqual(len(transfers), 1)
        tr = transfers[0]
        self.assertEqual(tr.by_class("name")[0].all_text(), NAME)
        self.assertEqual(tr.by_class("path")[0].all_text(), "/web/%s · mount web" % NAME)
        self.assertEqual(tr.by_class("delivery")[0].all_text(), "proxy · MISS")
        bar = tr.by_class("blockmap")[0]
        self.assertEqual(bar.attrs.get("data-blocks"), "9")
        self.assertEqual(len(bar.by_class("cell")), 9)
        # Cells of blocks being fetched while the transfer runs ('F').
        self.assertGreaterEqual(len([c for c in bar.by_class("cell") if "f" in c.classes()]), 1)
        speed = tr.by_class("speed")[0].all_text()
        self.assertRegex(speed, r"^\d+(\.\d)? (B|KB|MB)/s$")
        self.assertNotEqual(speed, "0 B/s")
        self.assertRegex(tr.by_class("sent")[0].all_text(), r" of 8\.00 MiB$")
        self.assertIn("web (/web)", dom.by_id("mounts").all_text())
        self.assertIn(os.path.realpath(gw.ini), dom.by_id("process").all_text())
        self.assertTrue(dom.by_id("conn").all_text().startswith("updated "))
        body = dom.find_all(lambda n: n.tag == "body")[0]
        self.assertGreaterEqual(int(body.attrs.get("data-refreshes", "0")), 2)

        os.makedirs(ARTIFACTS, exist_ok=True)
        shot = os.path.join(ARTIFACTS, "status-live.png")
        if os.path.exists(shot):
            os.unlink(shot)
        self.chromium(profile, "--screenshot=" + shot, gw.url("/-/status"))
        self.assertGreater(os.path.getsize(shot), 10_000)
        self.assertGreaterEqual(png_colours(shot), 8)

        # The command line, against the running gateway (an INI naming its port).
        cli_ini = os.path.join(self.tmp, "cli.ini")
        with open(cli_ini, "w") as f:
            f.write("[server]\nlisten = 127.0.0.1:%d\nadmin_token = %s\n" % (gw.port, TOKEN))
        r = subprocess.run([BIN, "status", "-c", cli_ini], capture_output=True, timeout=60,
                           env=dict(os.environ, COLUMNS="80"))
        self.assertEqual(r.returncode, 0, r.stderr)
        text = r.stdout.decode()
        self.assertIn("transfers (1)\n  %s\n" % NAME, text)
        self.assertRegex(text, r"    \[[#.>]{9}\]\n")  # its block map, one mark per block
        self.assertIn("proxy MISS · 127.0.0.1", text)

        self.assertEqual(proc.wait(120), 0, proc.stderr.read())
        self.assertEqual(sha256_file(out), sha256_file(os.path.join(self.tmp, "web", NAME)))
        # Once done it is no longer a transfer; the store holds all 9 blocks.
        wait_until(lambda: self.api("transfers")[1]["transfers"] == [], 10, what="no transfer")
        status, objs = self.api("objects?mount=web")
        self.assertEqual(status, 200)
        wait_until(lambda: self.api("objects?mount=web")[1]["objects"][0]["blocks"]["states"] == "S" * 9,
                   20, what="all blocks stored")

    # ------------------------------------------------------------------ protection, errors, logs

    def test_admin_protection_json_errors_log_and_metrics(self):
        gw = self.start("admin_allow = 10.255.255.0/24\n")  # loopback is not an admin here
        r = gw.get("/-/status")
        self.assertEqual(r.status, 401)
        self.assertEqual(r.header("WWW-Authenticate"), 'Basic realm="slipstream admin", charset="UTF-8"')
        basic = "Basic " + base64.b64encode(b"anyone:" + TOKEN.encode()).decode()
        r = gw.get("/-/status", headers={"Authorization": basic})
        self.assertEqual(r.status, 200)
        self.assertTrue(r.body.startswith(b"<!doctype html>"))
        csp = r.header("Content-Security-Policy")
        self.assertRegex(csp, r"script-src 'sha256-[A-Za-z0-9+/]+=*'")
        self.assertIn("connect-src 'self'", csp)
        self.assertEqual(r.header("X-Frame-Options"), "DENY")
        self.assertEqual(r.header("Cache-Control"), "no-store")
        wrong = "Basic " + base64.b64encode(b"anyone:" + TOKEN.encode()[:-1] + b"X").decode()
        self.assertEqual(gw.get("/-/status", headers={"Authorization": wrong}).status, 401)

        # The API: JSON errors with the reasons table's codes.
        status, body = self.api("stats")
        self.assertEqual((status, body["error"]["reason"]), (401, "admin_auth"))
        bearer = {"Authorization": "Bearer " + TOKEN}
        status, stats = self.api("stats", bearer)
        self.assertEqual(status, 200)
        self.assertEqual(stats["mounts"][0]["name"], "web")
        self.assertEqual(stats["mounts"][0]["links_resolved"], 0)  # nothing fetched yet
        self.assertTrue(stats["cache"]["enabled"])
        self.assertGreater(stats["cache"]["disk_free"], 0)
        self.assertEqual(stats["config"]["file"], os.path.realpath(gw.ini))
        self.assertNotIn(TOKEN, json.dumps(stats))
        status, body = self.api("nothing", bearer)
        self.assertEqual((status, body["error"]["reason"]), (404, "unknown_route"))
        r = request(gw.port, "/-/api/v1/stats", method="PUT", headers=bearer)
        self.assertEqual((r.status, json.loads(r.body)["error"]["reason"]), (405, "api_method_not_allowed"))
        self.assertEqual(r.header("Allow"), "GET, HEAD")
        r = request(gw.port, "/-/api/v1/prefetch", method="POST",
                    headers=dict(bearer, **{"Content-Type": "application/json"}))
        self.assertEqual((r.status, json.loads(r.body)["error"]["reason"]), (400, "bad_json"))
        conn_body = json.dumps({"path": "/web/" + NAME})
        json_type = dict(bearer, **{"Content-Type": "application/json"})
        r = self.post(gw, "prefetch", conn_body, json_type)
        self.assertEqual((r.status, json.loads(r.body)["path"]), (202, "/web/" + NAME))
        r = self.post(gw, "purge", conn_body, json_type)
        self.assertEqual(r.status, 200)
        # A forged cross-site form post is refused before anything else.
        r = self.post(gw, "purge", conn_body, dict(bearer, **{"Content-Type": "text/plain",
                                                                "Origin": "http://evil.example"}))
        self.assertEqual((r.status, json.loads(r.body)["error"]["reason"]), (403, "cross_site_request"))

        # The access log and /-/metrics count admin routes like any other.
        lines = gw.wait_access(11)
        api = [l for l in lines if l["path"].startswith("/-/")]
        self.assertEqual([(l["path"], l["status"], l["reason"]) for l in api[:3]],
                         [("/-/status", "401", "admin_auth"), ("/-/status", "200", "-"),
                          ("/-/status", "401", "admin_auth")])
        self.assertIn(("/-/api/v1/purge", "200", "-"), [(l["path"], l["status"], l["reason"]) for l in api])
        m = gw.get("/-/metrics", headers=bearer).body.decode()
        self.assertEqual(metric(m, 'slipstream_request_failures_total{reason="admin_auth"}'), 3)
        self.assertEqual(metric(m, 'slipstream_request_failures_total{reason="cross_site_request"}'), 1)
        self.assertGreaterEqual(metric(m, 'slipstream_requests_total{status="200"}'), 2)

    def post(self, gw, route, body, headers):
        c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
        try:
            c.request("POST", "/-/api/v1/" + route, body=body, headers=headers)
            r = c.getresponse()
            return Response(r.status, r.getheaders(), r.read(), r.reason)
        finally:
            c.close()
