"""Issue 12, items 2 (prefetch and purge through the fill) on the running
gateway, against real nginx origins.

* POST prefetch of a cold file: the job's progress reaches 100 %, then a
  download is X-Cache: HIT and the origin sees no request at all;
  `slipstream prefetch` follows a job with a progress bar.
* DELETE prefetch/ID stops it: the origin's log stops growing (pieces in
  flight may finish) long before the file's end.
* A prefetch yields to a playing client on the same account/pool: the
  client's block goes first (a running prefetch piece is preempted, the
  fill counts it, and the origin sees the client's request start before
  the prefetch's next one).
* Purge: the next download is a MISS and byte-exact; a folder purge drops
  every file in it; `slipstream purge`; a purge while a slow reader reads
  never gives it wrong bytes (the right bytes, or a connection that closes
  short).
* A forged cross-site POST (form content type, foreign Origin) is refused
  and starts nothing.
"""

import http.client
import json
import os
import re
import socket
import subprocess
import time

from harness import BIN, GatewayTest, random_bytes, request, sha256, wait_until, write_file

MiB = 1024 * 1024
TOKEN = "prefetch-test-token-0123456789"
JSON = {"Content-Type": "application/json", "Authorization": "Bearer " + TOKEN}


def metric(text, name):
    m = re.search(r"(?m)^%s (\d+)$" % re.escape(name), text)
    return int(m.group(1)) if m else 0


