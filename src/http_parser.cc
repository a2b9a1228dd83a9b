// llhttp wrapper. llhttp delivers each piece of the request (target, header
// names and values, body) as spans that may be cut anywhere by the socket
// reads; we append them, count them against our limits as they arrive (so an
// oversized head is refused at the limit, never buffered whole), and pause
// the parser at the end of each message so that pipelined bytes stay for the
// next request.
//
// Raw UTF-8 in the target: llhttp's strict mode refuses every byte >= 0x80
// in the request-target (its loose mode would accept them, but it also
// relaxes line ends, header syntax and more). Before llhttp sees the request
// line, escapeTarget() rewrites each valid UTF-8 character of the target as
// its %XX escapes, so `GET /电影.mkv` reaches llhttp (and everything after
// it) as `GET /%E7%94%B5%E5%BD%B1.mkv` — exactly what a client that encodes
// sends. Invalid UTF-8 and C1 controls are refused (400 bad_target); ASCII
// passes through untouched, so spaces and controls are still llhttp's to
// refuse. See src/DESIGN.md.
#include "src/http_parser.h"

#include <strings.h>

#include <cstring>

namespace slip::http {
namespace {

using policy::Reason;

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && strncasecmp(a.data(), b.data(), a.size()) == 0;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

RequestParser* self(llhttp_t* p) { return static_cast<RequestParser*>(p->data); }

}  // namespace

// ------------------------------------------------------------------ HeaderList

const std::string* HeaderList::find(std::string_view name) const {
  for (const auto& f : fields_)
    if (iequals(f.name, name)) return &f.value;
  return nullptr;
}

std::string_view HeaderList::get(std::string_view name) const {
  const std::string* v = find(name);
  return v ? std::string_view(*v) : std::string_view();
}

size_t HeaderList::count(std::string_view name) const {
  size_t n = 0;
  for (const auto& f : fields_)
    if (iequals(f.name, name)) n++;
  return n;
}

// ------------------------------------------------------------------ codings

Reason checkTransferCodings(const std::vector<std::string_view>& values) {
  std::vector<std::string_view> codings;
  for (std::string_view v : values) {
    size_t begin = 0;
    while (begin <= v.size()) {
      size_t end = v.find(',', begin);
      if (end == std::string_view::npos) end = v.size();
      std::string_view c = trim(v.substr(begin, end - begin));
      size_t semi = c.find(';');  // transfer-parameters
      if (semi != std::string_view::npos) c = trim(c.substr(0, semi));
      if (!c.empty()) codings.push_back(c);
      begin = end + 1;
    }
  }
  if (codings.empty()) return Reason::BadFraming;
  for (std::string_view c : codings)
    if (!iequals(c, "chunked")) return Reason::UnsupportedCoding;
  // Only "chunked" remains: it must appear once (and so be the last).
  return codings.size() == 1 ? Reason::None : Reason::BadFraming;
}

// ------------------------------------------------------------------ parser

RequestParser::RequestParser(const Limits& limits) : limits_(limits) {
  llhttp_settings_init(&settings_);
  settings_.on_message_begin = &RequestParser::onMessageBegin;
  settings_.on_url = &RequestParser::onUrl;
  settings_.on_header_field = &RequestParser::onHeaderField;
  settings_.on_header_value = &RequestParser::onHeaderValue;
  settings_.on_header_value_complete = &RequestParser::onHeaderValueComplete;
  settings_.on_headers_complete = &RequestParser::onHeadersComplete;
  settings_.on_body = &RequestParser::onBody;
  settings_.on_message_complete = &RequestParser::onMessageComplete;
  llhttp_init(&parser_, HTTP_REQUEST, &settings_);
  parser_.data = this;
}

int RequestParser::onMessageBegin(llhttp_t* p) {
  RequestParser* s = self(p);
  s->started_ = true;
  return 0;
}

int RequestParser::onUrl(llhttp_t* p, const char* at, size_t n) {
  RequestParser* s = self(p);
  s->started_ = true;
  s->cur_.target.append(at, n);
  // method SP target SP "HTTP/1.1"
  size_t line = strlen(llhttp_method_name(static_cast<llhttp_method_t>(p->method))) + 1 +
                s->cur_.target.size() + 9;
  if (line > s->limits_.maxRequestLine) return s->refuse(Reason::RequestLineTooLong, "");
  return 0;
}

void RequestParser::endField() {
  if (!inValue_) return;
  cur_.headers.add(std::move(field_), std::string(trim(value_)));
  field_.clear();
  value_.clear();
  inValue_ = false;
}

int RequestParser::onHeaderField(llhttp_t* p, const char* at, size_t n) {
  RequestParser* s = self(p);
  s->endField();
  s->field_.append(at, n);
  s->headBytes_ += n;
  if (s->headBytes_ > s->limits_.maxHeaderBytes) return s->refuse(Reason::HeadersTooLarge, "");
  return 0;
}

int RequestParser::onHeaderValue(llhttp_t* p, const char* at, size_t n) {
  RequestParser* s = self(p);
  if (!s->inValue_) s->headBytes_ += 4;  // ": " and CRLF
  s->inValue_ = true;
  s->value_.append(at, n);
  s->headBytes_ += n;
  if (s->headBytes_ > s->limits_.maxHeaderBytes) return s->refuse(Reason::HeadersTooLarge, "");
  return 0;
}

// llhttp (8.1) takes a line that starts with ':' as a field without a name
// (": 1", ": "); RFC 9110 §5.1 says a name is a token, one character at
// least. Found by tests/fuzz/http_request.
int RequestParser::onHeaderValueComplete(llhttp_t* p) {
  RequestParser* s = self(p);
  if (s->field_.empty()) return s->refuse(Reason::BadHeader, "a header field without a name");
  return 0;
}

int RequestParser::onHeadersComplete(llhttp_t* p) { return self(p)->headersComplete(); }

int RequestParser::headersComplete() {
  endField();
  cur_.method = llhttp_method_name(static_cast<llhttp_method_t>(parser_.method));
  cur_.versionMajor = parser_.http_major;
  cur_.versionMinor = parser_.http_minor;
  if (cur_.versionMajor != 1 || cur_.versionMinor > 1)
    return refuse(Reason::BadVersion, "HTTP/" + std::to_string(cur_.versionMajor) + "." +
                                          std::to_string(cur_.versionMinor));
  const HeaderList& h = cur_.headers;
  // RFC 9112 §3.2: exactly one Host in HTTP/1.1, at most one in 1.0.
  size_t hosts = h.count("Host");
  if (hosts > 1 || (hosts == 0 && cur_.versionMinor == 1))
    return refuse(Reason::BadHost, std::to_string(hosts) + " Host fields");
  for (const auto& f : h.all()) {
    // llhttp lets NUL through in values; nothing downstream expects one.
    if (f.value.find('\0') != std::string::npos) return refuse(Reason::BadHeader, f.name);
  }
  if (parser_.flags & F_TRANSFER_ENCODING) {
    std::vector<std::string_view> te;
    for (const auto& f : h.all())
      if (iequals(f.name, "Transfer-Encoding")) te.push_back(f.value);
    Reason r = checkTransferCodings(te);
    if (r != Reason::None) return refuse(r, "Transfer-Encoding: " + std::string(te.front()));
  }
  if ((parser_.flags & F_CONTENT_LENGTH) && parser_.content_length > limits_.maxBody)
    return refuse(Reason::BodyTooLarge, "Content-Length: " + std::to_string(parser_.content_length));
  bool hasBody = (parser_.flags & F_CHUNKED) || parser_.content_length > 0;
  if (const std::string* e = h.find("Expect"); e && iequals(trim(*e), "100-continue") && hasBody)
    continue_ = true;
  upgrade_ = parser_.upgrade != 0;  // CONNECT, or an Upgrade we do not speak: the connection ends
  return 0;
}

int RequestParser::onBody(llhttp_t* p, const char* at, size_t n) {
  RequestParser* s = self(p);
  if (s->cur_.body.size() + n > s->limits_.maxBody)
    return s->refuse(Reason::BodyTooLarge, "chunked body over " + std::to_string(s->limits_.maxBody));
  s->cur_.body.append(at, n);
  return 0;
}

int RequestParser::onMessageComplete(llhttp_t* p) {
  RequestParser* s = self(p);
  s->cur_.keepAlive = llhttp_should_keep_alive(p) && !s->upgrade_;
  s->complete_ = true;
  return HPE_PAUSED;  // the rest of the input is the next request's
}

int RequestParser::refuse(Reason r, std::string detail) {
  cur_.error = r;
  cur_.errorDetail = std::move(detail);
  return -1;
}

Reason RequestParser::mapError(llhttp_errno_t e) const {
  switch (e) {
    case HPE_INVALID_METHOD: return Reason::UnknownMethod;
    case HPE_INVALID_URL: return Reason::BadTarget;
    case HPE_INVALID_VERSION: return Reason::BadVersion;
    case HPE_INVALID_HEADER_TOKEN: return Reason::BadHeader;
    case HPE_INVALID_CONTENT_LENGTH:
    case HPE_UNEXPECTED_CONTENT_LENGTH:
    case HPE_INVALID_TRANSFER_ENCODING:
    case HPE_INVALID_CHUNK_SIZE: return Reason::BadFraming;
    default: return Reason::BadRequest;
  }
}

bool targetChar(const unsigned char* seq, size_t n) {
  static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};  // shortest form per length
  if (n < 2 || n > 4) return false;
  uint32_t cp = seq[0] & (0xFF >> (n + 1));
  for (size_t k = 1; k < n; k++) {
    if ((seq[k] & 0xC0) != 0x80) return false;
    cp = (cp << 6) | (seq[k] & 0x3F);
  }
  return cp >= kMin[n] && cp <= 0x10FFFF && !(cp >= 0xD800 && cp <= 0xDFFF) &&
         !(cp >= 0x80 && cp <= 0x9F);
}

