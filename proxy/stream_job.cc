// Proxy delivery without the cache (`cache = off`): one upstream transfer per
// client request, the client's single range forwarded, bytes streamed as they
// arrive with pull-based backpressure (the transfer pauses while the client's
// buffer is above the high-water mark and resumes when it drains).
//
// Failures follow the one decision every path makes (policy::retryDecision):
// before the headers a retryable failure (timeout, reset, 429/503/5xx within
// the wait bound) is asked again and a permanent one is a 502 at once; a
// busy upstream that wants a longer wait is a 503 with its Retry-After. After
// the headers a dropped or trickling body resumes from the byte reached with
// `If-Range` on the validator the first answer carried (only a 206 of the
// same version continues it); without a validator, or when retries run out,
// the connection is closed — a short body is never presented as complete.
#include <event2/buffer.h>

#include "proxy/engine.h"

namespace slip::proxy {
namespace {

class StreamJob final : public Job, public Transfer::Handler {
 public:
  enum class State { Resolving, AwaitingHeaders, Streaming, Backoff, Done, Gone };

  StreamJob(Context& c, const Request& r, Sink* s)
      : c_(c), req_(r), sink_(s), retryTimer_(c.base, [this] { retry(); }) {
    wire_ = policy::parseRange(req_.range);
  }

  /// Takes over a response whose head is out and of whose range `sent`
  /// bytes were delivered (a cache job whose store failed): the rest is
  /// asked with If-Range on the object's validator, like a resume.
  void continueFrom(const ObjectInfo& info, const policy::RangeAnswer& answer, uint64_t sent) {
    info_ = info;
    answer_ = answer;
    sent_ = sent;
    upstreamEnd_ = answer.range.end;
  }

  void begin() {
    if (sink_) sink_->noteProgress(Sink::Progress::Resolving);
    state_ = State::Resolving;
    ClientInfo ci{req_.client, req_.userAgent};
    Watch alive = life_.watch();
    c_.links.get(req_.mountId, req_.rest, ci, [this, alive](const ResolveResult& res) {
      if (!alive || state_ != State::Resolving) return;
      if (res.reason != policy::Reason::None) {
        finishWith(res.reason, res.detail);
        return;
      }
      link_ = res.link;
      startTransfer();
    });
  }

  void onWritable() override {
    if (xfer_ && xfer_->paused()) xfer_->resume();
  }

  int upstreamConnections() const override { return xfer_ ? 1 : 0; }

  void onClientGone() override {
    state_ = State::Gone;
    sink_ = nullptr;
    retryTimer_.cancel();
    if (xfer_) xfer_->cancel();
  }

  // ---- Transfer::Handler

  bool onHeaders(Transfer& t) override {
    if (state_ != State::AwaitingHeaders) return false;
    if (resuming_) return resumeHeaders(t);
    info_.etag = t.header("etag");
    info_.lastModified = t.header("last-modified");
    info_.contentType = t.header("content-type");
    policy::UpstreamAsk ask;
    ask.kind = policy::UpstreamAsk::Kind::Stream;
    ask.wire = wire_;
    policy::UpstreamJudgement v = policy::classifyUpstream(ask, t.answer(), c_.clock.wallSeconds());
    using V = policy::UpstreamVerdict;
    switch (v.verdict) {
      case V::Ok:
      case V::IgnoresRanges:
        break;
      case V::Unsatisfiable:
        info_.size = *v.total;
        sendUnsatisfiable();
        return false;
      case V::Gone:
        return failBeforeHeaders(policy::Reason::NotFound, v.detail);
      case V::Denied:
        if (!reResolved_) {
          relink_ = true;  // onDone resolves the link again and retries once
          return false;
        }
        return failBeforeHeaders(policy::Reason::UpstreamDenied, v.detail + " (also after re-resolving it)");
      case V::Changed:
        return failBeforeHeaders(policy::Reason::UpstreamChanged, v.detail);
      default:  // busy, server error, bad status or answer: onDone decides
        failure_ = policy::fetchFailure(v);
        detail_ = v.detail;
        return false;
    }
    if (!sendHead(t, v)) return false;
    if (req_.head || answer_.range.size() == 0) {
      complete();
      return false;  // no body wanted: stop the upstream transfer
    }
    state_ = State::Streaming;
    return true;
  }

  size_t onData(Transfer&, const char* p, size_t n) override {
    if (state_ != State::Streaming) return 0;
    if (sink_->queued() >= kClientHighWater) return Transfer::kPause;
    // Deliver [next, end) of what this chunk carries: a 200 to a ranged
    // request is cut down, a resumed body continues where the client is.
    const uint64_t next = answer_.range.begin + sent_;
    uint64_t from = upstreamOffset_, to = upstreamOffset_ + n;
    uint64_t b = std::max(from, next), en = std::min(to, answer_.range.end);
    upstreamOffset_ = to;
    sink_->noteUpstreamBytes(n);
    c_.stats.upstreamBytes += n;
    if (b < en) {
      EvbufferPtr buf = makeEvbuffer();
      evbuffer_add(buf.get(), p + (b - from), en - b);
      sink_->sendBody(buf.get());
      sent_ += en - b;
    }
    if (!unknownLength_ && sent_ == answer_.range.size()) {
      complete();
      // Let a body that ends here finish (the connection stays reusable);
      // cut one that would go on (an upstream that ignored our Range).
      return to >= upstreamEnd_ ? n : 0;
    }
    return n;
  }