class PrefetchPurgeTest(GatewayTest):
    def setUp(self):
        super().setUp()
        self.web = os.path.join(self.tmp, "web")
        self.files = {}

    def put(self, name, size, seed):
        data = random_bytes(size, seed=seed)
        write_file(os.path.join(self.web, name), data)
        self.files[name] = data
        return data

    def start(self, origin, mount_extra="", server=""):
        self.gw = self.gateway(
            "[server]\nadmin_token = %s\n%s\n"
            "[cache]\ndir = @CACHE@\nblock_size = 1M\nmax_size = 1G\nmin_free = 0\n"
            "[mount web]\nsource = http\nbase_url = %s\ndelivery = proxy\n%s\n"
            % (TOKEN, server, origin.url("/"), mount_extra))
        return self.gw

    def api(self, method, route, body=None, headers=None):
        c = http.client.HTTPConnection("127.0.0.1", self.gw.port, timeout=30)
        try:
            c.request(method, "/-/api/v1/" + route, body=None if body is None else json.dumps(body),
                      headers=headers or JSON)
            r = c.getresponse()
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
        finally:
            c.close()

    def metrics(self):
        return self.gw.get("/-/metrics", headers={"Authorization": "Bearer " + TOKEN}).body.decode()

    def wait_job(self, jid, states, timeout=60):
        def done():
            status, j = self.api("GET", "prefetch/" + jid)
            self.assertEqual(status, 200)
            return j if j["state"] in states else None
        return wait_until(done, timeout, interval=0.1, what="prefetch %s to be %s" % (jid, states))

    def cli_ini(self):
        path = os.path.join(self.tmp, "cli.ini")
        with open(path, "w") as f:
            f.write("[server]\nlisten = 127.0.0.1:%d\nadmin_token = %s\n" % (self.gw.port, TOKEN))
        return path

    # ------------------------------------------------------------------ prefetch

    def test_prefetch_of_a_cold_file_then_a_hit_with_no_origin_request(self):
        film = self.put("film.mkv", 6 * MiB + 3, 31)
        self.put("other.mkv", 3 * MiB + 1, 32)
        origin = self.nginx(self.web, picky=False)
        gw = self.start(origin, "connections = 4\n")
        status, job = self.api("POST", "prefetch", {"path": "/web/film.mkv"})
        self.assertEqual(status, 202, job)
        self.assertEqual((job["path"], job["error"]), ("/web/film.mkv", None))
        self.assertIn(job["state"], ("queued", "running", "done"))
        # A second POST for the same path while it runs joins it.
        status, again = self.api("POST", "prefetch", {"path": "/web/film.mkv"})
        self.assertEqual(status, 202)
        if again["state"] != "done":
            self.assertEqual(again["id"], job["id"])
        done = self.wait_job(job["id"], ("done", "failed"))
        self.assertEqual(done["state"], "done", done)
        self.assertEqual((done["bytes_done"], done["bytes_total"]), (len(film), len(film)))
        self.assertIsNotNone(done["finished_at"])
        status, listed = self.api("GET", "prefetch")
        self.assertIn(job["id"], [j["id"] for j in listed["prefetches"]])
        # Every block stored: a download is a HIT that never reaches the origin.
        before = len(origin.entries())
        self.assertGreater(before, 0)
        origin.clear_log()
        r = gw.get("/d/web/film.mkv")
        self.assertEqual((r.status, r.header("X-Cache")), (200, "HIT"))
        self.assertEqual(sha256(r.body), sha256(film))
        self.assertEqual(origin.entries(), [])
        # The command line follows a job with a progress bar until it is done.
        p = subprocess.run([BIN, "prefetch", "/web/other.mkv", "-c", self.cli_ini()], capture_output=True,
                           timeout=120)
        out = p.stdout.decode()
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("started for /web/other.mkv", out)
        self.assertRegex(out, r"\[#+\] +100 %")
        r = gw.get("/d/web/other.mkv")
        self.assertEqual((r.status, r.header("X-Cache")), (200, "HIT"))
        # Refusals: unknown mount, a folder, not JSON.
        status, err = self.api("POST", "prefetch", {"path": "/nowhere/x.mkv"})
        self.assertEqual((status, err["error"]["reason"]), (404, "unknown_mount"))
        status, err = self.api("GET", "prefetch/p999")
        self.assertEqual((status, err["error"]["reason"]), (404, "not_found"))

    def test_delete_stops_a_prefetch_and_the_origin_log_stops_growing(self):
        self.put("big.mkv", 48 * MiB, 33)
        origin = self.nginx(self.web, picky=False, limit_rate="256k")
        self.start(origin, "connections = 2\n")
        status, job = self.api("POST", "prefetch", {"path": "/web/big.mkv"})
        self.assertEqual(status, 202)
        wait_until(lambda: metric(self.metrics(), "slipstream_upstream_transfers") >= 2, 20,
                   what="the prefetch's transfers")
        status, cancelled = self.api("DELETE", "prefetch/" + job["id"])
        self.assertEqual((status, cancelled["state"]), (200, "cancelled"))
        # Pieces in flight may finish; then nothing more is asked.
        wait_until(lambda: metric(self.metrics(), "slipstream_upstream_transfers") == 0, 30,
                   what="the transfers in flight to end")
        sent = origin.body_bytes()
        n = len(origin.entries())
        time.sleep(1.5)
        self.assertEqual((origin.body_bytes(), len(origin.entries())), (sent, n))
        self.assertLess(sent, 8 * MiB)  # far from the file's 48 MiB
        status, j = self.api("GET", "prefetch/" + job["id"])
        self.assertEqual(j["state"], "cancelled")
        self.assertLess(j["bytes_done"], j["bytes_total"])
        # Cancelling an ended job says how it ended.
        status, again = self.api("DELETE", "prefetch/" + job["id"])
        self.assertEqual((status, again["state"]), (200, "cancelled"))

    def test_a_prefetch_yields_to_a_playing_client(self):
        self.put("season.mkv", 64 * MiB, 34)
        film = self.put("film.mkv", 2 * MiB, 35)
        origin = self.nginx(self.web, picky=False, limit_rate="200k")
        # One pool of two connections for the mount: the prefetch fills it.
        self.start(origin, "connections = 2\nmax_connections = 2\n")
        status, job = self.api("POST", "prefetch", {"path": "/web/season.mkv"})
        self.assertEqual(status, 202)
        wait_until(lambda: metric(self.metrics(), "slipstream_upstream_transfers") >= 2, 20,
                   what="the prefetch to take both connections")
        asked = time.time()
        r = self.gw.get("/d/web/film.mkv", headers={"Range": "bytes=0-65535"})
        self.assertEqual(r.status, 206)
        self.assertEqual(r.body, film[:65536])
        self.assertGreaterEqual(metric(self.metrics(), "slipstream_fill_preemptions_total"), 1)
        entries = origin.entries(settle=0.5)
        film_starts = [e["start"] for e in entries if e["uri"] == "/film.mkv"]
        self.assertTrue(film_starts, entries)
        # The slot went to the client: no prefetch request started between
        # the client's ask and its own first origin request.
        season_after = [e["start"] for e in entries if e["uri"] == "/season.mkv" and e["start"] > asked]
        self.assertTrue(all(s >= min(film_starts) for s in season_after), (film_starts, season_after))
        # The prefetch goes on afterwards.
        status, j = self.api("GET", "prefetch/" + job["id"])
        self.assertIn(j["state"], ("running", "done"))
        self.api("DELETE", "prefetch/" + job["id"])

    # ------------------------------------------------------------------ purge

    def test_purge_then_the_next_download_is_a_miss_and_byte_exact(self):
        film = self.put("dir/film.mkv", 3 * MiB + 7, 36)
        other = self.put("dir/other.mkv", MiB + 7, 37)
        keep = self.put("keep.mkv", MiB, 38)
        origin = self.nginx(self.web, picky=False)
        gw = self.start(origin)
        for name, data in (("dir/film.mkv", film), ("dir/other.mkv", other), ("keep.mkv", keep)):
            r = gw.get("/d/web/" + name)
            self.assertEqual((r.status, r.header("X-Cache"), sha256(r.body)), (200, "MISS", sha256(data)))
        wait_until(lambda: gw.get("/d/web/dir/film.mkv").header("X-Cache") == "HIT", 20, what="stored")
        status, res = self.api("POST", "purge", {"path": "/web/dir/film.mkv"})
        self.assertEqual(status, 200, res)
        self.assertEqual(res["count"], 1)
        p = res["purged"][0]
        self.assertEqual((p["mount"], p["path"], p["virtual_path"], p["size"]),
                         ("web", "/dir/film.mkv", "/web/dir/film.mkv", len(film)))
        self.assertEqual(p["bytes"], len(film))
        origin.clear_log()
        r = gw.get("/d/web/dir/film.mkv")
        self.assertEqual((r.status, r.header("X-Cache")), (200, "MISS"))
        self.assertEqual(sha256(r.body), sha256(film))
        self.assertGreaterEqual(origin.body_bytes("/dir/film.mkv"), len(film))
        # The command line, a folder: every file in it, nothing beside it.
        wait_until(lambda: gw.get("/d/web/dir/film.mkv").header("X-Cache") == "HIT", 20, what="stored again")
        c = subprocess.run([BIN, "purge", "--prefix", "/web/dir", "-c", self.cli_ini()], capture_output=True,
                           timeout=60)
        self.assertEqual(c.returncode, 0, c.stderr)
        out = c.stdout.decode()
        self.assertIn("purged /web/dir/film.mkv", out)
        self.assertIn("purged /web/dir/other.mkv", out)
        self.assertIn("2 objects", out)
        self.assertNotIn("keep.mkv", out)
        self.assertEqual(gw.get("/d/web/keep.mkv").header("X-Cache"), "HIT")
        self.assertEqual(gw.get("/d/web/dir/other.mkv").header("X-Cache"), "MISS")
        # Nothing cached there: an empty answer, not an error.
        status, res = self.api("POST", "purge", {"prefix": "/web/nothing"})
        self.assertEqual((status, res["count"]), (200, 0))
        status, res = self.api("POST", "purge", {"path": "/elsewhere/x"})
        self.assertEqual((status, res["error"]["reason"]), (404, "unknown_mount"))

    def test_purge_while_a_slow_reader_reads_never_gives_wrong_bytes(self):
        film = self.put("film.mkv", 24 * MiB, 39)
        origin = self.nginx(self.web, picky=False, limit_rate="1m")
        gw = self.start(origin, "connections = 2\n")
        s = socket.create_connection(("127.0.0.1", gw.port), timeout=30)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        s.sendall(b"GET /d/web/film.mkv HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        while b"\r\n\r\n" not in got:
            got += s.recv(65536)
        head, body = got.split(b"\r\n\r\n", 1)
        length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
        self.assertEqual(length, len(film))
        while len(body) < 2 * MiB:  # reading slowly
            body += s.recv(16384)
            time.sleep(0.005)
        status, res = self.api("POST", "purge", {"path": "/web/film.mkv"})
        self.assertEqual(status, 200)
        self.assertEqual(res["count"], 1)
        self.assertTrue(res["purged"][0]["in_use"])
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                body += chunk
        except (ConnectionResetError, socket.timeout):
            pass
        s.close()
        # The right bytes as far as they go: all of them, or a short body
        # whose connection closed (never bytes of something else).
        self.assertLessEqual(len(body), len(film))
        self.assertEqual(body, film[:len(body)])
        lines = wait_until(lambda: [l for l in gw.access() if l["path"] == "/d/web/film.mkv"], 10,
                           what="the reader's access-log line")
        if len(body) < len(film):
            self.assertEqual(lines[0]["reason"], "purged")
        # And the gateway serves the file afresh.
        r = gw.get("/d/web/film.mkv")
        self.assertEqual((r.status, sha256(r.body)), (200, sha256(film)))

    # ------------------------------------------------------------------ cross-site

    def test_a_forged_cross_site_post_is_refused_and_starts_nothing(self):
        self.put("film.mkv", MiB, 40)
        origin = self.nginx(self.web, picky=False)
        gw = self.start(origin)
        self.assertEqual(gw.get("/d/web/film.mkv").status, 200)
        auth = {"Authorization": "Bearer " + TOKEN}
        form = dict(auth, **{"Content-Type": "application/x-www-form-urlencoded",
                              "Origin": "http://evil.example"})
        for route, body in (("prefetch", {"path": "/web/film.mkv"}), ("purge", {"path": "/web/film.mkv"})):
            status, err = self.api("POST", route, body, form)
            self.assertEqual((status, err["error"]["reason"]), (403, "cross_site_request"), route)
        # A JSON type from a foreign page is refused by its Origin too.
        status, err = self.api("POST", "purge", {"path": "/web/film.mkv"},
                               dict(JSON, Origin="http://evil.example"))
        self.assertEqual((status, err["error"]["reason"]), (403, "cross_site_request"))
        status, listed = self.api("GET", "prefetch")
        self.assertEqual(listed["prefetches"], [])
        wait_until(lambda: gw.get("/d/web/film.mkv").header("X-Cache") == "HIT", 20, what="still cached")
