"""The Aliyundrive fake (fake_aliyun.py) holds itself to its contract: each
test here drives the fake directly, the way a careless client would, and
checks that it is refused exactly as the real service would refuse it
(token rotation and reuse, access expiry, pagination, rate limits, signed
expiring download links, the per-account connection limit of the download
nginx). No gateway is involved.
"""

import base64
import calendar
import hashlib
import http.client
import json
import os
import time
import urllib.parse

from fake_aliyun import FakeAliyun, ManualClock
from harness import GatewayTest, random_bytes, request, sha256, wait_until

KiB = 1024
MiB = 1024 * 1024

TOKEN = "/oauth/access_token"
RELAY = "/relay/token"
DRIVE_INFO = "/adrive/v1.0/user/getDriveInfo"
LIST = "/adrive/v1.0/openFile/list"
LINK = "/adrive/v1.0/openFile/getDownloadUrl"


class Answer:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = {k.lower(): v for k, v in headers}
        self.raw = body
        self.json = json.loads(body.decode("utf-8"))

    @property
    def code(self):
        return self.json.get("code")

    def __repr__(self):
        return "<Answer %d %s>" % (self.status, self.raw[:300])


def api(fake, path, body=None, token=None, content_type="application/json", method="POST", raw=None):
    """One call to the fake's API server; the answer must be JSON."""
    headers = {}
    if content_type:
        headers["Content-Type"] = content_type
    if token:
        headers["Authorization"] = "Bearer " + token
    data = raw if raw is not None else (json.dumps(body if body is not None else {}).encode()
                                         if method == "POST" else None)
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=10)
    try:
        conn.request(method, path, body=data, headers=headers)
        r = conn.getresponse()
        a = Answer(r.status, r.getheaders(), r.read())
    finally:
        conn.close()
    assert a.headers.get("content-type") == "application/json", a.headers
    return a


def exchange(fake, refresh_token, path=TOKEN, **over):
    body = dict(client_id=fake.client_id, client_secret=fake.client_secret,
                grant_type="refresh_token", refresh_token=refresh_token)
    body.update(over)
    return api(fake, path, body)


class FakeAliyunTest(GatewayTest):
    def fake(self, **kw):
        f = FakeAliyun(os.path.join(self.tmp, "aliyun"), **kw)
        self._fixtures.append(f.stop)
        return f

    def login(self, fake):
        a = exchange(fake, fake.current_refresh_token)
        self.assertEqual(a.status, 200, a)
        return a.json["access_token"]

    def assertError(self, a, status, code):
        self.assertEqual((a.status, a.code), (status, code), a)
        self.assertIsInstance(a.json.get("message"), str)


# --------------------------------------------------------------------- tokens


