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
}


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
