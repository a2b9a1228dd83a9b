// policy — pure decisions: values in, decision out.
//
// Nothing here does I/O or reads a clock: `now` is passed in. Range math,
// request-path normalisation, mount lookup, the delivery decision (rules),
// AList-compatible signing and the few HTTP header formats the gateway builds
// all live here so that table-driven tests can cover them exhaustively.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "conf/conf.h"

namespace slip::policy {

// ---------------------------------------------------------------- reasons
// Every way a request can fail, declared once: stable code (used in logs and
// counters), HTTP status sent to the client, and the human text of the body.

#define SLIP_REASONS(X)                                                                  \
  X(None, 200, "ok")                                                                      \
  X(BadPath, 400, "malformed request path")                                               \
  X(PathTraversal, 400, "path traversal ('..' segment) is not allowed")                   \
  X(PathNul, 400, "NUL byte in path")                                                     \
  X(PathBackslash, 400, "backslash in path")                                              \
  X(PathTooLong, 400, "path too long")                                                    \
  X(BadPercentEncoding, 400, "bad percent-encoding in path")                              \
  X(AbsoluteTarget, 400, "absolute-form request target refused: this is not a proxy")     \
  X(BadRequest, 400, "bad request")                                                       \
  X(BadTarget, 400, "malformed request target (invalid UTF-8, spaces and controls must be percent-encoded)") \
  X(BadHeader, 400, "malformed header field")                                             \
  X(BadHost, 400, "an HTTP/1.1 request needs exactly one Host header")                   \
  X(BadFraming, 400, "conflicting or invalid message framing (Content-Length, Transfer-Encoding)") \
  X(RequestBody, 400, "GET and HEAD requests must not carry a body")                       \
  X(BadJson, 400, "request body is not the JSON this API route expects")                  \
  X(BadPropfind, 400, "PROPFIND body is not a DAV:propfind document")                    \
  X(BadDepth, 400, "Depth header must be 0, 1 or infinity")                               \
  X(HttpOnTlsPort, 400, "this port speaks HTTPS: use https:// for this address")           \
  X(SignMissing, 401, "missing ?sign= parameter")                                         \
  X(AdminAuth, 401, "admin route: send Authorization: Bearer <admin_token>, or the token as a Basic password") \
  X(AuthRequired, 401, "WebDAV needs a user name and password")                           \
  X(DavNoUsers, 403, "WebDAV is open to dav_allow clients only (no [user] configured)")   \
  X(ReadOnly, 403, "the WebDAV share is read-only")                                       \
  X(InfiniteDepth, 403, "PROPFIND with Depth: infinity is not supported (use 0 or 1)")     \
  X(SignInvalid, 403, "invalid signature")                                                \
  X(SignExpired, 403, "signature expired")                                                \
  X(Denied, 403, "denied by rule")                                                        \
  X(LocalEscape, 403, "path resolves outside the mount's directory")                      \
  X(CrossSiteRequest, 403, "cross-site request refused")                                  \
  X(UnknownRoute, 404, "no such route")                                                   \
  X(UnknownMount, 404, "no mount serves this path")                                       \
  X(NotFound, 404, "not found")                                                           \
  X(NotAFile, 404, "not a regular file")                                                  \
  X(NotAFolder, 404, "not a folder")                                                      \
  X(MethodNotAllowed, 405, "method not allowed (GET and HEAD only)")                      \
  X(ApiMethodNotAllowed, 405, "method not allowed on this API route")                     \
  X(DavMethodNotAllowed, 405, "method not offered by the read-only WebDAV share")          \
  X(CacheDisabled, 409, "no mount keeps a cache")                                         \
  X(NotCacheable, 409, "this path is not kept in the cache (local mount, cache = off, or a rule)") \
  X(PayloadTooLarge, 413, "request body too large")                                       \
  X(RequestTimeout, 408, "the request was not received in time (header_timeout)")         \
  X(BodyTooLarge, 413, "request body too large (max_request_body)")                       \
  X(RequestLineTooLong, 414, "request line too long")                                     \
  X(RangeNotSatisfiable, 416, "requested range not satisfiable")                          \
  X(HeadersTooLarge, 431, "request header fields too large")                              \
  X(ClientGone, 499, "the client went away before the response was complete")            \
  X(Internal, 500, "internal error")                                                      \
  X(RedirectImpossible, 500, "this source has no upstream link to redirect to")           \
  X(CannotList, 501, "this source cannot list folders")                                   \
  X(UpstreamConnect, 502, "upstream connection failed")                                   \
  X(UpstreamStatus, 502, "upstream answered with an error status")                        \
  X(UpstreamBadResponse, 502, "upstream response is inconsistent")                        \
  X(UpstreamChanged, 502, "upstream object changed during the transfer")                  \
  X(UpstreamDenied, 502, "upstream refused the link (401/403/410), also after re-resolving") \
  X(UpstreamReset, 502, "upstream connection dropped and retries ran out")                \
  X(UpstreamTls, 502, "upstream TLS failed (certificate not trusted or handshake refused)") \
  X(UpstreamForbidden, 502, "upstream link or redirect leads where the gateway does not go (address, scheme, loop)") \
  X(SourceBadLink, 502, "the source returned a link that cannot be fetched")             \
  X(ResolveFailed, 502, "source could not resolve the path to a link")                    \
  X(LinkExpired, 502, "the source keeps handing out links whose written expiry is past")   \
  X(SourceBadReply, 502, "the source's reply does not follow its API")                    \
  X(SourceBadHeader, 502, "the source asked for a header that cannot be sent upstream")    \
  X(AccountAuth, 502, "the cloud account's credentials were refused")                    \
  X(RateLimited, 502, "the cloud service kept answering 429 Too Many Requests")           \
  X(CacheFailed, 500, "cache store failed")                                               \
  X(Overloaded, 503, "too many connections")                                              \
  X(ShuttingDown, 503, "shutting down")                                                   \
  X(NotReady, 503, "not available in this build yet")                                     \
  X(UpstreamBusy, 503, "upstream busy (429/503): it asks to wait longer than the gateway waits, or kept refusing") \
  X(Purged, 503, "the cached file was purged while it was being read")                     \
  X(TooManyPrefetches, 503, "too many prefetch jobs are running; try again when one ends")  \
  X(UpstreamTimeout, 504, "upstream timed out")                                           \
  X(UnknownMethod, 501, "request method not recognised")                                  \
  X(UnsupportedCoding, 501, "transfer coding not implemented (only chunked is)")          \
  X(BadVersion, 505, "HTTP version not supported (1.0 and 1.1 are)")                      \
  X(SelfRequest, 508, "request made by this gateway itself: a link points back at it")

enum class Reason {
#define SLIP_REASON_ENUM(name, status, text) name,
  SLIP_REASONS(SLIP_REASON_ENUM)
#undef SLIP_REASON_ENUM
};

/// Stable snake_case code, e.g. "path_traversal".
const char* reasonCode(Reason r);
/// HTTP status the client gets for this reason.
int reasonStatus(Reason r);
/// Human text for the response body and the log.
const char* reasonText(Reason r);

/// Standard reason phrase for an HTTP status ("Not Found").
const char* statusText(int status);

// ---------------------------------------------------------------- ranges
// Two types, never mixed: the wire form as the client wrote it (closed,
// suffix allowed) and the normalised half-open form clamped to a length.

struct WireRange {
  enum class Kind {
    None,      // no Range header, or one we must ignore (RFC 9110 §14.2)
    Single,    // bytes=first-last | bytes=first-
    Suffix,    // bytes=-n
    Multiple,  // several ranges: answered with the whole representation
  };
  Kind kind = Kind::None;
  uint64_t first = 0;
  std::optional<uint64_t> last;  // Single: absent = open ("first-")
  uint64_t suffix = 0;           // Suffix: length n
  bool invalid = false;          // header present but unparseable (→ Kind::None)
};

/// Parses a Range header value. Garbage, unknown units and overflow give
/// Kind::None with invalid=true (the header is ignored, as RFC 9110 allows).
WireRange parseRange(std::string_view header);

/// Half-open [begin, end).
struct ByteRange {
  uint64_t begin = 0;
  uint64_t end = 0;
  uint64_t size() const { return end - begin; }
  bool operator==(const ByteRange&) const = default;
};

struct RangeAnswer {
  enum class Kind { Full, Partial, Unsatisfiable };
  Kind kind = Kind::Full;
  ByteRange range;  // Full: [0, length)
};

/// Normalises a wire range against the representation length.
/// `bytes=0-` on a non-empty body is Partial (players rely on the 206).
RangeAnswer resolveRange(const WireRange& w, uint64_t length);

/// "bytes 0-499/1234" for a Partial answer.
std::string contentRange(const ByteRange& r, uint64_t length);
/// "bytes */1234" for a 416.
std::string contentRangeUnsatisfied(uint64_t length);

/// The upstream request's Range value "first-last" (closed) for a half-open
/// range, as libcurl's CURLOPT_RANGE wants it.
std::string upstreamRange(const ByteRange& r);

/// The same for a client's wire range forwarded as it is ("first-last",
/// "first-", "-n"); "" for None and Multiple (nothing to forward).
std::string upstreamRange(const WireRange& w);

/// The wire form back as a header value ("bytes=0-", "bytes=-500"), for
/// forwarding a single range upstream when the length is not known yet.
std::string wireRangeHeader(const WireRange& w);

/// Parses an upstream "Content-Range: bytes a-b/len" (len may be "*").
struct ContentRange {
  std::optional<ByteRange> range;   // absent for "bytes */len"
  std::optional<uint64_t> length;   // absent for "/*"
};
std::optional<ContentRange> parseContentRange(std::string_view v);

/// RFC 9110 §13.1.5 If-Range: true when the Range may be honoured for a
/// representation with these validators (strong ETag match, or an HTTP-date
/// exactly equal to Last-Modified).
bool ifRangeAllows(std::string_view ifRange, std::string_view etag,
                   std::string_view lastModified);

// ---------------------------------------------------------------- paths

/// Limits on a request path after decoding.
inline constexpr size_t kMaxPathBytes = 4096;

struct PathResult {
  Reason reason = Reason::None;  // None = ok
  std::string path;              // decoded, starts with '/', no "." / ".." / empty segments
};

/// Normalises the path part of a request target (no query): percent-decodes
/// exactly once, then rejects NUL, backslash, ".." segments (raw or encoded,
/// including "%2e%2e"), invalid escapes and overlong paths; collapses "//"
/// and drops "." segments. A trailing slash is kept.
PathResult normalizePath(std::string_view rawPath);

/// Splits a request target into path and query at the first '?'.
/// Also strips a '#fragment' if a client sent one.
void splitTarget(std::string_view target, std::string_view* path, std::string_view* query);

/// Value of `name` in a query string ("a=1&sign=x"), percent-decoded.
std::optional<std::string> queryParam(std::string_view query, std::string_view name);

/// Percent-encodes a decoded path for use in a URL: keeps unreserved
/// characters and '/', encodes everything else (spaces, '#', '?', '%', UTF-8
/// bytes) as %XX with upper-case hex.
std::string encodePath(std::string_view decodedPath);

/// Percent-encodes a query parameter value (encodes '/', ':', '=', '+', ...).
std::string encodeQueryValue(std::string_view v);

/// "scheme://host[:port]" of an absolute URL, lower case, without user info,
/// path, query or fragment (the key of an upstream host); "" when `url` has
/// no "scheme://" or no host.
std::string urlOrigin(std::string_view url);

/// RFC 6266 Content-Disposition for a file name: `inline; filename="ascii";
/// filename*=UTF-8''percent-encoded`. `attachment` when asked.
std::string contentDisposition(std::string_view fileName, bool attachment = false);

/// Last segment of a path ("/a/b/c.mkv" → "c.mkv").
std::string_view baseName(std::string_view path);

/// Lower-case extension without the dot ("Movie.MKV" → "mkv"); "" if none.
std::string extensionOf(std::string_view path);
/// The media type of a file by its extension ("video/x-matroska" for .mkv),
/// application/octet-stream when unknown.
std::string mimeType(std::string_view path);

// ---------------------------------------------------------------- listings

/// Longest name a listing passes on (bytes).
inline constexpr size_t kMaxNameBytes = 1024;

/// Whether a name from a folder listing can be served and shown: one
/// non-empty path segment other than "." and "..", valid UTF-8 without
/// surrogates or U+FFFE/U+FFFF, no '/', '\\', NUL or other control
/// characters (normalizePath would refuse the path, XML could not carry it),
/// at most kMaxNameBytes.
bool listableName(std::string_view name);

/// RFC 3339 date-time as APIs send it ("2024-05-01T10:00:00Z",
/// "2024-05-01T18:00:00.123456789+08:00") → Unix milliseconds. nullopt when
/// it is not that form.
std::optional<int64_t> parseRfc3339Ms(std::string_view s);

// ---------------------------------------------------------------- mounts

struct MountMatch {
  int index = -1;        // into Config::mounts; -1 = no mount
  std::string rest;      // path below the mount prefix, starts with '/'
};

/// Longest-prefix match of a normalised virtual path against the mounts'
/// prefixes, on whole segments ("/movies" matches "/movies/x", not "/moviesx").
MountMatch matchMount(const std::vector<conf::Mount>& mounts, std::string_view path);

/// The folders that mount prefixes make directly below `folder` (a
/// normalised virtual path, "/" for the root, no trailing '/'): with the
/// prefixes "/movies" and "/media/films", "/" holds "media" and "movies" and
/// "/media" holds "films". Sorted, unique; a prefix equal to `folder` is not
/// below it. What the WebDAV front lists above and beside the mounts.
std::vector<std::string> mountFolders(const std::vector<conf::Mount>& mounts,
                                      std::string_view folder);

// ---------------------------------------------------------------- addresses

/// Parses a numeric IPv4/IPv6 address into the 16-byte IPv4-mapped form.
std::optional<std::array<uint8_t, 16>> parseAddress(std::string_view ip);
bool cidrContains(const conf::Cidr& net, const std::array<uint8_t, 16>& addr);
bool anyCidrContains(const std::vector<conf::Cidr>& nets, std::string_view ip);

/// Glob match: `*` any run within a segment, `**` any run across segments,
/// `?` one character (not '/'), everything else literal. Case-sensitive.
bool globMatch(std::string_view glob, std::string_view path);

// ---------------------------------------------------------------- decision

// /d/, /p/, edge /<path>?sign=, /dav/ (always proxies, like /p/)
enum class Route { Download, Proxy, Edge, Dav };

/// What the source layer says about a mount, needed to decide `auto`.
struct SourceTraits {
  bool needsHeaders = false;   // upstream demands headers the client cannot send
  bool clientBound = false;    // links bound to the client's UA/IP
  bool hasLink = true;         // false for `local`: there is nothing to redirect to
};

struct RequestFacts {
  Route route = Route::Download;
  std::string method;           // "GET" / "HEAD"
  std::string path;             // normalised virtual path
  int mountIndex = -1;
  std::string client;           // numeric address
  std::string userAgent;
  std::optional<uint64_t> size; // when known (cache index or a probe)
  bool sizeUnknowable = false;  // a probe could not tell: size conditions do not match
};

struct Decision {
  conf::Delivery delivery = conf::Delivery::Proxy;  // never Auto
  std::string rule;             // name of the matching rule; "" = mount default
  std::string proxyUrl;         // for ProxyUrl
  int64_t connections = 0;      // effective per-object connections
  bool cache = true;
  bool needsSize = false;       // a rule's size condition could not be tested: probe, then decide again
  int64_t mediaPrefetch = 0;    // bytes of a media file's index region fetched with its head; 0 = off
  int nextEpisode = 0;          // % of an episode read that warms the next one; 0 = off
};

/// Compiled rules: regexes compiled once at load.
class RuleSet {
 public:
  /// Compiles every rule's regex. Returns the errors ("file:line: [rule X]
  /// user_agent: ...") — empty when all compiled.
  static std::vector<conf::Error> compile(const conf::Config& cfg, RuleSet* out);
  RuleSet();
  ~RuleSet();
  RuleSet(RuleSet&&) noexcept;
  RuleSet& operator=(RuleSet&&) noexcept;

