"""Pieces the benchmark's extra tables (table_*.py) share: a raw HTTP client
that times the first body byte, markdown tables, PASS/FAIL target lines,
checked full downloads. Python standard library only."""

import os
import socket
import statistics
import subprocess
import time
import urllib.parse

import bench

MiB = bench.MiB


def split_url(url):
    """(port, path) of an http://127.0.0.1:PORT/PATH URL."""
    u = urllib.parse.urlsplit(url)
    return u.port, u.path + ("?" + u.query if u.query else "")


def http_get(url, headers=(), rng=None, max_bytes=None, max_secs=None, timeout=60.0, keep=None):
    """One GET on a new connection, as a player sends it. rng = (start, end) or
    (start, None) for an open-ended `bytes=X-`. Stops reading (and closes) after
    max_bytes of body or max_secs since the connection started, whichever
    first. Returns status, headers (lower-case names), ttfb (s from connect to
    the first body byte; None if none came), total (s), body_len and the first
    `keep` body bytes (all of them when keep is None)."""
    port, path = split_url(url)
    t0 = time.monotonic()
    deadline = t0 + (max_secs if max_secs is not None else timeout)
    req = ["GET %s HTTP/1.1" % path, "Host: 127.0.0.1:%d" % port]
    req += ["%s: %s" % kv for kv in headers]
    if rng:
        req.append("Range: bytes=%d-%s" % (rng[0], "" if rng[1] is None else str(rng[1])))
    req.append("Connection: close")
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    res = dict(status=0, headers={}, ttfb=None, total=None, body_len=0, body=b"")
    try:
        s.sendall(("\r\n".join(req) + "\r\n\r\n").encode())
        buf = b""
        body = []
        got_head = False
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            s.settimeout(min(left, timeout))
            try:
                chunk = s.recv(256 * 1024)
            except socket.timeout:
                break
            if not chunk:
                break
            if not got_head:
                buf += chunk
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > 65536:
                        raise RuntimeError("no end of response headers in 64 KiB")
                    continue
                got_head = True
                lines = buf[:end].decode("latin-1").split("\r\n")
                res["status"] = int(lines[0].split()[1])
                for ln in lines[1:]:
                    k, _, v = ln.partition(":")
                    res["headers"][k.strip().lower()] = v.strip()
                chunk = buf[end + 4:]
                if not chunk:
                    continue
            if res["ttfb"] is None:
                res["ttfb"] = time.monotonic() - t0
            if max_bytes is not None:
                chunk = chunk[:max_bytes - res["body_len"]]
            res["body_len"] += len(chunk)
            if keep is None or sum(map(len, body)) < keep:
                body.append(chunk)
            if max_bytes is not None and res["body_len"] >= max_bytes:
                break
        res["body"] = b"".join(body) if keep is None else b"".join(body)[:keep]
    finally:
        s.close()
    res["total"] = time.monotonic() - t0
    return res


def read_file_range(path, start, length):
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(length)


def median(xs):
    return statistics.median(xs) if xs else None


def percentile(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


def fmt(v, f="%.1f"):
    """A cell: numbers formatted, anything else (n/a, ERRn, —) as is."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, float)):
        return f % v
    return "n/a" if v is None else str(v)


def num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def table(header, rows):
    """Markdown table; rows are lists of already formatted cells."""
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for r in rows:
        out.append("| " + " | ".join(r) + " |")
    return out


def target(out, label, got, need, ok_fn, unit="", f="%.1f"):
    """Appends one "- label: got vs need (ratio×): PASS/FAIL" line (need None: no comparison)."""
    if not num(got) or (need is not None and not num(need)):
        out.append("- %s: not measured (%s)" % (label, fmt(got) if not num(got) else fmt(need)))
        return
    ok = ok_fn(got, need)
    if need is None:
        out.append("- %s: %s%s: %s" % (label, f % got, unit, "PASS" if ok else "FAIL"))
    else:
        out.append("- %s: %s%s vs %s%s (%.2f×): %s" % (label, f % got, unit, f % need, unit,
                                                         got / need if need else float("inf"),
                                                         "PASS" if ok else "FAIL"))


def full_download(b, srv, path, size, sha, headers=None, timeout=None, curl_extra=()):
    """Plain curl of the whole file; checks status, length and SHA-256; returns
    (MiB/s, curl result dict). Raises on anything wrong."""
    out = os.path.join(b.outdir, "tbl-full.bin")
    hdrs = srv.client_headers if headers is None else headers
    argv = bench.curl_argv(srv.url(path), out, hdrs)
    argv[1:1] = list(curl_extra)
    try:
        p = subprocess.run(argv, capture_output=True, text=True,
                           timeout=timeout or max(120.0, 6.0 * size / b.rate + 60))
        if p.returncode != 0:
            raise RuntimeError("curl exit %d: %s" % (p.returncode, p.stderr.strip()[:300]))
        r = bench.parse_curl(p.stdout)
        if r["code"] != 200 or r["size"] != size:
            raise RuntimeError("status %d, %d bytes of %d" % (r["code"], r["size"], size))
        if bench.sha256_file(out) != sha:
            raise RuntimeError("SHA-256 mismatch")
        return size / MiB / r["total"], r
    finally:
        if os.path.exists(out):
            os.unlink(out)


class Peaks:
    """Relay counters around one measurement: connections opened, most open at
    once, requests, and bytes for one path (or all)."""

    def __init__(self, relay, path=None):
        self.relay, self.path = relay, path
        relay.reset_peaks()
        self.s0 = relay.stats()
        self.p0 = relay.paths().get(path, {}) if path else {}

    def read(self):
        s1 = self.relay.stats()
        r = dict(accepted=s1["accepted"] - self.s0["accepted"], max_active=s1["max_active"],
                 requests=s1["requests"] - self.s0["requests"], down=s1["down"] - self.s0["down"],
                 max_inflight=s1["max_inflight"])
        if self.path:
            p1 = self.relay.paths().get(self.path, {})
            r["path_down"] = p1.get("down", 0) - self.p0.get("down", 0)
            r["path_requests"] = p1.get("requests", 0) - self.p0.get("requests", 0)
            r["path_max_inflight"] = p1.get("max_inflight", 0)
        return r
