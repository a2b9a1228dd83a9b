// The front end's request parser (src/http_parser.h): RFC 9112 framing,
// limits, versions, methods and pipelining, fed whole and byte by byte.
#include <catch2/catch.hpp>

#include "src/http_parser.h"

using namespace slip::http;
using slip::policy::Reason;

namespace {

struct Outcome {
  RequestParser::Result result = RequestParser::Result::NeedMore;
  Request req;
  size_t used = 0;
};

/// Feeds `raw` in pieces of `step` bytes (0 = all at once) until the
/// parser completes a request or fails.
Outcome parse(const std::string& raw, size_t step = 0, Limits limits = {}) {
  RequestParser p(limits);
  Outcome o;
  size_t pos = 0;
  while (pos < raw.size()) {
    size_t n = step ? std::min(step, raw.size() - pos) : raw.size() - pos;
    size_t used = 0;
    o.result = p.feed(raw.data() + pos, n, &used);
    pos += used;
    if (o.result != RequestParser::Result::NeedMore) break;
    if (used == 0) break;
  }
  o.used = pos;
  if (o.result != RequestParser::Result::NeedMore) o.req = p.take();
  return o;
}

const std::string kHost = "Host: gw\r\n";

}  // namespace

TEST_CASE("request framing and refusals (RFC 9112 §6.3)", "[http]") {
  struct Row {
    const char* what;
    std::string raw;
    Reason want;  // None = a complete request
  };
  const Row rows[] = {
      {"plain GET", "GET /a HTTP/1.1\r\n" + kHost + "\r\n", Reason::None},
      {"HTTP/1.0 without Host", "GET /a HTTP/1.0\r\n\r\n", Reason::None},
      {"PROPFIND reaches the router", "PROPFIND /dav/ HTTP/1.1\r\n" + kHost + "Depth: 1\r\n\r\n", Reason::None},
      {"body by length", "POST /a HTTP/1.1\r\n" + kHost + "Content-Length: 5\r\n\r\nhello", Reason::None},
      {"chunked body", "POST /a HTTP/1.1\r\n" + kHost + "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
       Reason::None},
      {"duplicate differing Content-Length",
       "POST /a HTTP/1.1\r\n" + kHost + "Content-Length: 5\r\nContent-Length: 6\r\n\r\nhelloX", Reason::BadFraming},
      {"duplicate equal Content-Length",
       "POST /a HTTP/1.1\r\n" + kHost + "Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello", Reason::BadFraming},
      {"Content-Length with Transfer-Encoding",
       "POST /a HTTP/1.1\r\n" + kHost + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
       Reason::BadFraming},
      {"Transfer-Encoding then Content-Length",
       "POST /a HTTP/1.1\r\n" + kHost + "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
       Reason::BadFraming},
      {"unknown coding xchunked", "POST /a HTTP/1.1\r\n" + kHost + "Transfer-Encoding: xchunked\r\n\r\n",
       Reason::UnsupportedCoding},
      {"gzip, chunked (not decoded here)",
       "POST /a HTTP/1.1\r\n" + kHost + "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", Reason::UnsupportedCoding},
      {"chunked twice", "POST /a HTTP/1.1\r\n" + kHost + "Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
       Reason::BadFraming},
      {"negative length", "POST /a HTTP/1.1\r\n" + kHost + "Content-Length: -1\r\n\r\n", Reason::BadFraming},
      {"length overflow", "POST /a HTTP/1.1\r\n" + kHost + "Content-Length: 99999999999999999999999\r\n\r\n",
       Reason::BadFraming},
      {"bad chunk size", "POST /a HTTP/1.1\r\n" + kHost + "Transfer-Encoding: chunked\r\n\r\nzz\r\n", Reason::BadFraming},
      {"unknown method", "FOO /a HTTP/1.1\r\n" + kHost + "\r\n", Reason::UnknownMethod},
      {"HTTP/1.2", "GET /a HTTP/1.2\r\n" + kHost + "\r\n", Reason::BadVersion},
      {"HTTP/2.0 in plain text", "GET /a HTTP/2.0\r\n" + kHost + "\r\n", Reason::BadVersion},
      {"HTTP/0.9", "GET /a\r\n\r\n", Reason::BadVersion},
      {"no Host in 1.1", "GET /a HTTP/1.1\r\n\r\n", Reason::BadHost},
      {"two Hosts", "GET /a HTTP/1.1\r\n" + kHost + kHost + "\r\n", Reason::BadHost},
      {"space before colon", "GET /a HTTP/1.1\r\nHost : gw\r\n\r\n", Reason::BadHeader},
      {"bare LF line ends", "GET /a HTTP/1.1\nHost: gw\n\n", Reason::BadHeader},
      {"CR inside a value", "GET /a HTTP/1.1\r\n" + kHost + "X: a\rb\r\n\r\n", Reason::BadRequest},
      {"NUL inside a value", "GET /a HTTP/1.1\r\n" + kHost + std::string("X: a\0b\r\n\r\n", 10), Reason::BadHeader},
      {"raw UTF-8 in the target", "GET /\xe4\xb8\xad HTTP/1.1\r\n" + kHost + "\r\n", Reason::None},
      {"lone continuation byte", "GET /\x80 HTTP/1.1\r\n" + kHost + "\r\n", Reason::BadTarget},
      {"Latin-1, not UTF-8", "GET /caf\xe9 HTTP/1.1\r\n" + kHost + "\r\n", Reason::BadTarget},
      {"overlong '/'", "GET /a\xc0\xaf" "b HTTP/1.1\r\n" + kHost + "\r\n", Reason::BadTarget},
      {"overlong 3-byte", "GET /\xe0\x80\xaf HTTP/1.1\r\n" + kHost + "\r\n", Reason::BadTarget},
      {"UTF-16 surrogate", "GET /\xed\xa0\x80 HTTP/1.1\r\n" + kHost + "\r\n", Reason::BadTarget},
      {"past U+10FFFF", "GET /\xf4\x90\x80\x80 HTTP/1.1\r\n" + kHost + "\r\n", Reason::BadTarget},
      {"0xFF", "GET /\xff HTTP/1.1\r\n" + kHost + "\r\n", Reason::BadTarget},
      {"C1 control U+0085", "GET /a\xc2\x85 HTTP/1.1\r\n" + kHost + "\r\n", Reason::BadTarget},
      {"cut before the space", "GET /\xe4\xb8 HTTP/1.1\r\n" + kHost + "\r\n", Reason::BadTarget},
      {"raw UTF-8 with a raw space", "GET /\xe4\xb8\xad b HTTP/1.1\r\n" + kHost + "\r\n", Reason::BadRequest},
      {"raw UTF-8 with a control", "GET /\xe4\xb8\xad\x01 HTTP/1.1\r\n" + kHost + "\r\n", Reason::BadTarget},
      {"raw UTF-8 in a header value", "GET /a HTTP/1.1\r\n" + kHost + "X: \xe4\xb8\xad\r\n\r\n", Reason::None},
      {"raw UTF-8 in the method", "G\xc3\xa4T /a HTTP/1.1\r\n" + kHost + "\r\n", Reason::UnknownMethod},
      {"space in the target", "GET /a b HTTP/1.1\r\n" + kHost + "\r\n", Reason::BadRequest},
      // Found by tests/fuzz/http_request: llhttp took these as fields named "".
      {"a field without a name", "GET /a HTTP/1.1\r\n" + kHost + ": 1\r\n\r\n", Reason::BadHeader},
      {"an empty field", "GET /a HTTP/1.1\r\n" + kHost + ": \r\n\r\n", Reason::BadHeader},
      {"a field without a name first", "GET /a HTTP/1.1\r\n:x\r\n" + kHost + "\r\n", Reason::BadHeader},
  };
  for (const auto& row : rows) {
    for (size_t step : {size_t{0}, size_t{1}}) {
      INFO(row.what << (step ? " (byte by byte)" : ""));
      Outcome o = parse(row.raw, step);
      if (row.want == Reason::None) {
        CHECK(o.result == RequestParser::Result::Complete);
        CHECK(o.req.error == Reason::None);
      } else {
        CHECK(o.result == RequestParser::Result::Error);
        CHECK(std::string(reasonCode(o.req.error)) == reasonCode(row.want));
      }
    }
  }
}

