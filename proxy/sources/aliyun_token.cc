// The refresh-token state file and the token-exchange helper process.
//
// Why a helper process: the Open API rotates the refresh token on every
// exchange and the old one dies the moment the new one is issued. Had the
// gateway itself made the request, a `kill -9` between the service issuing
// the new token and the gateway saving it would lose the account for good.
// The helper (`slipstream token-exchange`, spawned in its own process group
// with every descriptor but stdin/stdout/stderr closed) outlives a killed
// gateway: it finishes the exchange, saves the new token, then exits. The
// account's lock file serialises helpers, so a restarted gateway's helper
// reads the state only after the previous one has saved it.
//
// Request (stdin, one JSON object): account, state_dir, ini_refresh_token,
// token_url, client_id, client_secret, connect_timeout_ms,
// stale_access_token (the access token the gateway holds now, maybe ""),
// log_level, and refresh_token only when the previous helper
// could not save its token.
// Result (stdout, one JSON line): {"ok":true,"access_token","access_expires_ms",
// "reused","persisted"[,"refresh_token","persist_error"]} or
// {"ok":false,"refused","status","code","message"}.
#include <curl/curl.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "proxy/sources/aliyun.h"
#include "proxy/sources/replies.h"

namespace slip::proxy {
namespace {

using json = nlohmann::json;

constexpr size_t kMaxFile = 64 * 1024;
constexpr size_t kMaxReply = 1 << 20;
// The exchange gets far longer than an API call: a token the service has
// consumed but whose answer we gave up on is lost for good.
constexpr long kExchangeTimeoutMs = 120'000;
constexpr int kLockWaitMs = 120'000;  // other helpers are bounded by the same limits

std::string errnoText(const std::string& what) { return what + ": " + strerror(errno); }

bool readAll(int fd, std::string* out, size_t max) {
  char buf[8192];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n > 0) {
      out->append(buf, static_cast<size_t>(n));
      if (out->size() > max) return false;
    } else if (n == 0) {
      return true;
    } else if (errno != EINTR) {
      return false;
    }
  }
}

bool writeAll(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    ssize_t n = write(fd, s.data() + off, s.size() - off);
    if (n > 0) off += static_cast<size_t>(n);
    else if (n < 0 && errno != EINTR) return false;
  }
  return true;
}

std::string stringField(const json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

int64_t intField(const json& j, const char* key, int64_t def = 0) {
  auto it = j.find(key);
  if (it == j.end()) return def;
  return replies::jsonInt(*it).value_or(def);  // 1e300, "5", 2^64: the default
}

size_t collect(char* p, size_t size, size_t n, void* ud) {
  auto* s = static_cast<std::string*>(ud);
  if (s->size() + size * n > kMaxReply) return 0;
  s->append(p, size * n);
  return size * n;
}

void log(conf::LogLevel l, std::string_view event, const std::string& kv) {
  conf::Log::write(l, event, kv);
}

}  // namespace

// ------------------------------------------------------------------ state file

std::string tokenChain(const std::string& iniRefreshToken) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(iniRefreshToken.data(), iniRefreshToken.size(), md, &len, EVP_sha256(), nullptr);
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < len; i++) {
    out += kHex[md[i] >> 4];
    out += kHex[md[i] & 15];
  }
  return out;
}

std::string tokenStatePath(const std::string& stateDir, const std::string& account) {
  return stateDir + "/aliyundrive-" + account + ".token.json";
}

std::string tokenLockPath(const std::string& stateDir, const std::string& account) {
  return stateDir + "/aliyundrive-" + account + ".lock";
}

std::optional<TokenState> readTokenState(const std::string& path, std::string* err) {
  err->clear();
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno != ENOENT) *err = errnoText("cannot open " + path);
    return std::nullopt;
  }
  std::string text;
  bool ok = readAll(fd, &text, kMaxFile);
  close(fd);
  if (!ok) {
    *err = "cannot read " + path;
    return std::nullopt;
  }
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object() || intField(j, "version") != 1) {
    *err = path + " is not a slipstream token state (version 1)";
    return std::nullopt;
  }
  TokenState s;
  s.chain = stringField(j, "chain");
  s.refreshToken = stringField(j, "refresh_token");
  s.accessToken = stringField(j, "access_token");
  s.accessExpiresMs = intField(j, "access_expires_ms");
  s.updatedMs = intField(j, "updated_ms");
  if (s.chain.empty() || s.refreshToken.empty()) {
    *err = path + " lacks chain or refresh_token";
    return std::nullopt;
  }
  return s;
}

