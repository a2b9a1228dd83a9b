"""Issue 13 item 4: the next episode, warmed ahead.

An AList mount (the test_edge.py fake: /api/fs/list for the folder,
/api/fs/link pointing at a real nginx origin) holds a season. A client reads
80 % of `Show S01E03.mkv`; with `next_episode = on` the gateway lists the
folder and warms `Show S01E04.mkv` — its head and index region, as a
background reader of the fill — and nothing else. Every assertion is on
what reached the origin (nginx's log: which files, which ranges), the
gateway's counters and log events, and X-Cache / bytes of the answers:

* reading 80 % of S01E03 fetches the head of S01E04 (and none of S01E01,
  S01E02, the subtitles); the first request for S01E04's head is then an
  X-Cache: HIT with the right bytes and no origin request; another read of
  S01E03 does not warm it twice;
* with the directive off (the default) nothing of S01E04 is fetched and the
  folder is not even listed;
* the last episode of the folder warms nothing;
* a rule's next_episode = off wins over the mount's.
"""

import os
import re
import urllib.parse

from harness import GatewayTest, random_bytes, sha256, wait_until, write_file
from test_edge import ALIST_TOKEN, FakeAList, alist_item, enc_path

MiB = 1024 * 1024
SIZES = {"Show S01E01.mkv": 5 * MiB + 11, "Show S01E02.mkv": 5 * MiB + 22, "Show S01E03.mkv": 5 * MiB + 33,
         "Show S01E04.mkv": 5 * MiB + 44, "Show S01E04.srt": 2000}


