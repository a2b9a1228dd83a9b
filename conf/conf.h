// conf — the INI schema, its loader and the process-wide diagnostics it
// configures.
//
// One directive table (conf/directives.cc) declares every key: section, name,
// type, default, bounds, units and doc. The loader, `slipstream --help-config`
// and the README's configuration reference are all generated from it.
//
// Loading never throws to the caller: it returns the configuration or every
// error found, each naming file, line, section and key.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace slip::conf {

// ---------------------------------------------------------------- values

/// One `listen =` address. `host` is a numeric IPv4 or IPv6 address (IPv6
/// without brackets); port 0 asks the kernel for a free port. `tls`: the
/// address was written with the `tls` flag (`listen = 0.0.0.0:8443 tls`) and
/// speaks HTTPS with [server] tls_cert / tls_key.
struct ListenAddr {
  std::string host;
  uint16_t port = 0;
  bool tls = false;
  int line = 0;
};

/// One `header = Name: value` line added to every upstream request.
struct Header {
  std::string name;
  std::string value;
  bool operator==(const Header&) const = default;
};

/// An IPv4 or IPv6 network. IPv4 addresses are stored as IPv4-mapped IPv6
/// (::ffff:a.b.c.d) so one matcher handles both families.
struct Cidr {
  uint8_t addr[16] = {};
  uint8_t prefix = 0;  // 0..128, counted on the 16-byte form
  std::string text;    // as written, for messages
};

enum class SourceType { Http, Local, Alist, AliyundriveOpen };
enum class DriveType { Resource, Default, Backup };
enum class Delivery { Auto, Redirect, Proxy, ProxyUrl, Deny };
enum class Role { Main, Edge };
enum class LinkBind { None, Ua, UaIp };
enum class LogLevel { Debug, Info, Warn, Error };

const char* sourceTypeName(SourceType t);
const char* deliveryName(Delivery d);

// ---------------------------------------------------------------- sections

struct Server {
  std::vector<ListenAddr> listen;        // default 0.0.0.0:8690
  int64_t maxConnections = 1024;         // client connections
  int64_t workers = 0;                   // front-end threads; 0 = auto (one per core, at least 1)
  int64_t maxRequestLine = 8 * 1024;     // bytes; longer → 414
  int64_t maxHeaderSize = 32 * 1024;     // bytes, all header lines; larger → 431
  int64_t maxRequestBody = 64 * 1024;    // bytes of a request body; larger → 413
  int64_t headerTimeoutMs = 10'000;      // accept / first byte → whole request received
  int64_t idleTimeoutMs = 60'000;        // keep-alive: idle between requests
  int64_t sendTimeoutMs = 600'000;       // client not reading for this long → close
  int64_t shutdownGraceMs = 30'000;      // SIGTERM: let transfers finish this long
  std::string accessLog = "-";           // path, "-" = stdout, "off"
  LogLevel logLevel = LogLevel::Info;
  int64_t upstreamConnections = 64;      // global cap on upstream transfers
  int64_t connectTimeoutMs = 10'000;     // upstream TCP/TLS connect
  int64_t upstreamTimeoutMs = 30'000;    // upstream: request sent → response headers
  int64_t stallTimeoutMs = 30'000;       // window of the upstream body's speed check
  int64_t minSpeed = 1024;               // bytes/s: slower over stall_timeout → cut and retry
  std::string caFile;                    // extra trusted CAs for every upstream ("" = system's only)
  int caFileLine = 0;
  // signing and roles (SPEC §6)
  std::string signSecret;                // empty = signing off; never logged
  int64_t signTtlMs = 0;                 // `slipstream sign` expiry; 0 = never
  std::vector<Cidr> signExempt;
  Role role = Role::Main;
  std::vector<Cidr> adminAllow;          // default loopback only
  std::string adminToken;
  std::string stateDir = "/var/lib/slipstream";  // persisted state: rotated refresh tokens
  std::vector<Cidr> davAllow;            // WebDAV without a password; default loopback only
  // TLS for the listen addresses with the `tls` flag (src/tls.h loads them)
  std::string tlsCert;                   // PEM: the certificate, then its chain
  std::string tlsKey;                    // PEM private key; never logged
  int tlsCertLine = 0, tlsKeyLine = 0;   // for file:line errors about the files' contents
  bool anyTls() const {
    for (const ListenAddr& l : listen)
      if (l.tls) return true;
    return false;
  }
};

