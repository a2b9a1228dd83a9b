// Link expiry read from signed URLs: every recognised form with real-looking
// links (shapes copied from the services' documentation and from links the
// services hand out, secrets replaced), precedence between forms, and
// malformed, implausible and overflowing values.
#include <catch2/catch.hpp>

#include "policy/policy.h"

using namespace slip::policy;
using F = LinkExpiryForm;

namespace {

// 2023-11-14T22:13:20Z = 1700000000 (`date -u -d @1700000000`).
constexpr int64_t kT = 1700000000;
constexpr int64_t kHourMs = 3'600'000;

struct Row {
  const char* what;
  const char* url;
  std::optional<int64_t> ms;
  F form;
};

void check(const Row& r) {
  INFO(r.what << ": " << r.url);
  auto e = linkExpiry(r.url);
  REQUIRE(e.has_value() == r.ms.has_value());
  if (!e) return;
  CHECK(e->unixMs == *r.ms);
  CHECK(e->form == r.form);
  CHECK(linkExpiryFormName(e->form) == std::string(linkExpiryFormName(r.form)));
}

}  // namespace

TEST_CASE("linkExpiry recognises the forms services write", "[linkexpiry]") {
  const Row rows[] = {
      {"Aliyun OSS V1 signed URL",
       "https://examplebucket.oss-cn-hangzhou.aliyuncs.com/video/a.mp4?OSSAccessKeyId=LTAI5tExample"
       "&Expires=1700003600&Signature=vQ6x%2BkK%2FS3nJ%2B4eFYV8Q0ZJ1Y8E%3D",
       kT * 1000 + kHourMs, F::Expires},
      {"Aliyundrive download link (OSS V2, x-oss-expires absolute)",
       "https://cn-beijing-data.aliyundrive.net/Qz3example%2F1234%2F65530e1?di=bj29&dr=123456&f=65530e1"
       "&response-content-disposition=attachment%3B%20filename%2A%3DUTF-8%27%27a.mkv"
       "&security-token=CAISvgJ1q6Ft5B2yfSjIr5example&u=abc&x-oss-access-key-id=STS.NTexample"
       "&x-oss-additional-headers=referer&x-oss-expires=1700003600"
       "&x-oss-signature=Vh0example%3D&x-oss-signature-version=OSS2",
       kT * 1000 + kHourMs, F::OssExpires},
      {"Aliyun OSS V4 (x-oss-date + relative x-oss-expires)",
       "https://examplebucket.oss-cn-hangzhou.aliyuncs.com/a.mkv?x-oss-credential="
       "LTAI5tExample%2F20231114%2Fcn-hangzhou%2Foss%2Faliyun_v4_request&x-oss-date=20231114T221320Z"
       "&x-oss-expires=3600&x-oss-signature=2a0b&x-oss-signature-version=OSS4-HMAC-SHA256",
       kT * 1000 + kHourMs, F::OssV4},
      {"Quark (OSS V1 style)",
       "https://video-h-zb.drive.quark.cn/f/abc/x.mp4?auth_key=1700000000-1234-0-0ab&sp=100"
       "&token=4-abc&ud=16-0-1-2-1-N-0-4-0-16&Expires=1700003600&OSSAccessKeyId=LTAIexample"
       "&Signature=abc%3D",
       kT * 1000 + kHourMs, F::Expires},
      {"S3 SigV4 (AWS documentation example)",
       "https://examplebucket.s3.amazonaws.com/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256"
       "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"
       "&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
       "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404",
       1369440000LL * 1000, F::AmzSigV4},
      {"MinIO presigned GET (SigV4, 7 days)",
       "http://127.0.0.1:9000/movies/a%20b.mkv?X-Amz-Algorithm=AWS4-HMAC-SHA256"
       "&X-Amz-Credential=minioadmin%2F20231114%2Fus-east-1%2Fs3%2Faws4_request"
       "&X-Amz-Date=20231114T221320Z&X-Amz-Expires=604800&X-Amz-SignedHeaders=host"
       "&X-Amz-Signature=0f1e",
       (kT + 604800) * 1000, F::AmzSigV4},
      {"S3 SigV2 query auth",
       "https://awsexamplebucket1.s3.us-west-1.amazonaws.com/photos/puppy.jpg"
       "?AWSAccessKeyId=AKIAEXAMPLE&Signature=NpgCjnDzrM%2BWFzoENXmpNDUsSn8%3D&Expires=1700003600",
       kT * 1000 + kHourMs, F::Expires},
      {"Google Cloud Storage V4",
       "https://storage.googleapis.com/example-bucket/cat.jpeg?X-Goog-Algorithm=GOOG4-RSA-SHA256"
       "&X-Goog-Credential=example%40example-project.iam.gserviceaccount.com%2F20231114%2Fauto"
       "%2Fstorage%2Fgoog4_request&X-Goog-Date=20231114T221320Z&X-Goog-Expires=900"
       "&X-Goog-SignedHeaders=host&X-Goog-Signature=8c3f",
       (kT + 900) * 1000, F::GoogV4},
      {"CloudFront canned policy",
       "https://d111111abcdef8.cloudfront.net/image.jpg?color=red&size=medium&Expires=1700003600"
       "&Signature=nitfHRCrtziwO2HwPfWw~yYDhUF5EwRunQA-j19DzZrvDh6hQ73lDx~-ar3UocvvRQVw6EkC~GdpGQ"
       "&Key-Pair-Id=K2JCJMDEHXQW5F",
       kT * 1000 + kHourMs, F::Expires},
      {"Tencent COS (q-sign-time start;end, encoded ';')",
       "https://examplebucket-1250000000.cos.ap-beijing.myqcloud.com/a.mp4?q-sign-algorithm=sha1"
       "&q-ak=AKIDexample&q-sign-time=1700000000%3B1700003600&q-key-time=1700000000%3B1700003600"
       "&q-header-list=host&q-url-param-list=&q-signature=a1b2",
       kT * 1000 + kHourMs, F::CosSignTime},
      {"115-style t= (Unix seconds)",
       "https://cdnfhnfile.115.com/abc/def/a.mkv?t=1700003600&u=123456&s=104857600&d=vip-12&c=2"
       "&f=1&k=3c0ab&us=1048576&uc=10&v=1",
       kT * 1000 + kHourMs, F::Plain},
      {"plain e= in milliseconds", "https://cdn.example.net/f/a.mp4?e=1700003600000&sig=ab",
       kT * 1000 + kHourMs, F::Plain},
      {"plain expires in milliseconds", "https://cdn.example.net/f/a.mp4?expires=1700003600123",
       1700003600123, F::Expires},
      {"names in any case", "https://h/a?EXPIRES=1700003600", kT * 1000 + kHourMs, F::Expires},
      {"encoded name", "https://h/a?%45xpires=1700003600", kT * 1000 + kHourMs, F::Expires},
      {"fragment is not query", "https://h/a?x=1#Expires=1700003600", std::nullopt, F::Expires},
      {"first occurrence wins", "https://h/a?Expires=1700003600&Expires=1800000000",
       kT * 1000 + kHourMs, F::Expires},
  };
  for (const auto& r : rows) check(r);
}

