"""Issue 13, first part: folder listings for every source (`slipstream ls`),
WebDAV users with password hashes (`slipstream check`, `slipstream passwd`)
and the .strm export for media servers (`slipstream strm`).

Listings run against a real directory tree (CJK and odd names, hidden
files, symlinks in and out of the root, a FIFO), the AList fake of
test_edge.py answering /api/fs/list page by page and errors as HTTP 200,
and the strict Aliyundrive Open fake (pagination with opaque markers, rate
limits that answer 429). Every figure asserted comes from the fakes'
records, the file system or the gateway's own answers.
"""

import crypt  # noqa: deprecated in 3.11 but present in Debian 12's Python; only to verify hashes
import hashlib
import json
import os
import subprocess
import time
import urllib.parse
import warnings

from fake_aliyun import FakeAliyun
from harness import BIN, GatewayTest, random_bytes, sha256, write_file
from test_edge import ALIST_TOKEN, FakeAList, alist_item, alist_sign

warnings.filterwarnings("ignore", category=DeprecationWarning)

KiB = 1024
SECRET = "strm-s3cr3t"


def tree(root):
    """{relative path: (inode, mtime_ns, bytes)} of every file under root,
    the manifest left out."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            rel = os.path.relpath(p, root)
            if rel == ".slipstream-strm.json":
                continue
            st = os.stat(p)
            with open(p, "rb") as fh:
                out[rel] = (st.st_ino, st.st_mtime_ns, fh.read())
    return out


def folders(root):
    return sorted(os.path.relpath(d, root) for d, _, _ in os.walk(root) if d != root)


class BrowseTest(GatewayTest):
    def cli(self, ini, *args, stdin=None, timeout=120):
        """Runs `slipstream ARGS -c INI` (no gateway needed)."""
        path = os.path.join(self.tmp, "cli-%d.ini" % len(os.listdir(self.tmp)))
        with open(path, "w") as f:
            f.write(ini)
        return subprocess.run([BIN, *args, "-c", path], capture_output=True, timeout=timeout, input=stdin)

    def ls(self, ini, path):
        p = self.cli(ini, "ls", path, "--json")
        self.assertEqual(p.returncode, 0, p.stderr.decode())
        return json.loads(p.stdout)

    def ls_fails(self, ini, path, *fragments):
        p = self.cli(ini, "ls", path, "--json")
        self.assertEqual(p.returncode, 1, p.stdout)
        err = p.stderr.decode(errors="replace")
        for f in fragments:
            self.assertIn(f, err)
        return err


# --------------------------------------------------------------------- local


class LocalListing(BrowseTest):
    def test_ls_local_tree(self):
        root = os.path.join(self.tmp, "root")
        outside = os.path.join(self.tmp, "outside")
        files = {"电影/千与千寻 (2001).mkv": random_bytes(3000, seed=1),
                 "a b #1 100% & x?.mkv": b"abc",
                 "Show/S1/e01.mkv": b"e01"}
        for rel, data in files.items():
            write_file(os.path.join(root, rel), data)
        write_file(os.path.join(root, ".hidden.mkv"), b"h")
        write_file(os.path.join(root, "@eaDir", "thumb.jpg"), b"t")
        write_file(os.path.join(outside, "secret.txt"), b"s")
        os.symlink(os.path.join(outside, "secret.txt"), os.path.join(root, "abs-out.txt"))
        os.symlink("../outside", os.path.join(root, "rel-out"))
        os.symlink("a b #1 100% & x?.mkv", os.path.join(root, "link-in.mkv"))
        os.mkfifo(os.path.join(root, "fifo"))
        ini = ("[server]\nlog_level = warn\n[mount m]\nsource = local\nroot = %s\n"
               "[mount h]\nsource = http\nbase_url = http://127.0.0.1:9/\n" % root)

        doc = self.ls(ini, "/m")
        self.assertEqual(doc["mount"], "m")
        self.assertEqual([(e["name"], e["folder"]) for e in doc["entries"]],
                         [("Show", True), ("a b #1 100% & x?.mkv", False), ("link-in.mkv", False),
                          ("电影", True)])
        by = {e["name"]: e for e in doc["entries"]}
        st = os.stat(os.path.join(root, "a b #1 100% & x?.mkv"))
        self.assertEqual(by["a b #1 100% & x?.mkv"]["size"], 3)
        self.assertEqual(by["a b #1 100% & x?.mkv"]["mtime_ms"], st.st_mtime_ns // 1_000_000)
        self.assertEqual(by["link-in.mkv"]["size"], 3)
        cjk = self.ls(ini, "/m/电影")["entries"]
        self.assertEqual([(e["name"], e["size"]) for e in cjk], [("千与千寻 (2001).mkv", 3000)])

        # The ETag of a listing is the one the file is served with.
        gw = self.gateway(ini.replace("log_level = warn", "log_level = info"))
        r = gw.get("/d/m/" + urllib.parse.quote("电影/千与千寻 (2001).mkv"))
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("ETag"), cjk[0]["etag"])

        # Text form, and the refusals.
        p = self.cli(ini, "ls", "/m")
        self.assertEqual(p.returncode, 0)
        self.assertIn("电影/", p.stdout.decode())
        self.ls_fails(ini, "/m/nope", "404 not found")
        self.ls_fails(ini, "/m/Show/S1/e01.mkv", "404 not a folder")
        self.ls_fails(ini, "/m/rel-out", "403 path resolves outside")
        self.ls_fails(ini, "/h", "501 this source cannot list folders")
        p = self.cli(ini, "ls", "/nomount")
        self.assertEqual(p.returncode, 2)
        self.assertIn("no mount serves /nomount", p.stderr.decode())


# --------------------------------------------------------------------- alist


class AListListing(BrowseTest):
    def test_pages_and_errors_as_200(self):
        movies = [alist_item("film %03d.mkv" % i, size=1000 + i, mtime=1700000000.25 + i) for i in range(247)]
        movies.append(alist_item("千与千寻 #1 & 100%.mkv", size=42, sha1="ABCDEF0123"))
        movies.append(alist_item("Sub Folder", is_dir=True))
        fake = FakeAList(ALIST_TOKEN, lambda path, nth: None,
                         folders={"/root/Movies": movies, "/root": [alist_item("Movies", is_dir=True)]},
                         list_errors={"/root/Broken": (500, "failed get objs: failed to list objs: 429 Too Many Requests")})
        self._fixtures.append(fake.stop)
        ini = ("[server]\nlog_level = warn\n[mount al]\nsource = alist\nurl = %s\ntoken = %s\nroot = /root\n"
               % (fake.url(), ALIST_TOKEN))

        doc = self.ls(ini, "/al/Movies")
        names = [e["name"] for e in doc["entries"]]
        self.assertEqual(len(names), 249)
        self.assertEqual(names, sorted(names, key=lambda n: n.encode()))
        by = {e["name"]: e for e in doc["entries"]}
        self.assertEqual(by["film 007.mkv"]["size"], 1007)
        self.assertEqual(by["film 007.mkv"]["mtime_ms"], 1700000007250)
        self.assertNotIn("etag", by["film 007.mkv"])
        self.assertEqual(by["千与千寻 #1 & 100%.mkv"]["etag"], '"abcdef0123"')
        self.assertTrue(by["Sub Folder"]["folder"])
        # Three pages of 100, asked exactly as AList's own front end asks.
        calls = fake.list_calls("/root/Movies")
        self.assertEqual([c["json"]["page"] for c in calls], [1, 2, 3])
        for c in calls:
            self.assertEqual(c["json"], dict(path="/root/Movies", password="", page=c["json"]["page"],
                                             per_page=100, refresh=False))
            self.assertEqual(c["authorization"], ALIST_TOKEN)
            self.assertTrue(c["content_type"].startswith("application/json"))
        self.assertEqual([e["name"] for e in self.ls(ini, "/al")["entries"]], ["Movies"])

        # Errors arrive as HTTP 200 with code != 200.
        self.ls_fails(ini, "/al/Broken", "502", "code 500: failed get objs: failed to list objs: 429")
        self.ls_fails(ini, "/al/Nope", "404", "object not found")
        self.ls_fails(ini.replace("token = " + ALIST_TOKEN, "token = wrong"), "/al/Movies", "502",
                      "code 401: token is invalidated")
        # A name that is not UTF-8 names nothing on AList (its paths are JSON
        # strings): 404 without asking it, never an exception on the loop.
        before = len(fake.list_calls("/root/Movies"))
        self.ls_fails(ini, b"/al/Movies/\xff", "404", "not UTF-8")
        self.assertEqual(len(fake.list_calls("/root/Movies")), before)


# --------------------------------------------------------------------- aliyundrive_open


class AliyunListing(BrowseTest):
    def test_paginated_gated_listing(self):
        fake = FakeAliyun(os.path.join(self.tmp, "fake"), page_size=3, list_rate=4.0)
        self._fixtures.append(fake.stop)
        for i in range(1, 11):
            fake.add_file("/Shows/剧 集/S01E%02d #%d.mkv" % (i, i), b"x" * (100 + i))
        fake.add_folder("/Shows/剧 集/Extras")
        state = os.path.join(self.tmp, "state")
        ini = ("[server]\nlog_level = warn\nstate_dir = %s\n"
               "[account ali]\nrefresh_token = %s\nclient_id = cid\nclient_secret = csecret\napi_url = %s\n"
               "[mount shows]\nsource = aliyundrive_open\naccount = ali\n" % (state, fake.initial_refresh_token, fake.api_url))

        doc = self.ls(ini, "/shows/Shows/剧 集")
        names = [e["name"] for e in doc["entries"]]
        self.assertEqual(names, ["Extras"] + ["S01E%02d #%d.mkv" % (i, i) for i in range(1, 11)])
        by = {e["name"]: e for e in doc["entries"]}
        self.assertTrue(by["Extras"]["folder"])
        self.assertEqual(by["S01E03 #3.mkv"]["size"], 103)
        self.assertEqual(by["S01E03 #3.mkv"]["etag"], '"%s"' % hashlib.sha1(b"x" * 103).hexdigest().upper())
        node = fake._tree[fake.file_id("/Shows/剧 集/S01E03 #3.mkv")]
        self.assertEqual(by["S01E03 #3.mkv"]["mtime_ms"], int(node.updated * 1000))  # updated_at, to the ms

        st = fake.stats()
        # root (1 page) → Shows (1 page) → 剧 集 (11 entries: 4 pages of 3), one drive lookup.
        self.assertEqual(st["list_calls"], 6)
        self.assertEqual(st["drive_info_calls"], 1)
        self.assertEqual(st["too_many"], {}, "the account's gate let a call through too early")
        self.assertEqual(st["reused_tokens"], [])
        lists = [c for c in st["calls"] if c["path"] == "/adrive/v1.0/openFile/list"]
        self.assertTrue(all(c["status"] == 200 and c["json"]["limit"] == 100 for c in lists), lists)
        self.assertEqual(sum(1 for c in lists if c["json"]["marker"]), 3)  # pages 2-4 follow the markers

        self.ls_fails(ini, "/shows/Shows/nope", "404")
        self.ls_fails(ini, "/shows/Shows/剧 集/S01E01 #1.mkv", "404 not a folder")


# --------------------------------------------------------------------- users


class Users(BrowseTest):
    def test_passwd_and_check(self):
        p = self.cli("[server]\n", "passwd", stdin=b"correct horse \xc3\xbc\n")
        self.assertEqual(p.returncode, 0, p.stderr)
        h = p.stdout.decode().strip()
        self.assertTrue(h.startswith("$y$"), h)
        self.assertEqual(crypt.crypt("correct horse ü", h), h)  # libcrypt agrees, not only our code
        self.assertNotEqual(crypt.crypt("correct horse u", h), h)
        p = self.cli("[server]\ndav_allow = 192.168.0.0/16\n[user alice]\npassword_hash = %s\n" % h, "check")
        self.assertEqual(p.returncode, 0, p.stderr)
        bad = ("[server]\n[user alice]\npassword_hash = hunter2\n[user bob]\n"
               "password_hash = $1$saltsalt$4px9i58NU2Z2/vZOUlGjq.\n[user carol]\npassword_hash = %s\n"
               % h[:-3])
        p = self.cli(bad, "check")
        self.assertEqual(p.returncode, 2)
        err = p.stderr.decode()
        self.assertRegex(err, r"cli-\d+\.ini:3: \[user alice\] password_hash: not a crypt\(3\) hash")
        self.assertRegex(err, r"cli-\d+\.ini:5: \[user bob\] password_hash: a weak hash method")
        self.assertRegex(err, r"cli-\d+\.ini:7: \[user carol\] password_hash: incomplete hash")
        self.assertNotIn("hunter2", err)  # a secret is never quoted back


# --------------------------------------------------------------------- strm


class StrmExport(BrowseTest):
    def prepare(self):
        self.root = os.path.join(self.tmp, "root")
        self.out = os.path.join(self.tmp, "strm")
        self.src = {
            "Movies/千与千寻 (2001)/千与千寻 (2001).mkv": random_bytes(300 * KiB + 7, seed=11),
            "Movies/千与千寻 (2001)/千与千寻 (2001).srt": "1\n00:00:01,000 --> 00:00:02,000\n你好\n".encode(),
            "Movies/千与千寻 (2001)/poster.jpg": random_bytes(20 * KiB, seed=12),
            "Movies/千与千寻 (2001)/fanart.png": random_bytes(100 * KiB, seed=13),  # over --sidecar-max
            "Movies/dup/a.mkv": b"mkv",
            "Movies/dup/a.mp4": b"mp4",
            "Shows/Show #1/S01/E01 100% & more.mp4": random_bytes(50 * KiB, seed=14),
            "Shows/Show #1/S01/E01 100% & more.ass": b"[Script Info]\n",
            "Shows/Show #1/tvshow.nfo": b"<tvshow/>",
            "Docs/readme.txt": b"no media here",
            "Docs/cover.jpg": b"no media here either",
        }
        for rel, data in self.src.items():
            write_file(os.path.join(self.root, rel), data)
        self.gw = self.gateway("[server]\nsign_secret = %s\n[mount m]\nsource = local\nroot = %s\n"
                               % (SECRET, self.root))

    def strm(self, *extra):
        p = subprocess.run([BIN, "strm", "-c", self.gw.ini, "--mount", "m", "--out", self.out,
                            "--base-url", self.gw.url(""), "--sidecar-max", "64K", *extra],
                           capture_output=True, timeout=120)
        return p.returncode, p.stdout.decode(), p.stderr.decode()

    def test_export_rerun_download_prune(self):
        self.prepare()
        # A file the user made where the export wants one: left alone.
        write_file(os.path.join(self.out, "Movies/千与千寻 (2001)/poster.jpg"), b"my own poster")
        rc, out, err = self.strm()
        self.assertEqual(rc, 0, out + err)
        self.assertIn("! Movies/千与千寻 (2001)/poster.jpg: exists and was not made", out)
        self.assertIn("! Movies/千与千寻 (2001)/fanart.png: 102400 bytes, more than --sidecar-max", out)
        self.assertIn("4 media files, 5 sidecars; 4 strm written, 3 sidecars copied, 0 unchanged, 1 too big, "
                      "0 pruned, 1 conflicts, 0 errors", out)
        files = tree(self.out)
        self.assertEqual(sorted(files), sorted([
            "Movies/千与千寻 (2001)/千与千寻 (2001).strm", "Movies/千与千寻 (2001)/千与千寻 (2001).srt",
            "Movies/千与千寻 (2001)/poster.jpg", "Movies/dup/a.mkv.strm", "Movies/dup/a.mp4.strm",
            "Shows/Show #1/S01/E01 100% & more.strm", "Shows/Show #1/S01/E01 100% & more.ass",
            "Shows/Show #1/tvshow.nfo"]))
        self.assertEqual(files["Movies/千与千寻 (2001)/poster.jpg"][2], b"my own poster")
        for rel in ["Movies/千与千寻 (2001)/千与千寻 (2001).srt", "Shows/Show #1/S01/E01 100% & more.ass",
                    "Shows/Show #1/tvshow.nfo"]:
            self.assertEqual(files[rel][2], self.src[rel], rel)
        self.assertEqual(folders(self.out), ["Movies", "Movies/dup", "Movies/千与千寻 (2001)", "Shows",
                                             "Shows/Show #1", "Shows/Show #1/S01"])

        # Each strm holds one signed, percent-encoded gateway URL that downloads byte-exact.
        for strm_rel, src_rel in [("Movies/千与千寻 (2001)/千与千寻 (2001).strm",
                                   "Movies/千与千寻 (2001)/千与千寻 (2001).mkv"),
                                  ("Shows/Show #1/S01/E01 100% & more.strm", "Shows/Show #1/S01/E01 100% & more.mp4"),
                                  ("Movies/dup/a.mp4.strm", "Movies/dup/a.mp4")]:
            text = files[strm_rel][2].decode()
            self.assertTrue(text.endswith("\n") and text.count("\n") == 1, text)
            url = urllib.parse.urlsplit(text.strip())
            self.assertEqual(url.netloc, "127.0.0.1:%d" % self.gw.port)
            self.assertNotIn(" ", url.path)
            self.assertEqual(urllib.parse.unquote(url.path), "/d/m/" + src_rel)
            self.assertEqual(urllib.parse.parse_qs(url.query)["sign"], [alist_sign(SECRET, "/m/" + src_rel, 0)])
            r = self.gw.get(url.path + "?" + url.query)
            self.assertEqual(r.status, 200, r.body[:200])
            self.assertEqual(sha256(r.body), sha256(self.src[src_rel]))
        self.assertEqual(self.gw.get(urllib.parse.urlsplit(
            files["Movies/dup/a.mkv.strm"][2].decode().strip()).path).status, 401)  # unsigned: refused

        # A second run over an unchanged source changes nothing on disk.
        rc, out, err = self.strm()
        self.assertEqual(rc, 0, out + err)
        self.assertIn("0 strm written, 0 sidecars copied, 7 unchanged", out)
        self.assertEqual(tree(self.out), files)

        # Gone at the source: --prune removes what the export made for it, and
        # its folders once empty; files the user put there stay.
        write_file(os.path.join(self.out, "Shows/Show #1/S01/my notes.txt"), b"mine")
        for rel in ["Shows/Show #1/S01/E01 100% & more.mp4", "Movies/dup/a.mp4"]:
            os.unlink(os.path.join(self.root, rel))
        rc, out, err = self.strm()  # without --prune: nothing removed
        self.assertEqual(rc, 0, out + err)
        self.assertIn("0 pruned", out)
        self.assertIn("+ Movies/dup/a.strm", out)  # a.mkv no longer shares its stem
        self.assertIn("Shows/Show #1/S01/E01 100% & more.strm", tree(self.out))
        rc, out, err = self.strm("--prune")
        self.assertEqual(rc, 0, out + err)
        after = tree(self.out)
        self.assertEqual(sorted(after), sorted([
            "Movies/千与千寻 (2001)/千与千寻 (2001).strm", "Movies/千与千寻 (2001)/千与千寻 (2001).srt",
            "Movies/千与千寻 (2001)/poster.jpg", "Movies/dup/a.strm", "Shows/Show #1/S01/my notes.txt"]))
        self.assertEqual(after["Shows/Show #1/S01/my notes.txt"][2], b"mine")
        self.assertEqual(after["Movies/千与千寻 (2001)/poster.jpg"][2], b"my own poster")
        self.assertIn("- Shows/Show #1/S01/E01 100% & more.strm", out)
        self.assertIn("- Shows/Show #1/tvshow.nfo", out)
        self.assertIn("- Shows/Show #1/S01/E01 100% & more.ass", out)
        self.assertIn("- Movies/dup/a.mkv.strm", out)  # a.strm replaced it
        self.assertIn("- Movies/dup/a.mp4.strm", out)
        self.assertIn("0 strm written, 0 sidecars copied, 3 unchanged, 1 too big, 5 pruned", out)
        # Kept: the folder with the user's file and its parents; the rest went.
        self.assertEqual(folders(self.out), ["Movies", "Movies/dup", "Movies/千与千寻 (2001)", "Shows",
                                             "Shows/Show #1", "Shows/Show #1/S01"])
        os.unlink(os.path.join(self.out, "Shows/Show #1/S01/my notes.txt"))
        rc, out, err = self.strm("--prune")
        self.assertEqual(rc, 0, out + err)
        self.assertEqual(folders(self.out), ["Movies", "Movies/dup", "Movies/千与千寻 (2001)"])

    def test_expiring_signs_and_bad_options(self):
        self.prepare()
        before = int(time.time())
        rc, out, err = self.strm("--sign-ttl", "1h", "--ext", ".MP4")
        self.assertEqual(rc, 0, out + err)
        files = tree(self.out)
        self.assertEqual(sorted(k for k in files if k.endswith(".strm")),
                         ["Movies/dup/a.strm", "Shows/Show #1/S01/E01 100% & more.strm"])
        text = files["Movies/dup/a.strm"][2].decode().strip()
        sign = urllib.parse.parse_qs(urllib.parse.urlsplit(text).query)["sign"][0]
        expiry = int(sign.rsplit(":", 1)[1])
        self.assertTrue(before + 3600 <= expiry <= int(time.time()) + 3601, expiry)
        self.assertEqual(sign, alist_sign(SECRET, "/m/Movies/dup/a.mp4", expiry))
        self.assertEqual(self.gw.get(urllib.parse.urlsplit(text).path + "?" + urllib.parse.urlsplit(text).query)
                         .body, b"mp4")
        for args, fragment in [(["--mount", "nope", "--out", self.out], "no [mount nope]"),
                               (["--mount", "m"], "--out DIR are required"),
                               (["--mount", "m", "--out", self.out, "--sign-ttl", "soon"], "bad --sign-ttl"),
                               (["--mount", "m", "--out", self.out, "--base-url", "ftp://x"], "--base-url must be"),
                               (["--mount", "m", "--out", self.out, "--ext", ","], "--ext names no extension")]:
            p = subprocess.run([BIN, "strm", "-c", self.gw.ini, *args], capture_output=True, timeout=60)
            self.assertEqual(p.returncode, 2, args)
            self.assertIn(fragment, p.stderr.decode())
        # An output folder of another mount's export is refused.
        with open(os.path.join(self.out, ".slipstream-strm.json")) as f:
            manifest = json.load(f)
        self.assertEqual((manifest["format"], manifest["version"], manifest["mount"]), ("slipstream-strm", 1, "m"))
        manifest["mount"] = "other"
        with open(os.path.join(self.out, ".slipstream-strm.json"), "w") as f:
            json.dump(manifest, f)
        rc, out, err = self.strm()
        self.assertEqual(rc, 2)
        self.assertIn("holds the export of mount other", err)
