// Range math: wire parsing, resolution against a length, the headers built
// from it, upstream Content-Range parsing and If-Range.
#include <catch2/catch.hpp>

#include "policy/policy.h"

using namespace slip::policy;
using Kind = WireRange::Kind;
using AKind = RangeAnswer::Kind;

namespace {
constexpr uint64_t kMax = UINT64_MAX;
constexpr std::optional<uint64_t> kOpen = std::nullopt;
}  // namespace

TEST_CASE("parseRange wire forms", "[range]") {
  struct Row {
    const char* in;
    Kind kind;
    uint64_t first;
    std::optional<uint64_t> last;
    uint64_t suffix;
    bool invalid;
  };
  const Row rows[] = {
      // well-formed singles
      {"bytes=0-499", Kind::Single, 0, 499, 0, false},
      {"bytes=500-999", Kind::Single, 500, 999, 0, false},
      {"bytes=0-0", Kind::Single, 0, 0, 0, false},
      {"bytes=7-7", Kind::Single, 7, 7, 0, false},
      {"bytes=0-", Kind::Single, 0, kOpen, 0, false},
      {"bytes=9500-", Kind::Single, 9500, kOpen, 0, false},
      {"bytes=0-18446744073709551615", Kind::Single, 0, kMax, 0, false},
      {"bytes=18446744073709551615-", Kind::Single, kMax, kOpen, 0, false},
      {"bytes=00010-00020", Kind::Single, 10, 20, 0, false},
      // suffix
      {"bytes=-500", Kind::Suffix, 0, kOpen, 500, false},
      {"bytes=-1", Kind::Suffix, 0, kOpen, 1, false},
      {"bytes=-0", Kind::Suffix, 0, kOpen, 0, false},
      // unit case and whitespace (OWS)
      {"BYTES=0-1", Kind::Single, 0, 1, 0, false},
      {"Bytes=-5", Kind::Suffix, 0, kOpen, 5, false},
      {"bytes= 0-1", Kind::Single, 0, 1, 0, false},
      {"bytes=0 - 1", Kind::Single, 0, 1, 0, false},
      {"bytes=\t3-\t4 ", Kind::Single, 3, 4, 0, false},
      {"  bytes=1-2  ", Kind::Single, 1, 2, 0, false},
      {"bytes = 1-2", Kind::Single, 1, 2, 0, false},
      {"bytes=- 7", Kind::Suffix, 0, kOpen, 7, false},
      // empty list elements are ignored (RFC 9110 §5.6.1)
      {"bytes=0-1,", Kind::Single, 0, 1, 0, false},
      {"bytes=, 0-1", Kind::Single, 0, 1, 0, false},
      // multiple
      {"bytes=0-1,5-6", Kind::Multiple, 0, kOpen, 0, false},
      {"bytes=0-1, 5-6", Kind::Multiple, 0, kOpen, 0, false},
      {"bytes=0-, -5", Kind::Multiple, 0, kOpen, 0, false},
      {"bytes=0-1,0-1", Kind::Multiple, 0, kOpen, 0, false},
      // ignored: invalid
      {"bytes=", Kind::None, 0, kOpen, 0, true},
      {"bytes=,", Kind::None, 0, kOpen, 0, true},
      {"bytes= , ", Kind::None, 0, kOpen, 0, true},
      {"bytes=-", Kind::None, 0, kOpen, 0, true},
      {"bytes=5", Kind::None, 0, kOpen, 0, true},
      {"bytes=a-b", Kind::None, 0, kOpen, 0, true},
      {"bytes=1-a", Kind::None, 0, kOpen, 0, true},
      {"bytes=--5", Kind::None, 0, kOpen, 0, true},
      {"bytes=+1-2", Kind::None, 0, kOpen, 0, true},
      {"bytes=1-2-3", Kind::None, 0, kOpen, 0, true},
      {"bytes=0x10-0x20", Kind::None, 0, kOpen, 0, true},
      {"bytes=1 0-20", Kind::None, 0, kOpen, 0, true},
      {"bytes=500-499", Kind::None, 0, kOpen, 0, true},
      {"bytes=0-1,5-4", Kind::None, 0, kOpen, 0, true},
      {"bytes=0-1,x", Kind::None, 0, kOpen, 0, true},
      {"items=0-1", Kind::None, 0, kOpen, 0, true},
      {"bytes 0-1", Kind::None, 0, kOpen, 0, true},
      {"bytesx=0-1", Kind::None, 0, kOpen, 0, true},
      {"=0-1", Kind::None, 0, kOpen, 0, true},
      {"0-1", Kind::None, 0, kOpen, 0, true},
      {"bytes=99999999999999999999-", Kind::None, 0, kOpen, 0, true},
      {"bytes=0-18446744073709551616", Kind::None, 0, kOpen, 0, true},
      {"bytes=-18446744073709551616", Kind::None, 0, kOpen, 0, true},
      // absent header
      {"", Kind::None, 0, kOpen, 0, false},
  };
  for (const auto& r : rows) {
    INFO("Range: [" << r.in << "]");
    WireRange w = parseRange(r.in);
    CHECK(w.kind == r.kind);
    CHECK(w.first == r.first);
    CHECK(w.last == r.last);
    CHECK(w.suffix == r.suffix);
    CHECK(w.invalid == r.invalid);
  }
}

