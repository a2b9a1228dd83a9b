// Warm hits on a worker thread (issue 14): the decision whether a worker
// may answer a request itself, and the job that answers it from the store.
//
// A worker answers only a GET/HEAD on a download route whose mount, sign
// and rules say "proxy through the cache", whose object version is in the
// index and fresh (no revalidation due), and whose every requested block is
// listed. The same checks the main loop makes (deliver.cc, Fill::open,
// CacheJob::opened) are made here on read-only state: the configuration
// generation, the rules (pure), the router (never changed after start) and
// the store's WarmReader. Anything else, and anything that fails before the
// response head (a block evicted meanwhile, a page that fails its checksum),
// goes to the main loop untouched.
#include "src/warm.h"

#include <event2/buffer.h>
#include <openssl/crypto.h>

#include "conf/clock.h"
#include "src/front.h"
#include "store/store.h"

namespace slip {
namespace {

using policy::Reason;

bool selfRequest(const http::Request& r, const FrontShared& sh) {
  const std::string* v = r.headers.find(sh.selfName);
  return v && v->size() == sh.selfValue.size() &&
         CRYPTO_memcmp(v->data(), sh.selfValue.data(), v->size()) == 0;
}

/// Route, mount, sign and rules: the decision deliver.cc would make, or
/// false when it would not be a cached proxy delivery.
bool decideWarm(const http::Request& r, const Generation& g, const FrontShared& sh, const std::string& peer,
                WarmPlan* p) {
  if (r.error != Reason::None || !r.body.empty() || (r.method != "GET" && r.method != "HEAD")) return false;
  if (r.target.empty() || r.target.front() != '/' || selfRequest(r, sh)) return false;
  std::string_view raw, query;
  policy::splitTarget(r.target, &raw, &query);
  policy::PathResult pr = policy::normalizePath(raw);
  if (pr.reason != Reason::None) return false;
  const Route* rt = sh.router.find(pr.path);
  if (!rt || !rt->download || rt->admin) return false;
  auto route = static_cast<policy::Route>(rt->kind);
  const conf::Config& cfg = *g.cfg;
  std::string virt = route == policy::Route::Edge ? pr.path : pr.path.substr(2);
  policy::MountMatch mm = policy::matchMount(cfg.mounts, virt);
  if (mm.index < 0) return false;
  const conf::Mount& m = cfg.mounts[static_cast<size_t>(mm.index)];
  if (m.source == conf::SourceType::Local) return false;
  if (!cfg.server.signSecret.empty() && (route == policy::Route::Download || route == policy::Route::Edge) &&
      !policy::anyCidrContains(cfg.server.signExempt, peer)) {
    std::string sign = policy::queryParam(query, "sign").value_or("");
    if (policy::verifySign(cfg.server.signSecret, virt, sign, sh.clock.wallSeconds()) != policy::SignCheck::Ok)
      return false;  // the main loop answers the refusal
  }
  policy::RequestFacts facts;
  facts.route = route;
  facts.method = r.method;
  facts.path = virt;
  facts.mountIndex = mm.index;
  facts.client = peer;
  facts.userAgent = std::string(r.headers.get("User-Agent"));
  policy::Decision d = g.rules.decide(cfg, facts, g.setup->traits);
  if (d.needsSize || !d.cache || d.delivery == conf::Delivery::Deny || d.delivery == conf::Delivery::ProxyUrl ||
      d.delivery == conf::Delivery::Redirect)
    return false;
  p->mount = mm.index;
  p->path = std::move(pr.path);
  p->virt = virt;
  p->rest = mm.rest;
  p->delivery = conf::deliveryName(d.delivery);
  p->head = r.isHead();
  p->key = store::objectKey(m.name, mm.rest);
  p->revalidateMs = m.revalidateMs;
  return true;
}

}  // namespace

bool planWarm(const http::Request& r, const Generation& g, const FrontShared& sh, const std::string& peer,
              store::WarmReader& rd, WarmPlan* p) {
  if (!sh.store || !decideWarm(r, g, sh, peer, p)) return false;
  std::optional<store::ObjectMeta> meta = rd.lookup(p->key);
  if (!meta || meta->blockSize == 0 || !policy::isFresh(meta->validatedMs, p->revalidateMs, sh.clock.wallMs()))
    return false;
  p->meta = std::move(*meta);
  const store::ObjectMeta& m = p->meta;
  policy::WireRange wire = policy::parseRange(std::string(r.headers.get("Range")));
  std::string ifRange(r.headers.get("If-Range"));
  if (!ifRange.empty() && !policy::ifRangeAllows(ifRange, m.etag, m.lastModified)) wire = {};
  p->answer = policy::resolveRange(wire, m.size);
  if (p->answer.kind == policy::RangeAnswer::Kind::Unsatisfiable) return false;
  const policy::ByteRange& br = p->answer.range;
  if (br.size() > 0) {
    uint32_t first = static_cast<uint32_t>(br.begin / m.blockSize);
    uint32_t last = static_cast<uint32_t>((br.end - 1) / m.blockSize);
    if (!rd.allPresent(p->key, m.generation, first, last)) return false;
  }
  p->first = makeEvbuffer();
  if (p->head || br.size() == 0) return true;
  // The first bytes are read before anything is answered: a block that went
  // meanwhile, or a page that fails its checksum, still hands over cleanly.
  evbuffer_set_flags(p->first.get(), EVBUFFER_FLAG_DRAINS_TO_FD);
  uint32_t idx = static_cast<uint32_t>(br.begin / m.blockSize);
  uint64_t off = br.begin - m.blockBegin(idx);
  uint64_t n = std::min<uint64_t>({br.size(), proxy::kClientHighWater / 2, m.blockLength(idx) - off});
  if (rd.read(p->key, m, idx, off, n, p->first.get()) != store::ReadResult::Ok) return false;
  p->pos = br.begin + n;
  // The rest must be verified already (by any thread): a page that has not
  // been checked since the file last changed could fail its checksum after
  // the head is out, and only the main loop can then fetch it again without
  // cutting the response short. It verifies them, and the next hit is ours.
  return rd.verified(p->key, m, p->pos, br.end);
}

namespace {

constexpr uint64_t kWarmChunk = 128 * 1024;  // as CacheJob's steps

/// Streams a planned warm hit into its Exchange, one step of at most a
/// block's remainder while the client's buffer is under the high-water mark.
/// A block that is missing when its turn comes (evicted or purged after the
/// plan) ends the response short — the client sees a visibly short body,
/// never other bytes; its retry goes to the main loop, which fetches it.
class WarmJob final : public proxy::Job {
 public:
  WarmJob(WarmPlan p, store::WarmReader& rd, proxy::Sink* s) : p_(std::move(p)), rd_(rd), sink_(s) {}