TEST_CASE("linkExpiry precedence between forms", "[linkexpiry]") {
  const Row rows[] = {
      {"SigV4 beats a stray Expires",
       "https://h/a?Expires=1800000000&X-Amz-Date=20231114T221320Z&X-Amz-Expires=60",
       (kT + 60) * 1000, F::AmzSigV4},
      {"OSS V4 beats absolute reading of x-oss-expires",
       "https://h/a?x-oss-expires=3600&x-oss-date=20231114T221320Z", kT * 1000 + kHourMs, F::OssV4},
      {"x-oss-expires beats Expires", "https://h/a?Expires=1800000000&x-oss-expires=1700003600",
       kT * 1000 + kHourMs, F::OssExpires},
      {"Expires beats t", "https://h/a?t=1800000000&Expires=1700003600", kT * 1000 + kHourMs,
       F::Expires},
      {"e beats t", "https://h/a?t=1800000000&e=1700003600", kT * 1000 + kHourMs, F::Plain},
      {"a broken specific form falls through to the next",
       "https://h/a?X-Amz-Date=2023-11-14&X-Amz-Expires=60&Expires=1700003600",
       kT * 1000 + kHourMs, F::Expires},
      {"OSS date without a usable lifetime: absolute x-oss-expires",
       "https://h/a?x-oss-date=20231114T221320Z&x-oss-expires=1700003600", kT * 1000 + kHourMs,
       F::OssExpires},
      {"Baidu's expires=8h is a duration, its time= is not ours: nothing",
       "https://d.pcs.baidu.com/file/abc?fid=1-250528-1&time=1700000000&rt=sh&sign=FDTAER-abc"
       "&expires=8h&chkv=1&chkbd=0&chkpc=&dp-logid=1&dp-callid=0&r=1",
       std::nullopt, F::Expires},
  };
  for (const auto& r : rows) check(r);
}

