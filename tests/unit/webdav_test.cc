// The WebDAV core: PROPFIND bodies (well-formed, every way malformed or
// hostile), Depth, the method policy, and Multi-Status documents parsed back
// with libexpat in namespace mode, as a client would read them.
#include "src/webdav.h"

#include <expat.h>

#include <catch2/catch.hpp>
#include <map>

using namespace slip::webdav;

namespace {

// ------------------------------------------------------------------ a reader

/// What a client sees in one <D:response>.
struct Seen {
  std::string href;
  std::map<std::string, int> status;        // "{ns}name" → propstat status
  std::map<std::string, std::string> text;  // "{ns}name" → text content
  bool collection = false;
};

struct Reader {
  std::vector<Seen> responses;
  std::vector<std::string> stack;  // "{ns}name" of the open elements
  std::string text;
  std::vector<std::string> pending;  // props of the current propstat
  bool rootOk = false;
  std::string error;

  static std::string key(const XML_Char* n) {
    std::string s(n);
    size_t sep = s.find('\n');
    return sep == std::string::npos ? "{}" + s : "{" + s.substr(0, sep) + "}" + s.substr(sep + 1);
  }
  static void start(void* ud, const XML_Char* n, const XML_Char**) {
    auto* r = static_cast<Reader*>(ud);
    std::string k = key(n);
    if (r->stack.empty()) r->rootOk = k == "{DAV:}multistatus";
    if (k == "{DAV:}response") r->responses.push_back({});
    if (k == "{DAV:}collection" && r->stack.size() >= 2 && r->stack.back() == "{DAV:}resourcetype")
      r->responses.back().collection = true;
    if (r->stack.size() >= 2 && r->stack.back() == "{DAV:}prop") r->pending.push_back(k);
    r->stack.push_back(k);
    r->text.clear();
  }
  static void end(void* ud, const XML_Char*) {
    auto* r = static_cast<Reader*>(ud);
    std::string k = r->stack.back();
    r->stack.pop_back();
    Seen& cur =
        r->responses.empty() ? *(r->responses.emplace(r->responses.end())) : r->responses.back();
    if (k == "{DAV:}href") cur.href = r->text;
    if (!r->stack.empty() && r->stack.back() == "{DAV:}prop") cur.text[k] = r->text;
    if (k == "{DAV:}status") {
      int st = std::stoi(r->text.substr(9, 3));
      for (const auto& p : r->pending) cur.status[p] = st;
      r->pending.clear();
    }
    r->text.clear();
  }
  static void chars(void* ud, const XML_Char* s, int n) {
    static_cast<Reader*>(ud)->text.append(s, n);
  }

  bool parse(const std::string& xml) {
    XML_Parser p = XML_ParserCreateNS(nullptr, '\n');
    XML_SetUserData(p, this);
    XML_SetElementHandler(p, start, end);
    XML_SetCharacterDataHandler(p, chars);
    bool ok = XML_Parse(p, xml.data(), static_cast<int>(xml.size()), XML_TRUE) == XML_STATUS_OK;
    if (!ok) error = XML_ErrorString(XML_GetErrorCode(p));
    XML_ParserFree(p);
    return ok && rootOk;
  }
};

std::string percentDecode(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); i++) {
    if (s[i] == '%' && i + 2 < s.size()) {
      out += static_cast<char>(std::stoi(s.substr(i + 1, 2), nullptr, 16));
      i += 2;
    } else {
      out += s[i];
    }
  }
  return out;
}

const char* kOddNames[] = {
    "千与千寻 (2001).mkv", "a b  c.mp4",      "#1 hash.mkv",
    "100% done.mkv",       "Tom & Jerry.avi", "what?.mkv",
    "<tag> \"q\" 'a'.srt", "emoji 🎬.mkv",     "semi;colon=eq+plus,comma.mkv",
    "tab\tless?no",        "ü-umlaut é.mkv",
};

}  // namespace

