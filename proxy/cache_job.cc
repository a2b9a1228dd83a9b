// Proxy delivery through the block cache: the client's range is read through
// a BlockReader in steps of at most kReadChunk, each from a stored block
// (verified), from a block still being fetched (as its bytes land on disk),
// or waited for while the fill gets it. Memory per client stays under the
// high-water mark: bytes go upstream → disk → client, never piled up in RAM.
#include <event2/buffer.h>

#include "proxy/fetch/fetcher.h"

namespace slip::proxy {
namespace {

class CacheJob final : public Job, public BlockReader::Client {
 public:
  enum class State { Opening, Streaming, Done, Gone };

  CacheJob(Context& c, const Request& r, Sink* s) : c_(c), req_(r), sink_(s) {
    reader_ = c.fetcher->reader(this);
  }

  void begin() {
    sink_->noteProgress(Sink::Progress::Opening);
    reader_->open(req_);
  }

  void onWritable() override {
    if (fallback_) return fallback_->onWritable();
    pump();
  }

  void onClientGone() override {
    if (fallback_) return fallback_->onClientGone();
    state_ = State::Gone;
    sink_ = nullptr;
    reader_->close();
  }

  // ---- BlockReader::Client
  void opened(const OpenResult& res) override;
  void wake() override { pump(); }

  void failed(policy::Reason r, const std::string& detail) override {
    if (state_ == State::Done || state_ == State::Gone) return;
    if (r == policy::Reason::CacheFailed && bypass(detail)) return;
    state_ = State::Done;
    reader_->close();
    sink_->fail(r, detail);
  }

  void upstreamBytes(uint64_t n) override {
    if (sink_) sink_->noteUpstreamBytes(n);
  }

  int upstreamConnections() const override {
    if (fallback_) return fallback_->upstreamConnections();
    return state_ == State::Streaming ? reader_->upstreamConnections() : 0;
  }

 private:
  void pump() {
    if (state_ != State::Streaming) return;
    if (pumping_) {
      again_ = true;
      return;
    }
    pumping_ = true;
    do {
      again_ = false;
      step();
    } while (again_ && state_ == State::Streaming);
    pumping_ = false;
  }

  void step() {
    EvbufferPtr buf = makeEvbuffer();
    // Its chains end up in a socket's output buffer: keep file segments as
    // sendfile chains instead of letting libevent mmap them here.
    evbuffer_set_flags(buf.get(), EVBUFFER_FLAG_DRAINS_TO_FD);
    while (state_ == State::Streaming && pos_ < end_ && sink_->queued() < kClientHighWater) {
      BlockReader::Result r = reader_->read(pos_, std::min<uint64_t>(end_ - pos_, kReadChunk), buf.get());
      if (r.kind == BlockReader::Result::Kind::Wait) break;  // wake() follows
      if (r.kind == BlockReader::Result::Kind::Failed) return failed(r.reason, r.detail);
      pos_ += r.n;
      sink_->sendBody(buf.get());
    }
    if (state_ == State::Streaming && pos_ == end_) finish();
  }

  void finish() {
    state_ = State::Done;
    reader_->close();
    sink_->finish();
  }

  /// The store cannot take or give the bytes (full, read-only, failing):
  /// the rest of the response is streamed from the upstream uncached — the
  /// cache never makes a download fail (issue 9 #14). False when that is
  /// not possible (the head is out and the object has no validator to
  /// resume on safely): the caller fails the response (it closes short).
  bool bypass(const std::string& why) {
    const bool headsOut = state_ == State::Streaming;
    if (headsOut && info_.etag.empty() && info_.lastModified.empty()) return false;
    state_ = State::Done;
    reader_->close();
    c_.stats.cacheBypasses++;
    conf::Log::write(c_.stats.cacheBypasses == 1 ? conf::LogLevel::Warn : conf::LogLevel::Debug, "cache_bypassed",
                     "path=" + conf::logValue(req_.path) + " detail=" + conf::logValue(why) + " at=" +
                         std::to_string(headsOut ? pos_ : 0) +
                         " action=streamed_uncached hint=\"check the cache directory's free space and health\"");
    fallback_ = headsOut ? continueStreamJob(c_, req_, sink_, info_, answer_, pos_ - answer_.range.begin)
                         : makeStreamJob(c_, req_, sink_);
    return true;
  }

  Context& c_;
  Request req_;
  Sink* sink_;
  State state_ = State::Opening;
  std::unique_ptr<BlockReader> reader_;
  uint64_t pos_ = 0, end_ = 0;
  bool pumping_ = false, again_ = false;
  std::unique_ptr<Job> fallback_;
  ObjectInfo info_;                // what the head said (a bypass continues it)
  policy::RangeAnswer answer_;
};

void CacheJob::opened(const OpenResult& res) {
  if (state_ != State::Opening) return;
  if (res.uncacheable) {
    // No length from the upstream: nothing to cut into blocks; stream it.
    fallback_ = makeStreamJob(c_, req_, sink_);
    return;
  }
  if (res.reason == policy::Reason::CacheFailed && bypass(res.detail)) return;
  if (res.reason != policy::Reason::None) {
    state_ = State::Done;
    sink_->fail(res.reason, res.detail, retryAfterHeaders(res.retryAfterS));
    return;
  }
  const store::ObjectMeta& m = reader_->meta();
  ObjectInfo info{m.size, m.etag, m.lastModified, m.contentType};
  policy::WireRange wire = policy::parseRange(req_.range);
  if (!req_.ifRange.empty() && !policy::ifRangeAllows(req_.ifRange, m.etag, m.lastModified)) wire = {};
  policy::RangeAnswer a = policy::resolveRange(wire, m.size);
  if (a.kind == policy::RangeAnswer::Kind::Unsatisfiable) {
    Headers h = unsatisfiableHeaders(info, CacheStatus::Hit);
    h.push_back({"Content-Length", "0"});
    sink_->sendHeaders(416, h);
    return finish();
  }
  info_ = info;
  answer_ = a;
  CacheStatus cs = reader_->cacheStatus(a.range);
  sink_->sendHeaders(a.kind == policy::RangeAnswer::Kind::Partial ? 206 : 200, bodyHeaders(info, a, req_.path, cs));
  if (req_.head || a.range.size() == 0) return finish();
  pos_ = a.range.begin;
  end_ = a.range.end;
  state_ = State::Streaming;
  reader_->setRange(pos_, end_);
  pump();
}

}  // namespace

std::unique_ptr<Job> makeCacheJob(Context& c, const Request& r, Sink* s) {
  auto j = std::make_unique<CacheJob>(c, r, s);
  j->begin();
  return j;
}

}  // namespace slip::proxy
