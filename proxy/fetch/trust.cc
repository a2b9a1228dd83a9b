#include "proxy/fetch/trust.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>

#include "conf/conf.h"
#include "proxy/proxy.h"

namespace slip::proxy {

namespace {

std::string opensslError() {
  unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e == 0) return "no certificate in it";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof buf);
  return buf;
}

int certCount(X509_STORE* s) {
  int n = 0;
  STACK_OF(X509_OBJECT)* objs = X509_STORE_get0_objects(s);
  for (int i = 0; i < sk_X509_OBJECT_num(objs); i++)
    if (X509_OBJECT_get_type(sk_X509_OBJECT_value(objs, i)) == X509_LU_X509) n++;
  return n;
}

}  // namespace

TrustStores::TrustStores() : share_(curl_share_init()) {
  // Single-threaded use: no lock callbacks. Sessions are keyed by the
  // connection's TLS configuration (our per-set CApath included).
  curl_share_setopt(share_, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
  curl_version_info_data* v = curl_version_info(CURLVERSION_NOW);
  systemFile_ = v->cainfo ? v->cainfo : X509_get_default_cert_file();
  systemDir_ = v->capath ? v->capath : X509_get_default_cert_dir();
}

TrustStores::~TrustStores() {
  // Easy handles using the share are gone by now (their owners removed them).
  curl_share_cleanup(share_);
  for (auto& s : sets_) X509_STORE_free(s->store);
}

bool TrustStores::load(Set& s, std::string* err) {
  X509_STORE* fresh = X509_STORE_new();
  ERR_clear_error();
  // The system bundle: copied from set 0 when it is loaded (no second parse).
  if (!sets_.empty() && sets_[0]->store && &s != sets_[0].get()) {
    STACK_OF(X509_OBJECT)* objs = X509_STORE_get0_objects(sets_[0]->store);
    for (int i = 0; i < sk_X509_OBJECT_num(objs); i++) {
      X509* c = X509_OBJECT_get0_X509(sk_X509_OBJECT_value(objs, i));
      if (c) X509_STORE_add_cert(fresh, c);
    }
  } else {
    loads_++;
    if (X509_STORE_load_file(fresh, systemFile_.c_str()) != 1) {
      // A system without a bundle still works with a ca_file; say so once.
      conf::Log::write(conf::LogLevel::Warn, "tls_system_bundle_unreadable",
                       "file=" + conf::logValue(systemFile_) + " error=" + conf::logValue(opensslError()));
    }
  }
  if (!s.caFile.empty()) {
    loads_++;
    int before = certCount(fresh);
    if (X509_STORE_load_file(fresh, s.caFile.c_str()) != 1 || certCount(fresh) == before) {
      *err = s.caFile + ": cannot be read as PEM certificates (" + opensslError() + ")";
      X509_STORE_free(fresh);
      return false;
    }
  }
  ERR_clear_error();
  // Connections made with the old store keep their reference (SSL_CTX_set1).
  X509_STORE_free(s.store);
  s.store = fresh;
  return true;
}

int TrustStores::add(const std::string& caFile, std::string* err) {
  if (sets_.empty()) {
    sets_.push_back(std::make_unique<Set>(Set{"", systemDir_, nullptr}));
    std::string ignored;
    load(*sets_[0], &ignored);
  }
  for (size_t i = 0; i < sets_.size(); i++)
    if (sets_[i]->caFile == caFile) return static_cast<int>(i);
  auto s = std::make_unique<Set>(Set{caFile, systemDir_, nullptr});
  for (size_t i = 0; i < sets_.size(); i++) s->label += "/.";
  if (!load(*s, err)) return -1;
  sets_.push_back(std::move(s));
  return static_cast<int>(sets_.size() - 1);
}

bool TrustStores::reload(std::string* err) {
  bool ok = true;
  for (auto& s : sets_) {
    std::string e;
    if (!load(*s, &e)) {
      ok = false;
      if (!err->empty()) *err += "; ";
      *err += e;
    }
  }
  return ok;
}

// Called by curl for each new connection, before it would load CA files
// itself (it loads none: CAINFO is unset, CApath names no file of its own).
CURLcode TrustStores::onSslCtx(CURL*, void* sslCtx, void* set) {
  SSL_CTX_set1_cert_store(static_cast<SSL_CTX*>(sslCtx), static_cast<Set*>(set)->store);
  return CURLE_OK;
}

void TrustStores::apply(CURL* easy, int id) {
  if (sets_.empty()) {
    std::string ignored;
    add("", &ignored);
  }
  if (id < 0 || static_cast<size_t>(id) >= sets_.size()) id = 0;
  Set& s = *sets_[id];
  curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, 1L);
  curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, 2L);
  curl_easy_setopt(easy, CURLOPT_CAINFO, nullptr);  // the store is ours: curl reads no file
  curl_easy_setopt(easy, CURLOPT_CAPATH, s.label.c_str());
  curl_easy_setopt(easy, CURLOPT_SSL_CTX_FUNCTION, &TrustStores::onSslCtx);
  curl_easy_setopt(easy, CURLOPT_SSL_CTX_DATA, &s);
  curl_easy_setopt(easy, CURLOPT_SHARE, share_);
}

std::vector<std::string> caFileProblems(const conf::Config& cfg) {
  std::vector<std::string> out;
  TrustStores probe;
  auto check = [&](const std::string& file, int line, const std::string& section) {
    std::string why;
    if (!file.empty() && probe.add(file, &why) < 0)
      out.push_back(cfg.file + ":" + std::to_string(line) + ": [" + section + "] ca_file: " + why);
  };
  check(cfg.server.caFile, cfg.server.caFileLine, "server");
  for (const auto& a : cfg.accounts) check(a.caFile, a.caFileLine, "account " + a.name);
  for (const auto& m : cfg.mounts) check(m.caFile, m.caFileLine, "mount " + m.name);
  return out;
}

}  // namespace slip::proxy
