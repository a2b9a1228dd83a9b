"""Issue 14, first part: front-end worker threads (`[server] workers = 2`).

A worker thread serves warm hits (every requested byte stored and fresh)
itself and hands every other connection to the main loop. These tests check
what must hold whatever thread a connection lands on (the kernel spreads
them with SO_REUSEPORT; a test cannot choose): coalescing across threads,
byte-exact warm reads on both threads (asserted with the per-thread counters
of /-/metrics), purge and eviction while a worker serves (never wrong bytes;
a response may end short, and then its bytes are a prefix of the file), and
the kill -9 crash test. Nothing here asserts on time.
"""

import http.client
import json
import os
import re
import socket
import threading

from harness import GatewayTest, random_bytes, sha256, wait_until, write_file
from test_cache import BlockCache, cache_ini, fetch, settled_entries, wait_listed

KiB = 1024
MiB = 1024 * 1024


def thread_counter(gw, name, thread):
    m = re.search(r'(?m)^slipstream_thread_%s_total\{thread="%d"\} (\d+)$' % (name, thread), gw.get("/-/metrics").body.decode())
    return int(m.group(1)) if m else None


class RawReader(threading.Thread):
    """One GET on its own connection, read slowly on a small receive buffer;
    keeps every byte so a short body can be checked as a prefix."""

    def __init__(self, port, path, pace=None):
        super().__init__(daemon=True)
        self.port, self.path, self.pace = port, path, pace
        self.body = bytearray()
        self.status = None
        self.length = None
        self.error = None
        self.go = threading.Event()  # set: read on at full speed
        self.started = threading.Event()

    def run(self):
        try:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * KiB)
            s.settimeout(60)
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
            self.length = int(m.group(1)) if m else None
            self.body += rest
            while True:
                if len(self.body) >= 256 * KiB:
                    self.started.set()
                    self.go.wait(60)
                c = s.recv(64 * KiB)
                if not c:
                    break
                self.body += c
            s.close()
        except Exception as e:  # noqa: BLE001 - judged by the test
            self.error = e
        self.started.set()


