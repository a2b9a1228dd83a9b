// Request paths, query strings, URL and header encodings, mounts, addresses
// and globs.
//
// normalizePath is the gate of SPEC §10: it decodes exactly once and judges
// the decoded bytes, so no later layer ever sees "..", NUL, a backslash or a
// control byte, however they were spelled on the wire.
#include <arpa/inet.h>

#include <algorithm>
#include <cstring>

#include "policy/policy.h"

namespace slip::policy {
namespace {

int hexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Decodes the %XX starting at s[i]; -1 if it is not a valid escape.
int escapeAt(std::string_view s, size_t i) {
  if (i + 2 >= s.size()) return -1;
  int hi = hexValue(s[i + 1]), lo = hexValue(s[i + 2]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

bool isUnreserved(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '.' || c == '_' || c == '~';
}

// RFC 5987 attr-char.
bool isAttrChar(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
         std::strchr("!#$&+-.^_`|~", c) != nullptr;
}

template <typename Keep>
std::string percentEncode(std::string_view s, Keep keep) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(s.size());
  for (unsigned char c : s) {
    if (keep(c)) {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

}  // namespace

PathResult normalizePath(std::string_view raw) {
  PathResult r;
  if (raw.empty() || raw.front() != '/') {
    r.reason = Reason::BadPath;
    return r;
  }
  // Every escape shrinks 3 bytes to 1, so this bounds the work before decoding.
  if (raw.size() > 3 * kMaxPathBytes) {
    r.reason = Reason::PathTooLong;
    return r;
  }
  std::string decoded;
  decoded.reserve(raw.size());
  for (size_t i = 0; i < raw.size(); i++) {
    unsigned char c = static_cast<unsigned char>(raw[i]);
    if (c == '%') {
      int v = escapeAt(raw, i);
      if (v < 0) {
        r.reason = Reason::BadPercentEncoding;
        return r;
      }
      c = static_cast<unsigned char>(v);
      i += 2;
    }
    Reason bad = c == 0                  ? Reason::PathNul
                 : c == '\\'             ? Reason::PathBackslash
                 : c < 0x20 || c == 0x7f ? Reason::BadPath
                                         : Reason::None;
    if (bad != Reason::None) {
      r.reason = bad;
      return r;
    }
    decoded += static_cast<char>(c);
  }
  if (decoded.size() > kMaxPathBytes) {
    r.reason = Reason::PathTooLong;
    return r;
  }

  std::string& out = r.path;
  out.reserve(decoded.size());
  std::string_view all(decoded);
  bool dirTail = false;  // the path names a directory: keep its trailing '/'
  for (size_t pos = 1; pos <= all.size();) {
    size_t slash = std::min(all.find('/', pos), all.size());
    std::string_view seg = all.substr(pos, slash - pos);
    pos = slash + 1;
    if (seg == "..") {
      out.clear();
      r.reason = Reason::PathTraversal;
      return r;
    }
    // As in RFC 3986 §5.2.4, a final "." or "" names the directory ("/a/." is "/a/").
    dirTail = seg.empty() || seg == ".";
    if (dirTail) continue;
    out += '/';
    out += seg;
  }
  if (out.empty() || dirTail) out += '/';
  return r;
}

void splitTarget(std::string_view target, std::string_view* path, std::string_view* query) {
  target = target.substr(0, target.find('#'));
  size_t q = target.find('?');
  if (path) *path = target.substr(0, q);
  if (query) *query = q == std::string_view::npos ? std::string_view() : target.substr(q + 1);
}

// '+' stays '+': AList's signs never contain it and a literal '+' in a value
// is more likely base64 than a form-encoded space. A '%' that does not start
// a valid escape is kept as is, so a mangled sign= still arrives (and fails
// as Invalid rather than looking Missing).
std::optional<std::string> queryParam(std::string_view query, std::string_view name) {
  auto decode = [](std::string_view s) {
    std::string out;
    out.reserve(s.size());
    for (size_t i = 0; i < s.size(); i++) {
      int v = s[i] == '%' ? escapeAt(s, i) : -1;
      if (v < 0) {
        out += s[i];
      } else {
        out += static_cast<char>(v);
        i += 2;
      }
    }
    return out;
  };
  while (true) {
    size_t amp = query.find('&');
    std::string_view pair = query.substr(0, amp);
    size_t eq = pair.find('=');
    // The first occurrence wins, as with Go's url.Values.Get in AList.
    if (!pair.empty() && decode(pair.substr(0, eq)) == name)
      return eq == std::string_view::npos ? std::string() : decode(pair.substr(eq + 1));
    if (amp == std::string_view::npos) return std::nullopt;
    query.remove_prefix(amp + 1);
  }
}

std::string encodePath(std::string_view decodedPath) {
  return percentEncode(decodedPath, [](unsigned char c) { return isUnreserved(c) || c == '/'; });
}

std::string encodeQueryValue(std::string_view v) { return percentEncode(v, isUnreserved); }

std::string urlOrigin(std::string_view url) {
  size_t scheme = url.find("://");
  if (scheme == std::string_view::npos || scheme == 0) return "";
  std::string_view rest = url.substr(scheme + 3);
  rest = rest.substr(0, rest.find_first_of("/?#"));
  if (size_t at = rest.rfind('@'); at != std::string_view::npos) rest = rest.substr(at + 1);
  if (rest.empty()) return "";
  std::string out;
  for (char c : url.substr(0, scheme + 3)) out += static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
  for (char c : rest) out += static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
  return out;
}

std::string contentDisposition(std::string_view fileName, bool attachment) {
  // The quoted fallback is for clients without RFC 5987 support; control
  // bytes are replaced too so a file name can never split the header.
  std::string ascii;
  for (unsigned char c : fileName)
    ascii +=
        c >= 0x80 || c < 0x20 || c == 0x7f || c == '"' || c == '\\' ? '_' : static_cast<char>(c);
  return std::string(attachment ? "attachment" : "inline") + "; filename=\"" + ascii +
         "\"; filename*=UTF-8''" + percentEncode(fileName, isAttrChar);
}

std::string_view baseName(std::string_view path) {
  size_t slash = path.rfind('/');
  return slash == std::string_view::npos ? path : path.substr(slash + 1);
}

std::string extensionOf(std::string_view path) {
  std::string_view base = baseName(path);
  size_t dot = base.rfind('.');
  // ".bashrc" is a hidden file without an extension, not a file of type "bashrc".
  if (dot == std::string_view::npos || dot == 0) return "";
  std::string ext(base.substr(dot + 1));
  for (char& c : ext)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return ext;
}

std::string mimeType(std::string_view path) {
  static const std::pair<const char*, const char*> kTypes[] = {
      {"mkv", "video/x-matroska"},
      {"mp4", "video/mp4"},
      {"m4v", "video/mp4"},
      {"mov", "video/quicktime"},
      {"webm", "video/webm"},
      {"avi", "video/x-msvideo"},
      {"ts", "video/mp2t"},
      {"m2ts", "video/mp2t"},
      {"flv", "video/x-flv"},
      {"wmv", "video/x-ms-wmv"},
      {"mp3", "audio/mpeg"},
      {"flac", "audio/flac"},
      {"m4a", "audio/mp4"},
      {"aac", "audio/aac"},
      {"ogg", "audio/ogg"},
      {"opus", "audio/ogg"},
      {"wav", "audio/wav"},
      {"srt", "application/x-subrip"},
      {"ass", "text/x-ssa"},
      {"vtt", "text/vtt"},
      {"txt", "text/plain; charset=utf-8"},
      {"html", "text/html; charset=utf-8"},
      {"json", "application/json"},
      {"jpg", "image/jpeg"},
      {"jpeg", "image/jpeg"},
      {"png", "image/png"},
      {"gif", "image/gif"},
      {"webp", "image/webp"},
      {"pdf", "application/pdf"},
      {"zip", "application/zip"},
      {"iso", "application/x-iso9660-image"},
      {"m3u8", "application/vnd.apple.mpegurl"},
  };
  std::string ext = extensionOf(path);
  for (const auto& [e, t] : kTypes)
    if (ext == e) return t;
  return "application/octet-stream";
}

MountMatch matchMount(const std::vector<conf::Mount>& mounts, std::string_view path) {
  MountMatch best;
  size_t bestLen = 0;
  for (size_t i = 0; i < mounts.size(); i++) {
    std::string_view prefix = mounts[i].prefix;
    while (!prefix.empty() && prefix.back() == '/') prefix.remove_suffix(1);  // "/" → ""
    if (!path.starts_with(prefix)) continue;
    if (path.size() > prefix.size() && path[prefix.size()] != '/') continue;
    // Strictly longer wins, so among equal prefixes the first in the file does.
    if (best.index >= 0 && prefix.size() <= bestLen) continue;
    best.index = static_cast<int>(i);
    bestLen = prefix.size();
    best.rest = path.size() > prefix.size() ? std::string(path.substr(prefix.size())) : "/";
  }
  return best;
}

std::vector<std::string> mountFolders(const std::vector<conf::Mount>& mounts,
                                      std::string_view folder) {
  while (!folder.empty() && folder.back() == '/') folder.remove_suffix(1);  // "/" → ""
  std::vector<std::string> out;
  for (const auto& m : mounts) {
    std::string_view p = m.prefix;
    while (!p.empty() && p.back() == '/') p.remove_suffix(1);
    if (p.size() <= folder.size() + 1 || !p.starts_with(folder) || p[folder.size()] != '/')
      continue;
    std::string_view below = p.substr(folder.size() + 1);
    out.emplace_back(below.substr(0, below.find('/')));
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

std::optional<std::array<uint8_t, 16>> parseAddress(std::string_view ip) {
  std::string s(ip);
  std::array<uint8_t, 16> a{};
  in_addr v4{};
  in6_addr v6{};
  if (inet_pton(AF_INET, s.c_str(), &v4) == 1) {
    a[10] = a[11] = 0xff;
    std::memcpy(a.data() + 12, &v4, 4);
    return a;
  }
  if (inet_pton(AF_INET6, s.c_str(), &v6) == 1) {
    std::memcpy(a.data(), &v6, 16);
    return a;
  }
  return std::nullopt;
}

bool cidrContains(const conf::Cidr& net, const std::array<uint8_t, 16>& addr) {
  int bits = net.prefix > 128 ? 128 : net.prefix;
  for (int i = 0; bits > 0; i++, bits -= 8) {
    uint8_t mask = static_cast<uint8_t>(0xff00 >> (bits < 8 ? bits : 8));
    if ((addr[i] & mask) != (net.addr[i] & mask)) return false;
  }
  return true;
}

bool anyCidrContains(const std::vector<conf::Cidr>& nets, std::string_view ip) {
  auto a = parseAddress(ip);
  if (!a) return false;
  for (const auto& n : nets)
    if (cidrContains(n, *a)) return true;
  return false;
}

// A Thompson simulation over the glob's positions: O(|glob| × |path|) time
// whatever the pattern, where backtracking would be exponential on
// "*a*a*a*a*b". Like gitignore, "/**/" also matches a single '/', so
// "/movies/**/*.mkv" covers "/movies/a.mkv".
bool globMatch(std::string_view glob, std::string_view path) {
  const size_t n = glob.size();
  auto isDouble = [&](size_t i) { return glob[i] == '*' && i + 1 < n && glob[i + 1] == '*'; };
  // Follows the empty matches from position i: a star may match nothing.
  auto close = [&](std::vector<char>& set) {
    for (size_t i = 0; i < n; i++) {
      if (!set[i]) continue;
      if (isDouble(i)) {
        set[i + 2] = 1;
        if (i + 2 < n && glob[i + 2] == '/' && i > 0 && glob[i - 1] == '/') set[i + 3] = 1;
      } else if (glob[i] == '*') {
        set[i + 1] = 1;
      }
    }
  };
  std::vector<char> cur(n + 1, 0), next(n + 1, 0);
  cur[0] = 1;
  close(cur);
  for (char c : path) {
    std::fill(next.begin(), next.end(), 0);
    bool any = false;
    for (size_t i = 0; i < n; i++) {
      if (!cur[i]) continue;
      if (isDouble(i)) {
        next[i] = 1;  // "**" absorbs c and stays
      } else if (glob[i] == '*') {
        if (c != '/') next[i] = 1;
      } else if (glob[i] == '?' ? c != '/' : glob[i] == c) {
        next[i + 1] = 1;
      } else {
        continue;
      }
      any = true;
    }
    if (!any) return false;
    close(next);
    std::swap(cur, next);
  }
  return cur[n] != 0;
}

}  // namespace slip::policy
