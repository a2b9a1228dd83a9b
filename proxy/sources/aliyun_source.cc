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
#include <event2/event.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <deque>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "proxy/sources/aliyun.h"
#include "proxy/fetch/curl_multi.h"

extern char** environ;

namespace slip::proxy {
namespace {

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

std::string str(const json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

/// "2024-05-01T10:00:00.000Z" → Unix milliseconds; nullopt if not that form.
std::optional<int64_t> parseIsoUtc(const std::string& s) {
  tm t{};
  int ms = 0;
  int n = 0;
  if (sscanf(s.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d%n", &t.tm_year, &t.tm_mon, &t.tm_mday, &t.tm_hour,
             &t.tm_min, &t.tm_sec, &n) != 6)
    return std::nullopt;
  const char* rest = s.c_str() + n;
  if (*rest == '.') {
    int digits = 0;
    for (rest++; *rest >= '0' && *rest <= '9'; rest++)
      if (digits++ < 3) ms = ms * 10 + (*rest - '0');
    for (; digits < 3; digits++) ms *= 10;
  }
  if (*rest != 'Z' && strcmp(rest, "+00:00") != 0) return std::nullopt;
  t.tm_year -= 1900;
  t.tm_mon -= 1;
  time_t secs = timegm(&t);
  if (secs == static_cast<time_t>(-1)) return std::nullopt;
  return static_cast<int64_t>(secs) * 1000 + ms;
}

struct Entry {
  std::string id, parent, name;
  bool folder = false;
};

struct ApiResult {
  Reason reason = Reason::None;
  std::string detail;
  json body;
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
      : cfg_(cfg), a_(cfg.accounts[index]), multi_(multi), clock_(clock) {
    api_ = a_.apiUrl;
    while (!api_.empty() && api_.back() == '/') api_.pop_back();
    tokenUrl_ = a_.clientId.empty() ? a_.oauthTokenUrl : api_ + "/oauth/access_token";
    for (const auto& m : cfg.mounts)
      if (m.accountIndex == index) mounts_ += (mounts_.empty() ? "" : ",") + m.name;
    linkGate_.intervalMs = a_.linkIntervalMs;
    listGate_.intervalMs = a_.listIntervalMs;
    for (Gate* g : {&linkGate_, &listGate_}) {
      g->owner = this;
      g->timer = evtimer_new(multi_.base(), [](evutil_socket_t, short, void* arg) {
        auto* gate = static_cast<Gate*>(arg);
        gate->owner->pump(*gate);
      }, g);
    }
    loadState();
  }

  ~Account() override {
    for (Gate* g : {&linkGate_, &listGate_}) event_free(g->timer);
    for (ApiCall* c : calls_) delete c;
    if (helper_.ev) event_free(helper_.ev);
    if (helper_.fd >= 0) close(helper_.fd);
    if (reapTimer_) event_free(reapTimer_);
    if (patienceTimer_) event_free(patienceTimer_);
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

  /// The entry at `rest` (a path below folder `rootId`).
  void lookup(const std::string& rootId, const std::string& rest,
              std::function<void(Reason, const std::string&, const Entry&)> cb);
  /// A download URL for file `id` and when it expires (wall clock, ms).
  void downloadUrl(const std::string& id, int64_t expireSec,
                   std::function<void(Reason, const std::string&, const std::string&, int64_t)> cb);
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

  // Called by ApiCall.
  void finished(ApiCall* c) {
    calls_.erase(c);
    delete c;
  }

  struct Gate {
    Account* owner = nullptr;
    int64_t intervalMs = 1000;
    int64_t nextMs = 0;  // monotonic: the next call may go at this time
    std::deque<std::function<void()>> queue;
    event* timer = nullptr;
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
  static void reap(evutil_socket_t, short, void* arg);
  static void impatient(evutil_socket_t, short, void* arg);
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
  std::set<ApiCall*> calls_;

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
    event* ev = nullptr;
    std::string out;
  } helper_;
  event* reapTimer_ = nullptr;
  std::vector<pid_t> reaping_;       // helpers that closed their output but have not exited yet
  event* patienceTimer_ = nullptr;
  bool helperSlow_ = false;          // the running helper outlived kHelperPatienceMs

  // drive
  std::string driveId_;
  bool driveFetching_ = false;
  std::vector<DoneCb> driveWaiters_;

  std::map<std::string, Listing> listings_;
  uint64_t listGen_ = 0;
  AccountStats counters_;
};

void ApiCall::onDone(Transfer&, const TransferResult& r) {
  Account* a = acct;
  auto fn = std::move(done);
  fn(*this, r);
  a->finished(this);  // deletes this (and the transfer: safe, we are called from the loop)
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
  if (!g.queue.empty() && !evtimer_pending(g.timer, nullptr)) {
    timeval tv = msToTimeval(std::max<int64_t>(1, g.nextMs - now));
    evtimer_add(g.timer, &tv);
  }
}

// ------------------------------------------------------------------ token

void Account::loadState() {
  std::string path = tokenStatePath(cfg_.server.stateDir, a_.name);
  std::string err;
  auto s = readTokenState(path, &err);
  std::string who = "account=" + conf::logValue(a_.name);
  if (!err.empty()) {
    conf::Log::write(conf::LogLevel::Warn, "token_state_unreadable", who + " detail=" + conf::logValue(err));
    return;
  }
  if (!s) {
    conf::Log::write(conf::LogLevel::Info, "account_state", who + " refresh_token=ini (no saved state yet)");
    return;
  }
  if (s->chain != tokenChain(a_.refreshToken)) {
    conf::Log::write(conf::LogLevel::Info, "account_state",
                     who + " refresh_token=ini (changed in the configuration since the state was saved)");
    return;
  }
  conf::Log::write(conf::LogLevel::Info, "account_state", who + " refresh_token=saved path=" + conf::logValue(path));
  accessToken_ = s->accessToken;
  accessExpiresMs_ = s->accessExpiresMs;
  accessObtainedMs_ = s->updatedMs;
}

void Account::withToken(DoneCb cb) {
  if (tokenUsable()) {
    cb(Reason::None, "");
    return;
  }
  if (helper_.pid < 0 && clock_.monoMs() < retryAtMs_) {
    cb(refused_ ? Reason::AccountAuth : Reason::ResolveFailed, failure_);
    return;
  }
  if (helper_.pid >= 0 && helperSlow_) {
    cb(Reason::UpstreamTimeout, "account " + a_.name + ": the token exchange is still running");
    return;
  }
  tokenWaiters_.push_back(std::move(cb));
  if (helper_.pid < 0) startHelper();
}

void Account::failWaiters(Reason r, const std::string& detail) {
  auto waiters = std::move(tokenWaiters_);
  tokenWaiters_.clear();
  for (auto& w : waiters) w(r, detail);
}

void Account::startHelper() {
  std::string who = "account=" + conf::logValue(a_.name);
  json req = {{"account", a_.name},
              {"state_dir", cfg_.server.stateDir},
              {"ini_refresh_token", a_.refreshToken},
              {"token_url", tokenUrl_},
              {"client_id", a_.clientId},
              {"client_secret", a_.clientSecret},
              {"connect_timeout_ms", cfg_.server.connectTimeoutMs},
              {"stale_access_token", accessToken_},
              {"log_level", conf::Log::enabled(conf::LogLevel::Debug) ? "debug" : "info"}};
  if (!unsavedRefresh_.empty()) req["refresh_token"] = unsavedRefresh_;
  std::string text = req.dump();

  int in[2], out[2];
  if (pipe2(in, O_CLOEXEC) != 0) {
    exchangeFailed(std::string("cannot start the token helper: pipe: ") + strerror(errno));
    return;
  }
  if (pipe2(out, O_CLOEXEC) != 0) {
    close(in[0]);
    close(in[1]);
    exchangeFailed(std::string("cannot start the token helper: pipe: ") + strerror(errno));
    return;
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, in[0], 0);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  // Not the gateway's listening sockets, client connections or cache files.
  posix_spawn_file_actions_addclosefrom_np(&fa, 3);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  // Its own process group: a Ctrl-C or a signal to the gateway's group must
  // not cut an exchange short. Default signal dispositions and mask.
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  posix_spawnattr_setpgroup(&attr, 0);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  char arg0[] = "slipstream", arg1[] = "token-exchange";
  char* argv[] = {arg0, arg1, nullptr};
  pid_t pid = -1;
  int rc = posix_spawn(&pid, "/proc/self/exe", &fa, &attr, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  close(in[0]);
  close(out[1]);
  if (rc != 0) {
    close(in[1]);
    close(out[0]);
    exchangeFailed(std::string("cannot start the token helper: ") + strerror(rc));
    return;
  }
  // A few hundred bytes: the pipe takes them at once.
  size_t off = 0;
  while (off < text.size()) {
    ssize_t n = write(in[1], text.data() + off, text.size() - off);
    if (n > 0) off += static_cast<size_t>(n);
    else if (n < 0 && errno != EINTR) break;
  }
  close(in[1]);
  evutil_make_socket_nonblocking(out[0]);
  helper_.pid = pid;
  helper_.fd = out[0];
  helper_.out.clear();
  helper_.ev = event_new(multi_.base(), out[0], EV_READ | EV_PERSIST, [](evutil_socket_t, short, void* arg) {
    static_cast<Account*>(arg)->helperOutput();
  }, this);
  event_add(helper_.ev, nullptr);
  // Callers do not wait for a stuck exchange forever; the helper itself is
  // left to finish (killing it could lose the token it is exchanging).
  helperSlow_ = false;
  if (!patienceTimer_)
    patienceTimer_ = evtimer_new(multi_.base(), &Account::impatient, this);
  timeval tv = msToTimeval(kHelperPatienceMs);
  evtimer_add(patienceTimer_, &tv);
  conf::Log::write(conf::LogLevel::Debug, "token_helper_started", who + " helper_pid=" + std::to_string(pid));
}

void Account::helperOutput() {
  char buf[4096];
  for (;;) {
    ssize_t n = read(helper_.fd, buf, sizeof buf);
    if (n > 0) {
      if (helper_.out.size() < 65536) helper_.out.append(buf, static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    break;  // EOF (the helper exited) or an error
  }
  event_free(helper_.ev);
  helper_.ev = nullptr;
  evtimer_del(patienceTimer_);
  close(helper_.fd);
  helper_.fd = -1;
  pid_t pid = helper_.pid;
  helper_.pid = -1;
  int status = 0;
  pid_t got = waitpid(pid, &status, WNOHANG);
  if (got == 0) {
    // Closed its output but not exited yet: reap it a little later.
    reaping_.push_back(pid);
    if (!reapTimer_) reapTimer_ = evtimer_new(multi_.base(), &Account::reap, this);
    timeval tv = msToTimeval(20);
    evtimer_add(reapTimer_, &tv);
    status = 0;
  }
  std::string out = std::move(helper_.out);
  helperDone(out, status);
}

void Account::reap(evutil_socket_t, short, void* arg) {
  auto* a = static_cast<Account*>(arg);
  for (auto it = a->reaping_.begin(); it != a->reaping_.end();) {
    int st = 0;
    if (waitpid(*it, &st, WNOHANG) != 0) it = a->reaping_.erase(it);  // reaped (or not ours)
    else ++it;
  }
  if (!a->reaping_.empty()) {
    timeval tv = msToTimeval(200);
    evtimer_add(a->reapTimer_, &tv);
  }
}

void Account::impatient(evutil_socket_t, short, void* arg) {
  auto* a = static_cast<Account*>(arg);
  if (a->helper_.pid < 0) return;
  a->helperSlow_ = true;
  conf::Log::write(conf::LogLevel::Warn, "token_helper_slow",
                   "account=" + conf::logValue(a->a_.name) + " helper_pid=" + std::to_string(a->helper_.pid) +
                       " waited_ms=" + std::to_string(kHelperPatienceMs));
  a->failWaiters(Reason::UpstreamTimeout, "account " + a->a_.name + ": the token exchange is taking too long");
}

void Account::helperDone(const std::string& out, int status) {
  std::string who = "account=" + conf::logValue(a_.name) + " mounts=" + conf::logValue(mounts_);
  json r = json::parse(out, nullptr, false);
  if (r.is_discarded() || !r.is_object() || !r.contains("ok")) {
    exchangeFailed("the token helper ended without an answer (status " +
                   std::to_string(WIFEXITED(status) ? WEXITSTATUS(status) : -1) + ")");
    return;
  }
  if (r.value("ok", false)) {
    counters_.tokenExchanges++;
    accessToken_ = str(r, "access_token");
    accessExpiresMs_ = r.value("access_expires_ms", int64_t{0});
    accessObtainedMs_ = clock_.wallMs();
    refused_ = false;
    failure_.clear();
    retryAtMs_ = 0;
    if (r.value("reused", false)) {
      // A saved access token: whatever was unsaved is still the current one.
    } else if (r.value("persisted", true)) {
      unsavedRefresh_.clear();
    } else {
      unsavedRefresh_ = str(r, "refresh_token");
      conf::Log::write(conf::LogLevel::Error, "account_token_unsaved",
                       who + " detail=" + conf::logValue(str(r, "persist_error")) +
                           " action=" + conf::logValue("make state_dir " + cfg_.server.stateDir +
                                                       " writable: until then a restart loses the account"));
    }
    auto waiters = std::move(tokenWaiters_);
    tokenWaiters_.clear();
    for (auto& w : waiters) w(Reason::None, "");
    return;
  }
  std::string message = str(r, "message"), code = str(r, "code");
  int st = r.value("status", 0);
  refused_ = r.value("refused", false);
  if (refused_) {
    counters_.tokenFailures++;
    std::string where = cfg_.file + (a_.refreshTokenLine ? ":" + std::to_string(a_.refreshTokenLine) : "");
    failure_ = "account " + a_.name + ": the service refused the refresh token (HTTP " + std::to_string(st) +
               (code.empty() ? "" : " " + code) + ": " + message + "); put a new refresh_token in [account " +
               a_.name + "] and restart slipstream";
    retryAtMs_ = clock_.monoMs() + kRefusedRetryMs;
    conf::Log::write(conf::LogLevel::Error, "account_auth_failed",
                     who + " status=" + std::to_string(st) + " code=" + conf::logValue(code) +
                         " message=" + conf::logValue(message) + " action=" +
                         conf::logValue("get a new refresh token for this account, set refresh_token in [account " +
                                        a_.name + "] (" + where + ") and restart slipstream; mounts " +
                                        mounts_ + " answer 502 until then"));
    failWaiters(Reason::AccountAuth, failure_);
    return;
  }
  exchangeFailed("token exchange failed (HTTP " + std::to_string(st) + "): " + message);
}

// An exchange that did not happen or did not finish: callers get 502, and
// the next exchange waits a little.
void Account::exchangeFailed(const std::string& why) {
  counters_.tokenFailures++;
  failure_ = "account " + a_.name + ": " + why;
  retryAtMs_ = clock_.monoMs() + kFailedRetryMs;
  conf::Log::write(conf::LogLevel::Error, "account_token_failed",
                   "account=" + conf::logValue(a_.name) + " mounts=" + conf::logValue(mounts_) +
                       " detail=" + conf::logValue(why));
  failWaiters(Reason::ResolveFailed, failure_);
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
      auto* c = new ApiCall;
      c->acct = this;
      c->token = accessToken_;
      Transfer::Options o;
      o.url = api_ + path;
      o.postBody = body.dump();
      o.headers.push_back({"Content-Type", "application/json"});
      o.headers.push_back({"Authorization", "Bearer " + accessToken_});
      o.connectTimeoutMs = cfg_.server.connectTimeoutMs;
      o.headerTimeoutMs = cfg_.server.upstreamTimeoutMs;
      o.stallTimeoutMs = cfg_.server.stallTimeoutMs;
      o.followRedirects = false;
      c->done = [this, &g, path, body, cb = std::move(cb), attempt, authRetried](
                    ApiCall& call_, const TransferResult& tr) mutable {
        std::string what = "aliyundrive " + path.substr(path.rfind('/') + 1);
        if (tr.code != CURLE_OK) {
          cb({tr.timedOut ? Reason::UpstreamTimeout : Reason::ResolveFailed, what + ": " + tr.error, {}});
          return;
        }
        int st = call_.xfer->status();
        json j = json::parse(call_.body, nullptr, false);
        if (j.is_discarded()) j = json::object();
        std::string code = j.is_object() ? str(j, "code") : "";
        std::string message = j.is_object() ? str(j, "message") : "";
        if (st == 200 && j.is_object()) {
          cb({Reason::None, "", std::move(j)});
          return;
        }
        if (st == 401 && (code == "AccessTokenInvalid" || code == "AccessTokenExpired") && !authRetried) {
          // Refresh, then try once more (unless another call already did).
          if (accessToken_ == call_.token) accessExpiresMs_ = 0;  // the helper is told it is stale
          conf::Log::write(conf::LogLevel::Info, "access_token_rejected",
                           "account=" + conf::logValue(a_.name) + " code=" + code);
          call(g, path, std::move(body), std::move(cb), attempt, true);
          return;
        }
        if (st == 429) {
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
        std::string detail = what + ": HTTP " + std::to_string(st) + (code.empty() ? "" : " " + code) +
                             (message.empty() ? "" : ": " + message);
        Reason r2 = st == 404 ? Reason::NotFound : Reason::ResolveFailed;
        if (st == 401 || st == 403) r2 = Reason::AccountAuth;
        cb({r2, detail, std::move(j)});
      };
      c->xfer = std::make_unique<Transfer>(multi_, std::move(o), c);
      calls_.insert(c);
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
      driveId_ = str(r.body, (std::string(type) + "_drive_id").c_str());
      if (driveId_.empty()) {
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
    const json& items = r.body.contains("items") ? r.body["items"] : json();
    if (!items.is_array()) {
      listingDone(folderId, gen, Reason::ResolveFailed, "aliyundrive list: reply has no items");
      return;
    }
    for (const json& item : items) {
      if (!item.is_object()) continue;
      Entry e;
      e.id = str(item, "file_id");
      e.name = str(item, "name");
      e.parent = folderId;
      e.folder = str(item, "type") == "folder";
      if (!e.id.empty() && !e.name.empty()) it->second.building[e.name] = e;
    }
    std::string next = str(r.body, "next_marker");
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
           std::string url = str(res.body, "url");
           if (!url.starts_with("http://") && !url.starts_with("https://")) {
             cb(Reason::ResolveFailed, "aliyundrive getDownloadUrl: reply has no http(s) url", "", 0);
             return;
           }
           // The service says when the link dies; never trust it longer than
           // asked, and not at all when our clock is ahead of its (the link
           // would look dead on arrival).
           int64_t expires = asked + expireSec * 1000;
           if (auto e = parseIsoUtc(str(res.body, "expiration")); e && *e > clock_.wallMs())
             expires = std::min(expires, *e);
           cb(Reason::None, "", url, expires);
         });
  });
}

// ------------------------------------------------------------------ the source

class AliyunSource final : public Source {
 public:
  AliyunSource(const conf::Mount& m, Account& a) : mount_(m), account_(a) {
    for (const auto& h : m.headers) headers_.push_back({h.name, h.value});
  }

  int64_t defaultTtlMs() const override { return mount_.linkTtlMs; }

  void resolve(const std::string& rest, const ClientInfo&, ResolveCb cb) override { resolveOnce(rest, std::move(cb), false); }

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