  /// The decision for one request. Pure: depends only on the arguments.
  Decision decide(const conf::Config& cfg, const RequestFacts& facts,
                  const std::vector<SourceTraits>& traits) const;

  /// Same, plus one line per rule saying why it did or did not match
  /// (for `slipstream explain`).
  Decision explain(const conf::Config& cfg, const RequestFacts& facts,
                   const std::vector<SourceTraits>& traits,
                   std::vector<std::string>* lines) const;

 private:
  struct Compiled;
  std::vector<std::unique_ptr<Compiled>> rules_;
};

// ---------------------------------------------------------------- upstream answers
// Every upstream answer (the probe, a block piece, a whole-body stream, a
// `cache = off` stream, a size probe) is read by one function: what we asked
// and what the headers say in, one verdict out. What each path then does
// with a verdict (retry, re-resolve, fail) is the caller's table; see
// proxy/DESIGN.md, "Upstream answers".

/// What we asked the upstream for.
struct UpstreamAsk {
  enum class Kind {
    Probe,   // bytes=0-0: learn size and validators
    Piece,   // bytes=`range` of a version whose size and ETag we know
    Whole,   // no Range: all of a version whose size and ETag we know
    Stream,  // the client's own range (`wire`), forwarded as it is
  };
  Kind kind = Kind::Probe;
  ByteRange range;    // Piece
  WireRange wire;     // Stream (None/Multiple: no Range was sent)
  uint64_t size = 0;  // Piece, Whole
  std::string etag;   // Piece, Whole ("" = unknown: not compared)
};

/// The upstream's final response headers.
struct UpstreamAnswer {
  int status = 0;
  std::string contentRange;
  std::optional<uint64_t> contentLength;
  std::string etag;
  std::string contentEncoding;  // anything but identity (or none) is a bad_answer
  std::string retryAfter;
};

#define SLIP_UPSTREAM_VERDICTS(X)                                                     \
  X(Ok, "usable as asked")                                                           \
  X(IgnoresRanges, "a 200 with the whole body to a range request")                   \
  X(Unsatisfiable, "416: the range asked for is outside the object")                 \
  X(Changed, "the size or ETag differ from the version we know")                     \
  X(Denied, "401/403/410: the link was refused")                                     \
  X(Gone, "404")                                                                      \
  X(Busy, "429/503: try again later")                                                \
  X(ServerError, "another 5xx")                                                      \
  X(BadStatus, "any other status")                                                   \
  X(BadAnswer, "inconsistent headers: a Content-Range we cannot use or did not ask for, a Content-Encoding")

enum class UpstreamVerdict {
#define SLIP_UPSTREAM_VERDICT_ENUM(name, text) name,
  SLIP_UPSTREAM_VERDICTS(SLIP_UPSTREAM_VERDICT_ENUM)
#undef SLIP_UPSTREAM_VERDICT_ENUM
};
/// "ok", "ignores_ranges", ... (logs).
const char* upstreamVerdictName(UpstreamVerdict v);

struct UpstreamJudgement {
  UpstreamVerdict verdict = UpstreamVerdict::BadStatus;
  /// The object's size as the answer states it (a 206's or 416's
  /// Content-Range, a 200's Content-Length), whatever the verdict; a probe's
  /// Ok always has it.
  std::optional<uint64_t> total;
  ByteRange range;            // Ok (Piece, Stream): the bytes the body carries
  int64_t retryAfterMs = -1;  // Busy, ServerError: the answer's Retry-After (at most
                              // kRetryAfterMaxSeconds × 1000); -1 = none or unreadable
  /// Asking again cannot give a better answer (any other status, an encoded
  /// body): fail at once. Busy, ServerError and an inconsistent Content-Range
  /// (another node may answer right) are retried.
  bool permanent = false;
  std::string detail;         // for logs and error bodies
};

/// `nowUnixSeconds` is when the answer arrived: a Retry-After HTTP-date
/// counts from it (parseRetryAfter, below, is the one Retry-After parser).
UpstreamJudgement classifyUpstream(const UpstreamAsk& ask, const UpstreamAnswer& answer,
                                   int64_t nowUnixSeconds);

// ---------------------------------------------------------------- time
// Decisions that depend on the time: `now` is always an argument (wall
// clock ms unless said otherwise), so each is a table test away.

/// A stored version validated at `validatedMs` may be served without asking
/// the upstream again while less than `revalidateMs` has passed.
bool isFresh(int64_t validatedMs, int64_t revalidateMs, int64_t nowMs);

/// Until when a link obtained at `obtainedMs` and expiring at `expiresMs`
/// (0 = never) may start transfers; INT64_MAX = always. A fifth of its life,
/// at most a minute, is kept in hand so that a transfer starting on it still
/// finds it alive. The link cache and the fetcher both judge links by this.
int64_t linkUsableUntil(int64_t obtainedMs, int64_t expiresMs);
bool linkUsable(int64_t obtainedMs, int64_t expiresMs, int64_t nowMs);

/// How long before its expiry an access token is refreshed: a fifth of its
/// life, at most 5 minutes.
int64_t accessMarginMs(int64_t lifeMs);
/// An access token obtained at `obtainedMs`, expiring at `expiresMs`, may
/// still be sent at `nowMs` (it is not inside its refresh margin).
bool tokenUsable(int64_t obtainedMs, int64_t expiresMs, int64_t nowMs);

/// Exponential backoff: the delay before retry number `retry` (1 = the
/// first) is base × 2^(retry−1), at most `maxMs`.
struct Backoff {
  int64_t baseMs;
  int64_t maxMs;
};
int64_t backoffDelayMs(const Backoff& b, int retry);
/// Upstream fetches (probes, pieces, whole-body streams): 250 ms doubling to 10 s.
inline constexpr Backoff kFetchBackoff{250, 10'000};
/// Attempts an upstream fetch gets before it fails for good.
inline constexpr int kFetchAttempts = 6;

// ---------------------------------------------------------------- upstream failures
// What happens after an upstream attempt failed is one decision for every
// path (the probe, a piece, a whole-body stream, a `cache = off` stream, a
// size probe): a permanent failure is answered at once; a retryable one is
// tried again within kFetchAttempts and never makes anyone wait longer than
// kRetryWaitBoundMs. proxy/DESIGN.md, "Failures".

/// Why a transfer failed below HTTP, as the fetcher reads curl's result:
/// X(name, permanent, blames the link, reason the client gets, text).
/// "Blames the link": the URL itself cannot be fetched, so a cached link is
/// forgotten and the next request resolves the path again.
#define SLIP_TRANSPORT_FAILURES(X)                                                                     \
  X(None, false, false, None, "no transport failure")                                                  \
  X(Timeout, false, false, UpstreamTimeout, "no connection or no response headers in time")           \
  X(Stalled, false, false, UpstreamTimeout, "the body came slower than min_speed over stall_timeout") \
  X(Reset, false, false, UpstreamReset, "the connection dropped or the body was cut short")            \
  X(Refused, true, true, UpstreamConnect, "connection refused or no route to the host")               \
  X(UnknownHost, true, true, UpstreamConnect, "the host name does not resolve")                       \
  X(Tls, true, false, UpstreamTls, "TLS: the certificate is not trusted or the handshake failed")     \
  X(ForbiddenAddress, true, true, UpstreamForbidden, "the link or a redirect leads to a link-local or metadata address") \
  X(ForbiddenScheme, true, true, UpstreamForbidden, "a redirect to a scheme other than http/https, or an HTTP/0.9 answer") \
  X(TooManyRedirects, true, true, UpstreamForbidden, "more than 5 redirects (a loop)")                 \
  X(BadUrl, true, true, SourceBadLink, "the link is not a URL that can be fetched")                   \
  X(BadResponse, true, false, UpstreamBadResponse, "not HTTP: a malformed status line, headers over 64 KiB") \
  X(Other, false, false, UpstreamReset, "any other transport failure")

enum class TransportFailure {
#define SLIP_TRANSPORT_FAILURE_ENUM(name, permanent, link, reason, text) name,
  SLIP_TRANSPORT_FAILURES(SLIP_TRANSPORT_FAILURE_ENUM)
#undef SLIP_TRANSPORT_FAILURE_ENUM
};
/// "timeout", "refused", ... (logs).
const char* transportFailureName(TransportFailure f);
/// Asking again cannot succeed (connection refused, certificate not trusted, ...).
bool transportPermanent(TransportFailure f);
/// The link itself cannot be fetched: forget it, resolve again next time.
bool transportBlamesLink(TransportFailure f);
Reason transportReason(TransportFailure f);

/// The longest the gateway waits on a client's behalf for an upstream that
/// failed: a Retry-After above it is not obeyed (the client gets 503
/// upstream_busy at once), and retries of one operation stop once they would
/// end later than this after its first failure (progress restarts the count).
inline constexpr int64_t kRetryWaitBoundMs = 60'000;
/// The Retry-After a client's 503 carries is the upstream's, at most a day.
inline constexpr int64_t kRetryAfterEchoMaxSeconds = 86'400;

/// One failed attempt, whatever the path.
struct FetchFailure {
  Reason reason = Reason::UpstreamReset;  // what the client gets if it is not retried
  bool permanent = false;
  int64_t retryAfterMs = -1;  // the upstream's Retry-After; -1 = none
};
/// An answer whose verdict is Busy, ServerError, BadStatus or BadAnswer.
FetchFailure fetchFailure(const UpstreamJudgement& j);
FetchFailure fetchFailure(TransportFailure t);

struct RetryDecision {
  bool retry = false;
  int64_t delayMs = 0;           // retry: wait this long first
  Reason reason = Reason::None;  // no retry: what the client gets
  int64_t retryAfterS = -1;      // no retry of a busy upstream: the client's Retry-After; -1 = none
};

/// After `attempts` failed attempts of one operation (1 = this is its first
/// failure), the last one `f`, `sinceFirstMs` after the operation's first
/// failure (0 for the first): retry after a delay (Retry-After when the
/// upstream gave one, else policy::kFetchBackoff), or give up with a reason.
RetryDecision retryDecision(const FetchFailure& f, int attempts, int64_t sinceFirstMs);

/// Judges an upstream body by its throughput over a sliding window rather
/// than curl's "1 byte in N seconds": a body that delivers fewer than
/// `minBytesPerSecond` × window bytes over the last `windowMs` is too slow
/// (a trickle holds a block and everyone waiting on it). Time while we held
/// the transfer (paused for the store or the client) never counts.
class SpeedWindow {
 public:
  SpeedWindow(int64_t windowMs, int64_t minBytesPerSecond) : windowMs_(windowMs), minBps_(minBytesPerSecond) {}
  /// At `nowMs` (monotonic) the body has delivered `total` bytes; `paused`:
  /// we held it since the last call. True when the last window was too slow.
  bool tooSlow(int64_t nowMs, uint64_t total, bool paused);
  /// Bytes that arrived in the window tooSlow judged last (for logs).
  uint64_t windowBytes() const { return lastBytes_; }
  int64_t windowMs() const { return windowMs_; }

 private:
  struct Sample {
    int64_t ms;
    uint64_t total;
  };
  int64_t windowMs_;
  int64_t minBps_;
  std::vector<Sample> samples_;  // oldest first; the first is the window's base
  uint64_t lastBytes_ = 0;
};

// ---------------------------------------------------------------- links

/// Link-local and cloud metadata addresses (169.254.0.0/16, fe80::/10,
/// fd00:ec2::254, and IPv4-mapped forms), in parseAddress's 16-byte form:
/// never connected to, whatever a link or a redirect says.
bool forbiddenAddress(const std::array<uint8_t, 16>& a);

/// Why a link a source returned cannot be used, or nullopt when it can: an
/// absolute http or https URL with a host; no bytes below 0x21 or 0x7f
/// (spaces, CR, LF, controls must be percent-encoded); no `user:password@`
/// unless `allowCredentials` (an http mount's own base_url); not a literal
/// forbidden address; not one of `self`, the gateway's own "host:port"
/// listen addresses (a wildcard address stands for loopback, 0.0.0.0 and
/// localhost). Says what is wrong, never the URL's query (it may be signed).
std::optional<std::string> linkProblem(std::string_view url, const std::vector<std::string>& self,
                                       bool allowCredentials);

// ---------------------------------------------------------------- signing
// AList-compatible: sign = base64url_with_padding(HMAC-SHA256(secret,
// "<decoded path>:<expiry>")) + ":" + expiry; expiry in Unix seconds, 0 = never.

std::string sign(std::string_view secret, std::string_view path, int64_t expiry);

enum class SignCheck { Ok, Missing, Invalid, Expired };

/// Verifies `sign` for `path` at time `now` (Unix seconds). Constant-time
/// comparison of the MAC.
SignCheck verifySign(std::string_view secret, std::string_view path,
                     std::string_view sign, int64_t now);

// ---------------------------------------------------------------- HTTP dates

/// Parses an HTTP-date (RFC 9110 §5.6.7) into Unix seconds: IMF-fixdate
/// ("Sun, 06 Nov 1994 08:49:37 GMT"), and the obsolete RFC 850
/// ("Sunday, 06-Nov-94 08:49:37 GMT", two-digit years 70..99 → 19yy, 00..69 →
/// 20yy) and asctime ("Sun Nov  6 08:49:37 1994") forms that recipients must
/// accept. The weekday must be a weekday name but is not checked against the
/// date (nginx and curl do the same). Years 1900..9999; anything else, a
/// field out of range (Feb 30, 24:00:00) or trailing bytes give nullopt.
std::optional<int64_t> parseHttpDate(std::string_view value);

/// IMF-fixdate for Unix seconds; times before 1970 or after 9999 are clamped
/// to those years' ends, so the result always parses back.
std::string formatHttpDate(int64_t unixSeconds);

/// Longest wait parseRetryAfter reports: larger values (and absurd ones such
/// as 99999999999999999) saturate to it, so callers may multiply by 1000.
inline constexpr int64_t kRetryAfterMaxSeconds = 1'000'000'000;

/// `Retry-After` (RFC 9110 §10.2.3): delta-seconds or an HTTP-date, as the
/// number of seconds to wait from `nowUnixSeconds` (a date in the past is 0).
/// Never overflows: results are within [0, kRetryAfterMaxSeconds]. Anything
/// else ("1.5", "-1", "soon", an empty value) is nullopt: no advice.
std::optional<int64_t> parseRetryAfter(std::string_view value, int64_t nowUnixSeconds);

// ---------------------------------------------------------------- link expiry
// When a signed upstream link stops working, as written in the link itself
// (issue 11 item 4). The link cache keeps a link until shortly before this
// instead of a fixed `link_ttl`.

/// Which form the expiry was read from, most specific first (that is also
/// the order in which linkExpiry looks for them).
enum class LinkExpiryForm {
  AmzSigV4,     // X-Amz-Date=20231114T221320Z & X-Amz-Expires=3600 (S3, MinIO, R2)
  GoogV4,       // X-Goog-Date & X-Goog-Expires (Google Cloud Storage)
  OssV4,        // x-oss-date & x-oss-expires=<seconds> (Aliyun OSS V4)
  OssExpires,   // x-oss-expires=<unix s> (Aliyun OSS V2, Aliyundrive links)
  CosSignTime,  // q-sign-time=<start>;<end> (Tencent COS)
  Expires,      // Expires=<unix s> (OSS V1, S3 SigV2, CloudFront canned, Quark, 189)
  Plain,        // e= / t= <unix s or ms> (115, 123pan-style): weakest, see below
};
const char* linkExpiryFormName(LinkExpiryForm f);

struct LinkExpiry {
  int64_t unixMs = 0;
  LinkExpiryForm form = LinkExpiryForm::Expires;
};

/// Earliest known-bad instant of a signed URL, in Unix milliseconds, or
/// nullopt when the link says nothing we recognise (then `link_ttl` applies).
/// Parameter names match case-insensitively, values are percent-decoded, the
/// first occurrence of a name wins, and only the query (after '?', before
/// '#') is read. Absolute times must be plausible: seconds in [2001-09-09,
/// 2100-01-01) (10 digits), or for `Plain` also milliseconds in that span (13
/// digits); relative ones (X-Amz-Expires, ...) 0..1e9 s. Anything else in a
/// parameter makes that form absent, not an error, and the next form is
/// tried. `Plain` names (e, t) are also used for other things by some sites:
/// a caller that reads a `Plain` expiry at or before the time it resolved the
/// link should treat it as "no expiry written" rather than as already expired.
std::optional<LinkExpiry> linkExpiry(std::string_view url);

/// The expiry written in a link resolved at `resolvedAtMs` (Unix ms), as the
/// link cache uses it: linkExpiry's, except that a `Plain` one (a bare `e` or
/// `t`) at or before `resolvedAtMs` is taken as "no expiry written" (those
/// names mean other things on some sites). Other forms are returned even when
/// already past: such a link is expired and must never reach a client.
std::optional<int64_t> writtenLinkExpiryMs(std::string_view url, int64_t resolvedAtMs);

// ---------------------------------------------------------------- media index
// Where a player will look for the index of a media file (issue 11 item 3),
// read from the first bytes only: MP4/MOV top-level box headers (the `moov`
// box, or where it must start after `mdat`), Matroska/WebM EBML header,
// Segment and SeekHead (the `Cues` element). No allocation, bounded loops,
// every length checked against the file size: the bytes are untrusted.

enum class MediaContainer { Unknown, Mp4, Matroska, WebM };
const char* mediaContainerName(MediaContainer c);

/// Default bound of the range locateMediaIndex returns.
inline constexpr uint64_t kMediaIndexMaxBytes = 4ull << 20;

struct MediaIndex {
  enum class Kind {
    Unknown,  // not a container we know, or its headers do not say where: take the tail
    Exact,    // `range` is the whole index element (moov box / Cues element, header included)
    Starts,   // the index starts at range.begin; its header lies beyond the head, so
              // `range` is [begin, begin + maxBytes) clipped to the file
  };
  MediaContainer container = MediaContainer::Unknown;
  Kind kind = Kind::Unknown;
  ByteRange range;       // within [0, fileSize); non-empty unless Unknown
  bool clipped = false;  // Exact, but the element is longer than maxBytes: range is its start
  bool inHead = false;   // range lies within the head already: nothing to fetch
};

/// Says where the index of a file of `fileSize` bytes is, given its first
/// bytes `head` (a prefix of the file; bytes past fileSize are ignored).
/// Every returned range is within the file and at most `maxBytes` long.
MediaIndex locateMediaIndex(uint64_t fileSize, std::string_view head,
                            uint64_t maxBytes = kMediaIndexMaxBytes);

// ---------------------------------------------------------------- episodes
// The next episode, warmed ahead (issue 13 item 4): which file names mark an
// episode of a series, and which file of a folder comes next.

/// An episode marker in a file name.
struct Episode {
  enum class Form {
    SeasonEpisode,  // S01E03, s1e3, S01.E03, S01E03E04, S01E03-E05
    Cross,          // 1x03, 01x103
    Ep,             // EP03, Ep.3, ep 12
    E,              // E03
    Cjk,            // 第3集, 第03话, 第十二話, 第5回
    Dash,           // "[Group] Title - 03 [1080p]", "Title - 12v2.mkv"
  };
  Form form = Form::E;
  int season = -1;   // -1: the name does not say
  int episode = 0;   // the first episode the file holds
  int last = 0;      // the last one (S01E03E04: 4), else == episode
  size_t begin = 0, end = 0;  // the marker's bytes in the name (its last segment)
};
const char* episodeFormName(Episode::Form f);

/// The episode marker of a file name (the last segment of `name`). A marker
/// stands apart from the words and numbers around it: 1920x1080, 5x5, HEVC,
/// x264, DDP5.1, 2019 and 1080p are not episodes. When a name has several,
/// the most telling form wins (the order of Form), then the first. Pure,
/// linear in the name's length, never reads outside it.
std::optional<Episode> parseEpisode(std::string_view name);

/// The file to warm after `current` (a path or a name) among `names` (one
/// folder's files): the smallest (season, episode) after current's last
/// episode, preferring the same series (the text before the marker) and
/// the same extension; only audio and video files. Seasons are compared
/// when both names say one, else the same season is assumed. nullopt when
/// current is no episode or nothing comes after it.
std::optional<size_t> nextEpisode(std::string_view current, const std::vector<std::string>& names);

}  // namespace slip::policy