class Tokens(FakeAliyunTest):
    def test_rotation_consumes_the_presented_token(self):
        f = self.fake()
        a = exchange(f, f.initial_refresh_token)
        self.assertEqual(a.status, 200, a)
        self.assertEqual(sorted(a.json), ["access_token", "expires_in", "refresh_token", "token_type"])
        self.assertEqual(a.json["token_type"], "Bearer")
        self.assertEqual(a.json["expires_in"], 3)
        rt2 = a.json["refresh_token"]
        self.assertNotEqual(rt2, f.initial_refresh_token)
        self.assertEqual(f.current_refresh_token, rt2)

        again = exchange(f, f.initial_refresh_token)
        self.assertError(again, 401, "InvalidParameter.RefreshToken")
        self.assertEqual(again.json["message"], "invalid refresh token")
        self.assertEqual(f.stats()["reused_tokens"], [f.initial_refresh_token])

        b = exchange(f, rt2)
        self.assertEqual(b.status, 200, b)
        self.assertNotEqual(b.json["access_token"], a.json["access_token"])
        s = f.stats()
        self.assertEqual(s["refreshes"], 2)
        self.assertEqual(s["invalid_tokens"], 0)

        unknown = exchange(f, "rt-never-issued")
        self.assertError(unknown, 401, "InvalidParameter.RefreshToken")
        s = f.stats()
        self.assertEqual(s["invalid_tokens"], 1)
        self.assertEqual(s["reused_tokens"], [f.initial_refresh_token], "an unknown token is not a reuse")

    def test_tokens_are_jwts_of_real_size(self):
        f = self.fake()

        def claims(token):
            parts = token.split(".")
            self.assertEqual(len(parts), 3, token[:80])
            for p in parts:
                self.assertRegex(p, r"^[A-Za-z0-9_-]+$")
            pad = lambda p: p + "=" * (-len(p) % 4)
            head = json.loads(base64.urlsafe_b64decode(pad(parts[0])))
            self.assertEqual(head, {"typ": "JWT", "alg": "RS256"})
            self.assertEqual(len(base64.urlsafe_b64decode(pad(parts[2]))), 256)
            return json.loads(base64.urlsafe_b64decode(pad(parts[1])))

        first = f.initial_refresh_token
        c = claims(first)
        self.assertEqual((c["aud"], c["typ"]), ("cid", "refresh"))
        a = exchange(f, first)
        self.assertEqual(a.status, 200, a)
        rt, at = a.json["refresh_token"], a.json["access_token"]
        self.assertNotEqual(rt, first)
        self.assertEqual(claims(rt)["sub"], c["sub"])
        self.assertIn("customJson", claims(at))
        self.assertTrue(500 <= len(first) <= 800 and 500 <= len(rt) <= 800, (len(first), len(rt)))
        self.assertTrue(900 <= len(at) <= 1400, len(at))
        print("\n    [fig] refresh token %d characters, access token %d" % (len(rt), len(at)), end="")

    def test_relay_needs_no_client_credentials(self):
        f = self.fake()
        a = api(f, RELAY, dict(grant_type="refresh_token", refresh_token=f.initial_refresh_token))
        self.assertEqual(a.status, 200, a)
        b = api(f, RELAY, dict(client_id="", client_secret="", grant_type="refresh_token",
                               refresh_token=a.json["refresh_token"]))
        self.assertEqual(b.status, 200, b)
        # The relay rotates the same chain.
        self.assertError(api(f, RELAY, dict(grant_type="refresh_token", refresh_token=f.initial_refresh_token)),
                         401, "InvalidParameter.RefreshToken")
        self.assertEqual(f.stats()["reused_tokens"], [f.initial_refresh_token])
        # The direct endpoint does need them.
        c = api(f, TOKEN, dict(grant_type="refresh_token", refresh_token=b.json["refresh_token"]))
        self.assertError(c, 401, "InvalidClient")
        self.assertEqual(f.relay_url, f.api_url + RELAY)

    def test_wrong_client_or_grant_is_refused_without_consuming(self):
        f = self.fake()
        self.assertError(exchange(f, f.initial_refresh_token, client_secret="nope"), 401, "InvalidClient")
        self.assertError(exchange(f, f.initial_refresh_token, client_id="other"), 401, "InvalidClient")
        self.assertError(exchange(f, f.initial_refresh_token, grant_type="authorization_code"), 400,
                         "InvalidParameter.GrantType")
        self.assertError(exchange(f, ""), 400, "InvalidParameter.RefreshToken")
        # None of those consumed the token.
        self.assertEqual(exchange(f, f.initial_refresh_token).status, 200)
        self.assertEqual(f.stats()["reused_tokens"], [])

    def test_revoke(self):
        f = self.fake()
        rt = exchange(f, f.initial_refresh_token).json["refresh_token"]
        fresh = f.revoke()
        self.assertNotEqual(fresh, rt)
        self.assertEqual(f.current_refresh_token, fresh)
        self.assertError(exchange(f, rt), 401, "InvalidParameter.RefreshToken")
        s = f.stats()
        self.assertEqual(s["reused_tokens"], [], "a revoked token is not a reuse")
        self.assertEqual(s["invalid_tokens"], 1)
        self.assertEqual(exchange(f, fresh).status, 200)

    def test_token_endpoint_is_not_rate_limited(self):
        f = self.fake()
        for _ in range(6):
            self.assertEqual(exchange(f, f.current_refresh_token).status, 200)
        self.assertEqual(f.stats()["refreshes"], 6)

    def test_post_and_json_only(self):
        f = self.fake()
        good = dict(client_id="cid", client_secret="csecret", grant_type="refresh_token",
                    refresh_token=f.initial_refresh_token)
        # A valid JSON body is refused without the JSON Content-Type.
        a = api(f, TOKEN, good, content_type="text/plain")
        self.assertError(a, 400, "InvalidParameter")
        self.assertIn("Content-Type", a.json["message"])
        self.assertError(api(f, TOKEN, good, content_type=None), 400, "InvalidParameter")
        self.assertError(api(f, TOKEN, raw=b"{not json"), 400, "InvalidParameter")
        self.assertError(api(f, TOKEN, body=["a list"]), 400, "InvalidParameter")
        g = api(f, TOKEN, method="GET", content_type=None)
        self.assertEqual(g.status, 405, g)
        self.assertError(api(f, "/adrive/v1.0/openFile/nope", {}), 404, "NotFound")
        # charset parameter is fine; the token still works afterwards.
        self.assertEqual(api(f, TOKEN, good, content_type="application/json; charset=utf-8").status, 200)
        calls = f.stats()["calls"]
        self.assertEqual([c["status"] for c in calls], [400, 400, 400, 400, 405, 404, 200])
        self.assertEqual(calls[-1]["json"]["refresh_token"], f.initial_refresh_token)


