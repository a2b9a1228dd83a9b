"""Issue 11: fetch like a player thinks.

- A scripted seek storm against a real nginx (limit_rate, so that fetches are
  still running when the player jumps): the origin's log shows no more than
  `connections` overlapping requests for the file, nothing fetched more than
  one block beyond what each seek read, origin bytes close to what the
  client read, every response byte-exact.

The media-index, link-expiry, revalidation and full-disk tests live next to
this one (test_media.py, test_link_expiry.py, test_disk_full.py).
"""

import http.client
import os
import random
import re
import time

from harness import GatewayTest, random_bytes, write_file

KiB = 1024
MiB = 1024 * 1024


def parse_range(header, size):
    m = re.match(r"bytes=(\d+)-(\d*)$", header)
    assert m, "origin saw an unexpected Range header %r" % header
    begin = int(m.group(1))
    end = int(m.group(2)) + 1 if m.group(2) else size
    return begin, min(end, size)


def settled(origin, uri, quiet=1.0, timeout=30):
    """nginx's log for `uri` once it stopped changing for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while True:
        cur = [e for e in origin.entries(settle=0) if e["uri"] == uri]
        key = (len(cur), sum(e["bytes"] for e in cur))
        now = time.monotonic()
        if key != last:
            last, since = key, now
        elif now - since >= quiet:
            return cur
        if now > deadline:
            raise AssertionError("origin log still changing after %.0fs" % timeout)
        time.sleep(0.05)


def max_overlap(entries, slack=0.002):
    """Most requests open at once, from nginx's start/end times (millisecond
    resolution: one that ends within `slack` of another's start does not
    overlap it)."""
    events = []
    for e in entries:
        events.append((e["start"] + slack, 1))
        events.append((e["end"], -1))
    events.sort(key=lambda x: (x[0], x[1]))
    cur = best = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


def seek(port, path, pos, max_bytes, max_secs):
    """One player seek: `Range: bytes=pos-`, read up to max_bytes or for
    max_secs, then drop the connection. Returns (status, body, t_open, t_close)."""
    t0 = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path, headers={"Range": "bytes=%d-" % pos, "User-Agent": "StormPlayer/1.0"})
    r = conn.getresponse()
    body = b""
    while len(body) < max_bytes and time.monotonic() - t0 < max_secs:
        chunk = r.read1(min(64 * KiB, max_bytes - len(body)))
        if not chunk:
            break
        body += chunk
    status = r.status
    conn.sock.close()  # abandon it, as a player does on a seek
    conn.close()
    return status, body, t0, time.monotonic()


class SeekStorm(GatewayTest):
    CONNECTIONS = 4
    BLOCK = 1 * MiB
    SIZE = 96 * MiB
    SEEKS = 15
    READ = 512 * KiB

    def test_seek_storm_stays_within_connections_and_close_to_what_was_read(self):
        root = os.path.join(self.tmp, "www")
        data = random_bytes(self.SIZE, seed=11)
        write_file(os.path.join(root, "film.mkv"), data)
        # 2 MiB/s per connection: a block's pieces are still running when the player jumps.
        origin = self.nginx(root, picky=False, limit_rate="2m")
        gw = self.gateway(
            "[server]\nlog_level = debug\n[cache]\ndir = @CACHE@\nblock_size = 1M\nmax_size = 1G\nmin_free = 0\n"
            "[mount m]\nsource = http\nbase_url = %s\nconnections = %d\n" % (origin.url("/"), self.CONNECTIONS))
        rnd = random.Random(7)
        positions = [rnd.randrange(0, self.SIZE - 4 * MiB) for _ in range(self.SEEKS)]
        client = 0
        seeks = []
        for pos in positions:
            status, body, t_open, t_close = seek(gw.port, "/p/m/film.mkv", pos, self.READ, 2.0)
            self.assertEqual(status, 206)
            self.assertGreater(len(body), 0, "seek at %d got no body byte" % pos)
            self.assertEqual(body, data[pos:pos + len(body)], "seek at %d: wrong bytes" % pos)
            client += len(body)
            seeks.append((pos, len(body)))
            time.sleep(0.05)
        entries = settled(origin, "/film.mkv")
        # What the gateway handed each seek's socket (more than the player
        # read: the kernel's buffers took some): the position its reader reached.
        sent = {}
        for line in gw.wait_access(self.SEEKS):
            m = re.match(r"bytes=(\d+)-$", line.get("range", "").strip('"'))
            if m:
                sent[int(m.group(1))] = int(line["bytes"])
        self.assertTrue(entries)
        fetched = sum(e["bytes"] for e in entries)
        overlap = max_overlap(entries)
        print("\n    [fig] storm: %d seeks read %.1f MiB, origin sent %.1f MiB (%.2f x) in %d requests, "
              "most at once %d" % (len(seeks), client / MiB, fetched / MiB, fetched / client, len(entries),
                                   overlap), end="")
        # Never more than `connections` requests for the file at once.
        self.assertLessEqual(overlap, self.CONNECTIONS, "\n".join(
            "%s %.3f-%.3f %d" % (e["range"], e["start"], e["end"], e["bytes"]) for e in entries))
        # Nothing fetched more than one block beyond what each seek read.
        for e in entries:
            if e["range"] == "bytes=0-0":
                continue
            begin, end = parse_range(e["range"], self.SIZE)
            owner = max((p for p, _ in seeks if p // self.BLOCK <= begin // self.BLOCK), default=None)
            self.assertIsNotNone(owner, "origin request %s before every seek" % e["range"])
            reached = owner + max(dict(seeks)[owner], sent.get(owner, 0))
            limit = ((reached - 1) // self.BLOCK + 2) * self.BLOCK
            self.assertLessEqual(end, limit, "request %s for the seek at %d (reached %d) goes past %d"
                                 % (e["range"], owner, reached, limit))
        # Origin bytes close to what the client read (the target).
        self.assertLessEqual(fetched, 2 * client + self.SEEKS * self.BLOCK)
        metrics = gw.get("/-/metrics").body.decode()
        cancelled = int(re.search(r"^slipstream_cancelled_blocks_total (\d+)$", metrics, re.M).group(1))
        self.assertGreater(cancelled, 0, "no stale read-ahead was cut")
        # The adaptive count for the origin's host is exported, within the ceiling.
        m = re.search(r'^slipstream_upstream_host_connections\{host="http://127\.0\.0\.1:%d"\} (\d+)$'
                      % origin.port, metrics, re.M)
        self.assertIsNotNone(m, metrics)
        self.assertTrue(1 <= int(m.group(1)) <= self.CONNECTIONS, m.group(0))


class FusedProbe(GatewayTest):
    """Issue 11 item 5: a cold open asks for the block its reader needs (the
    answer's Content-Range gives the size) instead of a separate bytes=0-0
    probe; revalidation stays a 1-byte probe."""

    def test_cold_open_is_one_request_revalidation_a_probe(self):
        root = os.path.join(self.tmp, "www")
        big, small = random_bytes(3 * MiB + 5, seed=21), random_bytes(100_000, seed=22)
        write_file(os.path.join(root, "big.bin"), big)
        write_file(os.path.join(root, "small.bin"), small)
        origin = self.nginx(root, picky=False)
        gw = self.gateway(
            "[server]\n[cache]\ndir = @CACHE@\nblock_size = 1M\nmax_size = 1G\nmin_free = 0\n"
            "[mount m]\nsource = http\nbase_url = %s\nconnections = 4\nrevalidate = 0\n" % origin.url("/"))
        # A range inside block 2: no probe; the first request is the first
        # piece of block 2 (from the reader's page, as the planner splits a
        # block `connections` ways), the rest of the block follows in
        # parallel once the size is known: block 2 exactly once, nothing else.
        r = gw.get("/p/m/big.bin", headers={"Range": "bytes=2100000-2100999"})
        self.assertEqual(r.status, 206)
        self.assertEqual(r.body, big[2100000:2101000])
        self.assertEqual(r.header("Content-Range"), "bytes 2100000-2100999/%d" % len(big))
        ents = settled(origin, "/big.bin", quiet=0.5)
        pieces = ["bytes=%d-%d" % (2 * MiB + i * 256 * KiB, 2 * MiB + (i + 1) * 256 * KiB - 1) for i in range(4)]
        self.assertEqual(min(ents, key=lambda e: e["start"])["range"], pieces[0], ents)
        self.assertEqual(sorted(e["range"] for e in ents), sorted(pieces), ents)
        self.assertEqual(sum(e["bytes"] for e in ents), MiB)
        # A whole small file: one request, its first piece (the file ends in it).
        r = gw.get("/p/m/small.bin")
        self.assertEqual((r.status, r.body), (200, small))
        ents = settled(origin, "/small.bin", quiet=0.5)
        self.assertEqual([e["range"] for e in ents], ["bytes=0-262143"], ents)
        self.assertEqual(sum(e["bytes"] for e in ents), len(small))
        # The last block of big.bin is 5 bytes: asked for whole, answered short.
        r = gw.get("/p/m/big.bin", headers={"Range": "bytes=-3"})
        self.assertEqual((r.status, r.body), (206, big[-3:]))
        # Known now: revalidation (revalidate = 0) is a 1-byte probe again.
        origin.clear_log()
        r = gw.get("/p/m/small.bin")
        self.assertEqual((r.status, r.body, r.header("X-Cache")), (200, small, "HIT"))
        ents = settled(origin, "/small.bin", quiet=0.5)
        self.assertEqual([e["range"] for e in ents], ["bytes=0-0"], ents)


class RevalidateBeforeHeaders(GatewayTest):
    """Issue 9 #16: once `revalidate` is due, the gateway asks the upstream
    before the response headers go out, so the first reader after a change
    gets the new version whole — never the old size's headers and a cut."""

    def test_first_reader_after_a_change_gets_the_new_version_whole(self):
        root = os.path.join(self.tmp, "www")
        path = os.path.join(root, "f.bin")
        old = random_bytes(3 * MiB, seed=31)
        write_file(path, old)
        origin = self.nginx(root, picky=False)
        gw = self.gateway(
            "[server]\n[cache]\ndir = @CACHE@\nblock_size = 1M\nmax_size = 1G\nmin_free = 0\n"
            "[mount m]\nsource = http\nbase_url = %s\nrevalidate = 1s\n" % origin.url("/"))
        r = gw.get("/p/m/f.bin")
        self.assertEqual((r.status, r.body), (200, old))
        gw.wait_idle(30)  # the disk lists the blocks behind the client
        r = gw.get("/p/m/f.bin", headers={"Range": "bytes=100-199"})
        self.assertEqual((r.status, r.body, r.header("X-Cache")), (206, old[100:200], "HIT"))
        for i, size in enumerate((2 * MiB + 7, 4 * MiB + 1, 4 * MiB + 1)):
            new = random_bytes(size, seed=40 + i)
            write_file(path, new)
            os.utime(path, (time.time() + 10 + i, time.time() + 10 + i))  # a new ETag even within a second
            time.sleep(1.2)  # revalidate (1 s) is due
            for rng, want in (("", new), ("bytes=%d-" % (size - 1000), new[-1000:])):
                with self.subTest(change=i, range=rng):
                    r = gw.get("/p/m/f.bin", headers={"Range": rng} if rng else None)
                    self.assertEqual(r.status, 206 if rng else 200)
                    self.assertEqual(r.header("Content-Length"), str(len(want)))
                    self.assertEqual(r.body, want)
            time.sleep(1.2)

    def test_a_reader_still_on_the_old_version_does_not_hold_back_the_new_one(self):
        # The object is in memory (a client is still reading the old
        # version, slowly) when the upstream changes and revalidate is due.
        root = os.path.join(self.tmp, "www")
        path = os.path.join(root, "f.bin")
        old = random_bytes(8 * MiB, seed=51)
        write_file(path, old)
        origin = self.nginx(root, picky=False)
        gw = self.gateway(
            "[server]\n[cache]\ndir = @CACHE@\nblock_size = 1M\nmax_size = 1G\nmin_free = 0\n"
            "[mount m]\nsource = http\nbase_url = %s\nrevalidate = 1s\n" % origin.url("/"))
        slow = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
        slow.request("GET", "/p/m/f.bin")
        resp = slow.getresponse()
        got = resp.read(64 * KiB)  # then it stops reading
        new = random_bytes(5 * MiB + 3, seed=52)
        write_file(path, new)
        os.utime(path, (time.time() + 10, time.time() + 10))
        time.sleep(1.2)
        r = gw.get("/p/m/f.bin")
        self.assertEqual((r.status, r.header("Content-Length")), (200, str(len(new))))
        self.assertEqual(r.body, new)
        # The old reader: old bytes as far as it gets, never new ones.
        try:
            got += resp.read()
        except http.client.IncompleteRead as e:
            got += e.partial
        slow.close()
        self.assertEqual(got, old[:len(got)])