TEST_CASE("raw UTF-8 in the target reads as its percent-encoded form", "[http]") {
  struct Row {
    std::string raw, want;
  };
  const Row rows[] = {
      {"/p/films/\xe7\x94\xb5\xe5\xbd\xb1.mkv", "/p/films/%E7%94%B5%E5%BD%B1.mkv"},
      {"/\xc3\xa9t\xc3\xa9?q=\xe4\xb8\xad&sign=a:0", "/%C3%A9t%C3%A9?q=%E4%B8%AD&sign=a:0"},
      {"/a%20b/\xf0\x9f\x8e\xac", "/a%20b/%F0%9F%8E%AC"},  // escapes stay, 4-byte characters too
      {"/\xe3\x80\x80", "/%E3%80%80"},                      // U+3000 ideographic space is a name's
      {"/plain", "/plain"},
  };
  for (const auto& row : rows) {
    for (size_t step : {size_t{0}, size_t{1}, size_t{2}, size_t{5}}) {
      INFO(row.want << " step " << step);
      Outcome o = parse("GET " + row.raw + " HTTP/1.1\r\n" + kHost + "\r\n", step);
      REQUIRE(o.result == RequestParser::Result::Complete);
      CHECK(o.req.target == row.want);
      CHECK(o.req.headers.get("Host") == "gw");
    }
  }
  // Pipelined: the second request's target is escaped too, and `used` counts raw bytes.
  std::string two = "GET /\xe4\xb8\xad HTTP/1.1\r\n" + kHost + "\r\nGET /\xe6\x96\x87 HTTP/1.1\r\n" + kHost + "\r\n";
  RequestParser p(Limits{});
  size_t used = 0;
  REQUIRE(p.feed(two.data(), two.size(), &used) == RequestParser::Result::Complete);
  CHECK(used == two.find("GET /\xe6"));
  CHECK(p.take().target == "/%E4%B8%AD");
  size_t rest = two.size() - used;
  REQUIRE(p.feed(two.data() + used, rest, &used) == RequestParser::Result::Complete);
  CHECK(used == rest);
  CHECK(p.take().target == "/%E6%96%87");
  // The limit applies to the escaped form (what a client that encodes sends).
  Limits l;
  l.maxRequestLine = 1024;
  std::string cjk;
  for (int i = 0; i < 120; i++) cjk += "\xe4\xb8\xad";  // 360 raw bytes, 1080 escaped
  for (size_t step : {size_t{0}, size_t{1}}) {
    Outcome o = parse("GET /" + cjk + " HTTP/1.1\r\n" + kHost + "\r\n", step, l);
    CHECK(o.req.error == Reason::RequestLineTooLong);
  }
}

