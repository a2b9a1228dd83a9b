// Private to policy/: enum names in CamelCase turned into stable snake_case
// codes at compile time, so the name in an X-macro table stays the only place
// a code is spelled ("PathTraversal" → "path_traversal").
#pragma once

#include <cstddef>

namespace slip::policy {

template <size_t N>
struct SnakeName {
  char chars[2 * N] = {};
  constexpr explicit SnakeName(const char (&name)[N]) {
    size_t o = 0;
    for (size_t i = 0; i + 1 < N; i++) {
      char c = name[i];
      if (c >= 'A' && c <= 'Z') {
        if (i > 0) chars[o++] = '_';
        c = static_cast<char>(c - 'A' + 'a');
      }
      chars[o++] = c;
    }
  }
};

}  // namespace slip::policy
