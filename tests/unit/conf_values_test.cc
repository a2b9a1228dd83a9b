// conf: long lines, decimal sizes, header checks and the *_file twins of
// secrets (issue 9 #18, #21, #8).
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>

#include "conf/conf.h"
#include "tests/unit/conf_helpers.h"

using namespace slip::conf;
using namespace conf_test;

TEST_CASE("long lines: a JWT refresh token, a 4 KiB cookie, 16 KiB values", "[conf]") {
  // A refresh token as the Open API issues them: header.payload.signature.
  std::string jwt =
      "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9." + std::string(600, 'Q') + "." + std::string(43, 's');
  std::string cookie = "Cookie: __puus=" + std::string(4096, 'c') + "; __pus=abc";
  std::string big(16 * 1024, 'v');
  Config c = mustLoad(
      "[server]\nadmin_token = " + big + "\n" + kAcct + "[account long]\nrefresh_token = " + jwt +
      "\noauth_token_url = http://relay/\n"
      "[mount m]\nsource = http\nbase_url = http://origin/\nheader = " +
      cookie + "\nheader = X-After: 1\n[mount n]\nsource = http\nbase_url = http://o/" + big +
      "\n");
  CHECK(c.server.adminToken == big);
  REQUIRE(c.accounts.size() == 2);
  CHECK(c.accounts[1].refreshToken == jwt);
  CHECK(c.accounts[1].refreshTokenLine == 9);
  REQUIRE(c.mounts[0].headers.size() == 2);
  CHECK(c.mounts[0].headers[0].name == "Cookie");
  CHECK(c.mounts[0].headers[0].value.size() == cookie.size() - 8);
  CHECK(c.mounts[0].headers[1].value == "1");
  CHECK(c.mounts[1].baseUrl == "http://o/" + big);

  // Exactly the limit fits; one more byte does not.
  std::string key = "access_log = /";
  Config edge = mustLoad("[server]\n" + key + std::string(65536 - key.size(), 'a') + "\n");
  CHECK(edge.server.accessLog.size() == 65536 - key.size() + 1);
  LoadResult over =
      loadString("[server]\n" + key + std::string(65537 - key.size(), 'a') + "\n", "t.ini");
  CHECK(hasError(over, 2, "longer than 65536", ""));
}

