// slipstream: command line and process wiring. Owns the event loop, the
// store, the engine and the server (the context object: no globals).
#include <curl/curl.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <signal.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <memory>
#include <string>
#include <vector>

#include "conf/clock.h"
#include "conf/conf.h"
#include "conf/loop.h"
#include "policy/policy.h"
#include "proxy/sources/aliyun.h"
#include "proxy/proxy.h"
#include "src/browse.h"
#include "src/admin_client.h"
#include "src/commands.h"
#include "src/server.h"
#include "src/status_page.h"
#include "src/tls.h"
#include "src/version.h"
#include "store/store.h"

namespace slip {
namespace {

const char* kUsage =
    "usage: slipstream [run] -c FILE        start the gateway\n"
    "       slipstream check -c FILE        validate the configuration\n"
    "       slipstream cache stats -c FILE  objects, blocks and bytes in the cache\n"
    "       slipstream cache verify -c FILE [--repair]\n"
    "                                       check every stored block (and unlist bad ones)\n"
    "       slipstream cache reset -c FILE  remove the index and data (not while a gateway runs)\n"
    "       slipstream explain -c FILE --path /d/MOUNT/PATH [--client IP] [--user-agent UA]\n"
    "                                       [--method GET|HEAD] [--size N]\n"
    "       slipstream sign -c FILE /MOUNT/PATH [--ttl DURATION]\n"
    "       slipstream ls -c FILE /MOUNT/PATH [--json]\n"
    "                                       list a folder through the mount's source\n"
    "       slipstream strm -c FILE --mount NAME --out DIR [--ext mkv,mp4,...] [--prune]\n"
    "                       [--sign-ttl 0|DURATION] [--base-url URL] [--sidecar-max SIZE]\n"
    "                                       export a mount as .strm files for media servers\n"
    "       slipstream passwd               read a password on stdin, print its hash for [user NAME]\n"
    "       slipstream reload -c FILE           make the running gateway re-read FILE (SIGHUP)\n"
    "       slipstream status -c FILE           what the running gateway is doing\n"
    "       slipstream prefetch -c FILE /MOUNT/PATH [--wait yes|no]\n"
    "                                       fill the cache with a file, with progress\n"
    "       slipstream purge -c FILE /MOUNT/PATH | --prefix /MOUNT/DIR\n"
    "                                       drop a file or a folder from the cache\n"
    "       slipstream status-page              print the status page's HTML\n"
    "       slipstream --help | --help-config | --version\n";

struct Args {
  std::string command = "run";
  std::string sub;
  std::string config;
  std::vector<std::string> positional;
  std::vector<std::pair<std::string, std::string>> flags;
  std::vector<std::string> switches;  // flags without a value (--json, --prune)
  bool has(const char* s) const { return std::find(switches.begin(), switches.end(), s) != switches.end(); }
};

bool isSwitch(const std::string& name) { return name == "json" || name == "prune"; }

bool parseArgs(int argc, char** argv, Args* a, std::string* err) {
  int i = 1;
  if (i < argc && argv[i][0] != '-') {
    a->command = argv[i++];
    if (a->command == "cache" && i < argc && argv[i][0] != '-') a->sub = argv[i++];
  }
  for (; i < argc; i++) {
    std::string s = argv[i];
    if (s == "-c" || s == "--config") {
      if (++i >= argc) {
        *err = s + " needs a file";
        return false;
      }
      a->config = argv[i];
    } else if (s.starts_with("--") && isSwitch(s.substr(2))) {
      a->switches.push_back(s.substr(2));
    } else if (s == "--repair" || s == "--verbose") {  // switches without a value
      a->positional.push_back(s);
    } else if (s.starts_with("--") && s.size() > 2) {
      if (++i >= argc) {
        *err = s + " needs a value";
        return false;
      }
      a->flags.emplace_back(s.substr(2), argv[i]);
    } else {
      a->positional.push_back(s);
    }
  }
  return true;
}

std::optional<conf::Config> load(const std::string& file, const Clock& clock) {
  if (file.empty()) {
    fprintf(stderr, "slipstream: -c FILE is required\n%s", kUsage);
    return std::nullopt;
  }
  conf::LoadResult r = conf::loadFile(file);
  policy::RuleSet rules;
  if (r.config) {
    auto errs = policy::RuleSet::compile(*r.config, &rules);
    r.errors.insert(r.errors.end(), errs.begin(), errs.end());
    if (auto e = tls::checkFiles(*r.config, clock.wallSeconds()))
      r.errors.push_back(*e);
  }
  if (!r.errors.empty()) {
    for (const auto& e : r.errors) fprintf(stderr, "%s\n", e.str().c_str());
    fprintf(stderr, "slipstream: %zu error%s in %s\n", r.errors.size(),
            r.errors.size() == 1 ? "" : "s", file.c_str());
    return std::nullopt;
  }
  return std::move(*r.config);
}

struct Loop {
  event_base* base;
  Server* server;
  bool stopping = false;
};

/// SIGHUP (`systemctl reload`, `slipstream reload`, logrotate): the
/// configuration file is read again (Server::reloadConfig: a broken file is
/// logged and changes nothing; running transfers finish on the settings
/// they started with), TLS certificates and the access log reopened.
void onReload(evutil_socket_t, short, void* arg) {
  auto* l = static_cast<Loop*>(arg);
  if (l->stopping) return;
  conf::Log::write(conf::LogLevel::Info, "reloading", "signal=SIGHUP");
  l->server->reloadConfig();
}

void onSignal(evutil_socket_t sig, short, void* arg) {
  auto* l = static_cast<Loop*>(arg);
  if (l->stopping) {
    conf::Log::write(conf::LogLevel::Warn, "signal_again", "signal=" + std::to_string(sig));
    event_base_loopexit(l->base, nullptr);
    return;
  }
  l->stopping = true;
  conf::Log::write(conf::LogLevel::Info, "stopping", "signal=" + std::to_string(sig));
  l->server->drain(l->server->shutdownGraceMs(), [l] { event_base_loopexit(l->base, nullptr); });
}

// SIGHUP must not kill the gateway (its default action) when systemd's
// ExecReload sends it.
int run(std::shared_ptr<const conf::Config> cfgPtr, const Clock& clock) {
  const conf::Config& cfg = *cfgPtr;  // the configuration at start (a reload makes new ones)
  conf::Log::setLevel(cfg.server.logLevel);
  signal(SIGPIPE, SIG_IGN);
  evthread_use_pthreads();  // the store's disk thread posts completions to the loop
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    fprintf(stderr, "slipstream: curl_global_init failed\n");
    return 1;
  }
  // The changelist folds the add/del pairs a bufferevent makes around
  // every response into at most one epoll_ctl per descriptor per loop turn.
  event_config* ecfg = event_config_new();
  event_config_set_flag(ecfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
  event_base* base = event_base_new_with_config(ecfg);
  event_config_free(ecfg);
  // Freed last, after the store, engine and server, on every way out.
  std::unique_ptr<event_base, decltype(&event_base_free)> baseOwner(base, &event_base_free);
  int rc = 0;
  {
    std::unique_ptr<store::Store> st;
    if (cmd::cacheInUse(cfg)) {
      std::string err;
      st = store::Store::open(cfg.cache, base, clock, &err);
      if (!st) {
        fprintf(stderr, "slipstream: cache: %s\n", err.c_str());
        curl_global_cleanup();
        return 1;
      }
    }
    policy::RuleSet rules;
    policy::RuleSet::compile(cfg, &rules);
    proxy::Engine engine(base, cfgPtr, st.get(), clock);
    std::string err;
    if (!engine.init(&err)) {
      fprintf(stderr, "slipstream: %s\n", err.c_str());
      return 1;
    }
    Server server(base, cfgPtr, std::move(rules), engine, st.get(), clock);
    if (!server.start(&err)) {
      fprintf(stderr, "slipstream: %s\n", err.c_str());
      return 1;
    }
    Loop loop{base, &server};
    EventPtr sigs[] = {EventPtr(evsignal_new(base, SIGTERM, onSignal, &loop)),
                       EventPtr(evsignal_new(base, SIGINT, onSignal, &loop)),
                       EventPtr(evsignal_new(base, SIGHUP, onReload, &loop))};
    for (EventPtr& e : sigs) event_add(e.get(), nullptr);
    conf::Log::write(conf::LogLevel::Info, "started",
                     "config=" + conf::logValue(cfg.file) +
                         " mounts=" + std::to_string(cfg.mounts.size()) +
                         " cache=" + (st ? conf::logValue(cfg.cache.dir) : std::string("off")));
    event_base_dispatch(base);
    engine.quiesce();
    conf::Log::write(conf::LogLevel::Info, "stopped", "active=" + std::to_string(server.activeRequests()));
  }
  baseOwner.reset();
  curl_global_cleanup();
  return rc;
}

}  // namespace
}  // namespace slip

