#!/usr/bin/env python3
"""Writes the seed corpora of the text-format fuzz targets into
tests/fuzz/corpus/<target>/ (run from anywhere; rerun after editing). The
media_index seeds are the committed media fixtures, copied by
tests/unit/media/make_fixtures.sh."""
import hashlib
import os
import struct

ROOT = os.path.dirname(os.path.abspath(__file__))


def u64(n):
    return struct.pack("<Q", n & 0xFFFFFFFFFFFFFFFF)


SEEDS = {
    "range": [u64(1 + 2 * 10000) + h for h in (
        b"bytes=0-499", b"bytes=500-", b"bytes=-500", b"bytes=0-0,5-9", b"BYTES = 1-2",
        b"bytes=0-18446744073709551615", b"bytes=, 0-1", b"bytes=9-3", b"items=0-1")]
        + [u64(1 << 40) + b"bytes=1099511627775-"],
    "content_range": [b"bytes 0-499/1234", b"bytes */1234", b"bytes 0-0/*", b"bytes 5-9/10",
                      b"bytes 0-18446744073709551614/18446744073709551615", b"BYTES 1-1/2"],
    "http_date": [b"Sun, 06 Nov 1994 08:49:37 GMT", b"Sunday, 06-Nov-94 08:49:37 GMT",
                  b"Sun Nov  6 08:49:37 1994",
                  b"Sun, 06 Nov 1994 08:49:37 GMT\n\"abc\"\nSun, 06 Nov 1994 08:49:37 GMT",
                  b"\"abc\"\n\"abc\"\n", b"W/\"abc\"\nW/\"abc\"\n"],
    "retry_after": [u64(1) + b"120", u64(1) + b"99999999999999999",
                    u64(3400000000) + b"Tue, 14 Nov 2023 22:14:20 GMT",
                    u64(0) + b"Tue Nov 14 22:14:20 2023", u64(1 << 63) + b"0"],
    "path": [b"/d/movies/a%20b.mkv?sign=abc:0", b"/p/a/../b", b"/a/%2e%2e/b", b"//a///b/./c/",
             b"/%E7%94%B5%E5%BD%B1/x.mp4?a=1&sign=x%3A1#frag", b"/a%00b", b"/a\\b"],
    "sign": [u64(1700000000) + b"s3cr3t-token\n/a/b.mkv\nSrxn6xvX-7fq0BDbumBi7tphfp--ENPz7EHLfmyw18U=:1700000000",
             u64(0) + b"k\n/a\nabc:0", u64(5) + b"\n/\n:"],
    "link_expiry": [
        b"https://bucket.oss-cn-hangzhou.aliyuncs.com/a.mp4?OSSAccessKeyId=LTAI&Expires=1700003600&Signature=abc%3D",
        b"https://cn-beijing-data.aliyundrive.net/x?di=bj29&x-oss-access-key-id=LTAI&x-oss-expires=1700003600&x-oss-signature=a&x-oss-signature-version=OSS2",
        b"https://b.oss-cn-hangzhou.aliyuncs.com/a?x-oss-date=20231114T221320Z&x-oss-expires=3600&x-oss-signature-version=OSS4-HMAC-SHA256",
        b"https://s3.amazonaws.com/b/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date=20231114T221320Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature=ab",
        b"https://d111111abcdef8.cloudfront.net/v.mp4?Expires=1700003600&Signature=a~b&Key-Pair-Id=K2",
        b"https://cdnfhnfile.115.com/x/y.mkv?t=1700003600&u=1&s=abc",
        b"https://x.cos.ap-guangzhou.myqcloud.com/a?q-sign-algorithm=sha1&q-sign-time=1700000000%3B1700003600&q-key-time=1700000000%3B1700003600",
        b"http://h/a?e=1700003600000", b"http://h/a?expires=8h&time=1700000000"],
    # The sources' replies, in the shapes the test fakes send (test_edge.py's
    # FakeAList, fake_aliyun.py) and the token helper writes.
    "replies": [
        b'{"code":200,"message":"success","data":{"url":"http://127.0.0.1:8080/a.mkv?sign=x",'
        b'"header":{"Referer":["https://www.alipan.com/"],"Cookie":["a=1","b=2"]}}}',
        b'{"code":200,"message":"success","data":{"url":"//cdn.example/x","header":null}}',
        b'{"code":401,"message":"token is invalidated","data":null}',
        b'{"code":500,"message":"object not found","data":null}',
        '{"code":200,"message":"success","data":{"content":[{"name":"千与千寻 #1 & 100%.mkv",'
        '"size":42,"is_dir":false,"modified":"2023-11-15T06:13:20.250000000+08:00",'
        '"created":"0001-01-01T00:00:00Z","sign":"","thumb":"","type":0,"hashinfo":"null",'
        '"hash_info":{"sha1":"ABCDEF0123"}},{"name":"Sub Folder","size":0,"is_dir":true,'
        '"modified":"2023-11-15T06:13:20.000000000+08:00","created":"0001-01-01T00:00:00Z",'
        '"sign":"","thumb":"","type":1,"hashinfo":"null","hash_info":null}],"total":249,'
        '"readme":"","header":"","write":false,"provider":"Local"}}'.encode(),
        b'{"code":200,"message":"success","data":{"content":null,"total":0}}',
        b'{"code":"NotFound.File","message":"The resource file cannot be found."}',
        b'{"user_id":"u1","name":"Fake User","avatar":"","default_drive_id":"1",'
        b'"resource_drive_id":"2","backup_drive_id":"3"}',
        '{"items":[{"drive_id":"2","file_id":"f1","parent_file_id":"root","name":"S01E03 #3.mkv",'
        '"type":"file","created_at":"2024-05-01T10:00:00.000Z","updated_at":"2024-05-01T10:00:00.123Z",'
        '"size":103,"content_hash":"0A1B","content_hash_name":"sha1","file_extension":"mkv"},'
        '{"drive_id":"2","file_id":"f2","parent_file_id":"root","name":"剧 集","type":"folder",'
        '"created_at":"2024-05-01T10:00:00.000Z","updated_at":"2024-05-01T10:00:00.000Z",'
        '"file_extension":""}],"next_marker":"m2"}'.encode(),
        b'{"domain_id":"bj29","drive_id":"2","file_id":"f1","url":"http://127.0.0.1:9/d/f1?md5=x&expires=1",'
        b'"expiration":"2024-05-01T14:00:00.000Z","method":"GET"}',
        b'{"token_type":"Bearer","access_token":"eyJhbGciOiJSUzI1NiJ9.e30.c2ln",'
        b'"refresh_token":"eyJhbGciOiJSUzI1NiJ9.e30.cmVm","expires_in":7200}',
        b'{"ok":true,"access_token":"eyJ.a.b","access_expires_ms":1714572000000,"reused":false,'
        b'"persisted":true}',
        b'{"ok":true,"access_token":"eyJ.a.b","access_expires_ms":1714572000000,"reused":false,'
        b'"persisted":false,"refresh_token":"eyJ.r.t","persist_error":"disk full"}',
        b'{"ok":false,"refused":true,"status":401,"code":"InvalidParameter.RefreshToken",'
        b'"message":"refresh token is invalid"}',
        b"2024-05-01T10:00:00.000Z", b"2024-05-01T10:00:00+00:00"],
    # The current name, then the folder's names, one a line.
    "episode": [
        b"Show.S01E03.1080p.mkv\nShow.S01E01.mkv\nShow.S01E04.mkv\nShow.S01E04.srt\nShow.S02E01.mkv",
        b"show.s1e3.mkv\nshow.s1e4.mkv", b"Show 1x03.avi\nShow 1x04.avi\nMovie 1920x1080.mkv",
        b"Show EP03.mkv\nShow Ep.04.mkv\nShow E05.mkv", b"Show.S01E03E04.mkv\nShow.S01E05-E06.mkv",
        "\u5c55\u662d \u7b2c3\u96c6.mp4\n\u5c55\u662d \u7b2c4\u96c6.mp4\n"
        "\u7b2c\u5341\u4e8c\u8bdd.mkv\n\u7b2c\u4e00\u767e\u96f6\u4e94\u96c6.mp4".encode(),
        b"[Group] Title - 03 [1080p].mkv\n[Group] Title - 04v2 [1080p].mkv",
        b"/films/Season 1/Show.S01E09.mkv\n/films/Season 1/Show.S01E10.mkv"],
}

