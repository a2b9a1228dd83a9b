// The link cache with a manual clock: links reused within their usable
// life, resolved again after it, concurrent resolutions coalesced, client
// binding, failures not cached, invalidation by serial; expiry written in
// the link (issue 11 item 4).
#include <functional>

#include <catch2/catch.hpp>

#include "conf/clock.h"
#include "proxy/sources/source.h"

using namespace slip;
using namespace slip::proxy;

namespace {

/// A source whose answers the test gives, now or later.
class FakeSource : public Source {
 public:
  int64_t ttlMs = 0;
  int64_t expiresInMs = 0;   // link expiry reported by the source (0 = none)
  bool answerAtOnce = true;
  policy::Reason fail = policy::Reason::None;
  int calls = 0;
  std::vector<ResolveCb> pending;
  const Clock* clock = nullptr;
  /// Extra query the link carries, from the call number (signed links).
  std::function<std::string(int)> query;

  void resolve(const std::string& rest, const ClientInfo& client, ResolveCb cb) override {
    calls++;
    if (answerAtOnce) answer(rest, client, cb);
    else pending.push_back(std::move(cb));
  }
  int64_t defaultTtlMs() const override { return ttlMs; }

  void answer(const std::string& rest, const ClientInfo& client, const ResolveCb& cb) {
    ResolveResult r;
    r.reason = fail;
    r.link.url = "http://origin" + rest + "?ua=" + client.userAgent + "&n=" + std::to_string(calls);
    if (query) r.link.url += "&" + query(calls);
    if (expiresInMs) r.link.expiresAtMs = clock->wallMs() + expiresInMs;
    cb(r);
  }
  void answerPending() {
    auto p = std::move(pending);
    pending.clear();
    for (auto& cb : p) answer("/later", {}, cb);
  }
};

struct Fixture {
  ManualClock clock;
  conf::Config cfg;
  std::vector<std::unique_ptr<Source>> sources;
  FakeSource* src;
  Stats stats;
  std::unique_ptr<LinkCache> links;

  explicit Fixture(conf::LinkBind bind = conf::LinkBind::None) {
    conf::Mount m;
    m.name = "m";
    m.linkBind = bind;
    cfg.mounts.push_back(m);
    auto s = std::make_unique<FakeSource>();
    src = s.get();
    src->clock = &clock;
    sources.push_back(std::move(s));
    links = std::make_unique<LinkCache>(cfg, sources, clock, stats);
  }

  /// The link get() hands out (synchronously), or "" on failure / no answer.
  std::string get(const std::string& rest = "/a.mkv", ClientInfo client = {}) {
    std::string url = "-";
    links->get(0, rest, client, [&](const ResolveResult& r) {
      url = r.reason == policy::Reason::None ? r.link.url : "";
    });
    return url;
  }
};

}  // namespace

TEST_CASE("link cache: a link that never expires is resolved once", "[links]") {
  Fixture f;
  std::string first = f.get();
  f.clock.advanceMs(365LL * 24 * 3600 * 1000);
  CHECK(f.get() == first);
  CHECK(f.src->calls == 1);
  CHECK(f.stats.linkResolutions == 1);
}

