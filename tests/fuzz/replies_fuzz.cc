// Every pure parser of a source's reply (proxy/sources/replies.h) on the
// same bytes: AList's link and list replies, the Aliyundrive Open replies
// (errors, drive info, list pages, download URLs, tokens) and the
// token-exchange helper's result line. Whatever the bytes: no crash, no
// exception, no sanitizer report, and what a parser accepts keeps the
// promises its callers rely on.
#include <nlohmann/json.hpp>
#include <string>

#include "conf/conf.h"
#include "proxy/sources/replies.h"
#include "tests/fuzz/fuzz.h"

using namespace slip::proxy::replies;

namespace {

bool httpUrl(const std::string& u) { return u.starts_with("http://") || u.starts_with("https://"); }

bool visibleAscii(const std::string& s) {
  if (s.empty()) return false;
  for (char c : s)
    if (c < 0x21 || c > 0x7e) return false;
  return true;
}

bool lowerHex(const std::string& s) {
  return s.find_first_not_of("0123456789abcdef") == std::string::npos && s.size() <= 128;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view body(reinterpret_cast<const char*>(data), size);

  AlistLink link;
  if (!parseAlistLink(body, &link) && link.code == 200) {
    FUZZ_ASSERT(httpUrl(link.url));
    for (const auto& [name, value] : link.headers)
      FUZZ_ASSERT(!slip::conf::headerProblem(name, value));
  }

  AlistList list;
  if (!parseAlistList(body, &list)) {
    FUZZ_ASSERT(list.total >= 0);
    for (const AlistItem& it : list.items) {
      FUZZ_ASSERT(!it.name.empty());
      FUZZ_ASSERT(!it.folder || (it.size == 0 && it.hash.empty()));
      FUZZ_ASSERT(!it.modifiedMs || *it.modifiedMs > 0);
      FUZZ_ASSERT(lowerHex(it.hash));
    }
  }

  std::string code, message, drive;
  parseApiError(body, &code, &message);
  parseDriveId(body, "resource", &drive);

  ListPage page;
  if (!parseListPage(body, &page))
    for (const ListItem& it : page.items) FUZZ_ASSERT(!it.id.empty() && !it.name.empty());

  DownloadUrl url;
  if (!parseDownloadUrl(body, &url)) {
    FUZZ_ASSERT(httpUrl(url.url));
    FUZZ_ASSERT(!url.expirationMs || *url.expirationMs >= 0);
  }

  TokenReply token;
  if (!parseTokenReply(body, &token)) {
    FUZZ_ASSERT(visibleAscii(token.accessToken) && visibleAscii(token.refreshToken));
    FUZZ_ASSERT(token.expiresInSec >= 1 && token.expiresInSec <= 30LL * 86'400);
  }

  HelperResult helper;
  if (!parseHelperResult(body, &helper) && helper.ok) FUZZ_ASSERT(visibleAscii(helper.accessToken));

  if (auto ms = parseIsoUtc(body)) FUZZ_ASSERT(*ms >= 0);
  // Whatever the bytes, a JSON string of them dumps without throwing.
  std::string dumped = dumpJson(nlohmann::json(std::string(body)));
  FUZZ_ASSERT(validUtf8(dumped));
  if (validUtf8(body))
    FUZZ_ASSERT(nlohmann::json::parse(dumped, nullptr, false).get<std::string>() == body);
  return 0;
}
