"""Issue 12, item 2 (client side): `slipstream status | prefetch | purge`
talking HTTP to the admin API.

A fake API (canned JSON in the documented schema, tests/integration/data/)
stands in, listening where the configuration's `listen` says, so the test
also checks that the CLI finds the gateway and sends the admin token from
the same file, and the headers the API's cross-site guard requires; it also
answers prefetch and purge, which the gateway serves only with the fill
scheduler. `slipstream status` against the running gateway is in
tests/integration/test_status_live.py.
"""

import http.server
import json
import os
import subprocess
import tempfile
import threading
import unittest

from harness import BIN, ROOT

DATA = os.path.join(ROOT, "tests", "integration", "data")


class FakeApi:
    def __init__(self):
        self.requests = []
        self.polls = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def reply(self, status, obj):
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def record(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n).decode() if n else ""
                outer.requests.append({"method": self.command, "path": self.path,
                                       "headers": dict(self.headers), "body": body})
                return json.loads(body) if body else None

            def do_GET(self):
                self.record()
                name = self.path.rsplit("/", 1)[-1]
                if self.path == "/-/api/v1/prefetch/p7":
                    outer.polls += 1
                    done = outer.polls >= 2
                    return self.reply(200, job("running" if not done else "done",
                                               1000 if done else 500))
                path = os.path.join(DATA, "api_v1_%s.json" % name)
                if self.path.startswith("/-/api/v1/") and os.path.exists(path):
                    with open(path) as f:
                        return self.reply(200, json.load(f))
                self.reply(404, error("unknown_route", 404, "no such route"))

            def do_POST(self):
                body = self.record()
                if self.path == "/-/api/v1/prefetch":
                    if not body["path"].startswith("/movies/"):
                        return self.reply(404, error("unknown_mount", 404,
                                                     "no mount serves " + body["path"]))
                    return self.reply(202, job("queued", 0))
                if self.path == "/-/api/v1/purge":
                    key = "prefix" if "prefix" in body else "path"
                    return self.reply(200, {"purged": [
                        {"mount": "movies", "path": "/a.mkv", "virtual_path": "/movies/a.mkv",
                         "size": 3145728, "bytes": 2097152, "in_use": key == "path"}],
                        "count": 1, "bytes": 2097152})
                self.reply(404, error("unknown_route", 404, "no such route"))

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def job(state, done):
    return {"id": "p7", "path": "/movies/a.mkv", "state": state, "bytes_done": done,
            "bytes_total": 1000, "speed_bps": 1000.0, "created_at": 1700000000,
            "finished_at": 1700000002 if state == "done" else None, "error": None}


def error(reason, status, detail):
    return {"error": {"reason": reason, "status": status, "message": reason, "detail": detail}}


class AdminCliTest(unittest.TestCase):
    def setUp(self):
        self.api = FakeApi()
        self.addCleanup(self.api.stop)
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        self.ini = os.path.join(self.tmp.name, "gw.ini")
        with open(self.ini, "w") as f:
            f.write("[server]\nlisten = 127.0.0.1:%d\nadmin_token = tok-123\n" % self.api.port)

    def cli(self, *args):
        env = dict(os.environ, COLUMNS="60")
        return subprocess.run([BIN] + list(args) + ["-c", self.ini], capture_output=True,
                              text=True, timeout=60, env=env)

    def test_status_prints_the_summary(self):
        r = self.cli("status")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("slipstream 0.1.0 · up 1h 1m", r.stdout)
        self.assertIn("transfers (2)\n  Big Buck Bunny (2008).mkv\n", r.stdout)
        self.assertIn("    [############>>>>........................]\n", r.stdout)
        self.assertIn("    [###################............................]  42 %\n", r.stdout)
        paths = [q["path"] for q in self.api.requests]
        self.assertEqual(paths, ["/-/api/v1/stats", "/-/api/v1/transfers", "/-/api/v1/prefetch"])
        for q in self.api.requests:
            self.assertEqual(q["headers"].get("Authorization"), "Bearer tok-123")

    def test_prefetch_follows_progress_to_done(self):
        r = self.cli("prefetch", "/movies/a.mkv")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("prefetch p7 started for /movies/a.mkv\n", r.stdout)
        self.assertIn(" 50 %", r.stdout)
        self.assertTrue(r.stdout.rstrip().endswith("100 % 1.0 KB/s done"), r.stdout)
        post = self.api.requests[0]
        self.assertEqual((post["method"], post["path"]), ("POST", "/-/api/v1/prefetch"))
        self.assertEqual(json.loads(post["body"]), {"path": "/movies/a.mkv"})
        self.assertEqual(post["headers"].get("Content-Type"), "application/json")
        self.assertEqual(post["headers"].get("X-Slipstream"), "1")
        self.assertEqual(post["headers"].get("Authorization"), "Bearer tok-123")
        self.assertEqual([q["path"] for q in self.api.requests[1:]], ["/-/api/v1/prefetch/p7"] * 2)

    def test_prefetch_without_waiting_and_errors(self):
        r = self.cli("prefetch", "/movies/a.mkv", "--wait", "no")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(len(self.api.requests), 1)
        r = self.cli("prefetch", "/tv/x.mkv")
        self.assertEqual(r.returncode, 1)
        self.assertEqual(r.stderr, "slipstream prefetch: 404 unknown_mount: no mount serves /tv/x.mkv\n")
        r = self.cli("prefetch", "movies/a.mkv")
        self.assertEqual(r.returncode, 2)
        self.assertEqual(len(self.api.requests), 2)

    def test_purge_a_file_or_a_folder(self):
        r = self.cli("purge", "/movies/a.mkv")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, "purged /movies/a.mkv (2.0 MiB stored, a reader finishes from "
                                   "what it has)\n1 object, 2.0 MiB dropped\n")
        self.assertEqual(json.loads(self.api.requests[-1]["body"]), {"path": "/movies/a.mkv"})
        r = self.cli("purge", "--prefix", "/movies/series")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(self.api.requests[-1]["body"]), {"prefix": "/movies/series"})
        self.assertEqual(self.cli("purge").returncode, 2)

    def test_gateway_not_running(self):
        self.api.stop()
        r = self.cli("status")
        self.assertEqual(r.returncode, 1)
        self.assertTrue(r.stderr.startswith("slipstream status: cannot reach the gateway: "),
                        r.stderr)


if __name__ == "__main__":
    unittest.main()
