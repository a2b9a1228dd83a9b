// The probe: one range request learns an object's size, ETag, Last-Modified
// and whether the upstream honours Range. The same version (size and
// validators) is revalidated in place; a different one starts a new version
// (the old one dies and its readers fail cleanly). When the upstream is
// unreachable and a stored version exists, it is served (stale-if-error); a
// 404 drops it.
//
// Revalidation asks `bytes=0-0`. A cold open (the index does not know the
// object) asks for the block its first reader needs instead (issue 11 item
// 5): the answer's Content-Range carries the size, and its body is that
// block's bytes — the transfer is handed to the block as its piece, so a
// cold open costs one request, not a probe and then a block.
#include "proxy/fetch/fill.h"

namespace slip::proxy {

using policy::Reason;

void Fill::startProbe(Object* o) {
  if (o->state == ObjectState::Dead) return;
  // A source may resolve synchronously: its callback can start the probe,
  // or fail the open, before ensureLink returns.
  if (!linkUsable(o)) {
    ensureLink(o);
    if (o->probe || !linkUsable(o)) return;  // the resolution callback starts the probe
  }
  Transfer::Options opts = ctx.transferOptions(o->link, *o->run);
  o->probe = std::make_unique<ProbeCall>(*this, *o);
  ProbeCall* pc = o->probe.get();
  if (!o->hasMeta && o->fuseAt) {
    // The first piece of the block the reader starts in, as the planner
    // would split it (from the reader's page, `connections` ways): the
    // rest of the block starts in parallel once the size is known, so a
    // cloud drive that caps each connection does not hold the first block
    // to one connection's speed.
    const uint64_t bs = static_cast<uint64_t>(ctx.cfg().cache.blockSize);
    uint64_t begin = *o->fuseAt / bs * bs;
    int share = static_cast<int>(mountOf(o).connections);
    pc->fused = plan::splitBlock(begin, begin + bs, *o->fuseAt, share).front();
    pc->adoptSoon = std::make_unique<Trigger>(ctx.base, [this, o] { adoptProbe(o); });
  }
  opts.range = policy::upstreamRange(pc->fused.value_or(policy::ByteRange{0, 1}));
  o->probe->linkSerial = o->link.serial;
  o->probe->xfer = std::make_unique<Transfer>(ctx.multi, std::move(opts), o->probe.get());
  o->afterProbe = o->state;
  setState(o, ObjectState::Probing);
  ctx.stats.upstreamRequests++;
  o->probe->xfer->start();
}

bool ProbeCall::onHeaders(Transfer& t) {
  const policy::UpstreamAnswer answer = t.answer();
  if (fused && answer.status == 416) {
    // The first reader's block starts past the end: the size is still known.
    auto cr = policy::parseContentRange(answer.contentRange);
    if (cr && cr->length && *cr->length <= fused->begin) {
      ok = true;
      meta.size = *cr->length;
      meta.etag = t.header("etag");
      meta.lastModified = t.header("last-modified");
      meta.contentType = t.header("content-type");
      return false;
    }
  }
  // The probe's statuses (a fused probe's 206 reads the same: size, validators).
  policy::UpstreamJudgement v = policy::classifyUpstream(policy::UpstreamAsk{}, answer, fill.ctx.clock.wallSeconds());
  using V = policy::UpstreamVerdict;
  detail = v.detail;
  switch (v.verdict) {
    case V::Ok:
    case V::IgnoresRanges:
      break;
    case V::Denied:
      denied = true;
      return false;
    case V::Gone:
      gone = true;
      return false;
    default:  // busy, server error, bad status or answer: the retry decision says
      failure = policy::fetchFailure(v);
      return false;
  }
  ok = true;
  if (!v.total) {  // a 200 without a length: nothing to cut into blocks
    uncacheable = true;
    return false;
  }
  meta.size = *v.total;
  meta.noRanges = v.verdict == V::IgnoresRanges;
  meta.etag = t.header("etag");
  meta.lastModified = t.header("last-modified");
  meta.contentType = t.header("content-type");
  if (t.status() != 206) return false;  // a 200's body is not a probe's
  if (!fused) return true;               // the 1-byte body is cheap
  // The block it asked for, exactly: a piece takes the body (from the loop).
  auto cr = policy::parseContentRange(answer.contentRange);
  policy::ByteRange want{fused->begin, std::min(fused->end, meta.size)};
  if (!cr || !cr->range || *cr->range != want) return false;  // size known; blocks are fetched as usual
  adopt = true;
  adoptSoon->fire();
  return true;
}

size_t ProbeCall::onData(Transfer&, const char*, size_t n) {
  // A fused probe's body waits (paused in curl) for the piece that takes it.
  return adopt ? Transfer::kPause : n;  // else the probe's single byte
}

void ProbeCall::onDone(Transfer&, const TransferResult& r) { fill.probeFinished(&obj, r); }

namespace {

bool sameVersion(const Object& o, const store::ObjectMeta& fresh) {
  return o.hasMeta && fresh.size == o.meta.size &&
         (!fresh.etag.empty() && !o.meta.etag.empty() ? fresh.etag == o.meta.etag
                                                      : fresh.lastModified == o.meta.lastModified) &&
         fresh.noRanges == o.meta.noRanges;
}

}  // namespace

Object* Fill::takeVersion(Object* o, store::ObjectMeta fresh) {
  int64_t now = ctx.clock.wallMs();
  o->fuseAt.reset();
  if (sameVersion(*o, fresh)) {
    o->meta.validatedMs = now;
    store.markValidated(o->key, o->meta, now);
    if (o->state != ObjectState::Dead) setState(o, ObjectState::Ready);
    return o;
  }
  if (o->hasMeta)
    conf::Log::write(conf::LogLevel::Info, "upstream_changed",
                     "path=" + conf::logValue(o->path) + " old_size=" + std::to_string(o->meta.size) +
                         " new_size=" + std::to_string(fresh.size) + " old_etag=" + conf::logValue(o->meta.etag) +
                         " new_etag=" + conf::logValue(fresh.etag));
  // A new version: the old object (and everyone reading it) is finished.
  std::vector<BlockReader*> waiting = std::move(o->opening);
  o->opening.clear();
  Link link = o->link;
  bool haveLink = o->haveLink;
  if (o->hasMeta || !o->readers.empty() || !o->blocks.empty() || o->state == ObjectState::Dead) o = replace(o);
  o->link = link;
  o->haveLink = haveLink;
  fresh.blockSize = static_cast<uint32_t>(ctx.cfg().cache.blockSize);
  fresh.validatedMs = now;
  fresh.mount = mountOf(o).name;
  fresh.path = o->rest;
  o->meta = store.create(o->key, fresh);
  o->hasMeta = true;
  setState(o, ObjectState::Ready);
  for (BlockReader* w : waiting) w->obj = o;
  o->opening = std::move(waiting);
  return o;
}

void Fill::adoptProbe(Object* o) {
  ProbeCall* pc = o->probe.get();
  if (!pc || !pc->adopt || !pc->xfer) return;
  std::unique_ptr<ProbeCall> owned = std::move(o->probe);
  if (o->state == ObjectState::Probing) setState(o, o->afterProbe);
  std::unique_ptr<Transfer> xfer = std::move(owned->xfer);
  const policy::ByteRange range = *owned->fused;
  const uint64_t serial = owned->linkSerial;
  store::ObjectMeta fresh = owned->meta;
  graveyard_.bury(std::move(owned));
  sweepSoon();
  if (o->state == ObjectState::Dead) {  // killed meanwhile: its opening readers were told
    retire(std::move(xfer));
    return;
  }
  o->reResolvedFrom = 0;
  o->probeAttempts = 0;
  Object* v = takeVersion(o, fresh);
  uint32_t idx = static_cast<uint32_t>(range.begin / v->meta.blockSize);
  bool cacheFailed = false;
  // The adopted transfer is the first piece; the rest of the block after
  // it is split as the planner would, the part before it (the head) last.
  const uint64_t blockBegin = v->meta.blockBegin(idx), blockEnd = blockBegin + v->meta.blockLength(idx);
  std::vector<policy::ByteRange> pieces;
  if (range.begin >= blockBegin && range.begin < blockEnd) {
    const policy::ByteRange first{range.begin, std::min(range.end, blockEnd)};
    pieces.push_back(first);
    int share = std::max(1, static_cast<int>(mountOf(v).connections) - 1);
    if (first.end < blockEnd)
      for (const auto& r : plan::splitBlock(first.end, blockEnd, std::nullopt, share)) pieces.push_back(r);
    if (blockBegin < first.begin) pieces.push_back({blockBegin, first.begin});
  }
  Block* b = v->blocks.count(idx) || pieces.empty() ? nullptr
                                                    : createBlock(v, idx, range.begin, pieces, true, &cacheFailed);
  if (b) {
    Piece* p = b->pieces[0].get();
    p->linkSerial = serial;
    p->host = hostOf(v);
    p->state = plan::PieceState::Running;
    p->xfer = std::move(xfer);
    p->xfer->setHandler(p);
    counted(v, p->host, +1);
    p->xfer->resume();
  } else {
    retire(std::move(xfer));  // no room: the planner fetches it later (or the open fails below)
  }
  finishOpen(v, {});
  if (b && !b->initiator && !v->readers.empty()) {
    b->initiator = v->readers.front();  // the access log's upstream bytes
    b->requestId = b->initiator->requestId;
  }
  if (cacheFailed) kill(v, Reason::CacheFailed, "cannot open the cache data file");
}

void Fill::probeFinished(Object* o, const TransferResult& r) {
  std::unique_ptr<ProbeCall> pc = std::move(o->probe);  // its onDone is on the stack
  graveyard_.bury(std::move(pc->xfer));
  if (o->state == ObjectState::Probing) setState(o, o->afterProbe);
  const ProbeCall& p = *pc;
  graveyard_.bury(std::move(pc));
  sweepSoon();
  if (p.ok) o->probeAttempts = 0;
  if (p.ok && p.uncacheable) {
    o->reResolvedFrom = 0;
    finishOpen(o, {Reason::None, "", true});
    return;
  }
  if (p.ok) {
    o->reResolvedFrom = 0;
    finishOpen(takeVersion(o, p.meta), {});
    return;
  }
  if (p.denied && linkDenied(o, p.linkSerial)) {
    // Re-resolving; ensureLink's callback starts the probe again.
    if (o->haveLink && !o->probe) startProbe(o);
    return;
  }
  Reason reason = p.denied ? Reason::UpstreamDenied : Reason::NotFound;
  int64_t retryAfterS = -1;
  std::string detail = !p.detail.empty() ? p.detail : r.error;
  if (!p.denied && !p.gone) {
    // One decision for every path (policy::retryDecision): permanent
    // failures answer at once, the rest retry within the wait bound.
    auto t = r.failure == policy::TransportFailure::None ? policy::TransportFailure::Other : r.failure;
    policy::FetchFailure f = p.failure ? *p.failure : policy::fetchFailure(t);
    if (!p.failure && policy::transportBlamesLink(r.failure)) linkFailed(o, p.linkSerial);
    int64_t now = ctx.clock.monoMs();
    if (o->probeAttempts == 0) o->probeFirstFailMs = now;
    policy::RetryDecision d = policy::retryDecision(f, ++o->probeAttempts, now - o->probeFirstFailMs);
    if (d.retry) {
      ctx.stats.retries++;
      // Logged before the timer is armed: the retry cannot reach the upstream
      // before this line is written (the integration tests rely on that order).
      conf::Log::write(conf::LogLevel::Info, "probe_retry",
                       "path=" + conf::logValue(o->path) + " attempt=" + std::to_string(o->probeAttempts) +
                           " delay_ms=" + std::to_string(d.delayMs) + " cause=" + conf::logValue(detail));
      if (!o->probeTimer) o->probeTimer = std::make_unique<Timer>(ctx.base, [this, o] { startProbe(o); });
      o->probeTimer->armMs(d.delayMs);
      return;
    }
    reason = d.reason;
    retryAfterS = d.retryAfterS;
  }
  o->probeAttempts = 0;
  ctx.stats.upstreamErrors++;
  // Stale-if-error: a stored copy is better than an error when the upstream
  // is merely unreachable; a 404 or a refusal is an answer, not an outage.
  if (o->hasMeta && (reason == Reason::UpstreamConnect || reason == Reason::UpstreamTimeout ||
                     reason == Reason::UpstreamStatus || reason == Reason::UpstreamReset ||
                     reason == Reason::UpstreamBusy || reason == Reason::UpstreamTls)) {
    conf::Log::write(conf::LogLevel::Warn, "revalidate_failed",
                     "path=" + conf::logValue(o->path) + " reason=" + policy::reasonCode(reason) +
                         " detail=" + conf::logValue(detail) + " action=serve_stored");
    if (o->state != ObjectState::Dead) setState(o, ObjectState::Ready);
    finishOpen(o, {});
    return;
  }
  if (reason == Reason::NotFound && o->hasMeta) {
    store.invalidate(o->key, o->meta.generation);
    o->hasMeta = false;
  }
  finishOpen(o, {reason, detail, false, retryAfterS});
}

}  // namespace slip::proxy
