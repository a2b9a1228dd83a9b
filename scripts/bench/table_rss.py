"""Memory under many clients (issue 14): 200 slow clients reading 200
different cold files at 100 KiB/s each, plus 2000 idle keep-alive
connections, for slipstream and nginx; RSS sampled every second for
--rss-seconds (60; 20 with --quick).

Setup: the origin serves rss/f000.bin … rss/f199.bin (links to one random
8 MiB file: different objects for the servers, one copy on disk), through the
main capped relay. Each server gets max_connections 4096 / worker_connections
4096 and a 5-minute keep-alive timeout so the idle connections stay.
Steps: 2000 connections each GET a 4 KiB object once (so it is cached) and
then stay open, idle; then 200 client threads (SO_RCVBUF 64 KiB, so the
server feels the slow reader) each read their own file from byte 0 at
100 KiB/s, every byte compared to the file; at the end the bench counts how
many idle connections the server still holds.
Columns: peak RSS (VmHWM summed over the server's processes; the sampled
peaks of its anonymous + shared and its file-backed parts), RSS at 10 s and
at the end (VmRSS sum), growth = mean RSS over the last third minus the mean
over the middle third, "grows" when that is over 4 MiB and 10 %; slow
clients that read only right bytes until the end; MiB they read; MiB the
origin sent; idle connections still open.
"""

import os
import socket
import threading
import time

import bench
import tablelib as tl

MiB = bench.MiB
N_SLOW, N_IDLE = 200, 2000
SLOW_RATE = 100 * 1024
FILE_SIZE = 8 * MiB
SMALL_NAME = "/small.bin"


