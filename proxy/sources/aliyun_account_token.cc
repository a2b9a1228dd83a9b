// The aliyundrive_open account's token, gateway side: the saved state at
// start, access tokens handed to API calls, and the token-exchange helper
// process (spawned, read, reaped; never killed). The helper itself is
// aliyun_token.cc; proxy/DESIGN.md says why it is a process.
#include <event2/event.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "proxy/sources/aliyun_account.h"
#include "proxy/sources/replies.h"

extern char** environ;

namespace slip::proxy::aliyun {

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
              {"ca_file", a_.caFile.empty() ? cfg_.server.caFile : a_.caFile},
              {"stale_access_token", accessToken_},
              {"log_level", conf::Log::enabled(conf::LogLevel::Debug) ? "debug" : "info"}};
  if (!unsavedRefresh_.empty()) req["refresh_token"] = unsavedRefresh_;
  std::string text = replies::dumpJson(req);

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
  helper_.ev.reset(event_new(multi_.base(), out[0], EV_READ | EV_PERSIST, [](evutil_socket_t, short, void* arg) {
    static_cast<Account*>(arg)->helperOutput();
  }, this));
  event_add(helper_.ev.get(), nullptr);
  // Callers do not wait for a stuck exchange forever; the helper itself is
  // left to finish (killing it could lose the token it is exchanging).
  helperSlow_ = false;
  if (!patienceTimer_) patienceTimer_ = std::make_unique<Timer>(multi_.base(), [this] { impatient(); });
  patienceTimer_->armMs(kHelperPatienceMs);
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
  helper_.ev.reset();
  patienceTimer_->cancel();
  close(helper_.fd);
  helper_.fd = -1;
  pid_t pid = helper_.pid;
  helper_.pid = -1;
  int status = 0;
  pid_t got = waitpid(pid, &status, WNOHANG);
  if (got == 0) {
    // Closed its output but not exited yet: reap it a little later.
    reaping_.push_back(pid);
    if (!reapTimer_) reapTimer_ = std::make_unique<Timer>(multi_.base(), [this] { reap(); });
    reapTimer_->armMs(20);
    status = 0;
  }
  std::string out = std::move(helper_.out);
  helperDone(out, status);
}

void Account::reap() {
  for (auto it = reaping_.begin(); it != reaping_.end();) {
    int st = 0;
    if (waitpid(*it, &st, WNOHANG) != 0) it = reaping_.erase(it);  // reaped (or not ours)
    else ++it;
  }
  if (!reaping_.empty()) reapTimer_->armMs(200);
}

void Account::impatient() {
  Account* a = this;
  if (a->helper_.pid < 0) return;
  a->helperSlow_ = true;
  conf::Log::write(conf::LogLevel::Warn, "token_helper_slow",
                   "account=" + conf::logValue(a->a_.name) + " helper_pid=" + std::to_string(a->helper_.pid) +
                       " waited_ms=" + std::to_string(kHelperPatienceMs));
  a->failWaiters(Reason::UpstreamTimeout, "account " + a->a_.name + ": the token exchange is taking too long");
}

void Account::helperDone(const std::string& out, int status) {
  std::string who = "account=" + conf::logValue(a_.name) + " mounts=" + conf::logValue(mounts_);
  replies::HelperResult r;
  if (replies::Problem p = replies::parseHelperResult(out, &r)) {
    exchangeFailed("the token helper ended without an answer (status " +
                   std::to_string(WIFEXITED(status) ? WEXITSTATUS(status) : -1) + ": " + p.why + ")");
    return;
  }
  if (r.ok) {
    counters_.tokenExchanges++;
    accessToken_ = r.accessToken;
    accessExpiresMs_ = r.accessExpiresMs;
    accessObtainedMs_ = clock_.wallMs();
    refused_ = false;
    failure_.clear();
    retryAtMs_ = 0;
    if (r.reused) {
      // A saved access token: whatever was unsaved is still the current one.
    } else if (r.persisted) {
      unsavedRefresh_.clear();
    } else {
      unsavedRefresh_ = r.refreshToken;
      conf::Log::write(conf::LogLevel::Error, "account_token_unsaved",
                       who + " detail=" + conf::logValue(r.persistError) +
                           " action=" + conf::logValue("make state_dir " + cfg_.server.stateDir +
                                                       " writable: until then a restart loses the account"));
    }
    auto waiters = std::move(tokenWaiters_);
    tokenWaiters_.clear();
    for (auto& w : waiters) w(Reason::None, "");
    return;
  }
  const std::string& message = r.message;
  const std::string& code = r.code;
  int64_t httpStatus = r.status;
  refused_ = r.refused;
  if (refused_) {
    counters_.tokenFailures++;
    std::string where = cfg_.file + (a_.refreshTokenLine ? ":" + std::to_string(a_.refreshTokenLine) : "");
    failure_ = "account " + a_.name + ": the service refused the refresh token (HTTP " + std::to_string(httpStatus) +
               (code.empty() ? "" : " " + code) + ": " + message + "); put a new refresh_token in [account " +
               a_.name + "] and restart slipstream";
    retryAtMs_ = clock_.monoMs() + kRefusedRetryMs;
    conf::Log::write(conf::LogLevel::Error, "account_auth_failed",
                     who + " status=" + std::to_string(httpStatus) + " code=" + conf::logValue(code) +
                         " message=" + conf::logValue(message) + " action=" +
                         conf::logValue("get a new refresh token for this account, set refresh_token in [account " +
                                        a_.name + "] (" + where + ") and restart slipstream; mounts " +
                                        mounts_ + " answer 502 until then"));
    failWaiters(Reason::AccountAuth, failure_);
    return;
  }
  exchangeFailed("token exchange failed (HTTP " + std::to_string(httpStatus) + "): " + message);
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

}  // namespace slip::proxy::aliyun
