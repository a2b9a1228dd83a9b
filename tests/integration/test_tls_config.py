"""Issue 12, items 3 and 4, the configuration side: `slipstream check` loads
the TLS certificate and reports what is wrong with file:line; SIGHUP does
not kill the gateway (systemd's ExecReload sends it). Serving TLS is
tests/integration/test_tls.py.

Certificates are made with the openssl command line.
"""

import os
import signal
import subprocess

from harness import BIN, GatewayTest, wait_until


class TlsConfigTest(GatewayTest):
    def openssl(self, *args):
        subprocess.run(["openssl"] + list(args), check=True, capture_output=True, cwd=self.tmp)

    def make_cert(self, name, days=30):
        self.openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                     "-nodes", "-keyout", name + "-key.pem", "-out", name + "-cert.pem",
                     "-days", str(days), "-subj", "/CN=" + name)

    def ini(self, cert, key):
        path = os.path.join(self.tmp, "tls.ini")
        with open(path, "w") as f:
            f.write("[server]\nlisten = 127.0.0.1:0\nlisten = 127.0.0.1:0 tls\n"
                    "tls_cert = %s\ntls_key = %s\n" % (os.path.join(self.tmp, cert),
                                                      os.path.join(self.tmp, key)))
        return path

    def check(self, path):
        return subprocess.run([BIN, "check", "-c", path], capture_output=True, text=True)

    def test_check_loads_the_certificate(self):
        self.make_cert("a")
        self.make_cert("b")
        good = self.ini("a-cert.pem", "a-key.pem")
        r = self.check(good)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, "%s: ok (0 mounts, 0 rules)\n" % good)

        bad = self.ini("a-cert.pem", "b-key.pem")
        r = self.check(bad)
        self.assertEqual(r.returncode, 2)
        self.assertIn("%s:5: [server] tls_key: tls_key '%s' does not match the certificate in"
                      % (bad, os.path.join(self.tmp, "b-key.pem")), r.stderr)
        r = self.check(self.ini("missing.pem", "a-key.pem"))
        self.assertEqual(r.returncode, 2)
        self.assertRegex(r.stderr, r"tls\.ini:4: \[server\] tls_cert: tls_cert '.*missing\.pem': "
                                   r"No such file or directory")

    def test_sighup_keeps_the_gateway_running(self):
        gw = self.gateway("[server]\n")
        self.assertEqual(gw.get("/-/health").status, 200)
        gw.signal(signal.SIGHUP)
        wait_until(lambda: "event=reloaded" in gw.errors(), 10, what="reload log line")
        self.assertIsNone(gw.proc.poll())
        self.assertEqual(gw.get("/-/health").status, 200)
        self.assertEqual(gw.stop(), 0)