bool writeTokenState(const std::string& path, const TokenState& s, std::string* err) {
  std::filesystem::path p(path);
  std::string dir = p.parent_path().string();
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    *err = "cannot create " + dir + ": " + ec.message();
    return false;
  }
  json j = {{"version", 1},
            {"chain", s.chain},
            {"refresh_token", s.refreshToken},
            {"access_token", s.accessToken},
            {"access_expires_ms", s.accessExpiresMs},
            {"updated_ms", s.updatedMs}};
  std::string tmp = path + ".tmp-" + std::to_string(getpid());
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    *err = errnoText("cannot create " + tmp);
    return false;
  }
  bool ok = writeAll(fd, replies::dumpJson(j) + "\n");
  if (!ok) *err = errnoText("cannot write " + tmp);
  if (ok && fsync(fd) != 0) ok = false, *err = errnoText("cannot fsync " + tmp);
  if (close(fd) != 0 && ok) ok = false, *err = errnoText("cannot close " + tmp);
  if (ok && rename(tmp.c_str(), path.c_str()) != 0) ok = false, *err = errnoText("cannot rename to " + path);
  if (!ok) {
    unlink(tmp.c_str());
    return false;
  }
  // The rename is durable only once the directory is.
  int dfd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0 || fsync(dfd) != 0) {
    *err = errnoText("cannot fsync " + dir);
    if (dfd >= 0) close(dfd);
    return false;
  }
  close(dfd);
  return true;
}

// ------------------------------------------------------------------ the helper

namespace {

struct Exchange {
  long status = 0;
  std::string body;
  std::string curlError;
};

// The account's (or the server's) ca_file, added to the store curl then
// fills with the system bundle (curl calls this before it loads CA files).
CURLcode addCaFile(CURL*, void* sslCtx, void* file) {
  X509_STORE* store = SSL_CTX_get_cert_store(static_cast<SSL_CTX*>(sslCtx));
  if (X509_STORE_load_file(store, static_cast<const std::string*>(file)->c_str()) != 1)
    return CURLE_SSL_CACERT_BADFILE;
  return CURLE_OK;
}

Exchange post(const json& req, const std::string& refreshToken) {
  Exchange x;
  json body = {{"client_id", stringField(req, "client_id")},
               {"client_secret", stringField(req, "client_secret")},
               {"grant_type", "refresh_token"},
               {"refresh_token", refreshToken}};
  std::string payload = replies::dumpJson(body);
  std::string url = stringField(req, "token_url");
  CURL* c = curl_easy_init();
  curl_slist* h = curl_slist_append(nullptr, "Content-Type: application/json");
  h = curl_slist_append(h, "Accept: application/json");
  char errbuf[CURL_ERROR_SIZE] = {};
  curl_easy_setopt(c, CURLOPT_URL, url.c_str());
  curl_easy_setopt(c, CURLOPT_POSTFIELDS, payload.c_str());
  curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, static_cast<long>(payload.size()));
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
  curl_easy_setopt(c, CURLOPT_PROXY, "");
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(intField(req, "connect_timeout_ms", 10'000)));
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, kExchangeTimeoutMs);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, &collect);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &x.body);
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
  const std::string caFile = stringField(req, "ca_file");
  if (!caFile.empty()) {
    curl_easy_setopt(c, CURLOPT_SSL_CTX_FUNCTION, &addCaFile);
    curl_easy_setopt(c, CURLOPT_SSL_CTX_DATA, &caFile);
  }
  CURLcode rc = curl_easy_perform(c);
  if (rc != CURLE_OK) x.curlError = errbuf[0] ? errbuf : curl_easy_strerror(rc);
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &x.status);
  curl_slist_free_all(h);
  curl_easy_cleanup(c);
  return x;
}

void reply(const json& j) {
  std::string line = replies::dumpJson(j) + "\n";
  writeAll(1, line);
}

}  // namespace

