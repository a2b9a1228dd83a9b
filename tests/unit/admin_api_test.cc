// src/admin_api: routes, the cross-site guard, hostile bodies and the JSON
// schema, against a fake AdminContext that records what reached it.
#include <catch2/catch.hpp>
#include <fstream>
#include <set>
#include <nlohmann/json.hpp>

#include "src/admin_api.h"

using namespace slip;
using namespace slip::admin;
using json = nlohmann::json;
using policy::Reason;

namespace {

struct FakeContext : AdminContext {
  std::vector<std::string> calls;  // "stats", "prefetch /movies/a.mkv", ...
  ObjectQuery lastQuery;
  std::vector<PrefetchJob> jobs;

  Stats stats() override {
    calls.push_back("stats");
    Stats s;
    s.version = "0.1.0";
    s.nowUnix = 1'700'000'100;
    s.startedUnix = 1'700'000'000;
    s.configFile = "/etc/slipstream/slipstream.ini";
    s.configLoadedUnix = 1'700'000'000;
    s.pid = 4242;
    s.reloads = 1;
    s.lastReload = ReloadInfo{1'700'000'050'000, false, {"a.ini:3: [mount m] base_url: not a URL"}, {"[cache] dir"}};
    s.loopLagMs = 0.25;
    s.loopLagMaxMs = 3.5;
    s.cache = {.enabled = true, .bytesUsed = 3 << 20, .maxSize = 10 << 20, .diskFree = 1 << 30,
               .objects = 2, .blocks = 3, .evictedBlocks = 1, .hitBytes = 300, .missBytes = 100,
               .hitRequests = 1, .missRequests = 3};
    s.mounts.push_back({.name = "movies", .prefix = "/movies", .source = "aliyundrive_open",
                        .account = "home", .linksResolved = 7, .linkRefusals = 1, .rateLimited = 2,
                        .lastError = LastError{1'700'000'050, Reason::RateLimited, "429 x3"}});
    s.mounts.push_back({.name = "nas", .prefix = "/nas", .source = "local"});
    s.accounts.push_back({.name = "home", .authorized = true, .lastRotationUnix = 1'700'000'010,
                          .tokenExchanges = 2, .apiCalls = 9, .downloadsOpen = 3});
    return s;
  }
  std::vector<Transfer> transfers() override {
    calls.push_back("transfers");
    Transfer t{.id = 4, .client = "192.168.1.20", .userAgent = "VLC/3.0",
               .mount = "movies", .path = "/movies/Big \xff Buck.mkv", .delivery = "proxy",
               .cache = "PARTIAL", .rangeBegin = 0, .rangeEnd = 5 << 20, .bytesSent = 1 << 20,
               .speedBps = 2.5e6, .upstreamConnections = 3, .startedUnix = 1'700'000'090};
    t.blocks = BlockMap{5 << 20, 1 << 20, "SSF--"};
    return {t};
  }
  Outcome<ObjectPage> objects(const ObjectQuery& q) override {
    calls.push_back("objects");
    lastQuery = q;
    if (q.mount == "gone") return Outcome<ObjectPage>::fail(Reason::UnknownMount, "no mount gone");
    ObjectInfo o{.mount = "movies", .path = "/a.mkv", .virtualPath = "/movies/a.mkv",
                 .etag = "\"e1\"", .validatedUnix = 1'700'000'000, .blocksPresent = 2,
                 .bytesPresent = 2 << 20, .blocks = {3 << 20, 1 << 20, "S-S"}};
    return Outcome<ObjectPage>::ok({{o}, "movies:/a.mkv"});
  }
  Outcome<PrefetchJob> startPrefetch(const std::string& path) override {
    calls.push_back("prefetch " + path);
    if (!path.starts_with("/movies/"))
      return Outcome<PrefetchJob>::fail(Reason::UnknownMount, "no mount serves " + path);
    PrefetchJob j{.id = "p" + std::to_string(jobs.size() + 1), .path = path,
                  .state = PrefetchState::Queued, .createdUnix = 1'700'000'100};
    jobs.push_back(j);
    return Outcome<PrefetchJob>::ok(j);
  }
  std::vector<PrefetchJob> prefetches() override {
    calls.push_back("prefetches");
    return jobs;
  }
  std::optional<PrefetchJob> prefetch(const std::string& id) override {
    calls.push_back("get " + id);
    for (const auto& j : jobs)
      if (j.id == id) return j;
    return std::nullopt;
  }
  Outcome<PrefetchJob> cancelPrefetch(const std::string& id) override {
    calls.push_back("cancel " + id);
    for (auto& j : jobs) {
      if (j.id != id) continue;
      j.state = PrefetchState::Cancelled;
      j.finishedUnix = 1'700'000'200;
      return Outcome<PrefetchJob>::ok(j);
    }
    return Outcome<PrefetchJob>::fail(Reason::NotFound, "no prefetch job " + id);
  }
  Outcome<PurgeResult> purge(const PurgeRequest& r) override {
    calls.push_back(std::string(r.prefix ? "purge-prefix " : "purge ") + r.path);
    PurgeResult res;
    res.purged.push_back({"movies", "/a.mkv", "/movies/a.mkv", 3 << 20, 2 << 20, true});
    return Outcome<PurgeResult>::ok(res);
  }
};

ApiRequest get(const std::string& path, const std::string& query = "") {
  ApiRequest r;
  r.method = "GET";
  r.path = path;
  r.query = query;
  r.host = "127.0.0.1:8690";
  r.client = "127.0.0.1";
  return r;
}

// What the status page and `slipstream` send: JSON from the same origin.
ApiRequest post(const std::string& path, const std::string& body) {
  ApiRequest r = get(path);
  r.method = "POST";
  r.contentType = "application/json";
  r.origin = "http://127.0.0.1:8690";
  r.body = body;
  return r;
}

json parse(const ApiResponse& r) {
  json j = json::parse(r.body, nullptr, false);
  REQUIRE_FALSE(j.is_discarded());
  return j;
}

std::string reasonOf(const ApiResponse& r) {
  json j = parse(r);
  if (!j.contains("error")) return "none";
  CHECK(j["error"]["status"] == r.status);
  CHECK(j["error"]["message"].is_string());
  CHECK(j["error"]["detail"].is_string());
  return j["error"]["reason"];
}

std::string header(const ApiResponse& r, const std::string& name) {
  for (const auto& [k, v] : r.headers)
    if (k == name) return v;
  return "";
}

}  // namespace

TEST_CASE("admin api: stats and transfers follow the schema", "[admin]") {
  FakeContext ctx;
  ApiResponse r = handle(get("/-/api/v1/stats"), ctx);
  CHECK(r.status == 200);
  CHECK(r.contentType == "application/json");
  CHECK(header(r, "Cache-Control") == "no-store");
  json j = parse(r);
  CHECK(j["version"] == "0.1.0");
  CHECK(j["uptime_s"] == 100);
  CHECK(j["config"]["file"] == "/etc/slipstream/slipstream.ini");
  CHECK(j["loop_lag_ms"]["max"] == 3.5);
  CHECK(j["cache"]["bytes_used"] == 3 << 20);
  CHECK(j["cache"]["hit_ratio"]["bytes"] == 0.75);
  CHECK(j["cache"]["hit_ratio"]["requests"] == 0.25);
  CHECK(j["mounts"][0]["last_error"]["reason"] == "rate_limited");
  CHECK(j["mounts"][0]["account"] == "home");
  CHECK(j["mounts"][1]["account"].is_null());
  CHECK(j["mounts"][1]["last_error"].is_null());
  CHECK(j["accounts"][0]["authorized"] == true);
  CHECK(j["accounts"][0]["last_rotation"] == 1'700'000'010);
  CHECK(j["accounts"][0].size() == 10);  // no field for any secret
  CHECK(r.body.find("token\"") == std::string::npos);

  r = handle(get("/-/api/v1/transfers"), ctx);
  CHECK(r.status == 200);
  j = parse(r);
  REQUIRE(j["transfers"].size() == 1);
  json t = j["transfers"][0];
  CHECK(t["path"] == "/movies/Big \xef\xbf\xbd Buck.mkv");  // a byte that is not UTF-8 → U+FFFD
  CHECK(t["speed_bps"] == 2.5e6);
  CHECK(t["upstream_connections"] == 3);
  CHECK(t["range"]["end"] == 5 << 20);
  CHECK(t["blocks"]["count"] == 5);
  CHECK(t["blocks"]["states"] == "SSF--");

  CHECK(handle(get("/-/api/v1/stats"), ctx).status == 200);
  ApiRequest head = get("/-/api/v1/stats");
  head.method = "HEAD";
  CHECK(handle(head, ctx).status == 200);
}

TEST_CASE("admin api: unknown routes and wrong methods are JSON errors", "[admin]") {
  FakeContext ctx;
  struct Case {
    std::string method, path;
    int status;
    std::string reason, allow;
  } cases[] = {
      {"GET", "/-/api/v2/stats", 404, "unknown_route", ""},
      {"GET", "/-/api/stats", 404, "unknown_route", ""},
      {"GET", "/-/api/v1/", 404, "unknown_route", ""},
      {"GET", "/-/api/v1/statsx", 404, "unknown_route", ""},
      {"POST", "/-/api/v1/stats", 405, "api_method_not_allowed", "GET, HEAD"},
      {"DELETE", "/-/api/v1/transfers", 405, "api_method_not_allowed", "GET, HEAD"},
      {"PUT", "/-/api/v1/objects", 405, "api_method_not_allowed", "GET, HEAD"},
      {"GET", "/-/api/v1/purge", 405, "api_method_not_allowed", "POST"},
      {"PUT", "/-/api/v1/prefetch", 405, "api_method_not_allowed", "GET, HEAD, POST"},
      {"POST", "/-/api/v1/prefetch/p1", 405, "api_method_not_allowed", "GET, HEAD, DELETE"},
      {"GET", "/-/api/v1/prefetch/nope", 404, "not_found", ""},
      {"GET", "/-/api/v1/prefetch/a%2Fb", 404, "not_found", ""},
      {"GET", "/-/api/v1/prefetch/" + std::string(65, 'a'), 404, "not_found", ""},
      {"GET", "/-/api/v1/prefetch/", 404, "not_found", ""},
  };
  for (const Case& c : cases) {
    CAPTURE(c.method, c.path);
    ApiRequest r = post(c.path, "{}");
    r.method = c.method;
    ApiResponse resp = handle(r, ctx);
    CHECK(resp.status == c.status);
    CHECK(reasonOf(resp) == c.reason);
    CHECK(header(resp, "Allow") == c.allow);
  }
  // Nothing with side effects ran.
  for (const std::string& call : ctx.calls) CHECK(call.starts_with("get "));
}

TEST_CASE("admin api: objects passes the query and validates it", "[admin]") {
  FakeContext ctx;
  ApiResponse r = handle(get("/-/api/v1/objects", "mount=movies&prefix=%2Fseries%2F&limit=5&after=x"), ctx);
  CHECK(r.status == 200);
  CHECK(ctx.lastQuery.mount == "movies");
  CHECK(ctx.lastQuery.prefix == "/series/");
  CHECK(ctx.lastQuery.limit == 5);
  CHECK(ctx.lastQuery.after == "x");
  json j = parse(r);
  CHECK(j["next"] == "movies:/a.mkv");
  CHECK(j["objects"][0]["blocks"]["states"] == "S-S");
  CHECK(j["objects"][0]["blocks_present"] == 2);
  CHECK(j["objects"][0]["size"] == 3 << 20);
  CHECK(j["objects"][0]["virtual_path"] == "/movies/a.mkv");

  CHECK(handle(get("/-/api/v1/objects"), ctx).status == 200);
  CHECK(ctx.lastQuery.limit == 100);
  CHECK(ctx.lastQuery.mount.empty());
  size_t before = ctx.calls.size();
  for (const char* q : {"limit=0", "limit=1001", "limit=x", "limit=5x", "limit=", "prefix=series"}) {
    CAPTURE(q);
    ApiResponse bad = handle(get("/-/api/v1/objects", q), ctx);
    CHECK(bad.status == 400);
    CHECK(reasonOf(bad) == "bad_request");
  }
  CHECK(ctx.calls.size() == before);
  ApiResponse gone = handle(get("/-/api/v1/objects", "mount=gone"), ctx);
  CHECK(gone.status == 404);
  CHECK(reasonOf(gone) == "unknown_mount");
}

TEST_CASE("admin api: prefetch start, progress, list and cancel", "[admin]") {
  FakeContext ctx;
  ApiResponse r = handle(post("/-/api/v1/prefetch", R"({"path": "/movies//a b.mkv"})"), ctx);
  CHECK(r.status == 202);
  CHECK(header(r, "Location") == "/-/api/v1/prefetch/p1");
  json j = parse(r);
  CHECK(j["id"] == "p1");
  CHECK(j["state"] == "queued");
  CHECK(j["bytes_total"].is_null());
  CHECK(j["finished_at"].is_null());
  CHECK(ctx.calls.back() == "prefetch /movies/a b.mkv");  // normalised; '%' would stay literal

  handle(post("/-/api/v1/prefetch", R"({"path": "/movies/100%25 real.mkv"})"), ctx);
  CHECK(ctx.calls.back() == "prefetch /movies/100%25 real.mkv");

  r = handle(get("/-/api/v1/prefetch/p1"), ctx);
  CHECK(r.status == 200);
  CHECK(parse(r)["path"] == "/movies/a b.mkv");
  r = handle(get("/-/api/v1/prefetch"), ctx);
  CHECK(parse(r)["prefetches"].size() == 2);

  ApiRequest del = post("/-/api/v1/prefetch/p1", "");
  del.method = "DELETE";
  r = handle(del, ctx);
  CHECK(r.status == 200);
  CHECK(parse(r)["state"] == "cancelled");
  CHECK(parse(r)["finished_at"] == 1'700'000'200);
  del.path = "/-/api/v1/prefetch/p9";
  r = handle(del, ctx);
  CHECK(r.status == 404);
  CHECK(reasonOf(r) == "not_found");

  r = handle(post("/-/api/v1/prefetch", R"({"path": "/tv/x.mkv"})"), ctx);
  CHECK(r.status == 404);
  CHECK(reasonOf(r) == "unknown_mount");
}

TEST_CASE("admin api: hostile and malformed bodies never reach the gateway", "[admin]") {
  FakeContext ctx;
  struct Case {
    std::string route, body;
    int status;
    std::string reason;
  } cases[] = {
      {"prefetch", "", 400, "bad_json"},
      {"prefetch", "{", 400, "bad_json"},
      {"prefetch", "[\"/movies/a.mkv\"]", 400, "bad_json"},
      {"prefetch", "\"/movies/a.mkv\"", 400, "bad_json"},
      {"prefetch", "{}", 400, "bad_json"},
      {"prefetch", R"({"path": 5})", 400, "bad_json"},
      {"prefetch", R"({"path": ""})", 400, "bad_json"},
      {"prefetch", R"({"path": null})", 400, "bad_json"},
      {"prefetch", R"({"path": ["/movies/a"]})", 400, "bad_json"},
      {"prefetch", R"({"pth": "/movies/a.mkv"})", 400, "bad_json"},
      {"prefetch", R"({"path": "/movies/a.mkv", "x": 1})", 400, "bad_json"},
      {"prefetch", R"({"path": "movies/a.mkv"})", 400, "bad_path"},
      {"prefetch", R"({"path": "/movies/../../etc/passwd"})", 400, "path_traversal"},
      {"prefetch", R"({"path": "/movies/a\u0000.mkv"})", 400, "path_nul"},
      {"prefetch", R"({"path": "/movies\\..\\a"})", 400, "path_backslash"},
      {"prefetch", R"({"path": "/)" + std::string(5000, 'a') + "\"}", 400, "path_too_long"},
      {"prefetch", std::string(200, '[') + std::string(200, ']'), 400, "bad_json"},
      {"prefetch", "{\"path\": " + std::string(100000, '[') + "}", 413, "payload_too_large"},
      {"prefetch", R"({"path": "/movies/a.mkv")" + std::string(70000, ' ') + "}", 413,
       "payload_too_large"},
      {"prefetch", "{\"path\": \"/movies/\xff\xfe.mkv\"}", 400, "bad_json"},  // not UTF-8
      {"purge", "{}", 400, "bad_json"},
      {"purge", R"({"path": "/movies/a.mkv", "prefix": "/movies"})", 400, "bad_json"},
      {"purge", R"({"prefix": "/movies/.."})", 400, "path_traversal"},
      {"purge", R"({"paths": ["/movies/a.mkv"]})", 400, "bad_json"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.route, c.body.substr(0, 60));
    ApiResponse r = handle(post("/-/api/v1/" + c.route, c.body), ctx);
    CHECK(r.status == c.status);
    CHECK(reasonOf(r) == c.reason);
  }
  CHECK(ctx.calls.empty());
  // Strings with brackets inside are not nesting.
  ApiResponse ok = handle(post("/-/api/v1/prefetch", R"({"path": "/movies/[[[[[[[[[[[[[[[[[[[[[[[[.mkv"})"), ctx);
  CHECK(ok.status == 202);
}

TEST_CASE("admin api: state-changing calls refuse what another site could forge", "[admin]") {
  struct Case {
    std::string name;
    std::string contentType;
    std::optional<std::string> origin;
    std::string custom, secFetchSite;
    bool tls;
    bool allowed;
  } cases[] = {
      {"same-origin JSON", "application/json", "http://127.0.0.1:8690", "", "same-origin", false, true},
      {"JSON with charset", "Application/JSON; charset=utf-8", std::nullopt, "", "", false, true},
      {"CLI: JSON, no Origin", "application/json", std::nullopt, "", "", false, true},
      {"custom header, no type", "", std::nullopt, "1", "", false, true},
      {"custom header + text/plain", "text/plain", std::nullopt, "1", "", false, true},
      {"https origin on tls", "application/json", "https://127.0.0.1:8690", "", "", true, true},
      {"origin in upper case", "application/json", "HTTP://127.0.0.1:8690", "", "", false, true},
      {"form post", "application/x-www-form-urlencoded", std::nullopt, "", "", false, false},
      {"multipart form", "multipart/form-data; boundary=x", std::nullopt, "", "", false, false},
      {"text/plain form", "text/plain", std::nullopt, "", "", false, false},
      {"no type at all", "", std::nullopt, "", "", false, false},
      {"json-ish type", "application/jsonx", std::nullopt, "", "", false, false},
      {"foreign origin", "application/json", "http://evil.example", "", "", false, false},
      {"foreign origin + header", "", "http://evil.example", "1", "", false, false},
      {"same host, other port", "application/json", "http://127.0.0.1:8691", "", "", false, false},
      {"null origin", "application/json", "null", "", "", false, false},
      {"empty origin", "application/json", "", "", "", false, false},
      {"http origin on tls", "application/json", "http://127.0.0.1:8690", "", "", true, false},
      {"cross-site fetch", "application/json", std::nullopt, "", "cross-site", false, false},
      {"blank custom header", "text/plain", std::nullopt, " ", "", false, false},
  };
  for (const Case& c : cases) {
    for (std::string route : {"prefetch", "purge", "prefetch/p1"}) {
      CAPTURE(c.name, route);
      FakeContext ctx;
      ctx.jobs.push_back({.id = "p1", .path = "/movies/a.mkv"});
      ApiRequest r = post("/-/api/v1/" + route, R"({"path": "/movies/a.mkv"})");
      if (route == "prefetch/p1") {
        r.method = "DELETE";
        r.body.clear();
      }
      r.contentType = c.contentType;
      r.origin = c.origin;
      r.customHeader = c.custom;
      r.secFetchSite = c.secFetchSite;
      r.tls = c.tls;
      ApiResponse resp = handle(r, ctx);
      if (c.allowed) {
        CHECK(resp.status < 300);
        CHECK(ctx.calls.size() == 1);
      } else {
        CHECK(resp.status == 403);
        CHECK(reasonOf(resp) == "cross_site_request");
        CHECK(ctx.calls.empty());
      }
    }
  }
  // Reads need no guard: the status page's own GETs and curl's.
  FakeContext ctx;
  ApiRequest r = get("/-/api/v1/stats");
  r.origin = "http://evil.example";
  CHECK(handle(r, ctx).status == 200);
  CHECK(header(handle(r, ctx), "Access-Control-Allow-Origin").empty());
}

TEST_CASE("admin api: purge of a file or a folder", "[admin]") {
  FakeContext ctx;
  ApiResponse r = handle(post("/-/api/v1/purge", R"({"path": "/movies/a.mkv"})"), ctx);
  CHECK(r.status == 200);
  CHECK(ctx.calls.back() == "purge /movies/a.mkv");
  json j = parse(r);
  CHECK(j["count"] == 1);
  CHECK(j["bytes"] == 2 << 20);
  CHECK(j["purged"][0]["in_use"] == true);
  r = handle(post("/-/api/v1/purge", R"({"prefix": "/movies/series/"})"), ctx);
  CHECK(r.status == 200);
  CHECK(ctx.calls.back() == "purge-prefix /movies/series/");
}

TEST_CASE("admin api: admin protection and helpers", "[admin]") {
  conf::Server s;
  s.adminAllow = {*conf::parseCidr("127.0.0.0/8"), *conf::parseCidr("::1")};
  CHECK(adminAllowed(s, "127.0.0.1", ""));
  CHECK(adminAllowed(s, "::1", ""));
  CHECK_FALSE(adminAllowed(s, "192.168.1.9", ""));
  CHECK_FALSE(adminAllowed(s, "192.168.1.9", "Bearer "));  // no token configured
  s.adminToken = "s3cret-token";
  CHECK(adminAllowed(s, "192.168.1.9", "Bearer s3cret-token"));
  CHECK_FALSE(adminAllowed(s, "192.168.1.9", "Bearer s3cret-toke"));
  CHECK_FALSE(adminAllowed(s, "192.168.1.9", "Bearer s3cret-tokenX"));
  CHECK_FALSE(adminAllowed(s, "192.168.1.9", "bearer s3cret-token"));
  CHECK_FALSE(adminAllowed(s, "192.168.1.9", "s3cret-token"));
  // A browser's login prompt: Basic, any user name, the token as password.
  CHECK(adminAllowed(s, "192.168.1.9", "Basic YW55b25lOnMzY3JldC10b2tlbg=="));     // anyone:s3cret-token
  CHECK(adminAllowed(s, "192.168.1.9", "basic OnMzY3JldC10b2tlbg=="));     // :s3cret-token
  CHECK_FALSE(adminAllowed(s, "192.168.1.9", "Basic czNjcmV0LXRva2VuOng="));  // s3cret-token:x
  CHECK_FALSE(adminAllowed(s, "192.168.1.9", "Basic YW55b25lOnMzY3JldC10b2tl"));  // anyone:s3cret-toke
  CHECK_FALSE(adminAllowed(s, "192.168.1.9", "Basic YW55b25lOnMzY3JldC10b2tlblg="));  // anyone:s3cret-tokenX
  CHECK_FALSE(adminAllowed(s, "192.168.1.9", "Basic !!!"));

  CHECK(blockStates({true, false, true, false}, {false, true, true}) == "SFS-");
  CHECK(blockStates({}, {}) == "");
  CHECK(std::string(prefetchStateName(PrefetchState::Running)) == "running");

  ApiResponse e = errorResponse(Reason::CrossSiteRequest, "why");
  CHECK(e.status == 403);
  CHECK(e.reason == Reason::CrossSiteRequest);  // what the access log and metrics count
  json j = parse(e);
  CHECK(j == json{{"error",
                   {{"reason", "cross_site_request"},
                    {"status", 403},
                    {"message", "cross-site request refused"},
                    {"detail", "why"}}}});
}

namespace {

// Every key path of a JSON value ("transfers[].blocks.states"), so two
// documents of one schema compare equal whatever their values.
void shape(const json& j, const std::string& at, std::set<std::string>* out) {
  if (j.is_object()) {
    for (const auto& [k, v] : j.items()) {
      out->insert(at + "." + k);
      shape(v, at + "." + k, out);
    }
  } else if (j.is_array()) {
    for (const auto& v : j) shape(v, at + "[]", out);
  }
}

std::set<std::string> shapeOf(const json& j) {
  std::set<std::string> s;
  shape(j, "", &s);
  return s;
}

}  // namespace

// The status page's browser test (tests/integration/test_status_page.py)
// feeds the page canned JSON; it must be what the API really sends.
TEST_CASE("admin api: the status page test's canned JSON has the API's schema", "[admin]") {
  FakeContext ctx;
  ctx.jobs.push_back({.id = "p1", .path = "/movies/a.mkv", .state = PrefetchState::Running,
                      .bytesDone = 5, .bytesTotal = 10});
  for (const std::string name : {"stats", "transfers", "prefetch"}) {
    CAPTURE(name);
    std::ifstream f("tests/integration/data/api_v1_" + name + ".json");
    REQUIRE(f.good());  // run from the repository root (make unit does)
    json canned = json::parse(f);
    json real = parse(handle(get("/-/api/v1/" + name), ctx));
    CHECK(shapeOf(canned) == shapeOf(real));
  }
}
