"""Issue 9 #11 and #12: failures that cannot succeed on a retry fail at once,
and links a source returns are checked before anything uses them.

#11: connection refused and an unknown host are a 502 at once (the reason
names the host and the error), on the cache path and on `cache = off`: the
retry counter stays at 0 (it used to take five retries and ~16 s).

#12: an AList whose link has a space, CR/LF, credentials, a link-local
address, or points at the gateway itself gets a 502 `source_bad_link`; the
link is never cached (the next request asks AList again) and with
`delivery = redirect` never becomes a 302 without a Location. A link that
fails inside curl (connection refused) is forgotten: once AList returns a
good one, the very next request works.
"""

import re

from harness import GatewayTest, random_bytes, sha256
from test_hostile_sources import RawAList

KiB = 1024


def metric(gw, name):
    m = re.search(r"^%s (\d+)" % re.escape(name), gw.get("/-/metrics").body.decode(), re.M)
    return int(m.group(1)) if m else None


def link(url):
    return {"code": 200, "message": "success", "data": {"url": url, "header": {}}}


class PermanentFailuresTest(GatewayTest):
    def test_refused_and_unknown_host_fail_at_once(self):
        gw = self.gateway(
            "[cache]\ndir = @CACHE@\nmin_free = 0\n"
            "[mount r]\nsource = http\nbase_url = http://127.0.0.1:1\n"
            "[mount rs]\nsource = http\nbase_url = http://127.0.0.1:1\ncache = off\n"
            "[mount u]\nsource = http\nbase_url = http://no-such-host.invalid\n"
            "[mount us]\nsource = http\nbase_url = http://no-such-host.invalid\ncache = off\n")
        for path, host in (("/p/r/f.bin", "127.0.0.1:1"), ("/p/rs/f.bin", "127.0.0.1:1"),
                           ("/p/u/f.bin", "no-such-host.invalid"), ("/p/us/f.bin", "no-such-host.invalid")):
            r = gw.get(path)
            text = r.body.decode(errors="replace")
            self.assertEqual(r.status, 502, "%s: %s" % (path, text))
            self.assertIn("upstream connection failed", text, path)
            self.assertIn(host, text, path)
        self.assertEqual(metric(gw, "slipstream_upstream_retries_total"), 0, gw.errors()[-3000:])


class LinkChecksTest(GatewayTest):
    def setUp(self):
        super().setUp()
        self.data = random_bytes(200 * KiB, seed=12)
        self.origin = self.scripted({"/f.bin": self.data})
        self.alist = RawAList({})
        self._fixtures.append(self.alist.stop)

    def gw(self, extra=""):
        return self.gateway("[cache]\ndir = @CACHE@\nmin_free = 0\n"
                            "[mount a]\nsource = alist\nurl = %s\ntoken = t\n"
                            "[mount r]\nsource = alist\nurl = %s\ntoken = t\ndelivery = redirect\n%s"
                            % (self.alist.url(), self.alist.url(), extra))

    def test_bad_links_are_502_and_never_cached(self):
        gw = self.gw()
        good = self.origin.url("/ok/f.bin")
        bad = {
            "/space.bin": good.replace("/ok/f.bin", "/ok/f b.bin"),
            "/crlf.bin": good + "\r\nX-Injected: 1",
            "/creds.bin": good.replace("http://", "http://user:pw@"),
            "/meta.bin": "http://169.254.169.254/latest/meta-data/",
            "/meta6.bin": "http://[fe80::1]/x",
            "/self.bin": "http://127.0.0.1:%d/-/metrics" % gw.port,
            "/ctl.bin": good + "\x01",
            "/nohost.bin": "http:///ok/f.bin",
            "/ftp.bin": good.replace("http://", "ftp://"),
            "/relative.bin": "/ok/f.bin",
            "/badport.bin": good.replace(":%d/" % self.origin.port, ":99999/"),
        }
        for path, url in bad.items():
            self.alist.replies[path] = link(url)
        for mount in ("a", "r"):
            for path in bad:
                for attempt in (1, 2):
                    r = gw.get("/p/%s%s" % (mount, path) if mount == "a" else "/d/r%s" % path)
                    text = r.body.decode(errors="replace")
                    self.assertEqual(r.status, 502, "%s %s: %d %s" % (mount, path, r.status, text))
                    self.assertIsNone(r.header("Location"), "%s %s" % (mount, path))
                    self.assertNotIn("slipstream_", text, "%s %s: the gateway's own page" % (mount, path))
        # Never cached: every request asked AList again.
        for path in bad:
            self.assertEqual(self.alist.asked.count(path), 4, "%s: %r" % (path, self.alist.asked))
        self.assertEqual(self.origin.count(), 0, "a bad link reached the origin")
        reasons = {l.get("reason") for l in gw.wait_access(4 * len(bad))}
        self.assertIn("source_bad_link", reasons)
        # The same mounts serve good links.
        self.alist.replies["/f.bin"] = link(good)
        r = gw.get("/p/a/f.bin")
        self.assertEqual((r.status, sha256(r.body)), (200, sha256(self.data)))
        r = gw.get("/d/r/f.bin")
        self.assertEqual((r.status, r.header("Location")), (302, good))

    def test_link_failing_in_curl_is_forgotten(self):
        gw = self.gw("[mount s]\nsource = alist\nurl = %s\ntoken = t\ncache = off\n" % self.alist.url())
        good = self.origin.url("/ok/f.bin")
        for mount in ("a", "s"):
            path = "/f-%s.bin" % mount
            self.origin.files[path] = self.data
            self.alist.replies[path] = link("http://127.0.0.1:1/f.bin")  # refused
            r = gw.get("/p/%s%s" % (mount, path))
            self.assertEqual(r.status, 502, r.body[:300])
            self.assertIn(b"127.0.0.1:1", r.body)
            # AList is fixed: the next request resolves again (the link
            # cache forgot the refused link) and gets the bytes.
            self.alist.replies[path] = link(good.replace("/f.bin", path))
            r = gw.get("/p/%s%s" % (mount, path))
            self.assertEqual((r.status, sha256(r.body)), (200, sha256(self.data)), r.body[:300])
            self.assertEqual(self.alist.asked.count(path), 2, self.alist.asked)
