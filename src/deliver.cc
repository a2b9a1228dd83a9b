// The download routes: /d/ (deliver per policy, signed when signing is on),
// /p/ (always proxy) and, on an edge node, /<path>?sign=. A request is
// matched to its mount, its sign checked, policy decides the delivery, and
// the Engine's Job streams the answer into the Exchange.
#include "conf/clock.h"
#include "src/front.h"

namespace slip {

using policy::Reason;

void Server::Impl::addDeliveryRoutes() {
  if (cfg().server.role == conf::Role::Edge) {  // role needs a restart: the routes stay
    router.setFallback({.pattern = "/", .prefix = true, .download = true,
                        .kind = static_cast<int>(policy::Route::Edge), .handler = [this](Exchange& ex) {
                          deliverPath(ex, policy::Route::Edge, ex.path());
                        }});
    return;
  }
  router.add({.pattern = "/d/", .prefix = true, .download = true,
              .kind = static_cast<int>(policy::Route::Download), .handler = [this](Exchange& ex) {
                deliverPath(ex, policy::Route::Download, ex.path().substr(2));
              }});
  router.add({.pattern = "/p/", .prefix = true, .download = true,
              .kind = static_cast<int>(policy::Route::Proxy), .handler = [this](Exchange& ex) {
                deliverPath(ex, policy::Route::Proxy, ex.path().substr(2));
              }});
}

void Server::Impl::deliverPath(Exchange& ex, policy::Route route, std::string virt) {
  const conf::Config& cfg = *ex.gen->cfg;  // the request's configuration
  policy::MountMatch mm = policy::matchMount(cfg.mounts, virt);
  if (mm.index < 0) return ex.sendError(Reason::UnknownMount, "");
  ex.setTarget(mm.index, virt, mm.rest);

  // --- signature (SPEC §6): /d/ and edge routes, unless the client is exempt
  if (!cfg.server.signSecret.empty() &&
      (route == policy::Route::Download || route == policy::Route::Edge) &&
      !policy::anyCidrContains(cfg.server.signExempt, ex.client())) {
    std::string sign = policy::queryParam(ex.query(), "sign").value_or("");
    switch (policy::verifySign(cfg.server.signSecret, virt, sign, clock.wallSeconds())) {
      case policy::SignCheck::Ok: break;
      case policy::SignCheck::Missing: return ex.sendError(Reason::SignMissing, "");
      case policy::SignCheck::Invalid: return ex.sendError(Reason::SignInvalid, "");
      case policy::SignCheck::Expired: return ex.sendError(Reason::SignExpired, "");
    }
  }

  // --- policy
  const http::HeaderList& in = ex.request().headers;
  policy::RequestFacts facts;
  facts.route = route;
  facts.method = ex.method();
  facts.path = virt;
  facts.mountIndex = mm.index;
  facts.client = ex.client();
  facts.userAgent = std::string(in.get("User-Agent"));
  proxy::Request preq;
  preq.id = ex.id();
  preq.setup = ex.gen->setup;
  preq.head = ex.isHead();
  preq.mountIndex = mm.index;
  preq.path = virt;
  preq.rest = mm.rest;
  preq.range = std::string(in.get("Range"));
  preq.ifRange = std::string(in.get("If-Range"));
  preq.client = ex.client();
  preq.userAgent = facts.userAgent;
  deliver(ex, std::move(facts), std::move(preq));
}

void Server::Impl::deliver(Exchange& ex, policy::RequestFacts facts, proxy::Request preq) {
  const Generation& g = *ex.gen;
  const conf::Config& cfg = *g.cfg;
  policy::Decision d = g.rules.decide(cfg, facts, g.setup->traits);
  if (d.needsSize) {
    // A rule's size condition: learn the size (index or a 1-byte probe), then decide again.
    ex.setState(ExState::ProbingSize);
    ex.retired.push_back(std::move(ex.job));
    Exchange* exch = &ex;
    auto probe = engine.probeSize(preq, [this, exch, facts, preq](std::optional<uint64_t> size) mutable {
      if (!exch->running()) return;
      facts.size = size;
      facts.sizeUnknowable = !size;
      exch->retired.push_back(std::move(exch->job));
      exch->setState(ExState::Deciding);
      deliver(*exch, facts, preq);
    });
    // The size may have been known at once (index, stat): then the delivery
    // already started and owns ex.job; the probe only waits to be freed.
    if (ex.job) ex.retired.push_back(std::move(probe));
    else ex.job = std::move(probe);
    return;
  }
  ex.setDelivery(conf::deliveryName(d.delivery));
  if (d.delivery == conf::Delivery::Deny) return ex.sendError(Reason::Denied, "rule " + d.rule);
  if (d.delivery == conf::Delivery::ProxyUrl) {
    int64_t ttl = cfg.server.signTtlMs;
    int64_t expiry = ttl > 0 ? clock.wallSeconds() + (ttl + 999) / 1000 : 0;
    std::string loc = d.proxyUrl;
    while (!loc.empty() && loc.back() == '/') loc.pop_back();
    loc += policy::encodePath(facts.path);
    if (!cfg.server.signSecret.empty())
      loc += "?sign=" + policy::encodeQueryValue(policy::sign(cfg.server.signSecret, facts.path, expiry));
    return ex.respond(302, {{"Location", loc}, {"Referrer-Policy", "no-referrer"}, {"Cache-Control", "no-store"}},
                      "");
  }
  preq.decision = d;
  // The next episode: only for what the cache keeps, and names that are episodes.
  if (d.nextEpisode > 0 && d.cache && d.delivery == conf::Delivery::Proxy && !preq.head &&
      policy::parseEpisode(preq.rest))
    ex.nextEpisodeShare = d.nextEpisode;
  ex.job = engine.start(preq, &ex);
}

}  // namespace slip
