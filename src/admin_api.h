// admin_api — the JSON admin API under /-/api/v1/ (schema: README "Admin
// API", src/DESIGN.md).
//
// The front end authenticates the client (adminAllowed), turns the HTTP
// request into an ApiRequest and sends back the ApiResponse; the running
// gateway (engine, store, server) implements AdminContext. Everything in
// between lives here: routing inside the API, refusing requests a browser
// could forge from another site, parsing untrusted JSON bodies defensively,
// and building every response and error as JSON. No I/O, no clock reads:
// the context supplies every figure, so tests drive it with a fake.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "conf/conf.h"
#include "policy/policy.h"
#include "store/store.h"

namespace slip::admin {

// ---------------------------------------------------------------- HTTP side

struct ApiRequest {
  std::string method;        // "GET", "POST", "DELETE", ...
  std::string path;          // normalised path, e.g. "/-/api/v1/prefetch/p3"
  std::string query;         // raw query string, without '?'
  std::string contentType;   // Content-Type; "" when absent
  std::optional<std::string> origin;  // Origin, when the client sent one
  std::string secFetchSite;  // Sec-Fetch-Site; "" when absent
  std::string customHeader;  // X-Slipstream; "" when absent
  std::string host;          // Host, for the same-origin check
  bool tls = false;          // arrived on a tls listener (https origin)
  std::string body;
  std::string client;        // numeric peer address
};

struct ApiResponse {
  int status = 200;
  policy::Reason reason = policy::Reason::None;  // for errors: what the access log and metrics count
  std::string contentType = "application/json";
  std::vector<std::pair<std::string, std::string>> headers;  // besides Content-Type
  std::string body;
};

/// Largest request body the API reads; the front end may stop reading at
/// this size and pass what it has (handle() then answers 413).
inline constexpr size_t kMaxBody = 64 * 1024;
/// The API's path prefix; everything below it is handle()'s.
inline constexpr std::string_view kApiPrefix = "/-/api/";

/// Admin protection shared by /-/status, /-/metrics and /-/api/: the client
/// is in admin_allow, or sent `Authorization: Bearer <admin_token>`, or
/// Basic credentials whose password is the admin_token (any user name: what
/// a browser's login prompt sends, so the status page works from a phone
/// outside admin_allow). Compared in constant time.
bool adminAllowed(const conf::Server& s, std::string_view client, std::string_view authorization);
/// The challenge of a 401 from an admin route (a browser then asks for the
/// token as a password) and of the API (a Bearer challenge: no prompt).
inline constexpr const char* kAdminChallenge = "Basic realm=\"slipstream admin\", charset=\"UTF-8\"";
inline constexpr const char* kApiChallenge = "Bearer realm=\"slipstream admin\"";

// ---------------------------------------------------------------- what the gateway reports

/// An API failure: a reason from policy's table and a detail for people.
struct ApiError {
  policy::Reason reason = policy::Reason::Internal;
  std::string detail;
};

/// A value or the reason there is none.
template <class T>
struct Outcome {
  std::optional<T> value;
  ApiError error;
  static Outcome ok(T v) { return Outcome{std::move(v), {}}; }
  static Outcome fail(policy::Reason r, std::string detail) {
    return Outcome{std::nullopt, {r, std::move(detail)}};
  }
};

struct LastError {
  int64_t atUnix = 0;
  policy::Reason reason = policy::Reason::None;
  std::string detail;
};

struct CacheStats {
  bool enabled = false;
  uint64_t bytesUsed = 0, maxSize = 0, diskFree = 0;
  uint64_t objects = 0, blocks = 0, evictedBlocks = 0;
  uint64_t hitBytes = 0, missBytes = 0;         // bytes to clients from the cache / upstream
  uint64_t hitRequests = 0, missRequests = 0;   // cacheable requests served all from cache / not
};

struct MountStats {
  std::string name, prefix, source, account;    // account: "" unless aliyundrive_open
  std::optional<uint64_t> linksResolved;      // null: the sources do not count it per mount yet
  uint64_t linkRefusals = 0, rateLimited = 0;
  std::optional<LastError> lastError;
};

/// Never a secret: no token, only its state.
struct AccountStats {
  std::string name;
  bool authorized = false;
  std::optional<int64_t> lastRotationUnix;
  uint64_t tokenExchanges = 0, tokenFailures = 0, apiCalls = 0, rateLimited = 0;
  uint64_t downloadsOpen = 0, downloadsWaiting = 0;
  std::optional<LastError> lastError;
};

/// The last configuration reload (SIGHUP).
struct ReloadInfo {
  int64_t atUnixMs = 0;
  bool ok = false;
  std::vector<std::string> errors;        // "file:line: [section] key: what is wrong"
  std::vector<std::string> needsRestart;  // "[cache] dir": running values kept
};

struct Stats {
  std::string version;
  long pid = 0;
  uint64_t reloads = 0, reloadFailures = 0;
  std::optional<ReloadInfo> lastReload;
  int64_t nowUnix = 0, startedUnix = 0;
  std::string configFile;
  int64_t configLoadedUnix = 0;
  double loopLagMs = 0, loopLagMaxMs = 0;       // last measured, worst since start
  uint64_t activeRequests = 0, totalRequests = 0;
  uint64_t bytesToClients = 0, bytesFromUpstream = 0;
  CacheStats cache;
  std::vector<MountStats> mounts;
  std::vector<AccountStats> accounts;
};

/// One character per block of an object: 'S' stored, 'F' being fetched,
/// '-' missing.
struct BlockMap {
  uint64_t size = 0;
  uint32_t blockSize = 0;
  std::string states;
};
inline constexpr char kBlockStored = 'S', kBlockFetching = 'F', kBlockMissing = '-';

struct Transfer {
  uint64_t id = 0;
  std::string client, userAgent;
  std::string mount, path;                      // mount name; virtual path (/movies/a.mkv)
  std::string delivery;                         // "proxy", "redirect", ...
  std::string cache;                            // "HIT", "MISS", "PARTIAL", "" (not cached)
  uint64_t rangeBegin = 0, rangeEnd = 0;        // [begin, end) of the response body
  uint64_t bytesSent = 0;
  double speedBps = 0;                          // bytes/s to the client, recent
  int upstreamConnections = 0;
  int64_t startedUnix = 0;
  std::optional<BlockMap> blocks;               // set when the object is cached
};

struct ObjectQuery {
  std::string mount;    // "" = every mount
  std::string prefix;   // path inside the mount that paths start with; "" = all
  std::string after;    // paging: the `next` of the previous page
  size_t limit = 100;
};

struct ObjectInfo {
  std::string mount, path;                      // mount name, path inside the mount
  std::string virtualPath;                      // mount prefix + path, "" when the mount is gone
  std::string etag, lastModified, contentType;
  int64_t validatedUnix = 0;
  uint32_t blocksPresent = 0;
  uint64_t bytesPresent = 0;
  BlockMap blocks;
};

struct ObjectPage {
  std::vector<ObjectInfo> objects;
  std::string next;     // "" = last page
};

enum class PrefetchState { Queued, Running, Done, Failed, Cancelled };
const char* prefetchStateName(PrefetchState s);

struct PrefetchJob {
  std::string id, path;                         // path: virtual path as asked
  PrefetchState state = PrefetchState::Queued;
  uint64_t bytesDone = 0, bytesTotal = 0;       // total 0 = not known yet
  double speedBps = 0;
  int64_t createdUnix = 0, finishedUnix = 0;    // finished 0 = still going
  std::optional<ApiError> error;                // for Failed
};

struct PurgeRequest {
  std::string path;     // normalised virtual path
  bool prefix = false;  // drop everything under `path` (a folder), not one file
};

struct PurgedObject {
  std::string mount, path, virtualPath;
  uint64_t size = 0, bytes = 0;                 // object size, stored bytes dropped
  bool inUse = false;                           // a reader had it open (it finishes cleanly)
};

struct PurgeResult {
  std::vector<PurgedObject> purged;
};

/// What the API needs from the running gateway. Called on the loop thread.
class AdminContext {
 public:
  virtual ~AdminContext() = default;
  virtual Stats stats() = 0;
  virtual std::vector<Transfer> transfers() = 0;
  virtual Outcome<ObjectPage> objects(const ObjectQuery& q) = 0;
  /// Starts (or joins a running one for the same path) a background fill of
  /// the whole file. `path` is normalised and names a mount.
  virtual Outcome<PrefetchJob> startPrefetch(const std::string& path) = 0;
  virtual std::vector<PrefetchJob> prefetches() = 0;
  virtual std::optional<PrefetchJob> prefetch(const std::string& id) = 0;
  virtual Outcome<PrefetchJob> cancelPrefetch(const std::string& id) = 0;
  virtual Outcome<PurgeResult> purge(const PurgeRequest& r) = 0;
};

// ---------------------------------------------------------------- the API

/// Answers one request whose path starts with kApiPrefix. The caller has
/// already checked adminAllowed.
ApiResponse handle(const ApiRequest& req, AdminContext& ctx);

/// The body of POST /-/api/v1/prefetch, {"path": "/MOUNT/PATH"}: the
/// normalised virtual path, or BadJson / BadPath / PayloadTooLarge and why.
/// Untrusted bytes: at most kMaxBody, nested at most 16 deep, known keys only.
Outcome<std::string> parsePrefetchBody(std::string_view body);
/// The body of POST /-/api/v1/purge: exactly one of {"path": a file} or
/// {"prefix": a folder}, normalised like parsePrefetchBody's path.
Outcome<PurgeRequest> parsePurgeBody(std::string_view body);

/// The JSON error body: {"error": {"reason", "status", "message", "detail"}}.
ApiResponse errorResponse(policy::Reason r, std::string_view detail);

/// AdminContext::objects for real: the store's index walk turned into the
/// API's page (virtual paths from the mounts' prefixes). A null store (no
/// mount caches) is CacheDisabled; an unknown `mount` is UnknownMount.
Outcome<ObjectPage> objectsFromStore(store::Store* st, const std::vector<conf::Mount>& mounts,
                                     const ObjectQuery& q);

/// A block map drawn from which blocks are present (the store's view);
/// `fetching` marks blocks being filled now (the engine's view).
std::string blockStates(const std::vector<bool>& present, const std::vector<bool>& fetching = {});

}  // namespace slip::admin
