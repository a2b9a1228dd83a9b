#include "src/router.h"

namespace slip {

bool Route::allows(std::string_view method) const {
  for (const auto& m : methods)
    if (m == method) return true;
  return false;
}

std::string Route::allow() const {
  std::string s;
  for (const auto& m : methods) {
    if (!s.empty()) s += ", ";
    s += m;
  }
  return s;
}

const Route* Router::find(std::string_view path) const {
  const Route* best = nullptr;
  for (const auto& r : routes_) {
    if (!r.prefix) {
      if (path == r.pattern) return &r;
      continue;
    }
    if (path.starts_with(r.pattern) && (!best || r.pattern.size() > best->pattern.size())) best = &r;
  }
  if (best) return best;
  return hasFallback_ ? &fallback_ : nullptr;
}

}  // namespace slip