class NextEpisodeTest(GatewayTest):
    def setUp(self):
        super().setUp()
        self.web = os.path.join(self.tmp, "web")
        self.files = {}
        for i, (name, size) in enumerate(sorted(SIZES.items())):
            data = random_bytes(size, seed=40 + i)
            write_file(os.path.join(self.web, "Show", name), data)
            self.files[name] = data
        self.origin = self.nginx(self.web, picky=False)

        def resolve(path, nth):
            if not path.startswith("/Show/") or path[len("/Show/"):] not in self.files:
                return None
            return {"url": self.origin.url(enc_path(path)), "header": None}

        items = [alist_item(n, size=len(d)) for n, d in sorted(self.files.items())]
        self.fake = FakeAList(ALIST_TOKEN, resolve, folders={"/Show": items, "/": [alist_item("Show", is_dir=True)]})
        self._fixtures.append(self.fake.stop)

    def start(self, mount_extra="", rules=""):
        self.gw = self.gateway(
            "[server]\nlog_level = info\n"
            "[cache]\ndir = @CACHE@\nblock_size = 1M\nmax_size = 1G\nmin_free = 0\n"
            "[mount tv]\nsource = alist\nurl = %s\ntoken = %s\ndelivery = proxy\nmedia_prefetch = 1M\n%s\n%s"
            % (self.fake.url(), ALIST_TOKEN, mount_extra, rules))
        return self.gw

    @staticmethod
    def path(name):
        return "/d/tv/Show/" + urllib.parse.quote(name)

    def read_share(self, name, share=0.8):
        """Reads the first `share` of an episode as one range (a player
        that got that far); checks the bytes."""
        data = self.files[name]
        end = -(-len(data) * int(share * 100) // 100)  # ceil: the whole share
        r = self.gw.get(self.path(name), headers={"Range": "bytes=0-%d" % (end - 1)})
        self.assertEqual(r.status, 206, r.body[:200])
        self.assertEqual(sha256(r.body), sha256(data[:end]))

    def origin_uris(self, name):
        """nginx's log lines for one file of the folder (settled; nginx
        logs the decoded $uri)."""
        return [e for e in self.origin.entries() if e["uri"] == "/Show/" + name]

    def counter(self, name):
        return (self.gw.metrics() or {}).get("slipstream_next_episode_%s_total" % name, 0)

    def list_calls(self):
        return [c for c in self.fake.calls if c["path"] == "/api/fs/list"]

    def wait_event(self, event):
        return wait_until(lambda: re.search(r"event=%s .*" % event, self.gw.errors()), 60,
                          what="the gateway to log %s" % event).group(0)

    # ------------------------------------------------------------------

    def test_reading_80_percent_warms_the_next_episode_head_then_a_hit(self):
        gw = self.start("next_episode = on\n")
        self.read_share("Show S01E03.mkv")
        wait_until(lambda: self.counter("warmed") >= 1, 60, interval=0.1, what="the next episode to be warmed")
        line = self.wait_event("next_episode_warmed")
        self.assertIn("Show S01E04.mkv", line)
        self.assertIn("Show S01E03.mkv", line)
        self.assertEqual((self.counter("started"), self.counter("warmed"), self.counter("failed")), (1, 1, 0))
        # The folder was listed once; only S01E04 was warmed: its head came
        # from the origin, nothing of the other episodes or the subtitles.
        self.assertEqual([c["json"]["path"] for c in self.list_calls()], ["/Show"])
        warmed = self.origin_uris("Show S01E04.mkv")
        self.assertTrue(warmed, "the origin never saw a request for S01E04")
        self.assertTrue(any(e["range"].startswith("bytes=0-") for e in warmed),
                        "no request for S01E04's head: %r" % [e["range"] for e in warmed])
        for other in ("Show S01E01.mkv", "Show S01E02.mkv", "Show S01E04.srt"):
            self.assertEqual(self.origin_uris(other), [], other)
        # Head and index region only (media_prefetch = 1M: the first and,
        # random bytes saying nothing of an index, the last MiB), not the file.
        fetched = sum(e["bytes"] for e in warmed)
        self.assertGreaterEqual(fetched, 1 * MiB)
        self.assertLess(fetched, len(self.files["Show S01E04.mkv"]))

        # The player moves on: its first request for S01E04's head is a HIT
        # with the right bytes, and the origin sees nothing of it.
        self.origin.clear_log()
        r = gw.get(self.path("Show S01E04.mkv"), headers={"Range": "bytes=0-65535"})
        self.assertEqual((r.status, r.header("X-Cache")), (206, "HIT"))
        self.assertEqual(r.body, self.files["Show S01E04.mkv"][:65536])
        self.assertEqual(self.origin_uris("Show S01E04.mkv"), [])

        # Watching S01E03 again does not warm S01E04 a second time.
        self.read_share("Show S01E03.mkv", 0.9)
        self.origin.entries()  # settled
        self.assertEqual(self.counter("started"), 1)
        self.assertEqual(self.origin_uris("Show S01E04.mkv"), [])

    def test_off_by_default_nothing_is_fetched(self):
        self.start()
        self.read_share("Show S01E03.mkv")
        self.read_share("Show S01E03.mkv", 0.95)
        self.assertTrue(self.origin_uris("Show S01E03.mkv"))  # the log names files as we look for them
        self.assertEqual(self.origin_uris("Show S01E04.mkv"), [])
        self.assertEqual(self.list_calls(), [])
        self.assertEqual((self.counter("started"), self.counter("warmed")), (0, 0))
        self.assertNotIn("event=next_episode", self.gw.errors())

    def test_the_last_episode_warms_nothing(self):
        self.start("next_episode = on\n")
        self.read_share("Show S01E04.mkv")
        self.assertTrue(self.origin_uris("Show S01E04.mkv"))
        line = self.wait_event("next_episode_none")
        self.assertIn("Show S01E04.mkv", line)
        self.assertEqual([c["json"]["path"] for c in self.list_calls()], ["/Show"])
        for other in ("Show S01E01.mkv", "Show S01E02.mkv", "Show S01E03.mkv", "Show S01E04.srt"):
            self.assertEqual(self.origin_uris(other), [], other)
        self.assertEqual(self.counter("started"), 0)

    def test_a_rule_turns_it_off_and_less_than_the_share_warms_nothing(self):
        self.start("next_episode = 50%\n", "[rule no-warm]\npath = /tv/Show/*S01E02*\naction = proxy\n"
                                          "next_episode = off\n")
        self.read_share("Show S01E02.mkv")   # the rule says off
        self.read_share("Show S01E03.mkv", 0.4)  # under the mount's 50 %
        self.assertEqual(self.origin_uris("Show S01E04.mkv"), [])
        self.assertEqual(self.list_calls(), [])
        self.assertEqual(self.counter("started"), 0)
        # Past the mount's share it warms.
        self.read_share("Show S01E03.mkv", 0.6)
        wait_until(lambda: self.counter("warmed") >= 1, 60, interval=0.1, what="the next episode to be warmed")
        self.assertTrue(self.origin_uris("Show S01E04.mkv"))
