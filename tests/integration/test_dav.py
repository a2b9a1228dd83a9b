"""Issue 13, second part: the read-only WebDAV front at /dav/<mount>/<path>
with real clients, and raw UTF-8 in request targets.

- rclone (a `webdav` remote, vendor other, user and obscured password)
  against an `alist` mount whose listings come from the AList fake and whose
  bytes come from a real nginx: `lsf -R` is exactly the tree, `cat` and
  `copy` are byte-exact, and a second copy is all `X-Cache: HIT` with not
  one request reaching nginx — the cache is behind WebDAV.
- curl and Python's xml.etree: PROPFIND depth 0/1 answers parse as RFC 4918
  XML in the DAV: namespace (hrefs, props, statuses), infinity refused,
  writes refused, users and dav_allow, rules, Range and If-Range, the
  folder index.
- listings of an `alist` mount against the paging fake (an error as HTTP
  200 included) and of an `aliyundrive_open` mount against the strict fake
  (pages, rate limits: its counters), through PROPFIND.
- litmus's basic and props suites against the read-only share.
- raw UTF-8 in the target (curl --request-target sends the bytes as typed;
  curl itself percent-encodes a URL's non-ASCII) on local and http mounts.
"""

import base64
import crypt  # noqa: deprecated in 3.11 but present in Debian 12's Python
import email.utils
import os
import re
import socket
import subprocess
import threading
import http.client
import http.server
import socketserver
import urllib.parse
import warnings
import xml.etree.ElementTree as ET

from fake_aliyun import FakeAliyun
from harness import (GatewayTest, curl, random_bytes, raw_request, raw_status, sha256,
                     sha256_file, wait_until, write_file)
from test_edge import ALIST_TOKEN, FakeAList, alist_item

warnings.filterwarnings("ignore", category=DeprecationWarning)

D = "{DAV:}"
KiB = 1024
PASSWORD = "s3cret horse ü"
HASH = crypt.crypt(PASSWORD, crypt.mksalt(crypt.METHOD_SHA512))

# Names that break clients which encode sloppily: CJK, spaces, '#', '%',
# '&', "'", '?', '+', a leading dash.
TREE = {
    "电影/千与千寻 (2001).mkv": 3 * 1024 * KiB + 7,  # several blocks: parallel fetch
    "电影/a b #1 100% & x.mkv": 70 * KiB,
    "电影/it's q?.mp4": 12 * KiB,
    "Show #1/S01/E01 +x.mkv": 33 * KiB,
    "Show #1/S01/-dash.srt": 100,
    "top.txt": 5,
}


def basic(user, password):
    return "Basic " + base64.b64encode(("%s:%s" % (user, password)).encode()).decode()


def make_tree(root, tree=TREE, seed=1):
    out = {}
    for i, (rel, size) in enumerate(sorted(tree.items())):
        data = random_bytes(size, seed=seed + i)
        write_file(os.path.join(root, rel), data)
        out[rel] = data
    return out


def propfind(gw, path, depth="1", body=None, headers=None):
    h = dict(headers or {})
    if depth is not None:
        h["Depth"] = depth
    if body is not None:
        h["Content-Type"] = "application/xml"
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=60)
    try:
        conn.request("PROPFIND", path, body=body, headers=h)
        r = conn.getresponse()
        return r.status, dict((k.lower(), v) for k, v in r.getheaders()), r.read()
    finally:
        conn.close()


def responses(xml_body):
    """{decoded href: {"status": [...], "props": {tag: element}, "missing": [tag]}}
    of a 207 body, checked against RFC 4918's shape."""
    root = ET.fromstring(xml_body)
    assert root.tag == D + "multistatus", root.tag
    out = {}
    for r in root.findall(D + "response"):
        hrefs = r.findall(D + "href")
        assert len(hrefs) == 1
        href = urllib.parse.unquote(hrefs[0].text)
        entry = {"raw": hrefs[0].text, "props": {}, "missing": [], "status": []}
        for ps in r.findall(D + "propstat"):
            status = ps.find(D + "status").text
            entry["status"].append(status)
            for p in ps.find(D + "prop"):
                if status == "HTTP/1.1 200 OK":
                    entry["props"][p.tag] = p
                else:
                    assert status == "HTTP/1.1 404 Not Found", status
                    entry["missing"].append(p.tag)
        out[href] = entry
    return out


def rclone(env, *args, timeout=180):
    return subprocess.run(["rclone", "--retries", "1", "--low-level-retries", "1", *args],
                          capture_output=True, timeout=timeout, env=env)


