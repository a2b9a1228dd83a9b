// Proxy delivery through the block cache: the client's range is cut into
// block-sized steps, each served from the store (verified), from a block
// still being fetched (as its bytes land on disk), or waited for while the
// Fetcher gets it. Memory per client stays under the high-water mark: bytes
// go upstream → disk → client, never piled up in RAM.
#include <event2/buffer.h>

#include "proxy/fetch/fetcher.h"

namespace slip::proxy {
namespace {

class CacheJob final : public Job, public Reader {
 public:
  enum class State { Opening, Streaming, Done, Gone };

  CacheJob(Engine::Impl& e, const Request& r, Sink* s) : e_(e), f_(*e.fetcher), req_(r), sink_(s) {}

  ~CacheJob() override {
    *alive_ = false;
    unpinCurrent();
    f_.detach(this);
  }

  void begin() {
    sink_->noteProgress(Sink::Progress::Opening);
    auto alive = alive_;
    f_.open(req_, this, [this, alive](const OpenResult& res) {
      if (*alive) opened(res);
    });
  }

  void onWritable() override {
    if (fallback_) return fallback_->onWritable();
    pump();
  }

  void onClientGone() override {
    if (fallback_) return fallback_->onClientGone();
    state_ = State::Gone;
    sink_ = nullptr;
    unpinCurrent();
    f_.detach(this);
  }

  // ---- Reader
  void wake() override { pump(); }

  void objectFailed(policy::Reason r, const std::string& detail) override {
    if (state_ == State::Done || state_ == State::Gone) return;
    state_ = State::Done;
    unpinCurrent();
    sink_->fail(r, detail);
  }

  void upstreamBytes(uint64_t n) override {
    fromUpstream_ = true;
    if (sink_) sink_->noteUpstreamBytes(n);
  }

 private:
  void opened(const OpenResult& res) {
    if (state_ != State::Opening) return;
    if (res.uncacheable) {
      // No length from the upstream: nothing to cut into blocks; stream it.
      fallback_ = makeStreamJob(e_, req_, sink_);
      return;
    }
    if (res.reason != policy::Reason::None) {
      state_ = State::Done;
      sink_->fail(res.reason, res.detail);
      return;
    }
    const store::ObjectMeta& m = f_.meta(obj);
    meta_ = m;
    ObjectInfo info{m.size, m.etag, m.lastModified, m.contentType};
    policy::WireRange wire = policy::parseRange(req_.range);
    if (!req_.ifRange.empty() && !policy::ifRangeAllows(req_.ifRange, m.etag, m.lastModified))
      wire = {};
    policy::RangeAnswer a = policy::resolveRange(wire, m.size);
    if (a.kind == policy::RangeAnswer::Kind::Unsatisfiable) {
      Headers h = unsatisfiableHeaders(info, CacheStatus::Hit);
      h.push_back({"Content-Length", "0"});
      sink_->sendHeaders(416, h);
      return finish();
    }
    CacheStatus cs = CacheStatus::Hit;
    if (a.range.size() > 0) {
      uint32_t first = static_cast<uint32_t>(a.range.begin / m.blockSize);
      uint32_t last = static_cast<uint32_t>((a.range.end - 1) / m.blockSize);
      uint32_t have = e_.store->countPresent(f_.key(obj), m.generation, first, last);
      cs = have == last - first + 1 ? CacheStatus::Hit
           : have == 0              ? CacheStatus::Miss
                                    : CacheStatus::Partial;
    }
    sink_->sendHeaders(a.kind == policy::RangeAnswer::Kind::Partial ? 206 : 200,
                       bodyHeaders(info, a, req_.path, cs));
    if (req_.head || a.range.size() == 0) return finish();
    pos = a.range.begin;
    end = a.range.end;
    state_ = State::Streaming;
    f_.demand(this);
    pump();
  }