struct Cache {
  std::string dir = "/var/cache/slipstream";
  int64_t maxSize = 10LL << 30;          // bytes
  int64_t minFree = 1LL << 30;           // free-disk floor, bytes
  int64_t blockSize = 1LL << 20;         // bytes; power of two, 64K..64M
  int64_t fillMemory = 16LL << 20;       // bytes of in-flight block buffers (0 = fill through the disk)
  int64_t testDiskRate = 0;              // test hook: disk writes at this many bytes/s (0 = off)
};

/// A cloud account (`[account NAME]`): the credentials and limits that every
/// mount naming it shares (one token state, one set of rate and connection
/// limits), so two mounts of one account never fight over a rotating token.
struct Account {
  std::string name;
  int line = 0;                          // line of the [account NAME] header
  std::string refreshToken;              // as written in the INI; never logged
  int refreshTokenLine = 0;              // for messages that tell the user where to put a new one
  std::string clientId;
  std::string clientSecret;              // never logged
  std::string oauthTokenUrl;             // token relay, used when client_id is empty
  std::string caFile;                    // extra trusted CAs; "" = [server] ca_file
  int caFileLine = 0;
  std::string apiUrl = "https://openapi.alipan.com";
  DriveType driveType = DriveType::Resource;
  int64_t maxConnections = 3;            // download connections at once, all mounts together
  int64_t linkIntervalMs = 1000;         // least time between two getDownloadUrl calls
  int64_t listIntervalMs = 250;          // least time between two other API calls
  int64_t listTtlMs = 60'000;            // folder listings are reused this long
  bool operator==(const Account&) const = default;
};

/// A WebDAV user (`[user NAME]`): HTTP Basic against a crypt(3) hash.
struct User {
  std::string name;
  int line = 0;                          // line of the [user NAME] header
  std::string passwordHash;              // yescrypt/bcrypt/scrypt/SHA-512-crypt; never logged
};

struct Mount {
  std::string name;
  int line = 0;                          // line of the [mount NAME] header
  std::string prefix;                    // virtual path prefix, default "/NAME"
  SourceType source = SourceType::Http;
  std::string baseUrl;                   // http
  std::string root;                      // local: directory; alist: path prefix on the AList side
  std::string url;                       // alist server
  std::string token;                     // alist token; never logged
  std::vector<Header> headers;
  std::string caFile;                    // extra trusted CAs; "" = the account's, else [server] ca_file
  int caFileLine = 0;
  Delivery delivery = Delivery::Auto;
  std::string proxyUrl;                  // for proxy_url delivery
  bool cache = true;
  int64_t revalidateMs = 600'000;        // trust stored validators this long
  int64_t connections = 16;              // parallel block fetches per object
  int64_t maxConnections = 32;           // cap for the whole source (account)
  int64_t readAhead = 64LL << 20;        // bytes fetched ahead of a sequential reader
  int64_t mediaPrefetch = 4LL << 20;     // a media file's index region fetched with its head; 0 = off
  int64_t linkTtlMs = 0;                 // 0 = source default
  LinkBind linkBind = LinkBind::None;
  int64_t listTtlMs = 60'000;            // local, alist: folder listings are reused this long
  int nextEpisode = 0;                   // % of an episode read that warms the next one; 0 = off
  // aliyundrive_open
  std::string account;                   // the [account NAME] it uses
  int accountIndex = -1;                 // index in Config::accounts, set by the loader
  std::string rootFolderId = "root";
  int64_t linkExpireMs = 4 * 3'600'000;  // expire_sec asked of getDownloadUrl
  bool operator==(const Mount&) const = default;
};

