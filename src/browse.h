// Listings from the command line: an Engine on a loop of its own (no
// listener, no cache), `slipstream ls` and the folder walk `slipstream strm`
// exports from. See README "Browsing".
#pragma once

#include <event2/event.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "conf/conf.h"
#include "proxy/proxy.h"

namespace slip::browse {

/// An Engine without a store on a private event loop, for one-shot commands.
class EngineLoop {
 public:
  explicit EngineLoop(const conf::Config& cfg);
  ~EngineLoop();
  EngineLoop(const EngineLoop&) = delete;
  EngineLoop& operator=(const EngineLoop&) = delete;

  /// false with a message when the engine cannot start.
  bool start(std::string* err);
  proxy::Engine& engine() { return *engine_; }
  /// Runs the loop until `done()` holds (checked after every loop turn).
  void runUntil(const std::function<bool()>& done);

 private:
  const conf::Config& cfg_;
  RealClock clock_;  // the engine's time (listing TTLs, links, tokens)
  event_base* base_ = nullptr;
  event* tick_ = nullptr;  // keeps the loop blocking while only other threads have work
  std::unique_ptr<proxy::Engine> engine_;
};

/// One file found by a walk.
struct WalkFile {
  std::string path;  // below the mount's root, without a leading '/': "Show/S1/a.mkv"
  uint64_t size = 0;
  int64_t mtimeMs = 0;
};

struct WalkResult {
  std::vector<WalkFile> files;       // sorted by path
  std::vector<std::string> folders;  // every folder listed, "" for the root
  std::vector<std::string> errors;   // folders that could not be listed (with why)
};

/// Lists every folder of `mount` below `from` ("" = the root), at most
/// `parallel` listings at a time. A failure of the starting folder is an
/// error entry and no files.
WalkResult walk(EngineLoop& loop, int mount, const std::string& from, int parallel = 4);

/// The mount a virtual path ("/movies/sub") belongs to, and the path below it.
int mountOfPath(const conf::Config& cfg, const std::string& virtualPath, std::string* rest,
                std::string* err);

/// `slipstream ls -c FILE /MOUNT/PATH [--json]`.
int ls(const conf::Config& cfg, const std::vector<std::string>& args, bool json);

}  // namespace slip::browse