def read_response(sock):
    """Reads one HTTP/1.1 response with a Content-Length; returns (status, body)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        c = sock.recv(65536)
        if not c:
            raise RuntimeError("closed before the headers")
        buf += c
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    n = 0
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        if k.strip().lower() == "content-length":
            n = int(v)
    while len(body) < n:
        c = sock.recv(65536)
        if not c:
            raise RuntimeError("closed in the body")
        body += c
    return int(lines[0].split()[1]), body


def open_idle(srv, n, small):
    port, path = tl.split_url(srv.url(SMALL_NAME))
    req = ("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%s\r\n" % (
        path, port, "".join("%s: %s\r\n" % kv for kv in srv.client_headers))).encode()
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.sendall(req)
        status, body = read_response(s)
        if status != 200 or body != small:
            s.close()
            raise RuntimeError("idle connection's request: status %d, %d bytes" % (status, len(body)))
        socks.append(s)
    return socks


def still_open(socks):
    n = 0
    for s in socks:
        try:
            s.setblocking(False)  # a socket with a timeout would wait for data
            if s.recv(1, socket.MSG_PEEK) == b"":
                continue
            n += 1  # unexpected bytes, but open
        except BlockingIOError:
            n += 1
        except OSError:
            pass
    return n


def slow_client(srv, i, content, deadline, out):
    port, path = tl.split_url(srv.url("/rss/f%03d.bin" % i))
    got = 0
    try:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        s.settimeout(30)
        s.connect(("127.0.0.1", port))
        s.sendall(("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%sConnection: close\r\n\r\n" % (
            path, port, "".join("%s: %s\r\n" % kv for kv in srv.client_headers))).encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            c = s.recv(16384)
            if not c:
                raise RuntimeError("closed before the headers")
            buf += c
        head, _, body = buf.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.split(b"\r\n")[0].decode("latin-1"))
        t0 = time.monotonic()
        while True:
            if body:
                if body != content[got:got + len(body)]:
                    raise RuntimeError("WRONG bytes at %d" % got)
                got += len(body)
            if got >= len(content) or time.monotonic() >= deadline:
                break
            ahead = t0 + got / SLOW_RATE - time.monotonic()
            if ahead > 0:
                time.sleep(min(ahead, max(0.0, deadline - time.monotonic())))
            body = s.recv(16384)
            if not body:
                raise RuntimeError("closed at %d of %d bytes" % (got, len(content)))
        s.close()
        out[i] = (True, got, "")
    except Exception as e:  # noqa: BLE001
        out[i] = (False, got, str(e))


def measure(b, key, srv, content, small):
    secs = b.args.rss_seconds
    b.relay.wait_idle(10)
    srv.start()
    socks = []
    try:
        socks = open_idle(srv, N_IDLE, small)
        d0 = b.relay.down()
        pgid = srv.proc.pid
        samples = []
        peak_anon = peak_file = 0
        deadline = time.monotonic() + secs
        results = [None] * N_SLOW
        threads = [threading.Thread(target=slow_client, args=(srv, i, content, deadline, results), daemon=True)
                   for i in range(N_SLOW)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        while time.monotonic() < deadline:
            st = bench.group_status(pgid)
            samples.append((time.monotonic() - t0, st["VmRSS"]))
            peak_anon = max(peak_anon, st["RssAnon"] + st["RssShmem"])
            peak_file = max(peak_file, st["RssFile"])
            time.sleep(max(0.0, min(1.0, deadline - time.monotonic())))
        for t in threads:
            t.join(30)
        hwm = bench.group_hwm(pgid)
        ok = sum(1 for r in results if r and r[0])
        errs = [r[2] for r in results if r and not r[0]]
        third = [v for t, v in samples if t >= secs * 2 / 3]
        middle = [v for t, v in samples if secs / 3 <= t < secs * 2 / 3]
        growth = (sum(third) / len(third) - sum(middle) / len(middle)) if third and middle else None
        at10 = next((v for t, v in samples if t >= min(10, secs / 2)), None)
        res = dict(hwm=hwm / MiB, at10=at10 / MiB if at10 else None, end=samples[-1][1] / MiB,
                   growth=growth / MiB if growth is not None else None, ok=ok,
                   client=sum(r[1] for r in results if r) / MiB, origin=(b.relay.down() - d0) / MiB,
                   idle=still_open(socks), errs=errs[:3], anon=peak_anon / MiB, file=peak_file / MiB)
        res["grows"] = growth is not None and growth > 4 * MiB and growth > 0.10 * (sum(middle) / len(middle))
        return res
    except Exception as e:  # noqa: BLE001
        return {"hwm": b.fail("rss", key, str(e), srv if getattr(srv, "proc", None) else None)}
    finally:
        for s in socks:
            s.close()
        srv.stop()


def run(b):
    d = os.path.join(b.www, "rss")
    os.makedirs(d, exist_ok=True)
    content = os.urandom(FILE_SIZE)
    with open(os.path.join(d, "content.bin"), "wb") as f:
        f.write(content)
    for i in range(N_SLOW):
        p = os.path.join(d, "f%03d.bin" % i)
        if not os.path.lexists(p):
            os.symlink("content.bin", p)
    small_path = os.path.join(b.www, SMALL_NAME.lstrip("/"))
    if not os.path.exists(small_path):
        with open(small_path, "wb") as f:
            f.write(os.urandom(4096))
    with open(small_path, "rb") as f:
        small = f.read()
    cache_max = max(4096 * MiB, 4 * b.size)
    rows = [("nginx", "nginx proxy_cache slice 1m + lock",
             bench.NginxCache(b.relay, b.tmp, cache_max, extra_http="keepalive_timeout 300s;")),
            ("slipstream", "slipstream connections=16",
             bench.Slipstream(b.bin_copy, b.relay, b.tmp, cache_max,
                              server_extra="max_connections = 4096\nidle_timeout = 5m"))]
    res, names = {}, {}
    for key, name, srv in rows:
        bench.log("---- rss %s (%d s)" % (key, b.args.rss_seconds))
        names[key] = name
        res[key] = measure(b, key, srv, content, small)
    return report(b, names, res)


def report(b, names, res):
    L = ["%d clients at %d KiB/s on %d different cold %d MiB files + %d idle keep-alive connections, %d s; origin "
         "through the relay at R = %g MiB/s per connection." % (
             N_SLOW, SLOW_RATE // 1024, N_SLOW, FILE_SIZE // MiB, N_IDLE, b.args.rss_seconds, b.args.rate), ""]
    hdr = ["server", "peak RSS MiB", "peak anon / file MiB", "RSS at 10 s", "RSS at end", "growth MiB", "grows", "slow clients ok",
           "client MiB", "origin MiB", "idle conns open"]
    rows = []
    for key, r in res.items():
        rows.append([names[key], tl.fmt(r.get("hwm")),
                     "%s / %s" % (tl.fmt(r.get("anon")), tl.fmt(r.get("file"))) if "anon" in r else "n/a",
                     tl.fmt(r.get("at10")), tl.fmt(r.get("end")),
                     tl.fmt(r.get("growth")), tl.fmt(r.get("grows")),
                     "%s/%d" % (tl.fmt(r.get("ok"), "%d"), N_SLOW) if "ok" in r else "n/a",
                     tl.fmt(r.get("client")), tl.fmt(r.get("origin")),
                     "%s/%d" % (tl.fmt(r.get("idle"), "%d"), N_IDLE) if "idle" in r else "n/a"])
    L += tl.table(hdr, rows)
    for key, r in res.items():
        if r.get("errs"):
            L.append("- %s slow-client errors (first ones): %s" % (names[key], "; ".join(r["errs"])))
    L.append("")
    s = res.get("slipstream", {})
    out = ["Targets (issue 14), slipstream this run:"]
    tl.target(out, "peak RSS ≤ 64 MiB", s.get("hwm"), 64.0, lambda g, x: g <= x, " MiB")
    tl.target(out, "RSS not growing (last third − middle third ≤ 4 MiB)", s.get("growth"), 4.0,
              lambda g, x: g <= x, " MiB")
    tl.target(out, "every slow client read right bytes to the end", s.get("ok"), N_SLOW, lambda g, x: g >= x, "", "%d")
    L += out
    return "Memory: 200 slow clients + 2000 idle connections (issue 14)", L