class DavTest(GatewayTest):
    def assertStatus(self, r, status):
        self.assertEqual(r.status, status, r.body[:300])


# --------------------------------------------------------------------- local + curl


class DavProtocol(DavTest):
    def setUp(self):
        super().setUp()
        self.root = os.path.join(self.tmp, "root")
        self.files = make_tree(self.root)
        self.gw = self.gateway("[server]\nsign_secret = k3y\n"
                               "[mount m]\nsource = local\nroot = %s\n"
                               "[mount films]\nprefix = /media/films\nsource = local\nroot = %s\n"
                               "[mount extra]\nprefix = /m/Show #1/extra\nsource = local\nroot = %s\n"
                               "[rule no-exe]\next = exe\naction = deny\n"
                               % (self.root, self.root, os.path.join(self.root, "电影")))

    def test_propfind_depth_0_and_1(self):
        st, h, body = propfind(self.gw, "/dav/m/" + urllib.parse.quote("电影"), "1")
        self.assertEqual(st, 207, body)
        self.assertTrue(h["content-type"].startswith("application/xml"))
        rs = responses(body)
        folder = "/dav/m/电影/"
        self.assertEqual(sorted(rs), sorted([folder] + ["/dav/m/" + k for k in self.files if k.startswith("电影/")]))
        # The target first; hrefs are percent-encoded (no raw byte, space, '#', '&' or "'").
        self.assertEqual(urllib.parse.unquote(ET.fromstring(body).find(D + "response/" + D + "href").text), folder)
        for href, e in rs.items():
            self.assertRegex(e["raw"], r"^[A-Za-z0-9/%._~-]+$")
            self.assertEqual(e["status"], ["HTTP/1.1 200 OK"])
        self.assertIsNotNone(rs[folder]["props"][D + "resourcetype"].find(D + "collection"))
        for rel in [k for k in self.files if k.startswith("电影/")]:
            e = rs["/dav/m/" + rel]["props"]
            path = os.path.join(self.root, rel)
            self.assertIsNone(e[D + "resourcetype"].find(D + "collection"))
            self.assertEqual(int(e[D + "getcontentlength"].text), len(self.files[rel]))
            self.assertEqual(e[D + "displayname"].text, os.path.basename(rel))
            mtime = email.utils.parsedate_to_datetime(e[D + "getlastmodified"].text).timestamp()
            self.assertEqual(int(mtime), int(os.stat(path).st_mtime))
            self.assertEqual(e[D + "getcontenttype"].text, "video/x-matroska" if rel.endswith(".mkv") else "video/mp4")
            # The ETag a listing gives is the one GET serves.
            g = self.gw.get(urllib.parse.quote("/dav/m/" + rel), method="HEAD")
            self.assertEqual(e[D + "getetag"].text, g.header("ETag"))

        # Depth 0: the target alone; a file; named properties, one unknown (404 propstat).
        st, _, body = propfind(self.gw, "/dav/m/" + urllib.parse.quote("电影"), "0")
        self.assertEqual(list(responses(body)), [folder])
        want = ('<?xml version="1.0"?><propfind xmlns="DAV:" xmlns:x="urn:x"><prop><getcontentlength/>'
                '<x:color/></prop></propfind>')
        st, _, body = propfind(self.gw, urllib.parse.quote("/dav/m/top.txt"), "0", body=want)
        self.assertEqual(st, 207, body)
        e = responses(body)["/dav/m/top.txt"]
        self.assertEqual(list(e["props"]), [D + "getcontentlength"])
        self.assertEqual(e["props"][D + "getcontentlength"].text, "5")
        self.assertEqual(e["missing"], ["{urn:x}color"])
        # propname lists names only.
        st, _, body = propfind(self.gw, "/dav/m/top.txt", "0",
                               body='<D:propfind xmlns:D="DAV:"><D:propname/></D:propfind>')
        names = responses(body)["/dav/m/top.txt"]["props"]
        self.assertIn(D + "getetag", names)
        self.assertTrue(all(len(p) == 0 and not (p.text or "").strip() for p in names.values()))

        # The top lists the mounts and the folders their prefixes make.
        st, _, body = propfind(self.gw, "/dav/", "1")
        self.assertEqual(sorted(responses(body)), ["/dav/", "/dav/m/", "/dav/media/"])
        st, _, body = propfind(self.gw, "/dav/media", "1")
        self.assertEqual(sorted(responses(body)), ["/dav/media/", "/dav/media/films/"])
        st, _, body = propfind(self.gw, "/dav/media/films/Show%20%231", "1")
        self.assertEqual(sorted(responses(body)), ["/dav/media/films/Show #1/", "/dav/media/films/Show #1/S01/"])
        # A mount inside another's folder joins that folder's listing.
        st, _, body = propfind(self.gw, "/dav/m/Show%20%231/", "1")
        self.assertEqual(sorted(responses(body)), ["/dav/m/Show #1/", "/dav/m/Show #1/S01/", "/dav/m/Show #1/extra/"])
        st, _, body = propfind(self.gw, "/dav/m/Show%20%231/extra/", "1")
        self.assertEqual(len(responses(body)), 1 + 3)

    def test_refusals(self):
        before = {rel: sha256_file(os.path.join(self.root, rel)) for rel in self.files}
        # Depth: infinity, and a missing Depth (which means infinity): 403 with the RFC's element.
        for depth in ["infinity", None]:
            st, h, body = propfind(self.gw, "/dav/m/", depth)
            self.assertEqual(st, 403, depth)
            root = ET.fromstring(body)
            self.assertEqual(root.tag, D + "error")
            self.assertIsNotNone(root.find(D + "propfind-finite-depth"))
        self.assertEqual(propfind(self.gw, "/dav/m/", "2")[0], 400)
        self.assertEqual(propfind(self.gw, "/dav/m/", "1", body="<propfind")[0], 400)
        self.assertEqual(propfind(self.gw, "/dav/m/", "1", body='<!DOCTYPE x [<!ENTITY a "b">]><x/>')[0], 400)
        self.assertEqual(propfind(self.gw, "/dav/m/nope", "0")[0], 404)
        self.assertEqual(propfind(self.gw, "/dav/m/top.txt/", "0")[0], 404)  # a file named as a folder
        self.assertEqual(propfind(self.gw, "/dav/nomount/x", "0")[0], 404)

        # Writes: 403 (understood, refused), locking and the rest: 405; both with Allow.
        for method in ["PUT", "DELETE", "MKCOL", "MOVE", "COPY", "PROPPATCH", "LOCK", "UNLOCK", "POST"]:
            hdrs = ["-H", "Destination: %s" % self.gw.url("/dav/m/moved.txt")]
            p = curl("-i", "-X", method, *hdrs, "--data-binary", "overwritten", self.gw.url("/dav/m/top.txt"))
            head = p.stdout.decode(errors="replace")
            want = 403 if method not in ("LOCK", "UNLOCK", "POST") else 405
            self.assertEqual(raw_status(p.stdout), want, method + "\n" + head)
            self.assertIn("Allow: OPTIONS, GET, HEAD, PROPFIND\r\n", head, method)
        self.assertEqual({rel: sha256_file(os.path.join(self.root, rel)) for rel in self.files}, before)
        self.assertFalse(os.path.exists(os.path.join(self.root, "moved.txt")))
        # OPTIONS: class 1, no locking.
        r = self.gw.get("/dav/m/", method="OPTIONS")
        self.assertStatus(r, 200)
        self.assertEqual((r.header("DAV"), r.header("Allow")), ("1", "OPTIONS, GET, HEAD, PROPFIND"))
        # The access log is written after each response: wait for every line.
        wait_until(lambda: sum(e["reason"] == "dav_method_not_allowed" for e in self.gw.access()) >= 3,
                   5, what="the refusals' access-log lines")
        reasons = [e["reason"] for e in self.gw.access()]
        self.assertEqual(reasons.count("read_only"), 6)
        self.assertEqual(reasons.count("dav_method_not_allowed"), 3)

    def test_get_through_the_delivery(self):
        rel = "电影/千与千寻 (2001).mkv"
        path = urllib.parse.quote("/dav/m/" + rel)
        r = self.gw.get(path)
        self.assertStatus(r, 200)
        self.assertEqual(sha256(r.body), sha256(self.files[rel]))
        # No sign on /dav/ (authentication is its gate); /d/ still wants one.
        self.assertStatus(self.gw.get(urllib.parse.quote("/d/m/" + rel)), 401)
        # Range and If-Range as on /p/.
        r = self.gw.get(path, headers={"Range": "bytes=1048570-1048589"})
        self.assertStatus(r, 206)
        self.assertEqual(r.body, self.files[rel][1048570:1048590])
        etag = r.header("ETag")
        r = self.gw.get(path, headers={"Range": "bytes=0-9", "If-Range": etag})
        self.assertEqual((r.status, r.body), (206, self.files[rel][:10]))
        r = self.gw.get(path, headers={"Range": "bytes=0-9", "If-Range": '"other"'})
        self.assertEqual((r.status, len(r.body)), (200, len(self.files[rel])))
        # Rules apply.
        write_file(os.path.join(self.root, "setup.exe"), b"MZ")
        r = self.gw.get("/dav/m/setup.exe")
        self.assertStatus(r, 403)
        self.assertIn(b"denied by rule", r.body)
        # A GET with a body is refused as elsewhere.
        p = curl("-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "GET", "--data", "x", self.gw.url("/dav/m/top.txt"))
        self.assertEqual(p.stdout, b"400")
        entries = self.gw.wait_access(7)
        self.assertEqual([e["delivery"] for e in entries],
                         ["proxy", "-", "proxy", "proxy", "proxy", "deny", "-"])
        self.assertEqual([e["reason"] for e in entries][5:], ["denied", "request_body"])

    def test_folder_index(self):
        r = self.gw.get("/dav/m/" + urllib.parse.quote("电影") + "/")
        self.assertStatus(r, 200)
        self.assertTrue(r.header("Content-Type").startswith("text/html"))
        self.assertEqual(r.header("Content-Security-Policy"), "default-src 'none'")
        html = r.body.decode()
        links = re.findall(r'<a href="([^"]*)">([^<]*)</a>', html)
        self.assertEqual(links[0], ("/dav/m/", "../"))
        self.assertEqual(sorted(urllib.parse.unquote(h) for h, _ in links[1:]),
                         sorted("/dav/m/" + k for k in self.files if k.startswith("电影/")))
        self.assertIn("a b #1 100% &amp; x.mkv", html)  # escaped text
        self.assertIn("it&apos;s q?.mp4", html)
        # A mount's root and the top are folders without a trailing slash too; HEAD has no body.
        self.assertIn(b'href="/dav/m/"', self.gw.get("/dav").body)
        self.assertStatus(self.gw.get("/dav/m"), 200)
        r = self.gw.get("/dav/m/", method="HEAD")
        self.assertEqual((r.status, r.body), (200, b""))
        self.assertEqual(self.gw.get("/dav/m/top.txt/").status, 404)  # a file named as a folder


# --------------------------------------------------------------------- users


class DavUsers(DavTest):
    def test_basic_users_and_dav_allow(self):
        root = os.path.join(self.tmp, "root")
        make_tree(root, {"a.mkv": 1000})
        # dav_allow excludes loopback: every client here must authenticate.
        gw = self.gateway("[server]\ndav_allow = 10.0.0.0/8\n[user alice]\npassword_hash = %s\n"
                          "[mount m]\nsource = local\nroot = %s\n" % (HASH, root))
        st, h, _ = propfind(gw, "/dav/m/", "1")
        self.assertEqual(st, 401)
        self.assertEqual(h["www-authenticate"], 'Basic realm="slipstream", charset="UTF-8"')
        for auth in [basic("alice", "wrong"), basic("bob", PASSWORD), "Bearer x", "Basic !!!"]:
            st, h, _ = propfind(gw, "/dav/m/", "1", headers={"Authorization": auth})
            self.assertEqual(st, 401, auth)
        good = {"Authorization": basic("alice", PASSWORD)}
        for _ in range(5):
            st, _, body = propfind(gw, "/dav/m/", "1", headers=good)
            self.assertEqual(st, 207)
        self.assertIn("/dav/m/a.mkv", responses(body))
        self.assertEqual(gw.get("/dav/m/a.mkv", headers=good).status, 200)
        self.assertEqual(gw.get("/dav/m/a.mkv").status, 401)
        self.assertEqual(gw.get("/dav/m/a.mkv", method="OPTIONS").status, 401)
        # Verdicts are cached: one hashing per distinct header (alice wrong, bob, alice right).
        m = gw.get("/-/metrics").body.decode()
        self.assertIn("slipstream_dav_password_checks_total 3\n", m)
        lines = gw.wait_access(14)
        self.assertEqual([e["user"] for e in lines if e["status"] in ("207", "200") and e["path"].startswith("/dav")],
                         ["alice"] * 6)
        self.assertTrue(all(e["user"] == "-" for e in lines if e["status"] == "401"))
        secret = base64.b64encode(("alice:" + PASSWORD).encode()).decode()
        with open(gw.access_log) as f:
            log = f.read()
        for text in (log, gw.errors()):
            self.assertNotIn(secret, text)
            self.assertNotIn("s3cret", text)

        # Clients that leave while their password is hashed on the worker: the
        # answer meets a closed socket, the gateway goes on (checked under ASan too).
        for i in range(5):
            with socket.create_connection(("127.0.0.1", gw.port)) as sock:
                sock.sendall(("PROPFIND /dav/m/ HTTP/1.1\r\nHost: gw\r\nDepth: 1\r\nAuthorization: %s\r\n\r\n"
                              % basic("alice", "gone %d" % i)).encode())
        wait_until(lambda: "slipstream_dav_password_checks_total 8\n" in gw.get("/-/metrics").body.decode(), 10,
                   what="five more hashings")
        self.assertEqual(propfind(gw, "/dav/m/", "0", headers=good)[0], 207)

        # No [user] and not in dav_allow: 403; /p/ is not affected.
        gw2 = self.gateway("[server]\ndav_allow = 10.0.0.0/8\n[mount m]\nsource = local\nroot = %s\n" % root)
        self.assertEqual(propfind(gw2, "/dav/m/", "1")[0], 403)
        self.assertEqual(gw2.get("/p/m/a.mkv").status, 200)
        # Loopback in dav_allow (the default): no password asked.
        gw3 = self.gateway("[user alice]\npassword_hash = %s\n[mount m]\nsource = local\nroot = %s\n" % (HASH, root))
        self.assertEqual(propfind(gw3, "/dav/m/", "1")[0], 207)


# --------------------------------------------------------------------- rclone


class DavRclone(DavTest):
    """The cache behind WebDAV: listings from the AList fake, bytes from a
    real nginx through the block cache."""

    def setUp(self):
        super().setUp()
        self.www = os.path.join(self.tmp, "www")
        self.files = make_tree(self.www, seed=40)
        self.origin = self.nginx(self.www, picky=False)
        folders = {}
        for d, dirs, files in os.walk(self.www):
            rel = os.path.relpath(d, self.www)
            key = "/root" if rel == "." else "/root/" + rel
            folders[key] = ([alist_item(n, is_dir=True) for n in dirs] +
                            [alist_item(n, size=os.path.getsize(os.path.join(d, n)),
                                        mtime=os.path.getmtime(os.path.join(d, n))) for n in files])

        def resolve(path, nth):
            rel = path[len("/root/"):]
            if rel not in self.files:
                return None
            return {"url": self.origin.url("/" + urllib.parse.quote(rel)), "header": {}}

        self.alist = FakeAList(ALIST_TOKEN, resolve, folders=folders)
        self._fixtures.append(self.alist.stop)
        self.gw = self.gateway(
            "[server]\ndav_allow = 10.0.0.0/8\n[user alice]\npassword_hash = %s\n"
            "[cache]\ndir = @CACHE@\nmax_size = 1G\nmin_free = 0\n"
            "[mount al]\nsource = alist\nurl = %s\ntoken = %s\nroot = /root\n"
            % (HASH, self.alist.url(), ALIST_TOKEN))
        obscured = subprocess.run(["rclone", "obscure", PASSWORD], capture_output=True, check=True,
                                  timeout=30).stdout.decode().strip()
        self.env = dict(os.environ, RCLONE_CONFIG=os.path.join(self.tmp, "rclone.conf"),
                        RCLONE_CACHE_DIR=os.path.join(self.tmp, "rclone-cache"),
                        RCLONE_CONFIG_GW_TYPE="webdav", RCLONE_CONFIG_GW_URL=self.gw.url("/dav/"),
                        RCLONE_CONFIG_GW_VENDOR="other", RCLONE_CONFIG_GW_USER="alice",
                        RCLONE_CONFIG_GW_PASS=obscured)

    def test_lsf_cat_copy_and_the_cache(self):
        p = rclone(self.env, "lsf", "-R", "gw:al")
        self.assertEqual(p.returncode, 0, p.stderr.decode())
        want = set(self.files)
        for rel in self.files:
            parts = rel.split("/")[:-1]
            want |= {"/".join(parts[:i]) + "/" for i in range(1, len(parts) + 1)}
        self.assertEqual(set(p.stdout.decode().splitlines()), want)

        rel = "电影/a b #1 100% & x.mkv"
        p = rclone(self.env, "cat", "gw:al/" + rel)
        self.assertEqual(p.returncode, 0, p.stderr.decode())
        self.assertEqual(sha256(p.stdout), sha256(self.files[rel]))

        first = os.path.join(self.tmp, "copy1")
        p = rclone(self.env, "copy", "gw:al", first)
        self.assertEqual(p.returncode, 0, p.stderr.decode())
        for rel, data in self.files.items():
            self.assertEqual(sha256_file(os.path.join(first, rel)), sha256(data), rel)
        self.assertGreaterEqual(self.origin.body_bytes(), sum(len(d) for d in self.files.values()))

        # Again into an empty folder: every byte from the cache, none from nginx.
        self.origin.clear_log()
        n = len(self.gw.settled_access())
        second = os.path.join(self.tmp, "copy2")
        p = rclone(self.env, "copy", "gw:al", second)
        self.assertEqual(p.returncode, 0, p.stderr.decode())
        for rel, data in self.files.items():
            self.assertEqual(sha256_file(os.path.join(second, rel)), sha256(data), rel)
        self.assertEqual(self.origin.entries(), [])
        wait_until(lambda: len([e for e in self.gw.access()[n:] if e["method"] == "GET"]) >= len(self.files), 5)
        gets = [e for e in self.gw.access()[n:] if e["method"] == "GET"]
        self.assertEqual(len(gets), len(self.files))
        self.assertEqual({e["cache"] for e in gets}, {"HIT"})
        self.assertEqual({e["user"] for e in gets}, {"alice"})
        self.assertEqual(sum(int(e["upstream_bytes"]) for e in gets), 0)


# --------------------------------------------------------------------- listings of cloud sources


class DavCloudListings(DavTest):
    def test_alist_pages_and_error_as_200(self):
        movies = [alist_item("film %03d.mkv" % i, size=1000 + i) for i in range(247)]
        movies.append(alist_item("千与千寻 #1 & 100%.mkv", size=42, sha1="ABCDEF0123"))
        fake = FakeAList(ALIST_TOKEN, lambda path, nth: None,
                         folders={"/root/Movies": movies,
                                  "/root": [alist_item("Movies", is_dir=True), alist_item("Broken", is_dir=True)]},
                         list_errors={"/root/Broken": (500, "failed get objs: failed to list objs: 429 Too Many Requests")})
        self._fixtures.append(fake.stop)
        gw = self.gateway("[mount al]\nsource = alist\nurl = %s\ntoken = %s\nroot = /root\n" % (fake.url(), ALIST_TOKEN))
        st, _, body = propfind(gw, "/dav/al/Movies", "1")
        self.assertEqual(st, 207)
        rs = responses(body)
        self.assertEqual(len(rs), 1 + 248)
        e = rs["/dav/al/Movies/千与千寻 #1 & 100%.mkv"]["props"]
        self.assertEqual((e[D + "getcontentlength"].text, e[D + "getetag"].text), ("42", '"abcdef0123"'))
        self.assertEqual(rs["/dav/al/Movies/film 007.mkv"]["props"][D + "getcontentlength"].text, "1007")
        self.assertEqual([c["json"]["page"] for c in fake.list_calls("/root/Movies")], [1, 2, 3])
        # The same folder again within list_ttl: no new call.
        self.assertEqual(propfind(gw, "/dav/al/Movies/film%20007.mkv", "0")[0], 207)
        self.assertEqual(len(fake.list_calls("/root/Movies")), 3)
        # AList's errors as HTTP 200 become real statuses.
        st, _, body = propfind(gw, "/dav/al/Broken", "1")
        self.assertEqual(st, 502)
        self.assertIn(b"429 Too Many Requests", body)
        self.assertEqual(propfind(gw, "/dav/al/Nope", "1")[0], 404)

    def test_aliyundrive_open_pages_and_gates(self):
        fake = FakeAliyun(os.path.join(self.tmp, "fake"), page_size=3, list_rate=4.0)
        self._fixtures.append(fake.stop)
        for i in range(1, 11):
            fake.add_file("/Shows/剧 集/S01E%02d #%d.mkv" % (i, i), b"x" * (100 + i))
        fake.add_folder("/Shows/剧 集/Extras")
        gw = self.gateway("[server]\nstate_dir = %s\n"
                          "[account ali]\nrefresh_token = %s\nclient_id = cid\nclient_secret = csecret\napi_url = %s\n"
                          "[mount shows]\nsource = aliyundrive_open\naccount = ali\n"
                          % (os.path.join(self.tmp, "state"), fake.initial_refresh_token, fake.api_url))
        st, _, body = propfind(gw, "/dav/shows/" + urllib.parse.quote("Shows/剧 集"), "1")
        self.assertEqual(st, 207, body)
        rs = responses(body)
        self.assertEqual(sorted(rs), sorted(["/dav/shows/Shows/剧 集/", "/dav/shows/Shows/剧 集/Extras/"] +
                                            ["/dav/shows/Shows/剧 集/S01E%02d #%d.mkv" % (i, i) for i in range(1, 11)]))
        e = rs["/dav/shows/Shows/剧 集/S01E03 #3.mkv"]["props"]
        self.assertEqual(e[D + "getcontentlength"].text, "103")
        stats = fake.stats()
        # root (1 page) → Shows (1 page) → 剧 集 (11 entries: 4 pages of 3), one drive lookup,
        # and the account's gate never let a call through too early.
        self.assertEqual(stats["list_calls"], 6)
        self.assertEqual(stats["drive_info_calls"], 1)
        self.assertEqual(stats["too_many"], {})
        st, _, _ = propfind(gw, "/dav/shows/Shows/nope", "0")
        self.assertEqual(st, 404)


# --------------------------------------------------------------------- litmus


class LitmusShim:
    """An HTTP proxy for litmus (its --proxy option): litmus insists on
    `MKCOL <url>/litmus/` before a suite and `DELETE` of it after; the shim
    answers those two itself and forwards every other request to the
    gateway unchanged. The litmus/ collection exists read-only in the source."""

    def __init__(self, gw_port, base):
        self.faked = []
        shim = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def handle_one_request(self):
                self.raw_requestline = self.rfile.readline(65537)
                if not self.raw_requestline:
                    self.close_connection = True
                    return
                if not self.parse_request():
                    return
                u = urllib.parse.urlsplit(self.path)
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else None
                if self.command in ("MKCOL", "DELETE") and u.path == base + "litmus/":
                    shim.faked.append(self.command)
                    self.send_response(201 if self.command == "MKCOL" else 204)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                c = http.client.HTTPConnection("127.0.0.1", gw_port, timeout=60)
                hdrs = {k: v for k, v in self.headers.items()
                        if k.lower() not in ("proxy-connection", "connection", "keep-alive")}
                c.request(self.command, u.path + ("?" + u.query if u.query else ""), body=body, headers=hdrs)
                r = c.getresponse()
                data = r.read()
                c.close()
                self.send_response(r.status, r.reason)
                for k, v in r.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


# litmus tests that apply to a read-only share (they write nothing), and the
# write tests that must fail on it.
LITMUS_READ_ONLY = {"basic": ["init", "begin", "options", "put_no_parent", "delete_null", "mkcol_no_parent", "finish"],
                    "props": ["init", "begin", "propfind_invalid", "propfind_invalid2", "propfind_d0",
                              "propextended", "propwformed", "propcleanup", "finish"]}
LITMUS_WRITES = {"basic": ["put_get", "put_get_utf8_segment", "mkcol"], "props": ["propinit"]}


class DavLitmus(DavTest):
    def test_litmus_basic_and_props(self):
        root = os.path.join(self.tmp, "root")
        make_tree(root, {"litmus/placeholder.txt": 3})
        gw = self.gateway("[server]\ndav_allow = 10.0.0.0/8\n[user alice]\npassword_hash = %s\n"
                          "[mount m]\nsource = local\nroot = %s\n" % (HASH, root))
        shim = LitmusShim(gw.port, "/dav/m/")
        self._fixtures.append(shim.stop)
        p = subprocess.run(["litmus", "-k", "--proxy=http://127.0.0.1:%d/" % shim.port, gw.url("/dav/m/"),
                            "alice", PASSWORD], capture_output=True, timeout=300, cwd=self.tmp,
                           env=dict(os.environ, TESTS="basic props"))
        out = p.stdout.decode(errors="replace")
        results = {}
        suite = None
        test = None
        for line in out.splitlines():
            m = re.match(r"-> running `(\w+)'", line)
            if m:
                suite = m.group(1)
            names = re.findall(r"\b\d+\. (\w+)\.", line)
            if names:
                test = names[-1]
            # A result may come on a line of its own after a warning.
            m = re.search(r"\.{2,} (pass|FAIL|SKIPPED)\b", line)
            if m:
                results[(suite, test)] = m.group(1)
        for suite, tests in LITMUS_READ_ONLY.items():
            for t in tests:
                self.assertEqual(results.get((suite, t)), "pass", "%s/%s\n%s" % (suite, t, out))
        for suite, tests in LITMUS_WRITES.items():
            for t in tests:
                self.assertEqual(results.get((suite, t)), "FAIL", "%s/%s\n%s" % (suite, t, out))
        self.assertIn("PUT of `/dav/m/litmus/res' failed: 403 Forbidden", out)
        self.assertEqual(sorted(shim.faked), ["DELETE", "DELETE", "MKCOL", "MKCOL"])  # one each per suite
        self.assertEqual(os.listdir(os.path.join(root, "litmus")), ["placeholder.txt"])


# --------------------------------------------------------------------- raw UTF-8


class RawUtf8Targets(DavTest):
    def test_raw_cjk_paths_local_and_http(self):
        local = os.path.join(self.tmp, "local")
        www = os.path.join(self.tmp, "www")
        files = make_tree(local, {"电影/千与千寻.mkv": 200 * KiB, "é/a b.mkv": 10})
        make_tree(www, {"电影/千与千寻.mkv": 200 * KiB, "é/a b.mkv": 10})
        origin = self.nginx(www, picky=False)
        gw = self.gateway("[mount loc]\nsource = local\nroot = %s\n[mount web]\nsource = http\nbase_url = %s\n"
                          "[cache]\ndir = @CACHE@\nmin_free = 0\n" % (local, origin.url("/")))
        for target, rel in [("/p/loc/电影/千与千寻.mkv", "电影/千与千寻.mkv"),
                            ("/p/web/电影/千与千寻.mkv", "电影/千与千寻.mkv"),
                            ("/dav/loc/电影/千与千寻.mkv", "电影/千与千寻.mkv"),
                            ("/p/web/é/a%20b.mkv", "é/a b.mkv")]:
            # --request-target sends the bytes as typed (curl encodes a URL's non-ASCII itself).
            p = curl("--request-target", target, "-o", "-", "-w", "\n%{http_code}", gw.url("/"))
            body, _, code = p.stdout.rpartition(b"\n")
            self.assertEqual(code, b"200", target)
            self.assertEqual(sha256(body), sha256(files[rel]), target)
        # The same file by its percent-encoded name is the same object: a HIT.
        r = gw.get(urllib.parse.quote("/p/web/电影/千与千寻.mkv"))
        self.assertEqual((r.status, r.header("X-Cache")), (200, "HIT"))
        # nginx was asked for the right name (its log writes bytes >= 0x80 as \\xHH).
        logged = "".join(c if ord(c) < 0x80 else "".join("\\x%02X" % b for b in c.encode())
                         for c in "/电影/千与千寻.mkv")
        self.assertIn(logged, {e["uri"] for e in origin.entries()})
        # An http mount cannot list: its root is a folder, what is below it is not known.
        self.assertEqual(propfind(gw, "/dav/web/", "0")[0], 207)
        st, _, body = propfind(gw, "/dav/web/", "1")
        self.assertEqual(st, 501)
        self.assertIn(b"cannot list folders", body)
        self.assertEqual(gw.get("/dav/web/").status, 501)
        r = gw.get(urllib.parse.quote("/dav/web/é/a b.mkv"))
        self.assertEqual((r.status, r.body), (200, files["é/a b.mkv"]))
        # Raw PROPFIND target too.
        p = curl("-X", "PROPFIND", "-H", "Depth: 1", "--request-target", "/dav/loc/电影/", gw.url("/"))
        self.assertIn("/dav/loc/电影/千与千寻.mkv", responses(p.stdout))
        # Invalid UTF-8 and controls are still refused.
        for raw in [b"GET /p/loc/caf\xe9 HTTP/1.1\r\nHost: a\r\n\r\n",
                    b"GET /p/loc/\xe4\xb8 HTTP/1.1\r\nHost: a\r\n\r\n",
                    b"GET /p/loc/\xc2\x85 HTTP/1.1\r\nHost: a\r\n\r\n",
                    b"GET /p/loc/\xe7\x94\xb5\x01 HTTP/1.1\r\nHost: a\r\n\r\n"]:
            reply = raw_request(gw.port, raw)
            self.assertEqual(raw_status(reply), 400, raw)
            self.assertIn(b"malformed request target", reply)
        access = gw.wait_access(14)
        self.assertEqual(access[0]["path"], "/p/loc/%E7%94%B5%E5%BD%B1/%E5%8D%83%E4%B8%8E%E5%8D%83%E5%AF%BB.mkv")
        self.assertEqual(sum(1 for e in access if e["reason"] == "bad_target"), 4)
