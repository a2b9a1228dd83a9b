// The read-only WebDAV core (RFC 4918 class 1): PROPFIND bodies in, 207
// Multi-Status documents out, the OPTIONS answer and the method policy. It
// knows nothing of the HTTP layer or the sources: the front end routes
// /dav/<mount>/<path>, asks the Engine for listings, and passes what it
// learnt here as Resources.
//
// Bodies are untrusted: at most kMaxBody bytes (the caller enforces it and
// answers 413), parsed by libexpat in namespace mode with every DOCTYPE
// refused (so no entity can be declared: no external entities, no entity
// expansion bombs), elements nested at most kMaxDepth deep.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace slip::webdav {

inline constexpr size_t kMaxBody = 64 * 1024;
inline constexpr int kMaxDepth = 32;
inline constexpr int kMaxProps = 256;  // properties one PROPFIND may name
inline constexpr const char* kXmlType = "application/xml; charset=utf-8";
/// Methods the front answers (Allow).
inline constexpr const char* kAllow = "OPTIONS, GET, HEAD, PROPFIND";

/// What the front does with a method on /dav/.
enum class Action {
  Deliver,    // GET, HEAD: the normal delivery (policy, cache, Range)
  Propfind,   // PROPFIND: a listing
  Options,    // OPTIONS: optionsHeaders(), no body
  Forbidden,  // PUT DELETE MKCOL MOVE COPY PROPPATCH: 403, the share is read-only
  NotAllowed  // LOCK UNLOCK POST and the rest: 405 with Allow
};
Action classifyMethod(std::string_view method);

enum class Depth { Zero, One, Infinity, Invalid };
/// The Depth header; absent (`present` false) means infinity (RFC 4918 §9.1).
Depth parseDepth(std::string_view value, bool present);

struct PropName {
  std::string ns;    // namespace URI: "DAV:" for the live properties, "" for none
  std::string name;  // local name
  bool operator==(const PropName&) const = default;
};

struct Propfind {
  enum class Kind { AllProp, PropName, Prop };
  Kind kind = Kind::AllProp;
  std::vector<PropName> props;  // Prop: those asked for; AllProp: <include> extras
};

struct ParseResult {
  bool ok = false;
  std::string error;  // why the body is refused (400)
  Propfind request;
};
/// A PROPFIND body (RFC 4918 §14.20); empty or only white space = allprop.
ParseResult parsePropfind(std::string_view body);

/// One resource of a Multi-Status answer.
struct Resource {
  std::string path;         // decoded absolute path: "/dav/movies/a b.mkv"
  std::string displayName;  // "" = the last segment of path
  bool collection = false;  // href gets a trailing '/'
  uint64_t size = 0;        // files
  int64_t mtimeMs = 0;      // 0 = unknown: no getlastmodified
  std::string etag;         // quoted; "" = none
  std::string contentType;  // files; "" = none
};

/// The 207 body for `resources` (the target first, then its members).
std::string multistatus(const std::vector<Resource>& resources, const Propfind& req);

/// The 403 body that refuses Depth: infinity (DAV:propfind-finite-depth).
std::string finiteDepthBody();

struct Header {
  std::string name;
  std::string value;
};
/// OPTIONS: DAV: 1 (no locking), Allow, MS-Author-Via: DAV.
std::vector<Header> optionsHeaders();

/// `s` with & < > " ' escaped, for XML text and attribute values.
std::string xmlEscape(std::string_view s);
/// The href of a decoded path: percent-encoded per segment (UTF-8 bytes,
/// spaces, '#', '%', '&', '?' ...), '/' kept.
std::string href(std::string_view path, bool collection);

}  // namespace slip::webdav