# --------------------------------------------------------------------- access tokens


class AccessTokens(FakeAliyunTest):
    def test_access_token_expires(self):
        clock = ManualClock()
        f = self.fake(access_ttl=0.5, list_rate=None, clock=clock)
        a = exchange(f, f.initial_refresh_token)
        self.assertEqual(a.json["expires_in"], 1, "expires_in is an int, at least 1")
        at1 = a.json["access_token"]
        self.assertEqual(api(f, DRIVE_INFO, {}, at1).status, 200)
        clock.advance(0.49)
        self.assertEqual(api(f, DRIVE_INFO, {}, at1).status, 200)
        clock.advance(0.01)  # access_ttl after the exchange: dead
        self.assertError(api(f, DRIVE_INFO, {}, at1), 401, "AccessTokenExpired")
        self.assertEqual(f.stats()["access_expired"], 1)

        # A refresh does not cut an older, unexpired access token short.
        at2 = self.login(f)
        at3 = self.login(f)
        self.assertEqual(api(f, DRIVE_INFO, {}, at2).status, 200)
        self.assertEqual(api(f, DRIVE_INFO, {}, at3).status, 200)
        clock.advance(0.6)
        self.assertError(api(f, LIST, dict(drive_id=f.drive_ids["resource"], parent_file_id="root"), at2),
                         401, "AccessTokenExpired")
        self.assertEqual(f.stats()["access_expired"], 2)

    def test_bearer_required(self):
        f = self.fake(list_rate=None)
        at = self.login(f)
        a = api(f, DRIVE_INFO, {})
        self.assertError(a, 401, "AccessTokenInvalid")
        self.assertEqual(a.json["message"], "AccessToken is invalid. ErrValidateTokenFailed")
        self.assertError(api(f, DRIVE_INFO, {}, "at-unknown"), 401, "AccessTokenInvalid")
        # The raw token without the scheme is not enough.
        conn = http.client.HTTPConnection("127.0.0.1", f.port, timeout=10)
        conn.request("POST", DRIVE_INFO, body=b"{}",
                     headers={"Content-Type": "application/json", "Authorization": at})
        r = conn.getresponse()
        self.assertEqual((r.status, json.loads(r.read())["code"]), (401, "AccessTokenInvalid"))
        conn.close()
        self.assertEqual(f.stats()["access_invalid"], 3)
        self.assertEqual(f.stats()["drive_info_calls"], 0)

        d = api(f, DRIVE_INFO, {}, at)
        self.assertEqual(d.status, 200, d)
        self.assertEqual(d.json["default_drive_id"], f.drive_ids["default"])
        self.assertEqual(d.json["resource_drive_id"], f.drive_ids["resource"])
        self.assertEqual(d.json["backup_drive_id"], f.drive_ids["backup"])
        self.assertEqual(d.json["avatar"], "")
        self.assertIn("user_id", d.json)
        self.assertIn("name", d.json)
        self.assertEqual(f.stats()["drive_info_calls"], 1)


# --------------------------------------------------------------------- listing


NAMES = ["a.mkv", "b  two spaces.mp4", "c.txt", "新 建 文件.mkv", "千与千寻 (2001).mkv",
         "d", "e.bin", "f.iso", "g.srt", "h.ass"]


