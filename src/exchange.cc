// Exchange invariants:
//  - conn_ is valid while the exchange runs; it is cleared when the exchange
//    ends (the connection goes on to its next request) and when the
//    connection tells us the client is gone (it is closing).
//  - Once ended (Done, Failed, ClientGone) nothing reaches the connection;
//    Sink calls a job makes after that are ignored.
//  - The exchange is freed by the host from its own event, never inside a
//    callback of its job (see ExchangeHost::retire).
#include "src/exchange.h"

#include <event2/buffer.h>

#include <charconv>

#include "conf/clock.h"
#include "conf/conf.h"
#include "src/admin_api.h"

namespace slip {

void SpeedMeter::sample(int64_t monoNs, uint64_t bytes) {
  ring_[next_] = {monoNs, bytes};
  next_ = (next_ + 1) % kSamples;
  if (count_ < kSamples) count_++;
}

double SpeedMeter::bytesPerSecond() const {
  if (count_ < 2) return 0;
  const auto& newest = ring_[(next_ + kSamples - 1) % kSamples];
  const auto& oldest = ring_[count_ < kSamples ? 0 : next_];
  int64_t ns = newest.first - oldest.first;
  if (ns <= 0 || newest.second < oldest.second) return 0;
  return static_cast<double>(newest.second - oldest.second) * 1e9 / static_cast<double>(ns);
}

namespace {

uint64_t number(std::string_view s) {
  uint64_t n = 0;
  std::from_chars(s.data(), s.data() + s.size(), n);
  return n;
}

}  // namespace

const char* exStateName(ExState s) {
  switch (s) {
    case ExState::Parsing: return "parsing";
    case ExState::Deciding: return "deciding";
    case ExState::ProbingSize: return "probing_size";
    case ExState::Resolving: return "resolving";
    case ExState::Opening: return "opening";
    case ExState::Streaming: return "streaming";
    case ExState::Done: return "done";
    case ExState::Failed: return "failed";
    case ExState::ClientGone: return "client_gone";
  }
  return "?";
}

Exchange::Exchange(ExchangeHost& host, http::Conn& conn, http::Request&& req, uint64_t id,
                   const Clock& clock)
    : host_(host),
      conn_(&conn),
      req_(std::move(req)),
      id_(id),
      clock_(clock),
      startNs_(req_.startNs ? req_.startNs : clock.monoNs()),
      client_(conn.peer()),
      tls_(conn.ssl() != nullptr) {
  startWallMs_ = clock.wallMs();
  trail_.push_back(state_);
  policy::splitTarget(req_.target, &rawPath_, &query_);
  entry_.id = id_;
  entry_.client = client_;
  entry_.method = req_.method;
  entry_.path = std::string(rawPath_.substr(0, 512));
  entry_.range = std::string(req_.headers.get("Range"));
  entry_.userAgent = std::string(req_.headers.get("User-Agent"));
}

Exchange::~Exchange() = default;

bool Exchange::running() const {
  return state_ != ExState::Done && state_ != ExState::Failed && state_ != ExState::ClientGone;
}

void Exchange::setState(ExState s) {
  if (s == state_ || !running()) return;
  state_ = s;
  trail_.push_back(s);
}

std::string Exchange::trail() const {
  std::string t;
  for (ExState s : trail_) {
    if (!t.empty()) t += '>';
    t += exStateName(s);
  }
  return t;
}

void Exchange::setTarget(int mount, std::string virt, std::string rest) {
  mount_ = mount;
  virtualPath_ = std::move(virt);
  rest_ = std::move(rest);
}

uint64_t Exchange::bytesWritten() const {
  uint64_t q = conn_ ? conn_->queued() : 0;
  return entry_.bytes > q ? entry_.bytes - q : 0;
}

double Exchange::sinceStartMs() const { return static_cast<double>(clock_.monoNs() - startNs_) / 1e6; }

void Exchange::done(ExState s) {
  setState(s);
  conn_ = nullptr;
  entry_.ms = sinceStartMs();
  host_.retire(*this);
}

// ------------------------------------------------------------------ answering

void Exchange::respond(int status, proxy::Headers headers, std::string_view body) {
  if (!running() || !conn_) return;
  headers.push_back({"Content-Length", std::to_string(body.size())});
  sendHeaders(status, headers);
  evbuffer* b = evbuffer_new();
  evbuffer_add(b, body.data(), body.size());
  sendBody(b);
  evbuffer_free(b);
  finish();
}

void Exchange::sendError(policy::Reason r, const std::string& detail, const std::string& allow) {
  proxy::Headers extra;
  if (!allow.empty()) extra.push_back({"Allow", allow});
  sendErrorWith(r, detail, extra);
}

void Exchange::respondError(policy::Reason r, proxy::Headers headers, std::string_view body) {
  if (!running() || !conn_) return;
  int st = policy::reasonStatus(r);
  failure_ = r;
  entry_.reason = policy::reasonCode(r);
  headers.push_back({"Content-Length", std::to_string(body.size())});
  sendHeaders(st, headers);
  evbuffer* b = evbuffer_new();
  evbuffer_add(b, body.data(), body.size());
  sendBody(b);
  evbuffer_free(b);
  conn_->endResponse();
  done(ExState::Failed);
}

void Exchange::sendErrorWith(policy::Reason r, const std::string& detail,
                             const proxy::Headers& extra) {
  if (!running() || !conn_) return;
  int st = policy::reasonStatus(r);
  failure_ = r;
  failureDetail_ = detail;
  entry_.reason = policy::reasonCode(r);
  std::string body = std::to_string(st) + " " + policy::statusText(st) + ": " + policy::reasonText(r);
  if (!detail.empty()) body += " (" + detail + ")";
  body += "\n";
  proxy::Headers h = {{"Content-Type", "text/plain; charset=utf-8"}, {"Cache-Control", "no-store"}};
  h.insert(h.end(), extra.begin(), extra.end());
  if (r == policy::Reason::AdminAuth) h.push_back({"WWW-Authenticate", admin::kAdminChallenge});
  // After these the rest of the connection cannot be trusted (a tunnel, a
  // head we refused to read, a body we did not want): close it.
  using R = policy::Reason;
  if (req_.error != R::None || r == R::Overloaded || r == R::ShuttingDown ||
      r == R::RequestLineTooLong || r == R::HeadersTooLarge || r == R::AbsoluteTarget ||
      r == R::RequestBody || r == R::MethodNotAllowed || r == R::SelfRequest)
    conn_->closeAfterResponse();
  h.push_back({"Content-Length", std::to_string(body.size())});
  entry_.status = st;
  headersSent_ = true;
  if (entry_.ttfbMs < 0) entry_.ttfbMs = sinceStartMs();
  conn_->beginResponse(st, h);
  evbuffer* b = evbuffer_new();
  evbuffer_add(b, body.data(), body.size());
  if (!isHead()) entry_.bytes += body.size();
  conn_->body(b);
  evbuffer_free(b);
  conn_->endResponse();
  done(ExState::Failed);
}

void Exchange::noteFailure(policy::Reason r) {
  if (!running()) return;
  failure_ = r;
  entry_.reason = policy::reasonCode(r);
}

void Exchange::abandon() {
  if (!running()) return;
  onPeerGone();
}

// ------------------------------------------------------------------ proxy::Sink

void Exchange::sendHeaders(int status, const proxy::Headers& headers) {
  if (!running() || !conn_ || headersSent_) return;
  for (const auto& h : headers) {
    if (h.name == "X-Cache") entry_.cache = h.value;
    if (h.name == "Content-Length" && rangeEnd_ == 0) rangeEnd_ = number(h.value);
    if (h.name == "Content-Range") {  // bytes B-E/SIZE
      std::string_view v = h.value;
      size_t sp = v.find(' '), dash = v.find('-'), slash = v.find('/');
      if (sp != std::string_view::npos && dash != std::string_view::npos && dash > sp &&
          slash != std::string_view::npos && slash > dash) {
        rangeBegin_ = number(v.substr(sp + 1, dash - sp - 1));
        rangeEnd_ = number(v.substr(dash + 1, slash - dash - 1)) + 1;
        objectSize_ = number(v.substr(slash + 1));
      }
    }
  }
  if (status == 200) objectSize_ = rangeEnd_;
  entry_.status = status;
  headersSent_ = true;
  entry_.ttfbMs = sinceStartMs();
  conn_->beginResponse(status, headers);
  setState(ExState::Streaming);
}

void Exchange::sendBody(evbuffer* data) {
  size_t n = evbuffer_get_length(data);
  if (!running() || !conn_) {
    evbuffer_drain(data, n);
    return;
  }
  if (!isHead()) entry_.bytes += n;
  conn_->body(data);
}

size_t Exchange::queued() const { return conn_ ? conn_->queued() : 0; }

void Exchange::finish() {
  if (!running() || !conn_) return;
  conn_->endResponse();
  done(ExState::Done);
}

void Exchange::fail(policy::Reason r, const std::string& detail, const proxy::Headers& extra) {
  if (!running() || !conn_) return;
  entry_.reason = policy::reasonCode(r);
  if (!detail.empty()) {
    conf::Log::write(r == policy::Reason::Internal || r == policy::Reason::CacheFailed
                         ? conf::LogLevel::Error
                         : conf::LogLevel::Warn,
                     "request_failed",
                     "id=" + std::to_string(id_) + " reason=" + entry_.reason +
                         " detail=" + conf::logValue(detail) + " path=" + conf::logValue(entry_.path));
  }
  if (!headersSent_) return sendErrorWith(r, detail, extra);
  // The head is out: let what is queued reach the client, then close, so
  // it sees the status and a body it can tell is short.
  failure_ = r;
  failureDetail_ = detail;
  conn_->abortResponse();
  done(ExState::Failed);
}

void Exchange::noteProgress(Progress p) {
  if (headersSent_) return;
  setState(p == Progress::Resolving ? ExState::Resolving : ExState::Opening);
}

// ------------------------------------------------------------------ http::ResponseHandler

void Exchange::onWritable() {
  if (running() && job) job->onWritable();
}

void Exchange::onPeerGone() {
  if (!running()) return;
  conf::Log::write(conf::LogLevel::Debug, "client_gone",
                   "id=" + std::to_string(id_) + " state=" + exStateName(state_));
  conn_ = nullptr;
  failure_ = policy::Reason::ClientGone;
  if (entry_.reason == "-") entry_.reason = policy::reasonCode(policy::Reason::ClientGone);
  setState(ExState::ClientGone);
  entry_.ms = sinceStartMs();
  if (job) job->onClientGone();
  host_.retire(*this);
}

}  // namespace slip
