// The block cache's fill side: in-memory state of the objects clients are
// reading, the blocks being fetched (each as one or more page-aligned pieces,
// each piece one upstream range request), coalescing, parallelism limits,
// read-ahead, retries, link re-resolution and upstream-change detection.
//
// Invariants:
//  - At most one Block (fetch) exists per (object version, block index):
//    any number of readers waiting on it cause one upstream fetch.
//  - A Block's bytes are readable by waiting readers as soon as the store
//    confirms them written; it is listed (served verified) after commit.
//  - A reader (CacheJob) never holds more than the client high-water mark of
//    bytes in memory; fetches never wait for a reader (they go to disk).
//  - Fetches in flight when their readers leave are finished and stored.
#pragma once

#include <event2/event.h>

#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "proxy/engine.h"
#include "store/store.h"

namespace slip::proxy {

class Fetcher;
struct Block;
struct Object;

/// A client response reading an object through the cache (a CacheJob).
class Reader {
 public:
  virtual ~Reader() = default;
  /// More bytes may be readable (a block progressed or was stored).
  virtual void wake() = 0;
  /// The object can no longer be delivered (upstream changed, failed, gone).
  virtual void objectFailed(policy::Reason r, const std::string& detail) = 0;
  /// Bytes the upstream sent for fetches this reader started.
  virtual void upstreamBytes(uint64_t n) = 0;

  Object* obj = nullptr;
  uint64_t pos = 0;        // next byte the client needs
  uint64_t end = 0;        // end of the client's range
  uint64_t requestId = 0;
  int64_t connections = 0; // per-object parallelism this request may use
};

/// Result of opening an object for a request.
struct OpenResult {
  policy::Reason reason = policy::Reason::None;
  std::string detail;
  bool uncacheable = false;  // stream it instead (the upstream gives no length)
};

class Fetcher {
 public:
  explicit Fetcher(Engine::Impl& e);
  ~Fetcher();

  /// Finds or opens the object for `req` and attaches `r` to it once its
  /// metadata is known and fresh (from the index within the mount's
  /// `revalidate` interval, else from one 1-byte probe). Calls `done` exactly
  /// once unless `r` detaches first.
  void open(const Request& req, Reader* r, std::function<void(const OpenResult&)> done);
  /// The reader is done or gone: stop read-ahead only it wanted. Fetches in
  /// flight continue and are stored.
  void detach(Reader* r);

  /// Reader moved (pos changed) or needs the block at pos: update demand.
  void demand(Reader* r);

  /// What a reader can do at `pos`.
  struct Avail {
    enum class Kind { Stored, InFlight, Missing } kind = Kind::Missing;
    uint64_t readable = 0;              // InFlight: bytes from pos already written
    store::Store::Writer* writer = nullptr;
  };
  Avail avail(Object* o, uint64_t pos);
  /// Registers `r` to be woken when block `idx` of its object progresses.
  void waitFor(Reader* r, uint32_t idx);
  /// A stored block failed verification: it was dropped; fetch it again.
  void blockCorrupt(Object* o, uint32_t idx);

  const store::ObjectMeta& meta(Object* o) const;
  const store::Key& key(Object* o) const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace slip::proxy
