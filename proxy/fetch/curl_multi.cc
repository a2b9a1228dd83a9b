#include "proxy/fetch/curl_multi.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <cassert>
#include <charconv>
#include <cstring>

namespace slip::proxy {

CurlMulti::CurlMulti(event_base* base, int maxConnections, const Clock& clock)
    : base_(base),
      clock_(clock),
      multi_(curl_multi_init()),
      timer_(base, [this] { action(CURL_SOCKET_TIMEOUT, 0); }),
      deferEv_(base, [this] { runDeferred(); }),
      admission_(base, clock) {
  curl_multi_setopt(multi_, CURLMOPT_SOCKETFUNCTION, &CurlMulti::onSocket);
  curl_multi_setopt(multi_, CURLMOPT_SOCKETDATA, this);
  curl_multi_setopt(multi_, CURLMOPT_TIMERFUNCTION, &CurlMulti::onTimer);
  curl_multi_setopt(multi_, CURLMOPT_TIMERDATA, this);
  // One request per connection at a time: an upstream that caps each TCP
  // connection must see one connection per parallel fetch, never streams
  // multiplexed onto one.
  curl_multi_setopt(multi_, CURLMOPT_PIPELINING, static_cast<long>(CURLPIPE_NOTHING));
  // Keep enough idle connections that every parallel fetch finds one to reuse.
  curl_multi_setopt(multi_, CURLMOPT_MAXCONNECTS, static_cast<long>(maxConnections + 8));
}

CurlMulti::~CurlMulti() {
  curl_multi_cleanup(multi_);  // transfers are gone by now: their owners removed them
}

void CurlMulti::defer(std::function<void()> fn) {
  if (depth_ == 0) {
    fn();
    return;
  }
  deferred_.push_back(std::move(fn));
  deferEv_.fire();
}

void CurlMulti::runDeferred() {
  while (depth_ == 0 && !deferred_.empty()) {
    std::vector<std::function<void()>> work;
    work.swap(deferred_);
    for (auto& fn : work) fn();
  }
}

// One event per socket, remembered with curl_multi_assign (the map owns it).
int CurlMulti::onSocket(CURL*, curl_socket_t s, int what, void* userp, void* sockp) {
  auto* self = static_cast<CurlMulti*>(userp);
  if (what == CURL_POLL_REMOVE) {
    if (sockp) {
      self->sockets_.erase(s);
      curl_multi_assign(self->multi_, s, nullptr);
    }
    return 0;
  }
  short kind = EV_PERSIST;
  if (what & CURL_POLL_IN) kind |= EV_READ;
  if (what & CURL_POLL_OUT) kind |= EV_WRITE;
  EventPtr& ev = self->sockets_[s];
  ev.reset(event_new(self->base_, s, kind, &CurlMulti::onEvent, self));
  curl_multi_assign(self->multi_, s, ev.get());
  event_add(ev.get(), nullptr);
  return 0;
}

int CurlMulti::onTimer(CURLM*, long timeoutMs, void* userp) {
  auto* self = static_cast<CurlMulti*>(userp);
  // Never call curl from here: arm our timer and let the loop call back.
  if (timeoutMs < 0) self->timer_.cancel();
  else self->timer_.armMs(timeoutMs);
  return 0;
}

void CurlMulti::onEvent(evutil_socket_t fd, short kind, void* arg) {
  int mask = 0;
  if (kind & EV_READ) mask |= CURL_CSELECT_IN;
  if (kind & EV_WRITE) mask |= CURL_CSELECT_OUT;
  static_cast<CurlMulti*>(arg)->action(fd, mask);
}

void CurlMulti::action(curl_socket_t fd, int mask) {
  depth_++;
  curl_multi_socket_action(multi_, fd, mask, &running_);
  depth_--;
  drainInfo();
  runDeferred();
}

void CurlMulti::drainInfo() {
  int left = 0;
  while (CURLMsg* msg = curl_multi_info_read(multi_, &left)) {
    if (msg->msg != CURLMSG_DONE) continue;
    CURL* easy = msg->easy_handle;
    CURLcode code = msg->data.result;  // copy: msg dies with remove_handle
    Transfer* t = nullptr;
    curl_easy_getinfo(easy, CURLINFO_PRIVATE, &t);
    if (t) t->finished(code);
  }
}

// ------------------------------------------------------------------ handles

void CurlMulti::add(Transfer* t) {
  assert(depth_ == 0);
  CURLMcode rc = curl_multi_add_handle(multi_, t->easy_);
  if (rc != CURLM_OK) {
    t->finished(CURLE_FAILED_INIT);
    return;
  }
  t->added_ = true;
  attached_++;
}

void CurlMulti::remove(Transfer* t) {
  assert(depth_ == 0);
  if (!t->added_) return;
  curl_multi_remove_handle(multi_, t->easy_);
  t->added_ = false;
  attached_--;
}

// ------------------------------------------------------------------ Transfer

namespace {

std::string lower(std::string_view s) {
  std::string r(s);
  for (auto& c : r) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return r;
}

std::string_view trimmed(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n'))
    s.remove_suffix(1);
  return s;
}

}  // namespace

// Upstream links and redirects may point anywhere; never let them reach
// link-local networks or cloud metadata services (SPEC §10).
curl_socket_t Transfer::openSocket(void* self, curlsocktype, curl_sockaddr* addr) {
  std::array<uint8_t, 16> a{};
  if (addr->family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&addr->addr);
    a[10] = a[11] = 0xff;
    memcpy(&a[12], &in->sin_addr, 4);
  } else if (addr->family == AF_INET6) {
    memcpy(a.data(), &reinterpret_cast<const sockaddr_in6*>(&addr->addr)->sin6_addr, 16);
  }
  if ((addr->family == AF_INET || addr->family == AF_INET6) && policy::forbiddenAddress(a)) {
    static_cast<Transfer*>(self)->forbiddenHit_ = true;
    return CURL_SOCKET_BAD;
  }
  return socket(addr->family, addr->socktype, addr->protocol);
}

