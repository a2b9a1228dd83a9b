// The delivery decision: rule conditions, first-match order, the mount's
// default (including auto), route overrides, per-rule overrides, regex
// compile errors and explain().
#include <catch2/catch.hpp>

#include "policy/policy.h"

using namespace slip::policy;
using slip::conf::Delivery;

namespace {

slip::conf::Cidr cidr(const char* s) {
  auto c = slip::conf::parseCidr(s);
  REQUIRE(c);
  return *c;
}

// Three mounts and seven rules, as a loaded [mount]/[rule] file would give.
slip::conf::Config testConfig() {
  slip::conf::Config cfg;
  cfg.file = "test.ini";
  slip::conf::Mount movies;
  movies.name = "movies";
  movies.prefix = "/movies";
  movies.delivery = Delivery::Auto;
  movies.connections = 16;
  slip::conf::Mount tv;
  tv.name = "tv";
  tv.prefix = "/tv";
  tv.delivery = Delivery::Redirect;
  tv.connections = 8;
  tv.cache = false;
  tv.proxyUrl = "https://edge.example/tv";
  slip::conf::Mount local;
  local.name = "local";
  local.prefix = "/local";
  local.source = slip::conf::SourceType::Local;
  cfg.mounts = {movies, tv, local};

  slip::conf::Rule bots;
  bots.name = "block-bots";
  bots.line = 40;
  bots.userAgent = "bot|spider";
  bots.ignoreCase = true;
  bots.action = Delivery::Deny;

  slip::conf::Rule curl;
  curl.name = "curl-exact";
  curl.line = 45;
  curl.mounts = {"movies"};
  curl.userAgent = "^curl/";
  curl.action = Delivery::Redirect;

  slip::conf::Rule lan;
  lan.name = "lan";
  lan.line = 50;
  lan.clients = {cidr("192.168.0.0/16"), cidr("fd00::/8")};
  lan.action = Delivery::Proxy;
  lan.connections = 4;
  lan.cache = false;

  slip::conf::Rule iso;
  iso.name = "big-iso";
  iso.line = 55;
  iso.exts = {"iso", "img"};
  iso.minSize = 1000;
  iso.maxSize = 5000;
  iso.action = Delivery::ProxyUrl;
  iso.proxyUrl = "https://edge.example/big";

  slip::conf::Rule anime;
  anime.name = "anime";
  anime.line = 60;
  anime.mounts = {"tv"};
  anime.paths = {"/tv/anime/**"};
  anime.action = Delivery::ProxyUrl;  // no proxy_url: the mount's

  slip::conf::Rule head;
  head.name = "head-only";
  head.line = 65;
  head.methods = {"HEAD"};
  head.paths = {"/movies/*.mkv", "/local/*.mkv"};
  head.action = Delivery::Redirect;
  head.connections = 2;

  slip::conf::Rule one;
  one.name = "one-host";
  one.line = 70;
  one.clients = {cidr("10.0.0.5/32"), cidr("2001:db8::1/128")};
  one.action = Delivery::Deny;

  cfg.rules = {bots, curl, lan, iso, anime, head, one};
  return cfg;
}

constexpr SourceTraits kPlain{false, false, true};
constexpr SourceTraits kHeaders{true, false, true};
constexpr SourceTraits kBound{false, true, true};
constexpr SourceTraits kNoLink{false, false, false};

}  // namespace

