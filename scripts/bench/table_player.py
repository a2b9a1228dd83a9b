"""Player table (issue 11): an origin 40 ms away, the way players read.

Origin: the bench's nginx behind its own ratelimit_relay instances, all at
R per connection (16 MiB/s) unless said otherwise:
  relay D  --delay-ms RTT (40): every answer held for a round trip
  relay 0  no delay (the seek storm "without the delay")
  relay U  no cap, RTT delay (adaptive connections, uncapped origin)
File: a moov-at-end MP4 (ffmpeg testsrc2 720p25 + sine, x264 ultrafast CBR,
no +faststart), generated once and kept in build/bench-media/ (1 GiB, 128 MiB
with --quick).
Rows: direct (ffprobe/ffmpeg themselves with -referer/-user_agent, one
connection at a time), nginx slice 1m, slipstream (connections = 16).
Columns:
  ffprobe cold s         wall time of `ffprobe -show_entries format=duration`
                         on a fresh server (duration checked)
  origin req / MiB       requests and bytes that reached the relay for the
                         file, counted once the origin was quiet for 1 s
  ffprobe warm s         the same ffprobe again on that server
  -ss 10/50/90 % s       `ffmpeg -ss T -i URL -frames:v 1` on a fresh server
                         each; the frame's framemd5 must equal the local file's
  storm …                15 open-ended `bytes=X-` requests at random positions
                         (fixed seed) within 20 s, each on a new connection,
                         closed after 2 MiB or 200 ms, then 5 s quiet, on a
                         fresh server: time to first body byte median / worst,
                         origin bytes for the file ÷ body bytes the client
                         read, most requests for the file in flight at once at
                         the relay. Every body byte is compared to the file.
                         Run through relay D and relay 0.
Adaptive connections (second table): cold full download of the main bench
file (256 MiB) through relay D (capped) and relay U (uncapped): MiB/s, most
connections open at once at the relay, connections opened; rows direct curl,
aria2c -x16 -s16 -k1M (the 16-connection reference) and slipstream.
"""

import json
import os
import random
import shutil
import struct
import subprocess
import threading
import time

import bench
import tablelib as tl

MiB = bench.MiB
MEDIA_NAME = "/media.mp4"
STORM_SEEKS, STORM_WINDOW, STORM_QUIET = 15, 20.0, 5.0
STORM_BYTES, STORM_SECS = 2 * MiB, 0.2
BLOCK_SIZE = 1 * MiB  # slipstream's default block_size (the storm target's 15 × block_size)


# --------------------------------------------------------------------- media file


def top_boxes(path):
    """[(type, offset, size)] of an MP4's top-level boxes."""
    out = []
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        off = 0
        while off + 8 <= size:
            f.seek(off)
            hdr = f.read(16)
            n, typ = struct.unpack(">I4s", hdr[:8])
            if n == 1:
                n = struct.unpack(">Q", hdr[8:16])[0]
            elif n == 0:
                n = size - off
            if n < 8:
                break
            out.append((typ.decode("latin-1"), off, n))
            off += n
    return out


def ensure_media(size_mib):
    """The moov-at-end MP4 of about size_mib MiB, made once under build/bench-media/.
    Returns (path, info dict with duration and size)."""
    d = os.path.join(bench.ROOT, "build", "bench-media")
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "moov-end-%dM.mp4" % size_mib)
    meta = path + ".json"
    if os.path.exists(path) and os.path.exists(meta):
        with open(meta) as f:
            info = json.load(f)
        if info.get("size") == os.path.getsize(path):
            return path, info
    # 14 Mbit/s video CBR (filler keeps the rate) + 128 kbit/s AAC ≈ 1.76 MB/s of file.
    secs = max(10, int(size_mib * MiB / 1.76e6))
    bench.log("generating a %d MiB moov-at-end MP4 (%d s of testsrc2 + sine; once, kept in %s)" % (size_mib, secs, d))
    tmp = path + ".part.mp4"
    argv = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
            "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=25", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
            "-t", str(secs), "-c:v", "libx264", "-preset", "ultrafast", "-b:v", "14M", "-minrate", "14M", "-maxrate", "14M",
            "-bufsize", "4M", "-x264-params", "nal-hrd=cbr", "-g", "50", "-pix_fmt", "yuv420p",
            "-c:a", "aac", "-b:a", "128k", tmp]  # no -movflags +faststart: moov is written at the end
    t0 = time.monotonic()
    subprocess.run(argv, check=True, timeout=3600)
    boxes = [b[0] for b in top_boxes(tmp)]
    if "moov" not in boxes or boxes.index("moov") < boxes.index("mdat"):
        raise RuntimeError("generated MP4 does not have moov after mdat: %s" % boxes)
    dur = float(subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", tmp],
                               capture_output=True, text=True, check=True).stdout.strip())
    os.rename(tmp, path)
    info = dict(size=os.path.getsize(path), duration=dur, boxes=boxes, encode_secs=round(time.monotonic() - t0, 1))
    with open(meta, "w") as f:
        json.dump(info, f)
    return path, info