Transfer::Transfer(CurlMulti& multi, Options opts, Handler* handler)
    : multi_(multi),
      opts_(std::move(opts)),
      handler_(handler),
      headerTimer_(multi.base(), [this] { onHeaderTimeout(); }),
      speedTimer_(multi.base(), [this] { onSpeedCheck(); }),
      speed_(opts_.stallTimeoutMs, opts_.minSpeed) {
  easy_ = curl_easy_init();
  curl_easy_setopt(easy_, CURLOPT_URL, opts_.url.c_str());
  curl_easy_setopt(easy_, CURLOPT_PRIVATE, this);
  curl_easy_setopt(easy_, CURLOPT_ERRORBUFFER, errbuf_);
  curl_easy_setopt(easy_, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(easy_, CURLOPT_HTTP_VERSION, static_cast<long>(CURL_HTTP_VERSION_1_1));
  curl_easy_setopt(easy_, CURLOPT_PROXY, "");  // ignore *_proxy environment variables
  curl_easy_setopt(easy_, CURLOPT_BUFFERSIZE, 64L * 1024);
  curl_easy_setopt(easy_, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(easy_, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(opts_.connectTimeoutMs));
  // A slow body is judged by our speed check (onSpeedCheck), not curl's
  // low-speed limit, which a trickle of a few bytes a second satisfies.
  curl_easy_setopt(easy_, CURLOPT_PROTOCOLS_STR, "http,https");
  // The bytes as stored: never decoded (we ask for identity; an encoded
  // answer is a bad_answer, policy::classifyUpstream).
  curl_easy_setopt(easy_, CURLOPT_HTTP_CONTENT_DECODING, 0L);
  multi_.trust().apply(easy_, opts_.trust);
  if (opts_.followRedirects) {
    curl_easy_setopt(easy_, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(easy_, CURLOPT_MAXREDIRS, 5L);
    curl_easy_setopt(easy_, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  }
  curl_easy_setopt(easy_, CURLOPT_OPENSOCKETFUNCTION, &Transfer::openSocket);
  curl_easy_setopt(easy_, CURLOPT_OPENSOCKETDATA, this);
  curl_easy_setopt(easy_, CURLOPT_HEADERFUNCTION, &Transfer::onHeaderLine);
  curl_easy_setopt(easy_, CURLOPT_HEADERDATA, this);
  curl_easy_setopt(easy_, CURLOPT_WRITEFUNCTION, &Transfer::onBody);
  curl_easy_setopt(easy_, CURLOPT_WRITEDATA, this);
  if (!opts_.range.empty()) curl_easy_setopt(easy_, CURLOPT_RANGE, opts_.range.c_str());
  if (!opts_.postBody.empty()) {
    curl_easy_setopt(easy_, CURLOPT_POSTFIELDS, opts_.postBody.c_str());
    curl_easy_setopt(easy_, CURLOPT_POSTFIELDSIZE, static_cast<long>(opts_.postBody.size()));
  }
  for (const auto& h : opts_.headers) {
    std::string line = h.name + ": " + h.value;
    slist_ = curl_slist_append(slist_, line.c_str());
  }
  // Sources cannot set it (conf::headerProblem refuses Accept-Encoding).
  slist_ = curl_slist_append(slist_, "Accept-Encoding: identity");
  curl_easy_setopt(easy_, CURLOPT_HTTPHEADER, slist_);
}

Transfer::~Transfer() {
  assert(!multi_.insideCurl() || !added_);
  releaseSlot(added_);
  if (added_) multi_.remove(this);
  curl_easy_cleanup(easy_);
  curl_slist_free_all(slist_);
}

void Transfer::releaseSlot(bool cutOff) {
  if (opts_.pool < 0) return;
  Admission& a = multi_.admission();
  if (waiting_) a.withdraw(opts_.pool, ticket_);
  waiting_ = false;
  if (holdsSlot_) a.release(opts_.pool, cutOff);
  holdsSlot_ = false;
}

void Transfer::start() {
  if (opts_.pool >= 0 && !holdsSlot_ && !waiting_) {
    Admission& a = multi_.admission();
    ticket_ = a.newId();
    Watch alive = life_.watch();
    if (!a.acquire(opts_.pool, ticket_, [this, alive] {
          if (!alive) return;  // cannot happen: the destructor withdraws
          waiting_ = false;
          holdsSlot_ = true;
          launch();
        })) {
      waiting_ = true;  // queued behind the pool's cap
      return;
    }
    holdsSlot_ = true;
  }
  launch();
}

void Transfer::launch() {
  if (opts_.headerTimeoutMs > 0) headerTimer_.armMs(opts_.headerTimeoutMs);
  // The handle is added from the loop, never from inside a curl callback.
  Watch alive = life_.watch();
  multi_.defer([this, alive] {
    if (alive && !added_ && !cancelled_) multi_.add(this);
  });
}

void Transfer::resume() {
  if (!paused_) return;
  paused_ = false;
  Watch alive = life_.watch();
  multi_.defer([this, alive] {
    if (!alive || !added_) return;
    multi_.depth_++;  // curl may deliver the held data right away
    curl_easy_pause(easy_, CURLPAUSE_CONT);
    multi_.depth_--;
    multi_.runDeferred();
  });
}

void Transfer::cancel() {
  cancelled_ = true;
  headerTimer_.cancel();
  speedTimer_.cancel();
  releaseSlot(added_);
  if (added_) {
    if (multi_.insideCurl()) {
      // Let the current callback abort it; remove it once curl returns.
      Watch alive = life_.watch();
      multi_.defer([this, alive] {
        if (alive) multi_.remove(this);
      });
    } else {
      multi_.remove(this);
    }
  }
}

void Transfer::finished(CURLcode code) {
  multi_.remove(this);
  headerTimer_.cancel();
  speedTimer_.cancel();
  releaseSlot(code != CURLE_OK);
  if (cancelled_) return;  // the owner already knows
  TransferResult r;
  r.code = code;
  r.failure = failureOf(code);
  if (code != CURLE_OK) {
    std::string what = errbuf_[0] ? errbuf_ : curl_easy_strerror(code);
    if (headerTimedOut_) what = "no response headers within the upstream timeout";
    if (stalled_)
      what = "the body stalled: " + std::to_string(speed_.windowBytes()) + " bytes in the last " +
             std::to_string(speed_.windowMs()) + " ms (min_speed " + std::to_string(opts_.minSpeed) + " B/s)";
    if (forbiddenHit_) what = "refused to connect to a link-local or metadata address (" + what + ")";
    if (oversized_) what = "response headers larger than " + std::to_string(kMaxResponseHeaders) + " bytes";
    r.error = hostOfUrl() + ": " + what;
  }
  r.timedOut = r.failure == policy::TransportFailure::Timeout || r.failure == policy::TransportFailure::Stalled;
  handler_->onDone(*this, r);  // may destroy *this
}

policy::TransportFailure Transfer::failureOf(CURLcode code) const {
  using F = policy::TransportFailure;
  if (code == CURLE_OK) return F::None;
  if (headerTimedOut_) return F::Timeout;
  if (stalled_) return F::Stalled;
  if (oversized_) return F::BadResponse;
  if (forbiddenHit_) return F::ForbiddenAddress;
  if (aborted_) return F::None;  // a handler stopped it: its own verdict says why
  switch (code) {
    case CURLE_OPERATION_TIMEDOUT: return F::Timeout;
    case CURLE_COULDNT_CONNECT: return F::Refused;
    case CURLE_COULDNT_RESOLVE_HOST: return F::UnknownHost;
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_USE_SSL_FAILED: return F::Tls;
    case CURLE_UNSUPPORTED_PROTOCOL:
      // A redirect to file:// and friends, or an answer that is not HTTP
      // (HTTP/0.9, a status code that is not three digits).
      return status_ >= 300 && status_ < 400 && !header("location").empty() ? F::ForbiddenScheme
                                                                             : F::BadResponse;
    case CURLE_TOO_MANY_REDIRECTS: return F::TooManyRedirects;
    case CURLE_URL_MALFORMAT: return F::BadUrl;
    case CURLE_WEIRD_SERVER_REPLY: return F::BadResponse;
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_PARTIAL_FILE:
    case CURLE_GOT_NOTHING:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM: return F::Reset;
    default: return F::Other;
  }
}

/// The host (and port) the transfer last talked to, for error messages:
/// the redirect target's when it has one, else the link's. Never the
/// credentials, the path or the query (a signed link's secret).
std::string Transfer::hostOfUrl() const {
  auto hostOf = [](std::string_view u) -> std::string {
    size_t s = u.find("://");
    if (s == std::string_view::npos) return "";
    u.remove_prefix(s + 3);
    u = u.substr(0, u.find_first_of("/?#"));
    if (size_t at = u.rfind('@'); at != std::string_view::npos) u.remove_prefix(at + 1);
    return conf::printable(u);
  };
  const char* eff = nullptr;
  curl_easy_getinfo(easy_, CURLINFO_EFFECTIVE_URL, &eff);
  std::string h = eff ? hostOf(eff) : "";
  if (h.empty()) h = hostOf(opts_.url);
  return h.empty() ? "upstream" : h;
}

void Transfer::onHeaderTimeout() {
  if (headersDone_) return;
  headerTimedOut_ = true;
  finished(CURLE_OPERATION_TIMEDOUT);
}

/// Loop timer: judges the body's throughput; a trickle is cut (Stalled) and
/// the owner retries from the byte reached.
void Transfer::onSpeedCheck() {
  if (!added_ || cancelled_) return;
  bool held = heldSinceCheck_ || paused_;
  heldSinceCheck_ = paused_;
  if (speed_.tooSlow(multi_.clock().monoMs(), bodyBytes_, held)) {
    stalled_ = true;
    finished(CURLE_OPERATION_TIMEDOUT);  // may destroy *this
    return;
  }
  speedTimer_.armMs(std::clamp<int64_t>(opts_.stallTimeoutMs / 8, 50, 2000));
}

size_t Transfer::onHeaderLine(char* p, size_t size, size_t n, void* ud) {
  auto* t = static_cast<Transfer*>(ud);
  size_t len = size * n;
  std::string_view line(p, len);
  if (t->aborted_ || t->cancelled_) return 0;
  t->headerBytes_ += len;
  if (t->headerBytes_ > kMaxResponseHeaders) {
    t->oversized_ = true;
    return 0;
  }
  if (line.starts_with("HTTP/")) {
    // A new response begins (the first, or after a redirect / 1xx).
    t->respHeaders_.clear();
    t->status_ = 0;
    auto sp = line.find(' ');
    if (sp != std::string_view::npos && sp + 4 <= line.size()) {
      int code = 0;
      std::from_chars(line.data() + sp + 1, line.data() + sp + 4, code);
      t->status_ = code;
    }
    return len;
  }
  std::string_view tl = trimmed(line);
  if (tl.empty()) {
    bool redirect = t->opts_.followRedirects && t->status_ >= 300 && t->status_ < 400 &&
                    !t->header("location").empty();
    if (t->status_ < 200 || redirect) return len;  // not the final response yet
    t->headersDone_ = true;
    t->headerTimer_.cancel();
    if (!t->handler_->onHeaders(*t)) {
      t->aborted_ = true;
      return 0;
    }
    t->speed_.tooSlow(t->multi_.clock().monoMs(), 0, true);  // the window starts now
    t->speedTimer_.armMs(std::clamp<int64_t>(t->opts_.stallTimeoutMs / 8, 50, 2000));
    return len;
  }
  auto colon = tl.find(':');
  if (colon != std::string_view::npos) {
    t->respHeaders_.emplace_back(lower(trimmed(tl.substr(0, colon))),
                                 std::string(trimmed(tl.substr(colon + 1))));
  }
  return len;
}

size_t Transfer::onBody(char* p, size_t size, size_t n, void* ud) {
  auto* t = static_cast<Transfer*>(ud);
  size_t len = size * n;
  if (t->aborted_ || t->cancelled_) return 0;
  if (!t->headersDone_) return len;  // body of a non-final response
  size_t r = t->handler_->onData(*t, p, len);
  if (r == kPause) {
    t->paused_ = true;
    t->heldSinceCheck_ = true;
    return CURL_WRITEFUNC_PAUSE;
  }
  if (r != len) t->aborted_ = true;
  t->bodyBytes_ += r;
  return r;
}

const std::string& Transfer::header(const std::string& lowerName) const {
  static const std::string kEmpty;
  for (const auto& [k, v] : respHeaders_)
    if (k == lowerName) return v;
  return kEmpty;
}

std::optional<uint64_t> Transfer::contentLength() const {
  const std::string& v = header("content-length");
  if (v.empty()) return std::nullopt;
  uint64_t n = 0;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
  if (ec != std::errc() || p != v.data() + v.size()) return std::nullopt;
  return n;
}

policy::UpstreamAnswer Transfer::answer() const {
  policy::UpstreamAnswer a;
  a.status = status_;
  a.contentRange = header("content-range");
  a.contentLength = contentLength();
  a.etag = header("etag");
  a.contentEncoding = header("content-encoding");
  a.retryAfter = header("retry-after");
  return a;
}

Transfer::Options apiCallOptions(CurlMulti& multi, const conf::Server& s, const std::string& caFile) {
  Transfer::Options o;
  o.connectTimeoutMs = s.connectTimeoutMs;
  o.headerTimeoutMs = s.upstreamTimeoutMs;
  o.stallTimeoutMs = s.stallTimeoutMs;
  o.minSpeed = s.minSpeed;
  std::string ignored;  // the engine read every ca_file at start: this finds its set
  o.trust = std::max(0, multi.trust().add(caFile.empty() ? s.caFile : caFile, &ignored));
  return o;
}

}  // namespace slip::proxy