  void onDone(Transfer&, const TransferResult& r) override {
    if (state_ == State::Done || state_ == State::Gone) return;
    c_.graveyard.bury(std::move(xfer_));  // we are inside its callback
    if (relink_) {
      // The upstream refused the link (expired, rotated): forget it and ask
      // the source once more; the client has seen nothing yet.
      relink_ = false;
      reResolved_ = true;
      conf::Log::write(conf::LogLevel::Info, "link_refused",
                       "path=" + conf::logValue(req_.path) + " serial=" + std::to_string(link_.serial) +
                           " action=re_resolve");
      c_.links.invalidate(req_.mountId, req_.rest, {req_.client, req_.userAgent}, link_.serial);
      begin();
      return;
    }
    if (r.code == CURLE_OK && !failure_ && (unknownLength_ || sent_ == answer_.range.size())) {
      complete();
      return;
    }
    if (resumeRefused_) return finishWith(policy::Reason::UpstreamChanged, detail_);
    c_.stats.upstreamErrors++;
    auto t = r.failure == policy::TransportFailure::None ? policy::TransportFailure::Other : r.failure;
    policy::FetchFailure f = failure_ ? *failure_ : policy::fetchFailure(t);
    std::string detail = !detail_.empty() ? detail_ : r.code != CURLE_OK ? r.error : "upstream body ended early";
    if (!failure_ && policy::transportBlamesLink(r.failure))
      c_.links.invalidate(req_.mountId, req_.rest, {req_.client, req_.userAgent}, link_.serial);
    int64_t now = c_.clock.monoMs();
    if (attempts_ == 0 || sent_ > sentAtStart_) firstFailMs_ = now;  // progress restarts the bound
    policy::RetryDecision d = policy::retryDecision(f, ++attempts_, now - firstFailMs_);
    // After the headers only a body that can be resumed safely is retried.
    const bool resumable = !sink_->headersSent() ||
                           (!unknownLength_ && (!info_.etag.empty() || !info_.lastModified.empty()));
    if (!d.retry || !resumable) {
      if (sink_->headersSent()) return finishWith(policy::Reason::UpstreamReset, detail);
      return finishWith(d.reason, detail, retryAfterHeaders(d.retryAfterS));
    }
    conf::Log::write(conf::LogLevel::Info, "stream_retry",
                     "path=" + conf::logValue(req_.path) + " from=" + std::to_string(answer_.range.begin + sent_) +
                         " attempt=" + std::to_string(attempts_) + " delay_ms=" + std::to_string(d.delayMs) +
                         " cause=" + conf::logValue(detail));
    c_.stats.retries++;
    state_ = State::Backoff;
    retryTimer_.armMs(d.delayMs);
  }

 private:
  /// Sends the client's head for the first answer; false when it was a 416.
  bool sendHead(Transfer& t, const policy::UpstreamJudgement& v) {
    using V = policy::UpstreamVerdict;
    if (t.status() == 206) {
      info_.size = *v.total;
      answer_ = {policy::RangeAnswer::Kind::Partial, v.range};
      upstreamOffset_ = v.range.begin;
      upstreamEnd_ = v.range.end;
    } else {
      upstreamOffset_ = 0;
      upstreamEnd_ = v.total ? *v.total : UINT64_MAX;
      if (v.total) info_.size = *v.total;
      if (v.verdict == V::IgnoresRanges && v.total && req_.ifRange.empty()) {
        // The upstream ignored Range: cut the client's range out of the stream.
        answer_ = policy::resolveRange(wire_, *v.total);
      } else if (v.total) {
        answer_ = {policy::RangeAnswer::Kind::Full, {0, *v.total}};
      } else {
        unknownLength_ = true;
        answer_ = {policy::RangeAnswer::Kind::Full, {0, UINT64_MAX}};
      }
      if (answer_.kind == policy::RangeAnswer::Kind::Unsatisfiable) {
        sendUnsatisfiable();
        return false;
      }
    }
    Headers h = bodyHeaders(info_, answer_, req_.path, CacheStatus::Miss);
    if (unknownLength_)  // chunked to the client
      std::erase_if(h, [](const Header& x) { return x.name == "Content-Length"; });
    const int status = answer_.kind == policy::RangeAnswer::Kind::Partial ? 206 : 200;
    sink_->sendHeaders(status, h);
    return true;
  }