// Found by tests/fuzz/http_request: the target's UTF-8 was checked over the
// whole read before llhttp saw the method, so "G@T /\xE5\x89\xE9" was 400
// bad_target when it came in one read and unknown_method when the reads cut
// it after "G@T". The first fault of the line is the one reported, however
// the bytes arrive.
TEST_CASE("the first fault of a request line wins, whatever the reads", "[http]") {
  struct Row {
    std::string line;
    Reason want;
  };
  const Row rows[] = {
      {"G@T /dav/\xe5\x89\xe9\xa7 HTTP/1.1\r\n", Reason::UnknownMethod},
      {"GET /dav/\xe5\x89\xe9\xa7 HTTP/1.1\r\n", Reason::BadTarget},      // ours: bad UTF-8
      {"GET /\xc2\x80 HTTP/1.1\r\n", Reason::BadTarget},                    // a C1 control
  };
  for (const auto& row : rows) {
    for (size_t step : {size_t{0}, size_t{1}, size_t{3}, size_t{7}}) {
      INFO(row.line << " step " << step);
      Outcome o = parse(row.line + kHost + "\r\n", step);
      REQUIRE(o.result == RequestParser::Result::Error);
      CHECK(o.req.error == row.want);
    }
  }
}

TEST_CASE("a parsed request carries what the handlers need", "[http]") {
  Outcome o = parse("POST /dav/a%20b?x=1 HTTP/1.1\r\nHost: gw\r\nUser-Agent:  VLC/3 \r\n"
                    "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
                    1);
  REQUIRE(o.result == RequestParser::Result::Complete);
  CHECK(o.req.method == "POST");
  CHECK(o.req.target == "/dav/a%20b?x=1");
  CHECK(o.req.versionMinor == 1);
  CHECK(o.req.headers.get("user-agent") == "VLC/3");  // case-insensitive, trimmed
  CHECK(o.req.headers.count("HOST") == 1);
  CHECK(o.req.body == "abcde");
  CHECK(o.req.keepAlive);
}

