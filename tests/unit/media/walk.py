#!/usr/bin/env python3
"""Independent reference for media_index_test.cc: walks MP4/MOV top-level
boxes and Matroska/WebM EBML elements of whole files and prints where the
index (moov / Cues) is, as half-open byte ranges. Plain Python, no ffmpeg
code, so it can disagree with policy/media_index.cc."""
import struct
import sys


def mp4(data):
    off, boxes = 0, []
    while off + 8 <= len(data):
        size, typ = struct.unpack(">I4s", data[off:off + 8])
        hdr = 8
        if size == 1:
            size, hdr = struct.unpack(">Q", data[off + 8:off + 16])[0], 16
        elif size == 0:
            size = len(data) - off
        boxes.append((typ.decode("latin1"), off, size))
        off += size
    return boxes


def vint(data, pos, keep_marker):
    first = data[pos]
    n = 1
    while n <= 8 and not first & (0x80 >> (n - 1)):
        n += 1
    v = first if keep_marker else first & (0xFF >> n)
    for b in data[pos + 1:pos + n]:
        v = (v << 8) | b
    unknown = not keep_marker and v == (1 << (7 * n)) - 1
    return v, n, unknown


def element(data, pos):
    eid, n1, _ = vint(data, pos, True)
    size, n2, unknown = vint(data, pos + n1, False)
    return eid, pos + n1 + n2, None if unknown else size


def mkv(data):
    eid, start, size = element(data, 0)
    assert eid == 0x1A45DFA3
    pos = start + size
    eid, seg_start, seg_size = element(data, pos)
    assert eid == 0x18538067
    out = {"segment_data": seg_start, "seek": {}}
    p = seg_start
    end = len(data) if seg_size is None else seg_start + seg_size
    while p < end:
        eid, dstart, dsize = element(data, p)
        if eid == 0x114D9B74:  # SeekHead
            q = dstart
            while q < dstart + dsize:
                sid, sstart, ssize = element(data, q)
                if sid == 0x4DBB:
                    r, target, position = sstart, None, None
                    while r < sstart + ssize:
                        cid, cstart, csize = element(data, r)
                        if cid == 0x53AB:
                            target = int.from_bytes(data[cstart:cstart + csize], "big")
                        elif cid == 0x53AC:
                            position = int.from_bytes(data[cstart:cstart + csize], "big")
                        r = cstart + csize
                    out["seek"].setdefault(hex(target), seg_start + position)
                q = sstart + ssize
        if eid == 0x1C53BB6B:  # Cues
            out["cues"] = (p, dstart + dsize)
        p = dstart + dsize
    return out


for path in sys.argv[1:]:
    data = open(path, "rb").read()
    print(path, "size", len(data))
    if data[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide"):
        for typ, off, size in mp4(data):
            print(f"  box {typ} [{off}, {off + size})")
    else:
        info = mkv(data)
        print(f"  segment data starts at {info['segment_data']}")
        for k, v in info["seek"].items():
            print(f"  seek {k} -> {v}")
        if "cues" in info:
            print(f"  Cues element [{info['cues'][0]}, {info['cues'][1]})")