TEST_CASE("method policy: read-only share", "[webdav]") {
  CHECK(classifyMethod("GET") == Action::Deliver);
  CHECK(classifyMethod("HEAD") == Action::Deliver);
  CHECK(classifyMethod("PROPFIND") == Action::Propfind);
  CHECK(classifyMethod("OPTIONS") == Action::Options);
  for (const char* m : {"PUT", "DELETE", "MKCOL", "MOVE", "COPY", "PROPPATCH"}) {
    INFO(m);
    CHECK(classifyMethod(m) == Action::Forbidden);
  }
  for (const char* m :
       {"LOCK", "UNLOCK", "POST", "PATCH", "TRACE", "CONNECT", "get", "propfind", ""}) {
    INFO(m);
    CHECK(classifyMethod(m) == Action::NotAllowed);
  }
  auto h = optionsHeaders();
  std::map<std::string, std::string> m;
  for (auto& x : h) m[x.name] = x.value;
  CHECK(m["DAV"] == "1");
  CHECK(m["MS-Author-Via"] == "DAV");
  CHECK(m["Allow"] == "OPTIONS, GET, HEAD, PROPFIND");
}

TEST_CASE("Depth header", "[webdav]") {
  CHECK(parseDepth("0", true) == Depth::Zero);
  CHECK(parseDepth(" 1 ", true) == Depth::One);
  CHECK(parseDepth("infinity", true) == Depth::Infinity);
  CHECK(parseDepth("Infinity", true) == Depth::Infinity);
  CHECK(parseDepth("", false) == Depth::Infinity);  // absent (RFC 4918 §9.1)
  for (const char* bad : {"", "2", "-1", "01", "one", "0,1", "infinite", "1 1"}) {
    INFO(bad);
    CHECK(parseDepth(bad, true) == Depth::Invalid);
  }
  Reader r;
  std::string body = finiteDepthBody();
  XML_Parser p = XML_ParserCreateNS(nullptr, '\n');
  CHECK(XML_Parse(p, body.data(), static_cast<int>(body.size()), XML_TRUE) == XML_STATUS_OK);
  XML_ParserFree(p);
  CHECK(body.find("<D:propfind-finite-depth/>") != std::string::npos);
  CHECK(body.find("xmlns:D=\"DAV:\"") != std::string::npos);
}

TEST_CASE("PROPFIND bodies that parse", "[webdav]") {
  SECTION("empty body and white space are allprop") {
    for (const char* b : {"", "  \r\n\t"}) {
      auto r = parsePropfind(b);
      CHECK(r.ok);
      CHECK(r.request.kind == Propfind::Kind::AllProp);
      CHECK(r.request.props.empty());
    }
  }
  SECTION("allprop, any prefix, default namespace, BOM, declaration") {
    for (const char* b : {
             "<?xml version=\"1.0\" encoding=\"utf-8\"?><D:propfind "
             "xmlns:D=\"DAV:\"><D:allprop/></D:propfind>",
             "<propfind xmlns=\"DAV:\"><allprop/></propfind>",
             "\xEF\xBB\xBF<a:propfind xmlns:a=\"DAV:\"><a:allprop/></a:propfind>",
             "<propfind xmlns='DAV:'>\n  <allprop></allprop>\n</propfind>",
             "<D:propfind xmlns:D=\"DAV:\" "
             "xmlns:x=\"urn:x\"><x:unknown><x:deep/></x:unknown><D:allprop/></D:propfind>",
         }) {
      INFO(b);
      auto r = parsePropfind(b);
      CHECK(r.ok);
      CHECK(r.request.kind == Propfind::Kind::AllProp);
    }
  }
  SECTION("propname") {
    auto r = parsePropfind("<D:propfind xmlns:D=\"DAV:\"><D:propname/></D:propfind>");
    CHECK(r.ok);
    CHECK(r.request.kind == Propfind::Kind::PropName);
  }
  SECTION("prop with live, foreign and un-namespaced names, duplicates once") {
    auto r = parsePropfind(
        "<D:propfind xmlns:D=\"DAV:\" xmlns:oc=\"http://owncloud.org/ns\"><D:prop>"
        "<D:getcontentlength/><D:resourcetype/><oc:checksums/><plain xmlns=\"\"/>"
        "<D:getcontentlength/><R:getetag xmlns:R=\"DAV:\"/></D:prop></D:propfind>");
    REQUIRE(r.ok);
    CHECK(r.request.kind == Propfind::Kind::Prop);
    REQUIRE(r.request.props.size() == 5);
    CHECK(r.request.props[0] == PropName{"DAV:", "getcontentlength"});
    CHECK(r.request.props[1] == PropName{"DAV:", "resourcetype"});
    CHECK(r.request.props[2] == PropName{"http://owncloud.org/ns", "checksums"});
    CHECK(r.request.props[3] == PropName{"", "plain"});
    CHECK(r.request.props[4] == PropName{"DAV:", "getetag"});
  }
  SECTION("allprop with include") {
    auto r = parsePropfind(
        "<D:propfind "
        "xmlns:D=\"DAV:\"><D:allprop/><D:include><D:supportedlock/></D:include></D:propfind>");
    REQUIRE(r.ok);
    CHECK(r.request.kind == Propfind::Kind::AllProp);
    REQUIRE(r.request.props.size() == 1);
    CHECK(r.request.props[0].name == "supportedlock");
  }
  SECTION("UTF-16 document") {
    std::string u16 = "\xFF\xFE";
    for (char c : std::string("<propfind xmlns=\"DAV:\"><propname/></propfind>")) {
      u16 += c;
      u16 += '\0';
    }
    auto r = parsePropfind(u16);
    CHECK(r.ok);
    CHECK(r.request.kind == Propfind::Kind::PropName);
  }
}

