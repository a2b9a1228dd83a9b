// SIGHUP: the configuration reload (src/DESIGN.md, "Reload").
//
//  reloadConfig ─▶ load + compile rules + check TLS files ── errors ─▶ log each, keep running (TLS re-read)
//        │ valid
//        ▼
//  keepRestartValues (one log line) ─▶ Engine::prepare (mounts/accounts reused when unchanged)
//        ─▶ reload: open new listeners (a failure changes nothing), TLS, then switch
//        ─▶ Engine::install ─▶ log `reloaded` with what changed
//
// Requests keep the Generation they arrived under (Exchange::gen), whose
// Setup keeps their mounts' sources and connection pools: a reload changes
// nothing under a transfer that runs.
#include <algorithm>

#include "conf/clock.h"
#include "src/commands.h"
#include "src/front.h"
#include "src/tls.h"

namespace slip {
namespace {

bool sameAddress(const conf::ListenAddr& a, const conf::ListenAddr& b) {
  return a.host == b.host && a.port == b.port && a.tls == b.tls;
}

std::string joined(const std::vector<std::string>& v) {
  std::string s;
  for (const std::string& x : v) s += (s.empty() ? "" : ",") + x;
  return s.empty() ? "-" : s;
}

}  // namespace

std::unique_ptr<Listener> Server::Impl::makeListener(const conf::ListenAddr& l, std::string* err) {
  Listener::Options o;
  o.addr = l;
  o.reusePort = frontThreads() > 1 && !l.tls;  // the workers bind the same plain addresses
  auto lis = std::make_unique<Listener>(
      base, o, [this](int fd, const sockaddr_storage& peer, Listener& from) { onAccept(fd, peer, from); });
  if (!lis->open(err)) return nullptr;
  conf::Log::write(conf::LogLevel::Info, "listening", "address=" + lis->name() + (l.tls ? " tls=on" : ""));
  return lis;
}

bool Server::Impl::openListener(const conf::ListenAddr& l, std::string* err) {
  auto lis = makeListener(l, err);
  if (!lis) return false;
  listeners.push_back(std::move(lis));
  return true;
}

// Links a source returns that point back here are refused (issue 9 #12).
void Server::Impl::tellEngineSelf() {
  std::vector<std::string> self;
  for (const auto& l : listeners) self.push_back(l->name());
  engine.setSelfAddresses(self);
}

bool Server::Impl::reload(std::shared_ptr<const conf::Config> c, policy::RuleSet r, proxy::SetupPtr setup,
                          std::string* err) {
  const conf::Server& next = c->server;
  // New addresses first: a port that cannot be bound fails the reload
  // before anything changed.
  std::vector<std::unique_ptr<Listener>> opened;
  for (const conf::ListenAddr& l : next.listen) {
    bool have = std::any_of(listeners.begin(), listeners.end(),
                            [&l](const auto& lis) { return sameAddress(lis->addr(), l); });
    if (have) continue;
    auto lis = makeListener(l, err);
    if (!lis) return false;
    opened.push_back(std::move(lis));
  }
  if (next.anyTls() && !tls.load(*c, clock.wallSeconds(), err)) return false;  // then the old context stays
  if (next.anyTls()) {
    tlsReloads++;
    conf::Log::write(conf::LogLevel::Info, "tls_reloaded",
                     tls.context()->describe() + " generation=" + std::to_string(tls.generation()));
  }
  // Switch: from here on nothing fails.
  for (auto it = listeners.begin(); it != listeners.end();) {
    bool keep = std::any_of(next.listen.begin(), next.listen.end(),
                            [&it](const conf::ListenAddr& l) { return sameAddress((*it)->addr(), l); });
    if (keep) {
      ++it;
      continue;
    }
    conf::Log::write(conf::LogLevel::Info, "listening_stopped", "address=" + (*it)->name());
    (*it)->close();  // open connections of it go on
    it = listeners.erase(it);
  }
  for (auto& lis : opened) listeners.push_back(std::move(lis));
  if (workers) workers->setListeners(plainAddrs());
  tellEngineSelf();
  std::string logErr;
  if (!accessLog.reopen(next.accessLog, &logErr))
    conf::Log::write(conf::LogLevel::Error, "access_log_reopen_failed",
                     "error=" + conf::logValue(logErr) + " action=kept_the_old_file");
  conf::Log::setLevel(next.logLevel);
  applyConnLimits(next);
  authenticator.reset(c);
  auto g = std::make_shared<Generation>();
  g->cfg = std::move(c);
  g->rules = std::move(r);
  g->setup = std::move(setup);
  g->loadedWallMs = clock.wallMs();
  gen = std::move(g);
  shared.publish(gen);
  return true;
}

void Server::Impl::reloadConfig() {
  ReloadOutcome out;
  out.atWallMs = clock.wallMs();
  const std::string file = cfg().file;
  conf::LoadResult r = conf::loadFile(file);
  policy::RuleSet rules;
  if (r.config) {
    auto errs = policy::RuleSet::compile(*r.config, &rules);
    r.errors.insert(r.errors.end(), errs.begin(), errs.end());
    if (auto e = tls::checkFiles(*r.config, clock.wallSeconds())) r.errors.push_back(*e);
  }
  auto fail = [this, &out](std::string why) {
    reloadFailures++;
    conf::Log::write(conf::LogLevel::Error, "reload_failed",
                     "config=" + conf::logValue(cfg().file) + " " + why + " action=kept_running_configuration");
    reloadTls();  // a renewed certificate is still taken (the running configuration's files)
    out.ok = false;
    lastReload = std::move(out);
  };
  if (!r.errors.empty()) {
    for (const conf::Error& e : r.errors) {
      out.errors.push_back(e.str());
      conf::Log::write(conf::LogLevel::Error, "config_error", "error=" + conf::logValue(e.str()));
    }
    return fail("errors=" + std::to_string(r.errors.size()));
  }
  auto next = std::make_shared<conf::Config>(std::move(*r.config));
  out.needsRestart = conf::keepRestartValues(cfg(), next.get());
  if (!out.needsRestart.empty())
    conf::Log::write(conf::LogLevel::Warn, "reload_needs_restart",
                     "keys=" + conf::logValue(joined(out.needsRestart)) +
                         " action=kept_running_values hint=\"restart slipstream to apply these keys\"");
  if (!store && cmd::cacheInUse(*next))
    conf::Log::write(conf::LogLevel::Warn, "reload_needs_restart",
                     "keys=\"[mount] cache\" action=served_uncached hint=\"the gateway started without a cache "
                     "(no mount cached): restart slipstream to open [cache] dir\"");
  std::string err;
  // CA files are read again (a renewed private CA); one that fails keeps
  // what it had, and the reload goes on.
  if (!engine.reloadTrust(&err))
    conf::Log::write(conf::LogLevel::Error, "ca_reload_failed",
                     "error=" + conf::logValue(err) + " action=kept_the_old_certificates");
  err.clear();
  proxy::SetupPtr setup = engine.prepare(next, &err);
  if (!setup || !reload(next, std::move(rules), setup, &err)) {
    out.errors.push_back(err);
    return fail("error=" + conf::logValue(err));
  }
  // What changed, for the log: mounts by name, and whether their settings did.
  const proxy::Setup& was = *engine.setup();
  std::vector<std::string> added, removed, changed;
  for (size_t i = 0; i < next->mounts.size(); i++) {
    auto it = std::find_if(was.cfg->mounts.begin(), was.cfg->mounts.end(),
                           [&](const conf::Mount& m) { return m.name == next->mounts[i].name; });
    if (it == was.cfg->mounts.end()) added.push_back(next->mounts[i].name);
    else if (was.mounts[static_cast<size_t>(it - was.cfg->mounts.begin())] != setup->mounts[i])
      changed.push_back(next->mounts[i].name);
  }
  for (const conf::Mount& m : was.cfg->mounts)
    if (std::none_of(next->mounts.begin(), next->mounts.end(), [&m](const conf::Mount& n) { return n.name == m.name; }))
      removed.push_back(m.name);
  engine.install(setup);
  reloads++;
  out.ok = true;
  lastReload = std::move(out);
  conf::Log::write(conf::LogLevel::Info, "reloaded",
                   "config=" + conf::logValue(file) + " generation=" + std::to_string(setup->generation) +
                       " mounts=" + std::to_string(next->mounts.size()) + " added=" + conf::logValue(joined(added)) +
                       " removed=" + conf::logValue(joined(removed)) + " changed=" + conf::logValue(joined(changed)) +
                       " rules=" + std::to_string(next->rules.size()) + " active=" + std::to_string(active.size()));
}

}  // namespace slip