  void begin() {
    const store::ObjectMeta& m = p_.meta;
    bool partial = p_.answer.kind == policy::RangeAnswer::Kind::Partial;
    sink_->sendHeaders(partial ? 206 : 200,
                       proxy::hitHeaders(m.size, m.etag, m.lastModified, m.contentType, p_.answer, p_.virt));
    if (p_.head || p_.answer.range.size() == 0) return end();
    sink_->sendBody(p_.first.get());
    pump();
  }
  void onWritable() override { pump(); }
  void onClientGone() override {
    done_ = true;
    sink_ = nullptr;
  }

 private:
  void end() {
    done_ = true;
    sink_->finish();
  }
  void pump() {
    if (done_) return;
    const store::ObjectMeta& m = p_.meta;
    const uint64_t stop = p_.answer.range.end;
    EvbufferPtr buf = makeEvbuffer();
    evbuffer_set_flags(buf.get(), EVBUFFER_FLAG_DRAINS_TO_FD);
    while (p_.pos < stop && sink_->queued() < proxy::kClientHighWater) {
      uint32_t idx = static_cast<uint32_t>(p_.pos / m.blockSize);
      uint64_t off = p_.pos - m.blockBegin(idx);
      uint64_t n = std::min<uint64_t>({stop - p_.pos, kWarmChunk, m.blockLength(idx) - off});
      store::ReadResult r = rd_.read(p_.key, m, idx, off, n, buf.get());
      if (r != store::ReadResult::Ok) {
        done_ = true;
        Reason why = r == store::ReadResult::Missing ? Reason::Purged : Reason::CacheFailed;
        return sink_->fail(why, "block " + std::to_string(idx) + " left the cache while a worker served it");
      }
      p_.pos += n;
      sink_->sendBody(buf.get());
      if (done_) return;
    }
    if (p_.pos >= stop) end();
  }

  WarmPlan p_;
  store::WarmReader& rd_;
  proxy::Sink* sink_;
  bool done_ = false;
};

}  // namespace

std::unique_ptr<proxy::Job> startWarm(WarmPlan plan, store::WarmReader& rd, proxy::Sink* sink) {
  auto j = std::make_unique<WarmJob>(std::move(plan), rd, sink);
  j->begin();
  return j;
}

}  // namespace slip
