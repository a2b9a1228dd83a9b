"""Issue 9, the cache directory under damage: a corrupted LMDB index (#3), a
data file cut short (#15), two gateways on one directory (#17), and `check`
judging the directories and min_free before a start (#21).

Everything runs the real gateway against a real nginx origin and asserts on
exit statuses (a signal is never an answer), the messages the user gets, the
SHA-256 of what the client got and exactly which ranges reached the origin.
"""

import os
import random
import re
import shutil
import stat
import subprocess
import tempfile
import time

from harness import BIN, GatewayTest, random_bytes, sha256, wait_until, write_file
from test_cache import cache_ini, data_files, fetch, parse_range, settled_entries, wait_listed, wait_out_change_window

KiB = 1024
MiB = 1024 * 1024
PAGE = 4096  # LMDB's page size on this platform


def run_gateway(ini, timeout=30):
    """`slipstream run` that is expected to refuse to start: returns the
    CompletedProcess (or fails the test if it keeps running)."""
    try:
        return subprocess.run([BIN, "run", "-c", ini], capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError("the gateway started (it should have refused)")


def run_gateway_briefly(ini, seconds=2):
    """`slipstream run` that may start: returns the CompletedProcess if it
    exited by itself within `seconds` (returncode < 0: a signal), else stops
    it with SIGTERM and returns one with returncode None."""
    p = subprocess.Popen([BIN, "run", "-c", ini], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = p.communicate(timeout=seconds)
        return subprocess.CompletedProcess(p.args, p.returncode, out, err)
    except subprocess.TimeoutExpired:
        p.terminate()
        out, err = p.communicate(timeout=15)
        if p.returncode != 0:
            return subprocess.CompletedProcess(p.args, p.returncode, out, err)
        return subprocess.CompletedProcess(p.args, None, out, err)


def text(p):
    return (p.stdout + p.stderr).decode(errors="replace")


class CacheDamage(GatewayTest):
    def setUp(self):
        super().setUp()
        self.root = os.path.join(self.tmp, "www")
        os.makedirs(self.root)

    def start(self, block_size="64K"):
        self.origin = self.nginx(self.root, picky=True)
        self.gw = self.gateway(cache_ini(self.http_mount("m", self.origin.url()), block_size=block_size))
        return self.gw

    def cli(self, *args):
        return self.gw.cli(*args)


class CorruptIndex(CacheDamage):
    """#3: random bytes over pages, bit flips, truncation of data.mdb: the
    gateway and the cache commands say "index corrupt" and exit 1, never die
    by a signal; `cache reset` then start works."""

    def corruptions(self, pristine):
        pages = len(pristine) // PAGE
        out = []
        rnd = random.Random(9)
        d = bytearray(pristine)
        d[2 * PAGE:] = bytes(rnd.randrange(256) for _ in range(len(d) - 2 * PAGE))
        out.append(("random bytes over pages 2..%d" % (pages - 1), bytes(d)))
        for seed in range(4):
            r = random.Random(seed)
            d = bytearray(pristine)
            for pg in range(2, pages):  # page headers: number, flags, free-space bounds
                for _ in range(3):
                    d[pg * PAGE + r.randrange(16)] ^= 1 << r.randrange(8)
            out.append(("bit flips in every page header (seed %d)" % seed, bytes(d)))
        out.append(("truncated to half", pristine[:len(pristine) // 2]))
        out.append(("truncated to its meta pages", pristine[:2 * PAGE]))
        return out

    def lmdb_dump(self, data):
        """mdb_dump's text of an index file's contents (LMDB's own reader,
        not ours), or None when it cannot read it (exit status, a signal,
        no end within 20 s)."""
        d = tempfile.mkdtemp(dir=self.tmp)
        path = os.path.join(d, "data.mdb")
        with open(path, "wb") as f:
            f.write(data)
        try:
            r = subprocess.run(["mdb_dump", "-a", "-n", path], capture_output=True, timeout=20)
        except subprocess.TimeoutExpired:
            return None
        finally:
            shutil.rmtree(d, ignore_errors=True)
        return r.stdout if r.returncode == 0 else None

    def test_corrupt_index_is_reported_never_a_signal_and_reset_recovers(self):
        files = {"f%02d.bin" % i: random_bytes(200 * KiB + i, seed=300 + i) for i in range(24)}
        for name, data in files.items():
            write_file(os.path.join(self.root, name), data)
        gw = self.start(block_size="64K")
        for name, data in files.items():
            st, _, body = fetch(gw, "/p/m/" + name)
            self.assertEqual((st, sha256(body)), (200, sha256(data)), name)
        wait_listed(gw, 24 * 4)
        gw.stop()
        index = os.path.join(gw.cache_dir, "index", "data.mdb")
        with open(index, "rb") as f:
            pristine = f.read()
        self.assertGreater(len(pristine) // PAGE, 8, "the index is too small to corrupt meaningfully")

        pristine_dump = self.lmdb_dump(pristine)
        self.assertIsNotNone(pristine_dump, "mdb_dump cannot read the pristine index")
        seen = 0
        for what, data in self.corruptions(pristine):
            with self.subTest(corruption=what):
                with open(index, "wb") as f:
                    f.write(data)
                if self.lmdb_dump(data) == pristine_dump:
                    # Flips that only hit what no reader looks at (free
                    # pages, page numbers, padding; it depends on the
                    # layout of this run's index): LMDB reads exactly what
                    # it read before, so there is nothing to report. It
                    # must still start or refuse, never die by a signal.
                    p = run_gateway_briefly(gw.ini)
                    self.assertIn(p.returncode, (0, 1, None), "%s: %s" % (what, text(p)[-2000:]))
                    continue
                seen += 1
                p = run_gateway(gw.ini)
                self.assertEqual(p.returncode, 1, "%s: gateway exit %s\n%s" % (what, p.returncode, text(p)[-2000:]))
                self.assertIn("index corrupt:", text(p))
                self.assertIn("move the cache directory away or run `slipstream cache reset", text(p))
                for cmd in (("cache", "stats"), ("cache", "verify"), ("cache", "verify", "--repair")):
                    c = self.cli(*cmd)
                    # A writer (verify --repair, like the gateway) rehearses every write and must
                    # refuse. A reader walks only the pages it reads: a flipped bit in a free page
                    # cannot hurt it, so it may report figures (exit 0) — but it never dies by a
                    # signal, and random bytes over the pages are always found.
                    must_refuse = cmd[-1] == "--repair" or what.startswith("random bytes")
                    allowed = (1,) if must_refuse else (0, 1)
                    self.assertIn(c.returncode, allowed, "%s: %s exit %s\n%s" % (what, cmd, c.returncode, text(c)))
                    if c.returncode == 1:
                        self.assertIn("index corrupt:", text(c), cmd)

        # Most variants change what LMDB reads whatever the layout (random
        # bytes, truncation): the check above must have had work to do.
        self.assertGreaterEqual(seen, 4, "too few corruptions changed the index")

        # reset removes the index and our data files, then the gateway starts
        # and fetches everything again, byte-exact.
        stray = os.path.join(gw.cache_dir, "data", "notes.txt")
        write_file(stray, b"not the cache's")
        r = self.cli("cache", "reset")
        self.assertEqual(r.returncode, 1, text(r))  # a file it did not make was left alone
        self.assertIn("removed the index and data", text(r))
        self.assertIn("left alone (not the cache's): %s" % stray, text(r))
        self.assertTrue(os.path.exists(stray))
        self.assertFalse(os.path.exists(index))
        self.assertEqual(data_files(gw), [])
        os.unlink(stray)
        gw.start()
        for name, data in files.items():
            st, h, body = fetch(gw, "/p/m/" + name)
            self.assertEqual((st, sha256(body)), (200, sha256(data)), name)
            self.assertEqual(h.get("x-cache"), "MISS")
        v = self.cli("cache", "verify")
        self.assertEqual(v.returncode, 0, text(v))

    def test_unreadable_records_are_dropped_at_open(self):
        # A record whose bytes LMDB reads fine but our decoder rejects is
        # not corruption of the index: opening drops it and the rest serves.
        data = random_bytes(256 * KiB, seed=77)
        write_file(os.path.join(self.root, "a.bin"), data)
        gw = self.start(block_size="64K")
        self.assertEqual(sha256(fetch(gw, "/p/m/a.bin")[2]), sha256(data))
        wait_listed(gw, 4)
        gw.stop()
        index = os.path.join(gw.cache_dir, "index")
        # Append a garbage record to the blocks database with the lmdb tools.
        p = subprocess.run(["mdb_load", "-T", "-s", "blocks", index], input=b"0123\ngarbage\n",
                           capture_output=True, timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr)
        v = self.cli("cache", "verify")
        self.assertEqual(v.returncode, 1, text(v))
        self.assertIn("bad index record of 7 bytes: unreadable", text(v))
        gw.start()
        self.assertIn("unreadable_records=1", gw.errors())
        self.assertEqual(sha256(fetch(gw, "/p/m/a.bin")[2]), sha256(data))
        v = self.cli("cache", "verify")
        self.assertEqual(v.returncode, 0, text(v))


class TruncatedBlockFile(CacheDamage):
    """#15: a data file shorter than its listed blocks is damage the gateway
    repairs by fetching those blocks again; `verify` reports it and
    `verify --repair` unlists them."""

    SIZE = 2 * MiB + 1000
    BS = 256 * KiB
    CUT = 5  # the data file is cut inside block 5

    def prepare(self):
        self.data = random_bytes(self.SIZE, seed=91)
        write_file(os.path.join(self.root, "t.bin"), self.data)
        gw = self.start(block_size="256K")
        st, _, body = fetch(gw, "/p/m/t.bin")
        self.assertEqual(sha256(body), sha256(self.data))
        self.nblocks = (self.SIZE + self.BS - 1) // self.BS
        wait_listed(gw, self.nblocks)
        settled_entries(self.origin)
        files = data_files(gw)
        self.assertEqual(len(files), 1, files)
        return gw, files[0]

    def cut(self, path):
        with open(path, "r+b") as f:
            f.truncate(4096 + self.CUT * self.BS + 1000)

    def assert_refetched_from_cut(self, entries):
        """Exactly the blocks from the cut on were fetched again."""
        self.assertTrue(entries, "nothing was fetched again")
        got = sorted(parse_range(e["range"], self.SIZE) for e in entries if e["range"] != "bytes=0-0")
        covered = 0
        for b, e in got:
            self.assertGreaterEqual(b, self.CUT * self.BS, "refetched a block before the cut: %r" % got)
            covered += e - b
        self.assertEqual(covered, self.SIZE - self.CUT * self.BS, got)

    def test_truncated_while_running_is_refetched_not_a_failure_forever(self):
        gw, path = self.prepare()
        wait_out_change_window()
        self.cut(path)
        v = self.cli("cache", "verify")
        self.assertEqual(v.returncode, 1, text(v))
        bad = [l for l in text(v).splitlines() if l.startswith("bad ")]
        self.assertEqual(len(bad), self.nblocks - self.CUT, text(v))
        self.assertIn("data file is shorter than its listed blocks", bad[0])
        self.origin.clear_log()
        for attempt in range(2):  # the second GET is a hit of the repaired blocks
            st, h, body = fetch(gw, "/p/m/t.bin")
            self.assertEqual(st, 200)
            self.assertEqual(len(body), self.SIZE, "attempt %d stopped at byte %d" % (attempt, len(body)))
            self.assertEqual(sha256(body), sha256(self.data))
        self.assert_refetched_from_cut(settled_entries(self.origin, "/t.bin"))
        self.assertIn("event=cache_block_corrupt", gw.errors())
        wait_until(lambda: self.cli("cache", "verify").returncode == 0, 10, interval=0.1,
                   what="cache verify to pass after the refetch")

    def test_truncated_while_stopped_verify_repair_then_refetch(self):
        gw, path = self.prepare()
        gw.stop()
        self.cut(path)
        v = self.cli("cache", "verify")
        self.assertEqual(v.returncode, 1, text(v))
        self.assertIn("run `slipstream cache verify --repair`", text(v))
        r = self.cli("cache", "verify", "--repair")
        self.assertEqual(r.returncode, 1, text(r))
        self.assertIn("repaired: %d bad blocks unlisted" % (self.nblocks - self.CUT), text(r))
        v = self.cli("cache", "verify")
        self.assertEqual(v.returncode, 0, text(v))
        self.assertIn("verified %d blocks" % self.CUT, text(v))
        gw.start()
        self.origin.clear_log()
        st, h, body = fetch(gw, "/p/m/t.bin")
        self.assertEqual((st, sha256(body)), (200, sha256(self.data)))
        self.assert_refetched_from_cut(settled_entries(self.origin, "/t.bin"))

    def test_truncated_while_stopped_is_unlisted_at_open(self):
        gw, path = self.prepare()
        gw.stop()
        self.cut(path)
        gw.start()
        self.assertIn("event=cache_block_truncated", gw.errors())
        self.assertIn("truncated_blocks=%d" % (self.nblocks - self.CUT), gw.errors())
        self.assertEqual(os.path.getsize(path), 4096 + self.SIZE, "the file got its length back")
        self.origin.clear_log()
        st, h, body = fetch(gw, "/p/m/t.bin")
        self.assertEqual((st, sha256(body)), (200, sha256(self.data)))
        self.assertEqual(h.get("x-cache"), "PARTIAL")
        self.assert_refetched_from_cut(settled_entries(self.origin, "/t.bin"))


class OneGatewayPerCacheDir(CacheDamage):
    """#17: the cache directory is locked; a second gateway refuses to start
    naming the directory and the holder's pid; `cache reset` refuses while it
    runs; read-only commands say the figures may be moving."""

    def test_second_gateway_refuses_and_reset_waits_for_the_first(self):
        data = random_bytes(512 * KiB, seed=5)
        write_file(os.path.join(self.root, "a.bin"), data)
        gw = self.start()
        self.assertEqual(sha256(fetch(gw, "/p/m/a.bin")[2]), sha256(data))
        wait_listed(gw, 8)
        p = run_gateway(gw.ini)
        self.assertEqual(p.returncode, 1, text(p))
        self.assertIn("cache directory %s is in use by another slipstream (pid %d)"
                      % (gw.cache_dir, gw.proc.pid), text(p))
        # The first one was not disturbed.
        st, h, body = fetch(gw, "/p/m/a.bin")
        self.assertEqual((st, h.get("x-cache"), sha256(body)), (200, "HIT", sha256(data)))

        r = self.cli("cache", "reset")
        self.assertEqual(r.returncode, 1, text(r))
        self.assertIn("cache reset refused", text(r))
        self.assertIn("pid %d" % gw.proc.pid, text(r))
        self.assertEqual(len(data_files(gw)), 1)
        r = self.cli("cache", "verify", "--repair")
        self.assertEqual(r.returncode, 1, text(r))
        self.assertIn("pid %d" % gw.proc.pid, text(r))
        for cmd in (("cache", "stats"), ("cache", "verify")):
            c = self.cli(*cmd)
            self.assertEqual(c.returncode, 0, text(c))
            self.assertIn("note: a gateway (pid %d) is running on this cache: the figures may be moving"
                          % gw.proc.pid, text(c))

        gw.stop()
        c = self.cli("cache", "stats")
        self.assertNotIn("note: a gateway", text(c))
        r = self.cli("cache", "reset")
        self.assertEqual(r.returncode, 0, text(r))
        gw.start()  # the lock went with the first process
        st, h, body = fetch(gw, "/p/m/a.bin")
        self.assertEqual((st, h.get("x-cache"), sha256(body)), (200, "MISS", sha256(data)))

    def test_a_killed_gateway_leaves_no_lock_behind(self):
        data = random_bytes(100 * KiB, seed=6)
        write_file(os.path.join(self.root, "a.bin"), data)
        gw = self.start()
        self.assertEqual(sha256(fetch(gw, "/p/m/a.bin")[2]), sha256(data))
        gw.kill9()
        gw.start()
        self.assertEqual(sha256(fetch(gw, "/p/m/a.bin")[2]), sha256(data))


class CheckCommand(GatewayTest):
    """#21: `slipstream check` fails when the user running it cannot write
    (or create) the cache directory or state_dir, and warns loudly when
    min_free leaves the cache no room at all (the gateway warns too)."""

    NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]

    def setUp(self):
        super().setUp()
        os.chmod(self.tmp, 0o755)  # nobody must read the INI here

    def write_ini(self, cache_dir, state_dir=None, min_free="0"):
        ini = ("[server]\nlisten = 127.0.0.1:0\naccess_log = off\n%s"
               "[cache]\ndir = %s\nmin_free = %s\n"
               "[mount m]\nsource = http\nbase_url = http://127.0.0.1:9/\n"
               % ("state_dir = %s\n" % state_dir if state_dir else "", cache_dir, min_free))
        if state_dir:
            ini += ("[account a]\nrefresh_token = rt\noauth_token_url = http://127.0.0.1:9/t\n"
                    "[mount al]\nsource = aliyundrive_open\naccount = a\n")
        path = os.path.join(self.tmp, "check.ini")
        with open(path, "w") as f:
            f.write(ini)
        os.chmod(path, 0o644)
        return path

    def check(self, ini, as_nobody=False):
        return subprocess.run((self.NOBODY if as_nobody else []) + [BIN, "check", "-c", ini],
                              capture_output=True, timeout=30)

    def test_cache_dir_the_user_cannot_write(self):
        cache = os.path.join(self.tmp, "cache")
        os.mkdir(cache, 0o755)  # root's, not writable by nobody
        ini = self.write_ini(cache)
        self.assertEqual(self.check(ini).returncode, 0, text(self.check(ini)))
        p = self.check(ini, as_nobody=True)
        self.assertEqual(p.returncode, 2, text(p))
        self.assertIn("[cache] dir: cannot write in %s as uid 65534: Permission denied" % cache, text(p))
        self.assertEqual(os.listdir(cache), [], "check left something behind")

    def test_cache_dir_the_user_cannot_create(self):
        parent = os.path.join(self.tmp, "locked")
        os.mkdir(parent, 0o755)
        ini = self.write_ini(os.path.join(parent, "deep", "cache"))
        p = self.check(ini, as_nobody=True)
        self.assertEqual(p.returncode, 2, text(p))
        self.assertIn("[cache] dir: cannot create %s/deep/cache as uid 65534: %s: Permission denied"
                      % (parent, parent), text(p))
        self.assertFalse(os.path.exists(os.path.join(parent, "deep")), "check must not create it")
        # A regular file in the way is an error for anyone.
        blocker = os.path.join(self.tmp, "file")
        write_file(blocker, b"x")
        p = self.check(self.write_ini(os.path.join(blocker, "cache")))
        self.assertEqual(p.returncode, 2, text(p))
        self.assertIn("cannot use %s/cache: Not a directory" % blocker, text(p))
        p = self.check(self.write_ini(blocker))
        self.assertIn("%s exists and is not a directory" % blocker, text(p))

    def test_state_dir_the_user_cannot_write(self):
        cache = os.path.join(self.tmp, "cache")
        os.mkdir(cache, 0o777)
        os.chmod(cache, 0o777)
        state = os.path.join(self.tmp, "state")
        os.mkdir(state, 0o755)
        ini = self.write_ini(cache, state_dir=state)
        p = self.check(ini, as_nobody=True)
        self.assertEqual(p.returncode, 2, text(p))
        self.assertIn("[server] state_dir: cannot write in %s as uid 65534" % state, text(p))
        self.assertNotIn("[cache] dir", text(p))
        os.chmod(state, 0o777)
        p = self.check(ini, as_nobody=True)
        self.assertEqual(p.returncode, 0, text(p))

    def test_min_free_above_the_file_system_size_is_a_loud_warning(self):
        cache = os.path.join(self.tmp, "cache")
        ini = self.write_ini(cache, min_free="1000T")
        p = self.check(ini)
        self.assertEqual(p.returncode, 0, text(p))
        self.assertIn("warning: [cache] min_free (1099511627776000 bytes) is not below the size of "
                      "the file system holding %s" % cache, text(p))
        self.assertIn("nothing can ever be stored, the cache is off", text(p))
        p = self.check(self.write_ini(cache, min_free="1M"))
        self.assertNotIn("warning", text(p))
        # The gateway says it at start, as a warning in its log.
        gw = self.gateway("[server]\n[cache]\ndir = %s\nmin_free = 1000T\n"
                          "[mount m]\nsource = http\nbase_url = http://127.0.0.1:9/\n" % cache)
        line = [l for l in gw.errors().splitlines() if "event=cache_off" in l]
        self.assertEqual(len(line), 1, gw.errors())
        self.assertIn("level=warn", line[0])
        self.assertIn("nothing can ever be stored", line[0])

    def test_real_world_values_pass_check(self):
        # #18/#21: a 1.5G size, a 1.5h duration, a JWT refresh token of 700
        # characters in the INI, a 4 KiB cookie header, and secrets from files.
        cache = os.path.join(self.tmp, "cache")
        jwt = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9." + "Q" * 600 + "." + "s" * 342
        secret = os.path.join(self.tmp, "sign_secret")
        write_file(secret, b"from-a-file\n")
        ini = os.path.join(self.tmp, "real.ini")
        with open(ini, "w") as f:
            f.write("[server]\nlisten = 127.0.0.1:0\nsign_secret_file = sign_secret\nstate_dir = %s/state\n"
                    "[cache]\ndir = %s\nmax_size = 1.5G\nmin_free = 0.5G\n"
                    "[account a]\nrefresh_token = %s\noauth_token_url = http://127.0.0.1:9/t\n"
                    "[mount al]\nsource = aliyundrive_open\naccount = a\nrevalidate = 1.5h\n"
                    "[mount m]\nsource = http\nbase_url = http://127.0.0.1:9/\n"
                    "header = Cookie: __puus=%s; __pus=x\n"
                    % (self.tmp, cache, jwt, "c" * 4096))
        p = self.check(ini)
        self.assertEqual(p.returncode, 0, text(p))
        self.assertIn("ok (2 mounts, 0 rules)", text(p))
        # Both a secret and its file, and a header that would inject: errors at their lines.
        with open(ini, "a") as f:
            f.write("header = X-A: a\rb\n[server]\nsign_secret = also\n")
        p = self.check(ini)
        self.assertEqual(p.returncode, 2, text(p))
        self.assertIn("real.ini:20: [mount m] header: header 'X-A': value contains CR, LF or NUL", text(p))
        self.assertIn("real.ini:22: [server] sign_secret: give either sign_secret or its _file, not both "
                      "(sign_secret_file is on line 3)", text(p))
        self.assertNotIn("from-a-file", text(p))
