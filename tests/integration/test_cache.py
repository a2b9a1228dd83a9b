"""Issue 3: the block cache and the parallel fetcher, end to end.

Every test runs the real gateway against a real nginx origin (Referer/UA
checks, limit_rate, an access log with $connection, $msec, $request_time,
$http_range, $body_bytes_sent) or our scripted origin, and asserts on the
SHA-256 of what the client got, on the X-Cache header, and on exactly which
requests reached the origin.

Conventions used below:
  - The gateway checks an object's metadata with a 1-byte probe
    (`Range: bytes=0-0`) when it opens it cold or after `revalidate`; every
    other origin request is a block (piece) fetch.
  - "Settled" origin logs: nginx writes a line when a request ends, so the
    log is read once it has stopped changing (bounded wait).
"""

import glob
import hashlib
import http.client
import os
import re
import socket
import threading
import time

from harness import GatewayTest, random_bytes, rss_limit, sha256, write_file, wait_until

KiB = 1024
MiB = 1024 * 1024

PROBE = "bytes=0-0"


# --------------------------------------------------------------------- helpers


def cache_ini(mount, block_size="1M", max_size="1G", extra_cache="", server=""):
    return ("[server]\nlog_level = debug\n%s\n[cache]\ndir = @CACHE@\nblock_size = %s\nmax_size = %s\n"
            "min_free = 0\n%s\n%s" % (server, block_size, max_size, extra_cache, mount))


def parse_range(header, size):
    """nginx's $http_range ("bytes=a-b", "bytes=a-") -> half-open (begin, end)."""
    m = re.match(r"bytes=(\d+)-(\d*)$", header)
    assert m, "origin saw an unexpected Range header %r" % header
    begin = int(m.group(1))
    end = int(m.group(2)) + 1 if m.group(2) else size
    return begin, min(end, size)


def settled_entries(origin, uri=None):
    """The nginx log once it is complete: the gateways are idle (nothing
    fetched or stored any more) and nginx has logged every request that
    ended (harness: NginxOrigin.entries)."""
    return [e for e in origin.entries() if uri is None or e["uri"] == uri]


def split_probe(entries):
    probes = [e for e in entries if e["range"] == PROBE]
    blocks = [e for e in entries if e["range"] != PROBE]
    return probes, blocks


def fmt_entries(entries):
    return "\n".join("  conn=%d nreq=%d status=%d range=%s bytes=%d start=%.3f end=%.3f" % (
        e["conn"], e["nreq"], e["status"], e["range"], e["bytes"], e["start"], e["end"]) for e in entries)


def request_intervals(entries):
    """[start, end) of each logged request in integer milliseconds. nginx logs
    $msec and $request_time rounded to 1 ms, so start = msec - request_time can
    land a millisecond before the previous request on the same keep-alive
    connection ended; requests on one HTTP/1.1 connection are serial, so a
    start is clipped to the end of its predecessor there."""
    out = []
    by_conn = {}
    for e in entries:
        by_conn.setdefault(e["conn"], []).append(e)
    for conn_entries in by_conn.values():
        prev_end = None
        for e in sorted(conn_entries, key=lambda x: x["nreq"]):
            s, z = round(e["start"] * 1000), round(e["end"] * 1000)
            if prev_end is not None:
                s = max(s, prev_end)
            out.append((s, max(s, z)))
            prev_end = z
    return out


def max_overlap(intervals):
    """Largest number of [start, end) intervals open at one instant."""
    ev = []
    for s, e in intervals:
        if e <= s:
            continue
        ev.append((s, 1))
        ev.append((e, -1))
    ev.sort(key=lambda x: (x[0], x[1]))  # an end at t closes before a start at t opens
    cur = best = 0
    for _, d in ev:
        cur += d
        best = max(best, cur)
    return best


def data_files(gw):
    return glob.glob(os.path.join(gw.cache_dir, "data", "*", "*.blk"))


def wait_listed(gw, blocks, timeout=10):
    """Blocks are listed in the index after the client may already have its
    bytes (it streams from the block being written): wait for the listing."""
    def listed():
        r = gw.cli("cache", "stats")
        m = re.search(rb"^blocks (\d+)", r.stdout, re.M)
        return m and int(m.group(1)) >= blocks
    wait_until(listed, timeout, interval=0.05, what="%d blocks listed in the index" % blocks)


def wait_out_change_window():
    """A running gateway notices a change it did not make to a data file by
    the file's ctime, which it looks at no more than every 50 ms, and takes
    a change in the same ctime tick as its own last write for its own
    (store/DESIGN.md, "Reads": the limits stated there). A test that damages
    the file of a running gateway on purpose does it once both windows have
    passed since the gateway last wrote or read it; nothing to wait for but
    the clock."""
    time.sleep(0.1)


def disk_usage(gw, files=None):
    total = 0
    for p in files if files is not None else data_files(gw):
        try:
            total += os.stat(p).st_blocks * 512
        except FileNotFoundError:
            pass
    return total


