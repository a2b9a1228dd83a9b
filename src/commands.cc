#include "src/commands.h"

#include <cstdio>
#include <ctime>

#include "policy/policy.h"
#include "proxy/proxy.h"
#include "store/store.h"

namespace slip::cmd {
namespace {

const std::string* flag(const Flags& f, const std::string& name) {
  for (const auto& [k, v] : f)
    if (k == name) return &v;
  return nullptr;
}

}  // namespace

int cache(const conf::Config& cfg, const std::string& sub, const std::vector<std::string>& args) {
  bool verbose = !args.empty() && (args[0] == "-v" || args[0] == "--verbose");
  if (sub == "stats") return store::Store::printStats(cfg.cache, stdout, verbose);
  if (sub == "verify") return store::Store::verify(cfg.cache, stdout);
  fprintf(stderr, "slipstream cache: expected 'stats' or 'verify'\n");
  return 2;
}

int explain(const conf::Config& cfg, const Flags& flags) {
  const std::string* path = flag(flags, "path");
  if (!path) {
    fprintf(stderr, "slipstream explain: --path /d/MOUNT/PATH is required\n");
    return 2;
  }
  std::string_view raw, query;
  policy::splitTarget(*path, &raw, &query);
  policy::PathResult pr = policy::normalizePath(raw);
  if (pr.reason != policy::Reason::None) {
    printf("path %s: %d %s\n", path->c_str(), policy::reasonStatus(pr.reason),
           policy::reasonText(pr.reason));
    return 1;
  }
  policy::RequestFacts f;
  std::string virt = pr.path;
  if (cfg.server.role == conf::Role::Edge) {
    f.route = policy::Route::Edge;
  } else if (virt.starts_with("/d/")) {
    f.route = policy::Route::Download;
    virt = virt.substr(2);
  } else if (virt.starts_with("/p/")) {
    f.route = policy::Route::Proxy;
    virt = virt.substr(2);
  } else {
    printf("path %s: not a /d/ or /p/ route\n", pr.path.c_str());
    return 1;
  }
  policy::MountMatch mm = policy::matchMount(cfg.mounts, virt);
  if (mm.index < 0) {
    printf("path %s: no mount serves it (404)\n", virt.c_str());
    return 1;
  }
  f.path = virt;
  f.mountIndex = mm.index;
  f.method = "GET";
  if (auto* m = flag(flags, "method")) f.method = *m;
  if (auto* c = flag(flags, "client")) f.client = *c;
  else f.client = "127.0.0.1";
  if (auto* ua = flag(flags, "user-agent")) f.userAgent = *ua;
  if (auto* s = flag(flags, "size")) {
    auto n = conf::parseSize(*s);
    if (!n) {
      fprintf(stderr, "slipstream explain: bad --size %s\n", s->c_str());
      return 2;
    }
    f.size = static_cast<uint64_t>(*n);
  }
  std::vector<policy::SourceTraits> traits;
  for (const auto& m : cfg.mounts) traits.push_back(proxy::sourceTraits(m));
  policy::RuleSet rules;
  policy::RuleSet::compile(cfg, &rules);
  std::vector<std::string> lines;
  policy::Decision d = rules.explain(cfg, f, traits, &lines);
  printf("request: %s %s client=%s user-agent=\"%s\"%s\n", f.method.c_str(), pr.path.c_str(),
         f.client.c_str(), f.userAgent.c_str(),
         f.size ? (" size=" + std::to_string(*f.size)).c_str() : "");
  printf("mount: %s (prefix %s, source %s), path in mount: %s\n", cfg.mounts[mm.index].name.c_str(),
         cfg.mounts[mm.index].prefix.c_str(), conf::sourceTypeName(cfg.mounts[mm.index].source),
         mm.rest.c_str());
  for (const auto& l : lines) printf("%s\n", l.c_str());
  if (d.needsSize) printf("note: the gateway probes the file's size before deciding; pass --size to see the outcome\n");
  return 0;
}

int sign(const conf::Config& cfg, const std::vector<std::string>& args, const Flags& flags,
         const Clock& clock) {
  if (args.size() != 1 || args[0].empty() || args[0][0] != '/') {
    fprintf(stderr, "slipstream sign: expected one path like /movies/a.mkv\n");
    return 2;
  }
  if (cfg.server.signSecret.empty()) {
    fprintf(stderr, "slipstream sign: [server] sign_secret is not set\n");
    return 2;
  }
  policy::PathResult pr = policy::normalizePath(policy::encodePath(args[0]));
  if (pr.reason != policy::Reason::None) {
    fprintf(stderr, "slipstream sign: %s\n", policy::reasonText(pr.reason));
    return 2;
  }
  int64_t ttlMs = cfg.server.signTtlMs;
  if (auto* t = flag(flags, "ttl")) {
    auto d = conf::parseDuration(*t);
    if (!d) {
      fprintf(stderr, "slipstream sign: bad --ttl %s\n", t->c_str());
      return 2;
    }
    ttlMs = *d;
  }
  int64_t expiry = ttlMs > 0 ? clock.wallSeconds() + (ttlMs + 999) / 1000 : 0;
  std::string s = policy::sign(cfg.server.signSecret, pr.path, expiry);
  std::string base;
  if (auto* b = flag(flags, "base")) base = *b;
  else if (!cfg.server.listen.empty()) {
    const auto& l = cfg.server.listen.front();
    std::string host = l.host == "0.0.0.0" ? "127.0.0.1" : l.host == "::" ? "[::1]" : l.host;
    if (host.find(':') != std::string::npos && host.front() != '[') host = "[" + host + "]";
    base = "http://" + host + ":" + std::to_string(l.port);
  }
  std::string prefix = cfg.server.role == conf::Role::Edge ? "" : "/d";
  printf("%s%s%s?sign=%s\n", base.c_str(), prefix.c_str(), policy::encodePath(pr.path).c_str(),
         policy::encodeQueryValue(s).c_str());
  return 0;
}

}  // namespace slip::cmd