TEST_CASE("RuleSet::decide table", "[rules]") {
  const auto cfg = testConfig();
  RuleSet rules;
  REQUIRE(RuleSet::compile(cfg, &rules).empty());

  constexpr auto D = Route::Download;
  constexpr auto P = Route::Proxy;
  constexpr auto E = Route::Edge;
  constexpr auto W = Route::Dav;
  constexpr std::optional<uint64_t> kUnknown;
  struct Row {
    const char* what;
    Route route;
    const char* method;
    const char* path;
    int mount;
    const char* client;
    const char* ua;
    std::optional<uint64_t> size;
    SourceTraits moviesTraits;
    // expected
    Delivery delivery;
    const char* rule;
    int64_t connections;
    bool cache;
    bool needsSize;
    const char* proxyUrl;
  };
  const Row rows[] = {
      // fall-through to the mount's delivery, auto resolved by the traits
      {"auto, plain source", D, "GET", "/movies/a.mkv", 0, "1.2.3.4", "VLC/3", kUnknown, kPlain,
       Delivery::Redirect, "", 16, true, false, ""},
      {"auto, source needs headers", D, "GET", "/movies/a.mkv", 0, "1.2.3.4", "VLC/3", kUnknown,
       kHeaders, Delivery::Proxy, "", 16, true, false, ""},
      {"auto, client-bound links", D, "GET", "/movies/a.mkv", 0, "1.2.3.4", "VLC/3", kUnknown,
       kBound, Delivery::Proxy, "", 16, true, false, ""},
      {"auto, local source", D, "GET", "/local/a.mp4", 2, "1.2.3.4", "VLC/3", kUnknown, kPlain,
       Delivery::Proxy, "", 16, true, false, ""},
      {"mount redirect, mount cache off", D, "GET", "/tv/drama/a.mkv", 1, "1.2.3.4", "VLC/3",
       kUnknown, kPlain, Delivery::Redirect, "", 8, false, false, ""},
      // UA regex: ignore_case vs case-sensitive
      {"bot, ignore case", D, "GET", "/movies/a.mkv", 0, "1.2.3.4", "Mozilla GoogleBot/2.1",
       kUnknown, kPlain, Delivery::Deny, "block-bots", 16, true, false, ""},
      {"SPIDER upper case", D, "GET", "/movies/a.mkv", 0, "1.2.3.4", "SPIDER", kUnknown, kPlain,
       Delivery::Deny, "block-bots", 16, true, false, ""},
      {"curl exact case", D, "GET", "/movies/a.mkv", 0, "1.2.3.4", "curl/8.5.0", kUnknown, kHeaders,
       Delivery::Redirect, "curl-exact", 16, true, false, ""},
      {"Curl wrong case", D, "GET", "/movies/a.mkv", 0, "1.2.3.4", "Curl/8.5.0", kUnknown, kHeaders,
       Delivery::Proxy, "", 16, true, false, ""},
      {"curl not anchored at start", D, "GET", "/movies/a.mkv", 0, "1.2.3.4", "x curl/8", kUnknown,
       kHeaders, Delivery::Proxy, "", 16, true, false, ""},
      {"curl on another mount", D, "GET", "/tv/a.mkv", 1, "1.2.3.4", "curl/8.5.0", kUnknown, kPlain,
       Delivery::Redirect, "", 8, false, false, ""},
      // client CIDRs, v4 and v6 edges; overrides of connections and cache
      {"lan lowest address", D, "GET", "/movies/a.mkv", 0, "192.168.0.0", "VLC/3", kUnknown, kPlain,
       Delivery::Proxy, "lan", 4, false, false, ""},
      {"lan highest address", D, "GET", "/movies/a.mkv", 0, "192.168.255.255", "VLC/3", kUnknown,
       kPlain, Delivery::Proxy, "lan", 4, false, false, ""},
      {"just outside lan", D, "GET", "/movies/a.mkv", 0, "192.169.0.0", "VLC/3", kUnknown, kPlain,
       Delivery::Redirect, "", 16, true, false, ""},
      {"lan as v4-mapped v6", D, "GET", "/movies/a.mkv", 0, "::ffff:192.168.1.1", "VLC/3", kUnknown,
       kPlain, Delivery::Proxy, "lan", 4, false, false, ""},
      {"lan v6 ULA", D, "GET", "/movies/a.mkv", 0, "fdff:ffff::1", "VLC/3", kUnknown, kPlain,
       Delivery::Proxy, "lan", 4, false, false, ""},
      {"v6 outside ULA", D, "GET", "/movies/a.mkv", 0, "fe00::1", "VLC/3", kUnknown, kPlain,
       Delivery::Redirect, "", 16, true, false, ""},
      {"single v4 host /32", D, "GET", "/movies/a.mkv", 0, "10.0.0.5", "VLC/3", kUnknown, kPlain,
       Delivery::Deny, "one-host", 16, true, false, ""},
      {"next v4 host", D, "GET", "/movies/a.mkv", 0, "10.0.0.6", "VLC/3", kUnknown, kPlain,
       Delivery::Redirect, "", 16, true, false, ""},
      {"single v6 host /128", D, "GET", "/movies/a.mkv", 0, "2001:db8::1", "VLC/3", kUnknown,
       kPlain, Delivery::Deny, "one-host", 16, true, false, ""},
      {"next v6 host", D, "GET", "/movies/a.mkv", 0, "2001:db8::2", "VLC/3", kUnknown, kPlain,
       Delivery::Redirect, "", 16, true, false, ""},
      // ext list and inclusive size bounds; proxy_url from the rule
      {"iso at min size", D, "GET", "/movies/a.iso", 0, "1.2.3.4", "VLC/3", 1000, kPlain,
       Delivery::ProxyUrl, "big-iso", 16, true, false, "https://edge.example/big"},
      {"img at max size", D, "GET", "/movies/a.img", 0, "1.2.3.4", "VLC/3", 5000, kPlain,
       Delivery::ProxyUrl, "big-iso", 16, true, false, "https://edge.example/big"},
      {"ISO upper-case ext", D, "GET", "/movies/A.ISO", 0, "1.2.3.4", "VLC/3", 2000, kPlain,
       Delivery::ProxyUrl, "big-iso", 16, true, false, "https://edge.example/big"},
      {"iso below min", D, "GET", "/movies/a.iso", 0, "1.2.3.4", "VLC/3", 999, kPlain,
       Delivery::Redirect, "", 16, true, false, ""},
      {"iso above max", D, "GET", "/movies/a.iso", 0, "1.2.3.4", "VLC/3", 5001, kPlain,
       Delivery::Redirect, "", 16, true, false, ""},
      {"iso size unknown", D, "GET", "/movies/a.iso", 0, "1.2.3.4", "VLC/3", kUnknown, kPlain,
       Delivery::ProxyUrl, "big-iso", 16, true, true, "https://edge.example/big"},
      {"mkv size unknown: no size rule reached", D, "GET", "/movies/a.mkv", 0, "1.2.3.4", "VLC/3",
       kUnknown, kPlain, Delivery::Redirect, "", 16, true, false, ""},
      // path globs; proxy_url from the mount
      {"anime glob, mount proxy_url", D, "GET", "/tv/anime/s1/e1.mkv", 1, "1.2.3.4", "VLC/3",
       kUnknown, kPlain, Delivery::ProxyUrl, "anime", 8, false, false, "https://edge.example/tv"},
      {"anime glob miss", D, "GET", "/tv/animex/e1.mkv", 1, "1.2.3.4", "VLC/3", kUnknown, kPlain,
       Delivery::Redirect, "", 8, false, false, ""},
      // methods
      {"HEAD mkv", D, "HEAD", "/movies/a.mkv", 0, "1.2.3.4", "VLC/3", kUnknown, kHeaders,
       Delivery::Redirect, "head-only", 2, true, false, ""},
      {"HEAD mkv in a subdirectory", D, "HEAD", "/movies/s/a.mkv", 0, "1.2.3.4", "VLC/3", kUnknown,
       kHeaders, Delivery::Proxy, "", 16, true, false, ""},
      {"GET is not HEAD", D, "GET", "/movies/a.mkv", 0, "1.2.3.4", "VLC/3", kUnknown, kHeaders,
       Delivery::Proxy, "", 16, true, false, ""},
      {"redirect rule on a source without links", D, "HEAD", "/local/a.mkv", 2, "1.2.3.4", "VLC/3",
       kUnknown, kPlain, Delivery::Proxy, "head-only", 2, true, false, ""},
      // first match wins
      {"bot on the LAN: bots rule first", D, "GET", "/movies/a.mkv", 0, "192.168.1.1", "bot",
       kUnknown, kPlain, Delivery::Deny, "block-bots", 16, true, false, ""},
      {"LAN iso: lan before big-iso", D, "GET", "/movies/a.iso", 0, "192.168.1.1", "VLC/3", 2000,
       kPlain, Delivery::Proxy, "lan", 4, false, false, ""},
      // /p/ and edge routes always proxy, deny still denies
      {"/p/ on a redirect mount", P, "GET", "/tv/a.mkv", 1, "1.2.3.4", "VLC/3", kUnknown, kPlain,
       Delivery::Proxy, "", 8, false, false, ""},
      {"/p/ with a redirect rule", P, "GET", "/movies/a.mkv", 0, "1.2.3.4", "curl/8", kUnknown,
       kPlain, Delivery::Proxy, "curl-exact", 16, true, false, ""},
      {"/p/ with auto", P, "GET", "/movies/a.mkv", 0, "1.2.3.4", "VLC/3", kUnknown, kPlain,
       Delivery::Proxy, "", 16, true, false, ""},
      {"deny on /p/", P, "GET", "/movies/a.mkv", 0, "1.2.3.4", "bot", kUnknown, kPlain,
       Delivery::Deny, "block-bots", 16, true, false, ""},
      {"edge with a proxy_url rule", E, "GET", "/movies/a.iso", 0, "1.2.3.4", "VLC/3", 2000, kPlain,
       Delivery::Proxy, "big-iso", 16, true, false, ""},
      {"deny on edge", E, "GET", "/movies/a.mkv", 0, "10.0.0.5", "VLC/3", kUnknown, kPlain,
       Delivery::Deny, "one-host", 16, true, false, ""},
      // /dav/ proxies like /p/: rules still pick cache, connections, deny
      {"/dav/ on a redirect mount", W, "GET", "/tv/a.mkv", 1, "1.2.3.4", "VLC/3", kUnknown, kPlain,
       Delivery::Proxy, "", 8, false, false, ""},
      {"/dav/ with a redirect rule", W, "GET", "/movies/a.mkv", 0, "1.2.3.4", "curl/8", kUnknown,
       kPlain, Delivery::Proxy, "curl-exact", 16, true, false, ""},
      {"/dav/ LAN rule: no cache, 4 connections", W, "GET", "/movies/a.mkv", 0, "192.168.1.1",
       "VLC/3", kUnknown, kPlain, Delivery::Proxy, "lan", 4, false, false, ""},
      {"deny on /dav/", W, "GET", "/movies/a.mkv", 0, "10.0.0.5", "VLC/3", kUnknown, kPlain,
       Delivery::Deny, "one-host", 16, true, false, ""},
  };
  for (const auto& r : rows) {
    INFO(r.what);
    RequestFacts f;
    f.route = r.route;
    f.method = r.method;
    f.path = r.path;
    f.mountIndex = r.mount;
    f.client = r.client;
    f.userAgent = r.ua;
    f.size = r.size;
    std::vector<SourceTraits> traits = {r.moviesTraits, kPlain, kNoLink};
    Decision d = rules.decide(cfg, f, traits);
    CHECK(slip::conf::deliveryName(d.delivery) ==
          std::string(slip::conf::deliveryName(r.delivery)));
    CHECK(d.rule == r.rule);
    CHECK(d.connections == r.connections);
    CHECK(d.cache == r.cache);
    CHECK(d.needsSize == r.needsSize);
    CHECK(d.proxyUrl == r.proxyUrl);
  }
}

