// The admin API: routes, the cross-site guard, defensive body parsing, JSON
// out. Everything a response says comes from the AdminContext.
#include "src/admin_api.h"

#include <openssl/crypto.h>

#include <algorithm>
#include <charconv>
#include <nlohmann/json.hpp>

#include "src/auth.h"

namespace slip::admin {
namespace {

using json = nlohmann::json;
using policy::Reason;

constexpr std::string_view kV1 = "/-/api/v1/";
constexpr size_t kMaxLimit = 1000;    // objects per page
constexpr size_t kMaxIdLength = 64;

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string trim(std::string_view s) {
  size_t a = s.find_first_not_of(" \t"), b = s.find_last_not_of(" \t");
  return a == std::string_view::npos ? std::string() : std::string(s.substr(a, b - a + 1));
}

// Paths and names come from users' files: never let a stray byte that is not
// UTF-8 throw; it becomes U+FFFD in the output.
std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

ApiResponse jsonResponse(int status, const json& j) {
  ApiResponse r;
  r.status = status;
  r.body = dump(j);
  r.headers = {{"Cache-Control", "no-store"}, {"X-Content-Type-Options", "nosniff"}};
  return r;
}

ApiResponse errorOf(const ApiError& e) { return errorResponse(e.reason, e.detail); }

json unixOrNull(int64_t t) { return t > 0 ? json(t) : json(nullptr); }

json ratio(uint64_t hit, uint64_t miss) {
  return hit + miss ? json(static_cast<double>(hit) / static_cast<double>(hit + miss))
                    : json(nullptr);
}

json toJson(const std::optional<LastError>& e) {
  if (!e) return nullptr;
  return {{"at", e->atUnix}, {"reason", policy::reasonCode(e->reason)}, {"detail", e->detail}};
}

json toJson(const ApiError& e) {
  return {{"reason", policy::reasonCode(e.reason)}, {"detail", e.detail}};
}

json toJson(const BlockMap& m) {
  return {{"size", m.size}, {"block_size", m.blockSize}, {"count", m.states.size()},
          {"states", m.states}};
}

json toJson(const Stats& s) {
  const CacheStats& c = s.cache;
  json mounts = json::array(), accounts = json::array();
  for (const MountStats& m : s.mounts)
    mounts.push_back({{"name", m.name}, {"prefix", m.prefix}, {"source", m.source},
                      {"account", m.account.empty() ? json(nullptr) : json(m.account)},
                      {"links_resolved", m.linksResolved ? json(*m.linksResolved) : json()},
                      {"link_refusals", m.linkRefusals},
                      {"rate_limited", m.rateLimited}, {"last_error", toJson(m.lastError)}});
  for (const AccountStats& a : s.accounts)
    accounts.push_back({{"name", a.name}, {"authorized", a.authorized},
                        {"last_rotation", a.lastRotationUnix ? json(*a.lastRotationUnix) : json()},
                        {"token_exchanges", a.tokenExchanges}, {"token_failures", a.tokenFailures},
                        {"api_calls", a.apiCalls}, {"rate_limited", a.rateLimited},
                        {"downloads_open", a.downloadsOpen},
                        {"downloads_waiting", a.downloadsWaiting},
                        {"last_error", toJson(a.lastError)}});
  return {
      {"version", s.version},
      {"now", s.nowUnix},
      {"started_at", s.startedUnix},
      {"uptime_s", std::max<int64_t>(0, s.nowUnix - s.startedUnix)},
      {"pid", s.pid},
      {"config",
       {{"file", s.configFile},
        {"loaded_at", s.configLoadedUnix},
        {"reloads", s.reloads},
        {"reload_failures", s.reloadFailures},
        {"last_reload", s.lastReload ? json{{"at_ms", s.lastReload->atUnixMs},
                                            {"ok", s.lastReload->ok},
                                            {"errors", s.lastReload->errors},
                                            {"needs_restart", s.lastReload->needsRestart}}
                                     : json(nullptr)}}},
      {"loop_lag_ms", {{"last", s.loopLagMs}, {"max", s.loopLagMaxMs}}},
      {"requests", {{"active", s.activeRequests}, {"total", s.totalRequests}}},
      {"bytes", {{"to_clients", s.bytesToClients}, {"from_upstream", s.bytesFromUpstream}}},
      {"cache",
       {{"enabled", c.enabled}, {"bytes_used", c.bytesUsed}, {"max_size", c.maxSize},
        {"disk_free", c.diskFree}, {"objects", c.objects}, {"blocks", c.blocks},
        {"evicted_blocks", c.evictedBlocks},
        {"hits", {{"bytes", c.hitBytes}, {"requests", c.hitRequests}}},
        {"misses", {{"bytes", c.missBytes}, {"requests", c.missRequests}}},
        {"hit_ratio",
         {{"bytes", ratio(c.hitBytes, c.missBytes)},
          {"requests", ratio(c.hitRequests, c.missRequests)}}}}},
      {"mounts", mounts},
      {"accounts", accounts},
  };
}

json toJson(const Transfer& t) {
  return {{"id", t.id},
          {"client", t.client},
          {"user_agent", t.userAgent},
          {"mount", t.mount},
          {"path", t.path},
          {"delivery", t.delivery},
          {"cache", t.cache.empty() ? json(nullptr) : json(t.cache)},
          {"range", {{"begin", t.rangeBegin}, {"end", t.rangeEnd}}},
          {"bytes_sent", t.bytesSent},
          {"speed_bps", t.speedBps},
          {"upstream_connections", t.upstreamConnections},
          {"started_at", t.startedUnix},
          {"blocks", t.blocks ? toJson(*t.blocks) : json(nullptr)}};
}

json toJson(const ObjectInfo& o) {
  return {{"mount", o.mount},
          {"path", o.path},
          {"virtual_path", o.virtualPath.empty() ? json(nullptr) : json(o.virtualPath)},
          {"size", o.blocks.size},
          {"etag", o.etag},
          {"last_modified", o.lastModified},
          {"content_type", o.contentType},
          {"validated_at", unixOrNull(o.validatedUnix)},
          {"blocks_present", o.blocksPresent},
          {"bytes_present", o.bytesPresent},
          {"blocks", toJson(o.blocks)}};
}

json toJson(const PrefetchJob& p) {
  return {{"id", p.id},
          {"path", p.path},
          {"state", prefetchStateName(p.state)},
          {"bytes_done", p.bytesDone},
          {"bytes_total", p.bytesTotal ? json(p.bytesTotal) : json(nullptr)},
          {"speed_bps", p.speedBps},
          {"created_at", p.createdUnix},
          {"finished_at", unixOrNull(p.finishedUnix)},
          {"error", p.error ? toJson(*p.error) : json(nullptr)}};
}

json toJson(const PurgeResult& r) {
  json list = json::array();
  uint64_t bytes = 0;
  for (const PurgedObject& o : r.purged) {
    list.push_back({{"mount", o.mount}, {"path", o.path}, {"virtual_path", o.virtualPath},
                    {"size", o.size}, {"bytes", o.bytes}, {"in_use", o.inUse}});
    bytes += o.bytes;
  }
  return {{"purged", list}, {"count", r.purged.size()}, {"bytes", bytes}};
}

// ---------------------------------------------------------------- guards

// A browser lets any web page POST a form (urlencoded, multipart, text/plain)
// to our address without asking; a JSON content type or a custom header
// needs a CORS preflight we never grant. Origin, when present, must be us.
std::optional<ApiError> crossSite(const ApiRequest& r) {
  if (lower(r.secFetchSite) == "cross-site")
    return ApiError{Reason::CrossSiteRequest, "Sec-Fetch-Site: cross-site"};
  if (r.origin) {
    std::string want = (r.tls ? "https://" : "http://") + lower(r.host);
    if (r.host.empty() || lower(trim(*r.origin)) != want)
      return ApiError{Reason::CrossSiteRequest,
                      "Origin " + *r.origin + " is not this gateway (" + want + ")"};
  }
  std::string type = lower(trim(r.contentType.substr(0, r.contentType.find(';'))));
  if (type != "application/json" && trim(r.customHeader).empty())
    return ApiError{Reason::CrossSiteRequest,
                    "state-changing calls need Content-Type: application/json or an "
                    "X-Slipstream: 1 header"};
  return std::nullopt;
}

bool validId(std::string_view id) {
  if (id.empty() || id.size() > kMaxIdLength) return false;
  return std::all_of(id.begin(), id.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_';
  });
}

ApiResponse methodNotAllowed(const std::string& allow) {
  ApiResponse r = errorResponse(Reason::ApiMethodNotAllowed, "allowed: " + allow);
  r.headers.emplace_back("Allow", allow);
  return r;
}

bool isGet(const ApiRequest& r) { return r.method == "GET" || r.method == "HEAD"; }

// ---------------------------------------------------------------- routes

ApiResponse objects(const ApiRequest& r, AdminContext& ctx) {
  ObjectQuery q;
  if (auto v = policy::queryParam(r.query, "mount")) q.mount = *v;
  if (auto v = policy::queryParam(r.query, "prefix")) q.prefix = *v;
  if (auto v = policy::queryParam(r.query, "after")) q.after = *v;
  if (auto v = policy::queryParam(r.query, "limit")) {
    size_t n = 0;
    auto [p, ec] = std::from_chars(v->data(), v->data() + v->size(), n);
    if (ec != std::errc() || p != v->data() + v->size() || n == 0 || n > kMaxLimit)
      return errorResponse(Reason::BadRequest,
                           "limit must be a number from 1 to " + std::to_string(kMaxLimit));
    q.limit = n;
  }
  if (!q.prefix.empty() && q.prefix[0] != '/')
    return errorResponse(Reason::BadRequest, "prefix must start with '/' (a path in the mount)");
  Outcome<ObjectPage> page = ctx.objects(q);
  if (!page.value) return errorOf(page.error);
  json list = json::array();
  for (const ObjectInfo& o : page.value->objects) list.push_back(toJson(o));
  return jsonResponse(200, {{"objects", list},
                            {"next", page.value->next.empty() ? json() : json(page.value->next)}});
}

ApiResponse prefetchCollection(const ApiRequest& r, AdminContext& ctx) {
  if (isGet(r)) {
    json list = json::array();
    for (const PrefetchJob& p : ctx.prefetches()) list.push_back(toJson(p));
    return jsonResponse(200, {{"prefetches", list}});
  }
  if (r.method != "POST") return methodNotAllowed("GET, HEAD, POST");
  if (auto e = crossSite(r)) return errorOf(*e);
  Outcome<std::string> path = parsePrefetchBody(r.body);
  if (!path.value) return errorOf(path.error);
  Outcome<PrefetchJob> job = ctx.startPrefetch(*path.value);
  if (!job.value) return errorOf(job.error);
  ApiResponse resp = jsonResponse(202, toJson(*job.value));
  resp.headers.emplace_back("Location", std::string(kV1) + "prefetch/" + job.value->id);
  return resp;
}

ApiResponse prefetchItem(const ApiRequest& r, AdminContext& ctx, std::string_view id) {
  if (!validId(id)) return errorResponse(Reason::NotFound, "no prefetch job with this id");
  if (isGet(r)) {
    auto job = ctx.prefetch(std::string(id));
    if (!job) return errorResponse(Reason::NotFound, "no prefetch job " + std::string(id));
    return jsonResponse(200, toJson(*job));
  }
  if (r.method != "DELETE") return methodNotAllowed("GET, HEAD, DELETE");
  if (auto e = crossSite(r)) return errorOf(*e);
  Outcome<PrefetchJob> job = ctx.cancelPrefetch(std::string(id));
  if (!job.value) return errorOf(job.error);
  return jsonResponse(200, toJson(*job.value));
}

ApiResponse purge(const ApiRequest& r, AdminContext& ctx) {
  if (r.method != "POST") return methodNotAllowed("POST");
  if (auto e = crossSite(r)) return errorOf(*e);
  Outcome<PurgeRequest> req = parsePurgeBody(r.body);
  if (!req.value) return errorOf(req.error);
  Outcome<PurgeResult> res = ctx.purge(*req.value);
  if (!res.value) return errorOf(res.error);
  return jsonResponse(200, toJson(*res.value));
}

}  // namespace

