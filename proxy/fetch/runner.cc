// The runner: executes what the planner decided. Pieces (range requests)
// and whole-body streams write into the store's block writers; every answer
// is read by policy::classifyUpstream; a dropped connection or a stall
// resumes the piece from the byte reached (6 attempts, backoff 250 ms
// doubling to 10 s; 429/503 honour Retry-After); a changed upstream kills
// the object's version; an upstream that ignores Range switches the object
// to one whole-body stream.
#include <cstring>

#include "proxy/fetch/fill.h"

namespace slip::proxy {

using policy::Reason;
using plan::PieceState;

namespace {
void logf(conf::LogLevel l, std::string_view ev, const std::string& kv) { conf::Log::write(l, ev, kv); }
}  // namespace

// ------------------------------------------------------------------ blocks

Block* Fill::createBlock(Object* o, uint32_t idx, std::optional<uint64_t> urgentPos,
                         const std::vector<policy::ByteRange>& pieces, bool forceRoom, bool* cacheFailed,
                         bool stream) {
  const store::ObjectMeta& m = o->meta;
  uint64_t len = m.blockLength(idx);
  if (len == 0) return nullptr;
  using fillmem::BlockMode;
  BlockMode mode = blockMode(o, idx, urgentPos.has_value(), stream);
  if (mode == BlockMode::Wait) return nullptr;  // kicked again when memory frees
  std::shared_ptr<BlockBuffer> mem;
  if (mode != BlockMode::Disk) {
    mem = std::make_shared<BlockBuffer>(static_cast<size_t>(len), memUsed_);
    if (!mem->bytes) {
      mem.reset();
      mode = BlockMode::Disk;
    }
  }
  store::Store::Writer* w = nullptr;
  if (mode != BlockMode::MemoryOnly) {
    if (!store.reserve(len, forceRoom || urgentPos.has_value())) return nullptr;
    w = store.beginBlock(o->key, m, idx);
    if (!w) {
      store.release(len);
      *cacheFailed = true;
      return nullptr;
    }
  }
  auto b = std::make_unique<Block>();
  b->obj = o;
  b->idx = idx;
  b->begin = m.blockBegin(idx);
  b->end = b->begin + len;
  b->writer = w;
  b->mem = std::move(mem);
  b->uncached = mode == BlockMode::MemoryOnly;
  if (b->mem) ctx.stats.memoryBlocks++;
  if (b->uncached) {
    ctx.stats.droppedBlocks++;
    logf(conf::LogLevel::Debug, "block_not_cached",
         "path=" + conf::logValue(o->path) + " block=" + std::to_string(idx) + " cause=disk_behind");
  }
  // The reader that asked first pays for it in the access log.
  for (BlockReader* r : o->readers) {
    if (r->pos < r->end && r->pos / m.blockSize <= idx) {
      b->initiator = r;
      b->requestId = r->requestId;
      break;
    }
  }
  for (const auto& range : pieces) b->pieces.push_back(std::make_unique<Piece>(*this, *b, range.begin, range.end));
  Block* raw = b.get();
  o->blocks[idx] = std::move(b);
  // Readers stalled on this block now wait on it.
  for (auto it = o->stalled.begin(); it != o->stalled.end();) {
    if ((*it)->pos / m.blockSize == idx) {
      raw->waiters.insert(*it);
      it = o->stalled.erase(it);
    } else {
      ++it;
    }
  }
  return raw;
}

void Fill::maybeCommit(Block* b) {
  if (b->committing || b->complete) return;
  for (auto& p : b->pieces)
    if (p->state != PieceState::Done || p->written != p->end - p->begin) return;
  if (b->uncached) {
    // Served from memory, never stored: freed once no playing reader needs it.
    b->complete = true;
    kick();
    return;
  }
  b->committing = true;
  Object* o = b->obj;
  uint32_t idx = b->idx;
  store::Store::Writer* w = b->writer;
  b->writer = nullptr;  // the store frees it after the commit
  Watch alive = b->life.watch();
  store.commit(w, b->requestId, [this, o, idx, alive](bool ok) {
    if (!alive) return;
    auto it = o->blocks.find(idx);
    if (it == o->blocks.end()) return;
    if (!ok && ++o->commitFailures > policy::kFetchAttempts) {
      failBlock(it->second.get(), Reason::CacheFailed, "cache commit failed");
      return;
    }
    // Listed now: out of the in-flight map first, so that the readers it
    // wakes read it from the store.
    std::unique_ptr<Block> blk = std::move(it->second);
    o->blocks.erase(it);
    blk->life.end();
    wakeBlock(blk.get());
    graveyard_.bury(std::move(blk));
    if (idx == 0) considerMedia(o);
    wakeStalled(o);
    sweepSoon();
    kick();
  });
}

std::vector<BlockReader*> Fill::removeBlock(Block* b) {
  Object* o = b->obj;
  for (auto& p : b->pieces) stopPiece(p.get());
  if (b->writer && !b->committing) store.abandon(b->writer);
  b->writer = nullptr;
  std::vector<BlockReader*> waiters(b->waiters.begin(), b->waiters.end());
  b->life.end();
  graveyard_.buryFrom(o->blocks, b->idx);
  return waiters;
}

void Fill::dropBlock(Block* b) {
  Object* o = b->obj;
  for (BlockReader* r : removeBlock(b)) o->stalled.insert(r);
  wakeStalled(o);
  sweepSoon();
}

void Fill::cancelBlock(Block* b) {
  if (conf::Log::enabled(conf::LogLevel::Debug)) {
    uint64_t got = 0;
    for (auto& p : b->pieces) got += p->received;
    logf(conf::LogLevel::Debug, "block_cancelled",
         "path=" + conf::logValue(b->obj->path) + " block=" + std::to_string(b->idx) +
             " fetched=" + std::to_string(got) + " length=" + std::to_string(b->end - b->begin));
  }
  ctx.stats.cancelledBlocks++;
  dropBlock(b);
}

void Fill::failBlock(Block* b, Reason r, const std::string& detail) {
  Object* o = b->obj;
  logf(conf::LogLevel::Warn, "block_failed",
       "path=" + conf::logValue(o->path) + " block=" + std::to_string(b->idx) + " reason=" + policy::reasonCode(r) +
           " detail=" + conf::logValue(detail));
  // Everyone who needs this block can no longer be served.
  std::vector<BlockReader*> victims;
  uint64_t bs = o->meta.blockSize;
  for (BlockReader* rd : o->readers)
    if (rd->pos < rd->end && rd->pos / bs <= b->idx && (rd->end - 1) / bs >= b->idx) victims.push_back(rd);
  // An index region that cannot be fetched is not tried again and again.
  if (o->indexRange && b->end > o->indexRange->begin && b->begin < o->indexRange->end) o->media = MediaState::Off;
  removeBlock(b);
  for (BlockReader* rd : victims) unlink(o, rd);  // other blocks may still list them
  for (BlockReader* rd : victims) rd->client->failed(r, detail);
  sweepSoon();
  kick();
}

// ------------------------------------------------------------------ pieces

void Fill::startPiece(Piece* p) {
  Object* o = p->blk.obj;
  if (p->begin + p->received >= p->end) {  // nothing left to ask for
    p->state = PieceState::Done;
    maybeCommit(&p->blk);
    return;
  }
  Transfer::Options opts = ctx.transferOptions(o->link, *o->run);
  opts.range = policy::upstreamRange({p->begin + p->received, p->end});
  p->verdict.reset();
  p->detail.clear();
  p->failure.reset();
  p->receivedAtStart = p->received;
  p->linkSerial = o->link.serial;
  p->host = hostOf(o);
  p->xfer = std::make_unique<Transfer>(ctx.multi, std::move(opts), p);
  p->state = PieceState::Running;
  counted(o, p->host, +1);
  ctx.stats.upstreamRequests++;
  p->xfer->start();
}

bool Piece::onHeaders(Transfer& t) {
  const Object* o = blk.obj;
  policy::UpstreamAsk ask;
  ask.kind = policy::UpstreamAsk::Kind::Piece;
  ask.range = {begin + received, end};
  ask.size = o->meta.size;
  ask.etag = o->meta.etag;
  policy::UpstreamJudgement v = policy::classifyUpstream(ask, t.answer(), fill.ctx.clock.wallSeconds());
  if (v.verdict == policy::UpstreamVerdict::Ok) return true;
  verdict = v.verdict;
  detail = v.detail;
  failure = policy::fetchFailure(v);  // used unless pieceVerdict acts on the verdict itself
  return false;
}

size_t Piece::onData(Transfer&, const char* data, size_t n) {
  // A buffered block never waits for the disk; an unbuffered one is paced by it.
  if (!blk.mem && fill.store.queuedBytes() >= store::Store::kQueueLimit) {
    fill.paused.insert(this);  // resumed when the store's queue drains
    return Transfer::kPause;
  }
  size_t take = static_cast<size_t>(std::min<uint64_t>(n, end - (begin + received)));
  if (take > 0) fill.storeBytes(this, data, take);
  return take == n ? n : 0;  // more than we asked for: stop there
}

/// Queues bytes of a piece for the disk; readers are woken when they landed.
void Fill::storeBytes(Piece* p, const char* data, size_t n) {
  Block* b = &p->blk;
  uint64_t at = p->begin + p->received;
  Watch alive = b->life.watch();
  if (b->mem) {
    // Readers read it from memory now (woken from the loop: this may run
    // inside curl); the disk write, if the block is cached, runs behind.
    char* dst = b->mem->bytes + (at - b->begin);
    std::memcpy(dst, data, n);
    if (!b->wakeQueued) {
      b->wakeQueued = true;
      memWakes_.push_back({alive, b});
      memWake_.fire();
    }
    if (b->uncached) {
      p->written += n;
    } else {
      store.write(b->writer, at - b->begin, dst, n, [this, p, alive, n](bool ok) {
        if (!alive) return;
        if (!ok) {
          failBlock(&p->blk, Reason::CacheFailed, "cache write failed");
          return;
        }
        p->written += n;
        if (p->state == PieceState::Done) maybeCommit(&p->blk);
      }, b->mem);
    }
    p->received += n;
    tuner.received(p->host, n);
    ctx.stats.upstreamBytes += n;
    if (b->initiator) b->initiator->client->upstreamBytes(n);
    return;
  }
  store.write(b->writer, at - b->begin, data, n, [this, p, alive, n](bool ok) {
    if (!alive) return;
    if (!ok) {
      failBlock(&p->blk, Reason::CacheFailed, "cache write failed");
      return;
    }
    p->written += n;
    wakeBlock(&p->blk);
    if (p->blk.idx == 0) considerMedia(p->blk.obj);  // the head's first bytes landed
    if (p->state == PieceState::Done) maybeCommit(&p->blk);
  });
  p->received += n;
  tuner.received(p->host, n);
  ctx.stats.upstreamBytes += n;
  if (b->initiator) b->initiator->client->upstreamBytes(n);
}

void Piece::onDone(Transfer&, const TransferResult& r) { fill.pieceFinished(this, r); }

void Fill::pieceFinished(Piece* p, const TransferResult& r) {
  Block* b = &p->blk;
  Object* o = b->obj;
  counted(o, p->host, -1);
  paused.erase(p);
  // The host pushes back: fewer transfers to it for a while (ConnectionTuner).
  if (p->verdict == policy::UpstreamVerdict::Busy || r.code == CURLE_COULDNT_CONNECT) tuner.pushback(p->host);
  graveyard_.bury(std::move(p->xfer));  // its onDone is on the stack
  kick();
  // Complete also when we cut the body ourselves (an upstream that sent more
  // than the range asked for).
  if (!p->verdict && p->begin + p->received == p->end) {
    p->state = PieceState::Done;
    o->reResolvedFrom = 0;
    p->attempts = 0;
    maybeCommit(b);
    return;
  }
  std::string detail = !p->detail.empty() ? p->detail : r.error;
  if (pieceVerdict(p, detail)) return;
  ctx.stats.upstreamErrors++;
  // One decision for every path (policy::retryDecision). A trickle cut by
  // the speed check (Stalled) or a dropped connection resumes from the byte
  // reached; progress restarts the wait bound's clock.
  auto t = r.failure == policy::TransportFailure::None ? policy::TransportFailure::Other : r.failure;
  policy::FetchFailure f = p->failure ? *p->failure : policy::fetchFailure(t);
  if (!p->failure && policy::transportBlamesLink(r.failure)) linkFailed(o, p->linkSerial);
  int64_t now = ctx.clock.monoMs();
  if (p->attempts == 0 || p->received > p->receivedAtStart) p->firstFailMs = now;
  policy::RetryDecision d = policy::retryDecision(f, ++p->attempts, now - p->firstFailMs);
  if (!d.retry) {
    failBlock(b, d.reason, detail);
    return;
  }
  logf(conf::LogLevel::Info, "piece_retry",
       "path=" + conf::logValue(o->path) + " block=" + std::to_string(b->idx) +
           " from=" + std::to_string(p->begin + p->received) + " attempt=" + std::to_string(p->attempts) +
           " delay_ms=" + std::to_string(d.delayMs) + " cause=" + conf::logValue(detail));
  retryPiece(p, d.delayMs);
}

/// Acts on what a piece's answer said (changed, gone, no ranges, denied).
/// false: a failure to retry.
bool Fill::pieceVerdict(Piece* p, const std::string& detail) {
  Block* b = &p->blk;
  Object* o = b->obj;
  using V = policy::UpstreamVerdict;
  switch (p->verdict.value_or(V::Ok)) {
    case V::Changed:
      kill(o, Reason::UpstreamChanged, detail);
      return true;
    case V::Gone:
      kill(o, Reason::NotFound, detail);
      return true;
    case V::IgnoresRanges:
      noRanges(o);
      return true;
    case V::Denied:
      if (linkDenied(o, p->linkSerial)) {
        p->state = PieceState::Queued;  // continue from the byte reached with the new link
        return true;
      }
      failBlock(b, Reason::UpstreamDenied, detail + " (also after re-resolving the link)");
      return true;
    default:
      return false;
  }
}

/// Switches the object to one whole-body stream that caches what passes.
void Fill::noRanges(Object* o) {
  logf(conf::LogLevel::Warn, "upstream_ignores_range", "path=" + conf::logValue(o->path));
  o->meta.noRanges = true;
  store.markValidated(o->key, o->meta, o->meta.validatedMs);
  std::vector<Block*> drop;
  for (auto& [idx, blk] : o->blocks)
    if (!blk->committing && !blk->fedByStream) drop.push_back(blk.get());
  for (Block* d : drop) dropBlock(d);
  wakeStalled(o);
}

void Fill::stopPiece(Piece* p) {
  // A Running piece with a transfer was counted by startPiece and has not
  // reported back; stream-fed pieces have no transfer of their own.
  if (p->xfer && p->state == PieceState::Running) counted(p->blk.obj, p->host, -1);
  paused.erase(p);
  retire(std::move(p->xfer));
}

void Fill::retryPiece(Piece* p, int64_t delayMs) {
  ctx.stats.retries++;
  p->state = PieceState::Backoff;
  if (!p->retry) p->retry = std::make_unique<Timer>(ctx.base, [this, p] {
    p->state = PieceState::Queued;
    kick();
  });
  p->retry->armMs(delayMs);
}

void Fill::resumePaused() {
  std::vector<Piece*> ps(paused.begin(), paused.end());
  paused.clear();
  for (Piece* p : ps)
    if (p->xfer) p->xfer->resume();
  auto resume = [](Object& o) {
    if (o.whole && o.whole->xfer && o.whole->xfer->paused()) o.whole->xfer->resume();
  };
  for (auto& [k, o] : objects_) resume(*o);
  for (auto& o : retired_) resume(*o);
}

// ------------------------------------------------------------------ whole-body stream

void Fill::startWhole(Object* o) {
  auto w = std::make_unique<WholeStream>(*this, *o);
  w->xfer = std::make_unique<Transfer>(ctx.multi, ctx.transferOptions(o->link, *o->run), w.get());
  w->host = hostOf(o);
  o->whole = std::move(w);
  logf(conf::LogLevel::Debug, "whole_stream_start", "path=" + conf::logValue(o->path));
  counted(o, o->whole->host, +1);
  ctx.stats.upstreamRequests++;
  o->whole->xfer->start();
}

bool WholeStream::onHeaders(Transfer& t) {
  policy::UpstreamAsk ask;
  ask.kind = policy::UpstreamAsk::Kind::Whole;
  ask.size = obj.meta.size;
  ask.etag = obj.meta.etag;
  policy::UpstreamJudgement v = policy::classifyUpstream(ask, t.answer(), fill.ctx.clock.wallSeconds());
  if (v.verdict == policy::UpstreamVerdict::Ok) return true;
  changed = v.verdict == policy::UpstreamVerdict::Changed;
  if (!changed) failure = policy::fetchFailure(v);  // the retry decision says
  detail = v.detail;
  return false;
}

// Inside curl: stores what passes, never changes the object table (a block
// the store cannot open ends the stream; onDone acts on it from the loop).
size_t WholeStream::onData(Transfer&, const char* data, size_t n) {
  Object* o = &obj;
  store::Store& store = fill.store;
  if (store.queuedBytes() >= store::Store::kQueueLimit) return Transfer::kPause;  // resumed on drain
  if (o->readers.empty()) return 0;  // nobody left to serve: stop paying for bytes
  const uint64_t bs = o->meta.blockSize;
  size_t done = 0;
  while (done < n) {
    uint32_t idx = static_cast<uint32_t>(offset / bs);
    uint64_t bBegin = static_cast<uint64_t>(idx) * bs;
    uint64_t bEnd = bBegin + o->meta.blockLength(idx);
    size_t take = static_cast<size_t>(std::min<uint64_t>(n - done, bEnd - offset));
    if (take == 0) break;  // past the end: more bytes than the object has
    auto it = o->blocks.find(idx);
    Block* b = it == o->blocks.end() ? nullptr : it->second.get();
    if (!b && offset == bBegin && !store.present(o->key, o->meta.generation, idx)) {
      // Cache what passes (always room: the stream cannot skip a block a reader waits on).
      b = fill.createBlock(o, idx, std::nullopt, {{bBegin, bEnd}}, true, &cacheFailed, true);
      if (cacheFailed) return 0;
      if (b) {
        b->fedByStream = true;
        b->pieces[0]->state = PieceState::Running;
        b->pieces[0]->host = host;  // its bytes count for the stream's host
      }
    }
    if (b && b->fedByStream && !b->committing) {
      Piece* p = b->pieces[0].get();
      if (p->begin + p->received == offset) {
        fill.storeBytes(p, data + done, take);
        if (p->begin + p->received == p->end) {
          p->state = PieceState::Done;
          fill.maybeCommit(b);
        }
      }
    }
    offset += take;
    done += take;
  }
  return done == n ? n : 0;
}

void WholeStream::onDone(Transfer&, const TransferResult& r) { fill.wholeFinished(&obj, r); }

void Fill::wholeFinished(Object* o, const TransferResult& r) {
  counted(o, o->whole->host, -1);
  std::unique_ptr<WholeStream> owned = std::move(o->whole);  // its onDone is on the stack
  WholeStream* w = owned.get();
  graveyard_.bury(std::move(w->xfer));
  graveyard_.bury(std::move(owned));
  sweepSoon();
  logf(conf::LogLevel::Debug, "whole_stream_done",
       "path=" + conf::logValue(o->path) + " offset=" + std::to_string(w->offset) + " code=" +
           std::to_string(r.code) + " readers=" + std::to_string(o->readers.size()));
  // Blocks it was feeding and did not finish are abandoned.
  std::vector<Block*> drop;
  for (auto& [idx, b] : o->blocks)
    if (b->fedByStream && !b->committing && b->pieces[0]->state != PieceState::Done) drop.push_back(b.get());
  for (Block* b : drop) dropBlock(b);
  if (w->changed) return kill(o, Reason::UpstreamChanged, w->detail);
  if (w->cacheFailed) return kill(o, Reason::CacheFailed, "cannot open the cache data file");
  bool complete = r.code == CURLE_OK && w->offset == o->meta.size;
  if (!complete && !o->readers.empty()) {
    ctx.stats.upstreamErrors++;
    auto t = r.failure == policy::TransportFailure::None ? policy::TransportFailure::Other : r.failure;
    policy::FetchFailure f = w->failure ? *w->failure : policy::fetchFailure(t);
    if (!w->failure && policy::transportBlamesLink(r.failure)) linkFailed(o, o->link.serial);
    int64_t now = ctx.clock.monoMs();
    if (o->wholeAttempts == 0 || w->offset > o->wholeOffsetAtStart) o->wholeFirstFailMs = now;  // got further
    o->wholeOffsetAtStart = std::max(o->wholeOffsetAtStart, w->offset);
    policy::RetryDecision d = policy::retryDecision(f, ++o->wholeAttempts, now - o->wholeFirstFailMs);
    if (!d.retry) return kill(o, d.reason, !w->detail.empty() ? w->detail : r.error);
    o->wholeRetryAtMs = now + d.delayMs;
    ctx.stats.retries++;
    kickAt(o->wholeRetryAtMs);
    return;
  }
  o->wholeAttempts = 0;
  kick();
}

}  // namespace slip::proxy