TEST_CASE("malformed and hostile PROPFIND bodies are refused", "[webdav]") {
  std::string deep;
  for (int i = 0; i < 40; i++) deep += "<x:a>";
  std::string manyProps;
  for (int i = 0; i < 300; i++) manyProps += "<D:p" + std::to_string(i) + "/>";
  const std::pair<std::string, std::string> cases[] = {
      {"<foo>", "root element"},  // litmus propfind_invalid (also not well-formed)
      {"<D:propfind xmlns:D=\"DAV:\"><D:prop><bar:foo xmlns:bar=\"\"/></D:prop></D:propfind>",
       "not well-formed"},  // litmus propfind_invalid2: undeclaring a prefix
      {"<D:propfind xmlns:D=\"DAV:\"><D:allprop/>", "not well-formed"},
      {"<D:propfind xmlns:D=\"DAV:\"><D:allprop/></D:propfind><x/>", "not well-formed"},
      {"<propfind><allprop/></propfind>", "root element is not DAV:propfind"},
      {"<D:propfind xmlns:D=\"urn:not-dav\"><D:allprop/></D:propfind>", "root element"},
      {"<D:prop xmlns:D=\"DAV:\"/>", "root element"},
      {"<D:propfind xmlns:D=\"DAV:\"/>", "names none of"},
      {"<D:propfind xmlns:D=\"DAV:\"><x:allprop xmlns:x=\"urn:x\"/></D:propfind>", "names none of"},
      {"<D:propfind xmlns:D=\"DAV:\"><D:allprop/><D:propname/></D:propfind>", "more than one"},
      {"<D:propfind xmlns:D=\"DAV:\"><D:prop/><D:prop/></D:propfind>", "more than one"},
      {"<D:propfind "
       "xmlns:D=\"DAV:\"><D:prop><D:a/></D:prop><D:include><D:b/></D:include></D:propfind>",
       "include goes only with"},
      {"<!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol2 \"&lol;&lol;&lol;\">]>"
       "<D:propfind xmlns:D=\"DAV:\"><D:prop><D:a>&lol2;</D:a></D:prop></D:propfind>",
       "DOCTYPE"},
      {"<!DOCTYPE x SYSTEM \"file:///etc/passwd\"><D:propfind "
       "xmlns:D=\"DAV:\"><D:allprop/></D:propfind>",
       "DOCTYPE"},
      {"<?xml version=\"1.0\"?><!DOCTYPE p [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]>"
       "<D:propfind xmlns:D=\"DAV:\"><D:prop><D:a>&xxe;</D:a></D:prop></D:propfind>",
       "DOCTYPE"},
      {"<D:propfind xmlns:D=\"DAV:\"><D:prop>&undefined;</D:prop></D:propfind>", "not well-formed"},
      {"<D:propfind xmlns:D=\"DAV:\" xmlns:x=\"urn:x\"><D:prop>" + deep + "</D:prop></D:propfind>",
       "nested too deep"},
      {"<D:propfind xmlns:D=\"DAV:\"><D:prop>" + manyProps + "</D:prop></D:propfind>", "too many"},
      {"<D:propfind xmlns:D=\"DAV:\"><D:allprop/></D:propfind" + std::string(1, '\0') + ">",
       "not well-formed"},
      {"<?xml version=\"1.0\" encoding=\"x-unknown\"?><D:propfind "
       "xmlns:D=\"DAV:\"><D:allprop/></D:propfind>",
       "not well-formed"},
      {"<D:propfind xmlns:D=\"DAV:\"><D:allprop/></D:propfind>\xC3\x28", "not well-formed"},
      {"<D:propfind xmlns:D=\"DAV:\"><D:prop><u:x/></D:prop></D:propfind>", "not well-formed"},
      {"<D:propfind xmlns:D=\"DAV:\"><D:allprop a=\"1\" a=\"2\"/></D:propfind>", "not well-formed"},
      {std::string(kMaxBody + 1, ' ') + "<x/>", "larger than"},
  };
  for (const auto& [body, fragment] : cases) {
    INFO(body.substr(0, 200));
    auto r = parsePropfind(body);
    CHECK_FALSE(r.ok);
    CHECK(r.error.find(fragment) != std::string::npos);
  }
}

