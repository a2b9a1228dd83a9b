// One request and its response: what route handlers read (method, path,
// query, headers, body, client) and answer through, and the proxy::Sink a
// Job streams the response into. See src/DESIGN.md for its lifetime.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "policy/policy.h"
#include "proxy/proxy.h"
#include "src/access_log.h"
#include "src/http_conn.h"

namespace slip {

struct Generation;

class Clock;
class Exchange;

/// Where a request is. The trail of states is logged (debug) when it ends.
enum class ExState {
  Parsing,      // its bytes are arriving (the connection's parser)
  Deciding,     // routing, limits, signs, policy
  ProbingSize,  // a rule needs the file's size first
  Resolving,    // the source turns the path into a link
  Opening,      // the object or the upstream transfer is being opened
  Streaming,    // the response head is out, the body flows
  Done,         // answered completely
  Failed,       // answered with an error, or cut off after the head
  ClientGone,   // the client vanished first
};
const char* exStateName(ExState s);

/// A client's recent speed from (time, bytes) samples the loop takes at a
/// fixed period: bytes over the span of the last kSamples samples.
class SpeedMeter {
 public:
  static constexpr size_t kSamples = 7;  // 6 intervals: 3 s at the server's 500 ms
  void sample(int64_t monoNs, uint64_t bytes);
  /// Bytes per second over the window; 0 until two samples exist.
  double bytesPerSecond() const;

 private:
  std::array<std::pair<int64_t, uint64_t>, kSamples> ring_{};
  size_t next_ = 0, count_ = 0;
};

/// The server side of an Exchange.
class ExchangeHost {
 public:
  virtual ~ExchangeHost() = default;
  /// The exchange ended (answered, failed or abandoned): log and count it,
  /// free it later from the loop — never inside this call.
  virtual void retire(Exchange& ex) = 0;
};

class Exchange final : public proxy::Sink, public http::ResponseHandler {
 public:
  Exchange(ExchangeHost& host, http::Conn& conn, http::Request&& req, uint64_t id,
           const Clock& clock);
  ~Exchange() override;
  Exchange(const Exchange&) = delete;
  Exchange& operator=(const Exchange&) = delete;

  // ---- the request, for handlers
  uint64_t id() const { return id_; }
  const http::Request& request() const { return req_; }
  const std::string& method() const { return req_.method; }
  bool isHead() const { return req_.isHead(); }
  const std::string& client() const { return client_; }
  /// It came over TLS (an https:// origin).
  bool overTls() const { return tls_; }
  /// The request-target's path as sent (not decoded) and its query.
  std::string_view rawPath() const { return rawPath_; }
  std::string_view query() const { return query_; }
  /// The decoded, normalised path (set by the server before the handler runs).
  const std::string& path() const { return path_; }
  void setPath(std::string p) { path_ = std::move(p); }

  // ---- answering
  /// A whole response at once (Content-Length is added).
  void respond(int status, proxy::Headers headers, std::string_view body);
  /// An error response with the reason's status and text. `allow` fills
  /// the Allow header of a 405.
  void sendError(policy::Reason r, const std::string& detail = "", const std::string& allow = "");
  /// sendError with headers of its own (a 401's WWW-Authenticate).
  void sendErrorWith(policy::Reason r, const std::string& detail, const proxy::Headers& extra);
  /// An error answer with the reason's status and a body of the handler's
  /// (a WebDAV error document), counted and logged as a failure.
  void respondError(policy::Reason r, proxy::Headers headers, std::string_view body);
  /// The response about to be sent with respond() is an error of reason
  /// `r` (a JSON API error): counted and logged like sendError's.
  void noteFailure(policy::Reason r);
  void setState(ExState s);
  ExState state() const { return state_; }
  /// Still answering (not done, failed or gone).
  bool running() const;
  void setDelivery(const char* d) { entry_.delivery = d; }
  /// The authenticated user, for the access log.
  void setUser(std::string user) { entry_.user = std::move(user); }

  // ---- what the status page shows about a download (set by the delivery route)
  /// The mount (index into gen->cfg->mounts), the virtual path (/movies/a.mkv)
  /// and the path inside the mount (/a.mkv).
  void setTarget(int mount, std::string virt, std::string rest);
  int mount() const { return mount_; }
  const std::string& virtualPath() const { return virtualPath_; }
  const std::string& mountPath() const { return rest_; }
  /// The response body's [begin, end) in the object (from Content-Range or
  /// Content-Length); end 0 before the head.
  uint64_t rangeBegin() const { return rangeBegin_; }
  uint64_t rangeEnd() const { return rangeEnd_; }
  /// The whole object's size (Content-Range's, or a 200's Content-Length); 0 = unknown.
  uint64_t objectSize() const { return objectSize_; }
  /// Body bytes written towards the client (queued ones not counted).
  uint64_t bytesWritten() const;
  int64_t startedWallMs() const { return startWallMs_; }
  SpeedMeter& speed() { return speed_; }
  const SpeedMeter& speed() const { return speed_; }

  /// The configuration this request is answered with (the one current when
  /// it arrived): a reload while it runs changes nothing for it.
  std::shared_ptr<const Generation> gen;

  /// The next episode (src/episodes.h): the share of this episode that,
  /// once read, warms the next one (0 = not an episode or off), and
  /// whether that was looked at already.
  int nextEpisodeShare = 0;
  bool episodeChecked = false;

  /// The job producing the response. Jobs replaced (a size probe followed by
  /// the delivery) live on until the exchange is freed: never freed inside
  /// one of their own callbacks.
  std::unique_ptr<proxy::Job> job;
  std::vector<std::unique_ptr<proxy::Job>> retired;

  /// The server is going away under a running request: treat the client as
  /// gone (the job is told and must stop using the Sink).
  void abandon();

  // ---- what the log and the counters see when it ended
  const AccessEntry& entry() const { return entry_; }
  /// The failure reason, None when answered, and its detail for people.
  policy::Reason failure() const { return failure_; }
  const std::string& failureDetail() const { return failureDetail_; }
  /// "parsing>deciding>opening>streaming>done".
  std::string trail() const;

  // ---- proxy::Sink
  void sendHeaders(int status, const proxy::Headers& headers) override;
  void sendBody(evbuffer* data) override;
  size_t queued() const override;
  void finish() override;
  void fail(policy::Reason reason, const std::string& detail, const proxy::Headers& extra = {}) override;
  bool headersSent() const override { return headersSent_; }
  void noteUpstreamBytes(uint64_t n) override { entry_.upstreamBytes += n; }
  void noteProgress(Progress p) override;

  // ---- http::ResponseHandler
  void onWritable() override;
  void onPeerGone() override;

 private:
  void done(ExState s);
  double sinceStartMs() const;

  ExchangeHost& host_;
  http::Conn* conn_;  // null once the exchange ended or the client is gone
  http::Request req_;
  uint64_t id_;
  const Clock& clock_;
  int64_t startNs_;
  std::string client_;
  bool tls_ = false;
  std::string_view rawPath_, query_;  // into req_.target
  std::string path_;
  int mount_ = -1;
  std::string virtualPath_, rest_;
  uint64_t rangeBegin_ = 0, rangeEnd_ = 0, objectSize_ = 0;
  int64_t startWallMs_ = 0;
  SpeedMeter speed_;
  ExState state_ = ExState::Parsing;
  std::vector<ExState> trail_;
  bool headersSent_ = false;
  policy::Reason failure_ = policy::Reason::None;
  std::string failureDetail_;
  AccessEntry entry_;
};

}  // namespace slip