TEST_CASE("keep-alive by version and Connection", "[http]") {
  CHECK(parse("GET / HTTP/1.1\r\n" + kHost + "\r\n").req.keepAlive);
  CHECK_FALSE(parse("GET / HTTP/1.1\r\n" + kHost + "Connection: close\r\n\r\n").req.keepAlive);
  CHECK_FALSE(parse("GET / HTTP/1.0\r\n\r\n").req.keepAlive);
  CHECK(parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").req.keepAlive);
  // CONNECT and Upgrade turn the connection into something else: never kept.
  Outcome c = parse("CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n");
  CHECK(c.result == RequestParser::Result::Complete);
  CHECK(c.req.method == "CONNECT");
  CHECK_FALSE(c.req.keepAlive);
  CHECK_FALSE(parse("GET / HTTP/1.1\r\n" + kHost + "Connection: upgrade\r\nUpgrade: websocket\r\n\r\n")
                  .req.keepAlive);
}

TEST_CASE("limits: request line, head, body", "[http]") {
  Limits l;
  l.maxRequestLine = 1024;
  l.maxHeaderBytes = 2048;
  l.maxBody = 100;
  auto reason = [&](const std::string& raw, size_t step) {
    Outcome o = parse(raw, step, l);
    return std::string(reasonCode(o.req.error));
  };
  for (size_t step : {size_t{0}, size_t{7}}) {
    INFO("step " << step);
    CHECK(reason("GET /" + std::string(990, 'a') + " HTTP/1.1\r\n" + kHost + "\r\n", step) == "none");
    CHECK(reason("GET /" + std::string(1100, 'a') + " HTTP/1.1\r\n" + kHost + "\r\n", step) ==
          "request_line_too_long");
    // Refused at the limit, long before the 200 KB line ends.
    Outcome big = parse("GET /" + std::string(200'000, 'a'), step, l);
    CHECK(big.result == RequestParser::Result::Error);
    CHECK(big.used < 4096);
    CHECK(reason("GET / HTTP/1.1\r\n" + kHost + "X: " + std::string(1900, 'b') + "\r\n\r\n", step) == "none");
    CHECK(reason("GET / HTTP/1.1\r\n" + kHost + "X: " + std::string(2100, 'b') + "\r\n\r\n", step) ==
          "headers_too_large");
    CHECK(reason("GET / HTTP/1.1\r\n" + kHost + std::string(3000, 'n') + ": v\r\n\r\n", step) ==
          "headers_too_large");
    CHECK(reason("POST / HTTP/1.1\r\n" + kHost + "Content-Length: 100\r\n\r\n" + std::string(100, 'x'), step) ==
          "none");
    CHECK(reason("POST / HTTP/1.1\r\n" + kHost + "Content-Length: 101\r\n\r\n", step) == "body_too_large");
    std::string chunks = "POST / HTTP/1.1\r\n" + kHost + "Transfer-Encoding: chunked\r\n\r\n";
    for (int i = 0; i < 5; i++) chunks += "20\r\n" + std::string(32, 'y') + "\r\n";
    CHECK(reason(chunks + "0\r\n\r\n", step) == "body_too_large");
  }
}

TEST_CASE("pipelined requests come out one at a time", "[http]") {
  std::string two = "GET /one HTTP/1.1\r\n" + kHost + "\r\nGET /two HTTP/1.1\r\n" + kHost + "\r\n";
  RequestParser p(Limits{});
  size_t used = 0;
  REQUIRE(p.feed(two.data(), two.size(), &used) == RequestParser::Result::Complete);
  CHECK(p.take().target == "/one");
  size_t rest = two.size() - used;
  REQUIRE(p.feed(two.data() + used, rest, &used) == RequestParser::Result::Complete);
  CHECK(used == rest);
  CHECK(p.take().target == "/two");
  CHECK_FALSE(p.started());
}

TEST_CASE("Expect: 100-continue is reported once, only with a body", "[http]") {
  std::string head = "POST / HTTP/1.1\r\n" + kHost + "Expect: 100-continue\r\nContent-Length: 3\r\n\r\n";
  RequestParser p(Limits{});
  size_t used = 0;
  REQUIRE(p.feed(head.data(), head.size(), &used) == RequestParser::Result::NeedMore);
  CHECK(p.takeContinue());
  CHECK_FALSE(p.takeContinue());
  REQUIRE(p.feed("abc", 3, &used) == RequestParser::Result::Complete);
  CHECK(p.take().body == "abc");
  std::string noBody = "GET / HTTP/1.1\r\n" + kHost + "Expect: 100-continue\r\n\r\n";
  REQUIRE(p.feed(noBody.data(), noBody.size(), &used) == RequestParser::Result::Complete);
  CHECK_FALSE(p.takeContinue());
}

TEST_CASE("transfer codings", "[http]") {
  CHECK(checkTransferCodings({"chunked"}) == Reason::None);
  CHECK(checkTransferCodings({"Chunked"}) == Reason::None);
  CHECK(checkTransferCodings({" chunked ;foo=bar"}) == Reason::None);
  CHECK(checkTransferCodings({"xchunked"}) == Reason::UnsupportedCoding);
  CHECK(checkTransferCodings({"gzip", "chunked"}) == Reason::UnsupportedCoding);
  CHECK(checkTransferCodings({"chunked", "chunked"}) == Reason::BadFraming);
  CHECK(checkTransferCodings({""}) == Reason::BadFraming);
  CHECK(checkTransferCodings({" , "}) == Reason::BadFraming);
}