# The front end's parsers of client bytes.
PROPFIND_PROP = (b'<?xml version="1.0" encoding="utf-8" ?>\n<D:propfind xmlns:D="DAV:">\n'
                 b'  <D:prop xmlns:R="http://ns.example.com/boxschema/">\n'
                 b'    <R:bigbox/> <R:author/> <R:DingALing/> <R:Random/>\n  </D:prop>\n</D:propfind>\n')
PROPFIND_ALLPROP = (b'<?xml version="1.0" encoding="utf-8" ?>\n<D:propfind xmlns:D="DAV:">\n'
                    b'  <D:allprop/>\n</D:propfind>\n')
PROPFIND_PROPNAME = (b'<?xml version="1.0" encoding="utf-8" ?>\n<propfind xmlns="DAV:">\n'
                     b'  <propname/>\n</propfind>\n')
PROPFIND_INCLUDE = (b'<?xml version="1.0" encoding="utf-8" ?>\n<D:propfind xmlns:D="DAV:">\n'
                    b'  <D:allprop/>\n  <D:include>\n    <D:supported-live-property-set/>\n'
                    b'    <D:supported-report-set/>\n  </D:include>\n</D:propfind>\n')
# What Windows' mini-redirector, macOS Finder and rclone send.
PROPFIND_CLIENTS = (
    b'<?xml version="1.0" encoding="utf-8" ?><D:propfind xmlns:D="DAV:"><D:prop>'
    b'<D:getlastmodified/><D:getcontentlength/><D:creationdate/><D:resourcetype/></D:prop></D:propfind>',
    b'<?xml version="1.0" encoding="utf-8"?>\n<D:propfind xmlns:D="DAV:">\n<D:prop>\n'
    b'<D:getlastmodified/>\n<D:getcontentlength/>\n<D:resourcetype/>\n<D:getetag/>\n'
    b'<x:quota-available-bytes xmlns:x="DAV:"/>\n</D:prop>\n</D:propfind>\n',
    b'<?xml version="1.0" encoding="UTF-8"?><d:propfind xmlns:d="DAV:" xmlns:oc="http://owncloud.org/ns">'
    b'<d:prop><d:displayname/><d:getlastmodified/><oc:checksums/><d:lang xmlns:d=""/></d:prop></d:propfind>',
    b'<?xml version="1.0" encoding="ISO-8859-1"?><D:propfind xmlns:D="DAV:"><D:prop><D:displayname/>'
    b'</D:prop></D:propfind>',
    b'<!DOCTYPE lolz [<!ENTITY lol "lol">]><D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>',
    b'', b'  \r\n')


