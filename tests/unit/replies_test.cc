// proxy/sources/replies: every field of the AList and Aliyundrive Open
// replies read with a type check; malformed replies are a Problem, never an
// exception.
#include "proxy/sources/replies.h"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

using namespace slip::proxy::replies;
using Kind = Problem::Kind;

namespace {

const char* kindName(Kind k) {
  return k == Kind::None ? "none" : k == Kind::Contract ? "contract" : "header";
}

}  // namespace

TEST_CASE("AList link replies: good shapes", "[replies]") {
  AlistLink l;
  Problem p = parseAlistLink(
      R"({"code":200,"message":"success","data":{"url":"https://cdn.example/a.mkv?x=1",)"
      R"("header":{"Referer":["https://www.alipan.com/"],"Cookie":["a=1","b=2"]}}})",
      &l);
  INFO(p.why);
  REQUIRE_FALSE(p);
  CHECK(l.code == 200);
  CHECK(l.message == "success");
  CHECK(l.url == "https://cdn.example/a.mkv?x=1");
  REQUIRE(l.headers.size() == 3);
  CHECK(l.headers[0] == std::pair<std::string, std::string>{"Cookie", "a=1"});
  CHECK(l.headers[1] == std::pair<std::string, std::string>{"Cookie", "b=2"});
  CHECK(l.headers[2] == std::pair<std::string, std::string>{"Referer", "https://www.alipan.com/"});

  struct Case {
    const char* body;
    int64_t code;
    const char* url;
    size_t headers;
  };
  const Case good[] = {
      {R"({"code":200,"data":{"url":"http://h/x"}})", 200, "http://h/x", 0},
      {R"({"code":200,"message":null,"data":{"url":"http://h/x","header":null}})", 200,
       "http://h/x", 0},
      {R"({"code":200,"data":{"url":"//h/x","header":{}}})", 200, "http://h/x", 0},
      {R"({"code":200,"data":{"url":"http://h/x","header":{"X-A":null}}})", 200, "http://h/x", 0},
      {R"({"code":200,"data":{"url":"http://h/x","header":{"X-A":[]}}})", 200, "http://h/x", 0},
      {R"({"code":200.0,"data":{"url":"http://h/x","extra":[1,2]},"more":{}})", 200, "http://h/x",
       0},
      {R"({"code":200,"data":{"url":"http://h/x","header":{"X-Tab":["a\tb"]}}})", 200, "http://h/x",
       1},
      // Errors as HTTP 200 are a valid reply: the caller reports them.
      {R"({"code":500,"message":"object not found","data":null})", 500, "", 0},
      {R"({"code":401,"message":"token is invalidated"})", 401, "", 0},
      {R"({"code":4294967496,"message":"x"})", 4294967496LL, "", 0},  // no wrap to 200
      {R"({"code":-1})", -1, "", 0},
  };
  for (const Case& c : good) {
    AlistLink out;
    Problem q = parseAlistLink(c.body, &out);
    INFO(c.body << " → " << q.why);
    CHECK_FALSE(q);
    CHECK(out.code == c.code);
    CHECK(out.url == c.url);
    CHECK(out.headers.size() == c.headers);
  }
}

TEST_CASE("AList link replies: malformed shapes are problems with reasons", "[replies]") {
  struct Case {
    std::string body;
    Kind kind;
    const char* why;
  };
  const Case bad[] = {
      {"", Kind::Contract, "not JSON"},
      {"<html>502 Bad Gateway</html>", Kind::Contract, "not JSON"},
      {"[1,2]", Kind::Contract, "not a JSON object"},
      {"\"ok\"", Kind::Contract, "not a JSON object"},
      {"null", Kind::Contract, "not a JSON object"},
      {R"({"code":200,"data":{"url":"http://h/x"})", Kind::Contract, "not JSON"},  // cut short
      {R"({"message":"x"})", Kind::Contract, "code is missing"},
      {R"({"code":null})", Kind::Contract, "code is missing"},
      {R"({"code":"200","data":{"url":"http://h/x"}})", Kind::Contract,
       "code is a string, not a number"},
      {R"({"code":true})", Kind::Contract, "code is a boolean"},
      {R"({"code":[200]})", Kind::Contract, "code is a list"},
      {R"({"code":{"v":200}})", Kind::Contract, "code is an object"},
      {R"({"code":1e300})", Kind::Contract, "not an integer of 64 bits"},
      {R"({"code":-1e300})", Kind::Contract, "not an integer of 64 bits"},
      {R"({"code":200.5})", Kind::Contract, "not an integer of 64 bits"},
      {R"({"code":18446744073709551816})", Kind::Contract, "not an integer"},  // past 2^64: a float
      {R"({"code":9223372036854775808})", Kind::Contract, "not an integer of 64 bits"},
      {R"({"code":200,"message":5,"data":{"url":"http://h/x"}})", Kind::Contract,
       "message is a number"},
      {R"({"code":200})", Kind::Contract, "data is missing"},
      {R"({"code":200,"data":null})", Kind::Contract, "data is missing"},
      {R"({"code":200,"data":"http://h/x"})", Kind::Contract, "data is a string, not an object"},
      {R"({"code":200,"data":["http://h/x"]})", Kind::Contract, "data is a list, not an object"},
      {R"({"code":200,"data":{}})", Kind::Contract, "data.url is missing"},
      {R"({"code":200,"data":{"url":""}})", Kind::Contract, "data.url is empty"},
      {R"({"code":200,"data":{"url":7}})", Kind::Contract, "data.url is a number, not a string"},
      {R"({"code":200,"data":{"url":["http://h/x"]}})", Kind::Contract, "data.url is a list"},
      {R"({"code":200,"data":{"url":"ftp://h/x"}})", Kind::Contract, "not an http(s) URL"},
      {R"({"code":200,"data":{"url":"file:///etc/passwd"}})", Kind::Contract, "not an http(s) URL"},
      {R"({"code":200,"data":{"url":"http://h/x","header":"Referer: x"}})", Kind::Contract,
       "data.header is a string, not a map"},
      {R"({"code":200,"data":{"url":"http://h/x","header":[["Referer","x"]]}})", Kind::Contract,
       "data.header is a list, not a map"},
      {R"({"code":200,"data":{"url":"http://h/x","header":{"Referer":"x"}}})", Kind::Contract,
       "data.header.Referer is a string, not a list of strings"},
      {R"({"code":200,"data":{"url":"http://h/x","header":{"Referer":[1]}}})", Kind::Contract,
       "data.header.Referer holds a number, not a string"},
      {R"({"code":200,"data":{"url":"http://h/x","header":{"Referer":[null]}}})", Kind::Contract,
       "holds null"},
      {R"({"code":200,"data":{"url":"http://h/x","header":{"Referer":[["x"]]}}})", Kind::Contract,
       "holds a list"},
      // Header injection and friends: Kind::Header, naming the header only.
      {R"({"code":200,"data":{"url":"http://h/x","header":{"X-A":["v\r\nX-Injected: 1"]}}})",
       Kind::Header, "header 'X-A': value contains CR, LF or NUL"},
      {R"({"code":200,"data":{"url":"http://h/x","header":{"X-A":["v\nX-Injected: 1"]}}})",
       Kind::Header, "value contains CR, LF or NUL"},
      {R"({"code":200,"data":{"url":"http://h/x","header":{"X-A":["v\u0000w"]}}})", Kind::Header,
       "value contains CR, LF or NUL"},
      {R"({"code":200,"data":{"url":"http://h/x","header":{"X-A":["v\u0007"]}}})", Kind::Header,
       "value contains a control character"},
      {R"({"code":200,"data":{"url":"http://h/x","header":{"X-A\r\nX-Injected":["1"]}}})",
       Kind::Header, "bad header name 'X-A\\x0d\\x0aX-Injected'"},
      {R"({"code":200,"data":{"url":"http://h/x","header":{"Bad Name":["1"]}}})", Kind::Header,
       "bad header name 'Bad Name'"},
      {R"({"code":200,"data":{"url":"http://h/x","header":{"":["1"]}}})", Kind::Header,
       "empty header name"},
      {R"({"code":200,"data":{"url":"http://h/x","header":{"Content-Length":["0"]}}})",
       Kind::Header, "'Content-Length' is set by slipstream itself"},
      {R"({"code":200,"data":{"url":"http://h/x","header":{"Transfer-Encoding":["chunked"]}}})",
       Kind::Header, "set by slipstream itself"},
      {R"({"code":200,"data":{"url":"http://h/x","header":{"Range":["bytes=0-"]}}})", Kind::Header,
       "set by slipstream itself"},
      {"{\"code\":200,\"data\":{\"url\":\"http://h/\xff\"}}", Kind::Contract,
       "not JSON"},  // bad UTF-8
      {std::string(100'000, '['), Kind::Contract, "not JSON"},
      {std::string(50'000, '[') + std::string(50'000, ']'), Kind::Contract, "not a JSON object"},
  };
  for (const Case& c : bad) {
    AlistLink out;
    Problem p;
    INFO(c.body.substr(0, 200));
    REQUIRE_NOTHROW(p = parseAlistLink(c.body, &out));
    INFO("got " << kindName(p.kind) << ": " << p.why);
    CHECK(p.kind == c.kind);
    CHECK(p.why.find(c.why) != std::string::npos);
    CHECK(p.why.find("X-Injected: 1") == std::string::npos);  // values are never quoted
  }
}

TEST_CASE("Aliyundrive replies: lists, links, drives, tokens", "[replies]") {
  ListPage page;
  REQUIRE_FALSE(parseListPage(R"({"items":[{"file_id":"a1","name":"Movies","type":"folder"},)"
                              R"({"file_id":"b2","name":"x.mkv","type":"file","size":5}],)"
                              R"("next_marker":"m2"})",
                              &page));
  REQUIRE(page.items.size() == 2);
  CHECK(page.items[0].folder);
  CHECK(page.items[1].size == 5);
  CHECK(page.items[1].name == "x.mkv");
  CHECK_FALSE(page.items[1].folder);
  CHECK(page.nextMarker == "m2");
  ListPage dated;
  REQUIRE_FALSE(
      parseListPage(R"({"items":[{"file_id":"c","name":"d.mkv","type":"file","size":4294967496,)"
                    R"("updated_at":"2024-05-01T10:00:00.000Z","content_hash":"AB12"},)"
                    R"({"file_id":"e","name":"f","type":"file","updated_at":"yesterday"}]})",
                    &dated));
  REQUIRE(dated.items.size() == 2);
  CHECK(dated.items[0].size == 4294967496ULL);
  CHECK(dated.items[0].updatedMs == 1714557600000LL);
  CHECK(dated.items[0].contentHash == "AB12");
  CHECK_FALSE(dated.items[1].updatedMs);  // not ISO: ignored, not a failure
  ListPage last;
  REQUIRE_FALSE(parseListPage(R"({"items":[],"next_marker":""})", &last));
  CHECK(last.nextMarker.empty());
  REQUIRE_FALSE(parseListPage(R"({"items":[],"next_marker":null})", &last));

  DownloadUrl link;
  REQUIRE_FALSE(parseDownloadUrl(
      R"({"url":"https://cn-beijing-data.aliyundrive.net/x?sign=1","expiration":"2024-05-01T10:00:00.500Z","method":"GET"})",
      &link));
  CHECK(link.url.starts_with("https://"));
  CHECK(link.expirationMs == 1714557600500LL);
  DownloadUrl noExpiry;
  REQUIRE_FALSE(parseDownloadUrl(R"({"url":"http://h/x"})", &noExpiry));
  CHECK_FALSE(noExpiry.expirationMs);

  std::string drive;
  REQUIRE_FALSE(
      parseDriveId(R"({"default_drive_id":"1","resource_drive_id":"2"})", "resource", &drive));
  CHECK(drive == "2");
  drive.clear();
  REQUIRE_FALSE(
      parseDriveId(R"({"default_drive_id":"1","backup_drive_id":null})", "backup", &drive));
  CHECK(drive.empty());

  TokenReply t;
  REQUIRE_FALSE(parseTokenReply(
      R"({"access_token":"eyJ.a.b","refresh_token":"eyJ.c.d","expires_in":7200,"token_type":"Bearer"})",
      &t));
  CHECK(t.expiresInSec == 7200);
  TokenReply d;
  REQUIRE_FALSE(parseTokenReply(R"({"access_token":"a","refresh_token":"r"})", &d));
  CHECK(d.expiresInSec == 7200);

  struct Case {
    const char* what;
    std::string body;
    const char* why;
  };
  const Case bad[] = {
      {"list", R"({"next_marker":""})", "items is missing"},
      {"list", R"({"items":{"a":1}})", "items is an object, not a list"},
      {"list", R"({"items":"[]"})", "items is a string, not a list"},
      {"list", R"({"items":[5]})", "items[0] is not an object"},
      {"list", R"({"items":[{"name":"x","type":"file"}]})", "items[0].file_id is missing"},
      {"list", R"({"items":[{"file_id":7,"name":"x","type":"file"}]})",
       "items[0].file_id is a number"},
      {"list", R"({"items":[{"file_id":"a","name":null,"type":"file"}]})",
       "items[0].name is missing"},
      {"list", R"({"items":[{"file_id":"a","name":"","type":"file"}]})", "items[0].name is empty"},
      {"list", R"({"items":[{"file_id":"a","name":"n","type":true}]})",
       "items[0].type is a boolean"},
      {"list", R"({"items":[{"file_id":"a","name":"n","type":"file"},{"file_id":"b"}]})",
       "items[1].name"},
      {"list", R"({"items":[{"file_id":"a","name":"n","type":"file","size":"5"}]})",
       "items[0].size is a string, not a number"},
      {"list", R"({"items":[{"file_id":"a","name":"n","type":"file","size":-1}]})",
       "items[0].size is negative"},
      {"list", R"({"items":[{"file_id":"a","name":"n","type":"file","size":1e300}]})",
       "items[0].size is not an integer of 64 bits"},
      {"list", R"({"items":[{"file_id":"a","name":"n","type":"file","updated_at":5}]})",
       "items[0].updated_at is a number"},
      {"list", R"({"items":[{"file_id":"a","name":"n","type":"file","content_hash":[]}]})",
       "items[0].content_hash is a list"},
      {"list", R"({"items":[],"next_marker":5})", "next_marker is a number, not a string"},
      {"list", R"({"items":[],"next_marker":["m"]})", "next_marker is a list"},
      {"link", R"({"expiration":"2024-05-01T10:00:00Z"})", "url is missing"},
      {"link", R"({"url":null})", "url is missing"},
      {"link", R"({"url":{"u":"http://h"}})", "url is an object"},
      {"link", R"({"url":"javascript:void"})", "not an http(s) URL"},
      {"link", R"({"url":"http://h/x","expiration":1714557600})", "expiration is a number"},
      {"link", R"({"url":"http://h/x","expiration":"tomorrow"})", "not an ISO 8601 UTC time"},
      {"link", R"({"url":"http://h/x","expiration":"2024-13-01T10:00:00Z"})", "not an ISO 8601"},
      {"link", R"({"url":"http://h/x","expiration":"2024-05-01T10:00:00+08:00"})",
       "not an ISO 8601"},
      {"link", R"({"url":"http://h/x","expiration":"2024-05-01T10:00:00."})", "not an ISO 8601"},
      {"drive", R"({"resource_drive_id":2})", "resource_drive_id is a number, not a string"},
      {"drive", R"([{"resource_drive_id":"2"}])", "not a JSON object"},
      {"token", R"({"refresh_token":"r","expires_in":7200})", "access_token is missing"},
      {"token", R"({"access_token":"a","refresh_token":5})", "refresh_token is a number"},
      {"token", R"({"access_token":"a b","refresh_token":"r"})", "access_token holds characters"},
      {"token", R"({"access_token":"a\r\nX: 1","refresh_token":"r"})",
       "access_token holds characters"},
      {"token", R"({"access_token":"a","refresh_token":"r","expires_in":"7200"})",
       "expires_in is a string"},
      {"token", R"({"access_token":"a","refresh_token":"r","expires_in":1e300})",
       "not an integer of 64 bits"},
      {"token", R"({"access_token":"a","refresh_token":"r","expires_in":-5})", "out of range"},
      {"token", R"({"access_token":"a","refresh_token":"r","expires_in":0})", "out of range"},
      {"token", R"({"access_token":"a","refresh_token":"r","expires_in":99999999999})",
       "out of range"},
      {"helper", R"({"access_token":"a"})", "ok is missing"},
      {"helper", R"({"ok":"true","access_token":"a"})", "ok is missing or not a boolean"},
      {"helper", R"({"ok":true,"access_expires_ms":5})", "access_token is missing"},
      {"helper", R"({"ok":true,"access_token":"a","access_expires_ms":1e300})", "not an integer"},
      {"helper", R"({"ok":true,"access_token":"a","access_expires_ms":5,"persisted":"no"})",
       "persisted is a string"},
      {"helper", R"({"ok":false,"status":"401"})", "status is a string"},
      {"helper", R"({"ok":false,"refused":1})", "refused is a number"},
  };
  for (const Case& c : bad) {
    INFO(c.what << ": " << c.body);
    Problem p;
    std::string w = c.what;
    ListPage lp;
    DownloadUrl du;
    std::string id;
    TokenReply tr;
    HelperResult hr;
    REQUIRE_NOTHROW(p = w == "list"    ? parseListPage(c.body, &lp)
                        : w == "link"  ? parseDownloadUrl(c.body, &du)
                        : w == "drive" ? parseDriveId(c.body, "resource", &id)
                        : w == "token" ? parseTokenReply(c.body, &tr)
                                       : parseHelperResult(c.body, &hr));
    INFO("got " << kindName(p.kind) << ": " << p.why);
    CHECK(p.kind == Kind::Contract);
    CHECK(p.why.find(c.why) != std::string::npos);
  }

  std::string code, message;
  parseApiError(R"({"code":"AccessTokenInvalid","message":"AccessToken is invalid"})", &code,
                &message);
  CHECK(code == "AccessTokenInvalid");
  CHECK(message == "AccessToken is invalid");
  std::string c2, m2;
  REQUIRE_NOTHROW(parseApiError(R"({"code":429,"message":["x"]})", &c2, &m2));
  CHECK(c2.empty());
  CHECK(m2.empty());
  REQUIRE_NOTHROW(parseApiError("not json", &c2, &m2));
}

TEST_CASE("JSON numbers, UTF-8 and dumps that never throw", "[replies]") {
  using nlohmann::json;
  CHECK(jsonInt(json::parse("200")) == 200);
  CHECK(jsonInt(json::parse("-7")) == -7);
  CHECK(jsonInt(json::parse("200.0")) == 200);
  CHECK(jsonInt(json::parse("9223372036854775807")) == INT64_MAX);
  CHECK_FALSE(jsonInt(json::parse("9223372036854775808")));
  CHECK_FALSE(jsonInt(json::parse("1e300")));
  CHECK_FALSE(jsonInt(json::parse("1e16")));  // past 2^53: not exact as a float
  CHECK(jsonInt(json::parse("1e15")) == 1'000'000'000'000'000LL);
  CHECK_FALSE(jsonInt(json::parse("0.5")));
  CHECK_FALSE(jsonInt(json::parse("\"5\"")));
  CHECK_FALSE(jsonInt(json::parse("null")));
  CHECK_FALSE(jsonInt(json::parse("true")));

  CHECK(validUtf8("plain"));
  CHECK(validUtf8("\xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x8e\xac"));
  CHECK_FALSE(validUtf8("\xff"));
  CHECK_FALSE(validUtf8("\xc0\xaf"));          // overlong '/'
  CHECK_FALSE(validUtf8("\xe0\x80\xaf"));      // overlong
  CHECK_FALSE(validUtf8("\xed\xa0\x80"));      // surrogate
  CHECK_FALSE(validUtf8("\xf4\x90\x80\x80"));  // past U+10FFFF
  CHECK_FALSE(validUtf8("\xe4\xb8"));          // cut short
  CHECK_FALSE(validUtf8("a\x80"));

  std::string s;
  REQUIRE_NOTHROW(s = dumpJson(json{{"path", std::string("/\xff.mkv")}}));
  CHECK(s == "{\"path\":\"/\xef\xbf\xbd.mkv\"}");

  CHECK(parseIsoUtc("1970-01-01T00:00:00Z") == 0);
  CHECK(parseIsoUtc("2024-05-01T10:00:00.123456Z") == 1714557600123LL);
  CHECK(parseIsoUtc("2024-05-01T10:00:00+00:00") == 1714557600000LL);
  CHECK_FALSE(parseIsoUtc(""));
  CHECK_FALSE(parseIsoUtc("2024-05-01 10:00:00Z"));
  CHECK_FALSE(parseIsoUtc("2024-05-01T10:00:00"));
  CHECK_FALSE(parseIsoUtc("2024-05-01T10:00:00ZZ"));
  CHECK_FALSE(parseIsoUtc("+2024-05-01T10:00:00Z"));
  CHECK_FALSE(parseIsoUtc("2024-05-01T24:00:00Z"));
}
