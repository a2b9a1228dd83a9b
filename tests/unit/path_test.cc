// Request paths (SPEC §10), URL/header encodings, mounts, CIDRs, globs,
// query parameters and the reason table.
#include <catch2/catch.hpp>
#include <cstring>

#include "policy/policy.h"

using namespace slip::policy;
using slip::conf::Cidr;
using slip::conf::Mount;

TEST_CASE("normalizePath against hostile paths", "[path]") {
  struct Row {
    std::string raw;
    Reason reason;
    std::string path;  // expected when reason is None
  };
  const std::string nul("/a\0b", 4);
  const std::string longOk = "/" + std::string(kMaxPathBytes - 1, 'a');
  const std::string longBad = "/" + std::string(kMaxPathBytes, 'a');
  // Within the raw limit (3 × kMaxPathBytes) but over the decoded one.
  std::string encodedLong = "/";
  for (size_t i = 0; i < 4000; i++) encodedLong += "%61";
  encodedLong += std::string(kMaxPathBytes - 4000, 'a');
  const Row rows[] = {
      // traversal, raw and encoded
      {"/../etc/passwd", Reason::PathTraversal, ""},
      {"/..", Reason::PathTraversal, ""},
      {"/../", Reason::PathTraversal, ""},
      {"/a/../b", Reason::PathTraversal, ""},
      {"/a/b/..", Reason::PathTraversal, ""},
      {"/a/%2e%2e/b", Reason::PathTraversal, ""},
      {"/a/%2E%2e/", Reason::PathTraversal, ""},
      {"/a/.%2e/", Reason::PathTraversal, ""},
      {"/a/%2e./", Reason::PathTraversal, ""},
      {"/%2e%2e/", Reason::PathTraversal, ""},
      {"/.%2E/etc", Reason::PathTraversal, ""},
      {"/a/..%2fb", Reason::PathTraversal, ""},  // %2f decodes to '/' in the same pass
      {"/a/%2f..%2f", Reason::PathTraversal, ""},
      {"//..//x", Reason::PathTraversal, ""},
      // decoded exactly once: a double-encoded dot is a literal name
      {"/a/%252e%252e/b", Reason::None, "/a/%2e%2e/b"},
      {"/%252e", Reason::None, "/%2e"},
      // names that merely contain dots are fine
      {"/a/...", Reason::None, "/a/..."},
      {"/a/..b", Reason::None, "/a/..b"},
      {"/a/b..", Reason::None, "/a/b.."},
      {"/.hidden", Reason::None, "/.hidden"},
      // backslash and NUL, raw and encoded
      {"/a\\..\\b", Reason::PathBackslash, ""},
      {"/a%5cb", Reason::PathBackslash, ""},
      {"/a%5C..%5Cb", Reason::PathBackslash, ""},
      {"/a%00b", Reason::PathNul, ""},
      {nul, Reason::PathNul, ""},
      // bad escapes
      {"/a%", Reason::BadPercentEncoding, ""},
      {"/a%2", Reason::BadPercentEncoding, ""},
      {"/a%zz", Reason::BadPercentEncoding, ""},
      {"/a%g0", Reason::BadPercentEncoding, ""},
      {"/a%0g", Reason::BadPercentEncoding, ""},
      {"/%%41", Reason::BadPercentEncoding, ""},
      // control bytes
      {"/a\x01z", Reason::BadPath, ""},
      {"/a%0d%0aSet-Cookie:x", Reason::BadPath, ""},
      {"/a\tb", Reason::BadPath, ""},
      {"/a%7f", Reason::BadPath, ""},
      {"/a\x7f", Reason::BadPath, ""},
      // not origin-form
      {"", Reason::BadPath, ""},
      {"a/b", Reason::BadPath, ""},
      {"%2fa", Reason::BadPath, ""},
      {"http://evil/", Reason::BadPath, ""},
      // length
      {longOk, Reason::None, longOk},
      {longBad, Reason::PathTooLong, ""},
      {encodedLong, Reason::PathTooLong, ""},
      {"/" + std::string(3 * kMaxPathBytes, '/'), Reason::PathTooLong, ""},
      // collapsing and dot segments
      {"/", Reason::None, "/"},
      {"//", Reason::None, "/"},
      {"//a///b", Reason::None, "/a/b"},
      {"/./a/.", Reason::None, "/a/"},
      {"/a/./b", Reason::None, "/a/b"},
      {"/a/%2e/b", Reason::None, "/a/b"},
      {"/a/b/", Reason::None, "/a/b/"},
      {"/a/b//", Reason::None, "/a/b/"},
      {"/.", Reason::None, "/"},
      // real names
      {"/%E7%94%B5%E5%BD%B1/%E4%BD%A0%E5%A5%BD.mkv", Reason::None, "/电影/你好.mkv"},
      {"/电影/你好.mkv", Reason::None, "/电影/你好.mkv"},
      {"/my%20films/a b.mkv", Reason::None, "/my films/a b.mkv"},
      {"/a+b.mkv", Reason::None, "/a+b.mkv"},
      {"/100%25.mkv", Reason::None, "/100%.mkv"},
      {"/what%3F%23.mkv", Reason::None, "/what?#.mkv"},
      {"/bad\xff\xfeutf8", Reason::None, "/bad\xff\xfeutf8"},
      {"/%ff", Reason::None, "/\xff"},
  };
  for (const auto& r : rows) {
    INFO("raw path: [" << r.raw.substr(0, 80) << "] (" << r.raw.size() << " bytes)");
    PathResult p = normalizePath(r.raw);
    CHECK(reasonCode(p.reason) == std::string(reasonCode(r.reason)));
    CHECK(p.path == r.path);
  }
}

