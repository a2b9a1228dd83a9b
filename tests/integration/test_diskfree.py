"""Cold fills that never wait for the disk (issue 14).

The slow cache disk is the store's test hook `[cache] test_disk_rate` (the
disk thread takes size/rate seconds per write; refused unless the gateway's
environment has SLIPSTREAM_TEST_HOOKS=1). The bench's loop device with a
cgroup write throttle needs root, a free loop device and the cgroup's block
throttle, and it throttles every writer of that device (the kernel's
writeback too) — not something the parallel suite can count on.

Everything asserted is bytes, counters and the origin's log; nothing is
timed: the disk is slowed so far (1 MiB/s against a loopback origin) that
the download outruns it on any machine.
"""

import json
import os
import http.client

from harness import GatewayTest, random_bytes, sha256, write_file

KiB = 1024
MiB = 1024 * 1024
BS = 256 * KiB


def parse_range(header, size):
    a, _, b = header[len("bytes="):].partition("-")
    return int(a), (int(b) + 1 if b else size)


class DiskFree(GatewayTest):
    def setUp(self):
        super().setUp()
        self._hooks = os.environ.get("SLIPSTREAM_TEST_HOOKS")
        os.environ["SLIPSTREAM_TEST_HOOKS"] = "1"
        self.root = os.path.join(self.tmp, "www")
        os.makedirs(self.root)

    def tearDown(self):
        if self._hooks is None:
            os.environ.pop("SLIPSTREAM_TEST_HOOKS", None)
        else:
            os.environ["SLIPSTREAM_TEST_HOOKS"] = self._hooks
        super().tearDown()

    def start(self, disk_rate="1M", fill_memory="8M"):
        self.origin = self.nginx(self.root, picky=True)
        ini = ("[server]\nlog_level = debug\n[cache]\ndir = @CACHE@\nblock_size = 256K\nmax_size = 1G\n"
               "min_free = 0\nfill_memory = %s\ntest_disk_rate = %s\n%s" % (
                   fill_memory, disk_rate, self.http_mount("m", self.origin.url())))
        self.gw = self.gateway(ini)
        return self.gw

    def stored_states(self, path):
        c = http.client.HTTPConnection("127.0.0.1", self.gw.port, timeout=30)
        try:
            c.request("GET", "/-/api/v1/objects?mount=m")
            r = c.getresponse()
            body = json.loads(r.read())
        finally:
            c.close()
        self.assertEqual(r.status, 200, body)
        for o in body["objects"]:
            if o["path"] == path:
                return o["blocks"]["states"]
        return ""

    def test_slow_disk_cold_download_is_not_held_to_the_disk(self):
        size = 16 * MiB
        data = random_bytes(size, seed=141)
        write_file(os.path.join(self.root, "f.bin"), data)
        gw = self.start()
        r = gw.get("/p/m/f.bin", timeout=120)
        self.assertEqual(r.status, 200)
        self.assertEqual(sha256(r.body), sha256(data), "cold download: wrong bytes")
        m = gw.metrics()
        print("\n    [fig] memory blocks %d, dropped %d, bytes from memory %d of %d"
              % (m["slipstream_fill_memory_blocks_total"], m["slipstream_fill_dropped_blocks_total"],
                 m["slipstream_fill_memory_read_bytes_total"], size), end="")
        # Served from memory as bytes arrived; the disk (1 MiB/s) could not
        # take them all, so some blocks were served and not cached.
        self.assertGreater(m["slipstream_fill_memory_read_bytes_total"], size // 2)
        self.assertGreater(m["slipstream_fill_dropped_blocks_total"], 0)
        dropped = int(m["slipstream_fill_dropped_blocks_total"])
        # The disk catches up; what it got is listed and verifies.
        gw.wait_idle(60)
        first = [e for e in self.origin.entries() if e["uri"] == "/f.bin"]
        self.assertLessEqual(sum(e["bytes"] for e in first), size + 1, "the cold download fetched bytes twice")
        states = self.stored_states("/f.bin")
        self.assertEqual(len(states), size // BS, states)
        missing = [i for i, s in enumerate(states) if s != "S"]
        self.assertEqual(len(missing), dropped, "dropped blocks are exactly the ones not listed: %s" % states)
        v = gw.cli("cache", "verify")
        self.assertEqual(v.returncode, 0, v.stdout.decode() + v.stderr.decode())
        # A later reader: a normal miss that fetches exactly the dropped blocks.
        self.origin.clear_log()
        r = gw.get("/p/m/f.bin", timeout=120)
        self.assertEqual(r.status, 200)
        self.assertEqual(sha256(r.body), sha256(data), "second download: wrong bytes")
        self.assertEqual(r.header("X-Cache"), "PARTIAL")
        gw.wait_idle(60)
        ents = [e for e in self.origin.entries() if e["uri"] == "/f.bin"]
        fetched = set()
        for e in ents:
            self.assertIn(e["status"], (206,), e)
            b, z = parse_range(e["range"], size)
            self.assertEqual(e["bytes"], z - b, e)
            for i in range(b // BS, (z - 1) // BS + 1):
                self.assertNotIn(i, fetched, "block %d fetched twice: %r" % (i, ents))
                fetched.add(i)
        self.assertEqual(sorted(fetched), missing, "the miss fetched other blocks than the dropped ones")
        v = gw.cli("cache", "verify")
        self.assertEqual(v.returncode, 0, v.stdout.decode() + v.stderr.decode())

    def test_fill_memory_zero_waits_for_the_disk_and_drops_nothing(self):
        """The old path, kept for fill_memory = 0: every block is cached."""
        size = 2 * MiB
        data = random_bytes(size, seed=142)
        write_file(os.path.join(self.root, "g.bin"), data)
        gw = self.start(disk_rate="16M", fill_memory="0")
        r = gw.get("/p/m/g.bin", timeout=120)
        self.assertEqual(sha256(r.body), sha256(data))
        m = gw.metrics()
        self.assertEqual(m["slipstream_fill_memory_blocks_total"], 0)
        self.assertEqual(m["slipstream_fill_dropped_blocks_total"], 0)
        gw.wait_idle(60)
        self.assertEqual(self.stored_states("/g.bin"), "S" * (size // BS))

    def test_test_hook_refused_without_the_environment(self):
        os.environ.pop("SLIPSTREAM_TEST_HOOKS", None)
        self.origin = self.nginx(self.root)
        with self.assertRaises(AssertionError) as cm:
            self.gateway("[cache]\ndir = @CACHE@\ntest_disk_rate = 1M\nmin_free = 0\n%s"
                         % self.http_mount("m", self.origin.url()))
        self.assertIn("test hook", str(cm.exception))