def http(*reqs, limits=0, cuts=7):
    return bytes([limits, cuts]) + b"".join(reqs)


GET = (b"GET /d/movies/a.mkv HTTP/1.1\r\nHost: gw:8080\r\nUser-Agent: mpv 0.35.1\r\n"
       b"Range: bytes=0-\r\nIcy-MetaData: 1\r\n\r\n")
SEEDS["webdav"] = [PROPFIND_PROP, PROPFIND_ALLPROP, PROPFIND_PROPNAME, PROPFIND_INCLUDE,
                   *PROPFIND_CLIENTS]
SEEDS["http_request"] = [
    http(GET),
    http(GET, b"HEAD /d/b.mp4?sign=abc:0 HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"),
    http("GET /d/电影/千与千寻.mkv HTTP/1.1\r\nHost: gw\r\n\r\n".encode(), cuts=1),
    http("GET /dav/剧集/S01E01 ünïcode.mkv?x=é HTTP/1.1\r\nHost: gw\r\n\r\n".encode(), cuts=3),
    http(b"POST /-/api/v1/prefetch HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n5\r\n{\"pat\r\n14;ext=1\r\nh\":\"/movies/a.mkv\"}\r\n0\r\n"
         b"Trailer: x\r\n\r\n"),
    http(b"PROPFIND /dav/movies/ HTTP/1.1\r\nHost: gw\r\nDepth: 1\r\nContent-Type: text/xml\r\n"
         b"Content-Length: " + str(len(PROPFIND_ALLPROP)).encode() + b"\r\n\r\n" + PROPFIND_ALLPROP),
    http(b"PUT /dav/x HTTP/1.1\r\nHost: gw\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc"),
    http(b"GET / HTTP/1.0\r\n\r\n"),
    http(b"\r\nGET /a HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx"),
    http(b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n"),
    http(b"CONNECT gw:443 HTTP/1.1\r\nHost: gw:443\r\n\r\nGET / HTTP/1.1\r\n\r\n"),
    http(GET, limits=0x93),
]
SEEDS["basic_auth"] = [
    b"Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==",   # RFC 7617: Aladdin:open sesame
    b"Basic dGVzdDoxMjPCow==",               # RFC 7617 §2.1: test:123£ (UTF-8)
    b"basic\tYWxpY2U6",                      # alice: (empty password)
    b"  BASIC   OnNlY3JldA==  ",             # :secret (empty user)
    b"Basic YWxpY2U6cGFzczp3aXRoOmNvbG9ucw==",
    b"Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig",
    b"Basic YWxpY2U", b"Basic ====", b"Basic"]
SEEDS["admin_body"] = [
    b'{"path": "/movies/a.mkv"}', b'{"prefix": "/movies/Season 1/"}',
    '{"path":"/电影/千与千寻 #1 & 100%.mkv"}'.encode(), b'{"path": "/a", "prefix": "/b"}',
    b'{"path": "movies/a.mkv"}', b'{"path": "/a/../../etc/passwd"}', b'{"path": "/a\\u0000b"}',
    b'{"path": 42}', b'{"paht": "/a"}', b'[{"path": "/a"}]', b'{"path": "/a"', b"",
    b'{"path": "/a", "x": [[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]}', b'{"path":"\\ud800"}']


def main():
    for target, seeds in SEEDS.items():
        d = os.path.join(ROOT, "corpus", target)
        os.makedirs(d, exist_ok=True)
        for s in seeds:
            with open(os.path.join(d, hashlib.sha1(s).hexdigest()[:16]), "wb") as f:
                f.write(s)
    ini = os.path.join(ROOT, "corpus", "ini")
    os.makedirs(ini, exist_ok=True)
    src = os.path.join(ROOT, "..", "..", "conf", "slipstream.ini")
    with open(src, "rb") as f:
        data = f.read()
    with open(os.path.join(ini, "slipstream.ini"), "wb") as f:
        f.write(data)
    small = (b"[server]\nlisten = 127.0.0.1:0\n[cache]\ndir = /tmp/x\nmax_size = 1G\n"
             b"[mount movies]\nsource = http\nprefix = /movies\nbase_url = http://127.0.0.1:1/\n"
             b"[rule big]\nmin_size = 1.5G\ndelivery = redirect\n")
    with open(os.path.join(ini, "small.ini"), "wb") as f:
        f.write(small)


if __name__ == "__main__":
    main()