TEST_CASE("linkExpiry refuses malformed, implausible and overflowing values", "[linkexpiry]") {
  const char* none[] = {
      "",
      "https://h/a.mp4",
      "https://h/a.mp4?",
      "https://h/a.mp4?&&&=&",
      "https://h/a?Expires=",
      "https://h/a?Expires",
      "https://h/a?Expires=abc",
      "https://h/a?Expires=-1700003600",
      "https://h/a?Expires=+1700003600",
      "https://h/a?Expires=1700003600.5",
      "https://h/a?Expires=1700003600s",
      "https://h/a?Expires=%201700003600",
      "https://h/a?Expires=01700003600",        // leading zero
      "https://h/a?Expires=999999999",          // 2001-09-09 minus a second: implausible
      "https://h/a?Expires=4102444800",         // 2100-01-01: implausible
      "https://h/a?Expires=4102444800000",      // the same in ms
      "https://h/a?Expires=99999999999",        // 11 digits: neither s nor ms
      "https://h/a?Expires=99999999999999999999999999",  // would overflow int64
      "https://h/a?Expires=18446744073709551617",
      "https://h/a?t=60",                        // a duration, not a time
      "https://h/a?t=0",
      "https://h/a?e=1.7e9",
      "https://h/a?x-oss-expires=3600",          // relative without x-oss-date
      "https://h/a?X-Amz-Date=20231114T221320Z",  // date without a lifetime
      "https://h/a?X-Amz-Expires=3600",
      "https://h/a?X-Amz-Date=20231114T221320Z&X-Amz-Expires=-1",
      "https://h/a?X-Amz-Date=20231114T221320Z&X-Amz-Expires=1000000001",
      "https://h/a?X-Amz-Date=20231114T221320Z&X-Amz-Expires=99999999999999999999",
      "https://h/a?X-Amz-Date=20231114T221320&X-Amz-Expires=60",
      "https://h/a?X-Amz-Date=20231114 221320Z&X-Amz-Expires=60",
      "https://h/a?X-Amz-Date=20231314T221320Z&X-Amz-Expires=60",  // month 13
      "https://h/a?X-Amz-Date=20230229T221320Z&X-Amz-Expires=60",  // not a leap year
      "https://h/a?X-Amz-Date=20231114T241320Z&X-Amz-Expires=60",
      "https://h/a?X-Amz-Date=19991114T221320Z&X-Amz-Expires=60",  // implausible date
      "https://h/a?X-Amz-Date=99991114T221320Z&X-Amz-Expires=60",
      "https://h/a?q-sign-time=1700000000",
      "https://h/a?q-sign-time=1700003600;1700000000",  // ends before it starts
      "https://h/a?q-sign-time=1700000000;",
      "https://h/a?q-sign-time=;1700003600",
      "https://h/Expires=1700003600",             // in the path, not the query
      "https://h/a?ExpiresX=1700003600",
      "https://h/a?te=1700003600",
  };
  for (const char* u : none) {
    INFO(u);
    CHECK_FALSE(linkExpiry(u).has_value());
  }
  // Two-form links keep working when one part is garbage.
  CHECK(linkExpiry("https://h/a?X-Amz-Date=x&X-Amz-Expires=y&t=1700003600")->form == F::Plain);
}

TEST_CASE("writtenLinkExpiryMs: a past bare e/t is no expiry, other forms are kept even when past",
          "[linkexpiry]") {
  using slip::policy::writtenLinkExpiryMs;
  const int64_t now = 1'700'000'000'000;
  CHECK(writtenLinkExpiryMs("https://h/f?t=1699990000", now) == std::nullopt);       // past bare t
  CHECK(writtenLinkExpiryMs("https://h/f?e=1700000000", now) == std::nullopt);       // exactly now
  CHECK(writtenLinkExpiryMs("https://h/f?e=1700000060", now) == 1'700'000'060'000);  // ahead: kept
  CHECK(writtenLinkExpiryMs("https://h/f?Expires=1690000000", now) == 1'690'000'000'000);  // past: kept
  CHECK(writtenLinkExpiryMs("https://h/f?x-oss-expires=1700000030&e=1", now) == 1'700'000'030'000);
  CHECK(writtenLinkExpiryMs("https://h/f", now) == std::nullopt);
}
