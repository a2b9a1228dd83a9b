// classifyUpstream row by row: every kind of ask, every status the paths
// distinguish, and the malformed headers an upstream can send.
#include <catch2/catch.hpp>

#include "policy/policy.h"

using namespace slip::policy;
using V = UpstreamVerdict;

namespace {

// When the answers arrive: 90 s before Wed, 21 Oct 2015 07:28:00 GMT.
constexpr int64_t kNow = 1445412480 - 90;

UpstreamAnswer ans(int status, std::string cr = "", std::optional<uint64_t> len = std::nullopt,
                   std::string etag = "", std::string retryAfter = "") {
  UpstreamAnswer a;
  a.status = status;
  a.contentRange = std::move(cr);
  a.contentLength = len;
  a.etag = std::move(etag);
  a.retryAfter = std::move(retryAfter);
  return a;
}

struct Row {
  const char* what;
  UpstreamAnswer answer;
  V verdict;
  std::optional<uint64_t> total;
  int64_t retryAfterMs = -1;
};

void check(const UpstreamAsk& ask, const std::vector<Row>& rows) {
  for (const auto& r : rows) {
    INFO(r.what << " (status " << r.answer.status << ", Content-Range '" << r.answer.contentRange << "')");
    UpstreamJudgement j = classifyUpstream(ask, r.answer, kNow);
    CHECK(upstreamVerdictName(j.verdict) == std::string(upstreamVerdictName(r.verdict)));
    CHECK(j.total == r.total);
    CHECK(j.retryAfterMs == r.retryAfterMs);
  }
}

}  // namespace

