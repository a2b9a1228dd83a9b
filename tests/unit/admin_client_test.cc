// src/admin_client: what `slipstream status` prints from the API's JSON (the
// canned documents the status page's browser test uses), bars, the address.
#include <catch2/catch.hpp>
#include <fstream>
#include <sstream>

#include "src/admin_client.h"

using namespace slip;

namespace {

std::string canned(const std::string& name) {
  std::ifstream f("tests/integration/data/api_v1_" + name + ".json");
  REQUIRE(f.good());  // run from the repository root (make unit does)
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

}  // namespace

TEST_CASE("status: the terminal summary of a running gateway", "[admin][cli]") {
  std::string err;
  std::string out = cmd::renderStatus(canned("stats"), canned("transfers"), canned("prefetch"), 60, &err);
  CAPTURE(out);
  REQUIRE(err.empty());
  CHECK(out.find("slipstream 0.1.0 · up 1h 1m · config /etc/slipstream/slipstream.ini (loaded 1h 1m ago)\n") == 0);
  CHECK(out.find("requests 2 active, 1234 total · event-loop lag 0.4 ms (max 6.2 ms)\n") != std::string::npos);
  CHECK(out.find("cache 30.0 GiB of 50.0 GiB · disk free 384.0 GiB · 87 objects · hit ratio 70.0 % "
                 "of bytes, 75.0 % of requests · 512 blocks evicted\n") != std::string::npos);
  CHECK(out.find("\ntransfers (2)\n  Big Buck Bunny (2008).mkv\n"
                 "    2.4 MB/s · 12.0 MiB of 40.0 MiB · 4 upstream · proxy PARTIAL · 192.168.1.23\n"
                 "    /alipan/films/Big Buck Bunny (2008).mkv\n"
                 "    [############>>>>........................]\n") != std::string::npos);
  // 1000 blocks in 54 cells: stored, then being fetched, then missing.
  CHECK(out.find("    [#####>>>" + std::string(46, '.') + "]\n") != std::string::npos);
  CHECK(out.find("\nprefetch (1)\n  p1 /alipan/films/Sintel.mkv · running · 8.0 MB/s\n"
                 "    [###################............................]  42 %\n") != std::string::npos);
  CHECK(out.find("  alipan (/alipan, aliyundrive_open) · links 42 · refused 1 · 429s 3 · last error "
                 "rate_limited: 429 from getDownloadUrl (1m 40s ago)\n") != std::string::npos);
  CHECK(out.find("  home · authorized · token rotated 11m 40s ago · API calls 120 · 429s 3 · "
                 "downloads 3 open, 1 waiting · last error -\n") != std::string::npos);
}

TEST_CASE("status: answers that are not the schema are one clear error", "[admin][cli]") {
  std::string err;
  CHECK(cmd::renderStatus("{", canned("transfers"), canned("prefetch"), 80, &err).empty());
  CHECK(err == "the gateway's answer is not JSON");
  CHECK(cmd::renderStatus(R"({"version": 1})", canned("transfers"), canned("prefetch"), 80, &err).empty());
  CHECK(err.find("unexpected answer from the gateway") == 0);
  CHECK(cmd::renderStatus(canned("stats"), R"({"transfers": 5})", canned("prefetch"), 80, &err).empty());
  // A file name cannot send escape sequences to the terminal.
  std::string t = canned("transfers");
  size_t at = t.find("Big Buck");
  t.replace(at, 3, "\\u001b[2J");
  std::string out = cmd::renderStatus(canned("stats"), t, canned("prefetch"), 80, &err);
  CHECK(out.find('\x1b') == std::string::npos);
  CHECK(out.find("?[2J Buck") != std::string::npos);
}

TEST_CASE("status: bars and the gateway's address", "[admin][cli]") {
  CHECK(cmd::progressBar(0, 19) == "[..........]   0 %");
  CHECK(cmd::progressBar(0.5, 19) == "[#####.....]  50 %");
  CHECK(cmd::progressBar(1, 19) == "[##########] 100 %");
  CHECK(cmd::progressBar(2, 19) == "[##########] 100 %");
  CHECK(cmd::progressBar(-1, 19) == "[..........]   0 %");
  CHECK(cmd::blockBar("SSF-", 10) == "##>.");
  CHECK(cmd::blockBar(std::string(20, 'S') + std::string(20, '-'), 10) == "#####.....");
  CHECK(cmd::blockBar("S-S-S-S-S-S-S-S-S-S-", 10) == "..........");  // partly stored = missing
  CHECK(cmd::blockBar("", 10) == "");

  auto cfgOf = [](const std::string& ini) {
    auto r = conf::loadString(ini, "t.ini");
    REQUIRE(r.config);
    return *r.config;
  };
  CHECK(cmd::apiBase(cfgOf("[server]\nlisten = 0.0.0.0:8690\n")) == "http://127.0.0.1:8690");
  CHECK(cmd::apiBase(cfgOf("[server]\nlisten = [::]:9000\n")) == "http://[::1]:9000");
  CHECK(cmd::apiBase(cfgOf("[server]\nlisten = 10.0.0.5:80\n")) == "http://10.0.0.5:80");
  CHECK(cmd::apiBase(cfgOf("[server]\nlisten = :8443 tls\nlisten = 127.0.0.1:8690\n"
                           "tls_cert = /c\ntls_key = /k\n")) == "http://127.0.0.1:8690");
  CHECK(cmd::apiBase(cfgOf("[server]\nlisten = :8443 tls\ntls_cert = /c\ntls_key = /k\n")) ==
        "https://127.0.0.1:8443");
}
