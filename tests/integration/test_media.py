"""Issue 11 item 3: media-aware prefetch, with real files made by ffmpeg.

A cold MP4 with `moov` at the end (no +faststart) and a cold MKV (Cues at
the end, a SeekHead at the start saying where): the player's first request
(`bytes=0-`, read a little, closed, as ffprobe does) makes the gateway fetch
the index region; a following request for that region is `X-Cache: HIT`
with no new origin request; ffprobe through the gateway reports the right
duration. `media_prefetch = 0` (and a rule with `media_prefetch = off`)
fetches nothing past what the client read.
"""

import http.client
import os
import re
import shutil
import struct
import subprocess
import time
import unittest

from harness import GatewayTest, wait_until

KiB = 1024
MiB = 1024 * 1024
BLOCK = 256 * KiB
CUES_ID = bytes.fromhex("1C53BB6B")


def make_media(dir):
    """A ~3 MiB moov-at-end MP4 and the same streams in Matroska."""
    mp4, mkv = os.path.join(dir, "film.mp4"), os.path.join(dir, "film.mkv")
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
                    "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25",
                    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", "12",
                    "-c:v", "libx264", "-preset", "ultrafast", "-b:v", "6M", "-g", "50", "-pix_fmt", "yuv420p",
                    "-c:a", "aac", "-b:a", "96k", mp4], check=True, timeout=120)
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-i", mp4, "-c", "copy", mkv],
                   check=True, timeout=120)
    return mp4, mkv


def top_boxes(data):
    out, off = [], 0
    while off + 8 <= len(data):
        n, typ = struct.unpack(">I4s", data[off:off + 8])
        if n == 1:
            n = struct.unpack(">Q", data[off + 8:off + 16])[0]
        elif n == 0:
            n = len(data) - off
        out.append((typ, off, n))
        off += n
    return out


def duration(src):
    p = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", src],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return float(p.stdout.strip())


def read_head(port, path, n):
    """The player's first request: bytes=0-, read n bytes, hang up."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path, headers={"Range": "bytes=0-"})
    r = conn.getresponse()
    body = r.read(n)
    conn.sock.close()
    conn.close()
    return r.status, body


@unittest.skipUnless(shutil.which("ffmpeg") and shutil.which("ffprobe"), "needs ffmpeg")
class MediaPrefetch(GatewayTest):
    def setUp(self):
        super().setUp()
        self.root = os.path.join(self.tmp, "www")
        os.makedirs(self.root)
        self.mp4, self.mkv = make_media(self.root)
        self.origin = self.nginx(self.root, picky=False)

    def gateway_for(self, mount_extra="", rules=""):
        return self.gateway(
            "[server]\nlog_level = debug\n[cache]\ndir = @CACHE@\nblock_size = 256K\nmax_size = 1G\n"
            "min_free = 0\n[mount m]\nsource = http\nbase_url = %s\nconnections = 4\n%s\n%s"
            % (self.origin.url("/"), mount_extra, rules))

    def index_of(self, gw, name):
        m = wait_until(lambda: re.search(r"event=media_prefetch path=/m/%s container=(\w+) index=(\d+)-(\d+)"
                                         % re.escape(name), gw.errors()), 10, what="the media_prefetch line")
        return m.group(1), int(m.group(2)), int(m.group(3))

    def check_index_is_a_hit(self, gw, name, data, begin):
        # Stored in the background: a HEAD says so without fetching anything.
        wait_until(lambda: gw.get("/p/m/" + name, method="HEAD",
                                  headers={"Range": "bytes=%d-" % begin}).header("X-Cache") == "HIT",
                   15, what="the index region to be stored")
        self.origin.entries()  # settle
        before = len(self.origin.entries())
        r = gw.get("/p/m/" + name, headers={"Range": "bytes=%d-" % begin})
        self.assertEqual(r.status, 206)
        self.assertEqual(r.body, data[begin:])
        self.assertEqual(r.header("X-Cache"), "HIT")
        self.assertEqual(len(self.origin.entries()), before, "the index request reached the origin")

    def test_mp4_moov_at_the_end_is_fetched_with_the_head(self):
        data = open(self.mp4, "rb").read()
        boxes = top_boxes(data)
        self.assertEqual([b[0] for b in boxes][-1], b"moov", boxes)
        moov = boxes[-1][1]
        gw = self.gateway_for()
        status, head = read_head(gw.port, "/p/m/film.mp4", 32 * KiB)
        self.assertEqual((status, head), (206, data[:32 * KiB]))
        container, begin, end = self.index_of(gw, "film.mp4")
        self.assertEqual(container, "mp4")
        self.assertEqual((begin, end), (moov, len(data)))
        # The origin was asked for the moov region after only the head request.
        wait_until(lambda: any(int(re.match(r"bytes=(\d+)-", e["range"]).group(1)) <= moov < int(
            re.match(r"bytes=\d+-(\d+)", e["range"]).group(1)) + 1 for e in self.origin.entries(settle=0)
            if e["uri"] == "/film.mp4" and e["range"].startswith("bytes=")), 10, what="the moov fetch")
        self.check_index_is_a_hit(gw, "film.mp4", data, moov)

    def test_mkv_cues_from_the_seekhead_are_fetched_with_the_head(self):
        data = open(self.mkv, "rb").read()
        gw = self.gateway_for()
        status, head = read_head(gw.port, "/p/m/film.mkv", 16 * KiB)
        self.assertEqual((status, head), (206, data[:16 * KiB]))
        container, begin, end = self.index_of(gw, "film.mkv")
        self.assertIn(container, ("matroska", "webm"))
        self.assertEqual(data[begin:begin + 4], CUES_ID, "the index region does not start at the Cues element")
        self.assertGreater(begin, 2 * BLOCK, "the Cues are not past the head in this file")
        self.check_index_is_a_hit(gw, "film.mkv", data, begin)

    def test_ffprobe_through_the_gateway_reports_the_duration(self):
        gw = self.gateway_for()
        for path in (self.mp4, self.mkv):
            name = os.path.basename(path)
            with self.subTest(name=name):
                self.assertAlmostEqual(duration(gw.url("/p/m/" + name)), duration(path), places=2)

    def test_media_prefetch_off_fetches_only_what_is_read(self):
        data = open(self.mp4, "rb").read()
        moov = top_boxes(data)[-1][1]
        for extra, rules in (("media_prefetch = 0\n", ""),
                             ("", "[rule nomedia]\next = mp4\naction = proxy\nmedia_prefetch = off\n")):
            with self.subTest(extra=extra, rules=rules):
                gw = self.gateway_for(extra, rules)
                self.origin.clear_log()
                read_head(gw.port, "/p/m/film.mp4", 32 * KiB)
                time.sleep(0.5)  # what would have been prefetched has had its chance
                ents = [e for e in self.origin.entries() if e["uri"] == "/film.mp4"]
                self.assertTrue(ents)
                for e in ents:
                    first = int(re.match(r"bytes=(\d+)-", e["range"]).group(1))
                    self.assertLess(first, moov - 2 * BLOCK, "fetched near moov with prefetch off: %r" % e)
                self.assertNotIn("event=media_prefetch", gw.errors())
                gw.cleanup()
