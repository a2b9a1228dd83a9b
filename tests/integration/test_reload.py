"""Issue 12, item 3: SIGHUP reload that keeps transfers, on the running
gateway against real nginx origins (and the strict fake of the Open API).

* While a 64 MiB download runs slowly, SIGHUP with a file that adds a mount
  and changes a header: the running download completes byte-exact and
  every one of its origin requests carries the old header; the new mount
  serves; new requests carry the new header (nginx's log).
* SIGHUP with a broken file: every error is logged as
  `file:line: [section] key: what is wrong`, the process lives, the old
  configuration still serves; `slipstream reload` reports the outcome.
* A removed mount's running transfer finishes byte-exact; the mount is
  gone for new requests.
* Listen addresses that appear are opened, those that go are closed; keys
  that need a restart are named and keep their running values.
* An account's rotated refresh token survives a reload that rebuilds the
  account; a new token in the INI is taken.
"""

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time

from fake_aliyun import FakeAliyun
from harness import (BIN, GatewayTest, free_port, random_bytes, request, sha256, sha256_file, wait_until,
                     with_test_workers, write_file)

MiB = 1024 * 1024
TOKEN = "reload-test-token-0123456789"


def metric(text, name):
    m = re.search(r"(?m)^%s (\d+)$" % re.escape(name), text)
    return int(m.group(1)) if m else 0


