// proxy — the upstream side: sources that resolve a path to a link, the
// libcurl-multi fetcher driven by the gateway's libevent loop, the block
// cache's fill and read paths, and the jobs that stream bytes to a client.
//
// The front end (src/) hands a decided request to the Engine together with a
// Sink (its side of the client connection). A Job then produces the response
// through the Sink. Data only flows downward: the Engine never calls into the
// front end except through the Sink and never decides policy.
//
// Lifetimes: the front end owns the Job. It calls onWritable() when the
// client's output buffer drained, and onClientGone() when the client vanished
// (after which the Job must not touch the Sink). A Job signals the end of the
// response with Sink::finish() or Sink::fail(); it must not touch the Sink
// after either. The front end destroys the Job later, outside any callback of
// the Job's own.
#pragma once

#include <event2/event.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "conf/clock.h"
#include "conf/conf.h"
#include "policy/policy.h"

struct evbuffer;

namespace slip::store {
class Store;
}

namespace slip::proxy {

struct Header {
  std::string name;
  std::string value;
};
using Headers = std::vector<Header>;

/// X-Cache values (SPEC §5): where the bytes of a proxied response came from.
enum class CacheStatus { None, Hit, Miss, Partial };
const char* cacheStatusName(CacheStatus s);

/// Bytes queued towards one client above which a job stops producing until
/// the front end reports the buffer drained (pull-based backpressure), and
/// the level below which the front end reports it drained.
inline constexpr size_t kClientHighWater = 256 * 1024;
inline constexpr size_t kDrainedMark = kClientHighWater / 4;

/// The client side of one request, implemented by the front end.
class Sink {
 public:
  virtual ~Sink() = default;
  /// Sends the status line and headers (Content-Length included by the
  /// caller when known). Once per response.
  virtual void sendHeaders(int status, const Headers& headers) = 0;
  /// Queues body bytes; drains `data`. HEAD responses discard it.
  virtual void sendBody(evbuffer* data) = 0;
  /// Bytes queued towards the client and not yet written to the socket.
  virtual size_t queued() const = 0;
  /// The body is complete.
  virtual void finish() = 0;
  /// The response failed. Before headers: an error status with `reason`'s
  /// text and `detail` in the body, and `extra` headers (a 503's
  /// Retry-After). After headers: the connection is closed, so a short body
  /// is never taken for a complete one.
  virtual void fail(policy::Reason reason, const std::string& detail, const Headers& extra = {}) = 0;
  virtual bool headersSent() const = 0;
  /// For the access log: bytes received from upstream on this request's behalf.
  virtual void noteUpstreamBytes(uint64_t n) = 0;
  /// Where the job is, for the request's state trail (debug log, status).
  enum class Progress { Resolving, Opening };
  virtual void noteProgress(Progress) {}
};

class Job {
 public:
  virtual ~Job() = default;
  virtual void onWritable() = 0;
  virtual void onClientGone() = 0;
  /// Upstream connections working for this response now (the status page):
  /// its object's transfers in the block cache, its own stream otherwise.
  virtual int upstreamConnections() const { return 0; }
};

struct MountRun;
struct AccountRun;

/// One configuration as the engine runs it (Engine::prepare): the Config,
/// and per mount what was built from it (source, pool, local root). A
/// configuration reload makes a new Setup; mounts and accounts whose
/// settings did not change are shared with the previous one. A request
/// carries the Setup it was decided with and its jobs keep it, so a reload
/// never changes the mount, source, headers or limits under a transfer that
/// is already running.
struct Setup {
  uint64_t generation = 0;
  std::shared_ptr<const conf::Config> cfg;
  std::vector<policy::SourceTraits> traits;            // like cfg->mounts
  std::vector<std::shared_ptr<MountRun>> mounts;       // like cfg->mounts (engine-private type)
  std::vector<std::shared_ptr<AccountRun>> accounts;   // like cfg->accounts
};
using SetupPtr = std::shared_ptr<const Setup>;

/// A request after routing and policy, as the front end hands it over.
struct Request {
  uint64_t id = 0;
  bool head = false;                 // HEAD: headers only
  /// The configuration the request was decided with (null: the engine's
  /// current one) and the mount's index in its cfg->mounts.
  SetupPtr setup;
  int mountIndex = -1;
  int mountId = -1;                  // set by the engine: the mount's id (what jobs and caches use)
  std::string path;                  // normalised virtual path (for names, keys)
  std::string rest;                  // path below the mount prefix (for the source)
  std::string range;                 // client's Range header, "" if none
  std::string ifRange;               // client's If-Range header, "" if none
  std::string client;                // numeric address
  std::string userAgent;
  policy::Decision decision;
};

/// One cloud account's state, for metrics.
struct AccountStats {
  std::string name;
  bool authorized = true;        // false once the service refused the refresh token
  uint64_t tokenExchanges = 0;   // helpers that got an access token (saved or fresh)
  uint64_t tokenFailures = 0;
  uint64_t apiCalls = 0;         // list / link / drive calls sent
  uint64_t rateLimited = 0;      // of them answered 429
  int downloads = 0;             // download transfers running (its pool)
  int downloadsWaiting = 0;      // queued behind max_connections
};

/// One upstream host of the block cache's fill (issue 11: adaptive connections).
struct HostStats {
  std::string host;  // scheme://host:port
  int target = 0;    // transfers it should run at once now (connections is the ceiling)
  int running = 0;   // the fill's transfers to it now
};

/// One mount's link figures (by mount name, so they outlive a reload).
struct MountCounters {
  uint64_t linksResolved = 0;  // links its source handed out
  uint64_t linkRefusals = 0;   // links the upstream refused (401/403/410) or the source would not give
};

/// Counters for logs, status and metrics.
struct Stats {
  uint64_t upstreamRequests = 0;
  uint64_t upstreamBytes = 0;
  uint64_t upstreamErrors = 0;
  uint64_t retries = 0;
  uint64_t linkResolutions = 0;
  uint64_t cacheHitBytes = 0;
  uint64_t corruptBlocks = 0;
  uint64_t cacheBypasses = 0;    // responses streamed uncached because the store failed (issue 9 #14)
  uint64_t cancelledBlocks = 0;  // fetches stopped because no reader wanted them (a seek, a client gone)
  int activeTransfers = 0;
  uint64_t preemptions = 0;  // background pieces stopped for a playing reader
  uint64_t memoryBlocks = 0;     // blocks fetched into memory buffers (fill_memory)
  uint64_t droppedBlocks = 0;    // of those, not cached: the disk was behind (served, never listed)
  uint64_t memoryReadBytes = 0;  // bytes served to clients from block buffers
  uint64_t fillMemoryBytes = 0;  // gauge: block buffers alive now (filled in by snapshot())
  std::map<std::string, MountCounters> mounts;
  // the store, filled in by snapshot()
  bool cacheEnabled = false;
  uint64_t cacheObjects = 0, cacheBlocks = 0, cacheBytes = 0, cacheReserved = 0,
           cacheMaxBytes = 0, cacheEvictedBlocks = 0, cacheDroppedCorrupt = 0;
  size_t diskQueueBytes = 0;
  std::vector<AccountStats> accounts;
  std::vector<HostStats> hosts;  // the fill's upstream hosts
};

/// What the block cache's fill is doing for one object now (the status page).
struct FillActivity {
  std::vector<uint32_t> fetching;  // blocks being fetched, ascending
  int connections = 0;             // the object's upstream transfers
};

/// One object version dropped by Engine::purge.
struct Purged {
  std::string mount, rest;  // mount name, path below the mount
  uint64_t size = 0;        // the object's size
  uint64_t bytes = 0;       // bytes of its blocks that were stored
  bool inUse = false;       // responses were reading it (they end short, never with other bytes)
};

/// A background fill of one file: the admin API's prefetch, the next
/// episode's warming. It delivers nothing: it walks the wanted bytes as a
/// Background reader of the block cache's fill (the same coalescing, pools
/// and account limits as a client; it never makes a block urgent and yields
/// to playing clients), moving on as blocks are stored.
class Prefetch {
 public:
  enum class State { Opening, Running, Done, Failed, Cancelled };
  struct Progress {
    State state = State::Opening;
    uint64_t done = 0;   // bytes of the wanted ranges stored
    uint64_t total = 0;  // 0 until the object is open
    uint64_t upstreamBytes = 0;
    policy::Reason reason = policy::Reason::None;  // Failed
    std::string detail;
  };
  virtual ~Prefetch() = default;
  virtual Progress progress() const = 0;
  /// Stops asking for blocks: read-ahead only it wanted stops, pieces in
  /// flight finish and are stored. No-op once it ended.
  virtual void cancel() = 0;
};
const char* prefetchStateName(Prefetch::State s);

/// What a prefetch wants of its file.
struct PrefetchSpec {
  std::vector<policy::ByteRange> ranges;  // empty: the whole file (clipped to its size)
  /// > 0: the first `mediaHead` bytes, then the media index they point at
  /// (policy::locateMediaIndex; the last `mediaHead` bytes when they do not
  /// say), instead of `ranges`.
  uint64_t mediaHead = 0;
};

/// One entry of a folder listing (SPEC §4).
struct DirEntry {
  std::string name;        // one path segment: valid UTF-8, no '/', '\\' or control characters
  bool folder = false;
  uint64_t size = 0;       // files; 0 for folders
  int64_t mtimeMs = 0;     // wall clock; 0 = the source does not say
  std::string etag;        // quoted entity tag; "" = the source has none
};
/// A folder's entries, sorted by name (bytewise), names unique.
using DirEntries = std::vector<DirEntry>;

struct ListResult {
  policy::Reason reason = policy::Reason::None;
  std::string detail;
  std::shared_ptr<const DirEntries> entries;  // set when reason is None; shared, immutable
};
using ListCb = std::function<void(const ListResult&)>;

struct StatResult {
  policy::Reason reason = policy::Reason::None;
  std::string detail;
  DirEntry entry;  // the mount's root is a folder named ""
};
using StatCb = std::function<void(const StatResult&)>;

/// Every ca_file of `cfg` ([server], [account], [mount]) that cannot be read
/// as PEM certificates, as "FILE:LINE: [SECTION] ca_file: why" (for `check`
/// and the start).
std::vector<std::string> caFileProblems(const conf::Config& cfg);

/// What a mount's source needs (headers, client binding, a link at all), as
/// policy's `auto` delivery wants to know it. No I/O: `explain` uses it too.
policy::SourceTraits sourceTraits(const conf::Mount& m);

class Engine {
 public:
  /// `base` must have been created after evthread_use_pthreads(). `store` may
  /// be null when no mount caches. None is owned; `clock` is the only time
  /// the proxy reads.
  Engine(event_base* base, std::shared_ptr<const conf::Config> cfg, store::Store* store,
         const Clock& clock);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  /// false (with a message) when libcurl lacks what we need (async DNS), or
  /// a mount cannot start (a local root that cannot be opened).
  bool init(std::string* err);