// Consumes the part of `data` that belongs to the request line (`*n` bytes:
// up to its LF, or all of it). Until the target holds a byte >= 0x80 nothing
// is copied (`*copied` false: hand llhttp `data` itself); from then on `out`
// receives what llhttp should see, with each UTF-8 character of the target
// as %XX escapes. A character cut by the reads waits in seq_ for its rest.
// BadTarget on invalid UTF-8 (`out` then holds what llhttp should see of
// the bytes before the fault); RequestLineTooLong once the escaped line
// passes the limit (so a huge read is never copied whole).
Reason RequestParser::escapeTarget(const char* data, size_t len, size_t* n, std::string* out,
                                 bool* copied) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  *copied = false;
  size_t i = 0;
  for (; i < len && line_ != Line::Done; i++) {
    auto c = static_cast<unsigned char>(data[i]);
    if (line_ == Line::Target && (c >= 0x80 || need_ > 0)) {
      if (!*copied) {
        out->assign(data, i);
        *copied = true;
      }
      if (need_ == 0) {  // a lead byte
        need_ = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 0;
        if (need_ == 0) return Reason::BadTarget;  // a continuation byte without its lead
        have_ = 0;
      } else if ((c & 0xC0) != 0x80) {
        return Reason::BadTarget;  // the character ends early
      }
      seq_[have_++] = c;
      if (have_ < need_) continue;
      if (!targetChar(seq_, need_)) return Reason::BadTarget;
      for (size_t k = 0; k < need_; k++) {
        out->push_back('%');
        out->push_back(kHex[seq_[k] >> 4]);
        out->push_back(kHex[seq_[k] & 15]);
      }
      have_ = need_ = 0;
      if (out->size() > limits_.maxRequestLine) return Reason::RequestLineTooLong;
      continue;
    }
    switch (line_) {
      case Line::Start:  // llhttp's to judge: empty lines before the request line
        if (c != '\r' && c != '\n') line_ = Line::Method;
        break;
      case Line::Method:
        if (c == ' ') line_ = Line::Target;
        break;
      case Line::Target:
        if (c == ' ' || c == '\r' || c == '\n') line_ = Line::Rest;
        break;
      case Line::Rest:
        if (c == '\n') line_ = Line::Done;
        break;
      case Line::Done:
        break;
    }
    if (*copied) out->push_back(static_cast<char>(c));
  }
  *n = i;
  return Reason::None;
}

