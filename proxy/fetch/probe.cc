// The probe: one `Range: bytes=0-0` request learns an object's size, ETag,
// Last-Modified and whether the upstream honours Range. The same version
// (size and validators) is revalidated in place; a different one starts a
// new version (the old one dies and its readers fail cleanly). When the
// upstream is unreachable and a stored version exists, it is served
// (stale-if-error); a 404 drops it.
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
  opts.range = policy::upstreamRange(policy::ByteRange{0, 1});
  o->probe = std::make_unique<ProbeCall>(*this, *o);
  o->probe->linkSerial = o->link.serial;
  o->probe->xfer = std::make_unique<Transfer>(ctx.multi, std::move(opts), o->probe.get());
  o->afterProbe = o->state;
  setState(o, ObjectState::Probing);
  ctx.stats.upstreamRequests++;
  o->probe->xfer->start();
}

bool ProbeCall::onHeaders(Transfer& t) {
  policy::UpstreamJudgement v = policy::classifyUpstream(policy::UpstreamAsk{}, t.answer(), fill.ctx.clock.wallSeconds());  // bytes=0-0
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
      reason = Reason::NotFound;
      return false;
    case V::Busy:
    case V::ServerError:
      retry = true;
      retryAfterMs = v.retryAfterMs;
      reason = Reason::UpstreamStatus;
      return false;
    case V::BadAnswer:
      reason = Reason::UpstreamBadResponse;
      return false;
    default:
      reason = Reason::UpstreamStatus;
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
  return t.status() == 206;  // the 1-byte body is cheap; a 200 body is not
}

size_t ProbeCall::onData(Transfer&, const char*, size_t n) { return n; }  // the probe's single byte

void ProbeCall::onDone(Transfer&, const TransferResult& r) { fill.probeFinished(&obj, r); }

namespace {

bool sameVersion(const Object& o, const store::ObjectMeta& fresh) {
  return o.hasMeta && fresh.size == o.meta.size &&
         (!fresh.etag.empty() && !o.meta.etag.empty() ? fresh.etag == o.meta.etag
                                                      : fresh.lastModified == o.meta.lastModified) &&
         fresh.noRanges == o.meta.noRanges;
}

}  // namespace

void Fill::probeFinished(Object* o, const TransferResult& r) {
  std::unique_ptr<ProbeCall> pc = std::move(o->probe);  // its onDone is on the stack
  graveyard_.bury(std::move(pc->xfer));
  if (o->state == ObjectState::Probing) setState(o, o->afterProbe);
  const ProbeCall& p = *pc;
  graveyard_.bury(std::move(pc));
  sweepSoon();
  if (p.ok && p.uncacheable) {
    o->reResolvedFrom = 0;
    finishOpen(o, {Reason::None, "", true});
    return;
  }
  if (p.ok) {
    o->reResolvedFrom = 0;
    int64_t now = ctx.clock.wallMs();
    store::ObjectMeta fresh = p.meta;
    if (sameVersion(*o, fresh)) {
      o->meta.validatedMs = now;
      store.markValidated(o->key, o->meta, now);
      if (o->state != ObjectState::Dead) setState(o, ObjectState::Ready);
      finishOpen(o, {});
      return;
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
    finishOpen(o, {});
    return;
  }
  if (p.denied && linkDenied(o, p.linkSerial)) {
    // Re-resolving; ensureLink's callback starts the probe again.
    if (o->haveLink && !o->probe) startProbe(o);
    return;
  }
  bool retryable = p.retry || (p.reason == Reason::None && !p.denied);
  if (retryable && ++o->probeAttempts < policy::kFetchAttempts) {
    int64_t delay =
        p.retryAfterMs >= 0 ? p.retryAfterMs : policy::backoffDelayMs(policy::kFetchBackoff, o->probeAttempts);
    ctx.stats.retries++;
    if (!o->probeTimer) o->probeTimer = std::make_unique<Timer>(ctx.base, [this, o] { startProbe(o); });
    o->probeTimer->armMs(delay);
    return;
  }
  o->probeAttempts = 0;
  Reason reason = p.denied                   ? Reason::UpstreamDenied
                  : p.reason != Reason::None ? p.reason
                  : r.timedOut               ? Reason::UpstreamTimeout
                                             : Reason::UpstreamConnect;
  std::string detail = !p.detail.empty() ? p.detail : r.error;
  ctx.stats.upstreamErrors++;
  // Stale-if-error: a stored copy is better than an error when the upstream
  // is merely unreachable; a 404 or a refusal is an answer, not an outage.
  if (o->hasMeta &&
      (reason == Reason::UpstreamConnect || reason == Reason::UpstreamTimeout || reason == Reason::UpstreamStatus)) {
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
  finishOpen(o, {reason, detail, false});
}

}  // namespace slip::proxy
