"""Issue 2: the picky, throttled nginx origin rejects plain clients; the
gateway's proxy delivery adds the headers it demands and streams the bytes."""

import os

from harness import GatewayTest, random_bytes, sha256, write_file, curl, REFERER, USER_AGENT


class ProxyBasics(GatewayTest):
    def setUp(self):
        super().setUp()
        self.root = os.path.join(self.tmp, "www")
        self.data = random_bytes(3 * 1024 * 1024 + 123, seed=7)
        write_file(os.path.join(self.root, "film.mkv"), self.data)
        self.origin = self.nginx(self.root, picky=True, limit_rate="20m")
        self.gw = self.gateway(self.http_mount("movies", self.origin.url(), extra="cache = off"))

    def test_plain_client_refused_gateway_serves(self):
        direct = curl("-o", "/dev/null", "-w", "%{http_code}", self.origin.url("/film.mkv"))
        self.assertEqual(direct.stdout, b"403")
        r = self.gw.get("/p/movies/film.mkv")
        self.assertEqual(r.status, 200)
        self.assertEqual(sha256(r.body), sha256(self.data))
        self.assertEqual(r.header("Content-Length"), str(len(self.data)))
        self.assertEqual(r.header("X-Cache"), "MISS")
        # The origin saw the mount's headers, not curl's.
        gets = [e for e in self.origin.entries() if e["uri"] == "/film.mkv" and e["status"] == 200]
        self.assertEqual(len(gets), 1)
        self.assertEqual(gets[0]["referer"], REFERER)
        self.assertEqual(gets[0]["ua"], USER_AGENT)


if __name__ == "__main__":
    import unittest
    unittest.main()
