// `aliyundrive_open`: paths resolved through the Aliyundrive Open API.
//
//   token    POST <token url> {client_id, client_secret, grant_type, refresh_token}
//            (in the helper process, see aliyun_token.cc)
//   drive    POST /adrive/v1.0/user/getDriveInfo → <drive_type>_drive_id
//   listing  POST /adrive/v1.0/openFile/list {drive_id, parent_file_id, limit, marker}
//   link     POST /adrive/v1.0/openFile/getDownloadUrl {drive_id, file_id, expire_sec}
//            → {url, expiration}; the URL needs no headers and expires.
//
// Every API call carries `Authorization: Bearer <access token>`. A 401
// AccessTokenInvalid/AccessTokenExpired refreshes the token and retries once;
// a 429 pushes the call's gate back (1 s doubling) and retries. Calls pass
// one of the account's two gates: download links at most one per
// `link_interval`, everything else one per `list_interval` (token buckets
// of depth one), so the service never has to say 429 in normal use.
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>

#include "proxy/sources/aliyun_account.h"
#include "proxy/sources/replies.h"

namespace slip::proxy {
namespace aliyun {


void ApiCall::onDone(Transfer&, const TransferResult& r) {
  Account* a = acct;
  auto fn = std::move(done);
  fn(*this, r);
  a->finished(this);  // freed later, from the loop
}

Account::~Account() {
  if (helper_.fd >= 0) close(helper_.fd);
  // A stopping gateway lets a running exchange finish and save, so that a
  // service manager's final kill of the group finds nothing to interrupt.
  // (Past the wait it still finishes on its own.)
  if (helper_.pid > 0) {
    conf::Log::write(conf::LogLevel::Info, "token_helper_wait",
                     "account=" + conf::logValue(a_.name) + " helper_pid=" + std::to_string(helper_.pid));
    int st = 0;
    for (int64_t waited = 0; waited < kStopWaitMs && waitpid(helper_.pid, &st, WNOHANG) == 0; waited += 50)
      usleep(50'000);
  }
}

// ------------------------------------------------------------------ gates

void Account::pump(Gate& g) {
  int64_t now = clock_.monoMs();
  while (!g.queue.empty() && now >= g.nextMs) {
    auto fn = std::move(g.queue.front());
    g.queue.pop_front();
    g.nextMs = now + g.intervalMs;
    fn();
  }
  if (!g.queue.empty() && !g.timer->pending()) g.timer->armMs(std::max<int64_t>(1, g.nextMs - now));
}


// ------------------------------------------------------------------ API calls

void Account::call(Gate& g, const std::string& path, json body, ApiCb cb, int attempt, bool authRetried) {
  withToken([this, &g, path, body = std::move(body), cb = std::move(cb), attempt,
             authRetried](Reason r, const std::string& detail) mutable {
    if (r != Reason::None) {
      cb({r, detail, {}});
      return;
    }
    pass(g, [this, &g, path, body = std::move(body), cb = std::move(cb), attempt, authRetried]() mutable {
      if (!tokenUsable()) {  // expired while queued at the gate
        call(g, path, std::move(body), std::move(cb), attempt, authRetried);
        return;
      }
      auto owned = std::make_unique<ApiCall>();
      ApiCall* c = owned.get();
      c->acct = this;
      c->token = accessToken_;
      Transfer::Options o = apiCallOptions(multi_, cfg_.server, a_.caFile);
      o.url = api_ + path;
      o.postBody = replies::dumpJson(body);
      o.headers.push_back({"Content-Type", "application/json"});
      o.headers.push_back({"Authorization", "Bearer " + accessToken_});
      o.followRedirects = false;
      c->done = [this, &g, path, body, cb = std::move(cb), attempt, authRetried](
                    ApiCall& call_, const TransferResult& tr) mutable {
        std::string what = "aliyundrive " + path.substr(path.rfind('/') + 1);
        if (tr.code != CURLE_OK) {
          cb({tr.timedOut ? Reason::UpstreamTimeout : Reason::ResolveFailed, what + ": " + tr.error, {}});
          return;
        }
        int status = call_.xfer->status();
        if (status == 200) {
          cb({Reason::None, "", std::move(call_.body)});
          return;
        }
        std::string code, message;
        replies::parseApiError(call_.body, &code, &message);
        if (status == 401 && (code == "AccessTokenInvalid" || code == "AccessTokenExpired") && !authRetried) {
          // Refresh, then try once more (unless another call already did).
          if (accessToken_ == call_.token) accessExpiresMs_ = 0;  // the helper is told it is stale
          conf::Log::write(conf::LogLevel::Info, "access_token_rejected",
                           "account=" + conf::logValue(a_.name) + " code=" + code);
          call(g, path, std::move(body), std::move(cb), attempt, true);
          return;
        }
        if (status == 429) {
          counters_.rateLimited++;
          int64_t back = policy::backoffDelayMs(kBusyBackoff, attempt + 1);
          g.nextMs = std::max(g.nextMs, clock_.monoMs() + back);
          conf::Log::write(conf::LogLevel::Warn, "account_rate_limited",
                           "account=" + conf::logValue(a_.name) + " call=" + conf::logValue(path) +
                               " backoff_ms=" + std::to_string(back));
          if (attempt + 1 < kMaxBusyRetries) {
            call(g, path, std::move(body), std::move(cb), attempt + 1, authRetried);
            return;
          }
          cb({Reason::RateLimited, what + ": 429 " + code + " " + std::to_string(kMaxBusyRetries) + " times", {}});
          return;
        }
        std::string detail = what + ": HTTP " + std::to_string(status) + (code.empty() ? "" : " " + code) +
                             (message.empty() ? "" : ": " + message);
        Reason r2 = status == 404 ? Reason::NotFound : Reason::ResolveFailed;
        if (status == 401 || status == 403) r2 = Reason::AccountAuth;
        cb({r2, detail, {}});
      };
      c->xfer = std::make_unique<Transfer>(multi_, std::move(o), c);
      calls_[c] = std::move(owned);
      counters_.apiCalls++;
      c->xfer->start();
    });
  });
}

void Account::withDrive(DoneCb cb) {
  if (!driveId_.empty()) {
    cb(Reason::None, "");
    return;
  }
  driveWaiters_.push_back(std::move(cb));
  if (driveFetching_) return;
  driveFetching_ = true;
  call(listGate_, "/adrive/v1.0/user/getDriveInfo", json::object(), [this](const ApiResult& r) {
    driveFetching_ = false;
    Reason reason = r.reason;
    std::string detail = r.detail;
    if (reason == Reason::None) {
      const char* type = a_.driveType == conf::DriveType::Default  ? "default"
                         : a_.driveType == conf::DriveType::Backup ? "backup"
                                                                   : "resource";
      if (replies::Problem p = replies::parseDriveId(r.body, type, &driveId_)) {
        reason = Reason::SourceBadReply;
        detail = "aliyundrive getDriveInfo: " + p.why;
      } else if (driveId_.empty()) {
        reason = Reason::ResolveFailed;
        detail = "account " + a_.name + " has no " + type + " drive (set drive_type in [account " + a_.name + "])";
      }
    }
    auto waiters = std::move(driveWaiters_);
    driveWaiters_.clear();
    for (auto& w : waiters) w(reason, detail);
  });
}

void Account::listing(const std::string& folderId, ListingCb cb) {
  auto it = listings_.find(folderId);
  if (it != listings_.end()) {
    Listing& l = it->second;
    if (l.pending) {
      l.waiters.push_back(std::move(cb));
      return;
    }
    if (l.entries && !l.stale && clock_.monoMs() - l.fetchedMs < a_.listTtlMs) {
      cb(Reason::None, "", l.entries);
      return;
    }
  }
  if (listings_.size() >= kMaxListings) {
    auto oldest = listings_.end();
    for (auto i = listings_.begin(); i != listings_.end(); ++i)
      if (!i->second.pending && (oldest == listings_.end() || i->second.fetchedMs < oldest->second.fetchedMs))
        oldest = i;
    if (oldest != listings_.end()) listings_.erase(oldest);
  }
  Listing& l = listings_[folderId];
  l.pending = true;
  l.gen = ++listGen_;
  l.building.clear();
  l.waiters.push_back(std::move(cb));
  uint64_t gen = l.gen;
  withDrive([this, folderId, gen](Reason r, const std::string& detail) {
    if (r != Reason::None) listingDone(folderId, gen, r, detail);
    else listPage(folderId, gen, "", 0);
  });
}

void Account::listPage(const std::string& folderId, uint64_t gen, const std::string& marker, int page) {
  json body = {{"drive_id", driveId_}, {"parent_file_id", folderId}, {"limit", kListLimit}, {"marker", marker}};
  call(listGate_, "/adrive/v1.0/openFile/list", std::move(body), [this, folderId, gen, page](const ApiResult& r) {
    auto it = listings_.find(folderId);
    if (it == listings_.end() || !it->second.pending || it->second.gen != gen) return;
    if (r.reason != Reason::None) {
      listingDone(folderId, gen, r.reason, r.detail);
      return;
    }
    replies::ListPage pageReply;
    if (replies::Problem p = replies::parseListPage(r.body, &pageReply)) {
      listingDone(folderId, gen, Reason::SourceBadReply, "aliyundrive list: " + p.why);
      return;
    }
    for (replies::ListItem& item : pageReply.items) {
      Entry e{std::move(item.id), folderId, item.name, item.folder};
      if (!e.folder) e.size = item.size;
      if (item.updatedMs && *item.updatedMs > 0) e.mtimeMs = *item.updatedMs;
      e.hash = std::move(item.contentHash);
      it->second.building[item.name] = std::move(e);
    }
    const std::string& next = pageReply.nextMarker;
    if (!next.empty() && page + 1 < kMaxPages) {
      listPage(folderId, gen, next, page + 1);
      return;
    }
    if (!next.empty()) {
      listingDone(folderId, gen, Reason::ResolveFailed,
                  "aliyundrive list: folder has more than " + std::to_string(kMaxPages * kListLimit) + " entries");
      return;
    }
    listingDone(folderId, gen, Reason::None, "");
  });
}

// Settles the fetch completely before any waiter runs: a waiter may start
// another lookup of this very folder, or forget it.
void Account::listingDone(const std::string& folderId, uint64_t gen, Reason r, const std::string& detail) {
  auto it = listings_.find(folderId);
  if (it == listings_.end() || !it->second.pending || it->second.gen != gen) return;
  Listing& l = it->second;
  auto waiters = std::move(l.waiters);
  l.waiters.clear();
  l.pending = false;
  std::shared_ptr<const Entries> entries;
  if (r == Reason::None) {
    entries = std::make_shared<const Entries>(std::move(l.building));
    l.building.clear();
    l.entries = entries;
    l.fetchedMs = clock_.monoMs();
    // Forgotten while being fetched: answer the waiters, list afresh next time.
    if (l.stale) listings_.erase(it);
  } else {
    listings_.erase(it);  // failures are not cached
  }
  for (auto& w : waiters) w(r, detail, entries);
}

// ------------------------------------------------------------------ lookups


void Account::lookup(const std::string& rootId, const std::string& rest,
                     std::function<void(Reason, const std::string&, const Entry&)> cb) {
  auto w = std::make_shared<Walk>();
  w->root = rootId;
  w->folder = rootId;
  w->cb = std::move(cb);
  size_t b = 0;
  while (b < rest.size()) {
    size_t e = rest.find('/', b);
    if (e == std::string::npos) e = rest.size();
    if (e > b) w->segs.push_back(rest.substr(b, e - b));
    b = e + 1;
  }
  if (w->segs.empty()) {
    Entry root;
    root.id = rootId;
    root.folder = true;
    w->cb(Reason::None, "", root);
    return;
  }
  walk(w);
}

void Account::walk(std::shared_ptr<Walk> w) {
  listing(w->folder, [this, w](Reason r, const std::string& detail, std::shared_ptr<const Entries> l) {
    if (r != Reason::None) {
      std::string d = detail;
      if (r == Reason::NotFound && w->index == 0)
        d = "root_folder_id '" + w->root + "' does not exist on the drive (" + detail + ")";
      else if (r == Reason::NotFound)
        d = "folder " + w->sofar() + " is gone (" + detail + ")";
      w->cb(r, d, Entry{});
      return;
    }
    auto it = l->find(w->segs[w->index]);
    if (it == l->end()) {
      w->cb(Reason::NotFound, "no '" + w->segs[w->index] + "' in " + w->sofar(), Entry{});
      return;
    }
    if (w->index + 1 == w->segs.size()) {
      w->cb(Reason::None, "", it->second);
      return;
    }
    w->index++;
    if (!it->second.folder) {
      w->cb(Reason::NotFound, w->sofar() + " is a file, not a folder", Entry{});
      return;
    }
    w->folder = it->second.id;
    walk(w);  // synchronous when the next listing is cached: depth = path segments
  });
}

void Account::listFolder(const std::string& rootId, const std::string& rest, ListCb cb) {
  lookup(rootId, rest, [this, rest, cb = std::move(cb)](Reason r, const std::string& d, const Entry& e) mutable {
    if (r != Reason::None || !e.folder) {
      cb({r != Reason::None ? r : Reason::NotAFolder, r != Reason::None ? d : "'" + rest + "' is a file", nullptr});
      return;
    }
    listing(e.id, [cb = std::move(cb)](Reason r2, const std::string& d2, std::shared_ptr<const Entries> l) {
      if (r2 != Reason::None) return cb({r2, d2, nullptr});
      auto out = std::make_shared<DirEntries>();
      for (const auto& [name, x] : *l)
        out->push_back({x.name, x.folder, x.size, x.mtimeMs, x.hash.empty() ? "" : "\"" + x.hash + "\""});
      cb({Reason::None, "", out});
    });
  });
}

void Account::downloadUrl(const std::string& id, int64_t expireSec,
                          std::function<void(Reason, const std::string&, const std::string&, int64_t)> cb) {
  withDrive([this, id, expireSec, cb = std::move(cb)](Reason r, const std::string& detail) mutable {
    if (r != Reason::None) {
      cb(r, detail, "", 0);
      return;
    }
    json body = {{"drive_id", driveId_}, {"file_id", id}, {"expire_sec", expireSec}};
    int64_t asked = clock_.wallMs();
    call(linkGate_, "/adrive/v1.0/openFile/getDownloadUrl", std::move(body),
         [this, cb = std::move(cb), expireSec, asked](const ApiResult& res) {
           if (res.reason != Reason::None) {
             cb(res.reason, res.detail, "", 0);
             return;
           }
           replies::DownloadUrl link;
           if (replies::Problem p = replies::parseDownloadUrl(res.body, &link)) {
             cb(Reason::SourceBadReply, "aliyundrive getDownloadUrl: " + p.why, "", 0);
             return;
           }
           // The service says when the link dies; never trust it longer than
           // asked, and not at all when our clock is ahead of its (the link
           // would look dead on arrival).
           int64_t expires = asked + expireSec * 1000;
           if (link.expirationMs && *link.expirationMs > clock_.wallMs())
             expires = std::min(expires, *link.expirationMs);
           cb(Reason::None, "", link.url, expires);
         });
  });
}

}  // namespace aliyun

namespace {

using aliyun::Account;
using aliyun::Entry;
using policy::Reason;

// ------------------------------------------------------------------ the source

class AliyunSource final : public Source {
 public:
  AliyunSource(const conf::Mount& m, Account& a) : mount_(m), account_(a) {
    for (const auto& h : m.headers) headers_.push_back({h.name, h.value});
  }

