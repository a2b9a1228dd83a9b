// Private to proxy/sources/: the aliyundrive_open account (token state,
// gates, API calls, listings). aliyun_source.cc has the API calls, listings
// and the source; aliyun_account_token.cc the token helper's side in the
// gateway; aliyun_token.cc the helper process itself.
#pragma once

#include <sys/types.h>

#include <deque>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "conf/loop.h"
#include "proxy/fetch/curl_multi.h"
#include "proxy/sources/aliyun.h"

namespace slip::proxy::aliyun {

using json = nlohmann::json;
using Reason = policy::Reason;

constexpr size_t kMaxReply = 4 << 20;
constexpr int kListLimit = 100;           // the API's largest page
constexpr int kMaxPages = 1000;           // 100 000 entries in one folder
constexpr size_t kMaxListings = 2048;     // folders whose listing is kept
constexpr int kMaxBusyRetries = 5;        // 429s in a row before giving up
constexpr policy::Backoff kBusyBackoff{1000, 16'000};  // per 429 in a row
constexpr int64_t kRefusedRetryMs = 600'000;  // try a refused token again after this
constexpr int64_t kFailedRetryMs = 5'000;     // a failed exchange (network) after this
constexpr int64_t kHelperPatienceMs = 60'000; // callers wait this long for a helper's answer
constexpr int64_t kStopWaitMs = 60'000;       // a stopping gateway waits this long for it

struct Entry {
  std::string id, parent, name;
  bool folder = false;
  uint64_t size = 0;     // listings (Engine::list)
  int64_t mtimeMs = 0;   // updated_at; 0 = not given
  std::string hash;      // content_hash (SHA-1 hex)
};

struct ApiResult {
  Reason reason = Reason::None;
  std::string detail;
  std::string body;  // the reply (HTTP 200), for the caller's parser in replies.h
};
using ApiCb = std::function<void(const ApiResult&)>;
using DoneCb = std::function<void(Reason, const std::string&)>;

struct Walk {
  std::string root;
  std::vector<std::string> segs;
  size_t index = 0;
  std::string folder;  // id of the folder being searched
  std::function<void(Reason, const std::string&, const Entry&)> cb;
  std::string sofar() const {
    std::string p;
    for (size_t i = 0; i < index; i++) p += "/" + segs[i];
    return p.empty() ? "/" : p;
  }
};


class Account;

/// One API request in flight.
struct ApiCall final : Transfer::Handler {
  Account* acct = nullptr;
  std::string body;
  std::string token;  // the access token it was sent with
  std::unique_ptr<Transfer> xfer;
  std::function<void(ApiCall&, const TransferResult&)> done;
  bool onHeaders(Transfer&) override { return true; }
  size_t onData(Transfer&, const char* p, size_t n) override {
    if (body.size() + n > kMaxReply) return 0;
    body.append(p, n);
    return n;
  }
  void onDone(Transfer&, const TransferResult& r) override;
};

class Account final : public AliyunAccount {
 public:
  Account(const conf::Config& cfg, int index, CurlMulti& multi, const Clock& clock)
      : cfg_(cfg), a_(cfg.accounts[index]), multi_(multi), clock_(clock), graveyard_(multi.base()) {
    api_ = a_.apiUrl;
    while (!api_.empty() && api_.back() == '/') api_.pop_back();
    tokenUrl_ = a_.clientId.empty() ? a_.oauthTokenUrl : api_ + "/oauth/access_token";
    for (const auto& m : cfg.mounts)
      if (m.accountIndex == index) mounts_ += (mounts_.empty() ? "" : ",") + m.name;
    linkGate_.intervalMs = a_.linkIntervalMs;
    listGate_.intervalMs = a_.listIntervalMs;
    for (Gate* g : {&linkGate_, &listGate_}) g->timer = std::make_unique<Timer>(multi_.base(), [this, g] { pump(*g); });
    loadState();
  }

  ~Account() override;

  /// The entry at `rest` (a path below folder `rootId`).
  void lookup(const std::string& rootId, const std::string& rest,
              std::function<void(Reason, const std::string&, const Entry&)> cb);
  /// A download URL for file `id` and when it expires (wall clock, ms).
  void downloadUrl(const std::string& id, int64_t expireSec,
                   std::function<void(Reason, const std::string&, const std::string&, int64_t)> cb);
  /// The entries of the folder at `rest` below `rootId` (its cached listing).
  void listFolder(const std::string& rootId, const std::string& rest, ListCb cb);
  /// Drops a folder's cached listing (a file in it was not found any more).
  void forget(const std::string& folderId) {
    auto it = listings_.find(folderId);
    if (it == listings_.end()) return;
    if (it->second.pending) it->second.stale = true;  // its waiters still need an answer
    else listings_.erase(it);
  }

  const Clock& clock() const { return clock_; }

  AccountStats stats() const override {
    AccountStats s = counters_;
    s.name = a_.name;
    s.authorized = !refused_;
    return s;
  }

  /// Called by an ApiCall whose onDone ran: freed later, from the loop.
  void finished(ApiCall* c) { graveyard_.buryFrom(calls_, c); }

  struct Gate {
    int64_t intervalMs = 1000;
    int64_t nextMs = 0;  // monotonic: the next call may go at this time
    std::deque<std::function<void()>> queue;
    std::unique_ptr<Timer> timer;
  };
  void pump(Gate& g);

 private:
  using Entries = std::map<std::string, Entry>;  // by name
  using ListingCb = std::function<void(Reason, const std::string&, std::shared_ptr<const Entries>)>;
  /// A folder's cached listing. Callers get the entries as a shared snapshot:
  /// nothing they hold dangles when the cache drops or replaces it.
  struct Listing {
    std::shared_ptr<const Entries> entries;  // the last complete listing, or null
    int64_t fetchedMs = 0;                   // monotonic, of `entries`
    bool stale = false;                      // forget() while it was being fetched
    // a fetch in flight
    bool pending = false;
    uint64_t gen = 0;                        // pages of an older fetch are dropped
    Entries building;
    std::vector<ListingCb> waiters;
  };

  void pass(Gate& g, std::function<void()> fn) {
    g.queue.push_back(std::move(fn));
    pump(g);
  }

  // token
  void loadState();
  bool tokenUsable() const {
    return !accessToken_.empty() && policy::tokenUsable(accessObtainedMs_, accessExpiresMs_, clock_.wallMs());
  }
  void withToken(DoneCb cb);
  void startHelper();
  void helperOutput();
  void helperDone(const std::string& out, int status);
  void reap();
  void impatient();
  void failWaiters(Reason r, const std::string& detail);
  void exchangeFailed(const std::string& why);

  // API
  void call(Gate& g, const std::string& path, json body, ApiCb cb, int attempt = 0,
            bool authRetried = false);
  void withDrive(DoneCb cb);
  void listing(const std::string& folderId, ListingCb cb);
  void listPage(const std::string& folderId, uint64_t gen, const std::string& marker, int page);
  void listingDone(const std::string& folderId, uint64_t gen, Reason r, const std::string& detail);
  void walk(std::shared_ptr<Walk> w);

  const conf::Config& cfg_;
  const conf::Account& a_;
  CurlMulti& multi_;
  const Clock& clock_;
  std::string api_, tokenUrl_, mounts_;
  Gate linkGate_, listGate_;
  std::map<ApiCall*, std::unique_ptr<ApiCall>> calls_;

  // token state
  std::string accessToken_;
  int64_t accessExpiresMs_ = 0, accessObtainedMs_ = 0;
  std::string unsavedRefresh_;  // rotated but not saved (state dir unwritable)
  std::vector<DoneCb> tokenWaiters_;
  bool refused_ = false;        // the service refused the refresh token
  std::string failure_;         // why the last exchange failed
  int64_t retryAtMs_ = 0;       // monotonic: no new exchange before this
  struct Helper {
    pid_t pid = -1;
    int fd = -1;
    EventPtr ev;  // its output is readable
    std::string out;
  } helper_;
  std::unique_ptr<Timer> reapTimer_;
  std::vector<pid_t> reaping_;       // helpers that closed their output but have not exited yet
  std::unique_ptr<Timer> patienceTimer_;
  bool helperSlow_ = false;          // the running helper outlived kHelperPatienceMs

  // drive
  std::string driveId_;
  bool driveFetching_ = false;
  std::vector<DoneCb> driveWaiters_;

  std::map<std::string, Listing> listings_;
  uint64_t listGen_ = 0;
  AccountStats counters_;
  Graveyard graveyard_;  // finished API calls, freed from the loop
};


}  // namespace slip::proxy::aliyun
