// The trust stores of upstream TLS (issue 9 #19, #20), loaded once.
//
// curl (7.88, OpenSSL) makes an SSL_CTX per new connection and, with
// Debian's default CApath, reads and parses the whole system bundle for each
// one, on the loop thread (35-40 ms each: 16 parallel connects stalled the
// loop for half a second). Here every trust set — the system bundle, or the
// system bundle plus a `ca_file` — is an X509_STORE read once (at start and
// on reload) and handed to each new connection in curl's SSL_CTX callback;
// curl is told to load no CA file itself. TLS sessions are shared between
// transfers through one share handle, so a new connection to a host we
// spoke to resumes instead of verifying the chain again.
//
// curl matches idle connections and TLS sessions on, among other things,
// CAfile and CApath; the store itself it never compares. So that a
// connection or session verified under one trust set is never reused by a
// transfer that trusts less, each set gives curl a CApath of its own: the
// system certificate directory, spelled with n trailing "/." (the same
// directory, which every trust set includes anyway; OpenSSL only looks
// there for an issuer the store lacks).
#pragma once

#include <curl/curl.h>

#include <memory>
#include <string>
#include <vector>

typedef struct x509_store_st X509_STORE;

namespace slip::proxy {

class TrustStores {
 public:
  TrustStores();
  ~TrustStores();
  TrustStores(const TrustStores&) = delete;
  TrustStores& operator=(const TrustStores&) = delete;

  /// The id of the trust set "system bundle + `caFile`" ("" = the system's
  /// alone, id 0), reading it the first time it is named. -1 with a message
  /// naming the file when it cannot be read or holds no certificate.
  int add(const std::string& caFile, std::string* err);
  /// Reads every file again (SIGHUP). A set whose file fails keeps what it
  /// had; false with the messages joined in `err`.
  bool reload(std::string* err);
  /// Sets `easy`'s TLS options for trust set `id` (0 when unknown): peer
  /// and host verification on, the set's store, the shared sessions.
  void apply(CURL* easy, int id);
  /// Times a CA file was read (system bundle included): for tests and logs.
  int loads() const { return loads_; }

 private:
  struct Set {
    std::string caFile;   // "" = the system bundle alone
    std::string label;    // the CApath curl compares
    X509_STORE* store = nullptr;
  };
  bool load(Set& s, std::string* err);
  static CURLcode onSslCtx(CURL* easy, void* sslCtx, void* set);

  std::vector<std::unique_ptr<Set>> sets_;  // stable addresses: handles point at their set
  CURLSH* share_ = nullptr;
  std::string systemFile_, systemDir_;
  int loads_ = 0;
};

}  // namespace slip::proxy
