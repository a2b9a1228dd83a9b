#include "src/prefetches.h"

#include "conf/clock.h"

namespace slip {
namespace {

using State = proxy::Prefetch::State;

bool ended(State s) { return s == State::Done || s == State::Failed || s == State::Cancelled; }

admin::PrefetchState apiState(State s) {
  switch (s) {
    case State::Opening: return admin::PrefetchState::Queued;
    case State::Running: return admin::PrefetchState::Running;
    case State::Done: return admin::PrefetchState::Done;
    case State::Failed: return admin::PrefetchState::Failed;
    case State::Cancelled: return admin::PrefetchState::Cancelled;
  }
  return admin::PrefetchState::Failed;
}

}  // namespace

void PrefetchRegistry::noteEnd(Entry& e) {
  if (e.endedMs == 0 && ended(e.job->progress().state)) e.endedMs = clock_.wallMs();
}

admin::PrefetchJob PrefetchRegistry::info(Entry& e) {
  noteEnd(e);
  proxy::Prefetch::Progress p = e.job->progress();
  admin::PrefetchJob j;
  j.id = e.id;
  j.path = e.path;
  j.state = apiState(p.state);
  j.bytesDone = p.done;
  j.bytesTotal = p.total;
  j.speedBps = ended(p.state) ? 0 : e.speed.bytesPerSecond();
  j.createdUnix = e.createdMs / 1000;
  j.finishedUnix = e.endedMs / 1000;
  if (p.state == State::Failed) j.error = admin::ApiError{p.reason, p.detail};
  return j;
}

std::optional<admin::PrefetchJob> PrefetchRegistry::running(const std::string& path) {
  for (auto& [n, e] : jobs_)
    if (e.path == path && !ended(e.job->progress().state)) return info(e);
  return std::nullopt;
}

bool PrefetchRegistry::makeRoom() {
  if (jobs_.size() < kMaxJobs) return true;
  for (auto it = jobs_.begin(); it != jobs_.end(); ++it) {
    noteEnd(it->second);
    if (it->second.endedMs != 0) {
      jobs_.erase(it);
      return true;
    }
  }
  return false;
}

admin::PrefetchJob PrefetchRegistry::add(const std::string& path, std::unique_ptr<proxy::Prefetch> job) {
  uint64_t n = next_++;
  Entry& e = jobs_[n];
  e.id = "p" + std::to_string(n);
  e.path = path;
  e.job = std::move(job);
  e.createdMs = clock_.wallMs();
  e.speed.sample(clock_.monoNs(), 0);
  return info(e);
}

std::vector<admin::PrefetchJob> PrefetchRegistry::list() {
  std::vector<admin::PrefetchJob> out;
  for (auto& [n, e] : jobs_) out.push_back(info(e));
  return out;
}

std::optional<admin::PrefetchJob> PrefetchRegistry::get(const std::string& id) {
  for (auto& [n, e] : jobs_)
    if (e.id == id) return info(e);
  return std::nullopt;
}

admin::Outcome<admin::PrefetchJob> PrefetchRegistry::cancel(const std::string& id) {
  for (auto& [n, e] : jobs_) {
    if (e.id != id) continue;
    e.job->cancel();  // no-op once it ended: the answer says how it ended
    return admin::Outcome<admin::PrefetchJob>::ok(info(e));
  }
  return admin::Outcome<admin::PrefetchJob>::fail(policy::Reason::NotFound, "no prefetch job " + id);
}

void PrefetchRegistry::sample(int64_t monoNs) {
  int64_t now = clock_.wallMs();
  for (auto it = jobs_.begin(); it != jobs_.end();) {
    Entry& e = it->second;
    e.speed.sample(monoNs, e.job->progress().done);
    noteEnd(e);
    it = e.endedMs != 0 && now - e.endedMs > kKeepMs ? jobs_.erase(it) : std::next(it);
  }
}

void PrefetchRegistry::cancelAll() {
  for (auto& [n, e] : jobs_) e.job->cancel();
}

}  // namespace slip