struct Rule {
  std::string name;
  int line = 0;
  // conditions; an empty list / unset bound means "any"
  std::vector<std::string> mounts;
  std::vector<std::string> paths;        // globs on the virtual path: * ? **
  std::vector<std::string> exts;         // lower case, without the dot
  std::vector<Cidr> clients;
  std::string userAgent;                 // POSIX extended regex, "" = any
  bool ignoreCase = false;
  std::optional<int64_t> minSize;
  std::optional<int64_t> maxSize;
  std::vector<std::string> methods;      // upper case
  // action
  Delivery action = Delivery::Proxy;
  std::string proxyUrl;
  std::optional<int64_t> connections;
  std::optional<bool> cache;
  std::optional<bool> mediaPrefetch;
  std::optional<int> nextEpisode;        // % (0 = off); unset = the mount's
};

struct Config {
  std::string file;
  Server server;
  Cache cache;
  std::vector<Account> accounts;         // in file order
  std::vector<User> users;               // in file order
  std::vector<Mount> mounts;             // in file order
  std::vector<Rule> rules;               // in file order: first match wins
};

// ---------------------------------------------------------------- loading

struct Error {
  std::string file;
  int line = 0;
  std::string section;  // e.g. "mount movies"; may be empty
  std::string key;      // may be empty
  std::string message;
  /// "FILE:LINE: [SECTION] KEY: MESSAGE"
  std::string str() const;
};

struct LoadResult {
  std::optional<Config> config;  // set only when errors is empty
  std::vector<Error> errors;
};

/// Reads and validates FILE. Collects every error instead of stopping at the
/// first.
LoadResult loadFile(const std::string& path);

/// Same, from text in memory; `name` is used as the file name in messages.
LoadResult loadString(std::string_view text, const std::string& name);

/// The directives a running gateway cannot change (Directive::restart)
/// whose value differs between `running` and `next`, as "[cache] dir": each
/// is set back to its running value in `next`, which is then what a reload
/// applies.
std::vector<std::string> keepRestartValues(const Config& running, Config* next);

/// Plain-text reference of every directive (for `--help-config`).
std::string helpText();

/// Markdown reference of every directive (the README's configuration section).
std::string referenceMarkdown();

// ---------------------------------------------------------------- directive table
// The one table of directives (conf/directives.cc). Declared here because the
// loader, the references and the tests all read it.

enum class SectionKind { Server, Cache, Account, User, Mount, Rule };
enum class ValueType {
  String, Bool, Int, Size, Duration, Enum, List, Header, Listen, CidrList, Url, Path, Secret,
  SecretFile  // `<secret>_file`: a path whose content is the secret
};

/// Bit per SourceType, for Directive::sources and Directive::requiredFor.
constexpr unsigned sourceBit(SourceType t) { return 1u << static_cast<unsigned>(t); }
constexpr unsigned kAllSources = sourceBit(SourceType::Http) | sourceBit(SourceType::Local) |
                                 sourceBit(SourceType::Alist) |
                                 sourceBit(SourceType::AliyundriveOpen);
constexpr int64_t kUnbounded = INT64_MAX;

/// One parsed value; the member used depends on the directive's ValueType.
struct DirectiveValue {
  int line = 0;
  int64_t num = 0;                 // Bool (0/1), Int, Size, Duration (ms), Enum (index in choices)
  std::string text;                // String, Path, Url, Secret
  std::vector<std::string> list;   // List
  std::vector<Cidr> cidrs;         // CidrList
  ListenAddr listen;
  Header header;
};

