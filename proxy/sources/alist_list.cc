// `alist` listings: AList/OpenList's POST /api/fs/list, page by page.
//
// POST <url>/api/fs/list  Authorization: <token>
//   {"path": "<root + rest>", "password": "", "page": N, "per_page": 100, "refresh": false}
// → {"code":200,"message":"success","data":{"content":[{"name","size","is_dir",
//    "modified","created","sign","thumb","type","hashinfo","hash_info"}, ...] | null,
//    "total":T, "readme", "header", "write", "provider"}}
//
// AList slices one listing into pages (server/handles/fsread.go,
// `pagination`): pages are asked for until `total` entries arrived or a page
// comes back empty (the folder shrank meanwhile); a name seen twice (it
// grew) counts once. `refresh: false` never makes AList re-list its storage
// for us. Errors arrive as HTTP 200 with code != 200, as for links. The
// reply is read by replies::parseAlistList (proxy/sources/replies.h).
#include <nlohmann/json.hpp>

#include "proxy/fetch/curl_multi.h"
#include "proxy/sources/listing.h"
#include "proxy/sources/replies.h"

namespace slip::proxy {
namespace {

using json = nlohmann::json;
using policy::Reason;

constexpr size_t kMaxReply = 16 << 20;
constexpr int kMaxPages = static_cast<int>(kMaxListEntries / kAlistPerPage) + 1;

AlistListPage pageFailure(Reason r, std::string detail) {
  AlistListPage p;
  p.reason = r;
  p.detail = std::move(detail);
  return p;
}

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

}  // namespace

/// One listing: asks page after page, then answers once and hands itself
/// back to its AlistLister (freed from the loop: its onDone is on the stack).
struct AlistLister::Call final : Transfer::Handler {
  AlistLister& owner;
  const conf::Mount& mount;
  CurlMulti& multi;
  const conf::Server& server;
  std::string path;
  ListCb cb;
  int page = 1;
  std::map<std::string, DirEntry> got;  // by name: a page boundary that moved is harmless
  std::string body;
  std::unique_ptr<Transfer> xfer;

  Call(AlistLister& own, std::string p, ListCb c)
      : owner(own), mount(own.mount_), multi(own.multi_), server(own.server_), path(std::move(p)),
        cb(std::move(c)) {}

  void ask() {
    std::string api = mount.url;
    while (!api.empty() && api.back() == '/') api.pop_back();
    Transfer::Options o = apiCallOptions(multi, server, mount.caFile);
    o.url = api + "/api/fs/list";
    o.postBody = replies::dumpJson(json{
        {"path", path}, {"password", ""}, {"page", page}, {"per_page", kAlistPerPage}, {"refresh", false}});
    o.headers.push_back({"Content-Type", "application/json"});
    o.headers.push_back({"Authorization", mount.token});
    body.clear();
    xfer = std::make_unique<Transfer>(multi, std::move(o), this);  // frees the last page's (from its onDone: allowed)
    xfer->start();
  }

  bool onHeaders(Transfer&) override { return true; }
  size_t onData(Transfer&, const char* p, size_t n) override {
    if (body.size() + n > kMaxReply) return 0;
    body.append(p, n);
    return n;
  }

  void onDone(Transfer& t, const TransferResult& r) override {
    AlistListPage pg;
    if (r.code != CURLE_OK)
      pg = pageFailure(r.timedOut ? Reason::UpstreamTimeout : Reason::ResolveFailed,
                       "alist list: " + r.error);
    else if (t.status() != 200)
      pg = pageFailure(Reason::ResolveFailed,
                       "alist list: HTTP status " + std::to_string(t.status()));
    else
      pg = parseAlistListPage(body);
    if (pg.reason != Reason::None) return finish(pg.reason, pg.detail);
    size_t before = got.size();
    for (DirEntry& e : pg.entries) got.try_emplace(e.name, std::move(e));
    if (got.size() > kMaxListEntries)
      return finish(Reason::ResolveFailed, "alist list: folder has more than " +
                                               std::to_string(kMaxListEntries) + " entries");
    bool more =
        pg.entries.size() > 0 && static_cast<int64_t>(got.size()) < pg.total && got.size() > before;
    if (more && page < kMaxPages) {
      page++;
      ask();
      return;
    }
    finish(Reason::None, "");
  }

  void finish(Reason reason, const std::string& detail) {
    ListResult out;
    out.reason = reason;
    out.detail = detail;
    if (reason == Reason::None) {
      auto entries = std::make_shared<DirEntries>();
      for (auto& [name, e] : got) entries->push_back(std::move(e));
      out.entries = entries;
    }
    ListCb done = std::move(cb);
    owner.graveyard_.buryFrom(owner.calls_, this);
    done(out);
  }
};

AlistListPage parseAlistListPage(const std::string& body) {
  replies::AlistList reply;
  if (replies::Problem p = replies::parseAlistList(body, &reply))
    return pageFailure(Reason::SourceBadReply, "alist list: " + p.why);
  if (reply.code != 200) {
    std::string l = lower(reply.message);
    Reason r = l.find("not found") != std::string::npos      ? Reason::NotFound
               : l.find("not a folder") != std::string::npos ? Reason::NotAFolder
                                                             : Reason::ResolveFailed;
    return pageFailure(r, "alist list: code " + std::to_string(reply.code) + ": " + reply.message);
  }
  AlistListPage out;
  out.total = reply.total;
  for (replies::AlistItem& item : reply.items) {
    DirEntry e;
    e.name = std::move(item.name);
    e.folder = item.folder;
    e.size = item.size;
    e.mtimeMs = item.modifiedMs.value_or(0);
    if (!item.hash.empty()) e.etag = "\"" + item.hash + "\"";
    out.entries.push_back(std::move(e));
  }
  return out;
}

AlistLister::AlistLister(const conf::Mount& m, CurlMulti& multi, const conf::Server& s)
    : mount_(m), multi_(multi), server_(s), graveyard_(multi.base()) {}

AlistLister::~AlistLister() = default;

void AlistLister::list(const std::string& path, ListCb cb) {
  // AList's paths are JSON strings: UTF-8. Any other bytes name nothing there.
  if (!replies::validUtf8(path)) return cb(listFailure(Reason::NotFound, "alist list: the path is not UTF-8"));
  auto owned = std::make_unique<Call>(*this, path, std::move(cb));
  Call* c = owned.get();
  calls_[c] = std::move(owned);
  c->ask();
}

}  // namespace slip::proxy