class ReloadTest(GatewayTest):
    def write_ini(self, gw, ini):
        """Rewrites the running gateway's file the way the fixture wrote it."""
        text = ini.replace("@CACHE@", gw.cache_dir)
        if "[server]" not in text:
            text = "[server]\n" + text
        text = text.replace("[server]", "[server]\nlisten = 127.0.0.1:0\naccess_log = %s\n" % gw.access_log, 1)
        text = with_test_workers(text)
        with open(gw.ini, "w") as f:
            f.write(text)
        return text

    def reload(self, gw):
        """SIGHUP, then waits for its outcome in the error log; returns that line."""
        before = gw.errors().count("event=reloading")
        gw.signal(signal.SIGHUP)
        wait_until(lambda: gw.errors().count("event=reloading") > before, 10, what="the reload to start")

        def outcome():
            tail = gw.errors().split("event=reloading")[before + 1]
            m = re.search(r".*event=(reloaded|reload_failed).*", tail)
            return m.group(0) if m else None
        return wait_until(outcome, 10, what="the reload's outcome")

    def stats(self, gw):
        r = gw.get("/-/api/v1/stats", headers={"Authorization": "Bearer " + TOKEN})
        self.assertEqual(r.status, 200)
        return json.loads(r.body)

    def base(self, origin, header, extra_mounts="", server="", cache="block_size = 1M\n"):
        return ("[server]\nadmin_token = %s\n%s\n"
                "[cache]\ndir = @CACHE@\nmax_size = 1G\nmin_free = 0\n%s\n"
                "[mount web]\nsource = http\nbase_url = %s\ndelivery = proxy\nconnections = 2\n"
                "header = User-Agent: %s\n\n%s" % (TOKEN, server, cache, origin.url("/"), header, extra_mounts))

    # ------------------------------------------------------------------ the main case

    def test_reload_during_a_slow_64_mib_download(self):
        web = os.path.join(self.tmp, "web")
        big = random_bytes(64 * MiB, seed=51)
        small = random_bytes(300 * 1024, seed=52)
        write_file(os.path.join(web, "big.bin"), big)
        write_file(os.path.join(web, "small.bin"), small)
        write_file(os.path.join(web, "more/extra.bin"), small[:1000])
        origin = self.nginx(web, picky=False, limit_rate="3m")
        gw = self.gateway(self.base(origin, "SlipOld/1"))
        out = os.path.join(self.tmp, "big.out")
        proc = subprocess.Popen(["curl", "-sS", "--limit-rate", "6M", "-o", out, gw.url("/d/web/big.bin")],
                                stderr=subprocess.PIPE)
        self._fixtures.append(lambda: proc.poll() is None and proc.kill())
        wait_until(lambda: os.path.exists(out) and os.path.getsize(out) > 4 * MiB, 30, what="the download to run")

        self.write_ini(gw, self.base(origin, "SlipNew/2", extra_mounts=(
            "[mount more]\nsource = http\nbase_url = %s\ndelivery = proxy\nprefix = /extra\n" % origin.url("/more/"))))
        line = self.reload(gw)
        self.assertIn("event=reloaded", line)
        self.assertIn("added=more", line)
        self.assertIn("changed=web", line)
        self.assertIsNone(proc.poll(), "the download must still be running after the reload")
        # New requests: the new mount serves; the changed header reaches the origin.
        r = gw.get("/d/extra/extra.bin")
        self.assertEqual((r.status, r.body), (200, small[:1000]))
        r = gw.get("/d/web/small.bin")
        self.assertEqual((r.status, sha256(r.body)), (200, sha256(small)))

        self.assertEqual(proc.wait(180), 0, proc.stderr.read())
        self.assertEqual(sha256_file(out), sha256(big))
        entries = origin.entries()
        big_reqs = [e for e in entries if e["uri"] == "/big.bin"]
        self.assertGreater(len(big_reqs), 10)
        self.assertEqual({e["ua"] for e in big_reqs}, {"SlipOld/1"}, "the running download kept its settings")
        self.assertEqual({e["ua"] for e in entries if e["uri"] == "/small.bin"}, {"SlipNew/2"})
        self.assertEqual(len([e for e in entries if e["uri"] == "/more/extra.bin"]), 1)  # the fused probe: its first block
        # The reload started after the download and ended before it: both
        # had origin requests on either side of it.
        st = self.stats(gw)
        self.assertEqual((st["config"]["reloads"], st["config"]["last_reload"]["ok"]), (1, True))
        m = gw.get("/-/metrics", headers={"Authorization": "Bearer " + TOKEN}).body.decode()
        self.assertEqual(metric(m, 'slipstream_config_reloads_total{result="ok"}'), 1)

    # ------------------------------------------------------------------ a broken file

    def test_a_broken_file_is_refused_with_file_line_errors_and_the_old_one_serves(self):
        web = os.path.join(self.tmp, "web")
        data = random_bytes(200 * 1024, seed=53)
        write_file(os.path.join(web, "a.bin"), data)
        origin = self.nginx(web, picky=False)
        gw = self.gateway(self.base(origin, "SlipOld/1"))
        text = self.write_ini(gw, self.base(origin, "SlipNew/2", extra_mounts=(
            "[mount bad]\nsource = http\nbse_url = http://127.0.0.1:1/\nconnections = lots\n")))
        lines = text.split("\n")
        bse = lines.index("bse_url = http://127.0.0.1:1/") + 1
        conns = lines.index("connections = lots") + 1
        line = self.reload(gw)
        self.assertIn("event=reload_failed", line)
        self.assertIn("action=kept_running_configuration", line)
        log = gw.errors()
        ini = gw.ini
        self.assertIn('error="%s:%d: [mount bad] bse_url: unknown key' % (ini, bse), log)
        self.assertIn('error="%s:%d: [mount bad] connections:' % (ini, conns), log)
        self.assertRegex(log, r'error="%s:\d+: \[mount bad\] base_url: ' % re.escape(ini))  # required, missing
        self.assertIsNone(gw.proc.poll(), "the gateway must live")
        # The old configuration still serves, with the old header.
        origin.clear_log()
        r = gw.get("/d/web/a.bin")
        self.assertEqual((r.status, sha256(r.body)), (200, sha256(data)))
        self.assertEqual({e["ua"] for e in origin.entries()}, {"SlipOld/1"})
        self.assertEqual(gw.get("/d/bad/x").status, 404)
        st = self.stats(gw)
        self.assertFalse(st["config"]["last_reload"]["ok"])
        self.assertTrue(any("bse_url" in e for e in st["config"]["last_reload"]["errors"]))
        # `slipstream reload` checks the file itself first: nothing is sent.
        c = subprocess.run([BIN, "reload", "-c", gw.ini], capture_output=True, timeout=60)
        self.assertEqual(c.returncode, 2)
        self.assertIn("%s:%d: [mount bad] bse_url" % (gw.ini, bse), c.stderr.decode())
        self.assertEqual(gw.errors().count("event=reloading"), 1)
        # Fixed: `slipstream reload` signals the gateway and reports it took the file.
        self.write_ini(gw, self.base(origin, "SlipNew/2"))
        c = subprocess.run([BIN, "reload", "-c", gw.ini, "--url", "http://127.0.0.1:%d" % gw.port],
                           capture_output=True, timeout=60)
        self.assertEqual(c.returncode, 0, c.stderr)
        self.assertIn("reloaded %s" % os.path.realpath(gw.ini), c.stdout.decode())
        origin.clear_log()
        self.assertEqual(gw.get("/d/web/a.bin", headers={"Range": "bytes=0-9"}).status, 206)
        # (a HIT needs no origin request; a MISS would carry the new header)
        self.assertTrue(all(e["ua"] == "SlipNew/2" for e in origin.entries()))
        m = gw.get("/-/metrics", headers={"Authorization": "Bearer " + TOKEN}).body.decode()
        self.assertEqual(metric(m, 'slipstream_config_reloads_total{result="failed"}'), 1)
        self.assertEqual(metric(m, 'slipstream_config_reloads_total{result="ok"}'), 1)

    # ------------------------------------------------------------------ a removed mount

    def test_a_removed_mounts_running_transfer_finishes(self):
        web = os.path.join(self.tmp, "web")
        film = random_bytes(24 * MiB, seed=54)
        write_file(os.path.join(web, "film.bin"), film)
        origin = self.nginx(web, picky=False, limit_rate="2m")
        gone = "[mount gone]\nsource = http\nbase_url = %s\ndelivery = proxy\nconnections = 2\n" % origin.url("/")
        gw = self.gateway(self.base(origin, "SlipOld/1", extra_mounts=gone))
        out = os.path.join(self.tmp, "film.out")
        proc = subprocess.Popen(["curl", "-sS", "-o", out, gw.url("/d/gone/film.bin")], stderr=subprocess.PIPE)
        self._fixtures.append(lambda: proc.poll() is None and proc.kill())
        wait_until(lambda: os.path.exists(out) and os.path.getsize(out) > 2 * MiB, 30, what="the download to run")
        self.write_ini(gw, self.base(origin, "SlipOld/1"))
        line = self.reload(gw)
        self.assertIn("removed=gone", line)
        self.assertIsNone(proc.poll())
        self.assertEqual(gw.get("/d/gone/film.bin").status, 404)  # gone for new requests
        self.assertEqual(proc.wait(120), 0, proc.stderr.read())
        self.assertEqual(sha256_file(out), sha256(film))
        # Its cached blocks stay (a mount added back under the name finds them).
        self.write_ini(gw, self.base(origin, "SlipOld/1", extra_mounts=gone))
        self.assertIn("added=gone", self.reload(gw))
        origin.clear_log()
        wait_until(lambda: gw.get("/d/gone/film.bin", headers={"Range": "bytes=0-99"}).header("X-Cache") == "HIT",
                   20, what="the stored blocks")

    # ------------------------------------------------------------------ listeners, restart keys

    def test_listen_addresses_open_and_close_and_restart_keys_are_named(self):
        web = os.path.join(self.tmp, "web")
        write_file(os.path.join(web, "a.bin"), b"x" * 1000)
        origin = self.nginx(web, picky=False)
        gw = self.gateway(self.base(origin, "SlipOld/1"))
        port = free_port()
        extra = "listen = 127.0.0.1:%d\n" % port
        self.write_ini(gw, self.base(origin, "SlipOld/1", server=extra, cache="block_size = 4M\n"))
        line = self.reload(gw)
        self.assertIn("event=reloaded", line)
        self.assertIn("event=listening address=127.0.0.1:%d" % port, gw.errors())
        self.assertIn('event=reload_needs_restart keys="[cache] block_size"', gw.errors())
        self.assertEqual(request(port, "/d/web/a.bin").body, b"x" * 1000)
        self.assertEqual(gw.get("/d/web/a.bin").status, 200)  # the first address stays
        st = self.stats(gw)
        self.assertEqual(st["config"]["last_reload"]["needs_restart"], ["[cache] block_size"])
        # The running block size still applies (1 MiB blocks: 1 block).
        gw.wait_idle(30)  # the object is committed behind the client
        objs = json.loads(gw.get("/-/api/v1/objects", headers={"Authorization": "Bearer " + TOKEN}).body)
        self.assertEqual(objs["objects"][0]["blocks"]["block_size"], MiB)
        # The address goes away again.
        self.write_ini(gw, self.base(origin, "SlipOld/1"))
        self.assertIn("event=reloaded", self.reload(gw))
        self.assertIn("event=listening_stopped address=127.0.0.1:%d" % port, gw.errors())
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        self.assertEqual(gw.get("/d/web/a.bin").status, 200)
        # A port another process holds fails the reload and changes nothing.
        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        self._fixtures.append(holder.close)
        busy = holder.getsockname()[1]
        self.write_ini(gw, self.base(origin, "SlipNew/2", server="listen = 127.0.0.1:%d\n" % busy))
        line = self.reload(gw)
        self.assertIn("event=reload_failed", line)
        origin.clear_log()
        gw.get("/d/web/a.bin", headers={"Range": "bytes=0-0"})
        self.assertNotIn("SlipNew/2", {e["ua"] for e in origin.entries()})

    # ------------------------------------------------------------------ accounts

    def test_a_rotated_refresh_token_survives_a_reload_that_rebuilds_the_account(self):
        fake = FakeAliyun(os.path.join(self.tmp, "fake"), access_ttl=1.0, url_life=30.0)
        self._fixtures.append(fake.stop)
        files = {i: random_bytes(50 * 1024, seed=60 + i) for i in range(3)}
        for i, data in files.items():
            fake.add_file("/f%d.bin" % i, data)
        state = os.path.join(self.tmp, "state")

        def ini(token, interval):
            return ("[server]\nadmin_token = %s\nstate_dir = %s\n"
                    "[cache]\ndir = @CACHE@\nmin_free = 0\nmax_size = 1G\n"
                    "[account ali]\nrefresh_token = %s\nclient_id = cid\nclient_secret = csecret\n"
                    "api_url = %s\nlist_interval = %s\n"
                    "[mount films]\nsource = aliyundrive_open\naccount = ali\ndelivery = proxy\n"
                    % (TOKEN, state, token, fake.api_url, interval))
        gw = self.gateway(ini(fake.initial_refresh_token, "250ms"))
        self.assertEqual(gw.get("/d/films/f0.bin").body, files[0])
        self.assertEqual(fake.presented, [fake.initial_refresh_token])
        # Another list_interval: a new account object; the INI's token is
        # the one it was given at start, so the saved (rotated) one is used.
        self.write_ini(gw, ini(fake.initial_refresh_token, "300ms"))
        self.assertIn("changed=films", self.reload(gw))
        time.sleep(1.1)  # the access token expires: the next call exchanges
        self.assertEqual(gw.get("/d/films/f1.bin").body, files[1])
        self.assertEqual(len(fake.presented), 2)
        self.assertNotEqual(fake.presented[1], fake.initial_refresh_token, "the consumed INI token came back")
        # A new token in the INI (the user authorised again) is taken.
        fresh = fake.revoke()
        self.write_ini(gw, ini(fresh, "300ms"))
        self.assertIn("event=reloaded", self.reload(gw))
        time.sleep(1.1)
        self.assertEqual(gw.get("/d/films/f2.bin").body, files[2])
        self.assertEqual(fake.presented[-1], fresh)
        st = fake.stats()
        self.assertEqual(st["reused_tokens"], [])
        self.assertEqual(st["invalid_tokens"], 0)
