// The size of a file for a rule's min_size/max_size, before delivery is
// decided: the cache index first (no upstream traffic), else a 1-byte probe.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "proxy/engine.h"
#include "store/store.h"

namespace slip::proxy {
namespace {

class SizeJob final : public Job, public Transfer::Handler {
 public:
  using Done = std::function<void(std::optional<uint64_t>)>;
  SizeJob(Context& c, const Request& r, Done done) : c_(c), req_(r), done_(std::move(done)) {}

  void begin() {
    const conf::Mount& m = *c_.mountOf(req_)->m;
    if (m.source == conf::SourceType::Local) {
      std::string rel = req_.rest.substr(1);
      struct stat st{};
      if (fstatat(c_.mountOf(req_)->rootFd, rel.empty() ? "." : rel.c_str(), &st, 0) == 0 &&
          S_ISREG(st.st_mode))
        return report(static_cast<uint64_t>(st.st_size));
      return report(std::nullopt);
    }
    if (c_.store) {
      if (auto meta = c_.store->lookup(store::objectKey(m.name, req_.rest))) return report(meta->size);
    }
    Watch alive = life_.watch();
    c_.links.get(req_.mountId, req_.rest, {req_.client, req_.userAgent},
                 [this, alive](const ResolveResult& res) {
                   if (!alive || gone_) return;
                   if (res.reason != policy::Reason::None) return report(std::nullopt);
                   linkSerial_ = res.link.serial;
                   Transfer::Options o = c_.transferOptions(res.link, req_);
                   o.range = policy::upstreamRange(policy::ByteRange{0, 1});
                   xfer_ = std::make_unique<Transfer>(c_.multi, std::move(o), this);
                   c_.stats.upstreamRequests++;
                   xfer_->start();
                 });
  }

  void onWritable() override {}
  void onClientGone() override {
    gone_ = true;
    if (xfer_) xfer_->cancel();
  }

  bool onHeaders(Transfer& t) override {
    // bytes=0-0. Only an answer we would fetch from says the size: an
    // encoded body's Content-Range is not the object's (issue 9 #2), and
    // any failure is "no size" at once (the delivery that follows has its
    // own retries and errors).
    policy::UpstreamJudgement v = policy::classifyUpstream(policy::UpstreamAsk{}, t.answer(), c_.clock.wallSeconds());
    using V = policy::UpstreamVerdict;
    if (v.verdict == V::Ok || v.verdict == V::IgnoresRanges) size_ = v.total;
    return false;  // the headers are all we wanted
  }
  size_t onData(Transfer&, const char*, size_t) override { return 0; }
  void onDone(Transfer&, const TransferResult& r) override {
    if (policy::transportBlamesLink(r.failure))
      c_.links.invalidate(req_.mountId, req_.rest, {req_.client, req_.userAgent}, linkSerial_);
    if (!gone_) report(size_);
  }

 private:
  void report(std::optional<uint64_t> size) {
    if (reported_ || gone_) return;
    reported_ = true;
    done_(size);
  }

  Context& c_;
  Request req_;
  Done done_;
  std::optional<uint64_t> size_;
  uint64_t linkSerial_ = 0;
  std::unique_ptr<Transfer> xfer_;
  bool gone_ = false, reported_ = false;
  Lifeline life_;  // link resolutions may answer after the job is gone
};

}  // namespace

std::unique_ptr<Job> Engine::probeSize(const Request& req,
                                       std::function<void(std::optional<uint64_t>)> done) {
  auto j = std::make_unique<SizeJob>(impl_->ctx, impl_->bind(req), std::move(done));
  j->begin();
  return j;
}

}  // namespace slip::proxy