struct Directive {
  SectionKind section;
  const char* name;
  ValueType type;
  const char* choices = nullptr;     // Enum: "a|b|c", in the order apply expects
  const char* def = nullptr;         // default as written in a file; nullptr = none
  int64_t min = 0;                   // bounds for Int, Size, Duration
  int64_t max = kUnbounded;
  const char* units = nullptr;       // for the references
  bool repeatable = false;
  bool derivedDefault = false;       // `def` only documents a value the loader derives
  unsigned sources = kAllSources;    // [mount]: the source types the key applies to
  unsigned requiredFor = 0;          // [mount]: source types that need it; others: kAllSources = always
  const char* doc = "";
  /// SIGHUP cannot apply a new value: the running one stays until a restart
  /// (keepRestartValues names it in the log; the references say so).
  bool restart = false;
  /// SecretFile rows: the name of the Secret key whose value the file holds
  /// (the row is derived from that key's row and shares its apply/check).
  const char* fileOf = nullptr;
  /// Stores the value into the open section: the server, the cache, or the
  /// last account / mount / rule of the Config.
  void (*apply)(Config& c, const DirectiveValue& v) = nullptr;
  /// Extra validation beyond the type and bounds; nullptr = none.
  bool (*check)(const DirectiveValue& v, std::string* why) = nullptr;
};

/// Every directive, grouped by section, in documentation order. Each Secret
/// key is followed by its derived `<name>_file` row.
const std::vector<Directive>& directives();

// ---------------------------------------------------------------- value parsers
// Exposed for the tests and for command-line flags. Each returns nullopt on a
// bad value and, if `why` is given, says what is wrong.

/// "64K", "4M", "1.5G", "50G", "1T", plain bytes "4096"; binary units
/// (K = 1024). Decimals (at most 9 places) are rounded to the nearest byte;
/// a number of bytes must be whole.
std::optional<int64_t> parseSize(std::string_view s, std::string* why = nullptr);
/// "500ms", "90s", "1.5m", "4h", "2d"; a bare number is seconds. Milliseconds,
/// decimals rounded to the nearest one ("ms" itself must be whole).
std::optional<int64_t> parseDuration(std::string_view s, std::string* why = nullptr);
/// "on/off", "yes/no", "true/false", "1/0".
std::optional<bool> parseBool(std::string_view s, std::string* why = nullptr);
/// "10.0.0.0/8", "192.168.1.7" (= /32), "::1", "fd00::/8".
std::optional<Cidr> parseCidr(std::string_view s, std::string* why = nullptr);
/// "127.0.0.1:8080", "[::1]:8080", ":8080" (all IPv4), "[::]:8080"; each may
/// end in the word `tls` ("[::]:8443 tls").
std::optional<ListenAddr> parseListen(std::string_view s, std::string* why = nullptr);

/// A crypt(3) password hash as `mkpasswd` or `slipstream passwd` make it:
/// yescrypt ($y$), gost-yescrypt ($gy$), scrypt ($7$), bcrypt ($2b$) or
/// SHA-512-crypt ($6$), complete. Weak or legacy methods (DES, MD5,
/// SHA-256-crypt) and truncated hashes are refused. Costs one hashing.
bool checkPasswordHash(std::string_view hash, std::string* why = nullptr);
/// Why `name: value` cannot be sent to an upstream, or nullopt when it can.
/// The name must be an RFC 9110 token and not one the fetcher sets itself
/// (framing, connection, Range/If-Range, Accept-Encoding); the value must not
/// contain CR, LF, NUL or another control character (HTAB is allowed). The
/// message names the header, never its value.
std::optional<std::string> headerProblem(std::string_view name, std::string_view value);
/// `s` with bytes outside printable ASCII written as \xNN (for messages).
std::string printable(std::string_view s);

/// Levenshtein distance, for "did you mean" suggestions.
size_t editDistance(std::string_view a, std::string_view b);

// ---------------------------------------------------------------- diagnostics

/// The error log: `ts level=L event=E key=value ...` lines on stderr.
/// Thread-safe. Secrets must never be passed to it.
class Log {
 public:
  static void setLevel(LogLevel l);
  static bool enabled(LogLevel l);
  /// `event` is a stable identifier (snake_case); `kv` is already formatted
  /// `key=value` pairs separated by spaces.
  static void write(LogLevel l, std::string_view event, std::string_view kv);
};

/// Formats a value for a key=value log field: quoted when it has spaces,
/// quotes or control characters; control bytes escaped.
std::string logValue(std::string_view v);

}  // namespace slip::conf