class Listing(FakeAliyunTest):
    def prepare_tree(self, **kw):
        f = self.fake(list_rate=None, link_rate=None, **kw)
        self.datas = {}
        for i, name in enumerate(NAMES):
            data = random_bytes(100 + i, seed=i)
            self.datas[name] = data
            f.add_file("/Movies/新 建/" + name, data)
        self.folder = f.add_folder("/Movies/新 建")
        f.add_folder("/Movies/新 建/sub dir")  # 11 entries in all
        return f, self.login(f)

    def list_all(self, f, at, parent, limit=100):
        pages, marker = [], ""
        while True:
            a = api(f, LIST, dict(drive_id=f.drive_ids["resource"], parent_file_id=parent,
                                  limit=limit, marker=marker), at)
            self.assertEqual(a.status, 200, a)
            pages.append(a.json["items"])
            marker = a.json["next_marker"]
            if not marker:
                return pages
            self.assertLess(len(pages), 20, "runaway pagination")

    def test_pagination(self):
        f, at = self.prepare_tree(page_size=3)
        pages = self.list_all(f, at, self.folder)
        self.assertEqual([len(p) for p in pages], [3, 3, 3, 2])
        items = [it for p in pages for it in p]
        self.assertEqual([it["name"] for it in items], sorted(NAMES + ["sub dir"]))
        for it in items:
            self.assertEqual(it["parent_file_id"], self.folder)
            self.assertEqual(it["drive_id"], f.drive_ids["resource"])
            self.assertRegex(it["updated_at"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
            if it["name"] == "sub dir":
                self.assertEqual(it["type"], "folder")
                self.assertNotIn("size", it)
                continue
            data = self.datas[it["name"]]
            self.assertEqual(it["type"], "file")
            self.assertEqual(it["size"], len(data))
            self.assertEqual(it["content_hash"], hashlib.sha1(data).hexdigest().upper())
            self.assertEqual(it["content_hash_name"], "sha1")
            self.assertEqual(it["file_id"], f.file_id("/Movies/新 建/" + it["name"]))
        self.assertEqual(next(it for it in items if it["name"] == "a.mkv")["file_extension"], "mkv")
        # A smaller limit wins over the page size.
        self.assertEqual([len(p) for p in self.list_all(f, at, self.folder, limit=2)], [2] * 5 + [1])
        # Root and an empty drive.
        root = self.list_all(f, at, "root")
        self.assertEqual([it["name"] for p in root for it in p], ["Movies"])
        empty = api(f, LIST, dict(drive_id=f.drive_ids["default"], parent_file_id="root"), at)
        self.assertEqual(empty.json, dict(items=[], next_marker=""))

    def test_bad_parameters(self):
        f, at = self.prepare_tree(page_size=3)
        base = dict(drive_id=f.drive_ids["resource"], parent_file_id=self.folder)
        first = api(f, LIST, dict(base, limit=3), at)
        marker = first.json["next_marker"]
        self.assertTrue(marker)
        for bogus in ["bogus", base64.urlsafe_b64encode(b"x/y/1").decode(),
                      base64.urlsafe_b64encode(b"%s/%s/999" % (f.drive_ids["resource"].encode(),
                                                               self.folder.encode())).decode()]:
            self.assertError(api(f, LIST, dict(base, limit=3, marker=bogus), at), 400,
                             "InvalidParameter.Marker")
        # A marker belongs to its listing.
        self.assertError(api(f, LIST, dict(drive_id=f.drive_ids["resource"], parent_file_id="root",
                                           limit=3, marker=marker), at), 400, "InvalidParameter.Marker")
        for limit in [101, 0, -1, "10", 2.5, True]:
            self.assertError(api(f, LIST, dict(base, limit=limit), at), 400, "InvalidParameter.Limit")
        self.assertEqual(api(f, LIST, dict(base, limit=100), at).status, 200)
        self.assertEqual(api(f, LIST, dict(base, limit=3, marker=marker), at).status, 200)

    def test_not_found(self):
        f, at = self.prepare_tree()
        res = f.drive_ids["resource"]
        fid = f.file_id("/Movies/新 建/a.mkv")
        self.assertError(api(f, LIST, dict(drive_id="999", parent_file_id="root"), at), 404, "NotFound.Drive")
        nf = api(f, LIST, dict(drive_id=res, parent_file_id="0" * 40), at)
        self.assertError(nf, 404, "NotFound.File")
        self.assertEqual(nf.json["message"], "The resource file cannot be found. file not exist")
        self.assertError(api(f, LIST, dict(drive_id=res, parent_file_id=fid), at), 404, "NotFound.File")
        # The file lives in the resource drive only.
        self.assertError(api(f, LIST, dict(drive_id=f.drive_ids["backup"], parent_file_id=self.folder), at),
                         404, "NotFound.File")
        self.assertError(api(f, LINK, dict(drive_id=res, file_id=self.folder, expire_sec=900), at),
                         400, "NotSupported.File")
        self.assertError(api(f, LINK, dict(drive_id=res, file_id="f" * 40, expire_sec=900), at),
                         404, "NotFound.File")
        self.assertError(api(f, LINK, dict(drive_id="999", file_id=fid, expire_sec=900), at),
                         404, "NotFound.Drive")
        with self.assertRaises(KeyError):
            f.file_id("/Movies/nothing")


# --------------------------------------------------------------------- rate limits


class RateLimits(FakeAliyunTest):
    def test_download_url_rate(self):
        clock = ManualClock()
        f = self.fake(link_rate=1.0, clock=clock)
        fid = f.add_file("/a.bin", b"x" * 10)
        at = self.login(f)
        body = dict(drive_id=f.drive_ids["resource"], file_id=fid, expire_sec=900)
        self.assertEqual(api(f, LINK, body, at).status, 200)
        clock.advance(0.2)
        tm = api(f, LINK, body, at)
        self.assertError(tm, 429, "TooManyRequests")
        self.assertEqual(tm.json["message"], "Too Many Requests")
        self.assertNotIn("retry-after", tm.headers)
        # The 429 consumed nothing: 0.9 s (of a 1/s bucket) after the first
        # success is fine, 0.89 s is not.
        clock.advance(0.69)
        self.assertError(api(f, LINK, body, at), 429, "TooManyRequests")
        clock.advance(0.16)  # 1.05 s after the first success
        self.assertEqual(api(f, LINK, body, at).status, 200)
        clock.advance(1.05)
        self.assertEqual(api(f, LINK, body, at).status, 200)
        s = f.stats()
        self.assertEqual(s["link_calls"], {fid: 3})
        self.assertEqual(s["too_many"], {"getDownloadUrl": 2})

    def test_list_rate(self):
        clock = ManualClock()
        f = self.fake(list_rate=4.0, clock=clock)
        fid = f.add_file("/a.bin", b"x" * 10)
        at = self.login(f)
        body = dict(drive_id=f.drive_ids["resource"], parent_file_id="root", limit=10)
        for i in range(5):
            if i:
                clock.advance(0.3)
            self.assertEqual(api(f, LIST, body, at).status, 200, "call %d" % i)
        clock.advance(0.3)  # 1.5 s after the first
        self.assertEqual(api(f, LIST, body, at).status, 200)
        self.assertError(api(f, LIST, body, at), 429, "TooManyRequests")
        # getDriveInfo shares the bucket; getDownloadUrl has its own.
        self.assertError(api(f, DRIVE_INFO, {}, at), 429, "TooManyRequests")
        self.assertEqual(api(f, LINK, dict(drive_id=f.drive_ids["resource"], file_id=fid), at).status, 200)
        s = f.stats()
        self.assertEqual(s["list_calls"], 6)
        self.assertEqual(s["too_many"], {"list": 1, "getDriveInfo": 1})


# --------------------------------------------------------------------- downloads


def url_expires(url):
    return int(urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["expires"][0])


def parse_iso(s):
    """ "2024-05-01T10:00:00.123Z" -> Unix time."""
    return calendar.timegm(time.strptime(s[:19], "%Y-%m-%dT%H:%M:%S")) + int(s[20:23]) / 1000.0


class Downloads(FakeAliyunTest):
    def test_signed_link_expires(self):
        f = self.fake(url_life=1.5)
        data = random_bytes(300 * KiB, seed=7)
        fid = f.add_file("/Movies/新 建/film.mkv", data)
        at = self.login(f)
        before = time.time()
        a = api(f, LINK, dict(drive_id=f.drive_ids["resource"], file_id=fid, expire_sec=900), at)
        self.assertEqual(a.status, 200, a)
        j = a.json
        self.assertEqual((j["domain_id"], j["drive_id"], j["file_id"], j["method"], j["size"]),
                         ("bj29", f.drive_ids["resource"], fid, "GET", len(data)))
        self.assertRegex(j["expiration"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        # expiration = now + min(expire_sec, url_life), in UTC.
        exp = parse_iso(j["expiration"])
        self.assertGreaterEqual(exp, before + 1.5 - 0.01)
        self.assertLessEqual(exp, time.time() + 1.5)
        expires = url_expires(j["url"])
        # expires= is the ceiling of the exact deadline (expiration is truncated to ms).
        self.assertTrue(exp <= expires < exp + 1.001, (exp, expires))
        self.assertRegex(j["url"], r"^http://127\.0\.0\.1:\d+/dl/acct1/%s\?expires=\d+&md5=[\w-]+$" % fid)

        r = request(j["url"])
        self.assertEqual(r.status, 200, r)
        self.assertEqual(sha256(r.body), sha256(data))
        self.assertTrue(r.header("ETag"))
        p = request(j["url"], headers={"Range": "bytes=1000-1999"})
        self.assertEqual(p.status, 206, p)
        self.assertEqual(p.body, data[1000:2000])
        self.assertEqual(p.header("Content-Range"), "bytes 1000-1999/%d" % len(data))

        # A tampered sign, or another account's path, is a 403.
        self.assertEqual(request(j["url"][:-2] + ("AA" if not j["url"].endswith("AA") else "BB")).status, 403)
        self.assertEqual(request(j["url"].replace("/dl/acct1/", "/dl/acct2/")).status, 403)
        self.assertEqual(request(j["url"].split("?")[0]).status, 403)

        # nginx compares whole seconds: dead once time() > expires.
        wait_until(lambda: time.time() >= expires + 1.05, 5, what="link expiry")
        self.assertEqual(request(j["url"]).status, 410)
        statuses = [e["status"] for e in f.download_entries()]
        self.assertEqual(statuses, [200, 206, 403, 403, 403, 410])

    def test_expire_sec_shorter_than_url_life(self):
        f = self.fake(url_life=60, link_rate=None)
        fid = f.add_file("/x.bin", b"abc")
        at = self.login(f)
        before = time.time()
        a = api(f, LINK, dict(drive_id=f.drive_ids["resource"], file_id=fid, expire_sec=2), at)
        exp = parse_iso(a.json["expiration"])
        self.assertTrue(before + 2 - 0.01 <= exp <= time.time() + 2, (before, exp))
        # Absent expire_sec: the service default (900 s), capped by url_life.
        before = time.time()
        a = api(f, LINK, dict(drive_id=f.drive_ids["resource"], file_id=fid), at)
        exp = parse_iso(a.json["expiration"])
        self.assertTrue(before + 60 - 0.01 <= exp <= time.time() + 60, (before, exp))
        for bad in [0, 115201, "900", 1.5]:
            self.assertError(api(f, LINK, dict(drive_id=f.drive_ids["resource"], file_id=fid,
                                               expire_sec=bad), at), 400, "InvalidParameter.ExpireSec")

    def test_connection_limit(self):
        f = self.fake(download_rate="64k", download_conns=3)
        data = random_bytes(1 * MiB, seed=3)
        fid = f.add_file("/big.bin", data)
        at = self.login(f)
        url = api(f, LINK, dict(drive_id=f.drive_ids["resource"], file_id=fid, expire_sec=900), at).json["url"]
        target = url.split("127.0.0.1:")[1]
        port, path = int(target.split("/")[0]), "/" + target.split("/", 1)[1]
        # Four downloads at once: all requests out before any answer is read.
        conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=10) for _ in range(4)]
        try:
            for c in conns:
                c.request("GET", path)
            resps = [c.getresponse() for c in conns]
            statuses = sorted(r.status for r in resps)
            self.assertEqual(statuses, [200, 200, 200, 403])
            for r in resps:
                if r.status == 200:
                    self.assertEqual(r.read(1000), data[:1000])  # the bytes flow (slowly)
            time.sleep(0.3)  # all three in flight together for a while
        finally:
            for c in conns:
                c.close()  # abort: 1 MiB at 64k would take 16 s
        wait_until(lambda: len(f.download_entries(settle=0)) >= 4, 10, what="4 log lines")
        self.assertEqual(f.max_concurrent_downloads(), 3)
        entries = f.download_entries()
        self.assertEqual(sorted(e["limit_conn"] for e in entries), ["PASSED"] * 3 + ["REJECTED"])
        # The slots are free again.
        p = request(url, headers={"Range": "bytes=0-99"})
        self.assertEqual(p.status, 206)
        self.assertEqual(p.body, data[:100])