TEST_CASE("decimal sizes and durations round to a whole byte or millisecond", "[conf]") {
  struct Case {
    const char* text;
    std::optional<int64_t> size, ms;  // nullopt: refused
  };
  const Case cases[] = {
      {"1.5G", 3LL << 29, std::nullopt},
      {"0.5K", 512, std::nullopt},
      {"2.25M", 2359296, std::nullopt},
      {"1.0T", 1LL << 40, std::nullopt},
      {"0.001K", 1, std::nullopt},   // 1.024 bytes → 1
      {"0.0005K", 1, std::nullopt},  // 0.512 → 1 (half up)
      {"0.0004K", 0, std::nullopt},  // 0.4096 → 0
      {"1.5", std::nullopt, 1500},   // bytes must be whole; a bare duration is seconds
      {"1.5s", std::nullopt, 1500},
      {"0.25m", 262144, 15'000},
      {"1.5h", std::nullopt, 5'400'000},
      {"0.0001s", std::nullopt, 0},
      {"0.0005s", std::nullopt, 1},
      {"2.5d", std::nullopt, 216'000'000},
      {"1.5ms", std::nullopt, std::nullopt},
      {"1.5B", std::nullopt, std::nullopt},
      {"1.", std::nullopt, std::nullopt},
      {".5G", std::nullopt, std::nullopt},
      {"1..5G", std::nullopt, std::nullopt},
      {"1.5.5G", std::nullopt, std::nullopt},
      {"1,5G", std::nullopt, std::nullopt},
      {"1.1234567891G", std::nullopt, std::nullopt},  // ten decimal places
      {"8388608T", std::nullopt, std::nullopt},       // 2^63: past INT64_MAX
      {"8388607.999999999T", 9223372036854774708LL, std::nullopt},
      {"106751991167.31d", std::nullopt, std::nullopt},  // past INT64_MAX ms
      {"8388607.5T", 9223371487098961920LL, std::nullopt},
      {"1e3K", std::nullopt, std::nullopt},
      {"-1.5G", std::nullopt, std::nullopt},
  };
  for (const Case& c : cases) {
    INFO(c.text);
    std::string why;
    auto size = parseSize(c.text, &why);
    CHECK(size == c.size);
    if (!size) CHECK_FALSE(why.empty());
    auto ms = parseDuration(c.text, &why);
    CHECK(ms == c.ms);
    if (!ms) CHECK_FALSE(why.empty());
  }
  std::string why;
  CHECK_FALSE(parseSize("1.5", &why));
  CHECK(why.find("must be whole") != std::string::npos);
  CHECK_FALSE(parseSize("1.1234567891G", &why));
  CHECK(why.find("too many decimal places") != std::string::npos);
  CHECK_FALSE(parseDuration("2.5ms", &why));
  CHECK(why.find("milliseconds must be whole") != std::string::npos);

  Config cfg =
      mustLoad("[cache]\nmax_size = 1.5G\nmin_free = 0.5G\n" + kHttp + "revalidate = 1.5h\n");
  CHECK(cfg.cache.maxSize == 1610612736);
  CHECK(cfg.cache.minFree == 536870912);
  CHECK(cfg.mounts[0].revalidateMs == 5'400'000);
  LoadResult bad = loadString("[cache]\nmax_size = 1.5\n", "t.ini");
  CHECK(hasError(bad, 2, "must be whole", "max_size"));
}

TEST_CASE("header names and values that cannot reach an upstream", "[conf]") {
  struct Case {
    std::string name, value;
    const char* problem;  // nullptr: fine
  };
  const Case cases[] = {
      {"Referer", "https://www.alipan.com/", nullptr},
      {"Cookie", "a=1; b=\"x y\"", nullptr},
      {"X-Tab", "a\tb", nullptr},
      {"X-Utf8", "\xe4\xb8\xad\xe6\x96\x87", nullptr},  // obs-text: passed as bytes
      {"!#$%&'*+-.^_`|~09azAZ", "v", nullptr},
      {"X-Inject", "v\r\nX-Evil: 1", "CR, LF or NUL"},
      {"X-Lf", "v\nX-Evil: 1", "CR, LF or NUL"},
      {"X-Nul", std::string("v\0w", 3), "CR, LF or NUL"},
      {"X-Bell", "v\a", "control character"},
      {"X-Del", "v\x7f", "control character"},
      {"X Space", "v", "bad header name"},
      {"X:Colon", "v", "bad header name"},
      {"X\r\nEvil", "v", "bad header name 'X\\x0d\\x0aEvil'"},
      {"", "v", "empty header name"},
      {"Content-Length", "0", "set by slipstream itself"},
      {"TRANSFER-ENCODING", "chunked", "set by slipstream itself"},
      {"Connection", "close", "set by slipstream itself"},
      {"Range", "bytes=0-1", "set by slipstream itself"},
      {"If-Range", "x", "set by slipstream itself"},
      {"Accept-Encoding", "gzip", "set by slipstream itself"},
      {"Expect", "100-continue", "set by slipstream itself"},
  };
  for (const Case& c : cases) {
    INFO(printable(c.name) << ": " << printable(c.value));
    auto p = headerProblem(c.name, c.value);
    if (!c.problem) {
      CHECK_FALSE(p);
    } else {
      REQUIRE(p);
      CHECK(p->find(c.problem) != std::string::npos);
      CHECK(p->find("Evil: 1") == std::string::npos);  // values are never quoted
    }
  }
}

namespace {

// A temporary folder with files in it, removed at the end of the test.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    path = std::filesystem::temp_directory_path() /
           ("slipstream_conf_secrets_" + std::to_string(getpid()));
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  std::string put(const std::string& name, const std::string& content) {
    std::ofstream f(path / name, std::ios::binary);
    f << content;
    return (path / name).string();
  }
};

}  // namespace

TEST_CASE("every secret has a _file twin that reads it from a file", "[conf]") {
  TempDir t;
  std::string jwt = "eyJhbGciOiJIUzI1NiJ9." + std::string(700, 'P') + ".sig_-";
  std::string rt = t.put("refresh_token", jwt + "\n");
  std::string cs = t.put("client_secret", "app-secret\r\n");
  std::string sign = t.put("sign", "sign-secret\n\n");
  std::string admin = t.put("admin", "admin token with spaces");
  std::string alist = t.put("alist", "alist-token\n");
  // Loaded as a file in that folder: relative paths are taken from there.
  std::string ini =
      t.put("slipstream.ini",
            "[server]\nsign_secret_file = sign\nadmin_token_file = " + admin +
                "\n"
                "[account a]\nrefresh_token_file = " +
                rt +
                "\nclient_id = cid\n"
                "client_secret_file = ./client_secret\n"
                "[mount al]\nsource = alist\nurl = http://alist/\ntoken_file = alist\n");
  LoadResult r = loadFile(ini);
  INFO(allErrors(r));
  REQUIRE(r.config);
  const Config& c = *r.config;
  CHECK(c.server.signSecret == "sign-secret");
  CHECK(c.server.adminToken == "admin token with spaces");
  CHECK(c.accounts[0].refreshToken == jwt);
  CHECK(c.accounts[0].refreshTokenLine == 5);
  CHECK(c.accounts[0].clientSecret == "app-secret");
  CHECK(c.mounts[0].token == "alist-token");

  // Every Secret row has its twin right after it, documented.
  const auto& table = directives();
  int twins = 0;
  for (size_t i = 0; i < table.size(); i++) {
    if (table[i].type != ValueType::Secret) continue;
    REQUIRE(i + 1 < table.size());
    CHECK(table[i + 1].type == ValueType::SecretFile);
    CHECK(std::string(table[i + 1].name) == std::string(table[i].name) + "_file");
    CHECK(std::string(table[i + 1].fileOf) == table[i].name);
    CHECK(table[i + 1].section == table[i].section);
    CHECK(table[i + 1].sources == table[i].sources);
    twins++;
  }
  CHECK(twins == 6);  // sign_secret, admin_token, refresh_token, client_secret, password_hash, token
  CHECK(helpText().find("  refresh_token_file = <file>") != std::string::npos);
  CHECK(referenceMarkdown().find("| `token_file` | file |") != std::string::npos);
}