TEST_CASE("link cache: source ttl, reused until the margin, then resolved again", "[links]") {
  Fixture f;
  f.src->ttlMs = 100'000;  // usable until 80 s (a fifth kept in hand)
  std::string first = f.get();
  f.clock.advanceMs(79'999);
  CHECK(f.get() == first);
  CHECK(f.src->calls == 1);
  f.clock.advanceMs(1);
  std::string second = f.get();
  CHECK(second != first);
  CHECK(f.src->calls == 2);
  // The new link's life counts from its own resolution.
  f.clock.advanceMs(79'999);
  CHECK(f.get() == second);
  CHECK(f.src->calls == 2);
}

TEST_CASE("link cache: an expiry the source reports wins over no ttl", "[links]") {
  Fixture f;
  f.src->expiresInMs = 10 * 60'000;  // 10 min: the margin is capped at one minute
  std::string first = f.get();
  f.clock.advanceMs(9 * 60'000 - 1);
  CHECK(f.get() == first);
  f.clock.advanceMs(1);
  CHECK(f.get() != first);
  CHECK(f.src->calls == 2);
}

TEST_CASE("link cache: concurrent gets share one resolution", "[links]") {
  Fixture f;
  f.src->answerAtOnce = false;
  std::vector<std::string> got;
  for (int i = 0; i < 3; i++)
    f.links->get(0, "/a.mkv", {}, [&](const ResolveResult& r) { got.push_back(r.link.url); });
  CHECK(f.src->calls == 1);
  CHECK(got.empty());
  f.src->answerPending();
  REQUIRE(got.size() == 3);
  CHECK(got[0] == got[1]);
  CHECK(got[1] == got[2]);
}

TEST_CASE("link cache: failures are not cached", "[links]") {
  Fixture f;
  f.src->fail = policy::Reason::ResolveFailed;
  CHECK(f.get() == "");
  CHECK(f.get() == "");
  CHECK(f.src->calls == 2);
  f.src->fail = policy::Reason::None;
  CHECK(f.get() != "");
  CHECK(f.src->calls == 3);
}

TEST_CASE("link cache: invalidate drops only the link with that serial", "[links]") {
  Fixture f;
  uint64_t serial = 0;
  f.links->get(0, "/a.mkv", {}, [&](const ResolveResult& r) { serial = r.link.serial; });
  REQUIRE(serial != 0);
  f.links->invalidate(0, "/a.mkv", {}, serial + 1);  // an older/other link: kept
  f.get();
  CHECK(f.src->calls == 1);
  f.links->invalidate(0, "/a.mkv", {}, serial);
  uint64_t next = 0;
  f.links->get(0, "/a.mkv", {}, [&](const ResolveResult& r) { next = r.link.serial; });
  CHECK(f.src->calls == 2);
  CHECK(next > serial);
}

TEST_CASE("link cache: client-bound mounts key links by the client", "[links]") {
  SECTION("ua") {
    Fixture f(conf::LinkBind::Ua);
    std::string a = f.get("/x", {"10.0.0.1", "PlayerA"});
    std::string b = f.get("/x", {"10.0.0.2", "PlayerB"});
    CHECK(a != b);
    CHECK(f.get("/x", {"10.0.0.9", "PlayerA"}) == a);  // same UA, other address: shared
    CHECK(f.src->calls == 2);
  }
  SECTION("ua+ip") {
    Fixture f(conf::LinkBind::UaIp);
    f.get("/x", {"10.0.0.1", "PlayerA"});
    f.get("/x", {"10.0.0.2", "PlayerA"});
    CHECK(f.src->calls == 2);
  }
  SECTION("none") {
    Fixture f;
    f.get("/x", {"10.0.0.1", "PlayerA"});
    f.get("/x", {"10.0.0.2", "PlayerB"});
    CHECK(f.src->calls == 1);
  }
}

TEST_CASE("link cache: a wall clock jump back keeps links, forward expires them", "[links]") {
  Fixture f;
  f.src->ttlMs = 100'000;
  std::string first = f.get();
  f.clock.setWallMs(f.clock.wallMs() - 3'600'000);
  CHECK(f.get() == first);
  f.clock.setWallMs(f.clock.wallMs() + 2 * 3'600'000);
  CHECK(f.get() != first);
}

namespace {
/// Unix seconds `ms` from the fixture's now, as a link writes them.
std::string secondsFrom(const Fixture& f, int64_t ms) { return std::to_string((f.clock.wallMs() + ms) / 1000); }
}  // namespace

TEST_CASE("link cache: an expiry written in the link: reused in its life, renewed before it", "[links]") {
  Fixture f;
  f.src->ttlMs = 5 * 60'000;  // alist's default: the written 30 s win
  f.src->query = [&f](int) { return "x-oss-expires=" + secondsFrom(f, 30'000) + "&OSSAccessKeyId=k&Signature=s"; };
  std::string first = f.get();
  uint64_t serial = 0;
  int64_t expires = 0;
  f.links->get(0, "/a.mkv", {}, [&](const ResolveResult& r) {
    serial = r.link.serial;
    expires = r.link.expiresAtMs;
  });
  CHECK(expires / 1000 == (f.clock.wallMs() + 30'000) / 1000);
  f.clock.advanceMs(23'000);  // within 30 s minus a fifth
  CHECK(f.get() == first);
  CHECK(f.src->calls == 1);
  f.clock.advanceMs(1'000);
  std::string second = f.get();
  CHECK(second != first);
  CHECK(f.src->calls == 2);
}

TEST_CASE("link cache: the earlier of the reported and the written expiry counts", "[links]") {
  Fixture f;
  f.src->expiresInMs = 10 * 60'000;
  f.src->query = [&f](int) { return "Expires=" + secondsFrom(f, 100'000); };
  std::string first = f.get();
  f.clock.advanceMs(80'000);  // usable until 80 s of the written 100 s
  CHECK(f.get() != first);
  CHECK(f.src->calls == 2);
}

TEST_CASE("link cache: a link already expired is never handed out", "[links]") {
  SECTION("the next resolution is good") {
    Fixture f;
    f.src->query = [&f](int call) {
      return "X-Amz-Date=" + std::string(call == 1 ? "20200101T000000Z" : "20991231T000000Z") +
             "&X-Amz-Expires=60";
    };
    std::string got = f.get();
    CHECK(f.src->calls == 2);
    CHECK(got.find("n=2") != std::string::npos);
  }
  SECTION("a source that keeps handing out expired links: LinkExpired") {
    Fixture f;
    f.src->query = [&f](int) { return "x-oss-expires=" + secondsFrom(f, -1'000); };
    policy::Reason reason = policy::Reason::None;
    std::string detail;
    f.links->get(0, "/a.mkv", {}, [&](const ResolveResult& r) {
      reason = r.reason;
      detail = r.detail;
    });
    CHECK(reason == policy::Reason::LinkExpired);
    CHECK(policy::reasonStatus(reason) == 502);
    CHECK(detail.find("3 links in a row") != std::string::npos);
    CHECK(f.src->calls == LinkCache::kExpiredResolutions);
    CHECK(f.get() == "");  // not cached: asked again
    CHECK(f.src->calls == 2 * LinkCache::kExpiredResolutions);
  }
  SECTION("one that expires now counts as expired") {
    Fixture f;
    f.src->query = [&f](int) { return "Expires=" + secondsFrom(f, 0); };
    CHECK(f.get() == "");
  }
}

TEST_CASE("link cache: a bare e/t that is already past is not an expiry (link_ttl applies)", "[links]") {
  Fixture f;
  f.src->ttlMs = 100'000;
  f.src->query = [&f](int) { return "t=" + secondsFrom(f, -3'600'000); };  // an issue time, say
  std::string first = f.get();
  CHECK(!first.empty());
  f.clock.advanceMs(79'999);
  CHECK(f.get() == first);
  CHECK(f.src->calls == 1);
  // A bare e in the future is an expiry.
  Fixture g;
  g.src->query = [&g](int) { return "e=" + secondsFrom(g, 10'000); };
  std::string a = g.get();
  g.clock.advanceMs(8'001);
  CHECK(g.get() != a);
}
