#include "proxy/fetch/curl_multi.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <cassert>
#include <charconv>
#include <cstring>

namespace slip::proxy {

CurlMulti::CurlMulti(event_base* base, int maxConnections, const Clock& clock)
    : base_(base),
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
  added_++;
}

void CurlMulti::remove(Transfer* t) {
  assert(depth_ == 0);
  if (!t->added_) return;
  curl_multi_remove_handle(multi_, t->easy_);
  t->added_ = false;
  added_--;
}

// ------------------------------------------------------------------ Transfer

namespace {

// Upstream redirects may point anywhere; never let them reach link-local
// networks or cloud metadata services (SPEC §10).
bool forbiddenAddress(const sockaddr* sa) {
  if (sa->sa_family == AF_INET) {
    auto* in = reinterpret_cast<const sockaddr_in*>(sa);
    uint32_t a = ntohl(in->sin_addr.s_addr);
    return (a >> 16) == 0xA9FE;  // 169.254.0.0/16, incl. 169.254.169.254
  }
  if (sa->sa_family == AF_INET6) {
    auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
    const uint8_t* b = in6->sin6_addr.s6_addr;
    if (b[0] == 0xfe && (b[1] & 0xc0) == 0x80) return true;  // fe80::/10
    static const uint8_t kEc2[16] = {0xfd, 0x00, 0x0e, 0xc2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x54};
    if (memcmp(b, kEc2, 16) == 0) return true;  // fd00:ec2::254
    if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) return b[12] == 169 && b[13] == 254;
  }
  return false;
}

curl_socket_t openSocket(void*, curlsocktype, curl_sockaddr* addr) {
  if (forbiddenAddress(&addr->addr)) return CURL_SOCKET_BAD;
  return socket(addr->family, addr->socktype, addr->protocol);
}

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

Transfer::Transfer(CurlMulti& multi, Options opts, Handler* handler)
    : multi_(multi),
      opts_(std::move(opts)),
      handler_(handler),
      headerTimer_(multi.base(), [this] { onHeaderTimeout(); }) {
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
  long stallSec = static_cast<long>((opts_.stallTimeoutMs + 999) / 1000);
  curl_easy_setopt(easy_, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(easy_, CURLOPT_LOW_SPEED_TIME, stallSec < 1 ? 1L : stallSec);
  curl_easy_setopt(easy_, CURLOPT_PROTOCOLS_STR, "http,https");
  if (opts_.followRedirects) {
    curl_easy_setopt(easy_, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(easy_, CURLOPT_MAXREDIRS, 5L);
    curl_easy_setopt(easy_, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  }
  curl_easy_setopt(easy_, CURLOPT_OPENSOCKETFUNCTION, &openSocket);
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
  if (slist_) curl_easy_setopt(easy_, CURLOPT_HTTPHEADER, slist_);
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
  releaseSlot(code != CURLE_OK);
  if (cancelled_) return;  // the owner already knows
  TransferResult r;
  r.code = code;
  if (code != CURLE_OK) r.error = errbuf_[0] ? errbuf_ : curl_easy_strerror(code);
  r.timedOut = headerTimedOut_ || code == CURLE_OPERATION_TIMEDOUT;
  if (headerTimedOut_) r.error = "no response headers within the upstream timeout";
  handler_->onDone(*this, r);  // may destroy *this
}

void Transfer::onHeaderTimeout() {
  if (headersDone_) return;
  headerTimedOut_ = true;
  finished(CURLE_OPERATION_TIMEDOUT);
}

size_t Transfer::onHeaderLine(char* p, size_t size, size_t n, void* ud) {
  auto* t = static_cast<Transfer*>(ud);
  size_t len = size * n;
  std::string_view line(p, len);
  if (t->aborted_ || t->cancelled_) return 0;
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
    return CURL_WRITEFUNC_PAUSE;
  }
  if (r != len) t->aborted_ = true;
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

}  // namespace slip::proxy
