"""Fast origin (issue 14): the relay with no cap (an AList on the LAN, a local
mirror, a gigabit CDN) and one plain client downloading the cold main bench
file, with the cache on a normal disk and on a slow one.

Rows (each a fresh instance, cold):
  direct curl                    curl with the headers straight to the relay
  nginx slice 1m                 the main table's nginx, cache on the bench's disk
  slipstream cache = off         connections = 16, nothing stored
  slipstream cache = on          connections = 16, cache on the bench's disk
  nginx slice 1m, slow disk      its cache directory on the slow disk
  slipstream cache = on, slow    its cache directory on the slow disk (min_free 64M)
Columns: MiB/s of the client (SHA-256 checked), origin MiB (the relay's count;
1.0 × the file is the ideal) and, for the slow-disk rows, how long the server
took to stop (SIGTERM, so unfinished disk work shows up).

The slow disk: an ext4 file system on a loop device whose writes are capped
at --slow-disk-mibs (default 20 MiB/s, a USB 2 disk or an SD card) by the
kernel's block throttle: cgroup v1 `blkio.throttle.write_bps_device` on the
root group (applies to every writer of the device, the kernel's writeback
included), or cgroup v2 `io.max wbps=` on a cgroup the bench moves itself
(and so its servers) into. dm-delay needs the device-mapper driver, which
many VMs lack; the table says which method it used, or why it could not
make one (then the slow-disk rows are n/a). `dd conv=fdatasync` of 64 MiB
gives each disk's own write speed for reference.
"""

import os
import shutil
import subprocess
import time

import bench
import tablelib as tl

MiB = bench.MiB


def run_cmd(argv, timeout=120):
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError("%s: %s" % (" ".join(argv[:2]), (p.stderr or p.stdout).strip()[:200]))
    return p.stdout.strip()


class SlowDisk:
    """A loop-device ext4 whose writes the kernel caps at `wbps` bytes/s."""

    def __init__(self, base, size, wbps):
        self.mnt = self.loop = self.rule = self.cg = None
        self.wbps = int(wbps)
        if os.geteuid() != 0:
            raise RuntimeError("needs root (losetup, mount, cgroup block throttle)")
        for tool in ("losetup", "mkfs.ext4", "mount", "umount"):
            if not shutil.which(tool):
                raise RuntimeError("%s not found" % tool)
        self.img = os.path.join(base, "slowdisk.img")
        try:
            self.setup(base, size)
        except BaseException:
            self.close()  # a half-made disk (loop device, mount) must not outlive the bench
            raise

    def setup(self, base, size):
        with open(self.img, "wb") as f:
            f.truncate(size)
        self.loop = run_cmd(["losetup", "-f", "--show", self.img])
        run_cmd(["mkfs.ext4", "-q", "-F", self.loop])
        self.mnt = os.path.join(base, "slowdisk")
        os.makedirs(self.mnt, exist_ok=True)
        run_cmd(["mount", self.loop, self.mnt])
        with open("/sys/block/%s/dev" % os.path.basename(self.loop)) as f:
            self.devno = f.read().strip()
        self.method = self.throttle()

    def throttle(self):
        v1 = "/sys/fs/cgroup/blkio/blkio.throttle.write_bps_device"
        if os.path.exists(v1):
            with open(v1, "w") as f:
                f.write("%s %d\n" % (self.devno, self.wbps))
            self.rule = v1
            return "loop device + ext4, cgroup v1 blkio.throttle.write_bps_device %s = %d B/s on the root group" % (
                self.devno, self.wbps)
        root = "/sys/fs/cgroup"
        if os.path.exists(os.path.join(root, "cgroup.controllers")):
            with open(os.path.join(root, "cgroup.controllers")) as f:
                if "io" not in f.read().split():
                    raise RuntimeError("cgroup v2 without the io controller")
            with open(os.path.join(root, "cgroup.subtree_control"), "w") as f:
                f.write("+io")
            self.cg = os.path.join(root, "slipstream-bench-%d" % os.getpid())
            os.makedirs(self.cg, exist_ok=True)
            with open(os.path.join(self.cg, "io.max"), "w") as f:
                f.write("%s wbps=%d" % (self.devno, self.wbps))
            with open(os.path.join(self.cg, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))  # the bench and every server it starts from now on
            return "loop device + ext4, cgroup v2 io.max %s wbps=%d on the bench's cgroup" % (self.devno, self.wbps)
        raise RuntimeError("no cgroup block throttle (neither v1 blkio nor v2 io) and no device-mapper")

    def close(self):
        if self.rule:
            try:
                with open(self.rule, "w") as f:
                    f.write("%s 0\n" % self.devno)
            except OSError:
                pass
            self.rule = None
        if self.cg:
            try:
                with open("/sys/fs/cgroup/cgroup.procs", "w") as f:
                    f.write(str(os.getpid()))
                os.rmdir(self.cg)
            except OSError:
                pass
            self.cg = None
        if self.mnt:
            if subprocess.run(["umount", self.mnt], capture_output=True, timeout=300).returncode != 0:
                subprocess.run(["umount", "-l", self.mnt], capture_output=True, timeout=60)
            self.mnt = None
        if self.loop:
            subprocess.run(["losetup", "-d", self.loop], capture_output=True, timeout=60)
            self.loop = None
        if os.path.exists(self.img):
            os.unlink(self.img)


