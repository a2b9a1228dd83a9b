// Shared by the libFuzzer targets: an invariant check that stops the run
// with a finding (abort → libFuzzer saves the input under build/fuzz/), and
// a reader that takes fixed-size numbers off the front of the input.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string_view>

#define FUZZ_ASSERT(cond)                                                                  \
  do {                                                                                     \
    if (!(cond)) {                                                                         \
      std::fprintf(stderr, "invariant failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
      std::abort();                                                                        \
    }                                                                                      \
  } while (0)

namespace fuzz {

/// Consumes the input front to back: numbers first, the rest as text.
struct Input {
  const uint8_t* data;
  size_t size;

  uint64_t u64() {
    uint64_t v = 0;
    size_t n = size < 8 ? size : 8;
    std::memcpy(&v, data, n);
    data += n;
    size -= n;
    return v;
  }
  uint8_t byte() {
    if (size == 0) return 0;
    size--;
    return *data++;
  }
  /// Up to the first '\n' (consumed), or everything.
  std::string_view line() {
    const char* p = reinterpret_cast<const char*>(data);
    const void* nl = std::memchr(data, '\n', size);
    size_t n = nl ? static_cast<size_t>(static_cast<const uint8_t*>(nl) - data) : size;
    data += nl ? n + 1 : n;
    size -= nl ? n + 1 : n;
    return {p, n};
  }
  std::string_view rest() {
    std::string_view s(reinterpret_cast<const char*>(data), size);
    data += size;
    size = 0;
    return s;
  }
};

}  // namespace fuzz