TEST_CASE("RuleSet::compile reports a bad regex with the rule's line", "[rules]") {
  auto cfg = testConfig();
  RuleSet rules;
  REQUIRE(RuleSet::compile(cfg, &rules).empty());

  auto bad = cfg;
  bad.rules[1].userAgent = "curl(";
  bad.rules[5].userAgent = "[z-a]";
  auto errors = RuleSet::compile(bad, &rules);
  REQUIRE(errors.size() == 2);
  CHECK(errors[0].file == "test.ini");
  CHECK(errors[0].line == 45);
  CHECK(errors[0].section == "rule curl-exact");
  CHECK(errors[0].key == "user_agent");
  CHECK_THAT(errors[0].message, Catch::StartsWith("bad regular expression: ") &&
                                    !Catch::Equals("bad regular expression: "));
  CHECK_THAT(errors[0].str(), Catch::StartsWith("test.ini:45: [rule curl-exact] user_agent: "
                                                "bad regular expression: "));
  CHECK(errors[1].line == 65);

  // A failed compile leaves the previous set in place (a bad reload keeps it).
  RequestFacts f;
  f.method = "GET";
  f.path = "/movies/a.mkv";
  f.mountIndex = 0;
  f.client = "1.2.3.4";
  f.userAgent = "curl/8";
  CHECK(rules.decide(cfg, f, {kHeaders, kPlain, kNoLink}).rule == "curl-exact");

  // Movable: the compiled regexes follow the object.
  RuleSet moved = std::move(rules);
  CHECK(moved.decide(cfg, f, {kHeaders, kPlain, kNoLink}).rule == "curl-exact");
}