TEST_CASE("splitTarget and queryParam", "[path]") {
  const std::tuple<const char*, const char*, const char*> targets[] = {
      {"/d/a.mkv", "/d/a.mkv", ""},      {"/d/a.mkv?sign=x:0", "/d/a.mkv", "sign=x:0"},
      {"/d/a.mkv?", "/d/a.mkv", ""},     {"/d/a.mkv?a=1?b=2", "/d/a.mkv", "a=1?b=2"},
      {"/d/a.mkv#frag", "/d/a.mkv", ""}, {"/d/a.mkv?x=1#frag?y", "/d/a.mkv", "x=1"},
      {"/d/a#b?c", "/d/a", ""},
  };
  for (const auto& [target, path, query] : targets) {
    INFO("target: " << target);
    std::string_view p, q;
    splitTarget(target, &p, &q);
    CHECK(p == path);
    CHECK(q == query);
  }

  const std::tuple<const char*, const char*, std::optional<std::string>> params[] = {
      {"sign=abc:0", "sign", "abc:0"},
      {"a=1&sign=abc%3A0", "sign", "abc:0"},
      {"sign=a%3d%3D:5", "sign", "a==:5"},
      {"sign=a+b", "sign", "a+b"},  // '+' is kept, not a space
      {"sign=a%2Bb", "sign", "a+b"},
      {"sign=a%zz", "sign", "a%zz"},  // bad escape kept verbatim
      {"sign=50%", "sign", "50%"},
      {"sign=", "sign", ""},
      {"sign", "sign", ""},
      {"sign=1&sign=2", "sign", "1"},  // first wins
      {"signx=1&xsign=2", "sign", std::nullopt},
      {"SIGN=1", "sign", std::nullopt},
      {"&&sign=z&", "sign", "z"},
      {"%73ign=k", "sign", "k"},
      {"", "sign", std::nullopt},
      {"a=b=c", "a", "b=c"},
  };
  for (const auto& [query, name, value] : params) {
    INFO("query: [" << query << "] name " << name);
    CHECK(queryParam(query, name) == value);
  }
}

