// slipstream: command line and process wiring. Owns the event loop, the
// store, the engine and the server (the context object: no globals).
#include <curl/curl.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <signal.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "conf/conf.h"
#include "conf/loop.h"
#include "policy/policy.h"
#include "proxy/sources/aliyun.h"
#include "proxy/proxy.h"
#include "src/commands.h"
#include "src/server.h"
#include "store/store.h"

namespace slip {
namespace {

const char* kUsage =
    "usage: slipstream [run] -c FILE        start the gateway\n"
    "       slipstream check -c FILE        validate the configuration\n"
    "       slipstream cache stats -c FILE  objects, blocks and bytes in the cache\n"
    "       slipstream cache verify -c FILE check every stored block's checksum\n"
    "       slipstream explain -c FILE --path /d/MOUNT/PATH [--client IP] [--user-agent UA]\n"
    "                                       [--method GET|HEAD] [--size N]\n"
    "       slipstream sign -c FILE /MOUNT/PATH [--ttl DURATION]\n"
    "       slipstream --help | --help-config\n";

struct Args {
  std::string command = "run";
  std::string sub;
  std::string config;
  std::vector<std::string> positional;
  std::vector<std::pair<std::string, std::string>> flags;
};

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

std::optional<conf::Config> load(const std::string& file) {
  if (file.empty()) {
    fprintf(stderr, "slipstream: -c FILE is required\n%s", kUsage);
    return std::nullopt;
  }
  conf::LoadResult r = conf::loadFile(file);
  policy::RuleSet rules;
  if (r.config) {
    auto errs = policy::RuleSet::compile(*r.config, &rules);
    r.errors.insert(r.errors.end(), errs.begin(), errs.end());
  }
  if (!r.errors.empty()) {
    for (const auto& e : r.errors) fprintf(stderr, "%s\n", e.str().c_str());
    fprintf(stderr, "slipstream: %zu error%s in %s\n", r.errors.size(),
            r.errors.size() == 1 ? "" : "s", file.c_str());
    return std::nullopt;
  }
  return std::move(*r.config);
}

bool anyMountCaches(const conf::Config& cfg) {
  for (const auto& m : cfg.mounts)
    if (m.cache && m.source != conf::SourceType::Local) return true;
  for (const auto& r : cfg.rules)
    if (r.cache.value_or(false)) return true;
  return false;
}

struct Loop {
  event_base* base;
  Server* server;
  int64_t graceMs;
  bool stopping = false;
};

void onSignal(evutil_socket_t sig, short, void* arg) {
  auto* l = static_cast<Loop*>(arg);
  if (l->stopping) {
    conf::Log::write(conf::LogLevel::Warn, "signal_again", "signal=" + std::to_string(sig));
    event_base_loopexit(l->base, nullptr);
    return;
  }
  l->stopping = true;
  conf::Log::write(conf::LogLevel::Info, "stopping", "signal=" + std::to_string(sig));
  l->server->drain(l->graceMs, [l] { event_base_loopexit(l->base, nullptr); });
}

int run(const conf::Config& cfg) {
  conf::Log::setLevel(cfg.server.logLevel);
  signal(SIGPIPE, SIG_IGN);
  evthread_use_pthreads();  // the store's disk thread posts completions to the loop
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    fprintf(stderr, "slipstream: curl_global_init failed\n");
    return 1;
  }
  // The changelist folds the add/del pairs libevent's HTTP code makes around
  // every response into at most one epoll_ctl per descriptor per loop turn.
  event_config* ecfg = event_config_new();
  event_config_set_flag(ecfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
  event_base* base = event_base_new_with_config(ecfg);
  event_config_free(ecfg);
  int rc = 0;
  {
    RealClock clock;  // the one time source the engine and the store read
    std::unique_ptr<store::Store> st;
    if (anyMountCaches(cfg)) {
      std::string err;
      st = store::Store::open(cfg.cache, base, clock, &err);
      if (!st) {
        fprintf(stderr, "slipstream: cache: %s\n", err.c_str());
        return 1;
      }
    }
    policy::RuleSet rules;
    policy::RuleSet::compile(cfg, &rules);
    proxy::Engine engine(base, cfg, st.get(), clock);
    std::string err;
    if (!engine.init(&err)) {
      fprintf(stderr, "slipstream: %s\n", err.c_str());
      return 1;
    }
    Server server(base, cfg, rules, engine);
    if (!server.start(&err)) {
      fprintf(stderr, "slipstream: %s\n", err.c_str());
      return 1;
    }
    Loop loop{base, &server, cfg.server.shutdownGraceMs};
    EventPtr sigs[] = {EventPtr(evsignal_new(base, SIGTERM, onSignal, &loop)),
                       EventPtr(evsignal_new(base, SIGINT, onSignal, &loop))};
    for (EventPtr& e : sigs) event_add(e.get(), nullptr);
    conf::Log::write(conf::LogLevel::Info, "started",
                     "config=" + conf::logValue(cfg.file) +
                         " mounts=" + std::to_string(cfg.mounts.size()) +
                         " cache=" + (st ? conf::logValue(cfg.cache.dir) : std::string("off")));
    event_base_dispatch(base);
    engine.quiesce();
    conf::Log::write(conf::LogLevel::Info, "stopped", "active=" + std::to_string(server.activeRequests()));
  }
  event_base_free(base);
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
    if (!strcmp(argv[i], "--help-config-markdown")) {  // the README's reference
      fputs(conf::referenceMarkdown().c_str(), stdout);
      return 0;
    }
  }
  if (!parseArgs(argc, argv, &a, &err)) {
    fprintf(stderr, "slipstream: %s\n%s", err.c_str(), kUsage);
    return 2;
  }
  auto cfg = load(a.config);
  if (!cfg) return 2;
  if (a.command == "run") return run(*cfg);
  if (a.command == "check") {
    printf("%s: ok (%zu mounts, %zu rules)\n", a.config.c_str(), cfg->mounts.size(),
           cfg->rules.size());
    return 0;
  }
  if (a.command == "cache") return cmd::cache(*cfg, a.sub, a.positional);
  if (a.command == "explain") return cmd::explain(*cfg, a.flags);
  if (a.command == "sign") {
    RealClock clock;
    return cmd::sign(*cfg, a.positional, a.flags, clock);
  }
  fprintf(stderr, "slipstream: unknown command '%s'\n%s", a.command.c_str(), kUsage);
  return 2;
}
