// `alist`: an AList/OpenList server resolves paths to links.
//
// POST <url>/api/fs/link  Authorization: <token>  {"path": "<root + rest>"}
// → {"code":200,"message":"success","data":{"url":"...","header":{"Referer":["..."]}}}
// AList reports errors as HTTP 200 with code != 200: those are errors here too
// (404 when AList says the object is not found, 502 otherwise), with AList's
// message as the reason. A reply that is not that shape (replies.h checks
// every field's type) is a 502 naming the field; a header AList asks for
// that cannot be sent (CR/LF, control bytes, a framing header) a 502 naming
// the header.
#include <nlohmann/json.hpp>

#include <map>

#include "proxy/fetch/curl_multi.h"
#include "proxy/sources/listing.h"
#include "proxy/sources/replies.h"
#include "proxy/sources/source.h"

namespace slip::proxy {
namespace {

constexpr int64_t kDefaultAlistTtlMs = 5 * 60'000;  // AList does not report link expiry
constexpr size_t kMaxReply = 1 << 20;

class AlistSource : public Source {
 public:
  AlistSource(const conf::Mount& m, CurlMulti& multi, const conf::Server& s)
      : mount_(m), multi_(multi), server_(s), graveyard_(multi.base()) {
    api_ = m.url;
    while (!api_.empty() && api_.back() == '/') api_.pop_back();
    api_ += "/api/fs/link";
    root_ = m.root.empty() ? "/" : m.root;
    while (root_.size() > 1 && root_.back() == '/') root_.pop_back();
  }

  int64_t defaultTtlMs() const override {
    return mount_.linkTtlMs > 0 ? mount_.linkTtlMs : kDefaultAlistTtlMs;
  }

  void list(const std::string& rest, ListCb cb) override {
    std::string path = root_ == "/" ? rest : rest == "/" ? root_ : root_ + rest;
    lister_.list(path, std::move(cb));
  }
  int64_t listTtlMs() const override { return mount_.listTtlMs; }

  void resolve(const std::string& rest, const ClientInfo& client, ResolveCb cb) override {
    std::string path = root_ == "/" ? rest : root_ + rest;
    // AList's paths are JSON strings: UTF-8. Any other bytes name nothing there.
    if (!replies::validUtf8(path)) {
      ResolveResult out;
      out.reason = policy::Reason::NotFound;
      out.detail = "alist: the path is not UTF-8";
      cb(out);
      return;
    }
    auto owned = std::make_unique<Call>(this, std::move(cb));
    Call* call = owned.get();
    Transfer::Options o = apiCallOptions(multi_, server_, mount_.caFile);
    o.url = api_;
    o.postBody = replies::dumpJson(nlohmann::json{{"path", path}});
    o.headers.push_back({"Content-Type", "application/json"});
    o.headers.push_back({"Authorization", mount_.token});
    if (mount_.linkBind != conf::LinkBind::None && !client.userAgent.empty())
      o.headers.push_back({"User-Agent", client.userAgent});
    if (mount_.linkBind == conf::LinkBind::UaIp) {
      o.headers.push_back({"X-Forwarded-For", client.address});
      o.headers.push_back({"X-Real-IP", client.address});
    }
    call->transfer = std::make_unique<Transfer>(multi_, std::move(o), call);
    calls_[call] = std::move(owned);
    call->transfer->start();
  }

 private:
  struct Call : Transfer::Handler {
    AlistSource* src;
    ResolveCb cb;
    std::string body;
    std::unique_ptr<Transfer> transfer;
    Call(AlistSource* s, ResolveCb c) : src(s), cb(std::move(c)) {}
    bool onHeaders(Transfer&) override { return true; }
    size_t onData(Transfer&, const char* p, size_t n) override {
      if (body.size() + n > kMaxReply) return 0;
      body.append(p, n);
      return n;
    }
    void onDone(Transfer& t, const TransferResult& r) override {
      ResolveResult out = parse(t, r);
      ResolveCb done = std::move(cb);
      src->finished(this);  // freed later, from the loop: its onDone is on the stack
      done(out);
    }
    ResolveResult parse(Transfer& t, const TransferResult& r) {
      ResolveResult out;
      if (r.code != CURLE_OK) {
        out.reason = r.timedOut ? policy::Reason::UpstreamTimeout : policy::Reason::ResolveFailed;
        out.detail = "alist: " + r.error;
        return out;
      }
      if (t.status() != 200) {
        out.reason = policy::Reason::ResolveFailed;
        out.detail = "alist: HTTP status " + std::to_string(t.status());
        return out;
      }
      replies::AlistLink reply;
      if (replies::Problem p = replies::parseAlistLink(body, &reply)) {
        out.reason = p.kind == replies::Problem::Kind::Header ? policy::Reason::SourceBadHeader
                                                              : policy::Reason::SourceBadReply;
        out.detail = "alist: " + p.why;
        return out;
      }
      if (reply.code != 200) {
        std::string lower = reply.message;
        for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        out.reason = lower.find("not found") != std::string::npos ? policy::Reason::NotFound
                                                                   : policy::Reason::ResolveFailed;
        out.detail = "alist: code " + std::to_string(reply.code) + ": " + reply.message;
        return out;
      }
      out.link.url = std::move(reply.url);
      for (const auto& h : src->mount_.headers) out.link.headers.push_back({h.name, h.value});
      for (auto& [name, value] : reply.headers) out.link.headers.push_back({name, std::move(value)});
      return out;
    }
  };

  void finished(Call* c) { graveyard_.buryFrom(calls_, c); }

  const conf::Mount& mount_;
  CurlMulti& multi_;
  const conf::Server& server_;
  std::string api_;
  std::string root_;
  std::map<Call*, std::unique_ptr<Call>> calls_;  // in flight; cancelled with the source
  Graveyard graveyard_;
  AlistLister lister_{mount_, multi_, server_};  // listings in flight; cancelled with the source
};

}  // namespace

std::unique_ptr<Source> makeAlistSource(const conf::Mount& m, CurlMulti& multi,
                                        const conf::Server& s) {
  return std::make_unique<AlistSource>(m, multi, s);
}

}  // namespace slip::proxy