  void pump() {
    if (state_ != State::Streaming || !obj) return;
    if (pumping_) {
      again_ = true;
      return;
    }
    pumping_ = true;
    do {
      again_ = false;
      step();
    } while (again_ && state_ == State::Streaming && obj);
    pumping_ = false;
  }

  void step() {
    const uint64_t bs = meta_.blockSize;
    evbuffer* buf = evbuffer_new();
    // Its chains end up in a socket's output buffer: keep file segments as
    // sendfile chains instead of letting libevent mmap them here.
    evbuffer_set_flags(buf, EVBUFFER_FLAG_DRAINS_TO_FD);
    uint32_t lastIdx = static_cast<uint32_t>(pos / bs);
    while (state_ == State::Streaming && pos < end && sink_->queued() < kClientHighWater) {
      uint32_t idx = static_cast<uint32_t>(pos / bs);
      uint64_t boff = pos - static_cast<uint64_t>(idx) * bs;
      uint64_t n = std::min({end - pos, meta_.blockLength(idx) - boff, static_cast<uint64_t>(kReadChunk)});
      pinBlock(idx);
      Fetcher::Avail av = f_.avail(obj, pos);
      if (av.kind == Fetcher::Avail::Kind::Stored) {
        store::ReadResult rr = e_.store->read(f_.key(obj), meta_, idx, boff, n, buf);
        if (rr == store::ReadResult::Ok) {
          if (touched_ != idx) {
            e_.store->touch(f_.key(obj), meta_.generation, idx, requestId);
            touched_ = idx;
          }
          e_.stats.cacheHitBytes += n;
          send(buf, n);
          continue;
        }
        if (rr == store::ReadResult::Corrupt) {
          f_.blockCorrupt(obj, idx);
          continue;  // now missing: fetched again below
        }
        if (rr == store::ReadResult::Missing) continue;  // evicted just now
        evbuffer_free(buf);
        return objectFailed(policy::Reason::CacheFailed, "cache read failed");
      }
      if (av.kind == Fetcher::Avail::Kind::InFlight && av.readable > 0 && av.writer) {
        n = std::min(n, av.readable);
        if (e_.store->readRaw(av.writer, boff, n, buf) != store::ReadResult::Ok) {
          evbuffer_free(buf);
          return objectFailed(policy::Reason::CacheFailed, "cache read failed");
        }
        send(buf, n);
        continue;
      }
      f_.waitFor(this, idx);
      break;
    }
    evbuffer_free(buf);
    if (state_ == State::Streaming && pos == end) return finish();
    if (static_cast<uint32_t>(pos / bs) != lastIdx) f_.demand(this);  // read-ahead window moved
  }

  void send(evbuffer* buf, uint64_t n) {
    pos += n;
    sink_->sendBody(buf);
  }

  void pinBlock(uint32_t idx) {
    if (pinned_ && *pinned_ == idx) return;
    unpinCurrent();
    e_.store->pin(f_.key(obj), idx);
    pinned_ = idx;
    pinnedKey_ = f_.key(obj);
  }

  void unpinCurrent() {
    if (pinned_) e_.store->unpin(pinnedKey_, *pinned_);
    pinned_.reset();
  }

  void finish() {
    state_ = State::Done;
    unpinCurrent();
    f_.detach(this);
    sink_->finish();
  }

  Engine::Impl& e_;
  Fetcher& f_;
  Request req_;
  Sink* sink_;
  State state_ = State::Opening;
  store::ObjectMeta meta_;
  bool pumping_ = false, again_ = false, fromUpstream_ = false;
  std::optional<uint32_t> pinned_;
  store::Key pinnedKey_;
  uint32_t touched_ = UINT32_MAX;
  std::unique_ptr<Job> fallback_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace

std::unique_ptr<Job> makeCacheJob(Engine::Impl& e, const Request& r, Sink* s) {
  auto j = std::make_unique<CacheJob>(e, r, s);
  j->begin();
  return j;
}

}  // namespace slip::proxy
