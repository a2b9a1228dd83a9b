#include "src/tls.h"

#include <event2/bufferevent_ssl.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <system_error>

namespace slip::tls {
namespace {

// TLS 1.2 suites: ECDHE (forward secrecy) with an AEAD, as Mozilla's
// "intermediate" profile lists them. TLS 1.3 suites are OpenSSL's defaults
// (all three are AEADs).
constexpr const char* kCiphers12 =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";

// "http/1.1" and "http/1.0" in ALPN wire form (length-prefixed), in our
// order of preference: curl --http1.0 offers only the second.
constexpr unsigned char kAlpn[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1',
                                   8, 'h', 't', 't', 'p', '/', '1', '.', '0'};

// The first OpenSSL error on this thread's queue as text; clears the queue.
std::string sslError() {
  unsigned long e = ERR_peek_last_error();
  std::string out;
  if (e) {
    const char* r = ERR_reason_error_string(e);
    out = r ? r : "error " + std::to_string(ERR_GET_REASON(e));
  }
  ERR_clear_error();
  return out.empty() ? "unknown OpenSSL error" : out;
}

int selectAlpn(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
               unsigned int inlen, void*) {
  unsigned char* sel = nullptr;
  if (SSL_select_next_proto(&sel, outlen, kAlpn, sizeof kAlpn, in, inlen) !=
      OPENSSL_NPN_NEGOTIATED)
    return SSL_TLSEXT_ERR_ALERT_FATAL;  // RFC 7301 §3.2: no_application_protocol
  *out = sel;
  return SSL_TLSEXT_ERR_OK;
}

// fopen-style check first, so a missing file says so instead of
// "system lib" from OpenSSL.
bool readable(const std::string& file, const char* what, std::string* err) {
  FILE* f = fopen(file.c_str(), "r");
  if (!f) {
    *err = std::string(what) + " '" + file + "': " + std::generic_category().message(errno);
    return false;
  }
  fclose(f);
  return true;
}

std::string isoTime(const ASN1_TIME* t) {
  struct tm tm {};
  if (!t || ASN1_TIME_to_tm(t, &tm) != 1) return "?";
  char buf[32];
  strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// Applies the protocol settings every context shares.
bool configure(SSL_CTX* c, std::string* err) {
  if (!SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION) ||
      !SSL_CTX_set_max_proto_version(c, TLS1_3_VERSION)) {
    *err = "cannot limit TLS versions: " + sslError();
    return false;
  }
  if (!SSL_CTX_set_cipher_list(c, kCiphers12)) {
    *err = "cipher list refused: " + sslError();
    return false;
  }
  SSL_CTX_set_options(c, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
                             SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_SINGLE_ECDH_USE);
  SSL_CTX_set_mode(c, SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set_alpn_select_cb(c, selectAlpn, nullptr);
  return true;
}

}  // namespace

Context::~Context() {
  if (ctx_) SSL_CTX_free(ctx_);
}

Context& Context::operator=(Context&& o) noexcept {
  if (this != &o) {
    if (ctx_) SSL_CTX_free(ctx_);
    ctx_ = o.ctx_;
    o.ctx_ = nullptr;
  }
  return *this;
}

std::optional<Context> Context::fromFiles(const std::string& certFile, const std::string& keyFile,
                                          int64_t nowUnix, std::string* err) {
  ERR_clear_error();
  if (!readable(certFile, "tls_cert", err) || !readable(keyFile, "tls_key", err))
    return std::nullopt;
  Context c(SSL_CTX_new(TLS_server_method()));
  if (!c.ctx_) {
    *err = "SSL_CTX_new: " + sslError();
    return std::nullopt;
  }
  if (!configure(c.ctx_, err)) return std::nullopt;
  if (SSL_CTX_use_certificate_chain_file(c.ctx_, certFile.c_str()) != 1) {
    *err = "tls_cert '" + certFile + "': not a PEM certificate chain (" + sslError() + ")";
    return std::nullopt;
  }
  // Read the key apart from installing it: OpenSSL refuses a mismatched key
  // already when it is installed, and the user should hear which it is.
  EVP_PKEY* key = nullptr;
  if (FILE* f = fopen(keyFile.c_str(), "r")) {
    key = PEM_read_PrivateKey(f, nullptr, nullptr, nullptr);
    fclose(f);
  }
  if (!key) {
    *err = "tls_key '" + keyFile + "': not a PEM private key (" + sslError() + ")";
    return std::nullopt;
  }
  int used = SSL_CTX_use_PrivateKey(c.ctx_, key);
  EVP_PKEY_free(key);
  if (used != 1 || SSL_CTX_check_private_key(c.ctx_) != 1) {
    ERR_clear_error();
    *err = "tls_key '" + keyFile + "' does not match the certificate in '" + certFile + "'";
    return std::nullopt;
  }
  X509* leaf = SSL_CTX_get0_certificate(c.ctx_);
  time_t now = static_cast<time_t>(nowUnix);
  if (leaf && X509_cmp_time(X509_get0_notAfter(leaf), &now) < 0) {
    *err = "tls_cert '" + certFile + "': the certificate expired on " +
           isoTime(X509_get0_notAfter(leaf));
    return std::nullopt;
  }
  return c;
}

std::string Context::describe() const {
  X509* leaf = ctx_ ? SSL_CTX_get0_certificate(ctx_) : nullptr;
  if (!leaf) return "subject=-";
  std::string subject = "?";
  if (BIO* b = BIO_new(BIO_s_mem())) {
    X509_NAME_print_ex(b, X509_get_subject_name(leaf), 0, XN_FLAG_RFC2253);
    char* data = nullptr;
    long n = BIO_get_mem_data(b, &data);
    if (n > 0) subject.assign(data, static_cast<size_t>(n));
    BIO_free(b);
  }
  return "subject=" + conf::logValue(subject) + " not_after=" + isoTime(X509_get0_notAfter(leaf));
}

namespace {

// fromFiles' messages start with the key they are about.
conf::Error fileError(const conf::Config& cfg, const std::string& why) {
  bool aboutKey = why.starts_with("tls_key");
  return conf::Error{cfg.file, aboutKey ? cfg.server.tlsKeyLine : cfg.server.tlsCertLine, "server",
                     aboutKey ? "tls_key" : "tls_cert", why};
}

}  // namespace

bool Tls::load(const conf::Config& cfg, int64_t nowUnix, std::string* err) {
  std::string why;
  auto c = Context::fromFiles(cfg.server.tlsCert, cfg.server.tlsKey, nowUnix, &why);
  if (!c) {
    *err = fileError(cfg, why).str();
    return false;
  }
  ctx_ = std::make_unique<Context>(std::move(*c));
  generation_++;
  return true;
}

std::optional<conf::Error> checkFiles(const conf::Config& cfg, int64_t nowUnix) {
  if (!cfg.server.anyTls()) return std::nullopt;
  std::string why;
  if (Context::fromFiles(cfg.server.tlsCert, cfg.server.tlsKey, nowUnix, &why)) return std::nullopt;
  return fileError(cfg, why);
}

bufferevent* wrapAccepted(event_base* base, evutil_socket_t fd, SSL_CTX* ctx, int options) {
  SSL* ssl = ctx ? SSL_new(ctx) : nullptr;
  if (!ssl) {
    ERR_clear_error();
    evutil_closesocket(fd);
    return nullptr;
  }
  evutil_make_socket_nonblocking(fd);  // evconnlistener does too; a blocking fd would stall the loop
  bufferevent* bev = bufferevent_openssl_socket_new(base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                                    options | BEV_OPT_CLOSE_ON_FREE);
  if (!bev) {
    SSL_free(ssl);
    evutil_closesocket(fd);
    return nullptr;
  }
  // A client that closes without close_notify (most do) ends its stream
  // normally; a truncated *response* is the client's problem to see.
  bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
  return bev;
}

std::string handshakeError(bufferevent* bev) {
  // libevent queues OpenSSL's errors, then codes of its own without a
  // library (e.g. 1): the first with a library is the one that says why.
  std::string out;
  for (unsigned long e; (e = bufferevent_get_openssl_error(bev)) != 0;) {
    const char* r = ERR_GET_LIB(e) ? ERR_reason_error_string(e) : nullptr;
    if (r && out.empty()) out = r;
  }
  if (out.empty()) return "closed";
  for (char& ch : out)
    if (ch == ' ') ch = '_';
  return out;
}

}  // namespace slip::tls