TEST_CASE("Multi-Status: allprop for a folder and odd names parses back exactly", "[webdav]") {
  std::vector<Resource> rs;
  rs.push_back({"/dav/films/新 建", "", true, 0, 1'700'000'000'000, "", ""});
  for (const char* n : kOddNames)
    rs.push_back({std::string("/dav/films/新 建/") + n, "", false, 1234567890123ULL,
                  1'700'000'123'456, "\"abc-1\"", "video/x-matroska"});
  rs.push_back({"/dav/films/新 建/Sub & <dir>#1", "", true, 0, 0, "", ""});
  std::string xml = multistatus(rs, Propfind{});
  Reader r;
  INFO(xml);
  REQUIRE(r.parse(xml));
  REQUIRE(r.responses.size() == rs.size());
  for (size_t i = 0; i < rs.size(); i++) {
    const Seen& s = r.responses[i];
    INFO(rs[i].path);
    // The href is ASCII only, decodes to the path, and collections end with '/'.
    CHECK(std::all_of(s.href.begin(), s.href.end(), [](char c) {
      return c > 0x20 && c < 0x7f && c != '#' && c != '?' && c != '&' && c != ' ';
    }));
    CHECK(percentDecode(s.href) == rs[i].path + (rs[i].collection ? "/" : ""));
    CHECK(s.collection == rs[i].collection);
    CHECK(s.status.at("{DAV:}resourcetype") == 200);
    std::string name = rs[i].path.substr(rs[i].path.rfind('/') + 1);
    CHECK(s.text.at("{DAV:}displayname") == name);
    if (rs[i].collection) {
      CHECK(s.status.count("{DAV:}getcontentlength") == 0);
      CHECK(s.status.count("{DAV:}getcontenttype") == 0);
    } else {
      CHECK(s.text.at("{DAV:}getcontentlength") == "1234567890123");
      CHECK(s.text.at("{DAV:}getetag") == "\"abc-1\"");
      CHECK(s.text.at("{DAV:}getcontenttype") == "video/x-matroska");
      CHECK(s.text.at("{DAV:}getlastmodified") == "Tue, 14 Nov 2023 22:15:23 GMT");
    }
  }
  CHECK(r.responses[0].text.at("{DAV:}getlastmodified") == "Tue, 14 Nov 2023 22:13:20 GMT");
  CHECK(r.responses.back().status.count("{DAV:}getlastmodified") == 0);  // unknown: absent
}