  /// The configuration new requests use.
  SetupPtr setup() const;
  /// Builds the Setup of a reloaded configuration without using it yet:
  /// mounts and accounts whose settings did not change are shared, the
  /// others built anew. Null with *err when a mount cannot start. Keys that
  /// need a restart ([cache], state_dir, role) must already hold the running
  /// values (the caller's job).
  SetupPtr prepare(std::shared_ptr<const conf::Config> cfg, std::string* err);
  /// New requests use `s` from now on; connection pools take its limits.
  /// Requests, prefetches and fills already running keep their Setup.
  void install(SetupPtr s);

  /// What each mount's source needs, indexed like the current Config::mounts.
  const std::vector<policy::SourceTraits>& traits() const;

  /// Starts the delivery chosen by policy (Redirect or Proxy).
  std::unique_ptr<Job> start(const Request& req, Sink* sink);

  /// Finds the size of req's file for a rule's size condition: from the
  /// cache index when it knows the object, else with one 1-byte upstream
  /// probe (a stat for `local`). `done(nullopt)` when the upstream does not
  /// tell. Not called after the Job is destroyed or told the client left.
  std::unique_ptr<Job> probeSize(const Request& req,
                                 std::function<void(std::optional<uint64_t>)> done);

  /// Lists the folder `rest` (decoded, below the mount's prefix; "" or "/" is
  /// the mount's root). Listings are cached `list_ttl` (aliyundrive_open: the
  /// account's) and concurrent calls for one folder share one upstream
  /// listing. May call back synchronously (a cached listing). Reasons:
  /// CannotList (http), NotFound, NotAFolder, upstream failures.
  void list(int mount, const std::string& rest, ListCb cb);
  /// The entry at `rest`, from its parent's listing (the root: a folder).
  void stat(int mount, const std::string& rest, StatCb cb);
  /// The same for mount `mount` of `setup` (a request's, which a reload
  /// does not change).
  void list(const SetupPtr& setup, int mount, const std::string& rest, ListCb cb);
  void stat(const SetupPtr& setup, int mount, const std::string& rest, StatCb cb);

