// Warm hits served on a front-end worker thread (issue 14): see warm.cc.
#pragma once

#include <memory>
#include <string>

#include "conf/loop.h"
#include "policy/policy.h"
#include "proxy/proxy.h"
#include "src/http_parser.h"
#include "store/store.h"

namespace slip {

struct Generation;
struct FrontShared;

/// A request a worker answers itself, as planWarm decided it.
struct WarmPlan {
  int mount = -1;
  std::string path, virt, rest;  // normalised path, virtual path, path inside the mount
  const char* delivery = "-";
  bool head = false;
  int64_t revalidateMs = 0;
  store::Key key;
  store::ObjectMeta meta;
  policy::RangeAnswer answer;
  EvbufferPtr first;  // the first bytes, read before anything was answered
  uint64_t pos = 0;   // next byte to read
};

/// Whether a worker may answer `r` itself (every requested byte stored and
/// fresh, a cached proxy delivery); fills *p. False: hand it to the main loop.
bool planWarm(const http::Request& r, const Generation& g, const FrontShared& sh, const std::string& peer,
              store::WarmReader& rd, WarmPlan* p);
/// The job that answers a plan through `sink` (it sends the head at once).
std::unique_ptr<proxy::Job> startWarm(WarmPlan plan, store::WarmReader& rd, proxy::Sink* sink);

}  // namespace slip
