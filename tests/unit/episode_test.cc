// Episode markers in file names, row by row (policy::parseEpisode), and
// which file of a folder comes next (policy::nextEpisode).
#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "policy/policy.h"

using namespace slip::policy;
using F = Episode::Form;

namespace {

struct Row {
  const char* name;
  bool found;
  F form;
  int season, episode, last;
};

}  // namespace

TEST_CASE("episode: markers in file names", "[episode]") {
  const Row rows[] = {
      // SxxEyy
      {"Show.S01E03.1080p.WEB-DL.mkv", true, F::SeasonEpisode, 1, 3, 3},
      {"show.s1e3.mkv", true, F::SeasonEpisode, 1, 3, 3},
      {"Show S01.E03 Title.mp4", true, F::SeasonEpisode, 1, 3, 3},
      {"Show_S02_E10.mkv", true, F::SeasonEpisode, 2, 10, 10},
      {"Show.S01E03E04.mkv", true, F::SeasonEpisode, 1, 3, 4},
      {"Show.S01E03-E05.mkv", true, F::SeasonEpisode, 1, 3, 5},
      {"Show.S01E03-04.mkv", true, F::SeasonEpisode, 1, 3, 4},
      {"Daily.S2019E0112.mkv", true, F::SeasonEpisode, 2019, 112, 112},
      {"/films/Show/Season 1/Show.S01E07.mkv", true, F::SeasonEpisode, 1, 7, 7},
      {"Show.2019.S01E03.mkv", true, F::SeasonEpisode, 1, 3, 3},     // the year is no episode
      {"24.S01E03.mkv", true, F::SeasonEpisode, 1, 3, 3},
      {"Show.S01E03v2.mkv", true, F::SeasonEpisode, 1, 3, 3},
      // NxNN
      {"Show 1x03 Title.avi", true, F::Cross, 1, 3, 3},
      {"Show.01x103.mkv", true, F::Cross, 1, 103, 103},
      {"Show - 2x10.mkv", true, F::Cross, 2, 10, 10},
      // EP / E
      {"Show EP03.mkv", true, F::Ep, -1, 3, 3},
      {"Show.Ep.12.mkv", true, F::Ep, -1, 12, 12},
      {"show ep 7.mp4", true, F::Ep, -1, 7, 7},
      {"Show.E03.mkv", true, F::E, -1, 3, 3},
      {"[Sub] Show E12 [1080p].mkv", true, F::E, -1, 12, 12},
      // CJK
      {"\xe5\xb1\x95\xe6\x98\xad \xe7\xac\xac" "3\xe9\x9b\x86.mp4", true, F::Cjk, -1, 3, 3},               // 展昭 第3集
      {"\xe7\xac\xac" "03\xe8\xaf\x9d.mkv", true, F::Cjk, -1, 3, 3},                                       // 第03话
      {"\xe7\xac\xac" "12\xe8\xa9\xb1.mkv", true, F::Cjk, -1, 12, 12},                                     // 第12話
      {"\xe7\xac\xac\xe5\x8d\x81\xe4\xba\x8c\xe9\x9b\x86.mp4", true, F::Cjk, -1, 12, 12},                   // 第十二集
      {"\xe7\xac\xac\xe4\xba\x8c\xe5\x8d\x81\xe4\xb8\x89\xe8\xaf\x9d.mp4", true, F::Cjk, -1, 23, 23},       // 第二十三话
      {"\xe7\xac\xac\xe4\xb8\x80\xe7\x99\xbe\xe9\x9b\xb6\xe4\xba\x94\xe9\x9b\x86.mp4", true, F::Cjk, -1, 105, 105},  // 第一百零五集
      {"\xe7\xac\xac 5 \xe5\x9b\x9e.mkv", true, F::Cjk, -1, 5, 5},                                          // 第 5 回
      // anime dash
      {"[Group] Title - 03 [1080p].mkv", true, F::Dash, -1, 3, 3},
      {"Title - 12v2.mkv", true, F::Dash, -1, 12, 12},
      {"Title - 105 (BD).mkv", true, F::Dash, -1, 105, 105},
      // the most telling form wins
      {"Show E99 S01E03.mkv", true, F::SeasonEpisode, 1, 3, 3},
      {"EP02 1x05.mkv", true, F::Cross, 1, 5, 5},
      // not episodes
      {"Movie.2019.1080p.mkv", false, F::E, 0, 0, 0},
      {"Movie 1920x1080.mkv", false, F::E, 0, 0, 0},
      {"Movie 5x5.mkv", false, F::E, 0, 0, 0},
      {"Movie.HEVC.x264.DDP5.1.mkv", false, F::E, 0, 0, 0},
      {"Movie - 2019 [1080p].mkv", false, F::E, 0, 0, 0},
      {"Movie - 720p.mkv", false, F::E, 0, 0, 0},
      {"SEASON1.mkv", false, F::E, 0, 0, 0},
      {"ES3.mkv", false, F::E, 0, 0, 0},
      {"Show.S01.mkv", false, F::E, 0, 0, 0},
      {"Show.E.mkv", false, F::E, 0, 0, 0},
      {"Show.E12345.mkv", false, F::E, 0, 0, 0},
      {"\xe7\xac\xac" "3.mkv", false, F::E, 0, 0, 0},     // 第3 without a unit
      {"\xe7\xac\xac\xe9\x9b\x86.mkv", false, F::E, 0, 0, 0},  // 第集 without a number
      {"", false, F::E, 0, 0, 0},
      {"S", false, F::E, 0, 0, 0},
      {"\xe7\xac", false, F::E, 0, 0, 0},  // a cut character
  };
  for (const Row& r : rows) {
    INFO(r.name);
    auto e = parseEpisode(r.name);
    CHECK(e.has_value() == r.found);
    if (!e || !r.found) continue;
    CHECK(episodeFormName(e->form) == std::string(episodeFormName(r.form)));
    CHECK(e->season == r.season);
    CHECK(e->episode == r.episode);
    CHECK(e->last == r.last);
    CHECK(e->begin < e->end);
  }
}