  /// The answer to a resume: only the rest of the same version continues.
  bool resumeHeaders(Transfer& t) {
    policy::UpstreamAsk ask;
    ask.kind = policy::UpstreamAsk::Kind::Piece;
    ask.range = {answer_.range.begin + sent_, answer_.range.end};
    ask.size = info_.size;
    ask.etag = info_.etag;
    policy::UpstreamJudgement v = policy::classifyUpstream(ask, t.answer(), c_.clock.wallSeconds());
    using V = policy::UpstreamVerdict;
    if (v.verdict == V::Ok && t.status() == 206) {
      upstreamOffset_ = v.range.begin;
      upstreamEnd_ = v.range.end;
      state_ = State::Streaming;
      return true;
    }
    detail_ = "resuming at " + std::to_string(ask.range.begin) + ": " + v.detail;
    if (v.verdict == V::Busy || v.verdict == V::ServerError || v.verdict == V::BadAnswer)
      failure_ = policy::fetchFailure(v);  // may be retried
    else
      resumeRefused_ = true;  // a 200 (If-Range failed), another version, gone, refused: close
    return false;
  }

  void startTransfer() {
    Transfer::Options o = c_.transferOptions(link_, req_);
    resuming_ = sink_ && sink_->headersSent();
    if (resuming_) {
      o.range = policy::upstreamRange(policy::ByteRange{answer_.range.begin + sent_, answer_.range.end});
      // If-Range needs a strong validator: a weak ETag only when there is nothing else.
      bool etag = !info_.etag.empty() && (!info_.etag.starts_with("W/") || info_.lastModified.empty());
      o.headers.push_back({"If-Range", etag ? info_.etag : info_.lastModified});
    } else {
      o.range = policy::upstreamRange(wire_);  // "" for no range or several
      if (!o.range.empty() && !req_.ifRange.empty()) o.headers.push_back({"If-Range", req_.ifRange});
    }
    state_ = State::AwaitingHeaders;
    failure_.reset();
    detail_.clear();
    sentAtStart_ = sent_;
    if (sink_ && !resuming_) sink_->noteProgress(Sink::Progress::Opening);
    xfer_ = std::make_unique<Transfer>(c_.multi, std::move(o), this);
    c_.stats.upstreamRequests++;
    xfer_->start();
  }

  /// The backoff ended: ask again (resolving first when the link was forgotten).
  void retry() {
    if (state_ != State::Backoff) return;
    if (linkUsable(link_, c_.clock.wallMs())) {
      startTransfer();
      return;
    }
    begin();
  }

  bool failBeforeHeaders(policy::Reason r, const std::string& detail) {
    finishWith(r, detail);
    return false;
  }

  void sendUnsatisfiable() {
    Headers h = unsatisfiableHeaders(info_, CacheStatus::Miss);
    h.push_back({"Content-Length", "0"});
    sink_->sendHeaders(416, h);
    complete();
  }

  void complete() {
    if (state_ == State::Done || state_ == State::Gone) return;
    state_ = State::Done;
    sink_->finish();
  }

  void finishWith(policy::Reason r, const std::string& detail, const Headers& extra = {}) {
    if (state_ == State::Done || state_ == State::Gone) return;
    state_ = State::Done;
    sink_->fail(r, detail, extra);
  }

  Context& c_;
  Request req_;
  Sink* sink_;
  State state_ = State::Resolving;
  policy::WireRange wire_;
  policy::RangeAnswer answer_;
  ObjectInfo info_;
  bool unknownLength_ = false;
  uint64_t upstreamOffset_ = 0;  // object offset of the next upstream byte
  uint64_t upstreamEnd_ = 0;     // object offset where the upstream body ends
  uint64_t sent_ = 0;            // bytes of answer_.range delivered to the client
  std::unique_ptr<Transfer> xfer_;
  Link link_;
  bool relink_ = false, reResolved_ = false;
  bool resuming_ = false;        // the transfer continues a body whose head is out
  bool resumeRefused_ = false;   // the resume found another version: close
  std::optional<policy::FetchFailure> failure_;  // what the answer said, for onDone
  std::string detail_;
  int attempts_ = 0;
  int64_t firstFailMs_ = 0;      // monotonic: first failure since the last progress
  uint64_t sentAtStart_ = 0;     // sent_ when the current attempt started
  Timer retryTimer_;
  Lifeline life_;  // link resolutions may answer after the job is gone
};

}  // namespace

std::unique_ptr<Job> makeStreamJob(Context& c, const Request& r, Sink* s) {
  auto j = std::make_unique<StreamJob>(c, r, s);
  j->begin();
  return j;
}

std::unique_ptr<Job> continueStreamJob(Context& c, const Request& r, Sink* s, const ObjectInfo& info,
                                       const policy::RangeAnswer& answer, uint64_t sent) {
  auto j = std::make_unique<StreamJob>(c, r, s);
  j->continueFrom(info, answer, sent);
  j->begin();
  return j;
}

}  // namespace slip::proxy
