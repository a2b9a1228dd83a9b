// The front end's HTTP/1.1 request parser (RequestParser: raw-UTF-8 target
// escaping, then llhttp in strict mode, then our limits and framing checks),
// fed the same bytes twice: whole, and cut into pieces at places the input
// chooses (as socket reads cut them). Input: one byte of limits, one byte
// seeding the cuts, then the bytes of the connection.
//
// Invariants: feed() never claims more than it was given and consumes all of
// it unless a request completed; both feedings yield the same requests (the
// same methods, targets, headers, bodies, keep-alive, errors); a complete
// request has a method, a target with no byte >= 0x80 or control, a body
// within the limit, header values without NUL, CR or LF, and keepAlive false
// after an error. As the connection does, nothing is fed after a request
// without keep-alive.
#include <string>
#include <vector>

#include "src/http_parser.h"
#include "tests/fuzz/fuzz.h"

using namespace slip;
using http::RequestParser;

namespace {

struct Seen {
  http::Request req;
  bool complete = false;
};

std::vector<Seen> run(const http::Limits& lim, std::string_view in, uint8_t cutSeed) {
  RequestParser p(lim);
  std::vector<Seen> out;
  uint32_t x = cutSeed * 2654435761u + 1;
  size_t at = 0;
  bool dead = false;
  while (at < in.size() && !dead) {
    size_t n = in.size() - at;
    if (cutSeed) {  // pieces of 1..16 bytes
      x = x * 1103515245u + 12345u;
      n = std::min<size_t>(n, 1 + ((x >> 16) & 15));
    }
    const char* d = in.data() + at;
    at += n;
    while (true) {
      size_t used = 0;
      RequestParser::Result r = p.feed(d, n, &used);
      FUZZ_ASSERT(used <= n);
      if (r == RequestParser::Result::NeedMore) {
        FUZZ_ASSERT(used == n);
        break;
      }
      out.push_back({p.take(), r == RequestParser::Result::Complete});
      if (r == RequestParser::Result::Error) {
        FUZZ_ASSERT(out.back().req.error != policy::Reason::None);
        dead = true;
        break;
      }
      // Without keep-alive the connection closes after the answer (http_conn).
      if (!out.back().req.keepAlive) {
        dead = true;
        break;
      }
      d += used;
      n -= used;
      if (n == 0) break;
    }
  }
  return out;
}

void checkRequest(const http::Limits& lim, const Seen& s) {
  const http::Request& r = s.req;
  if (!s.complete) {
    FUZZ_ASSERT(!r.keepAlive);
    return;
  }
  FUZZ_ASSERT(r.error == policy::Reason::None);
  FUZZ_ASSERT(!r.method.empty() && !r.target.empty());
  for (unsigned char c : r.target) FUZZ_ASSERT(c > 0x20 && c < 0x7f);
  FUZZ_ASSERT(r.body.size() <= lim.maxBody);
  FUZZ_ASSERT(r.versionMajor == 1 && r.versionMinor <= 1);
  for (const http::Field& f : r.headers.all()) {
    FUZZ_ASSERT(!f.name.empty());
    for (char c : f.value) FUZZ_ASSERT(c != '\0' && c != '\r' && c != '\n');
  }
  FUZZ_ASSERT(r.versionMinor == 0 || r.headers.count("Host") == 1);
}

// The size limits are counted per span llhttp hands over, so a line or a
// head that is both too long and malformed may be refused for either,
// depending on the reads (known, left open: README "Fuzzing").
bool limit(policy::Reason r) {
  return r == policy::Reason::RequestLineTooLong || r == policy::Reason::HeadersTooLarge;
}

bool same(const Seen& a, const Seen& b) {
  const http::Request &x = a.req, &y = b.req;
  if (a.complete != b.complete) return false;
  if (x.error != y.error && !(limit(x.error) || limit(y.error))) return false;
  if (!a.complete) return true;  // where an error is noticed may depend on the cuts
  if (x.method != y.method || x.target != y.target || x.body != y.body ||
      x.keepAlive != y.keepAlive || x.versionMinor != y.versionMinor)
    return false;
  const auto &hx = x.headers.all(), &hy = y.headers.all();
  if (hx.size() != hy.size()) return false;
  for (size_t i = 0; i < hx.size(); i++)
    if (hx[i].name != hy[i].name || hx[i].value != hy[i].value) return false;
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Input in{data, size};
  uint8_t limits = in.byte(), cutSeed = in.byte();
  std::string_view bytes = in.rest();
  // Small limits (so the fuzzer reaches them) or the defaults.
  http::Limits lim;
  if (limits & 1) {
    lim.maxRequestLine = 16 + (limits >> 1 & 7) * 16;
    lim.maxHeaderBytes = 32 + (limits >> 4 & 7) * 32;
    lim.maxBody = (limits >> 7) ? 64 : 5;
  }
  std::vector<Seen> whole = run(lim, bytes, 0);
  std::vector<Seen> cut = run(lim, bytes, cutSeed ? cutSeed : 1);
  for (const Seen& s : whole) checkRequest(lim, s);
  for (const Seen& s : cut) checkRequest(lim, s);
  FUZZ_ASSERT(whole.size() == cut.size());
  for (size_t i = 0; i < whole.size(); i++) FUZZ_ASSERT(same(whole[i], cut[i]));
  return 0;
}
