"""Real clients where users use them, through the gateway in front of the
picky nginx origin: wget (and its resume), aria2c with several connections,
curl's resume, and ffprobe reading an MP4 whose moov atom is at the end."""

import json
import os
import re
import subprocess
import time

from harness import GatewayTest, random_bytes, sha256, sha256_file, write_file

MiB = 1 << 20


class RealClients(GatewayTest):
    def setUp(self):
        super().setUp()
        self.root = os.path.join(self.tmp, "www")
        self.data = random_bytes(6 * MiB + 4321, seed=21)
        write_file(os.path.join(self.root, "film.bin"), self.data)
        self.origin = self.nginx(self.root, picky=True)
        self.gw = self.gateway("[cache]\ndir = @CACHE@\nblock_size = 256K\nmax_size = 1G\nmin_free = 0\n" +
                               self.http_mount("m", self.origin.url()))
        self.url = self.gw.url("/p/m/film.bin")

    def run_tool(self, argv, timeout=60):
        r = subprocess.run(argv, capture_output=True, timeout=timeout, cwd=self.tmp)
        self.assertEqual(r.returncode, 0, "%s failed:\n%s" % (argv[0], r.stderr.decode(errors="replace")[-2000:]))
        return r

    def test_wget_download_and_resume(self):
        out = os.path.join(self.tmp, "w.bin")
        self.run_tool(["wget", "-q", "-O", out, self.url])
        self.assertEqual(sha256_file(out), sha256(self.data))
        # A partial file resumed with -c: wget sends Range: bytes=N- and
        # appends the 206 body.
        part = os.path.join(self.tmp, "part.bin")
        with open(part, "wb") as f:
            f.write(self.data[:1_234_567])
        self.run_tool(["wget", "-q", "-c", "-O", part, self.url])
        self.assertEqual(sha256_file(part), sha256(self.data))

    def test_curl_resume(self):
        part = os.path.join(self.tmp, "c.bin")
        with open(part, "wb") as f:
            f.write(self.data[:3_000_001])
        r = self.run_tool(["curl", "-sS", "-C", "-", "-o", part, "-w", "%{http_code}", self.url])
        self.assertEqual(r.stdout, b"206")
        self.assertEqual(sha256_file(part), sha256(self.data))

    def test_aria2c_parallel_client(self):
        self.run_tool(["aria2c", "-q", "-x4", "-s4", "-k1M", "--file-allocation=none", "-d", self.tmp,
                       "-o", "a.bin", self.url])
        self.assertEqual(sha256_file(os.path.join(self.tmp, "a.bin")), sha256(self.data))
        # The gateway fetched each byte once, whatever aria2c's ranges were.
        sent = sum(e["bytes"] for e in self.origin.entries() if e["uri"] == "/film.bin")
        self.assertLessEqual(sent, len(self.data) * 1.01)


class Ffprobe(GatewayTest):
    def test_ffprobe_reads_moov_at_the_end_then_hits_the_cache(self):
        root = os.path.join(self.tmp, "www")
        os.makedirs(root)
        mp4 = os.path.join(root, "clip.mp4")
        # moov at the end (no +faststart): a player must read the tail first.
        subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=duration=12:size=640x360:rate=25",
                        "-c:v", "mpeg4", "-q:v", "3", "-y", mp4], check=True, timeout=120)
        with open(mp4, "rb") as f:
            raw = f.read()
        self.assertGreater(raw.rfind(b"moov"), raw.rfind(b"mdat"), "test clip should have moov after mdat")
        origin = self.nginx(root, picky=True)
        gw = self.gateway("[cache]\ndir = @CACHE@\nblock_size = 64K\nmax_size = 1G\nmin_free = 0\n" +
                          self.http_mount("m", origin.url()))

        def probe():
            r = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration:stream=codec_name,width,height",
                                "-of", "json", gw.url("/p/m/clip.mp4")], capture_output=True, timeout=60)
            self.assertEqual(r.returncode, 0, r.stderr.decode(errors="replace"))
            return json.loads(r.stdout)

        info = probe()
        n1 = len([a for a in gw.wait_access(1) if a.get("path") == "/p/m/clip.mp4"])
        self.assertAlmostEqual(float(info["format"]["duration"]), 12.0, delta=0.1)
        self.assertEqual(info["streams"][0]["codec_name"], "mpeg4")
        self.assertEqual((info["streams"][0]["width"], info["streams"][0]["height"]), (640, 360))
        self.assertGreater(origin.body_bytes("/clip.mp4"), 0)
        # The same probe again: its jump to moov is a hit, nothing goes
        # upstream for it. (The gateway sends a client more than ffprobe
        # reads before it hangs up — as fast as it can, so further from the
        # cache than from the origin — and read-ahead that only a client that
        # left wanted is cut off (issue 11): a request that starts in the
        # head may still fetch bytes past what the first probe was sent,
        # never the same bytes twice.)
        info2 = probe()
        self.assertEqual(info2, info)
        second = [a for a in gw.wait_access(n1 + 1) if a.get("path") == "/p/m/clip.mp4"][n1:]
        self.assertTrue(second)
        moov = raw.rfind(b"moov") - 4
        for a in second:
            first_byte = int(re.match(r'"?bytes=(\d+)-', a.get("range", "")).group(1))
            if first_byte >= moov:  # the index
                self.assertEqual((a.get("cache"), a.get("upstream_bytes")), ("HIT", "0"), a)
        # Nothing stored was fetched again: at most a piece cut short on the way.
        quiet, since = origin.body_bytes("/clip.mp4"), time.monotonic()
        while time.monotonic() - since < 0.6:
            now = origin.body_bytes("/clip.mp4")
            if now != quiet:
                quiet, since = now, time.monotonic()
        self.assertLessEqual(quiet, len(raw) + 2 * 64 * 1024)
