// conf: the directive table, the loader and its error reports.
#include "conf/conf.h"

#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>

#include "tests/unit/conf_helpers.h"

using namespace slip::conf;
using namespace conf_test;

TEST_CASE("malformed configurations name the line, key and problem", "[conf]") {
  struct Case {
    std::string ini;
    int line;
    std::string fragment;
    std::string key;
  };
  const std::string longLine = "[server]\naccess_log = /" + std::string(70'000, 'a') + "\n";
  const Case cases[] = {
      // structure
      {"[srever]\n", 1, "unknown section [srever] (did you mean [server]?)", ""},
      {"[mounts x]\n", 1, "did you mean [mount NAME]?", ""},
      {"[frobnicate]\n", 1, "sections: [server], [cache]", ""},
      {"listen = :80\n", 1, "outside any section", "listen"},
      {"[server]\nlisten :80\n", 2, "missing '='", ""},
      {"[server]\nlisten\n", 2, "missing '='", ""},
      {"[server]\n= 5\n", 2, "missing key name", ""},
      {"[server\nlisten = :80\n", 1, "missing ']'", ""},
      {"[server] x\n", 1, "unexpected text after ']'", ""},
      {"[server main]\n", 1, "takes no name", ""},
      {"[mount]\nsource = http\n", 1, "needs a name", ""},
      {"[mount my/films]\n", 1, "may contain only letters", ""},
      {longLine, 2, "line is longer than 65536 characters", ""},
      {"[server]\nlog_level = info\nlog_level = warn\n", 3, "given twice (first on line 2)",
       "log_level"},
      {"[server]\nmax_conections = 5\n", 2, "did you mean 'max_connections'?", "max_conections"},
      {"[mount m]\nsource = http\nbase_ur = http://x/\n", 3, "did you mean 'base_url'?", "base_ur"},
      {"[server]\nblock_size = 1M\n", 2, "belongs in [cache]", "block_size"},
      // values
      {"[cache]\nmax_size = 4X\n", 2, "unknown size unit 'X'", "max_size"},
      {"[cache]\nmin_free = -1G\n", 2, "must not be negative", "min_free"},
      {"[cache]\nmax_size = 99999999999T\n", 2, "too large", "max_size"},
      {"[server]\nidle_timeout = 5 minutes\n", 2, "unknown duration unit 'minutes'",
       "idle_timeout"},
      {"[server]\nidle_timeout = soon\n", 2, "not a duration", "idle_timeout"},
      {"[server]\nidle_timeout = 0\n", 2, "out of range (10ms..1d)", "idle_timeout"},
      {kHttp + "cache = maybe\n", 4, "not a boolean", "cache"},
      {"[server]\nlog_level = verbose\n", 2, "unknown value 'verbose' (use one of: debug,info",
       "log_level"},
      {kHttp + "connections = 100\n", 4, "out of range (1..64)", "connections"},
      {"[server]\nmax_connections = lots\n", 2, "not a whole number", "max_connections"},
      {"[server]\nmax_connections = 99999999999999999999\n", 2, "number too large",
       "max_connections"},
      {"[cache]\nblock_size = 3M\n", 2, "power of two", "block_size"},
      {"[cache]\nblock_size = 32K\n", 2, "out of range (64K..64M)", "block_size"},
      {"[cache]\ndir =\n", 2, "empty value", "dir"},
      {"[server]\nlisten = 127.0.0.1\n", 2, "needs a port", "listen"},
      {"[server]\nlisten = ::1:8080\n", 2, "need brackets", "listen"},
      {"[server]\nlisten = 127.0.0.1:70000\n", 2, "bad port '70000'", "listen"},
      {"[server]\nlisten = :80\nlisten = 0.0.0.0:80\n", 3, "given twice (first on line 2)",
       "listen"},
      {"[server]\nadmin_allow = 10.0.0.0/33\n", 2, "prefix length over 32", "admin_allow"},
      {"[server]\nsign_exempt = 10.0.0.0/8, banana\n", 2, "not an IP address", "sign_exempt"},
      {"[mount m]\nsource = http\nbase_url = ftp://x/\n", 3, "not an http(s) URL", "base_url"},
      {"[mount m]\nsource = ftp\n", 2, "unknown value 'ftp'", "source"},
      // mounts
      {"[mount m]\nbase_url = http://x/\n", 1, "required key is missing", "source"},
      {"[mount m]\nsource = http\n", 1, "required for http mounts", "base_url"},
      {"[mount m]\nsource = alist\n", 1, "required for alist mounts", "url"},
      {"[mount m]\nsource = local\nroot = /\nbase_url = http://x/\n", 4,
       "does not apply to local mounts", "base_url"},
      {kHttp + "token = t\n", 4, "does not apply to http mounts (only alist)", "token"},
      {"[mount m]\nsource = local\n", 1, "required for local mounts", "root"},
      {"[mount m]\nsource = local\nroot = /nonexistent/slipstream\n", 3,
       "No such file or directory", "root"},
      {"[mount m]\nsource = local\nroot = /dev/null\n", 3, "not a directory", "root"},
      {"[mount m]\nsource = local\nroot = media\n", 3, "must be an absolute path", "root"},
      {"[mount m]\nsource = local\nroot = /\ndelivery = redirect\n", 4,
       "impossible for a local mount", "delivery"},
      {kHttp + "delivery = proxy_url\n", 4, "needs proxy_url", "delivery"},
      {kHttp + "[mount m]\nsource = http\n", 4, "duplicate mount 'm' (first on line 1)", ""},
      {kHttp + "prefix = /x\n[mount n]\nsource = http\nbase_url = http://o/\nprefix = /x\n", 8,
       "already the prefix of mount 'm'", "prefix"},
      {kHttp + "[mount n]\nsource = http\nbase_url = http://o/\nprefix = /m\n", 7,
       "already the prefix of mount 'm'", "prefix"},
      {kHttp + "prefix = movies\n", 4, "must start with '/'", "prefix"},
      {kHttp + "prefix = /movies/\n", 4, "must not end with '/'", "prefix"},
      {kHttp + "prefix = /a/../b\n", 4, "'..' segments", "prefix"},
      {kHttp + "header = Referer\n", 4, "expected 'Name: value'", "header"},
      {kHttp + "header = Bad Name: x\n", 4, "bad header name 'Bad Name'", "header"},
      {kHttp + "header = X-A: a\rb\n", 4, "value contains CR, LF or NUL", "header"},
      {kHttp + "header = X-A: a\x01b\n", 4, "value contains a control character", "header"},
      {kHttp + "header = X-A: a\x7f\n", 4, "value contains a control character", "header"},
      {kHttp + "header = Content-Length: 5\n", 4, "set by slipstream itself", "header"},
      {kHttp + "header = transfer-encoding: chunked\n", 4, "set by slipstream itself", "header"},
      {kHttp + "header = Range: bytes=0-\n", 4, "set by slipstream itself", "header"},
      {kHttp + "header = X-A\x01: v\n", 4, "bad header name 'X-A\\x01'", "header"},
      {kHttp + "header = : v\n", 4, "empty header name", "header"},
      // rules
      {kHttp + "[rule r]\nmount = n\naction = proxy\n", 5, "unknown mount 'n'", "mount"},
      {kHttp + "[rule r]\nmount = mm\naction = proxy\n", 5, "did you mean 'm'?", "mount"},
      {kHttp + "[rule r]\npath = /x/*\n", 4, "required key is missing", "action"},
      {kHttp + "[rule r]\naction = proxy\nmin_size = 1G\nmax_size = 1M\n", 7,
       "min_size 1G is larger than max_size 1M", "max_size"},
      {kHttp + "[rule r]\naction = proxy_url\n", 5, "applies to every mount", "action"},
      {kHttp + "[rule r]\nmount = m\naction = proxy_url\n", 6, "or on mount 'm'", "action"},
      {kHttp + "[rule r]\naction = proxy\nmethod = GET, POST\n", 6, "method 'POST' is never served",
       "method"},
      {kHttp + "[rule r]\naction = proxy\n[rule r]\naction = deny\n", 6, "duplicate rule 'r'", ""},
      // accounts (aliyundrive_open)
      {"[mount a]\nsource = aliyundrive_open\n", 1, "required for aliyundrive_open mounts",
       "account"},
      {kAcct + "[mount a]\nsource = aliyundrive_open\naccount = al\n", 8,
       "no [account al] in this file (did you mean 'ali'?)", "account"},
      {"[account x]\nclient_id = c\nclient_secret = s\n", 1, "required key is missing",
       "refresh_token"},
      {"[account x]\nrefresh_token = t\n", 1, "or oauth_token_url (a token relay)", "client_id"},
      {"[account x]\nrefresh_token = t\nclient_id = c\n", 3, "client_id needs client_secret",
       "client_secret"},
      {"[account x]\nrefresh_token = t\nclient_secret = s\n", 3, "client_secret needs client_id",
       "client_id"},
      {"[account x]\nrefresh_token = t\noauth_token_url = relay\n", 3, "not an http(s) URL",
       "oauth_token_url"},
      {"[account x]\nrefresh_token = t\noauth_token_url = http://r/\ndrive_type = album\n", 4,
       "use one of: resource,default,backup", "drive_type"},
      {"[account]\nrefresh_token = t\n", 1, "needs a name: [account NAME]", ""},
      {kAcct + "oauth_token_url = http://r/\n", 6, "not both", "oauth_token_url"},
      {kAcct + "[account ali]\n", 6, "duplicate account 'ali'", ""},
      {kAcct + "[mount a]\nsource = aliyundrive_open\naccount = ali\nmax_connections = 8\n", 9,
       "does not apply to aliyundrive_open mounts", "max_connections"},
      {kHttp + "root_folder_id = abc\n", 4, "only aliyundrive_open", "root_folder_id"},
      {"[account x]\nrefresh_token =\noauth_token_url = http://r/\n", 2, "empty value",
       "refresh_token"},
      {kAcct + "[mount a]\nsource = aliyundrive_open\naccount = ali\nroot_folder_id =\n", 9,
       "empty value", "root_folder_id"},
      {kAcct + "[mount a]\nsource = aliyundrive_open\naccount = ali\nlink_expire = 0\n", 9,
       "out of range (1s..32h)", "link_expire"},
  };
  for (const Case& c : cases) {
    LoadResult r = loadString(c.ini, "bad.ini");
    INFO("config:\n" << c.ini << "errors:\n" << allErrors(r));
    CHECK_FALSE(r.config);
    CHECK(hasError(r, c.line, c.fragment, c.key));
    for (const Error& e : r.errors) CHECK(e.file == "bad.ini");
  }
}

TEST_CASE("every error in a file is reported, each at its own line", "[conf]") {
  LoadResult r = loadString(
      "[server]\n"                   // 1
      "max_connections = 0\n"        // 2
      "\n"                           // 3
      "[cache]\n"                    // 4
      "block_size = 1M\n"            // 5
      "max_sise = 4G\n"              // 6
      "[mount films]\n"              // 7
      "source = http\n"              // 8
      "base_url = http://origin/\n"  // 9
      "read_ahead = 12Q\n",          // 10
      "three.ini");
  INFO(allErrors(r));
  REQUIRE(r.errors.size() == 3);
  CHECK(r.errors[0].str() ==
        "three.ini:2: [server] max_connections: '0' is out of range (1..1000000)");
  CHECK(r.errors[1].str() ==
        "three.ini:6: [cache] max_sise: unknown key 'max_sise' (did you mean 'max_size'?)");
  CHECK(r.errors[2].str() ==
        "three.ini:10: [mount films] read_ahead: unknown size unit 'Q' (use K, M, G or T)");
  CHECK_FALSE(r.config);
}

TEST_CASE("one mistake gives one error, not a cascade", "[conf]") {
  const std::string inputs[] = {
      "[mount]\nsource = nonsense\nbogus = 1\n",                    // keys of a rejected section
      "[mount m]\nsource = ftp\nroot = /\nbase_url = http://o/\n",  // bad source: no more checks
      "[mount m]\nsource = local\nroot =\n",                        // bad root: not also "relative"
      kHttp + "delivery = proxy_url\nproxy_url = edge\n",  // bad proxy_url: not also "needs"
      kHttp + "[rule r]\naction = proxyurl\n",             // bad action: no proxy_url check
  };
  for (const std::string& ini : inputs) {
    LoadResult r = loadString(ini, "t.ini");
    INFO(ini << allErrors(r));
    CHECK(r.errors.size() == 1);
  }
}

TEST_CASE("sizes and durations take their units", "[conf]") {
  struct SizeCase {
    const char* text;
    int64_t bytes;
  };
  for (const SizeCase& c : {SizeCase{"64K", 64LL << 10},
                            {"4M", 4LL << 20},
                            {"50G", 50LL << 30},
                            {"1T", 1LL << 40},
                            {"4096", 4096},
                            {"4m", 4LL << 20},
                            {"0", 0}}) {
    INFO(c.text);
    CHECK(parseSize(c.text) == c.bytes);
    Config cfg = mustLoad(kHttp + "read_ahead = " + c.text + "\n");
    CHECK(cfg.mounts[0].readAhead == c.bytes);
  }
  struct DurationCase {
    const char* text;
    int64_t ms;
  };
  for (const DurationCase& c : {DurationCase{"500ms", 500},
                                {"90s", 90'000},
                                {"15m", 900'000},
                                {"4h", 14'400'000},
                                {"2d", 172'800'000},
                                {"30", 30'000}}) {
    INFO(c.text);
    CHECK(parseDuration(c.text) == c.ms);
    Config cfg = mustLoad(kHttp + "revalidate = " + c.text + "\n");
    CHECK(cfg.mounts[0].revalidateMs == c.ms);
  }
}

TEST_CASE("a full configuration loads into exact values", "[conf]") {
  Config c = mustLoad(R"(; slipstream test configuration
[server]
listen = 127.0.0.1:8690
listen = [::1]:8691
max_connections = 500
max_request_line = 4K
max_header_size = 64K
idle_timeout = 15s
send_timeout = 2m
shutdown_grace = 0
access_log = /var/log/slipstream/access.log
log_level = debug
upstream_connections = 128
connect_timeout = 500ms
upstream_timeout = 20s
stall_timeout = 45s
sign_secret = s3cr3t
sign_ttl = 4h
sign_exempt = 192.168.0.0/16, fd00::/8
role = edge
admin_allow = 10.1.2.3 ::1
admin_token = t0k3n

[cache]
dir = /srv/cache
max_size = 50G
min_free = 2G
block_size = 4M

[mount movies]
source = http
base_url = https://mirror.example/pub
header = Referer: https://www.alipan.com/
header = User-Agent: pan.baidu.com
delivery = proxy
cache = off
revalidate = 1h
connections = 8
max_connections = 3
read_ahead = 64M
link_ttl = 15m
link_bind = ua+ip

[mount drive]
prefix = /cloud/drive
source = alist
url = http://127.0.0.1:5244
token = alist-token
root = /aliyun
header = X-Trace: on
delivery = proxy_url
proxy_url = https://edge.example/

[rule big-video]
mount = movies, drive
path = /movies/**
path = /tv/**
ext = .MKV mp4
client = 10.0.0.0/8
user_agent = ^(VLC|mpv)
ignore_case = yes
min_size = 100M
max_size = 50G
method = get, HEAD
action = proxy
connections = 32
cache = on

[rule edge]
action = proxy_url
proxy_url = http://edge2.example:8080/
)");
  const Server& s = c.server;
  REQUIRE(s.listen.size() == 2);
  CHECK(s.listen[0].host == "127.0.0.1");
  CHECK(s.listen[0].port == 8690);
  CHECK(s.listen[0].line == 3);
  CHECK(s.listen[1].host == "::1");
  CHECK(s.listen[1].port == 8691);
  CHECK(s.listen[1].line == 4);
  CHECK(s.maxConnections == 500);
  CHECK(s.maxRequestLine == 4096);
  CHECK(s.maxHeaderSize == 65536);
  CHECK(s.idleTimeoutMs == 15'000);
  CHECK(s.sendTimeoutMs == 120'000);
  CHECK(s.shutdownGraceMs == 0);
  CHECK(s.accessLog == "/var/log/slipstream/access.log");
  CHECK(s.logLevel == LogLevel::Debug);
  CHECK(s.upstreamConnections == 128);
  CHECK(s.connectTimeoutMs == 500);
  CHECK(s.upstreamTimeoutMs == 20'000);
  CHECK(s.stallTimeoutMs == 45'000);
  CHECK(s.signSecret == "s3cr3t");
  CHECK(s.signTtlMs == 14'400'000);
  REQUIRE(s.signExempt.size() == 2);
  CHECK(s.signExempt[0].text == "192.168.0.0/16");
  CHECK(s.signExempt[0].prefix == 96 + 16);
  CHECK(s.signExempt[1].text == "fd00::/8");
  CHECK(s.signExempt[1].prefix == 8);
  CHECK(s.role == Role::Edge);
  REQUIRE(s.adminAllow.size() == 2);
  CHECK(s.adminAllow[0].text == "10.1.2.3");
  CHECK(s.adminAllow[1].text == "::1");
  CHECK(s.adminToken == "t0k3n");

  CHECK(c.cache.dir == "/srv/cache");
  CHECK(c.cache.maxSize == 50LL << 30);
  CHECK(c.cache.minFree == 2LL << 30);
  CHECK(c.cache.blockSize == 4LL << 20);

  REQUIRE(c.mounts.size() == 2);
  const Mount& m = c.mounts[0];
  CHECK(m.name == "movies");
  CHECK(m.line == 30);
  CHECK(m.prefix == "/movies");
  CHECK(m.source == SourceType::Http);
  CHECK(m.baseUrl == "https://mirror.example/pub");
  REQUIRE(m.headers.size() == 2);
  CHECK(m.headers[0].name == "Referer");
  CHECK(m.headers[0].value == "https://www.alipan.com/");
  CHECK(m.headers[1].name == "User-Agent");
  CHECK(m.headers[1].value == "pan.baidu.com");
  CHECK(m.delivery == Delivery::Proxy);
  CHECK_FALSE(m.cache);
  CHECK(m.revalidateMs == 3'600'000);
  CHECK(m.connections == 8);
  CHECK(m.maxConnections == 3);
  CHECK(m.readAhead == 64LL << 20);
  CHECK(m.linkTtlMs == 900'000);
  CHECK(m.linkBind == LinkBind::UaIp);
  CHECK(m.root.empty());

  const Mount& a = c.mounts[1];
  CHECK(a.name == "drive");
  CHECK(a.prefix == "/cloud/drive");
  CHECK(a.source == SourceType::Alist);
  CHECK(a.url == "http://127.0.0.1:5244");
  CHECK(a.token == "alist-token");
  CHECK(a.root == "/aliyun");
  REQUIRE(a.headers.size() == 1);
  CHECK(a.headers[0].name == "X-Trace");
  CHECK(a.headers[0].value == "on");
  CHECK(a.delivery == Delivery::ProxyUrl);
  CHECK(a.proxyUrl == "https://edge.example/");
  CHECK(a.cache);
  CHECK(a.connections == 16);

  REQUIRE(c.rules.size() == 2);
  const Rule& r = c.rules[0];
  CHECK(r.name == "big-video");
  CHECK(r.mounts == std::vector<std::string>{"movies", "drive"});
  CHECK(r.paths == std::vector<std::string>{"/movies/**", "/tv/**"});
  CHECK(r.exts == std::vector<std::string>{"mkv", "mp4"});
  REQUIRE(r.clients.size() == 1);
  CHECK(r.clients[0].text == "10.0.0.0/8");
  CHECK(r.userAgent == "^(VLC|mpv)");
  CHECK(r.ignoreCase);
  CHECK(r.minSize == 100LL << 20);
  CHECK(r.maxSize == 50LL << 30);
  CHECK(r.methods == std::vector<std::string>{"GET", "HEAD"});
  CHECK(r.action == Delivery::Proxy);
  CHECK(r.connections == 32);
  CHECK(r.cache == true);

  const Rule& e = c.rules[1];
  CHECK(e.name == "edge");
  CHECK(e.mounts.empty());
  CHECK(e.action == Delivery::ProxyUrl);
  CHECK(e.proxyUrl == "http://edge2.example:8080/");
  CHECK_FALSE(e.minSize);
  CHECK_FALSE(e.connections);
  CHECK_FALSE(e.cache);
  CHECK_FALSE(e.ignoreCase);
}

TEST_CASE("defaults from the table agree with conf.h", "[conf]") {
  Config c = mustLoad(kHttp +
                      "[mount a]\nsource = alist\nurl = http://alist/\n"
                      "[mount l]\nsource = local\nroot = /\n");
  const Server s0;
  const Server& s = c.server;
  REQUIRE(s.listen.size() == 1);
  CHECK(s.listen[0].host == "0.0.0.0");
  CHECK(s.listen[0].port == 8690);
  CHECK(s.maxConnections == s0.maxConnections);
  CHECK(s.maxRequestLine == s0.maxRequestLine);
  CHECK(s.maxHeaderSize == s0.maxHeaderSize);
  CHECK(s.idleTimeoutMs == s0.idleTimeoutMs);
  CHECK(s.sendTimeoutMs == s0.sendTimeoutMs);
  CHECK(s.shutdownGraceMs == s0.shutdownGraceMs);
  CHECK(s.accessLog == s0.accessLog);
  CHECK(s.logLevel == s0.logLevel);
  CHECK(s.upstreamConnections == s0.upstreamConnections);
  CHECK(s.connectTimeoutMs == s0.connectTimeoutMs);
  CHECK(s.upstreamTimeoutMs == s0.upstreamTimeoutMs);
  CHECK(s.stallTimeoutMs == s0.stallTimeoutMs);
  CHECK(s.signSecret.empty());
  CHECK(s.signTtlMs == s0.signTtlMs);
  CHECK(s.signExempt.empty());
  CHECK(s.role == s0.role);
  REQUIRE(s.adminAllow.size() == 2);
  CHECK(s.adminAllow[0].text == "127.0.0.0/8");
  CHECK(s.adminAllow[1].text == "::1");
  CHECK(s.adminToken.empty());

  const Cache c0;
  CHECK(c.cache.dir == c0.dir);
  CHECK(c.cache.maxSize == c0.maxSize);
  CHECK(c.cache.minFree == c0.minFree);
  CHECK(c.cache.blockSize == c0.blockSize);
  CHECK(c.cache.fillMemory == c0.fillMemory);
  CHECK(c.cache.testDiskRate == c0.testDiskRate);

  const Mount m0;
  REQUIRE(c.mounts.size() == 3);
  for (const Mount& m : c.mounts) {
    INFO(m.name);
    CHECK(m.prefix == "/" + m.name);
    CHECK(m.delivery == m0.delivery);
    CHECK(m.cache == m0.cache);
    CHECK(m.revalidateMs == m0.revalidateMs);
    CHECK(m.connections == m0.connections);
    CHECK(m.maxConnections == m0.maxConnections);
    CHECK(m.readAhead == m0.readAhead);
    CHECK(m.linkTtlMs == m0.linkTtlMs);
    CHECK(m.linkBind == m0.linkBind);
  }
  CHECK(c.mounts[0].root.empty());
  CHECK(c.mounts[1].root == "/");
}

TEST_CASE("accounts: keys, defaults, and mounts sharing one account", "[conf]") {
  Config c = mustLoad(
      "[server]\nstate_dir = /tmp/slip-state\n"
      "[account home]\nrefresh_token = rt-1\noauth_token_url = http://relay.example/token\n"
      "[account own]\nrefresh_token = rt-2\nclient_id = cid\nclient_secret = cs\n"
      "api_url = http://127.0.0.1:9/\ndrive_type = default\nmax_connections = 2\n"
      "link_interval = 1500ms\nlist_interval = 1s\nlist_ttl = 0\n"
      "[mount films]\nsource = aliyundrive_open\naccount = home\n"
      "[mount shows]\nsource = aliyundrive_open\naccount = home\nroot_folder_id = 5fe01e18\n"
      "link_expire = 15m\nheader = Referer: https://www.alipan.com/\n"
      "[mount backup]\nsource = aliyundrive_open\naccount = own\n");
  CHECK(c.server.stateDir == "/tmp/slip-state");
  REQUIRE(c.accounts.size() == 2);
  const Account a0;
  const Account& home = c.accounts[0];
  CHECK(home.name == "home");
  CHECK(home.refreshToken == "rt-1");
  CHECK(home.refreshTokenLine == 4);
  CHECK(home.oauthTokenUrl == "http://relay.example/token");
  CHECK(home.clientId.empty());
  CHECK(home.apiUrl == a0.apiUrl);
  CHECK(home.apiUrl == "https://openapi.alipan.com");
  CHECK(home.driveType == DriveType::Resource);
  CHECK(home.maxConnections == 3);
  CHECK(home.linkIntervalMs == a0.linkIntervalMs);
  CHECK(home.listIntervalMs == a0.listIntervalMs);
  CHECK(home.listTtlMs == a0.listTtlMs);
  const Account& own = c.accounts[1];
  CHECK(own.clientId == "cid");
  CHECK(own.clientSecret == "cs");
  CHECK(own.driveType == DriveType::Default);
  CHECK(own.maxConnections == 2);
  CHECK(own.linkIntervalMs == 1500);
  CHECK(own.listIntervalMs == 1000);
  CHECK(own.listTtlMs == 0);
  REQUIRE(c.mounts.size() == 3);
  const Mount m0;
  CHECK(c.mounts[0].source == SourceType::AliyundriveOpen);
  CHECK(c.mounts[0].accountIndex == 0);
  CHECK(c.mounts[1].accountIndex == 0);
  CHECK(c.mounts[2].accountIndex == 1);
  CHECK(c.mounts[0].rootFolderId == "root");
  CHECK(c.mounts[0].rootFolderId == m0.rootFolderId);
  CHECK(c.mounts[0].linkExpireMs == m0.linkExpireMs);
  CHECK(c.mounts[0].linkExpireMs == 4 * 3600 * 1000);
  CHECK(c.mounts[1].rootFolderId == "5fe01e18");
  CHECK(c.mounts[1].linkExpireMs == 15 * 60 * 1000);
  REQUIRE(c.mounts[1].headers.size() == 1);
  CHECK(c.mounts[1].headers[0].value == "https://www.alipan.com/");
  CHECK(Server{}.stateDir == "/var/lib/slipstream");
}

TEST_CASE("line handling: comments, indentation, CRLF, BOM", "[conf]") {
  Config c = mustLoad(
      "\xEF\xBB\xBF; leading comment\r\n"
      "# hash comment\r\n"
      "[server]   ; comment after a header\r\n"
      "  log_level = warn ; inline comment\r\n"
      "    access_log = /var/log/a#b.log\r\n"
      "\r\n"
      "\t  ; indented comment\r\n"
      "  upstream_connections = 7\r\n"
      "[mount m]\n"
      "  source = http\n"
      "  base_url = http://o/x;y\n"
      "  header = Cookie: a=1; b=2\n");
  CHECK(c.server.logLevel == LogLevel::Warn);
  CHECK(c.server.accessLog == "/var/log/a#b.log");  // '#' inline is not a comment
  CHECK(c.server.upstreamConnections == 7);         // indented: not a continuation
  CHECK(c.mounts[0].baseUrl == "http://o/x;y");     // ';' without a space before is data
  CHECK(c.mounts[0].headers[0].value == "a=1; b=2");

  // Lines after an over-long one keep their numbers.
  std::string huge(70'000, 'x');
  LoadResult r = loadString("[server]\naccess_log = /" + huge + "\nlog_level = loud\n", "t.ini");
  INFO(allErrors(r));
  CHECK(r.errors.size() == 2);
  CHECK(hasError(r, 2, "longer than 65536", ""));
  CHECK(hasError(r, 3, "unknown value 'loud'", "log_level"));
}

TEST_CASE("unknown keys get a suggestion only when one is close", "[conf]") {
  struct Case {
    std::string ini;
    std::string want;  // "" = no suggestion
  };
  const Case cases[] = {
      {"[mount m]\nsource = http\nbase_ur = http://x/\n", "did you mean 'base_url'?"},
      {kHttp + "conections = 4\n", "did you mean 'connections'?"},
      {"[server]\nlisten_on = :80\n", "did you mean 'listen'?"},
      {"[cache]\nmaxsize = 4G\n", "did you mean 'max_size'?"},
      {kHttp + "completely_unrelated = 1\n", ""},
      {"[server]\nzzz = 1\n", ""},
  };
  for (const Case& c : cases) {
    LoadResult r = loadString(c.ini, "t.ini");
    INFO(c.ini << allErrors(r));
    bool found = false, suggested = false;
    for (const Error& e : r.errors) {
      if (e.message.find("unknown key") == std::string::npos) continue;
      found = true;
      suggested = e.message.find("did you mean") != std::string::npos;
      if (!c.want.empty()) CHECK(e.message.find(c.want) != std::string::npos);
    }
    CHECK(found);
    CHECK(suggested == !c.want.empty());
  }
}

TEST_CASE("secrets never appear in errors or references", "[conf]") {
  const std::string secret = "hunter2-very-secret";
  const std::string inputs[] = {
      "[server]\nsign_secret = " + secret + "\nsign_secret = " + secret + "\n",
      "[server]\nsign_secret " + secret + "\n",
      "[server]\nadmin_token: " + secret + "\n",
      "sign_secret = " + secret + "\n",
      "[cache]\nsign_secret = " + secret + "\n",
      kHttp + "token = " + secret + "\n",
      "[mount a]\nsource = alist\nurl = http://a/\ntoken = " + secret + "\ntoken = " + secret +
          "\n",
      "[server]\nsign_secret = " + secret + std::string(70'000, 'x') + "\n",
      "[server]\nsign_secret = " + secret + "\r" + secret + "\n",
      kHttp + "header = Bad Name: Bearer " + secret + "\n",
      kHttp + "header = Authorization: Bearer " + secret + "\r\x01\n",
      "[account a]\nrefresh_token = " + secret + "\nrefresh_token = " + secret + "\n",
      "[account a]\nrefresh_token = x\nclient_id = c\nclient_secret = " + secret + "\n"
      "client_secret = " + secret + "\n",
      kHttp + "refresh_token = " + secret + "\n",
  };
  for (const std::string& ini : inputs) {
    LoadResult r = loadString(ini, "t.ini");
    INFO(ini << allErrors(r));
    CHECK_FALSE(r.errors.empty());
    for (const Error& e : r.errors) CHECK(e.str().find("hunter2") == std::string::npos);
  }
  for (const Directive& d : directives())
    if (d.type == ValueType::Secret) CHECK(d.def == nullptr);
  std::string help = helpText(), md = referenceMarkdown();
  CHECK(help.find("hunter2") == std::string::npos);
  CHECK(md.find("hunter2") == std::string::npos);
}

TEST_CASE("the references list every directive", "[conf]") {
  const std::string help = helpText(), md = referenceMarkdown();
  for (const char* section : {"[server]", "[cache]", "[mount NAME]", "[rule NAME]"}) {
    CHECK(help.find(section) != std::string::npos);
    CHECK(md.find(std::string("### `") + section + "`") != std::string::npos);
  }
  for (const Directive& d : directives()) {
    INFO(d.name);
    CHECK(help.find("  " + std::string(d.name) + " = <") != std::string::npos);
    CHECK(md.find("| `" + std::string(d.name) + "` |") != std::string::npos);
    CHECK(std::string(d.doc).size() > 0);
    CHECK(d.apply != nullptr);
  }
  CHECK(help.find("block_size = <size 64K..64M, power of two>  default: 1M") != std::string::npos);
  CHECK(md.find("| `log_level` | debug\\|info\\|warn\\|error | `info` |") != std::string::npos);
}

TEST_CASE("every table default is itself a valid value", "[conf]") {
  // The loader reports a default it cannot parse as an error at line 0.
  LoadResult r = loadString("", "empty.ini");
  INFO(allErrors(r));
  CHECK(r.errors.empty());
  CHECK(r.config);
}

TEST_CASE("loadFile reads a file and names it in errors", "[conf]") {
  auto path = std::filesystem::temp_directory_path() /
              ("slipstream_conf_test_" + std::to_string(getpid()) + ".ini");
  {
    std::ofstream f(path);
    f << "[server]\nlisten = :8080\nmax_connections = x\n";
  }
  LoadResult r = loadFile(path.string());
  std::filesystem::remove(path);
  REQUIRE(r.errors.size() == 1);
  CHECK(r.errors[0].str() ==
        path.string() + ":3: [server] max_connections: not a whole number: 'x'");

  LoadResult missing = loadFile("/nonexistent/slipstream.ini");
  REQUIRE(missing.errors.size() == 1);
  CHECK(missing.errors[0].message.find("cannot open") != std::string::npos);
  LoadResult dir = loadFile("/");
  REQUIRE(dir.errors.size() == 1);
  CHECK(dir.errors[0].message.find("is a directory") != std::string::npos);
}
