// The aliyundrive_open account's token state file: atomic replacement,
// chains, and files that are not ours.
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>

#include "proxy/sources/aliyun.h"

using namespace slip::proxy;

namespace {

std::string tempDir() {
  auto d = std::filesystem::temp_directory_path() /
           ("slip-token-test-" + std::to_string(getpid()) + "-" + std::to_string(rand()));
  std::filesystem::remove_all(d);
  return d.string();
}

}  // namespace

TEST_CASE("token state: written atomically, read back, private", "[token]") {
  std::string dir = tempDir() + "/nested/state";
  std::string path = tokenStatePath(dir, "home");
  CHECK(path == dir + "/aliyundrive-home.token.json");
  std::string err;
  CHECK_FALSE(readTokenState(path, &err));
  CHECK(err.empty());  // absent is not an error

  TokenState s{tokenChain("rt-ini"), "rt-2", "at-2", 1'700'000'000'000, 1'699'999'000'000};
  REQUIRE(writeTokenState(path, s, &err));
  auto back = readTokenState(path, &err);
  REQUIRE(back);
  CHECK(err.empty());
  CHECK(back->chain == s.chain);
  CHECK(back->refreshToken == "rt-2");
  CHECK(back->accessToken == "at-2");
  CHECK(back->accessExpiresMs == s.accessExpiresMs);
  CHECK(back->updatedMs == s.updatedMs);
  struct stat st {};
  REQUIRE(stat(path.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);

  // Replacing leaves no temporary file behind.
  s.refreshToken = "rt-3";
  REQUIRE(writeTokenState(path, s, &err));
  CHECK(readTokenState(path, &err)->refreshToken == "rt-3");
  int files = 0;
  for (auto& e : std::filesystem::directory_iterator(dir)) files += e.is_regular_file();
  CHECK(files == 1);
  std::filesystem::remove_all(std::filesystem::path(dir).parent_path().parent_path());
}

TEST_CASE("token state: chains identify the INI token without storing it", "[token]") {
  CHECK(tokenChain("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(tokenChain("abc") != tokenChain("abd"));
}

TEST_CASE("token state: foreign or damaged files are reported, not trusted", "[token]") {
  std::string dir = tempDir();
  std::filesystem::create_directories(dir);
  std::string path = dir + "/t.json";
  const char* bad[] = {"", "not json", "{\"version\":2,\"chain\":\"c\",\"refresh_token\":\"r\"}",
                       "{\"version\":1,\"chain\":\"c\"}", "[1,2,3]"};
  for (const char* text : bad) {
    std::ofstream(path) << text;
    std::string err;
    INFO(text);
    CHECK_FALSE(readTokenState(path, &err));
    CHECK_FALSE(err.empty());
  }
  std::filesystem::remove_all(dir);
}
