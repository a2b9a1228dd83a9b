#include "src/webdav.h"

#include <expat.h>

#include <algorithm>
#include <memory>

#include "policy/policy.h"

namespace slip::webdav {
namespace {

constexpr char kSep = '\x01';  // between namespace URI and local name: never in XML 1.0 text
constexpr const char* kDav = "DAV:";
constexpr const char* kXmlNs = "http://www.w3.org/XML/1998/namespace";

PropName splitName(const XML_Char* full) {
  std::string_view s(full);
  size_t sep = s.find(kSep);
  if (sep == std::string_view::npos) return {"", std::string(s)};
  return {std::string(s.substr(0, sep)), std::string(s.substr(sep + 1))};
}

/// The parser's state between expat's callbacks.
struct State {
  XML_Parser parser = nullptr;
  int depth = 0;  // of the element being opened (1 = root)
  std::string error;
  enum class In { None, Prop, Include } in = In::None;
  int kinds = 0;  // allprop / propname / prop elements seen
  bool sawAll = false, sawName = false, sawProp = false, sawInclude = false;
  Propfind req;

  void fail(std::string why) {
    if (error.empty()) error = std::move(why);
    XML_StopParser(parser, XML_FALSE);
  }
};

void onStart(void* ud, const XML_Char* name, const XML_Char**) {
  auto* st = static_cast<State*>(ud);
  st->depth++;
  if (st->depth > kMaxDepth) return st->fail("elements nested too deep");
  PropName n = splitName(name);
  bool dav = n.ns == kDav;
  if (st->depth == 1) {
    if (!dav || n.name != "propfind") st->fail("the root element is not DAV:propfind");
    return;
  }
  if (st->depth == 2) {
    st->in = State::In::None;
    if (!dav) return;  // unknown elements are ignored (RFC 4918 §17)
    if (n.name == "allprop")
      st->sawAll = true, st->kinds++;
    else if (n.name == "propname")
      st->sawName = true, st->kinds++;
    else if (n.name == "prop")
      st->sawProp = true, st->kinds++, st->in = State::In::Prop;
    else if (n.name == "include")
      st->sawInclude = true, st->in = State::In::Include;
    return;
  }
  if (st->depth == 3 && st->in != State::In::None) {
    if (st->req.props.size() >= static_cast<size_t>(kMaxProps))
      return st->fail("too many properties");
    if (std::find(st->req.props.begin(), st->req.props.end(), n) == st->req.props.end())
      st->req.props.push_back(std::move(n));
  }
}

void onEnd(void* ud, const XML_Char*) {
  auto* st = static_cast<State*>(ud);
  if (st->depth == 2) st->in = State::In::None;
  st->depth--;
}

void onDoctype(void* ud, const XML_Char*, const XML_Char*, const XML_Char*, int) {
  static_cast<State*>(ud)->fail("a DOCTYPE is not allowed in a PROPFIND body");
}

void onEntityDecl(void* ud, const XML_Char*, int, const XML_Char*, int, const XML_Char*,
                  const XML_Char*, const XML_Char*, const XML_Char*) {
  static_cast<State*>(ud)->fail("entity declarations are not allowed");
}

struct ParserFree {
  void operator()(XML_Parser p) const { XML_ParserFree(p); }
};

// ------------------------------------------------------------------ output

/// A property that a resource has, with its XML value ("" = empty element).
struct Live {
  const char* name;
  std::string value;  // already escaped / markup
};

std::vector<Live> liveProps(const Resource& r) {
  std::vector<Live> out;
  out.push_back({"resourcetype", r.collection ? "<D:collection/>" : ""});
  std::string name = r.displayName;
  if (name.empty()) {
    std::string_view p = r.path;
    while (p.size() > 1 && p.back() == '/') p.remove_suffix(1);
    name = std::string(policy::baseName(p));
  }
  out.push_back({"displayname", xmlEscape(name)});
  if (!r.collection) out.push_back({"getcontentlength", std::to_string(r.size)});
  if (r.mtimeMs > 0) out.push_back({"getlastmodified", policy::formatHttpDate(r.mtimeMs / 1000)});
  if (!r.etag.empty()) out.push_back({"getetag", xmlEscape(r.etag)});
  if (!r.collection && !r.contentType.empty())
    out.push_back({"getcontenttype", xmlEscape(r.contentType)});
  return out;
}

/// An empty element for a property name, with its namespace declared. The
/// XML namespace is bound to the prefix `xml` and may not be declared for
/// another (Namespaces in XML §3): `<xml:lang/>` asked for is answered as
/// `<xml:lang/>`, or clients cannot read the 207 (found by tests/fuzz/webdav).
std::string emptyElement(const PropName& p) {
  if (p.ns == kDav) return "<D:" + p.name + "/>";
  if (p.ns.empty()) return "<" + p.name + " xmlns=\"\"/>";
  if (p.ns == kXmlNs) return "<xml:" + p.name + "/>";
  return "<X:" + p.name + " xmlns:X=\"" + xmlEscape(p.ns) + "\"/>";
}

void propstat(std::string& out, const std::string& props, int status) {
  out += "<D:propstat><D:prop>" + props + "</D:prop><D:status>HTTP/1.1 " + std::to_string(status) +
         " " + policy::statusText(status) + "</D:status></D:propstat>";
}

void response(std::string& out, const Resource& r, const Propfind& req) {
  out += "<D:response><D:href>" + xmlEscape(href(r.path, r.collection)) + "</D:href>";
  std::vector<Live> live = liveProps(r);
  std::string found, missing;
  auto value = [](const Live& l) {
    return l.value.empty() ? "<D:" + std::string(l.name) + "/>"
                           : "<D:" + std::string(l.name) + ">" + l.value + "</D:" + l.name + ">";
  };
  if (req.kind == Propfind::Kind::PropName) {
    for (const Live& l : live) found += "<D:" + std::string(l.name) + "/>";
  } else {
    if (req.kind == Propfind::Kind::AllProp)
      for (const Live& l : live) found += value(l);
    for (const PropName& p : req.props) {
      auto it = std::find_if(live.begin(), live.end(),
                             [&p](const Live& l) { return p.ns == kDav && p.name == l.name; });
      if (it == live.end())
        missing += emptyElement(p);
      else if (req.kind == Propfind::Kind::Prop)
        found += value(*it);
      // allprop already carries it
    }
  }
  if (!found.empty() || missing.empty()) propstat(out, found, 200);
  if (!missing.empty()) propstat(out, missing, 404);
  out += "</D:response>";
}

}  // namespace

Action classifyMethod(std::string_view m) {
  if (m == "GET" || m == "HEAD") return Action::Deliver;
  if (m == "PROPFIND") return Action::Propfind;
  if (m == "OPTIONS") return Action::Options;
  for (const char* w : {"PUT", "DELETE", "MKCOL", "MOVE", "COPY", "PROPPATCH"})
    if (m == w) return Action::Forbidden;
  return Action::NotAllowed;
}

Depth parseDepth(std::string_view v, bool present) {
  if (!present) return Depth::Infinity;
  while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
  while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
  if (v == "0") return Depth::Zero;
  if (v == "1") return Depth::One;
  std::string l(v);
  for (auto& c : l) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return l == "infinity" ? Depth::Infinity : Depth::Invalid;
}

ParseResult parsePropfind(std::string_view body) {
  ParseResult out;
  if (body.find_first_not_of(" \t\r\n") == std::string_view::npos) {
    out.ok = true;  // no body: allprop (RFC 4918 §9.1)
    return out;
  }
  if (body.size() > kMaxBody) {
    out.error = "body larger than " + std::to_string(kMaxBody) + " bytes";
    return out;
  }
  std::unique_ptr<XML_ParserStruct, ParserFree> p(XML_ParserCreateNS(nullptr, kSep));
  if (!p) {
    out.error = "cannot create an XML parser";
    return out;
  }
  State st;
  st.parser = p.get();
  XML_SetUserData(p.get(), &st);
  XML_SetElementHandler(p.get(), onStart, onEnd);
  XML_SetStartDoctypeDeclHandler(p.get(), onDoctype);
  XML_SetEntityDeclHandler(p.get(), onEntityDecl);
  XML_SetParamEntityParsing(p.get(), XML_PARAM_ENTITY_PARSING_NEVER);
  XML_Status s = XML_Parse(p.get(), body.data(), static_cast<int>(body.size()), XML_TRUE);
  if (s != XML_STATUS_OK || !st.error.empty()) {
    out.error = !st.error.empty() ? st.error
                                  : std::string("not well-formed XML: ") +
                                        XML_ErrorString(XML_GetErrorCode(p.get())) + " at line " +
                                        std::to_string(XML_GetCurrentLineNumber(p.get()));
    return out;
  }
  if (st.kinds != 1) {
    out.error = st.kinds == 0 ? "DAV:propfind names none of allprop, propname, prop"
                              : "DAV:propfind names more than one of allprop, propname, prop";
    return out;
  }
  if (st.sawInclude && !st.sawAll) {
    out.error = "DAV:include goes only with DAV:allprop";
    return out;
  }
  out.ok = true;
  out.request = std::move(st.req);
  out.request.kind = st.sawAll    ? Propfind::Kind::AllProp
                     : st.sawName ? Propfind::Kind::PropName
                                  : Propfind::Kind::Prop;
  if (st.sawName) out.request.props.clear();
  return out;
}

std::string multistatus(const std::vector<Resource>& resources, const Propfind& req) {
  std::string out = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<D:multistatus xmlns:D=\"DAV:\">";
  for (const Resource& r : resources) response(out, r, req);
  out += "</D:multistatus>\n";
  return out;
}

std::string finiteDepthBody() {
  return "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n"
         "<D:error xmlns:D=\"DAV:\"><D:propfind-finite-depth/></D:error>\n";
}

std::vector<Header> optionsHeaders() {
  return {{"DAV", "1"}, {"Allow", kAllow}, {"MS-Author-Via", "DAV"}};
}

std::string xmlEscape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&apos;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string href(std::string_view path, bool collection) {
  std::string h = policy::encodePath(path);
  if (collection && (h.empty() || h.back() != '/')) h += '/';
  return h;
}

}  // namespace slip::webdav
