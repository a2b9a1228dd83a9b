"""Issue 12, item 4: TLS on the listener, served for real.

A CA and its leaf certificates are made by the test with the openssl command
line. The gateway listens on a plain address (the fixture's) and on a `tls`
one; real clients talk to it: curl (--cacert, --http1.0, keep-alive),
`openssl s_client` (protocol versions, the certificate's serial and
fingerprint after a SIGHUP) and Python's ssl module (a reader that stalls,
a client that stalls mid-handshake). Every test asserts bytes (SHA-256),
statuses, log lines, counters or which requests reached the origin — never
a duration.
"""

import hashlib
import http.client
import os
import re
import signal
import socket
import ssl
import subprocess
import threading
import time

from harness import GatewayTest, curl, random_bytes, raw_request, raw_status, sha256, wait_until, write_file

KiB = 1024
MiB = 1024 * 1024


def metric(text, name):
    m = re.search(r"(?m)^%s (\d+)$" % re.escape(name), text)
    return int(m.group(1)) if m else 0


class Pki:
    """A test CA and leaves signed by it (openssl CLI), in `dir`."""

    def __init__(self, dir):
        self.dir = dir
        self.run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", "ca-key.pem", "-out", "ca.pem", "-days", "30", "-subj", "/CN=slip test CA")
        with open(self.path("ext.cnf"), "w") as f:
            f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def path(self, name):
        return os.path.join(self.dir, name)

    def run(self, *args):
        subprocess.run(["openssl"] + list(args), check=True, capture_output=True, cwd=self.dir)

    def leaf(self, name, serial):
        self.run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", name + "-key.pem", "-out", name + ".csr", "-subj", "/CN=" + name)
        self.run("x509", "-req", "-in", name + ".csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
                 "-set_serial", str(serial), "-days", "30", "-out", name + "-cert.pem",
                 "-extfile", "ext.cnf")
        return self.path(name + "-cert.pem"), self.path(name + "-key.pem")

    def fingerprint(self, cert_pem):
        r = subprocess.run(["openssl", "x509", "-noout", "-serial", "-fingerprint", "-sha256"],
                           input=cert_pem, capture_output=True, check=True)
        out = r.stdout.decode()
        serial = re.search(r"serial=([0-9A-F]+)", out).group(1)
        fp = re.search(r"Fingerprint=([0-9A-F:]+)", out).group(1)
        return int(serial, 16), fp


def install(src, dst):
    """Replaces `dst` atomically (as certbot's renewal does)."""
    tmp = dst + ".new"
    with open(src, "rb") as f, open(tmp, "wb") as g:
        g.write(f.read())
    os.replace(tmp, dst)


