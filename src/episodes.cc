#include "src/episodes.h"

#include <algorithm>

#include "conf/clock.h"
#include "src/front.h"

namespace slip {
namespace {

using State = proxy::Prefetch::State;

bool ended(State s) { return s == State::Done || s == State::Failed || s == State::Cancelled; }

std::string key(const std::string& mount, const std::string& rest) { return mount + "\n" + rest; }

/// "/a/b.mkv" → "/a"; "/b.mkv" → "/".
std::string folderOf(const std::string& rest) {
  size_t slash = rest.rfind('/');
  return slash == std::string::npos || slash == 0 ? "/" : rest.substr(0, slash);
}

std::string join(const std::string& folder, const std::string& name) {
  return folder == "/" ? "/" + name : folder + "/" + name;
}

}  // namespace

void EpisodeWarmer::check(Exchange& ex) {
  if (ex.nextEpisodeShare <= 0 || ex.episodeChecked || !ex.gen) return;
  uint64_t size = ex.objectSize();
  uint64_t written = ex.bytesWritten();
  if (size == 0 || written == 0) return;
  const uint64_t mark = (size / 100) * static_cast<uint64_t>(ex.nextEpisodeShare) +
                        (size % 100) * static_cast<uint64_t>(ex.nextEpisodeShare) / 100;
  const uint64_t begin = ex.rangeBegin(), pos = begin + written;
  // It played across the mark, or it began past it and went on playing (a
  // seek forward; a player's look at the index near the end is not enough).
  if (pos < mark || (begin >= mark && written < kPastMarkBytes)) return;
  ex.episodeChecked = true;

  const conf::Mount& m = ex.gen->cfg->mounts[static_cast<size_t>(ex.mount())];
  const std::string k = key(m.name, ex.mountPath());
  const int64_t now = clock_.monoMs();
  auto t = triggered_.find(k);
  if (t != triggered_.end() && now - t->second < kKeepMs)
    return;  // another response of it did already
  triggered_[k] = now;

  Target target{ex.gen, ex.mount(), folderOf(ex.mountPath()),
                std::string(policy::baseName(ex.mountPath()))};
  std::weak_ptr<bool> alive = life_;
  engine_.list(ex.gen->setup, ex.mount(), target.folder,
               [this, alive, target](const proxy::ListResult& res) {
                 if (alive.expired()) return;
                 listed(target, res);
               });
}

void EpisodeWarmer::listed(const Target& t, const proxy::ListResult& res) {
  const conf::Mount& m = t.gen->cfg->mounts[static_cast<size_t>(t.mount)];
  const std::string from =
      m.prefix == "/" ? join(t.folder, t.name) : m.prefix + join(t.folder, t.name);
  if (res.reason != policy::Reason::None || !res.entries) {
    counters_.skipped++;
    conf::Log::write(conf::LogLevel::Info, "next_episode_skip",
                     "from=" + conf::logValue(from) + " why=listing reason=" +
                         policy::reasonCode(res.reason) + " detail=" + conf::logValue(res.detail));
    return;
  }
  std::vector<std::string> names;
  std::vector<uint64_t> sizes;
  for (const proxy::DirEntry& e : *res.entries) {
    if (e.folder) continue;
    names.push_back(e.name);
    sizes.push_back(e.size);
  }
  std::optional<size_t> next = policy::nextEpisode(t.name, names);
  if (!next) {
    conf::Log::write(conf::LogLevel::Info, "next_episode_none", "from=" + conf::logValue(from));
    return;
  }
  start(t, names[*next], sizes[*next]);
}

// The warming is a request of the gateway's own for the next file through
// the cache: the rules decide for it as for a prefetch of the admin API (no
// client address or User-Agent; a rule's size condition sees the listed
// size), and a delivery that would not cache it warms nothing.
void EpisodeWarmer::start(const Target& t, const std::string& nextName, uint64_t size) {
  const Generation& g = *t.gen;
  const conf::Mount& m = g.cfg->mounts[static_cast<size_t>(t.mount)];
  const std::string rest = join(t.folder, nextName);
  const std::string virt = m.prefix == "/" ? rest : m.prefix + rest;
  const std::string from =
      m.prefix == "/" ? join(t.folder, t.name) : m.prefix + join(t.folder, t.name);
  const std::string k = key(m.name, rest);
  auto it = next_.find(k);
  if (it != next_.end()) {
    conf::Log::write(conf::LogLevel::Debug, "next_episode_known",
                     "from=" + conf::logValue(from) + " next=" + conf::logValue(virt));
    return;
  }
  auto skip = [&](const std::string& why) {
    counters_.skipped++;
    next_[k] = Entry{nullptr, virt, from, clock_.monoMs()};
    conf::Log::write(
        conf::LogLevel::Info, "next_episode_skip",
        "from=" + conf::logValue(from) + " next=" + conf::logValue(virt) + " why=" + why);
  };
  size_t running = 0;
  for (const auto& [_, e] : next_) running += e.endedMs == 0 ? 1 : 0;
  if (running >= kMaxRunning) {
    counters_.skipped++;  // not remembered: a later trigger may find room
    conf::Log::write(
        conf::LogLevel::Info, "next_episode_skip",
        "from=" + conf::logValue(from) + " next=" + conf::logValue(virt) + " why=busy");
    return;
  }
  policy::RequestFacts facts;
  facts.route = policy::Route::Proxy;
  facts.method = "GET";
  facts.path = virt;
  facts.mountIndex = t.mount;
  facts.size = size;
  policy::Decision d = g.rules.decide(*g.cfg, facts, g.setup->traits);
  if (d.delivery == conf::Delivery::Deny) return skip("denied");
  if (!d.cache || d.delivery != conf::Delivery::Proxy || m.source == conf::SourceType::Local)
    return skip("not_cached");
  proxy::Request req;
  req.id = ids_++;
  req.setup = g.setup;
  req.mountIndex = t.mount;
  req.path = virt;
  req.rest = rest;
  req.decision = d;
  proxy::PrefetchSpec spec;
  spec.mediaHead =
      d.mediaPrefetch > 0 ? static_cast<uint64_t>(d.mediaPrefetch) : policy::kMediaIndexMaxBytes;
  std::unique_ptr<proxy::Prefetch> job = engine_.prefetch(req, spec);
  if (!job) return skip("no_cache");
  counters_.started++;
  conf::Log::write(conf::LogLevel::Info, "next_episode",
                   "from=" + conf::logValue(from) + " next=" + conf::logValue(virt) +
                       " head=" + std::to_string(spec.mediaHead));
  next_[k] = Entry{std::move(job), virt, from, 0};
  sample();  // it may have ended already (a failure to open)
}

void EpisodeWarmer::sample() {
  const int64_t now = clock_.monoMs();
  for (auto it = next_.begin(); it != next_.end();) {
    Entry& e = it->second;
    if (e.endedMs == 0 && e.job && ended(e.job->progress().state)) {
      e.endedMs = now;
      proxy::Prefetch::Progress p = e.job->progress();
      bool ok = p.state == State::Done;
      (ok ? counters_.warmed : counters_.failed)++;
      conf::Log::write(ok ? conf::LogLevel::Info : conf::LogLevel::Warn,
                       ok ? "next_episode_warmed" : "next_episode_failed",
                       "from=" + conf::logValue(e.from) + " next=" + conf::logValue(e.path) +
                           " bytes=" + std::to_string(p.done) +
                           " upstream_bytes=" + std::to_string(p.upstreamBytes) +
                           " state=" + proxy::prefetchStateName(p.state));
      e.job.reset();
    }
    if (e.endedMs != 0 && now - e.endedMs >= kKeepMs)
      it = next_.erase(it);
    else
      ++it;
  }
  for (auto it = triggered_.begin(); it != triggered_.end();) {
    if (now - it->second >= kKeepMs)
      it = triggered_.erase(it);
    else
      ++it;
  }
}

}  // namespace slip