TEST_CASE("secret files: both forms, unreadable, empty, several lines", "[conf]") {
  TempDir t;
  std::string good = t.put("good", "hunter2-secret\n");
  std::string empty = t.put("empty", "");
  std::string blank = t.put("blank", "\n\r\n");
  std::string lines = t.put("lines", "hunter2-line-1\nhunter2-line-2\n");
  std::string ctl = t.put("ctl", "hunter2\x01x");
  std::string large = t.put("large", std::string(70'000, 'h'));
  std::string dir = t.path.string();
  struct Case {
    std::string ini;
    int line;
    std::string fragment, key;
  };
  const Case cases[] = {
      {"[server]\nsign_secret = hunter2\nsign_secret_file = " + good + "\n", 3,
       "give either sign_secret or its _file, not both (sign_secret is on line 2)",
       "sign_secret_file"},
      {"[server]\nadmin_token_file = " + good + "\nadmin_token = hunter2\n", 3,
       "not both (admin_token_file is on line 2)", "admin_token"},
      {"[server]\nsign_secret_file = /nonexistent/slip/secret\n", 2,
       "cannot read '/nonexistent/slip/secret': No such file or directory", "sign_secret_file"},
      {"[server]\nsign_secret_file = " + empty + "\n", 2, "is empty", "sign_secret_file"},
      {"[server]\nsign_secret_file = " + blank + "\n", 2, "is empty", "sign_secret_file"},
      {"[server]\nsign_secret_file = " + lines + "\n", 2, "must not contain line breaks",
       "sign_secret_file"},
      {"[server]\nsign_secret_file = " + ctl + "\n", 2, "must not contain line breaks",
       "sign_secret_file"},
      {"[server]\nsign_secret_file = " + large + "\n", 2, "is larger than 64K", "sign_secret_file"},
      {"[server]\nsign_secret_file = " + dir + "\n", 2, "is not a regular file",
       "sign_secret_file"},
      {"[server]\nsign_secret_file =\n", 2, "empty value", "sign_secret_file"},
      {"[account x]\nrefresh_token_file = " + empty + "\noauth_token_url = http://r/\n", 2,
       "is empty", "refresh_token_file"},
      {"[account x]\nrefresh_token = hunter2\nrefresh_token_file = " + good +
           "\noauth_token_url = http://r/\n",
       3, "not both", "refresh_token_file"},
      {"[account x]\nclient_id = c\nclient_secret_file = /nonexistent/cs\nrefresh_token = t\n", 3,
       "cannot read", "client_secret_file"},
      {"[account x]\noauth_token_url = http://r/\n", 1, "required key is missing", "refresh_token"},
      {kHttp + "token_file = " + good + "\n", 4, "does not apply to http mounts (only alist)",
       "token_file"},
      {"[server]\nsign_secret_file = " + good + "\nsign_secret_file = " + good + "\n", 3,
       "given twice", "sign_secret_file"},
  };
  for (const Case& c : cases) {
    LoadResult r = loadString(c.ini, "bad.ini");
    INFO(c.ini << "\nerrors:\n" << allErrors(r));
    CHECK_FALSE(r.config);
    CHECK(hasError(r, c.line, c.fragment, c.key));
    for (const Error& e : r.errors) CHECK(e.str().find("hunter2") == std::string::npos);
  }
  // Unreadable for this user (root reads everything: then skip this row).
  std::string locked = t.put("locked", "hunter2\n");
  std::filesystem::permissions(locked, std::filesystem::perms::none);
  if (geteuid() != 0) {
    LoadResult r = loadString("[server]\nsign_secret_file = " + locked + "\n", "bad.ini");
    CHECK(hasError(r, 2, "Permission denied", "sign_secret_file"));
  }
  // The _file twin satisfies a required secret.
  Config c =
      mustLoad("[account x]\nrefresh_token_file = " + good + "\noauth_token_url = http://r/\n");
  CHECK(c.accounts[0].refreshToken == "hunter2-secret");
}