class TlsTest(GatewayTest):
    def setUp(self):
        super().setUp()
        self.pki = Pki(self.tmp)
        cert, key = self.pki.leaf("first", 1001)
        self.cert = os.path.join(self.tmp, "live-cert.pem")
        self.key = os.path.join(self.tmp, "live-key.pem")
        install(cert, self.cert)
        install(key, self.key)
        self.root = os.path.join(self.tmp, "files")
        self.big = random_bytes(24 * MiB + 12345, seed=12)
        write_file(os.path.join(self.root, "big.bin"), self.big)
        write_file(os.path.join(self.root, "small.txt"), b"hello over tls\n")

    def start(self, extra_server="", mounts=""):
        gw = self.gateway(
            "[server]\nlisten = 127.0.0.1:0 tls\ntls_cert = %s\ntls_key = %s\n%s\n"
            "[cache]\ndir = @CACHE@\nblock_size = 1M\nmax_size = 1G\nmin_free = 0\n"
            "[mount files]\nsource = local\nroot = %s\n%s"
            % (self.cert, self.key, extra_server, self.root, mounts))
        m = wait_until(lambda: re.search(r"event=listening address=127\.0\.0\.1:(\d+) tls=on",
                                         gw.errors()), 10, what="the tls listener")
        gw.tls_port = int(m.group(1))
        return gw

    def https(self, gw, path):
        return "https://127.0.0.1:%d%s" % (gw.tls_port, path)

    def curl_tls(self, gw, path, *args):
        return curl("--cacert", self.pki.path("ca.pem"), *args, self.https(gw, path))

    def metrics(self, gw):
        return gw.get("/-/metrics").body.decode()

    def s_client(self, gw, *args):
        return subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % gw.tls_port,
                               "-CAfile", self.pki.path("ca.pem"), "-verify_return_error",
                               "-servername", "localhost"] + list(args),
                              input=b"", capture_output=True, timeout=30)

    def served_certificate(self, gw):
        r = self.s_client(gw)
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        pem = re.search(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", r.stdout, re.S)
        self.assertIsNotNone(pem, r.stdout.decode(errors="replace"))
        return self.pki.fingerprint(pem.group(0))

    # ------------------------------------------------------------------ bytes

    def test_local_and_cached_http_mount_over_tls(self):
        web = os.path.join(self.tmp, "web")
        film = random_bytes(6 * MiB + 777, seed=13)
        write_file(os.path.join(web, "film.mkv"), film)
        origin = self.nginx(web)
        gw = self.start(mounts=self.http_mount("web", origin.url("/")))

        # A local mount: file segments (sendfile on a plain socket) copied
        # through user space for TLS.
        r = self.curl_tls(gw, "/d/files/big.bin")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(sha256(r.stdout), sha256(self.big))
        r = self.curl_tls(gw, "/d/files/big.bin", "-r", "1000000-3000000")
        self.assertEqual(sha256(r.stdout), sha256(self.big[1000000:3000001]))

        # A cached http mount: the first download is a MISS filled from
        # nginx, the second a HIT read from stored blocks (file segments
        # again) with no byte from the origin.
        r = self.curl_tls(gw, "/d/web/film.mkv", "-D", "-")
        self.assertEqual(r.returncode, 0, r.stderr)
        head, _, body = r.stdout.partition(b"\r\n\r\n")
        self.assertIn(b"X-Cache: MISS", head)
        self.assertEqual(sha256(body), sha256(film))
        wait_until(lambda: metric(self.metrics(gw), "slipstream_cache_blocks") == 7, 20,
                   what="the 7 blocks stored")
        before = origin.body_bytes("/film.mkv")
        r = self.curl_tls(gw, "/d/web/film.mkv", "-D", "-")
        head, _, body = r.stdout.partition(b"\r\n\r\n")
        self.assertIn(b"X-Cache: HIT", head)
        self.assertEqual(sha256(body), sha256(film))
        self.assertEqual(origin.body_bytes("/film.mkv"), before, "a HIT must not touch the origin")
        r = self.curl_tls(gw, "/d/web/film.mkv", "-r", "-100000")
        self.assertEqual(sha256(r.stdout), sha256(film[-100000:]))

    def test_http10_and_keep_alive_over_tls(self):
        gw = self.start()
        # HTTP/1.0: the connection closes after the answer, with close_notify
        # (curl reports a cut TLS stream as an error).
        r = self.curl_tls(gw, "/d/files/big.bin", "--http1.0", "-D", "-")
        self.assertEqual(r.returncode, 0, r.stderr)
        head, _, body = r.stdout.partition(b"\r\n\r\n")
        self.assertIn(b"Connection: close", head)
        self.assertEqual(sha256(body), sha256(self.big))

        # The close is a TLS close (close_notify), not a cut: a client that
        # refuses ragged EOFs reads a clean end.
        ctx = ssl.create_default_context(cafile=self.pki.path("ca.pem"))
        raw = ctx.wrap_socket(socket.create_connection(("127.0.0.1", gw.tls_port), timeout=30),
                              server_hostname="127.0.0.1", suppress_ragged_eofs=False)
        raw.sendall(b"GET /d/files/small.txt HTTP/1.0\r\n\r\n")
        reply = b""
        while True:
            chunk = raw.recv(65536)  # SSLEOFError here if the gateway only closed TCP
            if not chunk:
                break
            reply += chunk
        raw.close()
        self.assertTrue(reply.startswith(b"HTTP/1.1 200 OK\r\n"), reply)
        self.assertTrue(reply.endswith(b"\r\n\r\nhello over tls\n"), reply)

        # Keep-alive: three requests, one TLS connection.
        before = metric(self.metrics(gw), "slipstream_tls_connections_total")
        ctx = ssl.create_default_context(cafile=self.pki.path("ca.pem"))
        conn = http.client.HTTPSConnection("127.0.0.1", gw.tls_port, context=ctx, timeout=30)
        for path, want in (("/d/files/small.txt", b"hello over tls\n"), ("/d/files/big.bin", self.big),
                           ("/d/files/small.txt", b"hello over tls\n")):
            conn.request("GET", path)
            resp = conn.getresponse()
            self.assertEqual(resp.status, 200)
            self.assertEqual(sha256(resp.read()), sha256(want))
        conn.close()
        self.assertEqual(metric(self.metrics(gw), "slipstream_tls_connections_total") - before, 1)
        # And curl reusing its connection for two URLs.
        r = curl("--cacert", self.pki.path("ca.pem"), "-w", "%{num_connects}\n", "-o", "/dev/null",
                 "-o", "/dev/null", self.https(gw, "/d/files/small.txt"), self.https(gw, "/d/files/small.txt"))
        self.assertEqual(r.stdout.split(), [b"1", b"0"])

    def test_memory_stays_bounded_for_a_stalled_tls_reader(self):
        data = random_bytes(64 * MiB, seed=14)
        write_file(os.path.join(self.root, "huge.bin"), data)
        gw = self.start()
        base = gw.rss()
        ctx = ssl.create_default_context(cafile=self.pki.path("ca.pem"))
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", gw.tls_port), timeout=30),
                            server_hostname="127.0.0.1")
        s.sendall(b"GET /d/files/huge.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        got = bytearray()
        while len(got) < MiB:
            got += s.recv(65536)
        # The reader stops. The gateway must not read the file into memory
        # to have it ready: watch its RSS for a while (observed, not timed).
        worst = 0
        for _ in range(20):
            worst = max(worst, gw.rss())
            time.sleep(0.1)
        with open("/proc/%d/maps" % gw.proc.pid) as f:
            asan = "libasan" in f.read()  # make SAN=1: shadow memory and quarantine, not ours
        if not asan:
            self.assertLess(worst - base, 16 * MiB, "RSS grew by %d bytes for a stalled reader" % (worst - base))
        head, _, rest = bytes(got).partition(b"\r\n\r\n")
        self.assertIn(b"200 OK", head)
        h = hashlib.sha256(rest)
        n = len(rest)
        while n < len(data):
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            h.update(chunk)
            n += len(chunk)
        s.close()
        self.assertEqual(n, len(data))
        self.assertEqual(h.hexdigest(), sha256(data))

    # ------------------------------------------------------------------ failures

    def test_plain_http_to_the_tls_port_fails_cleanly(self):
        gw = self.start()
        reply = raw_request(gw.tls_port, b"GET /d/files/small.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(raw_status(reply), 400, reply)
        self.assertIn(b"this port speaks HTTPS", reply)
        self.assertIn(b"Connection: close", reply)
        # A TLS client right after it works.
        r = self.curl_tls(gw, "/d/files/small.txt")
        self.assertEqual((r.returncode, r.stdout), (0, b"hello over tls\n"), r.stderr)
        m = self.metrics(gw)
        self.assertEqual(metric(m, "slipstream_tls_plain_http_total"), 1)
        self.assertEqual(metric(m, 'slipstream_request_failures_total{reason="http_on_tls_port"}'), 1)
        lines = gw.wait_access(3)
        self.assertEqual([l["reason"] for l in lines if l["path"] == "/d/files/small.txt"],
                         ["http_on_tls_port", "-"])

    def test_tls_1_1_is_refused_and_1_2_and_1_3_served(self):
        gw = self.start()
        # The client may offer TLS 1.1 (security level 0): a refusal can only
        # come from the gateway.
        r = self.s_client(gw, "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(b"alert protocol version", r.stderr)
        wait_until(lambda: metric(self.metrics(gw),
                                  'slipstream_tls_handshake_failures_total{reason="unsupported_protocol"}') == 1,
                   10, what="the refused handshake counted")
        lines = [l for l in gw.errors().splitlines() if "event=tls_handshake_failed" in l]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("level=info", lines[0])
        self.assertIn("reason=unsupported_protocol", lines[0])
        for flag, name in (("-tls1_2", b"TLSv1.2"), ("-tls1_3", b"TLSv1.3")):
            r = self.s_client(gw, flag)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn(b"New, " + name + b", Cipher is", r.stdout)
        # A client that does not trust the certificate: its alert is counted too.
        r = curl(self.https(gw, "/d/files/small.txt"))
        self.assertEqual(r.returncode, 60)  # peer certificate cannot be authenticated
        wait_until(lambda: "reason=tlsv1_alert_unknown_ca" in gw.errors(), 10, what="unknown CA alert")
        self.assertEqual(self.curl_tls(gw, "/d/files/small.txt").stdout, b"hello over tls\n")

    def test_a_client_stalling_mid_handshake_is_closed_at_header_timeout(self):
        gw = self.start("header_timeout = 1s\n")
        stalled = socket.create_connection(("127.0.0.1", gw.tls_port), timeout=30)
        # The start of a ClientHello record, then nothing.
        stalled.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        silent = socket.create_connection(("127.0.0.1", gw.tls_port), timeout=30)  # not a byte
        # Others are served meanwhile.
        self.assertEqual(self.curl_tls(gw, "/d/files/small.txt").stdout, b"hello over tls\n")
        for s in (stalled, silent):
            try:
                self.assertEqual(s.recv(100), b"", "the gateway closes a stalled connection")
            except ConnectionResetError:
                pass
            s.close()
        m = self.metrics(gw)
        self.assertEqual(metric(m, 'slipstream_tls_handshake_failures_total{reason="timeout"}'), 1)
        self.assertEqual(metric(m, "slipstream_client_connections"), 1)  # the metrics request's own

    # ------------------------------------------------------------------ reload, side by side

    def test_sighup_serves_a_renewed_certificate(self):
        gw = self.start()
        serial, fp1 = self.served_certificate(gw)
        self.assertEqual(serial, 1001)
        # A keep-alive connection opened before the renewal.
        ctx = ssl.create_default_context(cafile=self.pki.path("ca.pem"))
        old = http.client.HTTPSConnection("127.0.0.1", gw.tls_port, context=ctx, timeout=30)
        old.request("GET", "/d/files/small.txt")
        self.assertEqual(old.getresponse().read(), b"hello over tls\n")

        cert, key = self.pki.leaf("second", 2002)
        install(cert, self.cert)
        install(key, self.key)
        gw.signal(signal.SIGHUP)
        wait_until(lambda: "event=tls_reloaded" in gw.errors(), 10, what="tls_reloaded")
        serial, fp2 = self.served_certificate(gw)
        self.assertEqual(serial, 2002)
        self.assertNotEqual(fp1, fp2)
        self.assertIn('subject="CN=second"', gw.errors())
        old.request("GET", "/d/files/small.txt")  # the old connection goes on
        self.assertEqual(old.getresponse().read(), b"hello over tls\n")
        old.close()

        # A broken file: logged with file:line and key, the second stays.
        with open(self.cert, "w") as f:
            f.write("not a certificate\n")
        gw.signal(signal.SIGHUP)
        line = wait_until(lambda: [l for l in gw.errors().splitlines() if "event=tls_reload_failed" in l],
                          10, what="tls_reload_failed")[0]
        with open(gw.ini) as f:
            cert_line = 1 + [l.startswith("tls_cert") for l in f.read().splitlines()].index(True)
        self.assertIn("%s:%d: [server] tls_cert: tls_cert '%s': not a PEM certificate chain"
                      % (gw.ini, cert_line, self.cert), line)
        self.assertIn("level=error", line)
        self.assertEqual(self.served_certificate(gw)[0], 2002)
        self.assertIsNone(gw.proc.poll())
        m = self.metrics(gw)
        self.assertEqual(metric(m, "slipstream_tls_reloads_total"), 1)
        self.assertEqual(metric(m, "slipstream_tls_reload_failures_total"), 1)
        # The broken file failed the whole reload: the running configuration stays.
        self.assertIn("event=reload_failed", gw.errors())

    def test_plain_and_tls_listeners_side_by_side(self):
        gw = self.start()
        results = {}

        def fetch(kind):
            if kind == "tls":
                r = self.curl_tls(gw, "/d/files/big.bin")
            else:
                r = curl(gw.url("/d/files/big.bin"))
            results[kind] = (r.returncode, sha256(r.stdout))

        threads = [threading.Thread(target=fetch, args=(k,)) for k in ("tls", "plain")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        want = (0, sha256(self.big))
        self.assertEqual(results, {"tls": want, "plain": want})
        # The plain port speaks plain HTTP only.
        r = curl("--cacert", self.pki.path("ca.pem"), "https://127.0.0.1:%d/-/health" % gw.port)
        self.assertNotEqual(r.returncode, 0)
        self.assertEqual(gw.get("/-/health").status, 200)