TEST_CASE("resolveRange against lengths 0, 1 and 1000", "[range]") {
  struct Row {
    const char* in;
    uint64_t length;
    AKind kind;
    ByteRange range;
  };
  const Row rows[] = {
      {"", 1000, AKind::Full, {0, 1000}},
      {"", 0, AKind::Full, {0, 0}},
      {"bytes=0-1,5-6", 1000, AKind::Full, {0, 1000}},
      {"bytes=junk", 1000, AKind::Full, {0, 1000}},
      {"bytes=0-", 1000, AKind::Partial, {0, 1000}},
      {"bytes=0-499", 1000, AKind::Partial, {0, 500}},
      {"bytes=500-", 1000, AKind::Partial, {500, 1000}},
      {"bytes=999-", 1000, AKind::Partial, {999, 1000}},
      {"bytes=999-999", 1000, AKind::Partial, {999, 1000}},
      {"bytes=1000-", 1000, AKind::Unsatisfiable, {0, 0}},
      {"bytes=1000-2000", 1000, AKind::Unsatisfiable, {0, 0}},
      {"bytes=500-5000", 1000, AKind::Partial, {500, 1000}},
      {"bytes=0-18446744073709551615", 1000, AKind::Partial, {0, 1000}},
      {"bytes=-1", 1000, AKind::Partial, {999, 1000}},
      {"bytes=-500", 1000, AKind::Partial, {500, 1000}},
      {"bytes=-1000", 1000, AKind::Partial, {0, 1000}},
      {"bytes=-5000", 1000, AKind::Partial, {0, 1000}},
      {"bytes=-0", 1000, AKind::Unsatisfiable, {0, 0}},
      {"bytes=0-", 1, AKind::Partial, {0, 1}},
      {"bytes=0-0", 1, AKind::Partial, {0, 1}},
      {"bytes=0-5", 1, AKind::Partial, {0, 1}},
      {"bytes=1-", 1, AKind::Unsatisfiable, {0, 0}},
      {"bytes=-1", 1, AKind::Partial, {0, 1}},
      {"bytes=-2", 1, AKind::Partial, {0, 1}},
      // Empty representation: no byte can be selected, not even by "0-".
      {"bytes=0-", 0, AKind::Unsatisfiable, {0, 0}},
      {"bytes=0-0", 0, AKind::Unsatisfiable, {0, 0}},
      {"bytes=-1", 0, AKind::Unsatisfiable, {0, 0}},
      {"bytes=-0", 0, AKind::Unsatisfiable, {0, 0}},
  };
  for (const auto& r : rows) {
    INFO("Range: [" << r.in << "] length " << r.length);
    RangeAnswer a = resolveRange(parseRange(r.in), r.length);
    CHECK(a.kind == r.kind);
    if (a.kind != AKind::Unsatisfiable) CHECK(a.range == r.range);
  }
}

TEST_CASE("Content-Range and upstream Range values", "[range]") {
  CHECK(contentRange({0, 500}, 1234) == "bytes 0-499/1234");
  CHECK(contentRange({999, 1000}, 1000) == "bytes 999-999/1000");
  CHECK(contentRange({0, 1}, 1) == "bytes 0-0/1");
  CHECK(contentRangeUnsatisfied(1234) == "bytes */1234");
  CHECK(contentRangeUnsatisfied(0) == "bytes */0");
  CHECK(upstreamRange({0, 1048576}) == "0-1048575");
  CHECK(upstreamRange({5, 6}) == "5-5");

  const std::pair<const char*, const char*> wire[] = {
      {"bytes=0-", "bytes=0-"},
      {"bytes=0-499", "bytes=0-499"},
      {"BYTES = 7 - 9", "bytes=7-9"},
      {"bytes=-500", "bytes=-500"},
      {"bytes=-0", "bytes=-0"},
      {"bytes=0-1,2-3", ""},
      {"bytes=x", ""},
      {"", ""},
  };
  for (const auto& [in, out] : wire) {
    INFO("Range: [" << in << "]");
    CHECK(wireRangeHeader(parseRange(in)) == out);
  }
}

