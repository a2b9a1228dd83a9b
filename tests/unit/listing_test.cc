// Folder listings: which names pass, API dates, AList's /api/fs/list reply,
// local folders read beneath the root (symlinks, hidden and special files),
// and the cache in front of the sources (coalescing, TTL, failures, order).
#include "proxy/sources/listing.h"

#include <event2/event.h>
#include <event2/thread.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>

#include "policy/policy.h"

using namespace slip;
using namespace slip::proxy;
using policy::Reason;

namespace {

std::string tempDir() {
  auto d = std::filesystem::temp_directory_path() /
           ("slip-listing-test-" + std::to_string(getpid()) + "-" + std::to_string(rand()));
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d.string();
}

void touch(const std::string& path, const std::string& data = "x") { std::ofstream(path) << data; }

std::vector<std::string> names(const DirEntries& e) {
  std::vector<std::string> out;
  for (const auto& x : e) out.push_back(x.name + (x.folder ? "/" : ""));
  return out;
}

/// A source whose listings the test answers by hand.
struct FakeSource : Source {
  int64_t ttl = 60'000;
  std::vector<std::pair<std::string, ListCb>> asked;
  void resolve(const std::string&, const ClientInfo&, ResolveCb) override {}
  int64_t defaultTtlMs() const override { return 0; }
  int64_t listTtlMs() const override { return ttl; }
  void list(const std::string& rest, ListCb cb) override {
    asked.emplace_back(rest, std::move(cb));
  }
  void answer(size_t i, DirEntries e) {
    ListResult r;
    r.entries = std::make_shared<DirEntries>(std::move(e));
    asked[i].second(r);
  }
};

}  // namespace

TEST_CASE("listable names", "[listing]") {
  for (const char* ok : {"a.mkv", "千与千寻 (2001).mkv", "#1 %20 & ? ;=+,", "emoji 🎬", "..hidden",
                         ".x", "a..b", "\xEF\xBF\xBD"}) {
    INFO(ok);
    CHECK(policy::listableName(ok));
  }
  for (const char* bad :
       {"", ".", "..", "a/b", "a\\b", "tab\there", "nl\n", "del\x7f", "\xC3\x28",
        "\xED\xA0\x80" /* surrogate */, "\xEF\xBF\xBF" /* U+FFFF */, "\xC0\xAF" /* overlong */,
        "\xF4\x90\x80\x80" /* > U+10FFFF */, "\xE4\xB8"}) {
    INFO(bad);
    CHECK_FALSE(policy::listableName(bad));
  }
  CHECK_FALSE(policy::listableName(std::string("nul\0x", 5)));
  CHECK(policy::listableName(std::string(policy::kMaxNameBytes, 'a')));
  CHECK_FALSE(policy::listableName(std::string(policy::kMaxNameBytes + 1, 'a')));
}

