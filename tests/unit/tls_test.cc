// src/tls: contexts from PEM files the test makes with the OpenSSL API (a CA,
// leaves signed by it, expired ones, foreign keys), handshakes over memory
// BIOs, reloads, and a real accepted socket wrapped by wrapAccepted.
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>

#include "conf/conf.h"
#include "src/tls.h"

using namespace slip;

namespace {

struct KeyPtr {
  EVP_PKEY* p = EVP_EC_gen("P-256");
  ~KeyPtr() { EVP_PKEY_free(p); }
};

struct CertPtr {
  X509* p = X509_new();
  ~CertPtr() { X509_free(p); }
};

// A certificate for `cn`, signed by (issuer, issuerKey) or self-signed when
// issuer is null; valid from now+fromDays to now+toDays.
void makeCert(CertPtr& c, const KeyPtr& key, const std::string& cn, X509* issuer,
              const KeyPtr* issuerKey, long fromDays, long toDays, bool ca) {
  static long serial = 1;
  ASN1_INTEGER_set(X509_get_serialNumber(c.p), serial++);
  X509_set_version(c.p, 2);
  X509_gmtime_adj(X509_getm_notBefore(c.p), fromDays * 86400);
  X509_gmtime_adj(X509_getm_notAfter(c.p), toDays * 86400);
  X509_set_pubkey(c.p, key.p);
  X509_NAME* name = X509_get_subject_name(c.p);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(c.p, issuer ? X509_get_subject_name(issuer) : name);
  X509V3_CTX v3;
  X509V3_set_ctx(&v3, issuer ? issuer : c.p, c.p, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &v3, NID_basic_constraints,
                                            ca ? "critical,CA:TRUE" : "CA:FALSE");
  X509_add_ext(c.p, ext, -1);
  X509_EXTENSION_free(ext);
  if (!ca) {
    ext = X509V3_EXT_conf_nid(nullptr, &v3, NID_subject_alt_name, ("DNS:" + cn).c_str());
    X509_add_ext(c.p, ext, -1);
    X509_EXTENSION_free(ext);
  }
  X509_sign(c.p, issuerKey ? issuerKey->p : key.p, EVP_sha256());
}

std::string pem(X509* c) {
  BIO* b = BIO_new(BIO_s_mem());
  PEM_write_bio_X509(b, c);
  char* d = nullptr;
  long n = BIO_get_mem_data(b, &d);
  std::string s(d, static_cast<size_t>(n));
  BIO_free(b);
  return s;
}

std::string pem(EVP_PKEY* k) {
  BIO* b = BIO_new(BIO_s_mem());
  PEM_write_bio_PrivateKey(b, k, nullptr, nullptr, 0, nullptr, nullptr);
  char* d = nullptr;
  long n = BIO_get_mem_data(b, &d);
  std::string s(d, static_cast<size_t>(n));
  BIO_free(b);
  return s;
}

// A temp directory with a CA and PEM files named by the tests.
struct Pki {
  std::filesystem::path dir;
  KeyPtr caKey;
  CertPtr ca;

  Pki() {
    dir = std::filesystem::temp_directory_path() /
          ("slip-tls-test-" + std::to_string(getpid()) + "-" + std::to_string(rand()));
    std::filesystem::create_directories(dir);
    makeCert(ca, caKey, "slipstream test CA", nullptr, nullptr, -1, 3650, true);
    write("ca.pem", pem(ca.p));
  }
  ~Pki() { std::filesystem::remove_all(dir); }