# --------------------------------------------------------------------- the tools


def tool_headers(srv):
    """ffmpeg/ffprobe options that send the origin's headers (direct row only)."""
    h = dict(srv.client_headers)
    out = []
    if "User-Agent" in h:
        out += ["-user_agent", h["User-Agent"]]
    if "Referer" in h:
        out += ["-referer", h["Referer"]]
    return out


def ffprobe(srv, want_duration):
    argv = ["ffprobe", "-v", "error"] + tool_headers(srv) + [
        "-show_entries", "format=duration", "-of", "csv=p=0", srv.url(MEDIA_NAME)]
    t0 = time.monotonic()
    p = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    wall = time.monotonic() - t0
    if p.returncode != 0:
        raise RuntimeError("ffprobe exit %d: %s" % (p.returncode, p.stderr.strip()[:300]))
    dur = float(p.stdout.strip() or "nan")
    if not abs(dur - want_duration) < 0.5:
        raise RuntimeError("ffprobe says %s s, the file has %.2f s" % (p.stdout.strip(), want_duration))
    return wall


def first_frame_argv(src, t, hdr):
    return ["ffmpeg", "-v", "error", "-nostdin"] + hdr + ["-ss", "%.3f" % t, "-i", src, "-map", "0:v:0",
                                                          "-frames:v", "1", "-f", "framemd5", "-"]


def frame_md5(out):
    lines = [ln for ln in out.splitlines() if ln and not ln.startswith("#")]
    return lines[0].split(",")[-1].strip() if lines else None


def first_frame(srv, t, want_md5):
    t0 = time.monotonic()
    p = subprocess.run(first_frame_argv(srv.url(MEDIA_NAME), t, tool_headers(srv)), capture_output=True, text=True,
                       timeout=300)
    wall = time.monotonic() - t0
    if p.returncode != 0:
        raise RuntimeError("ffmpeg exit %d: %s" % (p.returncode, p.stderr.strip()[:300]))
    got = frame_md5(p.stdout)
    if got != want_md5:
        raise RuntimeError("first frame after -ss %.1f: md5 %s, the local file gives %s" % (t, got, want_md5))
    return wall


# --------------------------------------------------------------------- seek storm