TEST_CASE("episode: the next one in a folder", "[episode]") {
  struct Case {
    const char* current;
    std::vector<std::string> names;
    const char* want;  // "" = none
  };
  const Case cases[] = {
      {"Show.S01E03.mkv", {"Show.S01E01.mkv", "Show.S01E04.mkv", "Show.S01E02.mkv", "Show.S01E03.mkv"},
       "Show.S01E04.mkv"},
      // a gap: the next one there is
      {"Show.S01E03.mkv", {"Show.S01E06.mkv", "Show.S01E05.mkv"}, "Show.S01E05.mkv"},
      // the season's end: the next season's first
      {"Show.S01E10.mkv", {"Show.S02E01.mkv", "Show.S01E09.mkv", "Show.S02E02.mkv"}, "Show.S02E01.mkv"},
      // a double episode: after its last
      {"Show.S01E03E04.mkv", {"Show.S01E04.mkv", "Show.S01E05.mkv"}, "Show.S01E05.mkv"},
      // the same series first, sidecars never
      {"A.S01E03.mkv", {"B.S01E04.mkv", "A.S01E04.srt", "A.S01E05.mkv"}, "A.S01E05.mkv"},
      // another series when it is all there is
      {"A.S01E03.mkv", {"B.S01E04.mkv"}, "B.S01E04.mkv"},
      // the same extension first
      {"Show E03.mkv", {"Show E04.mp4", "Show E04.mkv"}, "Show E04.mkv"},
      // forms mixed: numbers count, seasons when both say
      {"Show 1x03.mkv", {"Show.S01E04.mkv"}, "Show.S01E04.mkv"},
      {"\xe7\xac\xac" "3\xe9\x9b\x86.mp4", {"\xe7\xac\xac" "4\xe9\x9b\x86.mp4", "\xe7\xac\xac" "2\xe9\x9b\x86.mp4"},
       "\xe7\xac\xac" "4\xe9\x9b\x86.mp4"},
      {"[G] T - 11 [1080p].mkv", {"[G] T - 12 [1080p].mkv", "[G] T - 10 [1080p].mkv"}, "[G] T - 12 [1080p].mkv"},
      // nothing after, no episode, not media
      {"Show.S01E09.mkv", {"Show.S01E08.mkv"}, ""},
      {"Movie.2019.mkv", {"Show.S01E01.mkv"}, ""},
      {"Show.S01E01.srt", {"Show.S01E02.srt"}, ""},
      {"Show.S01E01.mkv", {}, ""},
  };
  for (const Case& c : cases) {
    INFO(c.current);
    auto i = nextEpisode(c.current, c.names);
    if (*c.want == '\0') {
      CHECK_FALSE(i.has_value());
    } else {
      REQUIRE(i.has_value());
      CHECK(c.names[*i] == c.want);
    }
  }
}