def fetch(gw, path, headers=None, timeout=60):
    """GET through the gateway; returns (status, headers dict lower-case, body)."""
    r = gw.get(path, headers=headers, timeout=timeout)
    return r.status, {k.lower(): v for k, v in r.headers}, r.body


def replace_file(path, data):
    tmp = path + ".new"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class StreamingClient(threading.Thread):
    """Reads one GET through the gateway in the background, counting bytes
    (and optionally pacing itself to `rate` bytes/s on a small socket buffer)."""

    def __init__(self, port, path, rate=None, rcvbuf=None, chunk=64 * KiB):
        super().__init__(daemon=True)
        self.port, self.path, self.rate, self.rcvbuf, self.chunk = port, path, rate, rcvbuf, chunk
        self.received = 0
        self.hasher = hashlib.sha256()
        self.status = None
        self.content_length = None
        self.error = None
        self.done = False
        self.started_at = self.finished_at = None
        self.stop_flag = threading.Event()

    def run(self):
        self.started_at = time.monotonic()
        try:
            s = socket.socket()
            if self.rcvbuf:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            s.settimeout(30)
            s.connect(("127.0.0.1", self.port))
            s.sendall(("GET %s HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n" % self.path).encode())
            head = b""
            while b"\r\n\r\n" not in head:
                c = s.recv(4096)
                if not c:
                    raise ConnectionError("closed before headers")
                head += c
            head, rest = head.split(b"\r\n\r\n", 1)
            self.status = int(head.split(b" ")[1])
            m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            self.content_length = int(m.group(1)) if m else None
            self._take(rest)
            t0 = time.monotonic()
            got0 = self.received
            while not self.stop_flag.is_set():
                c = s.recv(self.chunk if not self.rate else 16 * KiB)
                if not c:
                    break
                self._take(c)
                if self.rate:
                    ahead = (self.received - got0) / self.rate - (time.monotonic() - t0)
                    if ahead > 0:
                        time.sleep(ahead)
            s.close()
        except Exception as e:  # noqa: BLE001 - recorded for the test to judge
            self.error = e
        self.finished_at = time.monotonic()
        self.done = True

    def _take(self, b):
        self.received += len(b)
        self.hasher.update(b)


# --------------------------------------------------------------------- nginx-origin tests


