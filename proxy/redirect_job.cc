// `redirect` delivery: a 302 to the upstream's link (resolved through the
// link cache, so client-bound and expiring links are handled as for proxying).
#include "proxy/engine.h"

namespace slip::proxy {
namespace {

/// `redirect`: 302 to the upstream's link.
class RedirectJob final : public Job {
 public:
  RedirectJob(Context& c, const Request& r, Sink* s) : c_(c), req_(r), sink_(s) {}

  void begin() {
    sink_->noteProgress(Sink::Progress::Resolving);
    Watch alive = life_.watch();
    c_.links.get(req_.mountId, req_.rest, {req_.client, req_.userAgent},
                 [this, alive](const ResolveResult& res) {
                   if (!alive || gone_) return;
                   if (res.reason != policy::Reason::None) {
                     sink_->fail(res.reason, res.detail);
                     return;
                   }
                   // Never a 302 without a Location the client can read.
                   if (auto why = policy::linkProblem(res.link.url, {}, true)) {
                     sink_->fail(policy::Reason::SourceBadLink, *why);
                     return;
                   }
                   Headers h = {{"Location", res.link.url},
                                {"Referrer-Policy", "no-referrer"},
                                {"Cache-Control", "no-store"},
                                {"Content-Length", "0"}};
                   sink_->sendHeaders(302, h);
                   sink_->finish();
                 });
  }
  void onWritable() override {}
  void onClientGone() override { gone_ = true; }

 private:
  Context& c_;
  Request req_;
  Sink* sink_;
  bool gone_ = false;
  Lifeline life_;  // link resolutions may answer after the job is gone
};

}  // namespace

std::unique_ptr<Job> makeRedirectJob(Context& c, const Request& r, Sink* s) {
  auto j = std::make_unique<RedirectJob>(c, r, s);
  j->begin();
  return j;
}

}  // namespace slip::proxy