  std::string path(const std::string& name) const { return (dir / name).string(); }
  std::string write(const std::string& name, const std::string& text) const {
    std::ofstream(path(name)) << text;
    return path(name);
  }
  // leaf.pem = leaf + CA (a chain), key.pem = its key.
  void leaf(const std::string& prefix, const std::string& cn, long fromDays = -1,
            long toDays = 90) {
    KeyPtr k;
    CertPtr c;
    makeCert(c, k, cn, ca.p, &caKey, fromDays, toDays, false);
    write(prefix + "-cert.pem", pem(c.p) + pem(ca.p));
    write(prefix + "-key.pem", pem(k.p));
  }
};

int64_t now() { return static_cast<int64_t>(time(nullptr)); }

struct Client {
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  ~Client() { SSL_CTX_free(ctx); }
};

struct Result {
  bool ok = false;
  int version = 0;
  std::string alpn;
  std::string peerCn;
  std::string serverError;  // reason of the server's failure
};

// One handshake between a server SSL on `server` and a client SSL on `c`
// over a BIO pair, stepped until both finish or one fails.
Result handshake(SSL_CTX* server, Client& c) {
  Result r;
  SSL* s = SSL_new(server);
  SSL* cl = SSL_new(c.ctx);
  BIO *a = nullptr, *b = nullptr;
  BIO_new_bio_pair(&a, 0, &b, 0);
  SSL_set_bio(cl, a, a);
  SSL_set_bio(s, b, b);
  SSL_set_connect_state(cl);
  SSL_set_accept_state(s);
  SSL_set_tlsext_host_name(cl, "nas.test");
  bool cDone = false, sDone = false, failed = false;
  for (int i = 0; i < 100 && !(cDone && sDone) && !failed; i++) {
    if (!cDone) {
      int rc = SSL_do_handshake(cl);
      if (rc == 1) cDone = true;
      else if (SSL_get_error(cl, rc) != SSL_ERROR_WANT_READ) failed = true;
    }
    if (!sDone && !failed) {
      ERR_clear_error();
      int rc = SSL_do_handshake(s);
      if (rc == 1) {
        sDone = true;
      } else if (SSL_get_error(s, rc) != SSL_ERROR_WANT_READ) {
        failed = true;
        unsigned long e = ERR_peek_last_error();
        const char* why = e ? ERR_reason_error_string(e) : nullptr;
        r.serverError = why ? why : "?";
      }
    }
  }
  ERR_clear_error();
  r.ok = cDone && sDone && !failed;
  if (r.ok) {
    r.version = SSL_version(cl);
    const unsigned char* p = nullptr;
    unsigned n = 0;
    SSL_get0_alpn_selected(cl, &p, &n);
    r.alpn.assign(reinterpret_cast<const char*>(p), n);
    if (X509* peer = SSL_get1_peer_certificate(cl)) {
      char cn[256] = {};
      X509_NAME_get_text_by_NID(X509_get_subject_name(peer), NID_commonName, cn, sizeof cn);
      r.peerCn = cn;
      X509_free(peer);
    }
  }
  SSL_free(cl);
  SSL_free(s);
  return r;
}

// A client that trusts only the test CA and offers http/1.1 (and h2).
void trustingClient(Client& c, const Pki& pki) {
  SSL_CTX_load_verify_locations(c.ctx, pki.path("ca.pem").c_str(), nullptr);
  SSL_CTX_set_verify(c.ctx, SSL_VERIFY_PEER, nullptr);
  static const unsigned char protos[] = {2, 'h', '2', 8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
  SSL_CTX_set_alpn_protos(c.ctx, protos, sizeof protos);
}

}  // namespace

TEST_CASE("tls: a chain and its key make a context that completes handshakes", "[tls]") {
  Pki pki;
  pki.leaf("good", "nas.test");
  std::string err;
  auto ctx = tls::Context::fromFiles(pki.path("good-cert.pem"), pki.path("good-key.pem"), now(), &err);
  REQUIRE(ctx);
  CHECK(err.empty());
  CHECK(ctx->describe().find("CN=nas.test") != std::string::npos);

  Client c13;
  trustingClient(c13, pki);
  Result r = handshake(ctx->get(), c13);
  REQUIRE(r.ok);
  CHECK(r.version == TLS1_3_VERSION);
  CHECK(r.alpn == "http/1.1");  // offered h2 first, but we speak HTTP/1.1
  CHECK(r.peerCn == "nas.test");

  Client c12;  // the chain verifies with TLS 1.2 too
  trustingClient(c12, pki);
  SSL_CTX_set_max_proto_version(c12.ctx, TLS1_2_VERSION);
  r = handshake(ctx->get(), c12);
  REQUIRE(r.ok);
  CHECK(r.version == TLS1_2_VERSION);
}

TEST_CASE("tls: TLS 1.1 and older are refused by the server", "[tls]") {
  Pki pki;
  pki.leaf("good", "nas.test");
  std::string err;
  auto ctx = tls::Context::fromFiles(pki.path("good-cert.pem"), pki.path("good-key.pem"), now(), &err);
  REQUIRE(ctx);
  // A client able to speak TLS 1.0..1.2 (security level 0 lifts the system
  // policy's floor), so a refusal can only come from the server.
  auto oldClient = [](Client& c, int maxVersion) {
    SSL_CTX_set_security_level(c.ctx, 0);
    SSL_CTX_set_cipher_list(c.ctx, "DEFAULT:@SECLEVEL=0");
    SSL_CTX_set_min_proto_version(c.ctx, TLS1_VERSION);
    SSL_CTX_set_max_proto_version(c.ctx, maxVersion);
  };
  Client control;
  oldClient(control, TLS1_2_VERSION);
  Result r = handshake(ctx->get(), control);
  CHECK(r.ok);
  CHECK(r.version == TLS1_2_VERSION);

  for (int v : {TLS1_1_VERSION, TLS1_VERSION}) {
    Client c;
    oldClient(c, v);
    r = handshake(ctx->get(), c);
    CHECK_FALSE(r.ok);
    CHECK(r.serverError == "unsupported protocol");
  }
}

TEST_CASE("tls: a client offering only other ALPN protocols is refused", "[tls]") {
  Pki pki;
  pki.leaf("good", "nas.test");
  std::string err;
  auto ctx = tls::Context::fromFiles(pki.path("good-cert.pem"), pki.path("good-key.pem"), now(), &err);
  REQUIRE(ctx);
  Client c;
  static const unsigned char h2[] = {2, 'h', '2'};
  SSL_CTX_set_alpn_protos(c.ctx, h2, sizeof h2);
  Result r = handshake(ctx->get(), c);
  CHECK_FALSE(r.ok);
  CHECK(r.serverError == "no application protocol");
  Client none;  // no ALPN at all (curl --no-alpn, old clients): fine
  CHECK(handshake(ctx->get(), none).ok);
  Client http10;  // curl --http1.0 offers only http/1.0: served
  static const unsigned char h10[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '0'};
  SSL_CTX_set_alpn_protos(http10.ctx, h10, sizeof h10);
  r = handshake(ctx->get(), http10);
  CHECK(r.ok);
  CHECK(r.alpn == "http/1.0");
}

TEST_CASE("tls: bad files are refused with a message naming the file", "[tls]") {
  Pki pki;
  pki.leaf("good", "nas.test");
  pki.leaf("other", "other.test");
  pki.leaf("expired", "old.test", -400, -10);
  pki.write("garbage.pem", "this is not PEM\n");
  struct Case {
    std::string cert, key;
    std::string fragment;
  } cases[] = {
      {"good-cert.pem", "other-key.pem", "does not match the certificate"},
      {"missing.pem", "good-key.pem", "tls_cert '"},
      {"missing.pem", "good-key.pem", "No such file or directory"},
      {"good-cert.pem", "missing.pem", "tls_key '"},
      {"garbage.pem", "good-key.pem", "not a PEM certificate chain"},
      {"good-cert.pem", "garbage.pem", "not a PEM private key"},
      {"good-key.pem", "good-key.pem", "not a PEM certificate chain"},
      {"expired-cert.pem", "expired-key.pem", "the certificate expired on "},
  };
  for (const Case& c : cases) {
    CAPTURE(c.cert, c.key);
    std::string err;
    auto ctx = tls::Context::fromFiles(pki.path(c.cert), pki.path(c.key), now(), &err);
    CHECK_FALSE(ctx);
    CHECK(err.find(c.fragment) != std::string::npos);
  }
  std::string err;  // the expired pair was fine while it was valid
  CHECK(tls::Context::fromFiles(pki.path("expired-cert.pem"), pki.path("expired-key.pem"),
                                now() - 100 * 86400, &err));
}

TEST_CASE("tls: reload replaces the context only when the new files are good", "[tls]") {
  Pki pki;
  pki.leaf("a", "first.test");
  pki.leaf("b", "second.test");
  auto loaded = conf::loadString("[server]\nlisten = 127.0.0.1:0 tls\ntls_cert = " +
                                     pki.path("live-cert.pem") + "\ntls_key = " +
                                     pki.path("live-key.pem") + "\n",
                                 "t.ini");
  REQUIRE(loaded.config);
  conf::Config cfg = *loaded.config;
  auto install = [&pki](const std::string& from) {
    std::filesystem::copy_file(pki.path(from + "-cert.pem"), pki.path("live-cert.pem"),
                               std::filesystem::copy_options::overwrite_existing);
    std::filesystem::copy_file(pki.path(from + "-key.pem"), pki.path("live-key.pem"),
                               std::filesystem::copy_options::overwrite_existing);
  };
  auto servedCn = [&pki](tls::Tls& t) {
    Client c;
    trustingClient(c, pki);
    Result r = handshake(t.current(), c);
    return r.ok ? r.peerCn : "handshake failed: " + r.serverError;
  };

  tls::Tls t;
  std::string err;
  CHECK(t.current() == nullptr);
  CHECK_FALSE(t.load(cfg, now(), &err));  // no files yet
  CHECK(err.starts_with("t.ini:3: [server] tls_cert: tls_cert '"));
  CHECK(t.current() == nullptr);

  install("a");
  REQUIRE(t.load(cfg, now(), &err));
  CHECK(t.generation() == 1);
  CHECK(servedCn(t) == "first.test");
  SSL_CTX* first = t.current();

  // A renewal half done (new certificate, old key): refused, old one kept.
  std::filesystem::copy_file(pki.path("b-cert.pem"), pki.path("live-cert.pem"),
                             std::filesystem::copy_options::overwrite_existing);
  CHECK_FALSE(t.load(cfg, now(), &err));
  CHECK(err.starts_with("t.ini:4: [server] tls_key: tls_key '"));
  CHECK(err.find("does not match") != std::string::npos);
  CHECK(t.current() == first);
  CHECK(t.generation() == 1);
  CHECK(servedCn(t) == "first.test");

  // A connection accepted before the reload keeps its context alive.
  SSL* old = SSL_new(t.current());
  install("b");
  REQUIRE(t.load(cfg, now(), &err));
  CHECK(t.generation() == 2);
  CHECK(servedCn(t) == "second.test");
  CHECK(SSL_get_SSL_CTX(old) == first);
  CHECK(SSL_CTX_get0_certificate(first) != nullptr);  // still valid memory (ASan checks)
  SSL_free(old);

  auto bad = tls::checkFiles(cfg, now() + 3650L * 86400);  // ten years on: expired
  REQUIRE(bad);
  CHECK(bad->str().find("t.ini:3: [server] tls_cert:") == 0);
  CHECK_FALSE(tls::checkFiles(cfg, now()));
}

TEST_CASE("tls: config keys — the tls listen flag and its certificate", "[tls][conf]") {
  auto first = [](const std::string& ini) {
    auto r = conf::loadString(ini, "t.ini");
    return r.errors.empty() ? std::string("ok") : r.errors.front().str();
  };
  auto r = conf::loadString(
      "[server]\nlisten = 127.0.0.1:8690\nlisten = [::1]:8443 tls\ntls_cert = /c.pem\n"
      "tls_key = /k.pem\n",
      "t.ini");
  REQUIRE(r.config);
  CHECK_FALSE(r.config->server.listen[0].tls);
  CHECK(r.config->server.listen[1].tls);
  CHECK(r.config->server.listen[1].host == "::1");
  CHECK(r.config->server.listen[1].port == 8443);
  CHECK(r.config->server.tlsCertLine == 4);
  CHECK(r.config->server.tlsKeyLine == 5);
  CHECK(r.config->server.anyTls());

  CHECK(first("[server]\nlisten = :8443 tls\n") ==
        "t.ini:2: [server] listen: the tls flag needs tls_cert and tls_key in [server]");
  CHECK(first("[server]\nlisten = :8443 ssl\n").find(
            "t.ini:2: [server] listen: unknown listen flag 'ssl'") == 0);
  CHECK(first("[server]\nlisten = :8443 tls\ntls_cert = /c.pem\n") ==
        "t.ini:3: [server] tls_key: tls_cert needs tls_key (the certificate's private key)");
  CHECK(first("[server]\nlisten = :8443 tls\ntls_key = /k.pem\n") ==
        "t.ini:3: [server] tls_cert: tls_key needs tls_cert (the certificate it belongs to)");
  CHECK(first("[server]\nlisten = :8443\ntls_cert = /c.pem\ntls_key = /k.pem\n").find(
            "t.ini:3: [server] tls_cert: no listen address has the tls flag") == 0);
  CHECK(first("[server]\nlisten = :8443 tls\nlisten = 0.0.0.0:8443\ntls_cert = /c\ntls_key = /k\n")
            .find("given twice") != std::string::npos);
}

namespace {

struct Loop {
  event_base* base = event_base_new();
  ~Loop() { event_base_free(base); }
};

struct Server {
  std::string got;
  bool error = false;
  std::string why;
};

}  // namespace

TEST_CASE("tls: wrapAccepted serves TLS on an accepted socket; plain HTTP fails cleanly", "[tls]") {
  Pki pki;
  pki.leaf("good", "nas.test");
  std::string err;
  auto ctx = tls::Context::fromFiles(pki.path("good-cert.pem"), pki.path("good-key.pem"), now(), &err);
  REQUIRE(ctx);
  Loop loop;

  auto serve = [&](int fd, Server& sv) {
    bufferevent* bev = tls::wrapAccepted(loop.base, fd, ctx->get());
    REQUIRE(bev);
    bufferevent_setcb(
        bev,
        [](bufferevent* b, void* arg) {  // echo "hello" as "HELLO"
          auto* s = static_cast<Server*>(arg);
          char buf[64];
          size_t n = bufferevent_read(b, buf, sizeof buf);
          s->got.append(buf, n);
          for (size_t i = 0; i < n; i++) buf[i] = static_cast<char>(toupper(buf[i]));
          bufferevent_write(b, buf, n);
        },
        nullptr,
        [](bufferevent* b, short what, void* arg) {
          auto* s = static_cast<Server*>(arg);
          if (what & BEV_EVENT_ERROR) {
            s->error = true;
            s->why = tls::handshakeError(b);
          }
        },
        &sv);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
    return bev;
  };

  SECTION("a TLS client") {
    int sp[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, sp) == 0);
    evutil_make_socket_nonblocking(sp[1]);
    Server sv;
    bufferevent* bev = serve(sp[0], sv);
    Client c;
    trustingClient(c, pki);
    SSL* cl = SSL_new(c.ctx);
    SSL_set_fd(cl, sp[1]);
    SSL_set_connect_state(cl);
    int rc = 0;
    for (int i = 0; i < 200 && rc != 1; i++) {
      rc = SSL_do_handshake(cl);
      event_base_loop(loop.base, EVLOOP_NONBLOCK);
    }
    REQUIRE(rc == 1);
    REQUIRE(SSL_write(cl, "hello", 5) == 5);
    char buf[16] = {};
    int n = -1;
    for (int i = 0; i < 200 && n <= 0; i++) {
      event_base_loop(loop.base, EVLOOP_NONBLOCK);
      n = SSL_read(cl, buf, sizeof buf);
    }
    CHECK(n == 5);
    CHECK(std::string(buf, n > 0 ? n : 0) == "HELLO");
    CHECK(sv.got == "hello");
    CHECK_FALSE(sv.error);
    SSL_free(cl);
    close(sp[1]);
    bufferevent_free(bev);
  }

  SECTION("a plain HTTP request on the TLS port") {
    int sp[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, sp) == 0);
    Server sv;
    bufferevent* bev = serve(sp[0], sv);
    const char req[] = "GET / HTTP/1.1\r\nHost: nas.test\r\n\r\n";
    REQUIRE(write(sp[1], req, sizeof req - 1) == static_cast<ssize_t>(sizeof req - 1));
    for (int i = 0; i < 200 && !sv.error; i++) event_base_loop(loop.base, EVLOOP_NONBLOCK);
    CHECK(sv.error);
    CHECK(sv.why == "http_request");
    CHECK(sv.got.empty());  // nothing of the request reached the application
    close(sp[1]);
    bufferevent_free(bev);
  }
}