RequestParser::Result RequestParser::feed(const char* data, size_t len, size_t* used) {
  *used = 0;
  if (dead_) return Result::Error;
  if (complete_) return Result::Complete;  // take() first
  if (len == 0) return Result::NeedMore;
  if (!started_) started_ = true;
  if (line_ != Line::Done) {
    // The request line: llhttp gets it with raw UTF-8 escaped. It cannot
    // complete a message, so llhttp either wants more or fails here.
    size_t n = 0;
    std::string escaped;
    bool copied = false;
    if (Reason r = escapeTarget(data, len, &n, &escaped, &copied); r != Reason::None) {
      // llhttp judges the bytes before the bad one first, as it would have
      // had the reads cut the line there: the first fault in the line is
      // the one reported, however the bytes arrive (found by
      // tests/fuzz/http_request: "G@T /\xE5\x89" was 400 bad_target whole,
      // 501 unknown_method when cut after "G@T").
      if (!escaped.empty()) {
        llhttp_errno_t e = llhttp_execute(&parser_, escaped.data(), escaped.size());
        if (e != HPE_OK) return failed(e);
      }
      dead_ = true;
      cur_.error = r;
      if (r == Reason::BadTarget) cur_.errorDetail = "invalid UTF-8 or a C1 control in the target";
      return Result::Error;
    }
    const char* p = copied ? escaped.data() : data;
    size_t pn = copied ? escaped.size() : n;
    if (pn > 0) {
      llhttp_errno_t e = llhttp_execute(&parser_, p, pn);
      if (e != HPE_OK) return failed(e);
    }
    if (n == len) {
      *used = len;
      return Result::NeedMore;
    }
    data += n;
    len -= n;
    *used = n;
  }
  llhttp_errno_t e = llhttp_execute(&parser_, data, len);
  if (e == HPE_OK) {
    *used += len;
    return Result::NeedMore;
  }
  if (e == HPE_PAUSED && complete_) {
    *used += static_cast<size_t>(llhttp_get_error_pos(&parser_) - data);
    return Result::Complete;
  }
  return failed(e);
}