TEST_CASE("Multi-Status: prop asks, unknown properties are 404", "[webdav]") {
  auto req = parsePropfind(
      "<D:propfind xmlns:D=\"DAV:\" "
      "xmlns:oc=\"http://owncloud.org/ns\"><D:prop><D:getcontentlength/>"
      "<D:displayname/><oc:checksums/><D:quota-used-bytes/><plain "
      "xmlns=\"\"/></D:prop></D:propfind>");
  REQUIRE(req.ok);
  std::vector<Resource> rs = {{"/dav/m", "m", true, 0, 0, "", ""},
                              {"/dav/m/a&b.mkv", "", false, 42, 0, "", "video/x-matroska"}};
  std::string xml = multistatus(rs, req.request);
  Reader r;
  INFO(xml);
  REQUIRE(r.parse(xml));
  REQUIRE(r.responses.size() == 2);
  const Seen& dir = r.responses[0];
  CHECK(dir.text.at("{DAV:}displayname") == "m");
  CHECK(dir.status.at("{DAV:}displayname") == 200);
  CHECK(dir.status.at("{DAV:}getcontentlength") == 404);  // a collection has none
  CHECK(dir.status.at("{http://owncloud.org/ns}checksums") == 404);
  CHECK(dir.status.at("{DAV:}quota-used-bytes") == 404);
  CHECK(dir.status.at("{}plain") == 404);
  CHECK(dir.status.count("{DAV:}resourcetype") == 0);  // not asked for
  const Seen& file = r.responses[1];
  CHECK(file.text.at("{DAV:}getcontentlength") == "42");
  CHECK(file.text.at("{DAV:}displayname") == "a&b.mkv");
  CHECK(file.status.at("{http://owncloud.org/ns}checksums") == 404);
  CHECK(file.status.count("{DAV:}getcontenttype") == 0);
}

// Found by tests/fuzz/webdav: a property in the XML namespace (xml:lang, the
// prefix every document has) came back as <X:lang xmlns:X="http://www.w3.org/
// XML/1998/namespace"/>, which Namespaces in XML forbids: no client could read
// the 207.
TEST_CASE("Multi-Status: a property in the XML namespace keeps the xml prefix", "[webdav]") {
  auto req = parsePropfind(
      "<D:propfind xmlns:D=\"DAV:\"><D:prop><xml:lang/><D:displayname/></D:prop></D:propfind>");
  REQUIRE(req.ok);
  REQUIRE(req.request.props.size() == 2);
  CHECK(req.request.props[0].ns == "http://www.w3.org/XML/1998/namespace");
  std::vector<Resource> rs = {{"/dav/m/a.mkv", "", false, 1, 0, "", ""}};
  std::string xml = multistatus(rs, req.request);
  INFO(xml);
  CHECK(xml.find("<xml:lang/>") != std::string::npos);
  Reader r;
  REQUIRE(r.parse(xml));
  REQUIRE(r.responses.size() == 1);
  CHECK(r.responses[0].status.at("{http://www.w3.org/XML/1998/namespace}lang") == 404);
  CHECK(r.responses[0].status.at("{DAV:}displayname") == 200);
}

TEST_CASE("Multi-Status: propname lists names without values", "[webdav]") {
  auto req = parsePropfind("<propfind xmlns=\"DAV:\"><propname/></propfind>");
  REQUIRE(req.ok);
  std::string xml =
      multistatus({{"/dav/m/x.mkv", "", false, 7, 1'000'000, "\"e\"", "video/mp4"}}, req.request);
  Reader r;
  REQUIRE(r.parse(xml));
  REQUIRE(r.responses.size() == 1);
  for (const char* p : {"resourcetype", "displayname", "getcontentlength", "getlastmodified",
                        "getetag", "getcontenttype"}) {
    INFO(p);
    CHECK(r.responses[0].status.at(std::string("{DAV:}") + p) == 200);
    CHECK(r.responses[0].text.at(std::string("{DAV:}") + p).empty());
  }
}

TEST_CASE("href and XML escaping", "[webdav]") {
  CHECK(href("/dav/a b/c#d%e&f?g", false) == "/dav/a%20b/c%23d%25e%26f%3Fg");
  CHECK(href("/dav/电影", true) == "/dav/%E7%94%B5%E5%BD%B1/");
  CHECK(href("/dav/x/", true) == "/dav/x/");
  CHECK(xmlEscape("<a href=\"x\">&'</a>") == "&lt;a href=&quot;x&quot;&gt;&amp;&apos;&lt;/a&gt;");
}