TEST_CASE("parseContentRange", "[range]") {
  struct Row {
    const char* in;
    bool ok;
    std::optional<ByteRange> range;
    std::optional<uint64_t> length;
  };
  const Row rows[] = {
      {"bytes 0-499/1234", true, ByteRange{0, 500}, 1234},
      {"bytes 1233-1233/1234", true, ByteRange{1233, 1234}, 1234},
      {"Bytes 0-0/1", true, ByteRange{0, 1}, 1},
      {"bytes 0-499/*", true, ByteRange{0, 500}, std::nullopt},
      {"bytes */1234", true, std::nullopt, 1234},
      {"bytes */0", true, std::nullopt, 0},
      {" bytes 5-9/10 ", true, ByteRange{5, 10}, 10},
      {"bytes 0-18446744073709551614/18446744073709551615", true,
       ByteRange{0, 18446744073709551615ULL}, 18446744073709551615ULL},
      {"", false, {}, {}},
      {"bytes", false, {}, {}},
      {"bytes */*", false, {}, {}},
      {"bytes 0-499", false, {}, {}},
      {"bytes 0-499/", false, {}, {}},
      {"bytes 500-499/1234", false, {}, {}},
      {"bytes 0-1234/1234", false, {}, {}},
      {"bytes 0-0/0", false, {}, {}},
      {"bytes -5/10", false, {}, {}},
      {"bytes 5-/10", false, {}, {}},
      {"bytes 0-1/x", false, {}, {}},
      {"bytes 0-1/-1", false, {}, {}},
      {"bytes a-b/10", false, {}, {}},
      {"bytes=0-1/10", false, {}, {}},
      {"items 0-1/10", false, {}, {}},
      {"bytes 0 - 1/10", false, {}, {}},
      {"bytes 0-99999999999999999999/*", false, {}, {}},
      // Found by the content_range fuzz target: the last byte 2^64-1 has no
      // half-open end, and used to wrap to the empty range [0, 0).
      {"bytes 0-18446744073709551615/*", false, {}, {}},
      {"bytes 18446744073709551615-18446744073709551615/*", false, {}, {}},
      {"bytes 0-18446744073709551614/*", true, ByteRange{0, 18446744073709551615ULL}, std::nullopt},
  };
  for (const auto& r : rows) {
    INFO("Content-Range: [" << r.in << "]");
    auto cr = parseContentRange(r.in);
    REQUIRE(cr.has_value() == r.ok);
    if (!cr) continue;
    CHECK(cr->range == r.range);
    CHECK(cr->length == r.length);
  }
}

TEST_CASE("ifRangeAllows", "[range]") {
  const char* lm = "Wed, 21 Oct 2015 07:28:00 GMT";
  struct Row {
    const char* ifRange;
    const char* etag;
    const char* lastModified;
    bool allows;
  };
  const Row rows[] = {
      {"", "\"abc\"", lm, true},
      {"", "", "", true},
      {"\"abc\"", "\"abc\"", lm, true},
      {" \"abc\" ", "\"abc\"", lm, true},
      {"\"abc\"", "\"abd\"", lm, false},
      {"\"abc\"", "", lm, false},
      {"\"abc\"", "W/\"abc\"", lm, false},
      {"W/\"abc\"", "W/\"abc\"", lm, false},
      {"W/\"abc\"", "\"abc\"", lm, false},
      {"\"ab", "\"ab", lm, false},
      {lm, "\"abc\"", lm, true},
      {lm, "", lm, true},
      {"Wed, 21 Oct 2015 07:28:01 GMT", "\"abc\"", lm, false},
      {"wed, 21 oct 2015 07:28:00 gmt", "\"abc\"", lm, false},
      {lm, "\"abc\"", "", false},
  };
  for (const auto& r : rows) {
    INFO("If-Range: [" << r.ifRange << "] etag [" << r.etag << "] last-modified [" << r.lastModified
                       << "]");
    CHECK(ifRangeAllows(r.ifRange, r.etag, r.lastModified) == r.allows);
  }
}
