// Scheduling: a snapshot of the object table and the connection pools goes
// to the planner (planner.h, a pure function); its plan is executed here
// through the runner. Runs from its own loop callback whenever something
// changed (a reader moved or waits, a transfer ended, a slot freed, a
// backoff ran out).
#include <algorithm>
#include <set>

#include "proxy/fetch/fill.h"

namespace slip::proxy {

void Fill::kickAt(int64_t atMs) {
  int64_t now = ctx.clock.monoMs();
  if (retryTimer_.pending() && retryAtMs_ > now && retryAtMs_ <= atMs) return;
  retryAtMs_ = atMs;
  retryTimer_.armMs(atMs - now);
}

plan::Input Fill::snapshot(std::vector<Object*>* objs) {
  plan::Input in;
  in.fillRunning = running_;
  in.fillLimit = static_cast<int>(ctx.cfg().server.upstreamConnections);
  in.cacheMaxSize = static_cast<uint64_t>(ctx.cfg().cache.maxSize);
  in.tick = tick_;
  const int64_t monoNow = ctx.clock.monoMs();
  const Admission& adm = ctx.multi.admission();
  std::map<int, int> ceilings;  // per host: the largest `connections` of its objects
  for (auto& [key, owned] : objects_) {
    Object* o = owned.get();
    const conf::Mount& m = mountOf(o);
    plan::Object po;
    po.size = o->meta.size;
    po.blockSize = o->meta.blockSize;
    po.pool = poolOf(o);
    po.defaultConnections = static_cast<int>(m.connections);
    po.readAhead = static_cast<uint64_t>(m.readAhead);
    po.ready = o->state == ObjectState::Ready && o->meta.blockSize > 0;
    po.noRanges = o->meta.noRanges;
    po.wholeRunning = o->whole != nullptr;
    po.wholeBackoff = monoNow < o->wholeRetryAtMs;
    po.linkUsable = linkUsable(o);
    po.running = o->running;
    po.servedTick = o->servedTick;
    po.host = hostOf(o);
    int conns = static_cast<int>(m.connections);
    for (BlockReader* r : o->readers) conns = std::max(conns, r->connections);
    if (po.host >= 0) ceilings[po.host] = std::max(ceilings[po.host], conns);
    for (BlockReader* r : o->readers) {
      plan::Reader pr;
      pr.pos = r->pos;
      pr.end = r->end;
      pr.connections = r->connections;
      pr.priority = r->priority;
      pr.stalled = o->stalled.count(r) > 0;
      pr.start = r->start;
      pr.client = r->clientId;
      pr.seq = r->seq;
      po.readers.push_back(pr);
    }
    if (o->media == MediaState::Fetching && o->state == ObjectState::Ready && o->meta.blockSize > 0) {
      // The media index region (planner rule 10), until it is stored.
      const policy::ByteRange& ix = *o->indexRange;
      uint32_t first = static_cast<uint32_t>(ix.begin / o->meta.blockSize);
      uint32_t last = static_cast<uint32_t>((ix.end - 1) / o->meta.blockSize);
      if (store.countPresent(o->key, o->meta.generation, first, last) == last - first + 1) {
        o->media = MediaState::Off;
        sweepSoon();
      } else {
        plan::Reader pr;
        pr.pos = ix.begin;
        pr.end = ix.end;
        pr.connections = static_cast<int>(m.connections);
        pr.index = true;
        // Wanted for whoever reads the object: background work (rule 11)
        // when only prefetches read it, so it yields like them.
        const bool background =
            !o->readers.empty() && std::all_of(o->readers.begin(), o->readers.end(), [](const BlockReader* r) {
              return r->priority == plan::Priority::Background;
            });
        if (background) pr.priority = plan::Priority::Background;
        po.readers.push_back(pr);
      }
    }
    for (auto& [idx, b] : o->blocks) {
      plan::Block pb;
      pb.idx = idx;
      pb.waitedOn = !b->waiters.empty();
      pb.stream = b->fedByStream;
      pb.keep = b->keep;
      pb.length = b->end - b->begin;
      for (auto& p : b->pieces) pb.pieces.push_back({p->state, p->begin, p->end, p->received});
      po.blocks.push_back(std::move(pb));
    }
    po.stored = [this, o](uint32_t idx) { return store.present(o->key, o->meta.generation, idx); };
    po.probeWaiting = o->probe && o->probe->xfer && o->probe->xfer->waiting() &&
                      std::any_of(o->opening.begin(), o->opening.end(),
                                  [](const BlockReader* r) { return r->priority == plan::Priority::Playing; });
    auto held = preemptedUntil_.find(po.pool);
    in.pools[po.pool] = {adm.limit(po.pool), adm.free(po.pool), held != preemptedUntil_.end() && monoNow < held->second};
    in.objects.push_back(std::move(po));
    objs->push_back(o);
  }
  for (auto [host, ceiling] : ceilings) in.hosts[host] = {tuner.target(host, ceiling), tuner.running(host)};
  return in;
}

void Fill::schedule() {
  if (ctx.quiescing) return;
  releaseMemoryBlocks();
  std::vector<Object*> objs;
  plan::Input in = snapshot(&objs);
  if (in.objects.empty()) return;
  execute(plan::planFill(in), objs);
}

// Objects are never freed while this runs (only the sweep frees them), so
// every pointer in `objs` stays valid; blocks are looked up afresh for each
// action because an earlier one may have ended them.
void Fill::execute(const plan::Plan& plan, const std::vector<Object*>& objs) {
  using K = plan::Action::Kind;
  std::set<Object*> noRoom;  // a block could not be created: no more this round
  for (const plan::Action& a : plan.actions) {
    Object* o = objs[a.object];
    if (o->state != ObjectState::Ready) continue;
    auto it = o->blocks.find(a.block);
    Block* b = it == o->blocks.end() ? nullptr : it->second.get();
    switch (a.kind) {
      case K::Cancel:
        if (b && !b->committing) cancelBlock(b);  // read-ahead nobody wants any more
        break;
      case K::NewBlock: {
        if (b || noRoom.count(o)) break;
        bool cacheFailed = false;
        if (!createBlock(o, a.block, a.urgentPos, a.pieces, false, &cacheFailed)) noRoom.insert(o);
        if (cacheFailed) kill(o, policy::Reason::CacheFailed, "cannot open the cache data file");
        break;
      }
      case K::StartPiece: {
        if (!b || a.piece >= static_cast<int>(b->pieces.size())) break;
        Piece* p = b->pieces[a.piece].get();
        if (p->state != plan::PieceState::Queued) break;
        if (!linkUsable(o)) {
          ensureLink(o);
          break;
        }
        startPiece(p);
        break;
      }
      case K::StartWhole:
        if (!o->whole) startWhole(o);
        break;
      case K::NeedLink:
        ensureLink(o);
        break;
      case K::Preempt: {
        // Background work gives its slot to a playing reader; the piece
        // resumes from the byte reached when the planner starts it again.
        if (!b || a.piece >= static_cast<int>(b->pieces.size())) break;
        Piece* p = b->pieces[a.piece].get();
        if (p->state != plan::PieceState::Running || !p->xfer) break;
        stopPiece(p);
        p->state = plan::PieceState::Queued;
        ctx.stats.preemptions++;
        // Its slot comes free after the admission's cut-off grace: no
        // second preemption in the pool meanwhile.
        preemptedUntil_[poolOf(o)] = ctx.clock.monoMs() + Admission::kCutOffGraceMs + 50;
        kickAt(preemptedUntil_[poolOf(o)]);
        conf::Log::write(conf::LogLevel::Debug, "piece_preempted",
                         "path=" + conf::logValue(o->path) + " block=" + std::to_string(b->idx) +
                             " from=" + std::to_string(p->begin + p->received));
        break;
      }
    }
  }
}

}  // namespace slip::proxy