TEST_CASE("RFC 3339 dates from APIs", "[listing]") {
  CHECK(policy::parseRfc3339Ms("2023-11-14T22:13:20Z") == 1'700'000'000'000);
  CHECK(policy::parseRfc3339Ms("2023-11-14T22:13:20.123Z") == 1'700'000'000'123);
  CHECK(policy::parseRfc3339Ms("2023-11-14T22:13:20.123456789Z") == 1'700'000'000'123);
  CHECK(policy::parseRfc3339Ms("2023-11-15T06:13:20.5+08:00") == 1'700'000'000'500);
  CHECK(policy::parseRfc3339Ms("2023-11-14T17:13:20-05:00") == 1'700'000'000'000);
  CHECK(*policy::parseRfc3339Ms("0001-01-01T00:00:00Z") < 0);  // Go's zero time
  for (const char* bad :
       {"", "2023-11-14", "2023-11-14T22:13:20", "2023-13-14T22:13:20Z", "2023-11-14T22:13:20.Z",
        "2023-11-14T22:13:20+0800", "2023-11-14T22:13:20Zjunk", "x023-11-14T22:13:20Z"}) {
    INFO(bad);
    CHECK_FALSE(policy::parseRfc3339Ms(bad));
  }
  CHECK(policy::formatHttpDate(1'700'000'000) == "Tue, 14 Nov 2023 22:13:20 GMT");
}

// The reply itself is table-tested in replies_test.cc; here: what a page
// becomes (entries, entity tags, reasons).
TEST_CASE("AList /api/fs/list pages", "[listing][alist]") {
  auto p = parseAlistListPage(R"({"code":200,"message":"success","data":{"content":[
    {"name":"Season 1","size":0,"is_dir":true,"modified":"2024-05-01T18:00:00+08:00"},
    {"name":"a.mkv","size":1234567890123,"is_dir":false,"modified":"2023-11-14T22:13:20.5Z",
     "hash_info":{"sha1":"AbCdEf0123"}},
    {"name":"b.srt","size":12,"is_dir":false,"modified":"0001-01-01T00:00:00Z","hash_info":null},
    {"size":1}
  ],"total":9}})");
  REQUIRE(p.reason == Reason::None);
  CHECK(p.total == 9);
  REQUIRE(p.entries.size() == 3);
  CHECK(p.entries[0].name == "Season 1");
  CHECK(p.entries[0].folder);
  CHECK(p.entries[0].mtimeMs == 1'714'557'600'000);
  CHECK(p.entries[1].size == 1234567890123ULL);
  CHECK(p.entries[1].mtimeMs == 1'700'000'000'500);
  CHECK(p.entries[1].etag == "\"abcdef0123\"");
  CHECK(p.entries[2].mtimeMs == 0);  // zero time: unknown
  CHECK(p.entries[2].etag.empty());

  auto empty =
      parseAlistListPage(R"({"code":200,"message":"success","data":{"content":null,"total":0}})");
  CHECK(empty.reason == Reason::None);
  CHECK(empty.entries.empty());

  const std::pair<const char*, Reason> errors[] = {
      {R"({"code":500,"message":"object not found","data":null})", Reason::NotFound},
      {R"({"code":500,"message":"failed get objs: not a folder","data":null})", Reason::NotAFolder},
      {R"({"code":401,"message":"token is invalidated","data":null})", Reason::ResolveFailed},
      {R"({"code":403,"message":"password is incorrect or you have no permission","data":null})",
       Reason::ResolveFailed},
      {R"({"code":"200","data":{}})", Reason::SourceBadReply},
      {R"({"code":200,"message":"success"})", Reason::SourceBadReply},
      {R"({"code":200,"data":{"content":{"name":"x"}}})", Reason::SourceBadReply},
      {R"([1,2])", Reason::SourceBadReply},
      {"<html>502 Bad Gateway</html>", Reason::SourceBadReply},
      {"", Reason::SourceBadReply},
  };
  for (const auto& [body, reason] : errors) {
    INFO(body);
    auto e = parseAlistListPage(body);
    CHECK(e.reason == reason);
    CHECK_FALSE(e.detail.empty());
  }
}