int main(int argc, char** argv) {
  using namespace slip;
  Args a;
  std::string err;
  // The token-exchange helper the gateway spawns (proxy/aliyun_token.cc).
  if (argc == 2 && !strcmp(argv[1], "token-exchange")) {
    RealClock clock;
    return proxy::tokenExchangeMain(clock);
  }
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      fputs(kUsage, stdout);
      return 0;
    }
    if (!strcmp(argv[i], "--help-config")) {
      fputs(conf::helpText().c_str(), stdout);
      return 0;
    }
    if (!strcmp(argv[i], "--version")) {
      printf("slipstream %s\n", version());
      return 0;
    }
    if (!strcmp(argv[i], "--help-config-markdown")) {  // the README's reference
      fputs(conf::referenceMarkdown().c_str(), stdout);
      return 0;
    }
  }
  if (argc == 2 && !strcmp(argv[1], "status-page")) {  // for tests and for a look offline
    fwrite(statusPage().data(), 1, statusPage().size(), stdout);
    return 0;
  }
  if (!parseArgs(argc, argv, &a, &err)) {
    fprintf(stderr, "slipstream: %s\n%s", err.c_str(), kUsage);
    return 2;
  }
  if (a.command == "passwd") return cmd::passwd();  // needs no configuration
  RealClock clock;  // the one time source: the engine, the store, the front end, the commands
  auto cfg = load(a.config, clock);
  if (!cfg) return 2;
  if (a.command == "run") return run(std::make_shared<const conf::Config>(std::move(*cfg)), clock);
  if (a.command == "reload") {  // the file is valid (load() checked it): signal the gateway
    curl_global_init(CURL_GLOBAL_DEFAULT);
    int rc = cmd::reload(*cfg, a.flags);
    curl_global_cleanup();
    return rc;
  }
  if (a.command == "check") return cmd::check(*cfg);
  if (a.command == "cache") return cmd::cache(*cfg, a.sub, a.positional);
  if (a.command == "explain") return cmd::explain(*cfg, a.flags);
  if (a.command == "sign") return cmd::sign(*cfg, a.positional, a.flags, clock);
  if (a.command == "ls") return browse::ls(*cfg, a.positional, a.has("json"));
  if (a.command == "strm") return cmd::strm(*cfg, a.flags, a.has("prune"), clock);
  if (a.command == "status" || a.command == "prefetch" || a.command == "purge") {
    curl_global_init(CURL_GLOBAL_DEFAULT);
    int rc = a.command == "status"     ? cmd::status(*cfg, a.flags)
             : a.command == "prefetch" ? cmd::prefetch(*cfg, a.positional, a.flags)
                                       : cmd::purge(*cfg, a.positional, a.flags);
    curl_global_cleanup();
    return rc;
  }
  fprintf(stderr, "slipstream: unknown command '%s'\n%s", a.command.c_str(), kUsage);
  return 2;
}