TEST_CASE("encodePath, encodeQueryValue, contentDisposition, names", "[path]") {
  const std::pair<const char*, const char*> paths[] = {
      {"/a/b.mkv", "/a/b.mkv"},
      {"/a b", "/a%20b"},
      {"/a#b", "/a%23b"},
      {"/a?b", "/a%3Fb"},
      {"/100%", "/100%25"},
      {"/A-Z_a.z~0", "/A-Z_a.z~0"},
      {"/a+b&c=d:e@f", "/a%2Bb%26c%3Dd%3Ae%40f"},
      {"/电影/你好 世界.mkv", "/%E7%94%B5%E5%BD%B1/%E4%BD%A0%E5%A5%BD%20%E4%B8%96%E7%95%8C.mkv"},
      {"/\xff", "/%FF"},
  };
  for (const auto& [in, out] : paths) {
    INFO("path: " << in);
    CHECK(encodePath(in) == out);
  }
  CHECK(encodeQueryValue("Srxn6xvX-7fq0BDb_U=:1700000000") == "Srxn6xvX-7fq0BDb_U%3D%3A1700000000");
  CHECK(encodeQueryValue("a/b+c d~") == "a%2Fb%2Bc%20d~");

  CHECK(contentDisposition("你好 世界.mkv") ==
        "inline; filename=\"______ ______.mkv\"; "
        "filename*=UTF-8''%E4%BD%A0%E5%A5%BD%20%E4%B8%96%E7%95%8C.mkv");
  CHECK(contentDisposition("a\"b\\c.mp4", true) ==
        "attachment; filename=\"a_b_c.mp4\"; filename*=UTF-8''a%22b%5Cc.mp4");
  CHECK(contentDisposition("x\r\ny.txt") ==
        "inline; filename=\"x__y.txt\"; filename*=UTF-8''x%0D%0Ay.txt");
  CHECK(contentDisposition("plain-name_1.0~#$&+^`|!.mkv") ==
        "inline; filename=\"plain-name_1.0~#$&+^`|!.mkv\"; "
        "filename*=UTF-8''plain-name_1.0~#$&+^`|!.mkv");

  CHECK(baseName("/a/b/c.mkv") == "c.mkv");
  CHECK(baseName("/c.mkv") == "c.mkv");
  CHECK(baseName("/a/") == "");
  CHECK(baseName("c") == "c");
  const std::pair<const char*, const char*> exts[] = {
      {"/a/Movie.MKV", "mkv"}, {"/a/b.tar.gz", "gz"}, {"/a/noext", ""},       {"/a/.bashrc", ""},
      {"/a/b.", ""},           {"/a.d/b", ""},        {"/a/电影.Mp4", "mp4"},
  };
  for (const auto& [in, out] : exts) {
    INFO("path: " << in);
    CHECK(extensionOf(in) == out);
  }
}

TEST_CASE("matchMount", "[path]") {
  auto mounts = [](std::vector<std::string> prefixes) {
    std::vector<Mount> v;
    for (auto& p : prefixes) {
      Mount m;
      m.name = p;
      m.prefix = p;
      v.push_back(m);
    }
    return v;
  };
  const auto withRoot = mounts({"/", "/movies", "/movies/4k", "/tv/"});
  const auto noRoot = mounts({"/movies", "/movies/4k"});
  const auto dup = mounts({"/same", "/same"});
  struct Row {
    const std::vector<Mount>* set;
    const char* path;
    int index;
    const char* rest;
  };
  const Row rows[] = {
      {&withRoot, "/movies/a.mkv", 1, "/a.mkv"},
      {&withRoot, "/movies", 1, "/"},
      {&withRoot, "/movies/", 1, "/"},
      {&withRoot, "/movies/4k/b.mkv", 2, "/b.mkv"},
      {&withRoot, "/movies/4k", 2, "/"},
      {&withRoot, "/movies/4kx/b.mkv", 1, "/4kx/b.mkv"},
      {&withRoot, "/moviesx/a.mkv", 0, "/moviesx/a.mkv"},
      {&withRoot, "/tv/s01e01.mkv", 3, "/s01e01.mkv"},
      {&withRoot, "/tv", 3, "/"},
      {&withRoot, "/", 0, "/"},
      {&withRoot, "/other", 0, "/other"},
      {&noRoot, "/moviesx", -1, ""},
      {&noRoot, "/", -1, ""},
      {&noRoot, "/tv/a", -1, ""},
      {&noRoot, "/movies/4k/x", 1, "/x"},
      {&dup, "/same/x", 0, "/x"},
  };
  for (const auto& r : rows) {
    INFO("path: " << r.path);
    MountMatch m = matchMount(*r.set, r.path);
    CHECK(m.index == r.index);
    CHECK(m.rest == r.rest);
  }
}