TEST_CASE("episode: next_episode per mount and per rule", "[episode][conf]") {
  using slip::conf::LoadResult;
  using slip::conf::loadString;
  const std::string alist = "[mount a]\nsource = alist\nurl = http://127.0.0.1:1/\ntoken = t\n";
  struct Case {
    std::string ini;
    int mount;  // the mount's share; -1 = refused
  };
  const Case cases[] = {
      {alist, 0},
      {alist + "next_episode = off\n", 0},
      {alist + "next_episode = on\n", 80},
      {alist + "next_episode = 75%\n", 75},
      {alist + "next_episode = 1%\n", 1},
      {alist + "next_episode = 99%\n", 99},
      {alist + "next_episode = 100%\n", -1},
      {alist + "next_episode = 0%\n", -1},
      {alist + "next_episode = 80\n", -1},
      {alist + "next_episode = yes\n", -1},
      {alist + "next_episode = -5%\n", -1},
      // http cannot list a folder, local is read in place: no next episode there
      {"[mount h]\nsource = http\nbase_url = http://127.0.0.1:1/\nnext_episode = on\n", -1},
  };
  for (const Case& c : cases) {
    INFO(c.ini);
    LoadResult r = loadString(c.ini, "t.ini");
    if (c.mount < 0) {
      CHECK_FALSE(r.config);
      REQUIRE(r.errors.size() == 1);
      CHECK(r.errors[0].key == "next_episode");
      continue;
    }
    REQUIRE(r.config);
    CHECK(r.config->mounts[0].nextEpisode == c.mount);
  }

  // A rule overrides the mount's share, unset it keeps it.
  LoadResult r = loadString(alist + "next_episode = 70%\n[rule anime]\npath = /a/anime/**\naction = proxy\n"
                                    "next_episode = 90%\n[rule films]\npath = /a/films/**\naction = proxy\n"
                                    "next_episode = off\n[rule other]\npath = /a/other/**\naction = proxy\n",
                            "t.ini");
  REQUIRE(r.config);
  RuleSet rules;
  REQUIRE(RuleSet::compile(*r.config, &rules).empty());
  std::vector<SourceTraits> traits{SourceTraits{}};
  auto share = [&](const char* path) {
    RequestFacts f;
    f.route = Route::Proxy;
    f.method = "GET";
    f.path = path;
    f.mountIndex = 0;
    return rules.decide(*r.config, f, traits).nextEpisode;
  };
  CHECK(share("/a/anime/T - 01.mkv") == 90);
  CHECK(share("/a/films/x.mkv") == 0);
  CHECK(share("/a/other/S01E01.mkv") == 70);
  CHECK(share("/a/S01E01.mkv") == 70);
}
