// The reason table (SLIP_REASONS in policy.h) turned into lookups, and the
// standard HTTP reason phrases.
#include <cstddef>

#include "policy/policy.h"
#include "policy/snake_name.h"

namespace slip::policy {

const char* reasonCode(Reason r) {
  switch (r) {
#define SLIP_REASON_CODE(name, status, text) \
  case Reason::name: {                       \
    static constexpr SnakeName code(#name);  \
    return code.chars;                       \
  }
    SLIP_REASONS(SLIP_REASON_CODE)
#undef SLIP_REASON_CODE
  }
  return "unknown";
}

int reasonStatus(Reason r) {
  switch (r) {
#define SLIP_REASON_STATUS(name, status, text) \
  case Reason::name:                           \
    return status;
    SLIP_REASONS(SLIP_REASON_STATUS)
#undef SLIP_REASON_STATUS
  }
  return 500;
}

const char* reasonText(Reason r) {
  switch (r) {
#define SLIP_REASON_TEXT(name, status, text) \
  case Reason::name:                         \
    return text;
    SLIP_REASONS(SLIP_REASON_TEXT)
#undef SLIP_REASON_TEXT
  }
  return "unknown";
}

const char* statusText(int status) {
  static constexpr struct {
    int status;
    const char* text;
  } kPhrases[] = {
      {100, "Continue"},
      {101, "Switching Protocols"},
      {200, "OK"},
      {201, "Created"},
      {202, "Accepted"},
      {204, "No Content"},
      {206, "Partial Content"},
      {207, "Multi-Status"},
      {301, "Moved Permanently"},
      {302, "Found"},
      {303, "See Other"},
      {304, "Not Modified"},
      {307, "Temporary Redirect"},
      {308, "Permanent Redirect"},
      {400, "Bad Request"},
      {401, "Unauthorized"},
      {403, "Forbidden"},
      {404, "Not Found"},
      {405, "Method Not Allowed"},
      {406, "Not Acceptable"},
      {408, "Request Timeout"},
      {409, "Conflict"},
      {410, "Gone"},
      {411, "Length Required"},
      {412, "Precondition Failed"},
      {413, "Content Too Large"},
      {414, "URI Too Long"},
      {415, "Unsupported Media Type"},
      {416, "Range Not Satisfiable"},
      {417, "Expectation Failed"},
      {421, "Misdirected Request"},
      {426, "Upgrade Required"},
      {428, "Precondition Required"},
      {429, "Too Many Requests"},
      {431, "Request Header Fields Too Large"},
      {500, "Internal Server Error"},
      {501, "Not Implemented"},
      {502, "Bad Gateway"},
      {503, "Service Unavailable"},
      {504, "Gateway Timeout"},
      {505, "HTTP Version Not Supported"},
      {508, "Loop Detected"},
  };
  for (const auto& p : kPhrases)
    if (p.status == status) return p.text;
  return "Unknown";
}

}  // namespace slip::policy