TEST_CASE("local folders: beneath the root, symlinks checked, hidden and special files left out",
          "[listing]") {
  std::string base = tempDir();
  std::string root = base + "/root", outside = base + "/outside";
  std::filesystem::create_directories(root + "/Show/S1");
  std::filesystem::create_directories(root + "/.git");
  std::filesystem::create_directories(root + "/@eaDir");
  std::filesystem::create_directories(outside);
  touch(root + "/a.mkv", "12345");
  touch(root + "/.DS_Store");
  touch(root + "/Show/S1/e01.mkv");
  touch(outside + "/secret.txt");
  REQUIRE(symlink((outside + "/secret.txt").c_str(), (root + "/abs-out").c_str()) == 0);
  REQUIRE(symlink("../outside", (root + "/rel-out").c_str()) == 0);
  REQUIRE(symlink("a.mkv", (root + "/link-in.mkv").c_str()) == 0);
  REQUIRE(symlink((root + "/Show").c_str(), (root + "/abs-in").c_str()) == 0);
  REQUIRE(symlink("missing", (root + "/dangling").c_str()) == 0);
  REQUIRE(symlink("loop", (root + "/loop").c_str()) == 0);
  mkfifo((root + "/fifo").c_str(), 0600);
  int fd = open(root.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  REQUIRE(fd >= 0);

  ListResult r = readLocalFolder(fd, "/");
  REQUIRE(r.reason == Reason::None);
  auto got = names(*r.entries);
  std::sort(got.begin(), got.end());
  CHECK(got == std::vector<std::string>{"Show/", "a.mkv", "abs-in/", "link-in.mkv"});
  for (const auto& e : *r.entries) {
    if (e.name == "a.mkv" || e.name == "link-in.mkv") {
      CHECK(e.size == 5);
      CHECK(e.etag.size() > 4);
      CHECK(e.mtimeMs > 0);
    }
  }
  CHECK(names(*readLocalFolder(fd, "Show/S1").entries) == std::vector<std::string>{"e01.mkv"});
  CHECK(names(*readLocalFolder(fd, "/abs-in/S1/").entries) == std::vector<std::string>{"e01.mkv"});
  CHECK(readLocalFolder(fd, "/a.mkv").reason == Reason::NotAFolder);
  CHECK(readLocalFolder(fd, "/nope").reason == Reason::NotFound);
  CHECK(readLocalFolder(fd, "/a.mkv/x").reason == Reason::NotFound);
  CHECK(readLocalFolder(fd, "/rel-out").reason == Reason::LocalEscape);
  CHECK(readLocalFolder(fd, "/../outside").reason == Reason::LocalEscape);
  close(fd);
  std::filesystem::remove_all(base);
}

TEST_CASE("listing cache: coalesced, sorted, filtered, kept list_ttl, failures not kept",
          "[listing]") {
  conf::Config cfg;
  cfg.mounts.push_back(conf::Mount{.name = "m"});
  std::vector<std::unique_ptr<Source>> sources;
  auto* src = new FakeSource;
  sources.emplace_back(src);
  ManualClock clock;
  ListingCache cache(cfg, sources, clock);

  std::vector<ListResult> got;
  auto collect = [&got](const ListResult& r) { got.push_back(r); };
  cache.list(0, "/Show/", collect);
  cache.list(0, "Show", collect);
  cache.list(0, "//Show", collect);
  REQUIRE(src->asked.size() == 1);  // three callers, one upstream listing
  CHECK(src->asked[0].first == "/Show");
  src->answer(0, {{"b.mkv", false, 1, 0, ""},
                  {"a", true, 0, 0, ""},
                  {"bad/name", false, 1, 0, ""},
                  {"b.mkv", false, 2, 0, ""},
                  {"", false, 0, 0, ""},
                  {"\xC3\x28", false, 0, 0, ""},
                  {"A.mkv", false, 3, 0, ""}});
  REQUIRE(got.size() == 3);
  for (const auto& r : got) {
    CHECK(r.reason == Reason::None);
    CHECK(names(*r.entries) == std::vector<std::string>{"A.mkv", "a/", "b.mkv"});
  }
  CHECK(got[0].entries == got[1].entries);  // one shared snapshot
  CHECK((*got[0].entries)[2].size == 1);    // the first of duplicates wins

  cache.list(0, "/Show", collect);  // cached
  CHECK(src->asked.size() == 1);
  CHECK(got.size() == 4);
  clock.advanceMs(src->ttl);
  cache.list(0, "/Show", collect);  // stale: listed again
  REQUIRE(src->asked.size() == 2);
  ListResult fail;
  fail.reason = Reason::UpstreamTimeout;
  fail.detail = "slow";
  src->asked[1].second(fail);
  REQUIRE(got.size() == 5);
  CHECK(got[4].reason == Reason::UpstreamTimeout);
  CHECK(got[4].detail == "mount m: slow");
  cache.list(0, "/Show", collect);  // the failure was not kept
  CHECK(src->asked.size() == 3);
  CHECK(cache.fetches() == 3);

  // stat: from the parent's listing; the root is a folder.
  std::vector<StatResult> st;
  cache.stat(0, "/", [&st](const StatResult& r) { st.push_back(r); });
  REQUIRE(st.size() == 1);
  CHECK(st[0].entry.folder);
  cache.stat(0, "/Show/b.mkv", [&st](const StatResult& r) { st.push_back(r); });
  cache.stat(0, "/Show/zzz", [&st](const StatResult& r) { st.push_back(r); });
  src->answer(2, {{"b.mkv", false, 9, 0, "\"e\""}});
  REQUIRE(st.size() == 3);
  CHECK(st[1].reason == Reason::None);
  CHECK(st[1].entry.size == 9);
  CHECK(st[2].reason == Reason::NotFound);

  // A source that caches itself (aliyundrive): coalesced, never kept.
  src->ttl = 0;
  cache.list(0, "/x", collect);
  cache.list(0, "/x", collect);
  REQUIRE(src->asked.size() == 4);
  src->answer(3, {});
  cache.list(0, "/x", collect);
  CHECK(src->asked.size() == 5);
}

TEST_CASE("http sources cannot list", "[listing]") {
  struct Plain : Source {
    void resolve(const std::string&, const ClientInfo&, ResolveCb) override {}
    int64_t defaultTtlMs() const override { return 0; }
  } plain;
  ListResult r;
  plain.list("/", [&r](const ListResult& x) { r = x; });
  CHECK(r.reason == Reason::CannotList);
  CHECK(policy::reasonStatus(Reason::CannotList) == 501);
}

TEST_CASE("worker: jobs off the loop, results on it; pending ones dropped at destruction",
          "[listing]") {
  evthread_use_pthreads();
  event_base* base = event_base_new();
  std::thread::id loopThread = std::this_thread::get_id(), jobThread;
  int done = 0;
  {
    Worker w(base);
    w.post([&] { jobThread = std::this_thread::get_id(); },
           [&] {
             CHECK(std::this_thread::get_id() == loopThread);
             done++;
           });
    w.post([] {}, [&] { done++; });
    timeval tick{0, 10'000};
    for (int i = 0; i < 500 && done < 2; i++)
      event_base_loopexit(base, &tick), event_base_dispatch(base);
    CHECK(done == 2);
    CHECK(jobThread != loopThread);
    CHECK(w.pending() == 0);
    w.post([] { usleep(20'000); }, [&] { done++; });  // destroyed before the loop runs again
  }
  CHECK(done == 2);
  event_base_free(base);
}