class BlockCache(GatewayTest):
    """Cache behaviour against a real nginx origin."""

    server = ""  # extra [server] lines (test_workers runs some of these with workers = 2)

    def setUp(self):
        super().setUp()
        self.root = os.path.join(self.tmp, "www")
        os.makedirs(self.root)

    def put(self, name, size, seed):
        data = random_bytes(size, seed=seed)
        write_file(os.path.join(self.root, name), data)
        return data

    def start(self, limit_rate=None, block_size="1M", max_size="1G", mount_extra="", extra_cache=""):
        self.origin = self.nginx(self.root, picky=True, limit_rate=limit_rate)
        self.gw = self.gateway(cache_ini(self.http_mount("m", self.origin.url(), extra=mount_extra),
                                         block_size=block_size, max_size=max_size, extra_cache=extra_cache,
                                         server=self.server))
        return self.gw

    def assert_picky_ok(self, entries):
        for e in entries:
            self.assertIn(e["status"], (200, 206), "origin refused a gateway request:\n" + fmt_entries([e]))
            self.assertEqual(e["referer"], "http://origin.example/")
            self.assertEqual(e["ua"], "SlipTest/1.0")

    # 1 ------------------------------------------------------------------
    def test_01_second_download_is_a_hit_with_zero_origin_bytes(self):
        data = self.put("a.bin", 3 * MiB + 4321, seed=11)
        gw = self.start(block_size="1M")
        st, h, body = fetch(gw, "/p/m/a.bin")
        self.assertEqual(st, 200)
        self.assertEqual(sha256(body), sha256(data))
        self.assertEqual(h.get("x-cache"), "MISS")
        first = settled_entries(self.origin, "/a.bin")
        self.assert_picky_ok(first)
        probes, blocks = split_probe(first)
        self.assertLessEqual(len(probes), 1, fmt_entries(first))
        # Every byte of the file came from the origin exactly once.
        self.assertEqual(sum(e["bytes"] for e in blocks), len(data), fmt_entries(first))

        self.origin.clear_log()
        st, h, body = fetch(gw, "/p/m/a.bin")
        self.assertEqual(st, 200)
        self.assertEqual(sha256(body), sha256(data))
        self.assertEqual(h.get("x-cache"), "HIT")
        second = settled_entries(self.origin)
        self.assertEqual(sum(e["bytes"] for e in second), 0, fmt_entries(second))
        # Within `revalidate` a warm hit costs no upstream round trip at all.
        self.assertEqual(second, [], "warm hit reached the origin:\n" + fmt_entries(second))

    # 2 ------------------------------------------------------------------
    def test_02_cold_middle_range_fetches_only_its_blocks_then_partial_then_hit(self):
        size = 8 * MiB
        bs = 1 * MiB
        data = self.put("b.bin", size, seed=12)
        gw = self.start(block_size="1M")
        # 300 KiB inside block 3.
        a, z = 3 * MiB + 200 * KiB, 3 * MiB + 500 * KiB  # half-open
        st, h, body = fetch(gw, "/p/m/b.bin", headers={"Range": "bytes=%d-%d" % (a, z - 1)})
        self.assertEqual(st, 206)
        self.assertEqual(h.get("content-range"), "bytes %d-%d/%d" % (a, z - 1, size))
        self.assertEqual(sha256(body), sha256(data[a:z]))
        self.assertEqual(h.get("x-cache"), "MISS")
        ents = settled_entries(self.origin, "/b.bin")
        self.assert_picky_ok(ents)
        probes, blocks = split_probe(ents)
        self.assertLessEqual(len(probes), 1, fmt_entries(ents))
        self.assertTrue(blocks, "no block request reached the origin")
        lo, hi = (a // bs) * bs, ((z - 1) // bs + 1) * bs  # blocks covering the range: [3M, 4M)
        for e in blocks:
            b, en = parse_range(e["range"], size)
            self.assertTrue(lo <= b < en <= hi,
                            "origin range %s outside the covering blocks [%d, %d):\n%s"
                            % (e["range"], lo, hi, fmt_entries(ents)))
        self.assertLessEqual(sum(e["bytes"] for e in blocks), hi - lo, fmt_entries(ents))

        # Overlapping cached block 3 and uncached block 4 -> PARTIAL (once
        # block 3 is listed: the disk writes it behind the client).
        gw.wait_idle(30)
        self.origin.clear_log()
        a2, z2 = 3 * MiB + 700 * KiB, 4 * MiB + 300 * KiB
        st, h, body = fetch(gw, "/p/m/b.bin", headers={"Range": "bytes=%d-%d" % (a2, z2 - 1)})
        self.assertEqual(st, 206)
        self.assertEqual(sha256(body), sha256(data[a2:z2]))
        self.assertEqual(h.get("x-cache"), "PARTIAL")
        ents = settled_entries(self.origin, "/b.bin")
        probes, blocks = split_probe(ents)
        self.assertEqual(probes, [], "revalidated within the revalidate interval:\n" + fmt_entries(ents))
        for e in blocks:
            b, en = parse_range(e["range"], size)
            self.assertTrue(4 * MiB <= b < en <= 5 * MiB,
                            "origin range %s outside the uncached block [4M, 5M):\n%s" % (e["range"], fmt_entries(ents)))
        self.assertTrue(blocks, "the uncached block 4 was not fetched")

        # The cached part alone -> HIT, nothing from the origin.
        gw.wait_idle(30)
        self.origin.clear_log()
        a3, z3 = 3 * MiB + 10 * KiB, 4 * MiB + 900 * KiB
        st, h, body = fetch(gw, "/p/m/b.bin", headers={"Range": "bytes=%d-%d" % (a3, z3 - 1)})
        self.assertEqual(st, 206)
        self.assertEqual(sha256(body), sha256(data[a3:z3]))
        self.assertEqual(h.get("x-cache"), "HIT")
        ents = settled_entries(self.origin)
        self.assertEqual(sum(e["bytes"] for e in ents), 0, fmt_entries(ents))

    # 3 ------------------------------------------------------------------
    def test_03_eight_connections_in_flight_on_reused_connections(self):
        size = 16 * MiB
        data = self.put("c.bin", size, seed=13)
        gw = self.start(limit_rate="2m", block_size="512K", mount_extra="connections = 8\n")
        st, h, body = fetch(gw, "/p/m/c.bin", timeout=60)
        self.assertEqual(st, 200)
        self.assertEqual(sha256(body), sha256(data))
        self.assertEqual(h.get("x-cache"), "MISS")
        ents = settled_entries(self.origin, "/c.bin")
        self.assert_picky_ok(ents)
        probes, blocks = split_probe(ents)
        overlap = max_overlap(request_intervals(ents))
        conns = {e["conn"] for e in ents}
        self.figures = dict(overlap=overlap, requests=len(ents), connections=len(conns))
        print("\n    [fig] connections=8: max in flight %d, %d origin requests on %d connections"
              % (overlap, len(ents), len(conns)))
        self.assertGreaterEqual(overlap, 8, fmt_entries(ents))
        self.assertLessEqual(overlap, 8, "more than `connections` range requests at once:\n" + fmt_entries(ents))
        self.assertTrue(any(e["nreq"] > 1 for e in ents), "no upstream connection was reused:\n" + fmt_entries(ents))
        self.assertLessEqual(len(conns) * 2, len(ents),
                             "%d connections for %d requests:\n%s" % (len(conns), len(ents), fmt_entries(ents)))
        self.assertEqual(sum(e["bytes"] for e in blocks), size)

    # 4 ------------------------------------------------------------------
    def test_04_twenty_clients_on_one_cold_file_coalesce(self):
        size = 8 * MiB
        data = self.put("d.bin", size, seed=14)
        gw = self.start(limit_rate="8m", block_size="1M")
        barrier = threading.Barrier(20)
        results = [None] * 20

        def client(i):
            try:
                barrier.wait(10)
                results[i] = fetch(gw, "/p/m/d.bin", timeout=60)
            except Exception as e:  # noqa: BLE001
                results[i] = e

        ts = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(20)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(90)
        want = sha256(data)
        for i, r in enumerate(results):
            self.assertIsInstance(r, tuple, "client %d: %r" % (i, r))
            self.assertEqual(r[0], 200, "client %d" % i)
            self.assertEqual(sha256(r[2]), want, "client %d got wrong bytes" % i)
        ents = settled_entries(self.origin, "/d.bin")
        self.assert_picky_ok(ents)
        sent = sum(e["bytes"] for e in ents)
        print("\n    [fig] 20 cold clients: origin bytes / file size = %.4f (%d requests)"
              % (sent / size, len(ents)))
        self.assertLessEqual(sent, 1.01 * size, fmt_entries(ents))

    # 5 ------------------------------------------------------------------
    def test_05_kill9_mid_fill_then_restart_verifies(self):
        size = 4 * MiB
        files = {}
        for i, frac in enumerate((0.10, 0.50, 0.90)):
            files["k%d.bin" % i] = (frac, self.put("k%d.bin" % i, size, seed=50 + i))
        # 4 connections x 512 KiB/s per request: a 4 MiB fill takes ~2 s, with
        # several 256 KiB blocks half-written at any instant.
        gw = self.start(limit_rate="512k", block_size="256K", mount_extra="connections = 4\n")
        for name, (frac, data) in sorted(files.items()):
            before = set(data_files(gw))
            c = StreamingClient(gw.port, "/p/m/" + name)
            c.start()

            def filled():
                # Fill progress = bytes allocated in this object's sparse data file.
                return disk_usage(gw, set(data_files(gw)) - before) >= frac * size or c.done

            wait_until(filled, 30, interval=0.01, what="%s filled to %d%%" % (name, frac * 100))
            self.assertFalse(c.done, "%s: the download ended before the kill point (%d bytes, %r)"
                             % (name, c.received, c.error))
            gw.kill9()
            c.join(10)
            self.assertLess(c.received, size, "%s: client got the whole file before kill -9" % name)
            gw.start()
            v = gw.cli("cache", "verify")
            self.assertEqual(v.returncode, 0, "cache verify after kill -9 at %d%% of %s:\n%s%s"
                             % (frac * 100, name, v.stdout.decode(), v.stderr.decode()))
            m = re.search(rb"verified (\d+) blocks", v.stdout)
            self.assertTrue(m, v.stdout)
            print("\n    [fig] kill -9 at %d%% of %s: %s blocks listed and verified"
                  % (frac * 100, name, m.group(1).decode()), end="")
            self.assertLess(int(m.group(1)), 3 * (size // (256 * KiB)))
            st, h, body = fetch(gw, "/p/m/" + name, timeout=60)
            self.assertEqual(st, 200)
            self.assertEqual(sha256(body), sha256(data), "%s not byte-exact after kill -9 and restart" % name)
        # The last file is now complete: one more download is a pure hit.
        settled_entries(self.origin)
        self.origin.clear_log()
        name = "k2.bin"
        st, h, body = fetch(gw, "/p/m/" + name)
        self.assertEqual(sha256(body), sha256(files[name][1]))
        self.assertEqual(h.get("x-cache"), "HIT")
        ents = settled_entries(self.origin)
        self.assertEqual(sum(e["bytes"] for e in ents), 0, fmt_entries(ents))
        v = gw.cli("cache", "verify")
        self.assertEqual(v.returncode, 0, v.stdout.decode())

    # 6 ------------------------------------------------------------------
    def test_06_flipped_byte_is_reported_and_only_that_block_refetched(self):
        size = 2 * MiB + 1000
        bs = 256 * KiB
        k = 5
        data = self.put("e.bin", size, seed=15)
        gw = self.start(block_size="256K")
        st, h, body = fetch(gw, "/p/m/e.bin")
        self.assertEqual(sha256(body), sha256(data))
        settled_entries(self.origin)
        wait_listed(gw, (size + bs - 1) // bs)
        v = gw.cli("cache", "verify")
        self.assertEqual(v.returncode, 0, v.stdout.decode())
        files = data_files(gw)
        self.assertEqual(len(files), 1, files)
        wait_out_change_window()
        off = 4096 + k * bs + 70000  # inside block k, its second page
        with open(files[0], "r+b") as f:
            f.seek(off)
            b = f.read(1)
            self.assertEqual(b, data[k * bs + 70000:k * bs + 70001], "block layout is not as documented")
            f.seek(off)
            f.write(bytes([b[0] ^ 0x5A]))
        v = gw.cli("cache", "verify")
        out = v.stdout.decode()
        self.assertEqual(v.returncode, 1, out)
        bad = [l for l in out.splitlines() if l.startswith("bad ")]
        self.assertEqual(len(bad), 1, out)
        self.assertIn("block=%d " % k, bad[0] + " ")

        self.origin.clear_log()
        st, h, body = fetch(gw, "/p/m/e.bin")
        self.assertEqual(st, 200)
        self.assertEqual(sha256(body), sha256(data), "a corrupt block was served")
        ents = settled_entries(self.origin, "/e.bin")
        self.assert_picky_ok(ents)
        self.assertTrue(ents, "the corrupt block was not fetched again")
        for e in ents:
            b, en = parse_range(e["range"], size)
            self.assertTrue(k * bs <= b < en <= (k + 1) * bs,
                            "origin asked for %s, not only block %d [%d, %d):\n%s"
                            % (e["range"], k, k * bs, (k + 1) * bs, fmt_entries(ents)))
        self.assertEqual(sum(e["bytes"] for e in ents), bs, fmt_entries(ents))
        # The refetched block replaces the dropped one once its commit lands.
        wait_until(lambda: gw.cli("cache", "verify").returncode == 0, 10, interval=0.1,
                   what="cache verify to pass after the refetch")

    # 7 ------------------------------------------------------------------
    def test_07_max_size_is_respected_and_last_file_stays_cached(self):
        bs = 256 * KiB
        max_size = 3 * MiB
        size = 5 * bs  # 1.25 MiB each, 3.75 MiB in all
        datas = [self.put("f%d.bin" % i, size, seed=70 + i) for i in range(3)]
        gw = self.start(block_size="256K", max_size="3M")
        peak = [0]
        stop = threading.Event()

        def sampler():
            while not stop.is_set():
                peak[0] = max(peak[0], disk_usage(gw))
                time.sleep(0.005)

        t = threading.Thread(target=sampler, daemon=True)
        t.start()
        try:
            for i, data in enumerate(datas):
                if i == len(datas) - 1:
                    # Only the last fill evicts. Eviction skips every block
                    # read since the store last wrote its access times (once
                    # a second, store/DESIGN.md "Eviction"), so right after
                    # f0 and f1 were read it would take the last file's own
                    # read-ahead instead of their blocks: let the store write
                    # their access times first.
                    time.sleep(1.1)
                st, h, body = fetch(gw, "/p/m/f%d.bin" % i)
                self.assertEqual(st, 200)
                self.assertEqual(sha256(body), sha256(data))
                settled_entries(self.origin)
                # Hole punching runs on the disk thread: give it a bounded moment.
                try:
                    wait_until(lambda: disk_usage(gw) <= max_size + bs, 5, what="eviction")
                except AssertionError:
                    pass
                use = disk_usage(gw)
                print("\n    [fig] after f%d.bin: data files use %d bytes (limit %d)" % (i, use, max_size + bs), end="")
                self.assertLessEqual(use, max_size + bs, "after file %d: %d bytes on disk" % (i, use))
        finally:
            stop.set()
            t.join(5)
        print("\n    [fig] peak sampled during the fills: %d bytes" % peak[0], end="")
        self.assertLessEqual(peak[0], max_size + bs, "usage went over max_size + one block during a fill")
        self.origin.clear_log()
        st, h, body = fetch(gw, "/p/m/f2.bin")
        self.assertEqual(sha256(body), sha256(datas[2]))
        self.assertEqual(h.get("x-cache"), "HIT")
        ents = settled_entries(self.origin)
        self.assertEqual(sum(e["bytes"] for e in ents), 0, fmt_entries(ents))
        v = gw.cli("cache", "verify")
        self.assertEqual(v.returncode, 0, v.stdout.decode())

    # 8 ------------------------------------------------------------------
    def test_08_restart_keeps_the_cache_warm(self):
        data = self.put("g.bin", 2 * MiB + 77, seed=16)
        gw = self.start(block_size="256K")
        st, h, body = fetch(gw, "/p/m/g.bin")
        self.assertEqual(sha256(body), sha256(data))
        self.assertEqual(h.get("x-cache"), "MISS")
        settled_entries(self.origin)
        self.assertEqual(gw.stop(), 0, "gateway did not exit cleanly on SIGTERM")
        self.origin.clear_log()
        gw.start()
        st, h, body = fetch(gw, "/p/m/g.bin")
        self.assertEqual(st, 200)
        self.assertEqual(sha256(body), sha256(data))
        self.assertEqual(h.get("x-cache"), "HIT")
        ents = settled_entries(self.origin)
        self.assertEqual(sum(e["bytes"] for e in ents), 0, fmt_entries(ents))
        self.assertEqual(ents, [], "a warm hit after restart reached the origin:\n" + fmt_entries(ents))

    # 9 ------------------------------------------------------------------
    def test_09_changed_origin_file_old_until_revalidate_then_new_never_mixed(self):
        old = self.put("h.bin", 2 * MiB + 10, seed=17)
        # The requests of the "before" part run right after the first one,
        # well within the 2 s; the end of the interval is awaited below.
        gw = self.start(block_size="256K", mount_extra="revalidate = 2s\n")
        st, h, body = fetch(gw, "/p/m/h.bin")
        self.assertEqual(sha256(body), sha256(old))
        # The client had its bytes from memory; the disk lists the blocks behind it.
        gw.wait_idle(30)
        new = random_bytes(3 * MiB - 5, seed=18)
        replace_file(os.path.join(self.root, "h.bin"), new)
        self.origin.clear_log()
        hashes = {sha256(old): "old", sha256(new): "new"}
        # Before the interval passes: the stored (old) object, consistently.
        before = []
        for rng in (None, "bytes=100000-1500000"):
            hd = {"Range": rng} if rng else None
            st, h, body = fetch(gw, "/p/m/h.bin", headers=hd)
            if rng:
                self.assertEqual(body, old[100000:1500001], "range before revalidation: not the old bytes")
            else:
                before.append(hashes.get(sha256(body), "MIX"))
                self.assertEqual(h.get("content-length"), str(len(old)))
                self.assertEqual(h.get("x-cache"), "HIT")
        self.assertEqual(before, ["old"])
        self.assertEqual(sum(e["bytes"] for e in settled_entries(self.origin)), 0)
        # The clock under test: once `revalidate` has passed, the next request
        # revalidates. HEADs (no body, no block fetched) ask until one gets
        # the new length; every one before it got the old object from the cache.
        heads = []

        def revalidated():
            r = gw.get("/p/m/h.bin", method="HEAD")
            heads.append((r.status, r.header("Content-Length"), r.header("X-Cache")))
            return r.header("Content-Length") == str(len(new))

        wait_until(revalidated, 15, interval=0.05, what="the revalidation after revalidate = 2s")
        self.assertEqual(set(heads[:-1]), {(200, str(len(old)), "HIT")} if heads[:-1] else set(), heads)
        self.assertEqual(heads[-1][0], 200, heads)
        probes, blocks = split_probe(settled_entries(self.origin, "/h.bin"))
        self.assertEqual((len(probes), blocks), (1, []), "one probe, no block, for the HEADs")
        after = []
        for _ in range(2):
            st, h, body = fetch(gw, "/p/m/h.bin")
            self.assertEqual(st, 200)
            after.append((hashes.get(sha256(body), "MIX"), h.get("x-cache")))
            self.assertEqual(h.get("content-length"), str(len(body)))
            gw.wait_idle(30)  # listed behind the client (served from memory meanwhile)
        self.assertEqual(after, [("new", "MISS"), ("new", "HIT")], "after revalidation: %r" % (after,))
        # The old version's blocks are reclaimed: only the new object's bytes stay on disk.
        try:
            wait_until(lambda: disk_usage(gw) <= len(new) + 64 * KiB, 5, what="old blocks reclaimed")
        except AssertionError:
            pass
        self.assertLessEqual(disk_usage(gw), len(new) + 64 * KiB,
                             "old version not reclaimed: %s" % sorted(data_files(gw)))
        st, h, body = fetch(gw, "/p/m/h.bin", headers={"Range": "bytes=200000-2900000"})
        self.assertEqual(body, new[200000:2900001], "range after revalidation: not the new bytes")
        v = gw.cli("cache", "verify")
        self.assertEqual(v.returncode, 0, v.stdout.decode())

    # 10 -----------------------------------------------------------------
    def test_10_slow_and_fast_client_same_cold_file_bounded_memory(self):
        size = 32 * MiB
        data = self.put("s.bin", size, seed=19)
        gw = self.start(block_size="1M")
        rss = [gw.rss()]
        stop = threading.Event()

        def sampler():
            while not stop.is_set():
                try:
                    rss.append(gw.rss())
                except OSError:
                    pass
                time.sleep(0.02)

        sm = threading.Thread(target=sampler, daemon=True)
        sm.start()
        slow = StreamingClient(gw.port, "/p/m/s.bin", rate=300 * KiB, rcvbuf=64 * KiB)
        slow.start()
        try:
            wait_until(lambda: slow.received > 0 or slow.done, 15, what="the slow client's first bytes")
            fast = StreamingClient(gw.port, "/p/m/s.bin")
            fast.start()
            fast.join(60)
            self.assertTrue(fast.done, "fast client did not finish")
            self.assertIsNone(fast.error)
            self.assertEqual(fast.status, 200)
            self.assertEqual(fast.received, size)
            self.assertEqual(fast.hasher.hexdigest(), sha256(data))
            slow_at_fast_end = slow.received
            # The slow one is still reading and far behind.
            self.assertFalse(slow.done, "slow client finished too: %r" % slow.error)
            self.assertLess(slow_at_fast_end, size // 4,
                            "slow client had %d bytes when the fast one finished" % slow_at_fast_end)
            # Keep the slow reader going (another 256 KiB) while memory is sampled.
            wait_until(lambda: slow.received >= slow_at_fast_end + 256 * KiB or slow.done, 15,
                       what="the slow client to read on")
            self.assertFalse(slow.done, "slow client stopped: %r" % slow.error)
            self.assertGreater(slow.received, slow_at_fast_end, "slow client made no progress")
        finally:
            slow.stop_flag.set()
            stop.set()
            sm.join(5)
        slow.join(35)
        self.assertEqual(slow.hasher.hexdigest(), sha256(data[:slow.received]),
                         "slow client's prefix is not the file's")
        peak = max(max(rss), gw.peak_rss())
        print("\n    [fig] fast client %.2fs, slow client had %d KiB; RSS peak %.1f MiB (VmHWM %.1f MiB)"
              % (fast.finished_at - fast.started_at, slow_at_fast_end // KiB, max(rss) / MiB,
                 gw.peak_rss() / MiB), end="")
        self.assertLess(peak, rss_limit(64 * MiB))
        ents = settled_entries(self.origin, "/s.bin")
        self.assertLessEqual(sum(e["bytes"] for e in ents), 1.01 * size, fmt_entries(ents))


# --------------------------------------------------------------------- scripted-origin tests


class BlockCacheMisbehavingOrigin(GatewayTest):
    """Cache behaviour against an origin that drops, ignores Range, changes
    its ETag under us, or asks us to come back later."""

    def setUp(self):
        super().setUp()
        self.data = random_bytes(5 * 256 * KiB + 3333, seed=31)
        self.origin = self.scripted({"/f.bin": self.data})
        # Dropped connections are the point here: keep socketserver's
        # tracebacks for them off the test output.
        self.origin.server.handle_error = lambda *a: None

    def start(self, block_size="256K", mount_extra=""):
        self.gw = self.gateway(cache_ini(self.http_mount("s", self.origin.url(), picky=False, extra=mount_extra),
                                         block_size=block_size))
        return self.gw

    def log(self, path):
        with self.origin.lock:
            return [dict(r) for r in self.origin.requests if r["path"] == path]

    def fmt(self, reqs):
        t0 = reqs[0]["start"] if reqs else 0
        return "\n".join("  conn=%s status=%s range=%s bytes=%s t=%.3f-%.3f%s" % (
            r.get("conn"), r.get("status"), r.get("range"), r.get("bytes"), r["start"] - t0,
            r.get("end", r["start"]) - t0, " DROPPED" if r.get("dropped") else "") for r in reqs)

    # 11 -----------------------------------------------------------------
    def test_11_upstream_drop_mid_block_resumes_from_byte_reached(self):
        self.origin.drop_after = 150_000  # < a 256 KiB block: every block's first response is cut
        gw = self.start(block_size="256K")
        st, h, body = fetch(gw, "/p/s/drop/f.bin")
        self.assertEqual(st, 200)
        self.assertEqual(sha256(body), sha256(self.data))
        self.origin.settle()
        reqs = self.log("/drop/f.bin")
        dropped = [r for r in reqs if r.get("dropped")]
        self.assertTrue(dropped, "the origin never dropped a response:\n" + self.fmt(reqs))
        size = len(self.data)
        for d in dropped:
            b, _ = parse_range("bytes=" + d["range"].split("=", 1)[1], size)
            want = b + self.origin.drop_after
            later = [r for r in reqs if r["start"] >= d["end"] and r["range"].startswith("bytes=%d-" % want)]
            self.assertTrue(later, "no retry from byte %d after the drop of %s:\n%s"
                            % (want, d["range"], self.fmt(reqs)))
        print("\n    [fig] drop: %d responses cut after %d bytes, each resumed from the byte reached; "
              "%d requests in all" % (len(dropped), self.origin.drop_after, len(reqs)), end="")
        # Nothing fetched twice: the resumed requests do not repeat received bytes.
        self.assertLessEqual(self.origin.sent("/drop/f.bin"), size + 1, self.fmt(reqs))
        st, h, body = fetch(gw, "/p/s/drop/f.bin")
        self.assertEqual(sha256(body), sha256(self.data))
        self.assertEqual(h.get("x-cache"), "HIT")

    # 12 -----------------------------------------------------------------
    def test_12_upstream_ignores_range(self):
        gw = self.start(block_size="256K")
        size = len(self.data)

        def get(headers=None):
            t0 = time.monotonic()
            n0 = self.origin.count("/norange/f.bin")
            try:
                return fetch(gw, "/p/s/norange/f.bin", headers=headers, timeout=15)
            except (OSError, http.client.HTTPException) as e:
                n = self.origin.count("/norange/f.bin") - n0
                self.fail("%s %r: no complete answer after %.1fs (%r); meanwhile the origin got %d "
                          "requests for the file (last ones:\n%s)\ngateway log tail:\n%s" % (
                              "GET", headers, time.monotonic() - t0, e, n,
                              self.fmt(self.log("/norange/f.bin")[-5:]), gw.errors()[-1500:]))

        a, z = 300_000, 900_000
        st, h, body = get({"Range": "bytes=%d-%d" % (a, z - 1)})
        self.assertEqual(st, 206)
        self.assertEqual(h.get("content-range"), "bytes %d-%d/%d" % (a, z - 1, size))
        self.assertEqual(sha256(body), sha256(self.data[a:z]))
        st, h, body = get()
        self.assertEqual(st, 200)
        self.assertEqual(h.get("content-length"), str(size))
        self.assertEqual(sha256(body), sha256(self.data))
        # Another middle range, now partly or wholly from the cache.
        a, z = 1_000_000, 1_300_000
        st, h, body = get({"Range": "bytes=%d-%d" % (a, z - 1)})
        self.assertEqual(st, 206)
        self.assertEqual(sha256(body), sha256(self.data[a:z]))
        # Streaming from a whole-body answer is a handful of requests, not a loop.
        reqs = self.log("/norange/f.bin")
        print("\n    [fig] norange: %d origin requests, %d body bytes (%.2f x the file)"
              % (len(reqs), self.origin.sent("/norange/f.bin"), self.origin.sent("/norange/f.bin") / size), end="")
        self.assertLessEqual(len(reqs), 8, self.fmt(reqs))

    # 13 -----------------------------------------------------------------
    def test_13_etag_flip_is_never_served_as_a_complete_body(self):
        gw = self.start(block_size="256K")
        outcomes = []
        for hd in (None, {"Range": "bytes=100000-1200000"}, None):
            conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
            try:
                conn.request("GET", "/p/s/etagflip/f.bin", headers=hd or {})
                r = conn.getresponse()
                try:
                    body = r.read()
                except http.client.IncompleteRead as e:
                    outcomes.append("closed after %d bytes" % len(e.partial))
                    continue
                except (ConnectionError, http.client.HTTPException) as e:
                    outcomes.append("closed: %r" % e)
                    continue
                if r.status in (502, 504):
                    outcomes.append("%d" % r.status)
                    continue
                self.fail("ETag flipped between block requests, yet the gateway answered %d with a "
                          "complete-looking body of %d bytes (%s)" % (
                              r.status, len(body),
                              "same bytes" if body in (self.data, self.data[100000:1200001]) else "WRONG bytes"))
            except (ConnectionError, http.client.HTTPException) as e:
                outcomes.append("closed before headers: %r" % e)
            finally:
                conn.close()
        print("\n    [fig] etagflip outcomes: %s" % outcomes, end="")
        self.assertEqual(len(outcomes), 3)
        self.assertIn("reason=upstream_changed", self.gw.errors())
        v = gw.cli("cache", "verify")
        self.assertEqual(v.returncode, 0, v.stdout.decode())

    # 14 -----------------------------------------------------------------
    def test_14_503_retry_after_is_honoured(self):
        self.origin.status_times = 1
        self.origin.retry_after = 1
        gw = self.start(block_size="256K")
        # What the gateway had logged when each request reached the origin.
        self.origin.on_request = lambda rec: rec.update(logged=gw.errors())
        st, h, body = fetch(gw, "/p/s/status/f.bin", timeout=30)
        self.assertEqual(st, 200)
        self.assertEqual(sha256(body), sha256(self.data))
        reqs = [r for r in self.origin.settle() if r["path"] == "/status/f.bin"]
        self.assertGreaterEqual(len(reqs), 2, self.fmt(reqs))
        self.assertEqual(reqs[0]["status"], 503, self.fmt(reqs))
        self.assertTrue(all(r["status"] in (200, 206) for r in reqs[1:]), self.fmt(reqs))
        # The 503 was the probe's; its retry waits what Retry-After says
        # (1 s, not the 250 ms first backoff), and the origin did not see
        # the retry before the gateway had decided on that wait.
        retries = re.findall(r"event=probe_retry path=\S+ attempt=(\d+) delay_ms=(\d+)", gw.errors())
        self.assertEqual(retries, [("1", "1000")], gw.errors()[-2000:])
        self.assertNotIn("event=probe_retry", reqs[0]["logged"])
        self.assertIn("event=probe_retry", reqs[1]["logged"])


if __name__ == "__main__":
    import unittest
    unittest.main()