int tokenExchangeMain(const Clock& clock) {
  // Finish whatever happens to the gateway: its terminal's Ctrl-C, a
  // SIGTERM to the service, a closed pipe.
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGPIPE, SIGQUIT, SIGTTOU, SIGTTIN}) signal(sig, SIG_IGN);
  std::string text;
  if (!readAll(0, &text, kMaxFile)) return 3;
  json req = json::parse(text, nullptr, false);
  // An incomplete request means the gateway died before sending it: nothing
  // was exchanged, nothing to do.
  if (req.is_discarded() || !req.is_object()) return 3;
  std::string level = stringField(req, "log_level");
  conf::Log::setLevel(level == "debug" ? conf::LogLevel::Debug
                      : level == "warn" ? conf::LogLevel::Warn
                      : level == "error" ? conf::LogLevel::Error
                                         : conf::LogLevel::Info);
  const std::string account = stringField(req, "account");
  const std::string dir = stringField(req, "state_dir");
  const std::string path = tokenStatePath(dir, account);
  const std::string chain = tokenChain(stringField(req, "ini_refresh_token"));
  const std::string who = "account=" + conf::logValue(account) + " helper_pid=" + std::to_string(getpid());

  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (!ec) std::filesystem::permissions(dir, std::filesystem::perms::owner_all, ec);
  // Anything short of the lock and a readable state means not knowing which
  // refresh token is current: then nothing is sent (a consumed token must
  // never be presented again).
  auto giveUp = [&who](const std::string& why) {
    log(conf::LogLevel::Error, "token_exchange_failed", who + " detail=" + conf::logValue(why));
    reply({{"ok", false}, {"refused", false}, {"status", 0}, {"code", "StateDir"}, {"message", why}});
    return 0;
  };
  int lock = open(tokenLockPath(dir, account).c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lock < 0) return giveUp(errnoText("cannot open the lock in " + dir));
  for (int waited = 0;; waited += 50) {
    if (flock(lock, LOCK_EX | LOCK_NB) == 0) break;
    if (errno != EWOULDBLOCK && errno != EINTR) return giveUp(errnoText("cannot lock in " + dir));
    if (waited >= kLockWaitMs) return giveUp("another token exchange holds the lock in " + dir);
    usleep(50'000);
  }

  std::string err;
  std::optional<TokenState> saved = readTokenState(path, &err);
  if (!err.empty())
    return giveUp("the saved token state is unreadable (" + err + "); restore " + path +
                  ", or remove it and put a new refresh_token in the configuration");
  const bool unsaved = !stringField(req, "refresh_token").empty();
  bool sameChain = saved && saved->chain == chain;
  const int64_t now = clock.wallMs();

  // A previous helper (perhaps of a gateway killed since) may have just
  // refreshed: its access token serves, and no token is spent.
  if (!unsaved && sameChain && !saved->accessToken.empty() &&
      saved->accessToken != stringField(req, "stale_access_token") &&
      policy::tokenUsable(saved->updatedMs, saved->accessExpiresMs, now)) {
    log(conf::LogLevel::Info, "token_reused", who + " updated_ms=" + std::to_string(saved->updatedMs));
    reply({{"ok", true}, {"access_token", saved->accessToken},
           {"access_expires_ms", saved->accessExpiresMs}, {"reused", true}, {"persisted", true}});
    return 0;
  }

  std::string refresh = stringField(req, "refresh_token");
  const char* from = "unsaved";
  if (refresh.empty()) {
    refresh = sameChain ? saved->refreshToken : stringField(req, "ini_refresh_token");
    from = sameChain ? "state" : "ini";
  }
  curl_global_init(CURL_GLOBAL_DEFAULT);
  Exchange x = post(req, refresh);
  curl_global_cleanup();

  replies::TokenReply tokens;
  replies::Problem bad;
  if (x.curlError.empty() && x.status == 200) bad = replies::parseTokenReply(x.body, &tokens);
  const std::string& access = tokens.accessToken;
  const std::string& rotated = tokens.refreshToken;
  if (x.curlError.empty() && x.status == 200 && !bad) {
    TokenState s;
    s.chain = chain;
    s.refreshToken = rotated;
    s.accessToken = access;
    s.accessExpiresMs = now + tokens.expiresInSec * 1000;
    s.updatedMs = clock.wallMs();
    std::string werr;
    bool persisted = writeTokenState(path, s, &werr);
    json out = {{"ok", true}, {"access_token", access}, {"access_expires_ms", s.accessExpiresMs},
                {"reused", false}, {"persisted", persisted}};
    if (!persisted) {
      // The gateway keeps it in memory and hands it to the next helper.
      out["refresh_token"] = rotated;
      out["persist_error"] = werr;
      log(conf::LogLevel::Error, "token_state_unsaved", who + " detail=" + conf::logValue(werr));
    } else {
      log(conf::LogLevel::Info, "token_rotated",
          who + " from=" + from + " expires_in_ms=" + std::to_string(s.accessExpiresMs - now));
    }
    reply(out);
    return 0;
  }

  std::string code, message;
  replies::parseApiError(x.body, &code, &message);
  if (!x.curlError.empty()) message = x.curlError;
  else if (x.status == 200) message = "the reply does not follow the API: " + bad.why;
  else if (message.empty()) message = "HTTP status " + std::to_string(x.status);
  // The service refused this refresh token (revoked, consumed, or the app's
  // credentials are wrong): trying again cannot help.
  bool refused = x.curlError.empty() && x.status >= 400 && x.status < 500 && x.status != 429;
  log(conf::LogLevel::Error, "token_exchange_failed",
      who + " from=" + from + " status=" + std::to_string(x.status) + " code=" + conf::logValue(code) +
          " message=" + conf::logValue(message));
  reply({{"ok", false}, {"refused", refused}, {"status", x.status}, {"code", code}, {"message", message}});
  return 0;
}

}  // namespace slip::proxy