RequestParser::Result RequestParser::failed(llhttp_errno_t e) {
  dead_ = true;
  if (cur_.error == Reason::None) {
    cur_.error = mapError(e);
    const char* why = llhttp_get_error_reason(&parser_);
    cur_.errorDetail = why ? why : llhttp_errno_name(e);
  }
  // The method is known once the request line parsed; it helps the log.
  if (cur_.method.empty() && !cur_.target.empty())
    cur_.method = llhttp_method_name(static_cast<llhttp_method_t>(parser_.method));
  return Result::Error;
}

bool RequestParser::takeContinue() {
  bool c = continue_ && !complete_ && !dead_;
  if (c) continue_ = false;
  return c;
}

void RequestParser::fail(Reason r, std::string detail) {
  dead_ = true;
  if (cur_.error == Reason::None) {
    cur_.error = r;
    cur_.errorDetail = std::move(detail);
  }
}

Request RequestParser::take() {
  Request r = std::move(cur_);
  if (r.method.empty() && !r.target.empty())
    r.method = llhttp_method_name(static_cast<llhttp_method_t>(parser_.method));
  cur_ = Request{};
  field_.clear();
  value_.clear();
  inValue_ = false;
  headBytes_ = 0;
  started_ = false;
  continue_ = false;
  if (complete_) {
    complete_ = false;
    if (upgrade_) dead_ = true;  // what follows is another protocol
    else llhttp_resume(&parser_);
  }
  upgrade_ = false;
  line_ = Line::Start;
  have_ = need_ = 0;
  return r;
}

}  // namespace slip::http