const char* prefetchStateName(PrefetchState s) {
  switch (s) {
    case PrefetchState::Queued: return "queued";
    case PrefetchState::Running: return "running";
    case PrefetchState::Done: return "done";
    case PrefetchState::Failed: return "failed";
    case PrefetchState::Cancelled: return "cancelled";
  }
  return "unknown";
}

bool adminAllowed(const conf::Server& s, std::string_view client, std::string_view authorization) {
  if (policy::anyCidrContains(s.adminAllow, client)) return true;
  if (s.adminToken.empty()) return false;
  std::string want = "Bearer " + s.adminToken;
  if (authorization.size() == want.size() &&
      CRYPTO_memcmp(authorization.data(), want.data(), want.size()) == 0)
    return true;
  auto basic = auth::parseBasic(authorization);
  return basic && basic->password.size() == s.adminToken.size() &&
         CRYPTO_memcmp(basic->password.data(), s.adminToken.data(), s.adminToken.size()) == 0;
}

ApiResponse errorResponse(Reason r, std::string_view detail) {
  int status = policy::reasonStatus(r);
  ApiResponse resp = jsonResponse(status, {{"error",
                                            {{"reason", policy::reasonCode(r)},
                                             {"status", status},
                                             {"message", policy::reasonText(r)},
                                             {"detail", std::string(detail)}}}});
  resp.reason = r;
  return resp;
}