TEST_CASE("mountFolders: the folders mount prefixes make", "[path]") {
  std::vector<Mount> v;
  for (const char* p : {"/", "/movies", "/movies/4k", "/tv/", "/media/films", "/media/tv shows", "/电影/新"}) {
    Mount m;
    m.name = p;
    m.prefix = p;
    v.push_back(m);
  }
  using V = std::vector<std::string>;
  CHECK(mountFolders(v, "/") == V{"media", "movies", "tv", "电影"});
  CHECK(mountFolders(v, "") == V{"media", "movies", "tv", "电影"});
  CHECK(mountFolders(v, "/media") == V{"films", "tv shows"});
  CHECK(mountFolders(v, "/media/") == V{"films", "tv shows"});
  CHECK(mountFolders(v, "/movies") == V{"4k"});
  CHECK(mountFolders(v, "/movies/4k").empty());  // a mount itself, nothing below
  CHECK(mountFolders(v, "/mov").empty());        // whole segments only
  CHECK(mountFolders(v, "/电影") == V{"新"});
  CHECK(mountFolders(v, "/tv").empty());
}

TEST_CASE("CIDR matching, IPv4 and IPv6", "[path]") {
  struct Row {
    const char* net;
    const char* ip;
    bool in;
  };
  const Row rows[] = {
      {"0.0.0.0/0", "1.2.3.4", true},
      {"0.0.0.0/0", "255.255.255.255", true},
      {"0.0.0.0/0", "::1", false},  // an IPv4 network holds IPv4 addresses only
      {"192.168.0.0/16", "192.168.0.0", true},
      {"192.168.0.0/16", "192.168.255.255", true},
      {"192.168.0.0/16", "192.169.0.0", false},
      {"192.168.0.0/16", "192.167.255.255", false},
      {"10.0.0.0/8", "10.255.255.255", true},
      {"10.0.0.0/8", "11.0.0.0", false},
      {"10.1.2.3/8", "10.9.9.9", true},  // host bits in the config are ignored
      {"192.168.1.7/32", "192.168.1.7", true},
      {"192.168.1.7/32", "192.168.1.6", false},
      {"192.168.1.7", "192.168.1.8", false},
      {"10.0.0.128/25", "10.0.0.127", false},
      {"10.0.0.128/25", "10.0.0.128", true},
      {"10.0.0.128/25", "10.0.0.255", true},
      {"10.0.0.0/31", "10.0.0.1", true},
      {"10.0.0.0/31", "10.0.0.2", false},
      {"127.0.0.0/8", "::ffff:127.0.0.1", true},  // v4-mapped v6 text
      {"127.0.0.0/8", "::ffff:7f00:1", true},
      {"127.0.0.0/8", "::127.0.0.1", false},  // v4-compatible is not v4-mapped
      {"::/0", "2001:db8::1", true},
      {"::/0", "1.2.3.4", true},  // the whole IPv6 space includes the mapped range
      {"::1", "::1", true},
      {"::1/128", "::2", false},
      {"::1", "127.0.0.1", false},
      {"fd00::/8", "fd12:3456::1", true},
      {"fd00::/8", "fe00::", false},
      {"fd00::/8", "fcff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", false},
      {"2001:db8::/32", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", true},
      {"2001:db8::/32", "2001:db9::", false},
      {"2001:db8::/33", "2001:db8:7fff::1", true},
      {"2001:db8::/33", "2001:db8:8000::", false},
      {"::ffff:0:0/96", "8.8.8.8", true},
      {"10.0.0.0/8", "not-an-ip", false},
      {"10.0.0.0/8", "", false},
      {"10.0.0.0/8", "10.0.0.1:80", false},
      {"fe80::/10", "fe80::1%eth0", false},  // zone ids are not numeric addresses
  };
  for (const auto& r : rows) {
    INFO(r.net << " contains " << r.ip);
    auto net = slip::conf::parseCidr(r.net);
    REQUIRE(net);
    CHECK(anyCidrContains({*net}, r.ip) == r.in);
  }
  CHECK_FALSE(anyCidrContains({}, "1.2.3.4"));
  auto a = parseAddress("1.2.3.4");
  REQUIRE(a);
  const uint8_t mapped[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 1, 2, 3, 4};
  CHECK(std::memcmp(a->data(), mapped, 16) == 0);
  CHECK(parseAddress("[::1]") == std::nullopt);
  CHECK(parseAddress("1.2.3") == std::nullopt);
}

TEST_CASE("globMatch", "[path]") {
  struct Row {
    const char* glob;
    const char* path;
    bool match;
  };
  const Row rows[] = {
      {"/a/b.mkv", "/a/b.mkv", true},
      {"/a/b.mkv", "/a/b.mkvx", false},
      {"/a/*.mkv", "/a/b.mkv", true},
      {"/a/*.mkv", "/a/.mkv", true},
      {"/a/*.mkv", "/a/x/b.mkv", false},
      {"/a/*", "/a/", true},
      {"/a/*", "/a", false},
      {"/a/**", "/a/x/y/z", true},
      {"/a/**", "/a/", true},
      {"/a/**.mkv", "/a/x/y.mkv", true},
      {"/a/**/*.mkv", "/a/x/y/b.mkv", true},
      {"/a/**/*.mkv", "/a/b.mkv", true},  // "/**/" also spans zero directories
      {"/a/**/*.mkv", "/a/x/b.mp4", false},
      {"**/*.iso", "/x/y/z.iso", true},
      {"**", "/anything/at/all", true},
      {"*", "/a", false},  // '*' never crosses the leading '/'
      {"/*/*", "/a/b", true},
      {"/*/*", "/a/b/c", false},
      {"/a?c", "/abc", true},
      {"/a?c", "/a/c", false},
      {"/a?c", "/ac", false},
      {"/???", "/电", true},  // '?' is one byte: UTF-8 names count bytes
      {"/a*b*c", "/aXbYc", true},
      {"/a*b*c", "/aXbY", false},
      {"/*a*a*a*a*a*a*a*a*a*b", "/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
       false},
      {"**a**a**a**a**a**a**a**b",
       "/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", false},
      {"/*a*a*a*a*b", "/aaaaaaaaaab", true},
      {"", "", true},
      {"", "/", false},
      {"/Movies/*", "/movies/a", false},  // case-sensitive
  };
  for (const auto& r : rows) {
    INFO("glob " << r.glob << " path " << r.path);
    CHECK(globMatch(r.glob, r.path) == r.match);
  }
}

TEST_CASE("reason table", "[path]") {
  CHECK(std::string(reasonCode(Reason::PathTraversal)) == "path_traversal");
  CHECK(std::string(reasonCode(Reason::None)) == "none");
  CHECK(std::string(reasonCode(Reason::UpstreamTimeout)) == "upstream_timeout");
  CHECK(std::string(reasonCode(Reason::RangeNotSatisfiable)) == "range_not_satisfiable");
  CHECK(reasonStatus(Reason::SignMissing) == 401);
  CHECK(reasonStatus(Reason::RangeNotSatisfiable) == 416);
  CHECK(std::string(reasonText(Reason::PathNul)) == "NUL byte in path");
  CHECK(std::string(statusText(206)) == "Partial Content");
  CHECK(std::string(statusText(416)) == "Range Not Satisfiable");
  CHECK(std::string(statusText(599)) == "Unknown");
}

TEST_CASE("urlOrigin: the key of an upstream host", "[path]") {
  using slip::policy::urlOrigin;
  CHECK(urlOrigin("http://127.0.0.1:8080/a/b?c=d") == "http://127.0.0.1:8080");
  CHECK(urlOrigin("HTTPS://CDN.Example.com/f.mkv") == "https://cdn.example.com");
  CHECK(urlOrigin("https://user:secret@host.example:443/x") == "https://host.example:443");  // no user info
  CHECK(urlOrigin("https://[::1]:9000?x") == "https://[::1]:9000");
  CHECK(urlOrigin("https://host#frag") == "https://host");
  CHECK(urlOrigin("/relative/path") == "");
  CHECK(urlOrigin("://nohost") == "");
  CHECK(urlOrigin("http:///path") == "");
  CHECK(urlOrigin("") == "");
}