def dd_speed(d, mib=64):
    """MiB/s of dd conv=fdatasync writing `mib` MiB into directory d."""
    path = os.path.join(d, "dd.bin")
    t0 = time.monotonic()
    try:
        run_cmd(["dd", "if=/dev/zero", "of=" + path, "bs=1M", "count=%d" % mib, "conv=fdatasync"], timeout=600)
        return mib / (time.monotonic() - t0)
    finally:
        if os.path.exists(path):
            os.unlink(path)


def cold_row(b, key, srv, relay):
    res = {}
    relay.wait_idle(10)
    srv.start()
    try:
        d0 = relay.down()
        res["mibs"], _ = tl.full_download(b, srv, bench.FILE_NAME, b.size, b.sha)
        res["origin"] = (relay.wait_quiet(0.5, 30) - d0) / MiB
    except Exception as e:  # noqa: BLE001
        res["mibs"] = b.fail("fast", key, str(e), srv if getattr(srv, "proc", None) else None)
    finally:
        t0 = time.monotonic()
        srv.stop()
        res["stop"] = time.monotonic() - t0
    return res


def run(b):
    a = b.args
    relay = bench.Relay(a.relay, b.origin.port, 0, b.tmp)
    cache_max = max(4096 * MiB, 4 * b.size)
    slip = lambda **kw: bench.Slipstream(b.bin_copy, relay, b.tmp, cache_max, **kw)  # noqa: E731
    rows = [("direct", "direct curl (headers)", bench.Direct(relay)),
            ("nginx", "nginx proxy_cache slice 1m + lock", bench.NginxCache(relay, b.tmp, cache_max)),
            ("off", "slipstream c=16, cache = off", slip(cache_on=False)),
            ("on", "slipstream c=16, cache = on", slip())]
    res, names = {}, {}
    for key, name, srv in rows:
        bench.log("---- fast %s" % key)
        names[key] = name
        res[key] = cold_row(b, key, srv, relay)
    disk = None
    info = {"normal_dd": dd_speed(b.tmp)}
    names["nginx_slow"], names["on_slow"] = "nginx slice 1m, cache on the slow disk", "slipstream c=16, cache on the slow disk"
    try:
        disk = SlowDisk(b.tmp, 2 * b.size + 512 * MiB, a.slow_disk_mibs * MiB)
        import atexit
        atexit.register(disk.close)
        info["method"] = disk.method
        info["slow_dd"] = dd_speed(disk.mnt)
        slow_max = b.size + 256 * MiB
        for key, srv in (("nginx_slow", bench.NginxCache(relay, b.tmp, slow_max, cache_parent=disk.mnt)),
                         ("on_slow", bench.Slipstream(b.bin_copy, relay, b.tmp, slow_max, cache_parent=disk.mnt,
                                                      cache_extra="min_free = 64M"))):
            bench.log("---- fast %s" % key)
            res[key] = cold_row(b, key, srv, relay)
    except Exception as e:  # noqa: BLE001
        info["method"] = "none: %s" % e
        for key in ("nginx_slow", "on_slow"):
            res.setdefault(key, {"mibs": "n/a (no slow disk: %s)" % str(e)[:80]})
    finally:
        if disk:
            disk.close()
    bench.kill_group(relay.proc)
    return report(b, names, res, info)


def report(b, names, res, info):
    L = ["Relay with no cap in front of the origin; %d MiB file, one plain curl, every instance fresh (cold). "
         "Slow disk: %s. dd conv=fdatasync of 64 MiB: the bench's disk %s MiB/s, the slow disk %s MiB/s." % (
             b.size // MiB, info.get("method"), tl.fmt(info.get("normal_dd"), "%.0f"), tl.fmt(info.get("slow_dd"), "%.1f")),
         ""]
    hdr = ["row", "cold full MiB/s", "origin MiB", "stop s"]
    rows = []
    for key in ("direct", "nginx", "off", "on", "nginx_slow", "on_slow"):
        r = res.get(key, {})
        rows.append([names[key], tl.fmt(r.get("mibs")), tl.fmt(r.get("origin")), tl.fmt(r.get("stop"), "%.1f")])
    L += tl.table(hdr, rows)
    L.append("")
    L.append("stop s: time from SIGTERM to exit (the servers' unfinished disk work shows up here on the slow disk).")
    L.append("")
    on, off, ng, slow = (res.get(k, {}).get("mibs") for k in ("on", "off", "nginx", "on_slow"))
    out = ["Targets (issue 14), slipstream this run:"]
    tl.target(out, "fast origin, cache on ≥ nginx slice", on, ng, lambda g, x: g >= x, " MiB/s")
    tl.target(out, "fast origin, cache on ≥ 0.9 × cache = off", on, 0.9 * off if tl.num(off) else off,
              lambda g, x: g >= x, " MiB/s")
    tl.target(out, "slow disk, cache on ≥ 0.9 × cache = off (never the disk's speed)", slow,
              0.9 * off if tl.num(off) else off, lambda g, x: g >= x, " MiB/s")
    L += out
    return "Fast origin (issue 14)", L
