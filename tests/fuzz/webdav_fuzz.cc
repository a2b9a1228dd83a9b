// WebDAV PROPFIND request bodies (libexpat, namespace mode, DOCTYPE refused).
// Whatever the body: an accepted request names at most kMaxProps distinct
// properties with non-empty names (none for propname); the same request
// written back as XML parses to the same request; and the 207 document we
// would send for it is well-formed, namespace-correct XML.
#include <expat.h>

#include <memory>

#include "src/webdav.h"
#include "tests/fuzz/fuzz.h"

using namespace slip::webdav;

namespace {

/// Whether `doc` is well-formed namespace-aware XML (what a client parses).
/// The separator is one no namespace URI can hold (expat refuses a URI that
/// contains its separator).
bool wellFormed(const std::string& doc) {
  std::unique_ptr<XML_ParserStruct, decltype(&XML_ParserFree)> p(XML_ParserCreateNS(nullptr, '\x01'),
                                                                  &XML_ParserFree);
  FUZZ_ASSERT(p);
  return XML_Parse(p.get(), doc.data(), static_cast<int>(doc.size()), XML_TRUE) == XML_STATUS_OK;
}

std::string escapeAttr(const std::string& s) { return xmlEscape(s); }

/// The request as a PROPFIND body, each property in its own namespace.
std::string write(const Propfind& r) {
  std::string b = "<?xml version=\"1.0\"?><D:propfind xmlns:D=\"DAV:\">";
  std::string props;
  for (const PropName& p : r.props) {
    if (p.ns.empty()) props += "<" + p.name + " xmlns=\"\"/>";
    else if (p.ns == "http://www.w3.org/XML/1998/namespace") props += "<xml:" + p.name + "/>";
    else props += "<X:" + p.name + " xmlns:X=\"" + escapeAttr(p.ns) + "\"/>";
  }
  switch (r.kind) {
    case Propfind::Kind::AllProp:
      b += "<D:allprop/>";
      if (!props.empty()) b += "<D:include>" + props + "</D:include>";
      break;
    case Propfind::Kind::PropName: b += "<D:propname/>"; break;
    case Propfind::Kind::Prop: b += "<D:prop>" + props + "</D:prop>"; break;
  }
  return b + "</D:propfind>";
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view body(reinterpret_cast<const char*>(data), size);
  ParseResult r = parsePropfind(body);
  if (!r.ok) {
    FUZZ_ASSERT(!r.error.empty());
    return 0;
  }
  const Propfind& req = r.request;
  FUZZ_ASSERT(req.props.size() <= static_cast<size_t>(kMaxProps));
  if (req.kind == Propfind::Kind::PropName) FUZZ_ASSERT(req.props.empty());
  for (size_t i = 0; i < req.props.size(); i++) {
    FUZZ_ASSERT(!req.props[i].name.empty());
    for (size_t k = 0; k < i; k++) FUZZ_ASSERT(!(req.props[k] == req.props[i]));
  }
  // Written back, it reads the same.
  std::string again = write(req);
  ParseResult r2 = parsePropfind(again);
  FUZZ_ASSERT(r2.ok);
  FUZZ_ASSERT(r2.request.kind == req.kind && r2.request.props == req.props);
  // The answer to it is XML a client can read, for a file and a folder.
  std::vector<Resource> res = {
      {"/dav/m/", "", true, 0, 0, "", ""},
      {"/dav/m/a <&> \"b\".mkv", "", false, 42, 1'700'000'000'000, "\"e&1\"", "video/x-matroska"}};
  FUZZ_ASSERT(wellFormed(multistatus(res, req)));
  return 0;
}