TEST_CASE("RuleSet::explain says why", "[rules]") {
  const auto cfg = testConfig();
  RuleSet rules;
  REQUIRE(RuleSet::compile(cfg, &rules).empty());
  const std::vector<SourceTraits> traits = {kPlain, kPlain, kNoLink};
  RequestFacts f;
  f.method = "GET";
  f.path = "/movies/a.mkv";
  f.mountIndex = 0;
  f.userAgent = "VLC/3.0";

  SECTION("third rule matches") {
    f.client = "192.168.1.9";
    std::vector<std::string> lines;
    Decision d = rules.explain(cfg, f, traits, &lines);
    CHECK(d.rule == "lan");
    const std::vector<std::string> want = {
        "rule block-bots: no match: user_agent \"VLC/3.0\" does not match /bot|spider/ (ignore "
        "case)",
        "rule curl-exact: no match: user_agent \"VLC/3.0\" does not match /^curl//",
        "rule lan: matched",
        "decision: proxy (rule lan action proxy) connections=4 cache=off",
    };
    CHECK(lines == want);
  }

  SECTION("nothing matches: every failed condition, then the mount's auto") {
    f.client = "10.0.0.7";
    std::vector<std::string> lines;
    rules.explain(cfg, f, traits, &lines);
    REQUIRE(lines.size() == 8);
    CHECK(lines[2] == "rule lan: no match: client 10.0.0.7 not in 192.168.0.0/16, fd00::/8");
    CHECK(lines[3] == "rule big-iso: no match: ext \"mkv\" not in iso, img");
    CHECK(lines[4] ==
          "rule anime: no match: mount movies not in tv; path /movies/a.mkv matches none of "
          "/tv/anime/**");
    CHECK(lines[5] == "rule head-only: no match: method GET not in HEAD");
    CHECK(lines[6] ==
          "rule one-host: no match: client 10.0.0.7 not in 10.0.0.5/32, 2001:db8::1/128");
    CHECK(lines[7] ==
          "decision: redirect (mount movies delivery auto; auto: source needs no headers and links "
          "are not client-bound) connections=16 cache=on");
  }

  SECTION("unknown size, route override, bad client address") {
    f.path = "/movies/a.iso";
    f.client = "not-an-ip";
    std::vector<std::string> lines;
    Decision d = rules.explain(cfg, f, traits, &lines);
    CHECK(d.needsSize);
    REQUIRE(lines.size() == 5);
    CHECK(lines[2] == "rule lan: no match: client not-an-ip is not a numeric address");
    CHECK(lines[3] == "rule big-iso: size unknown: probe the size, then decide again");
    CHECK(lines[4] ==
          "decision: proxy_url (rule big-iso action proxy_url) proxy_url=https://edge.example/big "
          "connections=16 cache=on needs_size=yes");

    f.size = 999;
    f.route = Route::Proxy;
    lines.clear();
    rules.explain(cfg, f, traits, &lines);
    CHECK(lines[3] == "rule big-iso: no match: size 999 < min_size 1000");
    f.size = 2000;
    lines.clear();
    rules.explain(cfg, f, traits, &lines);
    CHECK(
        lines.back() ==
        "decision: proxy (rule big-iso action proxy_url; /p/ route always proxies) connections=16 "
        "cache=on");
    f.route = Route::Dav;
    lines.clear();
    rules.explain(cfg, f, traits, &lines);
    CHECK(lines.back() ==
          "decision: proxy (rule big-iso action proxy_url; /dav/ route always proxies) "
          "connections=16 cache=on");
  }
}