TEST_CASE("classify: the probe (bytes=0-0)", "[upstream]") {
  UpstreamAsk ask;
  ask.kind = UpstreamAsk::Kind::Probe;
  check(ask, {
      {"206 with the size", ans(206, "bytes 0-0/1000"), V::Ok, 1000},
      {"206 with an unknown size", ans(206, "bytes 0-0/*"), V::BadAnswer, std::nullopt},
      {"206 without Content-Range", ans(206), V::BadAnswer, std::nullopt},
      {"206 with garbage", ans(206, "bytes zero/lots"), V::BadAnswer, std::nullopt},
      {"200 with a length: ignores ranges", ans(200, "", 5000), V::IgnoresRanges, 5000},
      {"200 without a length", ans(200), V::IgnoresRanges, std::nullopt},
      {"416 of an empty object", ans(416, "bytes */0"), V::Ok, 0},
      {"416 without Content-Range: empty", ans(416), V::Ok, 0},
      {"416 of a non-empty object", ans(416, "bytes */77"), V::BadAnswer, 77},
      {"401", ans(401), V::Denied, std::nullopt},
      {"403", ans(403), V::Denied, std::nullopt},
      {"410", ans(410), V::Denied, std::nullopt},
      {"404", ans(404), V::Gone, std::nullopt},
      {"429 with Retry-After", ans(429, "", {}, "", "3"), V::Busy, std::nullopt, 3000},
      {"503 without Retry-After", ans(503), V::Busy, std::nullopt, -1},
      {"503 with an HTTP-date Retry-After", ans(503, "", {}, "", "Wed, 21 Oct 2015 07:28:00 GMT"), V::Busy,
       std::nullopt, 90'000},
      {"503 with an unreadable Retry-After", ans(503, "", {}, "", "soon"), V::Busy, std::nullopt, -1},
      {"500", ans(500, "", {}, "", "1"), V::ServerError, std::nullopt, 1000},
      {"502", ans(502), V::ServerError, std::nullopt},
      {"400", ans(400), V::BadStatus, std::nullopt},
      {"302 left over (redirects not followed)", ans(302), V::BadStatus, std::nullopt},
      {"204", ans(204), V::BadStatus, std::nullopt},
  });
}

TEST_CASE("classify: a piece of a known version", "[upstream]") {
  UpstreamAsk ask;
  ask.kind = UpstreamAsk::Kind::Piece;
  ask.range = {1000, 2000};
  ask.size = 10'000;
  ask.etag = "\"v1\"";
  check(ask, {
      {"exactly the range", ans(206, "bytes 1000-1999/10000", 1000, "\"v1\""), V::Ok, 10'000},
      {"more than asked (we cut it)", ans(206, "bytes 1000-4999/10000"), V::Ok, 10'000},
      {"no ETag in the answer", ans(206, "bytes 1000-1999/10000"), V::Ok, 10'000},
      {"unknown total is accepted", ans(206, "bytes 1000-1999/*"), V::Ok, std::nullopt},
      {"another size", ans(206, "bytes 1000-1999/10001"), V::Changed, 10'001},
      {"another ETag", ans(206, "bytes 1000-1999/10000", {}, "\"v2\""), V::Changed, 10'000},
      {"starts elsewhere", ans(206, "bytes 999-1999/10000"), V::BadAnswer, 10'000},
      {"ends short", ans(206, "bytes 1000-1998/10000"), V::BadAnswer, 10'000},
      {"no range, only a size", ans(206, "bytes */10000"), V::Changed, 10'000},
      {"no Content-Range", ans(206), V::BadAnswer, std::nullopt},
      {"garbage Content-Range", ans(206, "items 1-2/3"), V::BadAnswer, std::nullopt},
      {"200, same length: ignores ranges", ans(200, "", 10'000), V::IgnoresRanges, 10'000},
      {"200, other length: changed", ans(200, "", 9'999), V::Changed, 9'999},
      {"200, no length: changed", ans(200), V::Changed, std::nullopt},
      {"416: changed", ans(416, "bytes */500"), V::Changed, std::nullopt},
      {"403", ans(403), V::Denied, std::nullopt},
      {"404", ans(404), V::Gone, std::nullopt},
      {"429", ans(429, "", {}, "", "2"), V::Busy, std::nullopt, 2000},
      {"503", ans(503), V::Busy, std::nullopt},
      {"500", ans(500), V::ServerError, std::nullopt},
      {"400", ans(400), V::BadStatus, std::nullopt},
  });
  // Without a known ETag any ETag is accepted.
  ask.etag = "";
  CHECK(classifyUpstream(ask, ans(206, "bytes 1000-1999/10000", {}, "\"zz\""), kNow).verdict == V::Ok);
}

TEST_CASE("classify: a whole-body stream of a known version", "[upstream]") {
  UpstreamAsk ask;
  ask.kind = UpstreamAsk::Kind::Whole;
  ask.size = 5000;
  ask.etag = "\"a\"";
  check(ask, {
      {"200 same length and ETag", ans(200, "", 5000, "\"a\""), V::Ok, 5000},
      {"200 without a length", ans(200), V::Ok, std::nullopt},
      {"200 other length", ans(200, "", 4000), V::Changed, 4000},
      {"200 other ETag", ans(200, "", 5000, "\"b\""), V::Changed, 5000},
      {"206 to no Range", ans(206, "bytes 0-99/5000"), V::BadAnswer, std::nullopt},
      {"416 to no Range", ans(416), V::BadAnswer, std::nullopt},
      {"404", ans(404), V::Gone, std::nullopt},
      {"503", ans(503, "", {}, "", "1"), V::Busy, std::nullopt, 1000},
      {"410", ans(410), V::Denied, std::nullopt},
  });
}

TEST_CASE("classify: the client's range forwarded (cache = off)", "[upstream]") {
  UpstreamAsk ask;
  ask.kind = UpstreamAsk::Kind::Stream;
  ask.wire = parseRange("bytes=100-199");
  check(ask, {
      {"206 as asked", ans(206, "bytes 100-199/1000"), V::Ok, 1000},
      {"206 starting elsewhere", ans(206, "bytes 0-199/1000"), V::BadAnswer, 1000},
      {"206 without a total", ans(206, "bytes 100-199/*"), V::BadAnswer, std::nullopt},
      {"206 without Content-Range", ans(206), V::BadAnswer, std::nullopt},
      {"200: the upstream ignored Range", ans(200, "", 1000), V::IgnoresRanges, 1000},
      {"200 without a length", ans(200), V::IgnoresRanges, std::nullopt},
      {"416 with the size", ans(416, "bytes */50"), V::Unsatisfiable, 50},
      {"416 without", ans(416), V::Unsatisfiable, 0},
      {"404", ans(404), V::Gone, std::nullopt},
      {"401", ans(401), V::Denied, std::nullopt},
      {"503", ans(503), V::Busy, std::nullopt},
      {"500", ans(500), V::ServerError, std::nullopt},
      {"418", ans(418), V::BadStatus, std::nullopt},
  });
  // A suffix range: any 206 start is fine (the upstream computes it).
  ask.wire = parseRange("bytes=-100");
  CHECK(classifyUpstream(ask, ans(206, "bytes 900-999/1000"), kNow).verdict == V::Ok);
  // No Range sent: a 200 is simply the answer, a 206 is not.
  ask.wire = parseRange("");
  check(ask, {
      {"200", ans(200, "", 10), V::Ok, 10},
      {"206 to no Range", ans(206, "bytes 0-9/10"), V::BadAnswer, 10},
  });
  ask.wire = parseRange("bytes=0-1,5-6");  // several ranges are not forwarded
  CHECK(classifyUpstream(ask, ans(200, "", 10), kNow).verdict == V::Ok);
}

TEST_CASE("classify: the range a piece or stream carries", "[upstream]") {
  UpstreamAsk ask;
  ask.kind = UpstreamAsk::Kind::Piece;
  ask.range = {0, 10};
  ask.size = 100;
  CHECK(classifyUpstream(ask, ans(206, "bytes 0-49/100"), kNow).range == ByteRange{0, 50});
  ask.kind = UpstreamAsk::Kind::Stream;
  ask.wire = parseRange("bytes=-10");
  CHECK(classifyUpstream(ask, ans(206, "bytes 90-99/100"), kNow).range == ByteRange{90, 100});
}

TEST_CASE("Retry-After through the one parser: seconds or a date, bounded", "[upstream]") {
  UpstreamAsk ask;  // parseRetryAfter's own table is in http_date_test.cc
  auto wait = [&](int status, const char* value) {
    return classifyUpstream(ask, ans(status, "", {}, "", value), kNow).retryAfterMs;
  };
  CHECK(wait(503, "0") == 0);
  CHECK(wait(429, "120") == 120'000);
  CHECK(wait(503, " 7 ") == 7'000);                            // optional whitespace
  CHECK(wait(503, "Wed, 21 Oct 2015 07:29:00 GMT") == 150'000);  // a date counts from now
  CHECK(wait(503, "Wed, 21 Oct 2015 07:00:00 GMT") == 0);        // a date in the past: at once
  CHECK(wait(503, "Sunday, 06-Nov-94 08:49:37 GMT") == 0);
  CHECK(wait(503, "99999999999999999") == kRetryAfterMaxSeconds * 1000);  // saturates, no overflow
  CHECK(wait(503, "9223372036854775807") == kRetryAfterMaxSeconds * 1000);
  CHECK(wait(503, "") == -1);
  CHECK(wait(503, "-1") == -1);
  CHECK(wait(503, "1.5") == -1);
  CHECK(wait(500, "3") == 3'000);   // ServerError reads it too
  CHECK(wait(404, "3") == -1);      // other verdicts never wait
  CHECK(wait(200, "3") == -1);
}

TEST_CASE("verdict names are stable codes", "[upstream]") {
  CHECK(std::string(upstreamVerdictName(V::Ok)) == "ok");
  CHECK(std::string(upstreamVerdictName(V::IgnoresRanges)) == "ignores_ranges");
  CHECK(std::string(upstreamVerdictName(V::BadAnswer)) == "bad_answer");
}

TEST_CASE("classify: an encoded body is a permanent bad answer on every ask (issue 9 #2)", "[upstream]") {
  auto enc = [](int status, std::string cr, std::optional<uint64_t> len, std::string coding) {
    UpstreamAnswer a = ans(status, std::move(cr), len);
    a.contentEncoding = std::move(coding);
    return a;
  };
  UpstreamAsk probe;
  UpstreamAsk piece;
  piece.kind = UpstreamAsk::Kind::Piece;
  piece.range = {0, 100};
  piece.size = 1000;
  UpstreamAsk whole;
  whole.kind = UpstreamAsk::Kind::Whole;
  whole.size = 1000;
  UpstreamAsk stream;
  stream.kind = UpstreamAsk::Kind::Stream;
  stream.wire = parseRange("bytes=0-99");
  struct EncRow {
    const char* what;
    const UpstreamAsk& ask;
    UpstreamAnswer answer;
    V verdict;
    bool permanent;
  };
  const std::vector<EncRow> rows = {
      {"probe 206 gzip", probe, enc(206, "bytes 0-0/1000", 1, "gzip"), V::BadAnswer, true},
      {"probe 200 br", probe, enc(200, "", 1000, "br"), V::BadAnswer, true},
      {"piece 206 gzip", piece, enc(206, "bytes 0-99/1000", 100, "gzip"), V::BadAnswer, true},
      {"piece 206 GZIP, case-insensitive", piece, enc(206, "bytes 0-99/1000", 100, "GZIP"), V::BadAnswer, true},
      {"piece 206 a list ending in gzip", piece, enc(206, "bytes 0-99/1000", 100, "identity, gzip"), V::BadAnswer,
       true},
      {"piece 200 deflate (would be ignores_ranges)", piece, enc(200, "", 1000, "deflate"), V::BadAnswer, true},
      {"whole 200 gzip", whole, enc(200, "", 1000, "gzip"), V::BadAnswer, true},
      {"stream 206 gzip", stream, enc(206, "bytes 0-99/1000", 100, "gzip"), V::BadAnswer, true},
      {"stream 200 x-anything", stream, enc(200, "", 1000, "x-anything"), V::BadAnswer, true},
      {"identity is the bytes", piece, enc(206, "bytes 0-99/1000", 100, "identity"), V::Ok, false},
      {"Identity, spaces, empty list items", piece, enc(206, "bytes 0-99/1000", 100, " Identity ,, "), V::Ok,
       false},
      {"no Content-Encoding", piece, enc(206, "bytes 0-99/1000", 100, ""), V::Ok, false},
      {"a 503 with gzip is still busy", piece, enc(503, "", {}, "gzip"), V::Busy, false},
      {"a 404 with gzip is still gone", piece, enc(404, "", {}, "gzip"), V::Gone, false},
  };
  for (const auto& r : rows) {
    INFO(r.what);
    UpstreamJudgement j = classifyUpstream(r.ask, r.answer, kNow);
    CHECK(upstreamVerdictName(j.verdict) == std::string(upstreamVerdictName(r.verdict)));
    CHECK(j.permanent == r.permanent);
    if (r.verdict == V::BadAnswer) CHECK(j.detail.find("Content-Encoding") != std::string::npos);
  }
}

TEST_CASE("classify: which failures are permanent (issue 9 #11)", "[upstream]") {
  UpstreamAsk ask;
  ask.kind = UpstreamAsk::Kind::Piece;
  ask.range = {0, 10};
  ask.size = 100;
  CHECK(classifyUpstream(ask, ans(400), kNow).permanent);
  CHECK(classifyUpstream(ask, ans(405), kNow).permanent);
  CHECK(classifyUpstream(ask, ans(302), kNow).permanent);
  CHECK_FALSE(classifyUpstream(ask, ans(408), kNow).permanent);  // timed out: asking again may work
  CHECK(classifyUpstream(ask, ans(408), kNow).verdict == V::ServerError);
  CHECK_FALSE(classifyUpstream(ask, ans(500), kNow).permanent);
  CHECK_FALSE(classifyUpstream(ask, ans(503), kNow).permanent);
  // The same answer again: not implemented, version, a loop (a gateway's 508 self_request).
  for (int st : {501, 505, 508}) {
    CAPTURE(st);
    CHECK(classifyUpstream(ask, ans(st), kNow).permanent);
    CHECK(classifyUpstream(ask, ans(st), kNow).verdict == V::BadStatus);
  }
  CHECK_FALSE(classifyUpstream(ask, ans(206, "bytes 5-9/100"), kNow).permanent);  // another node may do better
}
