#include "src/browse.h"

#include <curl/curl.h>
#include <event2/thread.h>

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <deque>
#include <nlohmann/json.hpp>

#include "policy/policy.h"

namespace slip::browse {

EngineLoop::EngineLoop(const conf::Config& cfg) : cfg_(cfg) {}

EngineLoop::~EngineLoop() {
  engine_.reset();
  if (tick_) event_free(tick_);
  if (base_) {
    event_base_free(base_);
    curl_global_cleanup();
  }
}

bool EngineLoop::start(std::string* err) {
  // Info lines (account state, token helpers) would drown a command's output.
  conf::Log::setLevel(std::max(cfg_.server.logLevel, conf::LogLevel::Warn));
  evthread_use_pthreads();  // the engine's worker hands results to the loop
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    *err = "curl_global_init failed";
    return false;
  }
  base_ = event_base_new();
  tick_ = event_new(
      base_, -1, EV_PERSIST, [](evutil_socket_t, short, void*) {}, nullptr);
  timeval second{1, 0};
  event_add(tick_, &second);
  // The Config outlives the loop (the caller owns both): a non-owning pointer.
  engine_ = std::make_unique<proxy::Engine>(
      base_, std::shared_ptr<const conf::Config>(&cfg_, [](const conf::Config*) {}), nullptr, clock_);
  return engine_->init(err);
}

void EngineLoop::runUntil(const std::function<bool()>& done) {
  while (!done()) event_base_loop(base_, EVLOOP_ONCE);
}

WalkResult walk(EngineLoop& loop, int mount, const std::string& from, int parallel) {
  WalkResult out;
  std::deque<std::string> todo{from};
  int running = 0;
  std::function<void()> pump = [&] {
    while (running < parallel && !todo.empty()) {
      std::string folder = todo.front();
      todo.pop_front();
      running++;
      out.folders.push_back(folder);
      loop.engine().list(mount, "/" + folder, [&, folder](const proxy::ListResult& r) {
        running--;
        if (r.reason != policy::Reason::None) {
          out.errors.push_back((folder.empty() ? "/" : folder) + ": " +
                               policy::reasonText(r.reason) +
                               (r.detail.empty() ? "" : " (" + r.detail + ")"));
        } else {
          for (const proxy::DirEntry& e : *r.entries) {
            std::string p = folder.empty() ? e.name : folder + "/" + e.name;
            if (e.folder)
              todo.push_back(p);
            else
              out.files.push_back({p, e.size, e.mtimeMs});
          }
        }
        pump();  // may run synchronously (cached listings): bounded by the folder count
      });
    }
  };
  pump();
  loop.runUntil([&] { return running == 0 && todo.empty(); });
  std::sort(out.files.begin(), out.files.end(),
            [](const WalkFile& a, const WalkFile& b) { return a.path < b.path; });
  return out;
}

int mountOfPath(const conf::Config& cfg, const std::string& virtualPath, std::string* rest,
                std::string* err) {
  if (virtualPath.empty() || virtualPath[0] != '/') {
    *err = "expected a path like /movies/folder";
    return -1;
  }
  policy::PathResult pr = policy::normalizePath(policy::encodePath(virtualPath));
  if (pr.reason != policy::Reason::None) {
    *err = policy::reasonText(pr.reason);
    return -1;
  }
  policy::MountMatch mm = policy::matchMount(cfg.mounts, pr.path);
  if (mm.index < 0) {
    *err = "no mount serves " + pr.path;
    return -1;
  }
  *rest = mm.rest;
  return mm.index;
}

namespace {

std::string localTime(int64_t ms) {
  if (ms <= 0) return "-               ";
  time_t t = static_cast<time_t>(ms / 1000);
  tm l{};
  localtime_r(&t, &l);
  char buf[32];
  strftime(buf, sizeof buf, "%Y-%m-%d %H:%M", &l);
  return buf;
}

}  // namespace

int ls(const conf::Config& cfg, const std::vector<std::string>& args, bool json) {
  if (args.size() != 1) {
    fprintf(stderr, "slipstream ls: expected one path like /movies/folder\n");
    return 2;
  }
  std::string rest, err;
  int mount = mountOfPath(cfg, args[0], &rest, &err);
  if (mount < 0) {
    fprintf(stderr, "slipstream ls: %s\n", err.c_str());
    return 2;
  }
  EngineLoop loop(cfg);
  if (!loop.start(&err)) {
    fprintf(stderr, "slipstream ls: %s\n", err.c_str());
    return 1;
  }
  bool done = false;
  proxy::ListResult result;
  loop.engine().list(mount, rest, [&](const proxy::ListResult& r) {
    result = r;
    done = true;
  });
  loop.runUntil([&] { return done; });
  if (result.reason != policy::Reason::None) {
    fprintf(stderr, "slipstream ls: %s: %d %s%s\n", args[0].c_str(),
            policy::reasonStatus(result.reason), policy::reasonText(result.reason),
            result.detail.empty() ? "" : (" (" + result.detail + ")").c_str());
    return 1;
  }
  if (json) {
    nlohmann::json list = nlohmann::json::array();
    for (const proxy::DirEntry& e : *result.entries) {
      nlohmann::json j = {
          {"name", e.name}, {"folder", e.folder}, {"size", e.size}, {"mtime_ms", e.mtimeMs}};
      if (!e.etag.empty()) j["etag"] = e.etag;
      list.push_back(std::move(j));
    }
    nlohmann::json doc = {
        {"mount", cfg.mounts[mount].name}, {"path", rest.empty() ? "/" : rest}, {"entries", list}};
    printf("%s\n", doc.dump(1).c_str());
    return 0;
  }
  for (const proxy::DirEntry& e : *result.entries)
    printf("%s %14s  %s  %s%s\n", e.folder ? "d" : "-",
           e.folder ? "-" : std::to_string(e.size).c_str(), localTime(e.mtimeMs).c_str(),
           e.name.c_str(), e.folder ? "/" : "");
  return 0;
}

}  // namespace slip::browse