Outcome<ObjectPage> objectsFromStore(store::Store* st, const std::vector<conf::Mount>& mounts,
                                     const ObjectQuery& q) {
  using Out = Outcome<ObjectPage>;
  auto mountNamed = [&mounts](const std::string& name) -> const conf::Mount* {
    for (const conf::Mount& m : mounts)
      if (m.name == name) return &m;
    return nullptr;
  };
  if (!q.mount.empty() && !mountNamed(q.mount))
    return Out::fail(Reason::UnknownMount, "no mount named '" + q.mount + "'");
  if (!st) return Out::fail(Reason::CacheDisabled, "no mount has cache = on");
  store::ObjectListing l = st->listObjects({q.mount, q.prefix, q.after, q.limit});
  ObjectPage page;
  page.next = l.next;
  for (const store::StoredObject& o : l.objects) {
    ObjectInfo info;
    info.mount = o.meta.mount;
    info.path = o.meta.path;
    // Objects of a mount removed from the configuration stay listed (until
    // evicted or purged) but have no virtual path any more.
    if (const conf::Mount* m = mountNamed(o.meta.mount))
      info.virtualPath = (m->prefix == "/" ? "" : m->prefix) + o.meta.path;
    info.etag = o.meta.etag;
    info.lastModified = o.meta.lastModified;
    info.contentType = o.meta.contentType;
    info.validatedUnix = o.meta.validatedMs / 1000;
    info.blocksPresent = o.presentBlocks;
    info.bytesPresent = o.presentBytes;
    info.blocks = {o.meta.size, o.meta.blockSize, blockStates(o.present)};
    page.objects.push_back(std::move(info));
  }
  return Out::ok(std::move(page));
}

