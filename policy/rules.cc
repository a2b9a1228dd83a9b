// The delivery decision (SPEC §7): ordered rules, first full match wins,
// otherwise the mount's delivery; then the route and the source's traits
// turn the wanted delivery into one the gateway can actually perform.
//
// decide() and explain() share one evaluation; explain only adds the words.
// Invariant: rules_[i] was compiled from cfg.rules[i] of the Config that
// decide() is given (compile and decide use the same loaded configuration).
#include <regex.h>

#include <algorithm>
#include <cassert>

#include "policy/policy.h"

namespace slip::policy {

struct RuleSet::Compiled {
  regex_t re{};
  bool hasRe = false;
  Compiled() = default;
  Compiled(const Compiled&) = delete;
  Compiled& operator=(const Compiled&) = delete;
  ~Compiled() {
    if (hasRe) regfree(&re);
  }
};

namespace {

std::string join(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : ", ") + s;
  return out;
}

std::string joinCidrs(const std::vector<conf::Cidr>& v) {
  std::string out;
  for (const auto& c : v) out += (out.empty() ? "" : ", ") + c.text;
  return out;
}

bool contains(const std::vector<std::string>& v, std::string_view s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

const char* routeName(Route r) {
  switch (r) {
    case Route::Download:
      return "/d/";
    case Route::Proxy:
      return "/p/";
    case Route::Edge:
      return "edge";
    case Route::Dav:
      return "/dav/";
  }
  return "?";
}

// The conditions of one rule against one request. With `why` null it stops at
// the first failure; otherwise it collects every failure, "; "-separated,
// so `slipstream explain` shows all there is to fix at once.
enum class Match { Yes, No, NeedsSize };

Match matchRule(const conf::Rule& rule, const regex_t* re, const conf::Config& cfg,
                const RequestFacts& facts, std::string* why) {
  bool failed = false;
  auto fail = [&](auto&& describe) {
    failed = true;
    if (why) *why += (why->empty() ? "" : "; ") + describe();
    return why != nullptr;  // keep going only when explaining
  };
  const std::string& mount = cfg.mounts[facts.mountIndex].name;
  if (!rule.mounts.empty() && !contains(rule.mounts, mount) &&
      !fail([&] { return "mount " + mount + " not in " + join(rule.mounts); }))
    return Match::No;
  if (!rule.methods.empty() && !contains(rule.methods, facts.method) &&
      !fail([&] { return "method " + facts.method + " not in " + join(rule.methods); }))
    return Match::No;
  if (!rule.paths.empty() &&
      std::none_of(rule.paths.begin(), rule.paths.end(),
                   [&](const std::string& g) { return globMatch(g, facts.path); }) &&
      !fail([&] { return "path " + facts.path + " matches none of " + join(rule.paths); }))
    return Match::No;
  if (!rule.exts.empty()) {
    std::string ext = extensionOf(facts.path);
    if (!contains(rule.exts, ext) &&
        !fail([&] { return "ext \"" + ext + "\" not in " + join(rule.exts); }))
      return Match::No;
  }
  if (!rule.clients.empty() && !anyCidrContains(rule.clients, facts.client) && !fail([&] {
        return "client " + facts.client +
               (parseAddress(facts.client) ? " not in " + joinCidrs(rule.clients)
                                           : " is not a numeric address");
      }))
    return Match::No;
  if (re && regexec(re, facts.userAgent.c_str(), 0, nullptr, 0) != 0 && !fail([&] {
        return "user_agent \"" + facts.userAgent + "\" does not match /" + rule.userAgent + "/" +
               (rule.ignoreCase ? " (ignore case)" : "");
      }))
    return Match::No;
  // Size last: an unknown size only matters when everything else matched.
  if (rule.minSize || rule.maxSize) {
    if (!facts.size) {
      if (facts.sizeUnknowable) {
        fail([] { return std::string("size unknown (the upstream did not tell)"); });
        return Match::No;
      }
      if (failed) return Match::No;
      if (why) *why = "size unknown: probe the size, then decide again";
      return Match::NeedsSize;
    }
    uint64_t size = *facts.size;
    auto bound = [](int64_t b) { return static_cast<uint64_t>(std::max<int64_t>(b, 0)); };
    if (rule.minSize && size < bound(*rule.minSize) && !fail([&] {
          return "size " + std::to_string(size) + " < min_size " + std::to_string(*rule.minSize);
        }))
      return Match::No;
    if (rule.maxSize && size > bound(*rule.maxSize) && !fail([&] {
          return "size " + std::to_string(size) + " > max_size " + std::to_string(*rule.maxSize);
        }))
      return Match::No;
  }
  return failed ? Match::No : Match::Yes;
}

// Turns the wanted delivery into the performed one; `note` says why it
// changed, if it did.
conf::Delivery resolve(conf::Delivery want, Route route, const SourceTraits& t, std::string* note) {
  using conf::Delivery;
  if (want == Delivery::Deny) return want;
  if (route != Route::Download) {
    if (want != Delivery::Proxy) *note = std::string(routeName(route)) + " route always proxies";
    return Delivery::Proxy;
  }
  if (want == Delivery::Auto) {
    if (t.needsHeaders)
      *note = "auto: source needs headers the client cannot send";
    else if (t.clientBound)
      *note = "auto: source binds links to the client";
    else if (!t.hasLink)
      *note = "auto: source has no link to redirect to";
    else {
      *note = "auto: source needs no headers and links are not client-bound";
      return Delivery::Redirect;
    }
    return Delivery::Proxy;
  }
  if (want == Delivery::Redirect && !t.hasLink) {
    *note = "source has no link to redirect to";
    return Delivery::Proxy;
  }
  return want;
}

}  // namespace

RuleSet::RuleSet() = default;
RuleSet::~RuleSet() = default;
RuleSet::RuleSet(RuleSet&&) noexcept = default;
RuleSet& RuleSet::operator=(RuleSet&&) noexcept = default;

std::vector<conf::Error> RuleSet::compile(const conf::Config& cfg, RuleSet* out) {
  std::vector<conf::Error> errors;
  RuleSet set;
  for (const auto& rule : cfg.rules) {
    auto c = std::make_unique<Compiled>();
    if (!rule.userAgent.empty()) {
      int flags = REG_EXTENDED | REG_NOSUB | (rule.ignoreCase ? REG_ICASE : 0);
      int rc = regcomp(&c->re, rule.userAgent.c_str(), flags);
      if (rc != 0) {
        char msg[256];
        regerror(rc, &c->re, msg, sizeof msg);
        errors.push_back({cfg.file, rule.line, "rule " + rule.name, "user_agent",
                          std::string("bad regular expression: ") + msg});
        continue;
      }
      c->hasRe = true;
    }
    set.rules_.push_back(std::move(c));
  }
  // A set with errors is never installed: a bad reload keeps the old rules.
  if (errors.empty()) *out = std::move(set);
  return errors;
}

Decision RuleSet::decide(const conf::Config& cfg, const RequestFacts& facts,
                         const std::vector<SourceTraits>& traits) const {
  return explain(cfg, facts, traits, nullptr);
}

Decision RuleSet::explain(const conf::Config& cfg, const RequestFacts& facts,
                          const std::vector<SourceTraits>& traits,
                          std::vector<std::string>* lines) const {
  assert(rules_.size() == cfg.rules.size());
  assert(facts.mountIndex >= 0 && static_cast<size_t>(facts.mountIndex) < cfg.mounts.size());
  assert(traits.size() == cfg.mounts.size());
  const conf::Mount& mount = cfg.mounts[facts.mountIndex];

  Decision d;
  const conf::Rule* hit = nullptr;
  for (size_t i = 0; i < cfg.rules.size() && !hit; i++) {
    const conf::Rule& rule = cfg.rules[i];
    std::string why;
    Match m = matchRule(rule, rules_[i]->hasRe ? &rules_[i]->re : nullptr, cfg, facts,
                        lines ? &why : nullptr);
    if (lines)
      lines->push_back("rule " + rule.name + ": " +
                       (m == Match::Yes  ? std::string("matched")
                        : m == Match::No ? "no match: " + why
                                         : why));
    if (m == Match::No) continue;
    hit = &rule;
    d.needsSize = m == Match::NeedsSize;
  }

  std::string note;
  std::string from;
  if (hit) {
    d.rule = hit->name;
    d.delivery = resolve(hit->action, facts.route, traits[facts.mountIndex], &note);
    d.proxyUrl = hit->proxyUrl.empty() ? mount.proxyUrl : hit->proxyUrl;
    d.connections = hit->connections.value_or(mount.connections);
    d.cache = hit->cache.value_or(mount.cache);
    d.mediaPrefetch = !hit->mediaPrefetch.value_or(true) ? 0
                      : mount.mediaPrefetch > 0         ? mount.mediaPrefetch
                      : hit->mediaPrefetch            ? static_cast<int64_t>(kMediaIndexMaxBytes)
                                                        : 0;
    d.nextEpisode = hit->nextEpisode.value_or(mount.nextEpisode);
    from = "rule " + hit->name + " action " + conf::deliveryName(hit->action);
  } else {
    d.delivery = resolve(mount.delivery, facts.route, traits[facts.mountIndex], &note);
    d.proxyUrl = mount.proxyUrl;
    d.connections = mount.connections;
    d.cache = mount.cache;
    d.mediaPrefetch = mount.mediaPrefetch;
    d.nextEpisode = mount.nextEpisode;
    from = "mount " + mount.name + " delivery " + conf::deliveryName(mount.delivery);
  }
  if (d.delivery != conf::Delivery::ProxyUrl) {
    d.proxyUrl.clear();
  } else if (d.proxyUrl.empty()) {
    // The loader should refuse this; proxying is the safe answer if it did not.
    d.delivery = conf::Delivery::Proxy;
    note = "no proxy_url configured";
  }
  if (lines) {
    std::string line = std::string("decision: ") + conf::deliveryName(d.delivery) + " (" + from +
                       (note.empty() ? "" : "; " + note) + ")";
    if (d.delivery == conf::Delivery::ProxyUrl) line += " proxy_url=" + d.proxyUrl;
    line += " connections=" + std::to_string(d.connections) + " cache=" + (d.cache ? "on" : "off");
    if (d.needsSize) line += " needs_size=yes";
    lines->push_back(line);
  }
  return d;
}

}  // namespace slip::policy
