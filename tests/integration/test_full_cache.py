"""Issue 9 #14: the cache never makes a download fail. A cache on a file
system too small for `min_free` (the default 1G on a 20 MiB file system: the
cache is off, loudly), one that fills up mid-fill, and one whose file system
another program fills while the gateway runs: every download completes
byte-exact, streamed uncached from the upstream when the store cannot take
the bytes (a response whose head is out continues with If-Range).

A cache directory that is read-only at start is refused by `check` and
`run` with a clear message (test_damage); one the kernel turns read-only
under the gateway fails writes like a full one (the same path).

The small file systems are real tmpfs mounts (the tests run as root; they
skip, saying so, where mounting is not allowed)."""

import os
import subprocess
import tempfile
import threading

from harness import BIN, GatewayTest, random_bytes, sha256, write_file

MiB = 1024 * 1024


def mount_tmpfs(size):
    d = tempfile.mkdtemp(prefix="slip-fs-")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s" % size, "tmpfs", d], capture_output=True)
    if r.returncode != 0:
        os.rmdir(d)
        return None, r.stderr.decode()
    return d, ""


class FullCache(GatewayTest):
    def setUp(self):
        super().setUp()
        self.fs, why = mount_tmpfs("20m")
        if not self.fs:
            self.skipTest("cannot mount a tmpfs here: " + why)
        self._fixtures.append(self.unmount)
        self.root = os.path.join(self.tmp, "www")
        self.files = {}
        for i in range(6):
            d = random_bytes(8 * MiB + 1000 * i, seed=140 + i)
            write_file(os.path.join(self.root, "f%d.bin" % i), d)
            self.files["f%d.bin" % i] = d
        self.origin = self.nginx(self.root, picky=False)

    def unmount(self):
        subprocess.run(["umount", "-l", self.fs], capture_output=True)
        os.rmdir(self.fs)

    def start(self, cache_extra=""):
        return self.gateway("[server]\nadmin_allow = 127.0.0.1/32\n"
                            "[cache]\ndir = %s\nmax_size = 64M\n%s"
                            "[mount web]\nsource = http\nbase_url = %s\nconnections = 4\n"
                            % (os.path.join(self.fs, "cache"), cache_extra, self.origin.url()))

    def download_all(self, gw, parallel=True):
        got = {}

        def one(name):
            r = gw.get("/p/web/" + name, timeout=120)
            got[name] = (r.status, sha256(r.body))

        threads = [threading.Thread(target=one, args=(n,)) for n in self.files]
        for t in threads:
            t.start()
            if not parallel:
                t.join()
        for t in threads:
            t.join()
        for name, data in self.files.items():
            with self.subTest(name):
                self.assertEqual(got[name], (200, sha256(data)))

    def test_min_free_above_the_file_system_is_cache_off_and_downloads_complete(self):
        gw = self.start()  # the default min_free (1G) on a 20 MiB file system
        self.assertIn("event=cache_off", gw.errors())
        self.download_all(gw)
        # And again: nothing was cached, nothing went wrong.
        self.download_all(gw, parallel=False)
        self.assertIsNone(gw.proc.poll())

    def test_a_cache_that_fills_up_mid_fill(self):
        gw = self.start("min_free = 0\n")  # 48 MiB of files on 20 MiB
        self.download_all(gw)
        self.download_all(gw, parallel=False)
        self.assertIsNone(gw.proc.poll())
        r = subprocess.run([BIN, "cache", "verify", "-c", gw.ini],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_another_program_fills_the_disk(self):
        gw = self.start("min_free = 0\n")
        r = gw.get("/p/web/f0.bin")
        self.assertEqual(sha256(r.body), sha256(self.files["f0.bin"]))
        # Something else takes every free byte of the file system.
        with open(os.path.join(self.fs, "filler"), "wb") as f:
            try:
                while True:
                    f.write(b"\0" * MiB)
                    f.flush()
            except OSError:
                pass
        before = len(self.origin.entries())
        self.download_all(gw)
        self.assertIsNone(gw.proc.poll())
        # What was stored before is still served from the cache.
        r = gw.get("/p/web/f0.bin")
        self.assertEqual((r.status, r.header("X-Cache"), sha256(r.body)), (200, "HIT", sha256(self.files["f0.bin"])))
        self.assertGreater(len(self.origin.entries()), before)
        m = gw.get("/-/metrics").body.decode()
        self.assertRegex(m, r"slipstream_cache_bypassed_total [1-9]")