def seek_storm(b, srv, relay, media, size, seed, window, quiet):
    """Returns dict(ttfb_med, ttfb_max (ms), ratio, client MiB, origin MiB, max_inflight)."""
    rnd = random.Random(seed)
    starts = sorted(rnd.uniform(0, window - STORM_SECS) for _ in range(STORM_SEEKS))
    positions = [rnd.randrange(0, size - STORM_BYTES) for _ in range(STORM_SEEKS)]
    relay.wait_idle(10)
    peaks = tl.Peaks(relay, MEDIA_NAME)
    results, errors = [None] * STORM_SEEKS, []
    t0 = time.monotonic()

    def one(i):
        time.sleep(max(0.0, t0 + starts[i] - time.monotonic()))
        try:
            r = tl.http_get(srv.url(MEDIA_NAME), srv.client_headers, (positions[i], None), max_bytes=STORM_BYTES,
                            max_secs=STORM_SECS)
            if r["status"] != 206:
                raise RuntimeError("seek %d: status %d" % (i, r["status"]))
            if r["body"] != tl.read_file_range(media, positions[i], len(r["body"])):
                raise RuntimeError("seek %d at %d: WRONG bytes" % (i, positions[i]))
            results[i] = r
        except Exception as e:  # noqa: BLE001
            errors.append(str(e))
    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(STORM_SEEKS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(window + 60)
    time.sleep(max(0.0, t0 + window + quiet - time.monotonic()))
    pk = peaks.read()
    if errors:
        raise RuntimeError("%d of %d seeks failed: %s" % (len(errors), STORM_SEEKS, "; ".join(errors[:3])))
    ttfbs = [r["ttfb"] * 1e3 for r in results if r["ttfb"] is not None]
    if len(ttfbs) < STORM_SEEKS:
        raise RuntimeError("%d of %d seeks got no body byte within %d ms" % (
            STORM_SEEKS - len(ttfbs), STORM_SEEKS, STORM_SECS * 1e3))
    client = sum(r["body_len"] for r in results)
    return dict(ttfb_med=tl.median(ttfbs), ttfb_max=max(ttfbs), client=client / MiB, origin=pk["path_down"] / MiB,
                ratio=pk["path_down"] / max(client, 1), max_inflight=pk["path_max_inflight"],
                requests=pk["path_requests"])


# --------------------------------------------------------------------- rows


def make_server(b, kind, relay):
    cache_max = max(4096 * MiB, 4 * b.media_info["size"])
    if kind == "direct":
        return bench.Direct(relay)
    if kind == "nginx":
        return bench.NginxCache(relay, b.tmp, cache_max)
    return bench.Slipstream(b.bin_copy, relay, b.tmp, cache_max)


def measure(b, res, key, fn, srv):
    """res[key] = fn() or an ERR reference."""
    try:
        res[key] = fn()
    except Exception as e:  # noqa: BLE001
        res[key] = b.fail("player", key, str(e), srv if getattr(srv, "proc", None) else None)


def player_row(b, kind, relay_d, relay_0, expected):
    res = {}
    media, info = b.media, b.media_info
    srv = make_server(b, kind, relay_d)
    # ffprobe cold, origin cost, warm
    relay_d.wait_idle(10)
    srv.start()
    try:
        peaks = tl.Peaks(relay_d, MEDIA_NAME)
        measure(b, res, "probe_cold", lambda: ffprobe(srv, info["duration"]), srv)
        relay_d.wait_quiet(1.0, 15)
        pk = peaks.read()
        res["probe_req"], res["probe_mib"] = pk["path_requests"], pk["path_down"] / MiB
        if kind == "direct":
            res["probe_warm"] = "—"
        else:
            measure(b, res, "probe_warm", lambda: ffprobe(srv, info["duration"]), srv)
    finally:
        srv.stop()
    # first frame after -ss, cold each
    for pct in (10, 50, 90):
        relay_d.wait_idle(10)
        srv.start()
        try:
            t = info["duration"] * pct / 100.0
            measure(b, res, "ss%d" % pct, lambda: first_frame(srv, t, expected[pct]), srv)
        finally:
            srv.stop()
    # seek storm, with and without the delay
    window, quiet = (8.0, 2.0) if b.args.quick else (STORM_WINDOW, STORM_QUIET)
    for tag, relay in (("d", relay_d), ("0", relay_0)):
        s = make_server(b, kind, relay)
        relay.wait_idle(10)
        s.start()
        try:
            st = {}
            measure(b, st, "storm" + tag, lambda: seek_storm(b, s, relay, media, info["size"], 11, window, quiet), s)
            if isinstance(st["storm" + tag], dict):
                for k, v in st["storm" + tag].items():
                    res["storm%s_%s" % (tag, k)] = v
            else:
                res["storm%s_ttfb_med" % tag] = st["storm" + tag]
        finally:
            s.stop()
    return res


def download_row(b, kind, relay):
    """Cold full download of the main bench file: (MiB/s, max_active, accepted) or an ERR reference."""
    srv = None
    relay.wait_idle(10)
    try:
        if kind == "aria2c":
            d = bench.mkdtemp("aria2-", b.outdir)
            peaks = tl.Peaks(relay)
            argv = ["aria2c", "-x16", "-s16", "-k1M", "--referer=" + bench.REFERER, "--user-agent=" + bench.USER_AGENT,
                    "--file-allocation=none", "--allow-overwrite=true", "--auto-file-renaming=false",
                    "--console-log-level=error", "--summary-interval=0", "--download-result=hide", "-q",
                    "-d", d, "-o", "f.bin", "http://127.0.0.1:%d%s" % (relay.port, bench.FILE_NAME)]
            t0 = time.monotonic()
            p = subprocess.run(argv, capture_output=True, text=True, timeout=max(120, 4 * b.size / b.rate))
            el = time.monotonic() - t0
            out = os.path.join(d, "f.bin")
            ok = p.returncode == 0 and os.path.getsize(out) == b.size and bench.sha256_file(out) == b.sha
            shutil.rmtree(d, ignore_errors=True)
            if not ok:
                raise RuntimeError("aria2c exit %d or wrong bytes: %s" % (p.returncode, (p.stderr + p.stdout)[:200]))
            mibs = b.size / MiB / el
        else:
            srv = bench.Direct(relay) if kind == "direct" else bench.Slipstream(b.bin_copy, relay, b.tmp, 4096 * MiB)
            srv.start()
            peaks = tl.Peaks(relay)
            mibs, _ = tl.full_download(b, srv, bench.FILE_NAME, b.size, b.sha)
        pk = peaks.read()
        return dict(mibs=mibs, max_active=pk["max_active"], accepted=pk["accepted"])
    except Exception as e:  # noqa: BLE001
        return b.fail("player", "adaptive %s" % kind, str(e), srv if getattr(srv, "proc", None) else None)
    finally:
        if srv is not None:
            srv.stop()


# --------------------------------------------------------------------- the table


def run(b):
    a = b.args
    b.media, b.media_info = ensure_media(int(a.media_size))
    link = os.path.join(b.www, MEDIA_NAME.lstrip("/"))
    if not os.path.lexists(link):
        os.symlink(b.media, link)
    info = b.media_info
    bench.log("media: %s (%.0f MiB, %.1f s, boxes %s)" % (b.media, info["size"] / MiB, info["duration"],
                                                          " ".join(info["boxes"])))
    expected = {}
    for pct in (10, 50, 90):
        p = subprocess.run(first_frame_argv(b.media, info["duration"] * pct / 100.0, []), capture_output=True,
                           text=True, timeout=300, check=True)
        expected[pct] = frame_md5(p.stdout)
    relay_d = bench.Relay(a.relay, b.origin.port, b.rate, b.tmp, delay_ms=a.rtt_ms)
    relay_0 = bench.Relay(a.relay, b.origin.port, b.rate, b.tmp, delay_ms=0)
    relay_u = bench.Relay(a.relay, b.origin.port, 0, b.tmp, delay_ms=a.rtt_ms)
    names = {"direct": "direct (ffprobe/ffmpeg, headers)", "nginx": "nginx proxy_cache slice 1m + lock",
             "slipstream": "slipstream connections=16"}
    res = {}
    for kind in ("direct", "nginx", "slipstream"):
        bench.log("---- player %s" % kind)
        res[kind] = player_row(b, kind, relay_d, relay_0, expected)
    adaptive = {}
    for kind in ("direct", "aria2c", "slipstream"):
        for tag, relay in (("capped", relay_d), ("uncapped", relay_u)):
            bench.log("---- adaptive %s %s" % (kind, tag))
            adaptive[(kind, tag)] = download_row(b, kind, relay)
    for r in (relay_d, relay_0, relay_u):
        bench.kill_group(r.proc)
    return report(b, names, res, adaptive)


def report(b, names, res, adaptive):
    a = b.args
    info = b.media_info
    window, quiet = (8.0, 2.0) if a.quick else (STORM_WINDOW, STORM_QUIET)
    L = ["Origin %d ms away (relay holds each answer for the round trip), R = %g MiB/s per connection; "
         "%.0f MiB moov-at-end MP4 (%.1f s, x264 720p25 CBR 14 Mbit/s + AAC; top-level boxes %s). "
         "Seek storm: %d open-ended ranges at random positions in %.0f s, each closed after %d MiB or %d ms, "
         "then %.0f s quiet." % (a.rtt_ms, a.rate, info["size"] / MiB, info["duration"], " ".join(info["boxes"]),
                                 STORM_SEEKS, window, STORM_BYTES // MiB, STORM_SECS * 1e3, quiet), ""]
    hdr = ["row", "ffprobe cold s", "origin req", "origin MiB", "ffprobe warm s", "-ss 10 % s", "-ss 50 % s",
           "-ss 90 % s", "storm TTFB med / max ms", "storm origin ÷ client", "storm max in flight",
           "storm, no delay: TTFB med / max ms", "origin ÷ client", "max in flight"]
    rows = []
    for kind, r in res.items():
        def storm(tag):
            med, mx = r.get("storm%s_ttfb_med" % tag), r.get("storm%s_ttfb_max" % tag)
            return ["%s / %s" % (tl.fmt(med), tl.fmt(mx)) if tl.num(med) else tl.fmt(med),
                    tl.fmt(r.get("storm%s_ratio" % tag), "%.2f"), tl.fmt(r.get("storm%s_max_inflight" % tag), "%d")]
        rows.append([names[kind], tl.fmt(r.get("probe_cold"), "%.2f"), tl.fmt(r.get("probe_req"), "%d"),
                     tl.fmt(r.get("probe_mib"), "%.1f"), tl.fmt(r.get("probe_warm"), "%.3f"),
                     tl.fmt(r.get("ss10"), "%.2f"), tl.fmt(r.get("ss50"), "%.2f"), tl.fmt(r.get("ss90"), "%.2f")]
                    + storm("d") + storm("0"))
    L += tl.table(hdr, rows)
    L.append("")
    L.append("origin req / MiB: what reached the relay for the file during the cold ffprobe, counted after 1 s "
             "without origin traffic (read-ahead included). Storm origin ÷ client: bytes the relay passed for the "
             "file ÷ body bytes the client read. Max in flight: most requests for the file open at once at the relay.")
    L.append("")
    ahdr = ["row", "capped: MiB/s", "capped: most conns at once", "capped: conns opened", "uncapped: MiB/s",
            "uncapped: most conns at once", "uncapped: conns opened"]
    arows = []
    anames = {"direct": "direct curl", "aria2c": "aria2c -x16 -s16 -k1M", "slipstream": "slipstream connections=16"}
    for kind in ("direct", "aria2c", "slipstream"):
        cells = [anames[kind]]
        for tag in ("capped", "uncapped"):
            v = adaptive[(kind, tag)]
            if isinstance(v, dict):
                cells += [tl.fmt(v["mibs"]), tl.fmt(v["max_active"], "%d"), tl.fmt(v["accepted"], "%d")]
            else:
                cells += [v, "", ""]
        arows.append(cells)
    L.append("Adaptive connections: cold %d MiB download through the %d ms origin, capped (R per connection) "
             "and uncapped (no cap); connections counted at the relay." % (b.size // MiB, a.rtt_ms))
    L.append("")
    L += tl.table(ahdr, arows)
    L.append("")
    L += targets(b, res, adaptive)
    return "Player table (issue 11)", L


def targets(b, res, adaptive):
    s, d = res.get("slipstream", {}), res.get("direct", {})
    out = ["Targets (issue 11), slipstream this run:"]
    mul = lambda x, k: x * k if tl.num(x) else x  # noqa: E731
    tl.target(out, "ffprobe cold ≤ 0.8 × direct", s.get("probe_cold"), mul(d.get("probe_cold"), 0.8),
              lambda g, x: g <= x, " s", "%.3f")
    tl.target(out, "ffprobe warm ≤ 0.1 s", s.get("probe_warm"), 0.1, lambda g, x: g <= x, " s", "%.3f")
    for pct in (10, 50, 90):
        tl.target(out, "first frame after -ss %d %% ≤ 0.8 × direct" % pct, s.get("ss%d" % pct),
                  mul(d.get("ss%d" % pct), 0.8), lambda g, x: g <= x, " s", "%.3f")
    tl.target(out, "seek storm (no delay) median TTFB ≤ 5 ms", s.get("storm0_ttfb_med"), 5.0,
              lambda g, x: g <= x, " ms", "%.1f")
    client = s.get("storm0_client")
    tl.target(out, "seek storm (no delay) origin ≤ 2 × client + 15 × block_size", s.get("storm0_origin"),
              2 * client + 15 * BLOCK_SIZE / MiB if tl.num(client) else client, lambda g, x: g <= x, " MiB", "%.1f")
    tl.target(out, "seek storm (no delay) upstream transfers in flight ≤ connections (16)",
              s.get("storm0_max_inflight"), 16, lambda g, x: g <= x, "", "%d")
    tl.target(out, "seek storm (%d ms) upstream transfers in flight ≤ connections (16)" % b.args.rtt_ms,
              s.get("stormd_max_inflight"), 16, lambda g, x: g <= x, "", "%d")
    cap = adaptive.get(("slipstream", "capped"))
    tl.target(out, "adaptive, capped origin ≥ 0.9 × 16 × R", cap["mibs"] if isinstance(cap, dict) else cap,
              0.9 * 16 * b.args.rate, lambda g, x: g >= x, " MiB/s")
    unc, ref = adaptive.get(("slipstream", "uncapped")), adaptive.get(("aria2c", "uncapped"))
    tl.target(out, "adaptive, uncapped origin: ≤ 4 connections at once", unc["max_active"] if isinstance(unc, dict)
              else unc, 4, lambda g, x: g <= x, "", "%d")
    tl.target(out, "adaptive, uncapped origin ≥ 0.9 × the 16-connection figure (aria2c -x16)",
              unc["mibs"] if isinstance(unc, dict) else unc,
              0.9 * ref["mibs"] if isinstance(ref, dict) else ref, lambda g, x: g >= x, " MiB/s")
    return out
