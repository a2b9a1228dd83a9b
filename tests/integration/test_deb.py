"""Issue 12, item 5: the Debian package, installed and removed for real.

Builds the .deb from the binary under test (scripts/deb.sh, what `make deb`
runs), records the machine's state, then `dpkg -i` → checks the files, the
system user and the unit (`systemd-analyze verify`, and `systemd-analyze
security --offline`, both of which work without systemd as PID 1, as here) →
`slipstream check` on the installed configuration as the service user →
`dpkg -r` (configuration kept) → `dpkg -P` → the machine is as it was, except
the `slipstream` system user, which Debian practice keeps on purge (the test
removes it itself when it created it). lintian must report nothing beyond the
tags explained in the README ("Install from the .deb").

Needs root and dpkg; skipped when a slipstream package or binary is already
installed (the test never touches a real installation). A /var/cache/slipstream
or /var/lib/slipstream left by other runs of the gateway on this machine (no
package installed) is moved aside for the test and put back after it.
"""

import grp
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
import unittest

from harness import BIN, ROOT, SANITIZER

VERSION = open(os.path.join(ROOT, "VERSION")).read().strip()
UNIT = "/lib/systemd/system/slipstream.service"
CONF = "/etc/slipstream/slipstream.ini"
WATCHED = ["/etc/slipstream", "/etc/systemd/system", "/lib/systemd/system/slipstream.service",
           "/usr/bin/slipstream", "/usr/share/doc/slipstream", "/usr/share/man/man1/slipstream.1.gz",
           "/var/lib/systemd/deb-systemd-helper-enabled",
           "/var/lib/systemd/deb-systemd-helper-masked", "/var/lib/slipstream",
           "/var/cache/slipstream", "/var/lib/dpkg/info/slipstream.list"]
# lintian tags that stay, each explained in the README.
EXPLAINED = {"bogus-mail-host", "bogus-mail-host-in-debian-changelog",
             "package-supports-alternative-init-but-no-init.d-script", "spelling-error-in-binary"}
if SANITIZER:
    # `make test-san` packages build/san/slipstream, built without Debian's
    # hardening flags (they do not mix with ASan): the rest is checked alike.
    EXPLAINED |= {"hardening-no-fortify-functions", "hardening-no-bindnow"}


def package_status():
    r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "slipstream"], capture_output=True,
                       text=True)
    return r.stdout.strip() if r.returncode == 0 else "not-installed"


def snapshot():
    """Every watched path (files, dirs, links with targets) and the
    slipstream lines of /etc/passwd and /etc/group."""
    seen = {}
    for top in WATCHED:
        if not os.path.lexists(top):
            continue
        walk = [(top, [], [])] if not os.path.isdir(top) or os.path.islink(top) else os.walk(top)
        for d, dirs, files in walk:
            for p in [d] + [os.path.join(d, n) for n in dirs + files]:
                if os.path.islink(p):
                    seen[p] = "-> " + os.readlink(p)
                elif os.path.isdir(p):
                    seen[p] = "dir"
                else:
                    with open(p, "rb") as f:
                        seen[p] = "file %d" % len(f.read())
    for f in ("/etc/passwd", "/etc/group"):
        with open(f) as fh:
            seen[f] = [line for line in fh if line.startswith("slipstream:")]
    return seen


def dpkg(*args):
    """dpkg, waiting while another process (apt) holds its lock."""
    deadline = time.monotonic() + 120
    while True:
        r = subprocess.run(["dpkg"] + list(args), capture_output=True, text=True, timeout=300)
        if r.returncode == 0 or "lock" not in r.stderr or time.monotonic() > deadline:
            return r
        time.sleep(1)


def user_exists():
    try:
        pwd.getpwnam("slipstream")
        return True
    except KeyError:
        return False


@unittest.skipUnless(os.geteuid() == 0 and shutil.which("dpkg-deb") and shutil.which("dpkg-shlibdeps"),
                     "needs root, dpkg-deb and dpkg-shlibdeps (scripts/deps.sh)")
class DebianPackageTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # One package for both tests (scripts/deb.sh builds it in build/).
        # A class fixture also keeps the two tests in one process under
        # run.py -j: they install into the one machine.
        cls.deb, cls.deb_error = None, None
        r = subprocess.run([os.path.join(ROOT, "scripts", "deb.sh"), BIN, VERSION],
                           capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            cls.deb_error = "scripts/deb.sh failed:\n" + r.stderr
            return
        deb = r.stdout.strip().splitlines()[-1]
        arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True,
                              text=True).stdout.strip()
        if os.path.basename(deb) != "slipstream_%s_%s.deb" % (VERSION, arch):
            cls.deb_error = "unexpected package name %r" % deb
            return
        cls.deb = deb

    def setUp(self):
        if package_status() != "not-installed" or os.path.exists("/usr/bin/slipstream"):
            self.skipTest("slipstream is installed on this machine: not touching it")
        if os.path.exists("/etc/slipstream"):
            self.skipTest("/etc/slipstream exists: not touching it")
        self.stash = tempfile.mkdtemp(prefix="slip-deb-stash-", dir="/var/tmp")
        self.addCleanup(shutil.rmtree, self.stash, True)
        for d in ("/var/lib/slipstream", "/var/cache/slipstream"):
            if os.path.lexists(d):
                aside = os.path.join(self.stash, d.strip("/").replace("/", "_"))
                shutil.move(d, aside)
                self.addCleanup(shutil.move, aside, d)
        self.user_before = user_exists()
        self.before = snapshot()
        self.assertIsNotNone(self.deb, self.deb_error)
        self.addCleanup(self.restore)

    def restore(self):
        if package_status() != "not-installed":
            dpkg("-P", "slipstream")
        if not self.user_before and user_exists():
            subprocess.run(["deluser", "--system", "--quiet", "slipstream"], capture_output=True)
        try:
            grp.getgrnam("slipstream")
            if not self.user_before:
                subprocess.run(["delgroup", "--system", "--quiet", "slipstream"],
                               capture_output=True)
        except KeyError:
            pass

    def test_control_and_lintian(self):
        info = subprocess.run(["dpkg-deb", "-f", self.deb], capture_output=True, text=True).stdout
        self.assertIn("Version: %s\n" % VERSION, info)
        depends = re.search(r"^Depends: (.*)$", info, re.M).group(1)
        # From dpkg-shlibdeps: the libraries the binary really links.
        for lib in ("libc6", "libcurl4", "libevent-2.1-7", "libevent-openssl-2.1-7", "liblmdb0",
                    "libssl3", "libxxhash0", "libcrypt1", "libstdc++6"):
            self.assertRegex(depends, r"(^|, )%s \(>= [^)]+\)" % re.escape(lib))
        self.assertIn("adduser", depends)
        conffiles = subprocess.run(["dpkg-deb", "--ctrl-tarfile", self.deb], capture_output=True)
        self.assertEqual(conffiles.returncode, 0)
        if not shutil.which("lintian"):
            self.skipTest("lintian is not installed")
        r = subprocess.run(["lintian", "--pedantic", "--display-info", self.deb], capture_output=True,
                           text=True, timeout=600)
        tags = set(re.findall(r"^[EWIPX]: slipstream: ([a-z0-9.+-]+)", r.stdout, re.M))
        self.assertEqual(tags - EXPLAINED, set(), r.stdout)

    def test_install_check_remove_purge(self):
        r = dpkg("-i", self.deb)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(package_status(), "install ok installed")

        # The files, where Debian wants them.
        out = subprocess.run(["/usr/bin/slipstream", "--version"], capture_output=True, text=True)
        self.assertEqual(out.stdout, "slipstream %s\n" % VERSION)
        with open(UNIT) as f, open(os.path.join(ROOT, "scripts", "slipstream.service")) as g:
            self.assertEqual(f.read(), g.read(), "the unit is scripts/slipstream.service")
        with open(CONF) as f, open(os.path.join(ROOT, "scripts", "deb", "slipstream.ini")) as g:
            self.assertEqual(f.read(), g.read())
        conffiles = subprocess.run(["dpkg-query", "-W", "-f=${Conffiles}", "slipstream"],
                                   capture_output=True, text=True).stdout
        self.assertIn(CONF, conffiles)
        for p in ("/usr/share/doc/slipstream/copyright", "/usr/share/doc/slipstream/changelog.gz",
                  "/usr/share/man/man1/slipstream.1.gz"):
            self.assertTrue(os.path.isfile(p), p)
        # The system user, its group, no login.
        u = pwd.getpwnam("slipstream")
        self.assertLess(u.pw_uid, 1000)
        self.assertEqual(grp.getgrgid(u.pw_gid).gr_name, "slipstream")
        self.assertIn(u.pw_shell, ("/usr/sbin/nologin", "/bin/false"))
        self.assertEqual(u.pw_dir, "/var/lib/slipstream")
        # Enabled the Debian way (deb-systemd-helper), even without a running systemd.
        self.assertEqual(os.readlink("/etc/systemd/system/multi-user.target.wants/slipstream.service"),
                         UNIT)

        # The unit: systemd's own checks, offline (systemd is not PID 1 here).
        r = subprocess.run(["systemd-analyze", "verify", UNIT], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stderr.strip(), "")
        r = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", UNIT],
                           capture_output=True, text=True)
        m = re.search(r"Overall exposure level for slipstream.service: ([0-9.]+) (\w+)", r.stdout)
        self.assertIsNotNone(m, r.stdout + r.stderr)
        self.assertLessEqual(float(m.group(1)), 2.0, r.stdout)
        for line in ("NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes",
                     "PrivateDevices=yes", "CapabilityBoundingSet=\n", "StateDirectory=slipstream",
                     "CacheDirectory=slipstream", "ExecReload=/bin/kill -HUP $MAINPID",
                     "User=slipstream", "SystemCallFilter=@system-service",
                     "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX"):
            with open(UNIT) as f:
                self.assertIn(line, f.read())

        # The packaged configuration passes check, run as the service user.
        r = subprocess.run(["runuser", "-u", "slipstream", "--", "/usr/bin/slipstream", "check",
                            "-c", CONF], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, "%s: ok (0 mounts, 0 rules)\n" % CONF)
        # ... and points cache and state at the unit's directories.
        with open(CONF) as f:
            text = f.read()
        self.assertRegex(text, r"(?m)^dir = /var/cache/slipstream$")
        self.assertRegex(text, r"(?m)^state_dir = /var/lib/slipstream$")

        # What the running service would have written (systemd creates these).
        for d in ("/var/lib/slipstream", "/var/cache/slipstream/index"):
            os.makedirs(d)
        with open("/var/lib/slipstream/aliyundrive-home.token.json", "w") as f:
            f.write("{}")
        with open(CONF, "a") as f:
            f.write("; edited by the admin\n")

        # remove: program gone, the edited configuration kept, the unit masked.
        r = dpkg("-r", "slipstream")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(package_status(), "deinstall ok config-files")
        self.assertFalse(os.path.exists("/usr/bin/slipstream"))
        self.assertFalse(os.path.exists(UNIT))
        with open(CONF) as f:
            self.assertTrue(f.read().endswith("; edited by the admin\n"))
        self.assertEqual(os.readlink("/etc/systemd/system/slipstream.service"), "/dev/null")

        # purge: configuration, cache, state, enablement and mask all gone.
        r = dpkg("-P", "slipstream")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(package_status(), "not-installed")
        after = snapshot()
        # The system user stays (Debian practice, see scripts/deb/postrm).
        self.assertTrue(user_exists())
        after.pop("/etc/passwd"), after.pop("/etc/group")
        before = dict(self.before)
        before.pop("/etc/passwd"), before.pop("/etc/group")
        self.assertEqual(after, before)
        self.restore()
        self.assertEqual(snapshot(), self.before)


if __name__ == "__main__":
    unittest.main()
