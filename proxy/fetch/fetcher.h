// The block cache's fill as the rest of proxy/ sees it: a Fetcher hands a
// client response (CacheJob) a BlockReader, its one handle on an object.
// The reader opens the object, reads its bytes — stored blocks (verified),
// or blocks still being fetched as their bytes land on disk — and tells the
// fill where the client reads, so that the planner fetches what it needs
// next. No Store::Writer, no object or block leaves the fill.
//
// Everything runs on the loop thread. An object has one owner (the fill's
// object table); a BlockReader is owned by its job and detaches when
// destroyed. See proxy/DESIGN.md ("The cache path", "Lifetimes").
#pragma once

#include <event2/event.h>

#include <memory>
#include <optional>
#include <string>

#include "proxy/engine.h"
#include "proxy/fetch/planner.h"
#include "store/store.h"

namespace slip::proxy {

class Fill;
struct Object;

/// Result of opening an object for a request.
struct OpenResult {
  policy::Reason reason = policy::Reason::None;
  std::string detail;
  bool uncacheable = false;  // stream it instead (the upstream gives no length)
  int64_t retryAfterS = -1;  // a busy upstream: the Retry-After for the client's 503
};

/// One client response's handle on one object of the block cache.
class BlockReader {
 public:
  /// What the fill tells the response (all from the loop).
  class Client {
   public:
    virtual ~Client() = default;
    /// The open finished (exactly once, perhaps before open() returns).
    virtual void opened(const OpenResult& r) = 0;
    /// More bytes may be readable: read() again.
    virtual void wake() = 0;
    /// The object can no longer be delivered (upstream changed, failed, gone).
    virtual void failed(policy::Reason r, const std::string& detail) = 0;
    /// Bytes the upstream sent for fetches this response started (access log).
    virtual void upstreamBytes(uint64_t n) = 0;
  };

  struct Result {
    enum class Kind { Ok, Wait, Failed };
    Kind kind = Kind::Wait;
    uint64_t n = 0;  // Ok: bytes appended
    policy::Reason reason = policy::Reason::None;
    std::string detail;
  };

  BlockReader(Fill& fill, Client* client);
  ~BlockReader();  // detaches: read-ahead only it wanted stops (planner rule 9)
  BlockReader(const BlockReader&) = delete;
  BlockReader& operator=(const BlockReader&) = delete;

  /// Finds or opens req's object: fresh from the index (within the mount's
  /// `revalidate`), else after one 1-byte probe. Calls client->opened() once.
  void open(const Request& req);
  /// Upstream transfers of the object read now (0 before it is open).
  int upstreamConnections() const;
  /// The object's metadata (after a successful open).
  const store::ObjectMeta& meta() const { return meta_; }
  /// X-Cache for `r` from the blocks stored now.
  CacheStatus cacheStatus(const policy::ByteRange& r);
  /// The client will read [begin, end): the fill fetches and reads ahead for it.
  void setRange(uint64_t begin, uint64_t end);
  /// Appends up to `max` bytes at `pos` (never past the end of pos's block)
  /// to `out`. Ok(n): the reader's position moves to pos + n. Wait: nothing
  /// readable yet; client->wake() follows when that may have changed.
  /// Failed: the object cannot be read (reason, detail).
  Result read(uint64_t pos, uint64_t max, evbuffer* out);
  /// A background reader's step: Ok(n) when the block at `at` is stored
  /// (n: to its end, at most to `stop`; the position moves there without
  /// reading a byte), Wait when it is not stored yet (client->wake() follows
  /// when a fetch of it progresses), Failed when the object is gone.
  Result skip(uint64_t at, uint64_t stop);
  /// The response is done or gone: unpin, detach (also done by the destructor).
  void close();

  // ---- the fill's view (fetch/ only)
  Object* obj = nullptr;
  uint64_t pos = 0;        // next byte the client needs
  uint64_t end = 0;        // end of the client's range
  uint64_t start = 0;      // where the client's range began (read-ahead ramps from it)
  uint64_t clientId = 0;   // hash of the client's address and User-Agent (seeks)
  uint64_t seq = 0;        // attach order (the fill's counter)
  uint64_t requestId = 0;
  int connections = 1;     // per-object parallelism this request may use
  int64_t mediaPrefetch = 0;  // bytes of a media index fetched with the head (0 = off)
  plan::Priority priority = plan::Priority::Playing;
  Client* client;

 private:
  friend class Fill;
  void pin(uint32_t idx);
  void unpin();

  Fill& fill_;
  store::ObjectMeta meta_;
  std::optional<uint32_t> pinned_;
  store::Key pinnedKey_;
  uint32_t touched_ = UINT32_MAX;
};

/// Owns the fill; hands out readers.
class Fetcher {
 public:
  explicit Fetcher(Context& ctx);
  ~Fetcher();  // stops every transfer; unfinished blocks are never listed
  Fetcher(const Fetcher&) = delete;
  Fetcher& operator=(const Fetcher&) = delete;

  std::unique_ptr<BlockReader> reader(BlockReader::Client* client);
  /// Bytes of in-flight block buffers alive now ([cache] fill_memory).
  uint64_t memoryBytes() const;
  /// Per upstream host: the adaptive connection target and transfers now.
  std::vector<HostStats> hosts() const;
  /// See Engine::purge.
  std::vector<Purged> purge(const std::string& mount, const std::string& rest, bool folder);
  /// Blocks in flight and upstream transfers of the current version of `k`.
  std::optional<FillActivity> activity(const store::Key& k) const;

 private:
  std::unique_ptr<Fill> fill_;
};

}  // namespace slip::proxy
