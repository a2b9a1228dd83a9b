// The directive table: every configuration key, declared once.
//
// Each row names its section, key, type, default (as written in a file),
// bounds, units, whether it repeats, which mount sources it applies to and
// needs, a one-line doc, and how the parsed value is stored. The loader,
// `--help-config` and the README reference are generated from these rows only.
//
// Defaults here are what the loader applies when a key is absent; they must
// match the initialisers in conf.h (tests/unit/conf_test.cc checks that).
#include <cctype>
#include <cstdlib>
#include <deque>
#include <initializer_list>
#include <string>

#include "conf/conf.h"

namespace slip::conf {
namespace {

using S = SectionKind;
using T = ValueType;
using V = const DirectiveValue&;

constexpr unsigned kHttp = sourceBit(SourceType::Http);
constexpr unsigned kLocal = sourceBit(SourceType::Local);
constexpr unsigned kAlist = sourceBit(SourceType::Alist);
constexpr unsigned kAliyun = sourceBit(SourceType::AliyundriveOpen);
constexpr int64_t kK = 1LL << 10, kM = 1LL << 20;
constexpr int64_t kSec = 1000, kDay = 86'400'000;
constexpr int64_t kMinTimeout = 10;  // ms; below this a timeout is a typo, not a setting

// Maps an Enum value (its index in `choices`) to the enum it stands for.
template <class E>
E pick(V v, std::initializer_list<E> options) {
  return options.begin()[v.num];
}

std::string upper(std::string_view s) {
  std::string out;
  for (char ch : s) out += static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  return out;
}

std::string lower(std::string_view s) {
  std::string out;
  for (char ch : s) out += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return out;
}

Account& account(Config& c) { return c.accounts.back(); }
User& user(Config& c) { return c.users.back(); }
Mount& mount(Config& c) { return c.mounts.back(); }
Rule& rule(Config& c) { return c.rules.back(); }

/// Test hooks are refused unless the test environment asks for them.
bool testHook(V v, std::string* why) {
  const char* on = std::getenv("SLIPSTREAM_TEST_HOOKS");
  if (v.num == 0 || (on && std::string_view(on) == "1")) return true;
  *why = "is a test hook: only with SLIPSTREAM_TEST_HOOKS=1 in the environment";
  return false;
}

bool powerOfTwo(V v, std::string* why) {
  if ((v.num & (v.num - 1)) == 0) return true;
  *why = "must be a power of two (64K, 1M, 4M, ...)";
  return false;
}

/// "1".."64" → the number; anything else → -1.
int64_t workerNumber(const std::string& t) {
  int64_t n = 0;
  for (char ch : t) {
    if (ch < '0' || ch > '9' || n > 64) return -1;
    n = n * 10 + (ch - '0');
  }
  return !t.empty() && n >= 1 && n <= 64 ? n : -1;
}

bool workerCount(V v, std::string* why) {
  if (v.text == "auto" || workerNumber(v.text) > 0) return true;
  *why = "must be auto or a number of threads from 1 to 64: '" + v.text + "'";
  return false;
}

// `next_episode`: off, on (80 %) or a share of the file, 1%..99%.
int episodeShare(std::string_view v) {
  if (v == "off") return 0;
  if (v == "on") return 80;
  if (v.size() < 2 || v.size() > 3 || v.back() != '%') return -1;
  int n = 0;
  for (char ch : v.substr(0, v.size() - 1)) {
    if (ch < '0' || ch > '9') return -1;
    n = n * 10 + (ch - '0');
  }
  return n >= 1 && n <= 99 ? n : -1;
}

bool episodeShareValue(V v, std::string* why) {
  if (episodeShare(v.text) >= 0) return true;
  *why = "must be off, on (80%) or a share like 75% (1%..99%): '" + v.text + "'";
  return false;
}

bool passwordHash(V v, std::string* why) { return checkPasswordHash(v.text, why); }

bool nonEmpty(V v, std::string* why) {
  if (!v.text.empty()) return true;
  *why = "empty value";
  return false;
}

// A prefix is compared segment by segment against normalised request paths,
// so anything but a clean absolute path could never match.
bool cleanPrefix(V v, std::string* why) {
  const std::string& p = v.text;
  if (p.empty() || p[0] != '/') {
    *why = "must start with '/': '" + p + "'";
    return false;
  }
  if (p == "/") return true;
  if (p.back() == '/') {
    *why = "must not end with '/': '" + p + "'";
    return false;
  }
  size_t begin = 1;
  while (begin <= p.size()) {
    size_t end = p.find('/', begin);
    if (end == std::string::npos) end = p.size();
    std::string_view seg(p.data() + begin, end - begin);
    if (seg.empty() || seg == "." || seg == "..") {
      *why = "must be a clean path without '//', '.' or '..' segments: '" + p + "'";
      return false;
    }
    begin = end + 1;
  }
  return true;
}

bool getOrHead(V v, std::string* why) {
  for (const std::string& m : v.list) {
    if (upper(m) != "GET" && upper(m) != "HEAD") {
      *why = "method '" + m + "' is never served (use GET and/or HEAD)";
      return false;
    }
  }
  return true;
}

// One row per directive reads better than clang-format's one field per line.
// clang-format off
// fnlen: table
std::vector<Directive> makeTable() {
  return {
      // ------------------------------------------------------------ [server]
      {.section = S::Server, .name = "listen", .type = T::Listen, .def = "0.0.0.0:8690",
       .repeatable = true,
       .doc = "Address to accept clients on: 127.0.0.1:8690, [::]:8690, :8690 (all IPv4); "
              "port 0 picks a free port. Add the word tls for HTTPS with tls_cert and tls_key: "
              "[::]:8443 tls.",
       .apply = [](Config& c, V v) { c.server.listen.push_back(v.listen); }},
      {.section = S::Server, .name = "workers", .type = T::String, .def = "auto",
       .doc = "Threads that accept plain-HTTP clients and serve warm hits (every requested byte "
              "stored) themselves: a number (1..64) or auto (one per core, at least 1). 1 = the "
              "event loop alone. Everything else (misses, admin, WebDAV, TLS) runs on the main loop.",
       .restart = true,
       .apply = [](Config& c, V v) { c.server.workers = v.text == "auto" ? 0 : workerNumber(v.text); },
       .check = workerCount},
      {.section = S::Server, .name = "max_connections", .type = T::Int, .def = "1024", .min = 1,
       .max = 1'000'000, .units = "connections",
       .doc = "Client connections open at once, idle ones included; one more is answered 503 "
              "and closed.",
       .apply = [](Config& c, V v) { c.server.maxConnections = v.num; }},
      {.section = S::Server, .name = "max_request_line", .type = T::Size, .def = "8K", .min = kK,
       .max = kM, .doc = "Longest request line accepted; a longer one gets 414.",
       .apply = [](Config& c, V v) { c.server.maxRequestLine = v.num; }},
      {.section = S::Server, .name = "max_header_size", .type = T::Size, .def = "32K", .min = kK,
       .max = 16 * kM, .doc = "Total size of a request's header lines; more gets 431.",
       .apply = [](Config& c, V v) { c.server.maxHeaderSize = v.num; }},
      {.section = S::Server, .name = "max_request_body", .type = T::Size, .def = "64K", .min = kK,
       .max = 16 * kM,
       .doc = "Largest request body read (a WebDAV PROPFIND's XML); a larger one gets 413.",
       .apply = [](Config& c, V v) { c.server.maxRequestBody = v.num; }},
      {.section = S::Server, .name = "header_timeout", .type = T::Duration, .def = "10s",
       .min = kMinTimeout, .max = 3600 * kSec,
       .doc = "A new connection must deliver a whole request within this long (and so must a "
              "keep-alive one from its request's first byte); otherwise it is closed (408 if "
              "part of a request came).",
       .apply = [](Config& c, V v) { c.server.headerTimeoutMs = v.num; }},
      {.section = S::Server, .name = "idle_timeout", .type = T::Duration, .def = "60s",
       .min = kMinTimeout, .max = kDay,
       .doc = "Close a keep-alive connection that sends no new request for this long.",
       .apply = [](Config& c, V v) { c.server.idleTimeoutMs = v.num; }},
      {.section = S::Server, .name = "send_timeout", .type = T::Duration, .def = "10m",
       .min = kMinTimeout, .max = kDay, .doc = "Close a client that reads nothing for this long.",
       .apply = [](Config& c, V v) { c.server.sendTimeoutMs = v.num; }},
      {.section = S::Server, .name = "shutdown_grace", .type = T::Duration, .def = "30s",
       .max = 3600 * kSec, .doc = "On SIGTERM, let running transfers finish for this long.",
       .apply = [](Config& c, V v) { c.server.shutdownGraceMs = v.num; }},
      {.section = S::Server, .name = "access_log", .type = T::Path, .def = "-",
       .doc = "Access log file; - for stdout, off for none.",
       .apply = [](Config& c, V v) { c.server.accessLog = v.text; }},
      {.section = S::Server, .name = "log_level", .type = T::Enum,
       .choices = "debug|info|warn|error", .def = "info",
       .doc = "Least severe level written to the error log.",
       .apply = [](Config& c, V v) {
         c.server.logLevel =
             pick(v, {LogLevel::Debug, LogLevel::Info, LogLevel::Warn, LogLevel::Error});
       }},
      {.section = S::Server, .name = "upstream_connections", .type = T::Int, .def = "64", .min = 1,
       .max = 10'000, .units = "connections",
       .doc = "Upstream transfers running at once, across all mounts.",
       .apply = [](Config& c, V v) { c.server.upstreamConnections = v.num; }},
      {.section = S::Server, .name = "connect_timeout", .type = T::Duration, .def = "10s",
       .min = kMinTimeout, .max = kDay, .doc = "Upstream TCP and TLS connect.",
       .apply = [](Config& c, V v) { c.server.connectTimeoutMs = v.num; }},
      {.section = S::Server, .name = "upstream_timeout", .type = T::Duration, .def = "30s",
       .min = kMinTimeout, .max = kDay, .doc = "Upstream: from request sent to response headers.",
       .apply = [](Config& c, V v) { c.server.upstreamTimeoutMs = v.num; }},
      {.section = S::Server, .name = "stall_timeout", .type = T::Duration, .def = "30s",
       .min = kMinTimeout, .max = kDay,
       .doc = "Window over which an upstream body's speed is judged: less than min_speed over it "
              "(time the gateway held the transfer not counted) and the connection is cut and "
              "the bytes asked for again from the byte reached.",
       .apply = [](Config& c, V v) { c.server.stallTimeoutMs = v.num; }},
      {.section = S::Server, .name = "min_speed", .type = T::Size, .def = "1K", .min = 1,
       .max = 1LL << 30, .units = "bytes/s",
       .doc = "Slowest upstream body kept: a trickle below it over stall_timeout is cut and retried.",
       .apply = [](Config& c, V v) { c.server.minSpeed = v.num; }},
      {.section = S::Server, .name = "ca_file", .type = T::Path,
       .doc = "PEM file of CA certificates trusted for every HTTPS upstream besides the system's "
              "(a mount's or account's ca_file adds to the system's instead). Read at start.",
       .apply = [](Config& c, V v) {
         c.server.caFile = v.text;
         c.server.caFileLine = v.line;
       }},
      {.section = S::Server, .name = "sign_secret", .type = T::Secret,
       .doc = "HMAC key for AList-compatible ?sign= links; unset = signing off. Never logged.",
       .apply = [](Config& c, V v) { c.server.signSecret = v.text; }},
      {.section = S::Server, .name = "sign_ttl", .type = T::Duration, .def = "0",
       .doc = "Validity of links made by `slipstream sign`; 0 = they never expire.",
       .apply = [](Config& c, V v) { c.server.signTtlMs = v.num; }},
      {.section = S::Server, .name = "sign_exempt", .type = T::CidrList,
       .doc = "Client networks that need no ?sign= even when signing is on.",
       .apply = [](Config& c, V v) { c.server.signExempt = v.cidrs; }},
      {.section = S::Server, .name = "role", .type = T::Enum, .choices = "main|edge", .def = "main",
       .doc = "main serves /d/ and /p/; edge serves AList-style proxy links /<path>?sign= (like alist-proxy) and needs sign_secret.",
       .restart = true,
       .apply = [](Config& c, V v) { c.server.role = pick(v, {Role::Main, Role::Edge}); }},
      {.section = S::Server, .name = "admin_allow", .type = T::CidrList, .def = "127.0.0.0/8 ::1",
       .doc = "Clients allowed on the /-/ admin routes without admin_token.",
       .apply = [](Config& c, V v) { c.server.adminAllow = v.cidrs; }},
      {.section = S::Server, .name = "admin_token", .type = T::Secret,
       .doc = "Bearer token for the /-/ admin routes from other clients. Never logged.",
       .apply = [](Config& c, V v) { c.server.adminToken = v.text; }},
      {.section = S::Server, .name = "dav_allow", .type = T::CidrList, .def = "127.0.0.0/8 ::1",
       .doc = "Clients that use the WebDAV front without a password; everyone else needs a "
              "[user NAME] (HTTP Basic).",
       .apply = [](Config& c, V v) { c.server.davAllow = v.cidrs; }},
      {.section = S::Server, .name = "state_dir", .type = T::Path, .def = "/var/lib/slipstream",
       .doc = "Directory for state that must survive restarts: each account's rotated refresh "
              "token (mode 0600).",
       .restart = true,
       .apply = [](Config& c, V v) { c.server.stateDir = v.text; }},

      {.section = S::Server, .name = "tls_cert", .type = T::Path,
       .doc = "PEM certificate for the listen addresses marked tls, followed by its chain "
              "(e.g. Let's Encrypt's fullchain.pem). Re-read on SIGHUP.",
       .apply = [](Config& c, V v) {
         c.server.tlsCert = v.text;
         c.server.tlsCertLine = v.line;
       }},
      {.section = S::Server, .name = "tls_key", .type = T::Path,
       .doc = "PEM private key of tls_cert (it must match). Re-read on SIGHUP.",
       .apply = [](Config& c, V v) {
         c.server.tlsKey = v.text;
         c.server.tlsKeyLine = v.line;
       }},

      // ------------------------------------------------------------ [cache]
      {.section = S::Cache, .name = "dir", .type = T::Path, .def = "/var/cache/slipstream",
       .doc = "Directory holding the LMDB index and the blocks.",
       .restart = true,
       .apply = [](Config& c, V v) { c.cache.dir = v.text; }},
      {.section = S::Cache, .name = "max_size", .type = T::Size, .def = "10G", .min = kM,
       .doc = "Cap on cached data; the least valuable blocks are evicted above it.",
       .restart = true,
       .apply = [](Config& c, V v) { c.cache.maxSize = v.num; }},
      {.section = S::Cache, .name = "min_free", .type = T::Size, .def = "1G",
       .doc = "Free space to leave on the cache's file system.",
       .restart = true,
       .apply = [](Config& c, V v) { c.cache.minFree = v.num; }},
      {.section = S::Cache, .name = "block_size", .type = T::Size, .def = "1M", .min = 64 * kK,
       .max = 64 * kM, .units = "power of two", .doc = "Unit of fetching and storing.",
       .restart = true,
       .apply = [](Config& c, V v) { c.cache.blockSize = v.num; }, .check = powerOfTwo},
      {.section = S::Cache, .name = "fill_memory", .type = T::Size, .def = "16M", .max = 4096 * kM,
       .doc = "Memory for blocks in flight: a cold client is served from it as bytes arrive while the disk "
              "write and sync run behind; when the disk falls behind, blocks are served but not cached. "
              "0 = fill through the disk (the client waits for it).",
       .apply = [](Config& c, V v) { c.cache.fillMemory = v.num; }},
      {.section = S::Cache, .name = "test_disk_rate", .type = T::Size, .def = "0",
       .doc = "Test hook, refused unless the environment has SLIPSTREAM_TEST_HOOKS=1: the disk thread "
              "takes size/rate seconds per write, a slow disk for the integration tests. 0 = off.",
       .restart = true,
       .apply = [](Config& c, V v) { c.cache.testDiskRate = v.num; }, .check = testHook},

      // ------------------------------------------------------------ [account NAME]
      {.section = S::Account, .name = "refresh_token", .type = T::Secret,
       .requiredFor = kAllSources,
       .doc = "Aliyundrive Open refresh token. It rotates on every use; the current one is kept "
              "in state_dir, and this one is used again only when you change it here. Never logged.",
       .apply = [](Config& c, V v) {
         account(c).refreshToken = v.text;
         account(c).refreshTokenLine = v.line;
       },
       .check = nonEmpty},
      {.section = S::Account, .name = "client_id", .type = T::String,
       .doc = "Your Open-platform app's client id; unset = use oauth_token_url.",
       .apply = [](Config& c, V v) { account(c).clientId = v.text; }},
      {.section = S::Account, .name = "client_secret", .type = T::Secret,
       .doc = "Your app's client secret (with client_id). Never logged.",
       .apply = [](Config& c, V v) { account(c).clientSecret = v.text; }},
      {.section = S::Account, .name = "oauth_token_url", .type = T::Url,
       .doc = "Token relay for users without their own app (it holds the client secret): "
              "the refresh exchange is POSTed here instead.",
       .apply = [](Config& c, V v) { account(c).oauthTokenUrl = v.text; }},
      {.section = S::Account, .name = "api_url", .type = T::Url, .def = "https://openapi.alipan.com",
       .doc = "Open API base URL.",
       .apply = [](Config& c, V v) { account(c).apiUrl = v.text; }},
      {.section = S::Account, .name = "drive_type", .type = T::Enum,
       .choices = "resource|default|backup", .def = "resource",
       .doc = "Which drive of the account the mounts see.",
       .apply = [](Config& c, V v) {
         account(c).driveType = pick(v, {DriveType::Resource, DriveType::Default, DriveType::Backup});
       }},
      {.section = S::Account, .name = "max_connections", .type = T::Int, .def = "3", .min = 1,
       .max = 64, .units = "per account",
       .doc = "Download connections at once, all mounts and clients together (the service "
              "refuses a 4th).",
       .apply = [](Config& c, V v) { account(c).maxConnections = v.num; }},
      {.section = S::Account, .name = "link_interval", .type = T::Duration, .def = "1s",
       .min = kMinTimeout, .max = 3600 * kSec,
       .doc = "Least time between two download-link requests (the service allows about one a "
              "second).",
       .apply = [](Config& c, V v) { account(c).linkIntervalMs = v.num; }},
      {.section = S::Account, .name = "list_interval", .type = T::Duration, .def = "250ms",
       .min = kMinTimeout, .max = 3600 * kSec,
       .doc = "Least time between two other API requests (listings: about four a second).",
       .apply = [](Config& c, V v) { account(c).listIntervalMs = v.num; }},
      {.section = S::Account, .name = "list_ttl", .type = T::Duration, .def = "1m",
       .max = kDay, .doc = "Reuse a folder listing this long (path lookups).",
       .apply = [](Config& c, V v) { account(c).listTtlMs = v.num; }},
      {.section = S::Account, .name = "ca_file", .type = T::Path, .def = "[server] ca_file",
       .derivedDefault = true,
       .doc = "PEM CA certificates trusted besides the system's for the account's API calls and "
              "its mounts' downloads (a self-hosted Open API relay).",
       .apply = [](Config& c, V v) {
         account(c).caFile = v.text;
         account(c).caFileLine = v.line;
       }},

      // ------------------------------------------------------------ [user NAME]
      {.section = S::User, .name = "password_hash", .type = T::Secret, .requiredFor = kAllSources,
       .doc = "crypt(3) hash of the user's WebDAV password, never the password: `slipstream "
              "passwd` or `mkpasswd` make one (yescrypt $y$, also bcrypt $2b$, scrypt $7$, "
              "SHA-512 $6$).",
       .apply = [](Config& c, V v) { user(c).passwordHash = v.text; },
       .check = passwordHash},

      // ------------------------------------------------------------ [mount NAME]
      {.section = S::Mount, .name = "prefix", .type = T::String, .def = "/NAME",
       .derivedDefault = true,
       .doc = "Virtual path the mount serves: /movies (no trailing /, no . or .. segments).",
       .apply = [](Config& c, V v) { mount(c).prefix = v.text; }, .check = cleanPrefix},
      {.section = S::Mount, .name = "source", .type = T::Enum,
       .choices = "http|local|alist|aliyundrive_open", .requiredFor = kAllSources,
       .doc = "Where the bytes live.",
       .apply = [](Config& c, V v) {
         mount(c).source = pick(v, {SourceType::Http, SourceType::Local, SourceType::Alist,
                                    SourceType::AliyundriveOpen});
       }},
      {.section = S::Mount, .name = "base_url", .type = T::Url, .sources = kHttp,
       .requiredFor = kHttp,
       .doc = "Origin the request path is appended to: https://mirror.example/pub.",
       .apply = [](Config& c, V v) { mount(c).baseUrl = v.text; }},
      {.section = S::Mount, .name = "root", .type = T::Path, .def = "/", .sources = kLocal | kAlist,
       .requiredFor = kLocal,
       .doc = "local: existing absolute directory to serve; alist: path prefix on the AList side.",
       .apply = [](Config& c, V v) { mount(c).root = v.text; }},
      {.section = S::Mount, .name = "url", .type = T::Url, .sources = kAlist, .requiredFor = kAlist,
       .doc = "AList/OpenList server: http://127.0.0.1:5244.",
       .apply = [](Config& c, V v) { mount(c).url = v.text; }},
      {.section = S::Mount, .name = "token", .type = T::Secret, .sources = kAlist,
       .doc = "AList token, sent as Authorization. Never logged.",
       .apply = [](Config& c, V v) { mount(c).token = v.text; }},
      {.section = S::Mount, .name = "account", .type = T::String, .sources = kAliyun,
       .requiredFor = kAliyun, .doc = "The [account NAME] whose drive this mount shows.",
       .apply = [](Config& c, V v) { mount(c).account = v.text; }},
      {.section = S::Mount, .name = "root_folder_id", .type = T::String, .def = "root",
       .sources = kAliyun,
       .doc = "file_id of the folder the mount starts at (the last part of the folder's web URL).",
       .apply = [](Config& c, V v) { mount(c).rootFolderId = v.text; }, .check = nonEmpty},
      {.section = S::Mount, .name = "link_expire", .type = T::Duration, .def = "4h",
       .min = kSec, .max = 32 * 3600 * kSec, .sources = kAliyun,
       .doc = "Life asked for download links; links are renewed shortly before the expiry the "
              "service reports.",
       .apply = [](Config& c, V v) { mount(c).linkExpireMs = v.num; }},
      {.section = S::Mount, .name = "ca_file", .type = T::Path, .def = "[server] ca_file",
       .derivedDefault = true, .sources = kHttp | kAlist | kAliyun,
       .doc = "PEM CA certificates trusted besides the system's for this mount's HTTPS: downloads "
              "and, for alist, the API (an AList on https://nas.lan with its own CA).",
       .apply = [](Config& c, V v) {
         mount(c).caFile = v.text;
         mount(c).caFileLine = v.line;
       }},
      {.section = S::Mount, .name = "header", .type = T::Header, .repeatable = true,
       .sources = kHttp | kAlist | kAliyun,
       .doc = "Header added to every upstream request: Referer: https://www.alipan.com/.",
       .apply = [](Config& c, V v) { mount(c).headers.push_back(v.header); }},
      {.section = S::Mount, .name = "delivery", .type = T::Enum,
       .choices = "auto|redirect|proxy|proxy_url", .def = "auto",
       .doc = "Delivery when no rule matches; auto = redirect if the client can open the "
              "link itself, else proxy.",
       .apply = [](Config& c, V v) {
         mount(c).delivery =
             pick(v, {Delivery::Auto, Delivery::Redirect, Delivery::Proxy, Delivery::ProxyUrl});
       }},
      {.section = S::Mount, .name = "proxy_url", .type = T::Url,
       .doc = "Edge node for proxy_url delivery: clients go to <proxy_url><path>?sign=.",
       .apply = [](Config& c, V v) { mount(c).proxyUrl = v.text; }},
      {.section = S::Mount, .name = "cache", .type = T::Bool, .def = "on",
       .doc = "Keep fetched blocks on disk.",
       .apply = [](Config& c, V v) { mount(c).cache = v.num != 0; }},
      {.section = S::Mount, .name = "revalidate", .type = T::Duration, .def = "10m",
       .doc = "Trust stored size and validators this long before asking upstream again.",
       .apply = [](Config& c, V v) { mount(c).revalidateMs = v.num; }},
      {.section = S::Mount, .name = "connections", .type = T::Int, .def = "16", .min = 1, .max = 64,
       .units = "per object", .doc = "Parallel range requests for one object.",
       .apply = [](Config& c, V v) { mount(c).connections = v.num; }},
      {.section = S::Mount, .name = "max_connections", .type = T::Int, .def = "32", .min = 1,
       .max = 256, .units = "per source", .sources = kHttp | kLocal | kAlist,
       .doc = "Upstream transfers at once for this source (aliyundrive_open: the account's "
              "max_connections).",
       .apply = [](Config& c, V v) { mount(c).maxConnections = v.num; }},
      {.section = S::Mount, .name = "read_ahead", .type = T::Size, .def = "64M",
       .doc = "Bytes fetched ahead of a reader (never past the end of its range; at most a quarter of max_size).",
       .apply = [](Config& c, V v) { mount(c).readAhead = v.num; }},
      {.section = S::Mount, .name = "media_prefetch", .type = T::Size, .def = "4M", .max = 64LL << 20,
       .doc = "On the first read of an MP4/MOV/M4V or Matroska/WebM file, fetch its index (moov, "
              "Cues; else the file's last bytes) this far, with the head; 0 = off.",
       .apply = [](Config& c, V v) { mount(c).mediaPrefetch = v.num; }},
      {.section = S::Mount, .name = "link_ttl", .type = T::Duration, .def = "0",
       .sources = kHttp | kAlist | kAliyun,
       .doc = "Reuse a resolved link this long when neither the source nor the link itself says when "
              "it expires (an expiry written in a signed URL wins); 0 = the source's default.",
       .apply = [](Config& c, V v) { mount(c).linkTtlMs = v.num; }},
      {.section = S::Mount, .name = "link_bind", .type = T::Enum, .choices = "none|ua|ua+ip",
       .def = "none", .sources = kHttp | kAlist,
       .doc = "The upstream binds links to the User-Agent (ua) or UA and IP (ua+ip) that "
              "asked; auto then proxies.",
       .apply = [](Config& c, V v) {
         mount(c).linkBind = pick(v, {LinkBind::None, LinkBind::Ua, LinkBind::UaIp});
       }},
      {.section = S::Mount, .name = "list_ttl", .type = T::Duration, .def = "1m", .max = kDay,
       .sources = kLocal | kAlist,
       .doc = "Reuse a folder listing this long (WebDAV, strm export); aliyundrive_open: the "
              "account's list_ttl.",
       .apply = [](Config& c, V v) { mount(c).listTtlMs = v.num; }},
      {.section = S::Mount, .name = "next_episode", .type = T::String, .def = "off",
       .units = "off, on, 1%..99%", .sources = kAlist | kAliyun,
       .doc = "When a client has read this share of an episode (S01E03, 1x03, EP03, E03, 第3集, …), "
              "warm the next one of its folder: its head and media index, as background work that "
              "yields to clients; on = 80%.",
       .apply = [](Config& c, V v) { mount(c).nextEpisode = episodeShare(v.text); },
       .check = episodeShareValue},

      // ------------------------------------------------------------ [rule NAME]
      {.section = S::Rule, .name = "mount", .type = T::List,
       .doc = "Mounts the rule applies to; unset = all.",
       .apply = [](Config& c, V v) { rule(c).mounts = v.list; }},
      {.section = S::Rule, .name = "path", .type = T::String, .repeatable = true,
       .doc = "Glob on the virtual path (* within a segment, ** across, ?); any one may match.",
       .apply = [](Config& c, V v) { rule(c).paths.push_back(v.text); }},
      {.section = S::Rule, .name = "ext", .type = T::List,
       .doc = "File extensions, any case, dot optional: mkv, .mp4.",
       .apply = [](Config& c, V v) {
         for (const std::string& e : v.list)
           if (e != ".") rule(c).exts.push_back(lower(e[0] == '.' ? e.substr(1) : e));
       }},
      {.section = S::Rule, .name = "client", .type = T::CidrList, .doc = "Client networks.",
       .apply = [](Config& c, V v) { rule(c).clients = v.cidrs; }},
      {.section = S::Rule, .name = "user_agent", .type = T::String,
       .doc = "POSIX extended regular expression on the User-Agent.",
       .apply = [](Config& c, V v) { rule(c).userAgent = v.text; }},
      {.section = S::Rule, .name = "ignore_case", .type = T::Bool, .def = "off",
       .doc = "Match path and user_agent without regard to case.",
       .apply = [](Config& c, V v) { rule(c).ignoreCase = v.num != 0; }},
      {.section = S::Rule, .name = "min_size", .type = T::Size,
       .doc = "Smallest file size that matches.",
       .apply = [](Config& c, V v) { rule(c).minSize = v.num; }},
      {.section = S::Rule, .name = "max_size", .type = T::Size,
       .doc = "Largest file size that matches.",
       .apply = [](Config& c, V v) { rule(c).maxSize = v.num; }},
      {.section = S::Rule, .name = "method", .type = T::List, .doc = "GET and/or HEAD.",
       .apply = [](Config& c, V v) {
         for (const std::string& m : v.list) rule(c).methods.push_back(upper(m));
       },
       .check = getOrHead},
      {.section = S::Rule, .name = "action", .type = T::Enum,
       .choices = "redirect|proxy|proxy_url|deny", .requiredFor = kAllSources,
       .doc = "Delivery for matching requests.",
       .apply = [](Config& c, V v) {
         rule(c).action =
             pick(v, {Delivery::Redirect, Delivery::Proxy, Delivery::ProxyUrl, Delivery::Deny});
       }},
      {.section = S::Rule, .name = "proxy_url", .type = T::Url,
       .doc = "Edge node for action = proxy_url; unset = the mount's proxy_url.",
       .apply = [](Config& c, V v) { rule(c).proxyUrl = v.text; }},
      {.section = S::Rule, .name = "connections", .type = T::Int, .min = 1, .max = 64,
       .units = "per object", .doc = "Overrides the mount's connections.",
       .apply = [](Config& c, V v) { rule(c).connections = v.num; }},
      {.section = S::Rule, .name = "cache", .type = T::Bool, .doc = "Overrides the mount's cache.",
       .apply = [](Config& c, V v) { rule(c).cache = v.num != 0; }},
      {.section = S::Rule, .name = "media_prefetch", .type = T::Bool,
       .doc = "off: no index prefetch for matching files; on: the mount's media_prefetch (4M when it is 0).",
       .apply = [](Config& c, V v) { rule(c).mediaPrefetch = v.num != 0; }},
      {.section = S::Rule, .name = "next_episode", .type = T::String, .units = "off, on, 1%..99%",
       .doc = "Overrides the mount's next_episode for matching files (off, on = 80%, or a share).",
       .apply = [](Config& c, V v) { rule(c).nextEpisode = episodeShare(v.text); },
       .check = episodeShareValue},
  };
}
// clang-format on

}  // namespace

namespace {

// Every Secret key gets a `<name>_file` twin right after it: same section,
// sources, apply and check; the loader reads the value from the file.
std::vector<Directive> withSecretFiles(const std::vector<Directive>& table) {
  static std::deque<std::string> text;  // names and docs of the derived rows
  std::vector<Directive> out;
  for (const Directive& d : table) {
    out.push_back(d);
    if (d.type != T::Secret) continue;
    Directive f = d;
    f.type = T::SecretFile;
    f.fileOf = d.name;
    f.def = nullptr;
    f.requiredFor = 0;
    f.repeatable = false;
    f.name = text.emplace_back(std::string(d.name) + "_file").c_str();
    f.doc = text.emplace_back("A file holding " + std::string(d.name) +
                              ", to keep it out of the INI: its content, line breaks at the end "
                              "stripped (a relative path is taken from the INI's folder). Give "
                              "one of the two.")
                .c_str();
    out.push_back(f);
  }
  return out;
}

}  // namespace

const std::vector<Directive>& directives() {
  static const std::vector<Directive> table = withSecretFiles(makeTable());
  return table;
}

}  // namespace slip::conf
