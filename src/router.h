// The router: which handler answers a normalised path, with which methods,
// behind which protection. The download routes (/d/, /p/, the edge), the
// admin pages (/-/health, /-/metrics), WebDAV under /dav/ and the modules to
// come (the JSON API under /-/api/, the status page) register here; the
// server does the rest (limits, the loop guard, path normalisation, 405 with
// Allow, admin checks) before a handler runs.
#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace slip {

class Exchange;

struct Route {
  std::string pattern;                  // "/-/metrics", or a prefix ending in '/' ("/d/")
  bool prefix = false;                  // match every path that starts with `pattern`
  std::vector<std::string> methods{"GET", "HEAD"};
  bool anyMethod = false;               // every method reaches the handler, which answers 405 itself
  bool admin = false;                   // admin_allow clients or the admin_token only
  bool acceptsBody = false;             // requests with a body are refused (400) unless set
  /// A download route (/d/, /p/, the edge): a worker thread may serve its
  /// warm hits (src/warm.cc) as `kind` (a policy::Route value).
  bool download = false;
  int kind = 0;
  /// Answers the request through the Exchange (at once or later; exactly
  /// once: respond(), sendError(), or a job streaming through its Sink).
  std::function<void(Exchange&)> handler;

  bool allows(std::string_view method) const;  // anyMethod: always
  /// The Allow header's value: "GET, HEAD".
  std::string allow() const;
};

class Router {
 public:
  void add(Route r) { routes_.push_back(std::move(r)); }
  /// The route for every path no other route matches (the edge role).
  void setFallback(Route r) {
    fallback_ = std::move(r);
    hasFallback_ = true;
  }
  /// Exact patterns first, then the longest matching prefix, then the
  /// fallback; null when nothing matches.
  const Route* find(std::string_view path) const;

 private:
  std::vector<Route> routes_;
  Route fallback_;
  bool hasFallback_ = false;
};

}  // namespace slip
