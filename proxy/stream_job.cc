// Proxy delivery without the cache (`cache = off`): one upstream transfer per
// client request, the client's single range forwarded, bytes streamed as they
// arrive with pull-based backpressure (the transfer pauses while the client's
// buffer is above the high-water mark and resumes when it drains).
#include <event2/buffer.h>

#include "proxy/engine.h"

namespace slip::proxy {
namespace {

class StreamJob final : public Job, public Transfer::Handler {
 public:
  enum class State { Resolving, AwaitingHeaders, Streaming, Done, Gone };

  StreamJob(Context& c, const Request& r, Sink* s) : c_(c), req_(r), sink_(s) {
    wire_ = policy::parseRange(req_.range);
  }


  void begin() {
    if (sink_) sink_->noteProgress(Sink::Progress::Resolving);
    ClientInfo ci{req_.client, req_.userAgent};
    Watch alive = life_.watch();
    c_.links.get(req_.mountId, req_.rest, ci, [this, alive](const ResolveResult& res) {
      if (!alive || state_ != State::Resolving) return;
      if (res.reason != policy::Reason::None) {
        finishWith(res.reason, res.detail);
        return;
      }
      startTransfer(res.link);
    });
  }

  void onWritable() override {
    if (xfer_ && xfer_->paused()) xfer_->resume();
  }

  int upstreamConnections() const override { return xfer_ ? 1 : 0; }

  void onClientGone() override {
    state_ = State::Gone;
    sink_ = nullptr;
    if (xfer_) xfer_->cancel();
  }

  // ---- Transfer::Handler

  bool onHeaders(Transfer& t) override {
    if (state_ != State::AwaitingHeaders) return false;
    ObjectInfo info;
    info.etag = t.header("etag");
    info.lastModified = t.header("last-modified");
    info.contentType = t.header("content-type");
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
        info.size = *v.total;
        sendUnsatisfiable(info);
        return false;
      case V::Gone:
        return failBeforeHeaders(policy::Reason::NotFound, v.detail);
      case V::Denied:
        if (!reResolved_) {
          relink_ = true;  // onDone resolves the link again and retries once
          return false;
        }
        return failBeforeHeaders(policy::Reason::UpstreamDenied, v.detail + " (also after re-resolving it)");
      case V::BadAnswer:
        return failBeforeHeaders(policy::Reason::UpstreamBadResponse, v.detail);
      default:  // no retries on this path: the client's request fails
        return failBeforeHeaders(policy::Reason::UpstreamStatus, v.detail);
    }
    if (t.status() == 206) {
      info.size = *v.total;
      answer_ = {policy::RangeAnswer::Kind::Partial, v.range};
      upstreamOffset_ = v.range.begin;
      upstreamEnd_ = v.range.end;
    } else {
      upstreamOffset_ = 0;
      upstreamEnd_ = v.total ? *v.total : UINT64_MAX;
      if (v.total) info.size = *v.total;
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
        sendUnsatisfiable(info);
        return false;
      }
    }

    const std::string& path = req_.path;
    Headers h = bodyHeaders(info, answer_, path, CacheStatus::Miss);
    if (unknownLength_)  // chunked to the client
      std::erase_if(h, [](const Header& x) { return x.name == "Content-Length"; });
    const int status = answer_.kind == policy::RangeAnswer::Kind::Partial ? 206 : 200;
    sink_->sendHeaders(status, h);
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
    uint64_t from = upstreamOffset_, to = upstreamOffset_ + n;
    uint64_t b = std::max(from, answer_.range.begin), en = std::min(to, answer_.range.end);
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
    if (relink_) {
      // The upstream refused the link (expired, rotated): forget it and ask
      // the source once more; the client has seen nothing yet.
      relink_ = false;
      reResolved_ = true;
      conf::Log::write(conf::LogLevel::Info, "link_refused",
                       "path=" + conf::logValue(req_.path) + " serial=" +
                           std::to_string(linkSerial_) + " action=re_resolve");
      c_.links.invalidate(req_.mountId, req_.rest, {req_.client, req_.userAgent}, linkSerial_);
      state_ = State::Resolving;
      c_.graveyard.bury(std::move(xfer_));  // we are inside its callback
      begin();
      return;
    }
    if (r.code == CURLE_OK && (unknownLength_ || sent_ == answer_.range.size())) {
      complete();
      return;
    }
    if (r.code != CURLE_OK) c_.stats.upstreamErrors++;
    if (!sink_->headersSent()) {
      finishWith(r.timedOut ? policy::Reason::UpstreamTimeout : policy::Reason::UpstreamConnect,
                 r.error);
    } else {
      finishWith(policy::Reason::UpstreamReset,
                 r.code == CURLE_OK ? "upstream body ended early" : r.error);
    }
  }

 private:
  void startTransfer(const Link& link) {
    Transfer::Options o = c_.transferOptions(link, req_);
    o.range = policy::upstreamRange(wire_);  // "" for no range or several
    if (!o.range.empty() && !req_.ifRange.empty()) o.headers.push_back({"If-Range", req_.ifRange});
    state_ = State::AwaitingHeaders;
    if (sink_) sink_->noteProgress(Sink::Progress::Opening);
    linkSerial_ = link.serial;
    xfer_ = std::make_unique<Transfer>(c_.multi, std::move(o), this);
    c_.stats.upstreamRequests++;
    xfer_->start();
  }

  bool failBeforeHeaders(policy::Reason r, const std::string& detail) {
    finishWith(r, detail);
    return false;
  }

  void sendUnsatisfiable(const ObjectInfo& info) {
    Headers h = unsatisfiableHeaders(info, CacheStatus::Miss);
    h.push_back({"Content-Length", "0"});
    sink_->sendHeaders(416, h);
    complete();
  }

  void complete() {
    if (state_ == State::Done || state_ == State::Gone) return;
    state_ = State::Done;
    sink_->finish();
  }

  void finishWith(policy::Reason r, const std::string& detail) {
    if (state_ == State::Done || state_ == State::Gone) return;
    state_ = State::Done;
    sink_->fail(r, detail);
  }

  Context& c_;
  Request req_;
  Sink* sink_;
  State state_ = State::Resolving;
  policy::WireRange wire_;
  policy::RangeAnswer answer_;
  bool unknownLength_ = false;
  uint64_t upstreamOffset_ = 0;  // object offset of the next upstream byte
  uint64_t upstreamEnd_ = 0;     // object offset where the upstream body ends
  uint64_t sent_ = 0;
  std::unique_ptr<Transfer> xfer_;
  uint64_t linkSerial_ = 0;
  bool relink_ = false, reResolved_ = false;
  Lifeline life_;  // link resolutions may answer after the job is gone
};

}  // namespace

std::unique_ptr<Job> makeStreamJob(Context& c, const Request& r, Sink* s) {
  auto j = std::make_unique<StreamJob>(c, r, s);
  j->begin();
  return j;
}

}  // namespace slip::proxy