  int64_t defaultTtlMs() const override { return mount_.linkTtlMs; }

  void resolve(const std::string& rest, const ClientInfo&, ResolveCb cb) override { resolveOnce(rest, std::move(cb), false); }

  // listTtlMs() stays 0: the account caches listings (list_ttl) for all its mounts.
  void list(const std::string& rest, ListCb cb) override { account_.listFolder(mount_.rootFolderId, rest, std::move(cb)); }

 private:
  void resolveOnce(const std::string& rest, ResolveCb cb, bool retried) {
    account_.lookup(mount_.rootFolderId, rest,
                    [this, rest, cb = std::move(cb), retried](Reason r, const std::string& d, const Entry& e) mutable {
                      if (r != Reason::None) {
                        cb(fail(r, d));
                        return;
                      }
                      if (e.folder) {
                        cb(fail(Reason::NotAFile, "'" + (rest.empty() ? "/" : rest) + "' is a folder"));
                        return;
                      }
                      fetchLink(rest, e, std::move(cb), retried);
                    });
  }

  void fetchLink(const std::string& rest, const Entry& e, ResolveCb cb, bool retried) {
    int64_t expireSec = std::max<int64_t>(1, mount_.linkExpireMs / 1000);
    std::string parent = e.parent;
    account_.downloadUrl(e.id, expireSec,
                         [this, rest, parent, cb = std::move(cb), retried](
                             Reason r, const std::string& d, const std::string& url, int64_t expires) mutable {
                           if (r == Reason::NotFound && !retried) {
                             // The cached listing is stale (file replaced or moved): list again, once.
                             account_.forget(parent);
                             resolveOnce(rest, std::move(cb), true);
                             return;
                           }
                           if (r != Reason::None) {
                             cb(fail(r, d));
                             return;
                           }
                           ResolveResult out;
                           out.link.url = url;
                           out.link.headers = headers_;
                           out.link.expiresAtMs = expires;
                           if (mount_.linkTtlMs > 0)
                             out.link.expiresAtMs = std::min(expires, account_.clock().wallMs() + mount_.linkTtlMs);
                           cb(out);
                         });
  }

  ResolveResult fail(Reason r, const std::string& detail) const {
    ResolveResult out;
    out.reason = r;
    out.detail = "mount " + mount_.name + ": " + detail;
    return out;
  }

  const conf::Mount& mount_;
  Account& account_;
  Headers headers_;
};

}  // namespace


std::unique_ptr<AliyunAccount> makeAliyunAccount(const conf::Config& cfg, int index, CurlMulti& multi,
                                                 const Clock& clock) {
  return std::make_unique<Account>(cfg, index, multi, clock);
}

std::unique_ptr<Source> makeAliyunSource(const conf::Mount& m, AliyunAccount& account) {
  return std::make_unique<AliyunSource>(m, static_cast<Account&>(account));
}

}  // namespace slip::proxy