  /// Counters now, with the store's usage.
  Stats snapshot() const;
  /// The fill's work on the object (mount name, path below the mount) now;
  /// nullopt when it has none (not being read or fetched, or no cache).
  std::optional<FillActivity> activity(const std::string& mount, const std::string& rest) const;

  /// The header every upstream download request carries: a random value
  /// new for each process. A client request that arrives with it came from
  /// this gateway itself (a link pointing back at it), and the front end
  /// refuses it.
  const Header& selfHeader() const;

  /// The gateway's own listen addresses as bound ("127.0.0.1:8690"): a link
  /// a source returns that points at one of them is refused (502
  /// source_bad_link), never fetched or cached.
  void setSelfAddresses(const std::vector<std::string>& hostPorts);

  /// Reads every CA file of the TLS trust sets again (the system bundle and
  /// each ca_file); a file that fails keeps its old certificates and `err`
  /// names it. For SIGHUP.
  bool reloadTrust(std::string* err);

  /// Starts a background fill of req's file (its decision must cache: the
  /// caller ran policy). Null when the engine keeps no cache. The Prefetch
  /// may already have ended (failed) when it is returned.
  std::unique_ptr<Prefetch> prefetch(const Request& req, const PrefetchSpec& spec);

  /// Drops the cached objects of mount `mount` (by name) whose path below the
  /// mount is `rest` — or, with `folder`, lies in the folder `rest` ("/" =
  /// the whole mount) — from the fill and the store. Responses reading one
  /// stop: one whose head is out ends short (the connection closes), never
  /// with bytes of something else. The next request fetches it again.
  std::vector<Purged> purge(const std::string& mount, const std::string& rest, bool folder);

  /// Stops scheduling new upstream work (shutdown); running fetches finish.
  void quiesce();

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

/// The head of a warm hit as CacheJob answers it (a front-end worker thread
/// serves those itself, src/warm.cc): Content-Type, -Length, -Range,
/// validators, Content-Disposition, X-Cache: HIT. Pure.
Headers hitHeaders(uint64_t size, const std::string& etag, const std::string& lastModified,
                   const std::string& contentType, const policy::RangeAnswer& answer, const std::string& path);

}  // namespace slip::proxy
