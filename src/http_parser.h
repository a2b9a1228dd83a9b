// HTTP/1.1 request parsing for the front end: llhttp (Node.js's parser, built
// in strict mode) plus the checks RFC 9112 leaves to the server — limits on
// the request line, the head and the body, Host, the HTTP version and the
// transfer codings. No I/O: bytes in, a Request or an error out, so the
// framing rules are table-tested without sockets (tests/unit/http_parser_test.cc).
#pragma once

#include <llhttp/llhttp.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "policy/policy.h"

namespace slip::http {

struct Field {
  std::string name;
  std::string value;
};

/// Request header fields in the order received; names compared
/// case-insensitively.
class HeaderList {
 public:
  void add(std::string name, std::string value) { fields_.push_back({std::move(name), std::move(value)}); }
  /// The first field called `name`, or null.
  const std::string* find(std::string_view name) const;
  /// `find(name)` or "".
  std::string_view get(std::string_view name) const;
  size_t count(std::string_view name) const;
  const std::vector<Field>& all() const { return fields_; }

 private:
  std::vector<Field> fields_;
};

/// One request as received. `error` set means the request could not be
/// read (limits, framing, version): answer it and close the connection.
struct Request {
  std::string method;          // "GET", "PROPFIND", ... (what llhttp recognised)
  std::string target;          // the request-target as sent, raw UTF-8 percent-encoded
  int versionMajor = 1;
  int versionMinor = 1;
  HeaderList headers;
  std::string body;            // de-chunked, at most Limits::maxBody bytes
  bool keepAlive = false;      // another request may follow on this connection
  policy::Reason error = policy::Reason::None;
  std::string errorDetail;     // for the log: llhttp's reason, the offending value
  int64_t startNs = 0;         // monotonic time of its first byte (set by the connection)
  bool isHead() const { return method == "HEAD"; }
};

struct Limits {
  size_t maxRequestLine = 8 * 1024;   // method + target + version → 414
  size_t maxHeaderBytes = 32 * 1024;  // all header lines → 431
  size_t maxBody = 64 * 1024;         // a body → 413
};

/// Incremental parser for the requests of one connection. After Complete,
/// take() hands the request over and the parser continues with the next one
/// (pipelining); after Error it only reports Error.
class RequestParser {
 public:
  explicit RequestParser(const Limits& limits);
  RequestParser(const RequestParser&) = delete;
  RequestParser& operator=(const RequestParser&) = delete;

  enum class Result { NeedMore, Complete, Error };

  /// Parses from `data`; `*used` is how many bytes were consumed (on
  /// Complete, the rest belongs to the next request).
  Result feed(const char* data, size_t len, size_t* used);

  /// A byte of a request arrived since the last take().
  bool started() const { return started_; }
  /// The head is in and the client waits for "100 Continue" before it
  /// sends the body (`Expect: 100-continue`); true once per request.
  bool takeContinue();
  /// The request (complete, or the partial one with `error` set).
  Request take();
  /// Marks the current request failed (a timeout), for take().
  void fail(policy::Reason r, std::string detail);

 private:
  static int onMessageBegin(llhttp_t* p);
  static int onUrl(llhttp_t* p, const char* at, size_t n);
  static int onHeaderField(llhttp_t* p, const char* at, size_t n);
  static int onHeaderValue(llhttp_t* p, const char* at, size_t n);
  static int onHeaderValueComplete(llhttp_t* p);
  static int onHeadersComplete(llhttp_t* p);
  static int onBody(llhttp_t* p, const char* at, size_t n);
  static int onMessageComplete(llhttp_t* p);
  int headersComplete();
  void endField();
  int refuse(policy::Reason r, std::string detail);
  policy::Reason mapError(llhttp_errno_t e) const;
  Result failed(llhttp_errno_t e);
  policy::Reason escapeTarget(const char* data, size_t len, size_t* n, std::string* out,
                              bool* copied);

  Limits limits_;
  llhttp_settings_t settings_;
  llhttp_t parser_;
  Request cur_;
  std::string field_, value_;
  bool inValue_ = false;
  size_t headBytes_ = 0;
  bool started_ = false;
  bool complete_ = false;
  bool dead_ = false;
  bool continue_ = false;
  bool upgrade_ = false;
  // Where the request line is, for escapeTarget (see http_parser.cc).
  enum class Line { Start, Method, Target, Rest, Done };
  Line line_ = Line::Start;
  unsigned char seq_[4] = {};  // a UTF-8 sequence of the target, cut by the reads
  size_t have_ = 0, need_ = 0;
};

/// Whether `seq` (`n` bytes, n = the length its lead byte announces) is one
/// UTF-8 character that a request target may carry raw: shortest form, no
/// surrogate, at most U+10FFFF, not a C1 control (U+0080..U+009F).
bool targetChar(const unsigned char* seq, size_t n);

/// Transfer-Encoding check (RFC 9112 §6.1, §6.3): every coding must be
/// known (we decode only `chunked`: anything else → UnsupportedCoding, 501)
/// and `chunked` must be the last and only once (else BadFraming, 400).
/// `values` are the field's lines as received.
policy::Reason checkTransferCodings(const std::vector<std::string_view>& values);

}  // namespace slip::http