std::string blockStates(const std::vector<bool>& present, const std::vector<bool>& fetching) {
  std::string s(present.size(), kBlockMissing);
  for (size_t i = 0; i < present.size(); i++) {
    if (present[i]) s[i] = kBlockStored;
    else if (i < fetching.size() && fetching[i]) s[i] = kBlockFetching;
  }
  return s;
}

ApiResponse handle(const ApiRequest& r, AdminContext& ctx) {
  std::string_view p = r.path;
  if (!p.starts_with(kV1))
    return errorResponse(Reason::UnknownRoute, "the API lives under /-/api/v1/");
  std::string_view route = p.substr(kV1.size());
  if (route == "stats" || route == "transfers") {
    if (!isGet(r)) return methodNotAllowed("GET, HEAD");
    if (route == "stats") return jsonResponse(200, toJson(ctx.stats()));
    json list = json::array();
    for (const Transfer& t : ctx.transfers()) list.push_back(toJson(t));
    return jsonResponse(200, {{"transfers", list}});
  }
  if (route == "objects") {
    if (!isGet(r)) return methodNotAllowed("GET, HEAD");
    return objects(r, ctx);
  }
  if (route == "prefetch") return prefetchCollection(r, ctx);
  if (route.starts_with("prefetch/")) return prefetchItem(r, ctx, route.substr(9));
  if (route == "purge") return purge(r, ctx);
  return errorResponse(Reason::UnknownRoute,
                       "API routes: stats, transfers, objects, prefetch, prefetch/ID, purge");
}

}  // namespace slip::admin