class TwoWorkers(GatewayTest):
    """The gateway with `workers = 2` (the main loop and one worker)."""

    def setUp(self):
        super().setUp()
        self.root = os.path.join(self.tmp, "www")
        os.makedirs(self.root)

    def put(self, name, size, seed):
        data = random_bytes(size, seed=seed)
        write_file(os.path.join(self.root, name), data)
        return data

    def start(self, max_size="1G", block_size="256K"):
        self.origin = self.nginx(self.root, picky=True)
        self.gw = self.gateway(cache_ini(self.http_mount("m", self.origin.url()), block_size=block_size,
                                         max_size=max_size, server="workers = 2"))
        return self.gw

    def api(self, method, path, body=None):
        c = http.client.HTTPConnection("127.0.0.1", self.gw.port, timeout=30)
        try:
            c.request(method, "/-/api/v1/" + path, body=None if body is None else json.dumps(body),
                      headers={"Content-Type": "application/json"})
            r = c.getresponse()
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
        finally:
            c.close()

    def warm(self, path, data, blocks):
        st, _, body = fetch(self.gw, path)
        self.assertEqual(st, 200)
        self.assertEqual(sha256(body), sha256(data))
        wait_listed(self.gw, blocks)

    def test_warm_reads_on_both_threads_are_byte_exact(self):
        size = 3 * MiB + 777
        data = self.put("w.bin", size, seed=41)
        gw = self.start()
        self.warm("/p/m/w.bin", data, 13)
        self.assertIn("slipstream_front_threads 2\n", gw.get("/-/metrics").body.decode())
        self.origin.clear_log()
        ranges = [(0, size - 1), (5, 70000), (262140, 262150), (size - 65536, size - 1), (1 << 20, (3 << 20) - 1)]
        results = []
        lock = threading.Lock()

        def client(i):
            for j in range(8):
                a, b = ranges[(i + j) % len(ranges)]
                r = gw.get("/p/m/w.bin", headers={"Range": "bytes=%d-%d" % (a, b)})
                with lock:
                    results.append((a, b, r.status, r.body, dict((k.lower(), v) for k, v in r.headers)))

        ts = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(120)
        self.assertEqual(len(results), 64)
        for a, b, st, body, h in results:
            self.assertEqual(st, 206, (a, b))
            self.assertEqual(body, data[a:b + 1], "range %d-%d not byte-exact" % (a, b))
            self.assertEqual(h.get("x-cache"), "HIT")
            self.assertEqual(h.get("content-range"), "bytes %d-%d/%d" % (a, b, size))
        # 64 connections spread by the kernel: both threads served warm hits.
        main_hits, worker_hits = thread_counter(gw, "hits", 0), thread_counter(gw, "hits", 1)
        print("\n    [fig] warm hits: main loop %d, worker %d; handoffs %d"
              % (main_hits, worker_hits, thread_counter(gw, "handoffs", 1)), end="")
        self.assertGreater(worker_hits, 0, "the worker thread served no warm hit")
        self.assertGreater(main_hits, 1, "the main loop served no warm hit")
        self.assertEqual(settled_entries(self.origin), [], "a warm read reached the origin")

    def test_handed_over_requests_keep_their_connection_and_pipelined_bytes(self):
        data = self.put("h.bin", 300 * KiB, seed=42)
        gw = self.start()
        self.warm("/p/m/h.bin", data, 2)
        # One connection: a warm hit, then (pipelined in one write) a miss
        # for a missing file and an admin route — whichever thread took the
        # connection, the answers come in order on it.
        for _ in range(6):
            s = socket.create_connection(("127.0.0.1", gw.port), timeout=30)
            s.sendall(b"GET /p/m/h.bin HTTP/1.1\r\nHost: gw\r\n\r\n"
                      b"GET /p/m/nope.bin HTTP/1.1\r\nHost: gw\r\n\r\n"
                      b"GET /-/health HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
            buf = b""
            while True:
                c = s.recv(1 << 16)
                if not c:
                    break
                buf += c
            s.close()
            statuses = [int(m) for m in re.findall(rb"HTTP/1\.1 (\d{3}) ", buf)]
            self.assertEqual(statuses, [200, 404, 200], buf[:300])
            self.assertIn(data, buf)

    def test_purge_while_workers_serve_never_yields_wrong_bytes(self):
        size = 4 * MiB
        data = self.put("p.bin", size, seed=43)
        gw = self.start()
        self.warm("/p/m/p.bin", data, 16)
        readers = [RawReader(gw.port, "/p/m/p.bin") for _ in range(8)]
        for r in readers:
            r.start()
        for r in readers:
            r.started.wait(30)
        st, res = self.api("POST", "purge", {"path": "/m/p.bin"})
        self.assertEqual(st, 200, res)
        for r in readers:
            r.go.set()
        for r in readers:
            r.join(60)
        short = 0
        for r in readers:
            self.assertEqual(r.status, 200, r.error)
            self.assertEqual(bytes(r.body), data[:len(r.body)], "a reader got bytes that are not the file's")
            short += len(r.body) < size
        print("\n    [fig] purge under 8 readers: %d ended short (never wrong bytes); worker requests %d"
              % (short, thread_counter(gw, "requests", 1)), end="")
        st, _, body = fetch(gw, "/p/m/p.bin")
        self.assertEqual(st, 200)
        self.assertEqual(sha256(body), sha256(data))
        self.assertEqual(gw.cli("cache", "verify").returncode, 0)

    def test_eviction_while_workers_serve_never_yields_wrong_bytes(self):
        size = 4 * MiB
        data = self.put("e.bin", size, seed=44)
        others = [self.put("o%d.bin" % i, size, seed=50 + i) for i in range(3)]
        gw = self.start(max_size="9M")
        self.warm("/p/m/e.bin", data, 16)
        readers = [RawReader(gw.port, "/p/m/e.bin") for _ in range(8)]
        for r in readers:
            r.start()
        for r in readers:
            r.started.wait(30)
        for i, o in enumerate(others):  # 12 MiB more through a 9 MiB cache: e.bin's blocks go
            st, _, body = fetch(gw, "/p/m/o%d.bin" % i)
            self.assertEqual(st, 200)
            self.assertEqual(sha256(body), sha256(o))
        for r in readers:
            r.go.set()
        for r in readers:
            r.join(60)
        for r in readers:
            self.assertEqual(r.status, 200, r.error)
            self.assertEqual(bytes(r.body), data[:len(r.body)], "a reader got bytes that are not the file's")
        m = re.search(r"(?m)^slipstream_cache_evicted_blocks_total (\d+)$", gw.get("/-/metrics").body.decode())
        self.assertTrue(m and int(m.group(1)) > 0, "nothing was evicted")
        self.assertEqual(gw.cli("cache", "verify").returncode, 0)
        st, _, body = fetch(gw, "/p/m/e.bin")
        self.assertEqual(sha256(body), sha256(data))


class CacheTwoWorkers(GatewayTest):
    """test_cache's coalescing and kill -9 tests with `workers = 2`."""

    server = "workers = 2"

    def setUp(self):
        super().setUp()
        self.root = os.path.join(self.tmp, "www")
        os.makedirs(self.root)

    put = BlockCache.put
    start = BlockCache.start
    assert_picky_ok = BlockCache.assert_picky_ok
    test_04_twenty_clients_on_one_cold_file_coalesce = BlockCache.test_04_twenty_clients_on_one_cold_file_coalesce
    test_05_kill9_mid_fill_then_restart_verifies = BlockCache.test_05_kill9_mid_fill_then_restart_verifies


if __name__ == "__main__":
    import unittest
    unittest.main()
