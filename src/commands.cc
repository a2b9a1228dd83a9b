#include "src/commands.h"

#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <iostream>

#include "policy/policy.h"
#include "proxy/proxy.h"
#include "src/auth.h"
#include "proxy/proxy.h"
#include "store/store.h"

namespace slip::cmd {
namespace {

const std::string* flag(const Flags& f, const std::string& name) {
  for (const auto& [k, v] : f)
    if (k == name) return &v;
  return nullptr;
}

/// One line from stdin, without echo when it is a terminal.
bool readSecretLine(const char* prompt, std::string* out) {
  bool tty = isatty(STDIN_FILENO);
  termios old{};
  if (tty) {
    fprintf(stderr, "%s", prompt);
    tcgetattr(STDIN_FILENO, &old);
    termios quiet = old;
    quiet.c_lflag &= ~static_cast<tcflag_t>(ECHO);
    tcsetattr(STDIN_FILENO, TCSANOW, &quiet);
  }
  bool ok = static_cast<bool>(std::getline(std::cin, *out));
  if (tty) {
    tcsetattr(STDIN_FILENO, TCSANOW, &old);
    fprintf(stderr, "\n");
  }
  if (!out->empty() && out->back() == '\r') out->pop_back();
  return ok;
}

}  // namespace

int passwd() {
  std::string pw, again, err;
  if (!readSecretLine("Password: ", &pw) || pw.empty()) {
    fprintf(stderr, "slipstream passwd: no password on stdin\n");
    return 2;
  }
  if (isatty(STDIN_FILENO) && (!readSecretLine("Again: ", &again) || again != pw)) {
    fprintf(stderr, "slipstream passwd: the passwords differ\n");
    return 2;
  }
  auto hash = auth::hashPassword(pw, &err);
  if (!hash) {
    fprintf(stderr, "slipstream passwd: %s\n", err.c_str());
    return 1;
  }
  printf("%s\n", hash->c_str());
  return 0;
}

std::string defaultBaseUrl(const conf::Config& cfg) {
  if (cfg.server.listen.empty()) return "";
  const auto& l = cfg.server.listen.front();
  std::string host = l.host == "0.0.0.0" ? "127.0.0.1" : l.host == "::" ? "[::1]" : l.host;
  if (host.find(':') != std::string::npos && host.front() != '[') host = "[" + host + "]";
  return "http://" + host + ":" + std::to_string(l.port);
}

std::string gatewayUrl(const conf::Config& cfg, std::string base, const std::string& virtualPath,
                       int64_t expiry) {
  while (!base.empty() && base.back() == '/') base.pop_back();
  std::string prefix = cfg.server.role == conf::Role::Edge ? "" : "/d";
  std::string url = base + prefix + policy::encodePath(virtualPath);
  if (!cfg.server.signSecret.empty())
    url += "?sign=" + policy::encodeQueryValue(policy::sign(cfg.server.signSecret, virtualPath, expiry));
  return url;
}

int cache(const conf::Config& cfg, const std::string& sub, const std::vector<std::string>& args) {
  bool verbose = false, repair = false;
  for (const std::string& a : args) {
    if ((a == "-v" || a == "--verbose") && sub == "stats") {
      verbose = true;
    } else if (a == "--repair" && sub == "verify") {
      repair = true;
    } else {
      fprintf(stderr, "slipstream cache %s: unexpected argument '%s'\n", sub.c_str(), a.c_str());
      return 2;
    }
  }
  if (sub == "stats") return store::Store::printStats(cfg.cache, stdout, verbose);
  if (sub == "verify") return store::Store::verify(cfg.cache, stdout, repair);
  if (sub == "reset") return store::Store::reset(cfg.cache, stdout);
  fprintf(stderr, "slipstream cache: expected 'stats', 'verify' or 'reset'\n");
  return 2;
}

bool cacheInUse(const conf::Config& cfg) {
  for (const auto& m : cfg.mounts)
    if (m.cache && m.source != conf::SourceType::Local) return true;
  for (const auto& r : cfg.rules)
    if (r.cache.value_or(false)) return true;
  return false;
}

namespace {

// Why this user could not use `dir` as a writable directory, or "" if it
// can. An existing directory is tried for real (a file created and removed);
// a missing one must be creatable below its nearest existing parent.
std::string dirProblem(const std::string& dir) {
  struct stat st {};
  if (stat(dir.c_str(), &st) == 0) {
    if (!S_ISDIR(st.st_mode)) return dir + " exists and is not a directory";
    std::string probe = dir + "/.slipstream-check-XXXXXX";
    int fd = mkstemp(probe.data());
    if (fd < 0)
      return "cannot write in " + dir + " as uid " + std::to_string(geteuid()) + ": " +
             strerror(errno);
    close(fd);
    unlink(probe.c_str());
    return "";
  }
  if (errno != ENOENT) return "cannot use " + dir + ": " + strerror(errno);
  std::string parent = dir;
  while (stat(parent.c_str(), &st) != 0) {
    if (errno != ENOENT) return "cannot use " + parent + ": " + strerror(errno);
    size_t slash = parent.find_last_of('/');
    if (slash == std::string::npos) {
      parent = ".";
      break;
    }
    parent = slash == 0 ? "/" : parent.substr(0, slash);
  }
  if (!S_ISDIR(st.st_mode)) return "cannot create " + dir + ": " + parent + " is not a directory";
  if (access(parent.c_str(), W_OK | X_OK) != 0)
    return "cannot create " + dir + " as uid " + std::to_string(geteuid()) + ": " + parent + ": " +
           strerror(errno);
  return "";
}

}  // namespace

int check(const conf::Config& cfg) {
  std::vector<std::string> errors;
  if (cacheInUse(cfg)) {
    if (std::string p = dirProblem(cfg.cache.dir); !p.empty()) errors.push_back("[cache] dir: " + p);
    if (auto warn = store::Store::minFreeProblem(cfg.cache))
      fprintf(stderr, "%s: warning: %s\n", cfg.file.c_str(), warn->c_str());
  }
  if (!cfg.accounts.empty()) {
    if (std::string p = dirProblem(cfg.server.stateDir); !p.empty())
      errors.push_back("[server] state_dir: " + p);
  }
  for (const std::string& e : errors) fprintf(stderr, "%s: %s\n", cfg.file.c_str(), e.c_str());
  // CA files are read as the gateway will read them (PEM certificates).
  std::vector<std::string> caProblems = proxy::caFileProblems(cfg);
  for (const std::string& e : caProblems) fprintf(stderr, "%s\n", e.c_str());
  errors.insert(errors.end(), caProblems.begin(), caProblems.end());
  if (!errors.empty()) {
    fprintf(stderr, "slipstream: %zu error%s in %s\n", errors.size(), errors.size() == 1 ? "" : "s",
            cfg.file.c_str());
    return 2;
  }
  printf("%s: ok (%zu mounts, %zu rules)\n", cfg.file.c_str(), cfg.mounts.size(), cfg.rules.size());
  return 0;
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
  } else if (virt.starts_with("/dav/")) {
    f.route = policy::Route::Dav;
    virt = virt.substr(4);
  } else {
    printf("path %s: not a /d/, /p/ or /dav/ route\n", pr.path.c_str());
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
  const std::string* base = flag(flags, "base");
  printf("%s\n", gatewayUrl(cfg, base ? *base : defaultBaseUrl(cfg), pr.path, expiry).c_str());
  return 0;
}

}  // namespace slip::cmd
