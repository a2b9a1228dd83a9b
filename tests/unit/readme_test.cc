// The README's configuration reference must be the directive table's own
// rendering (regenerate with `python3 scripts/readme.py`).
#include <catch2/catch.hpp>

#include <fstream>
#include <sstream>

#include "conf/conf.h"

TEST_CASE("README configuration reference matches the directive table") {
  std::ifstream f("README.md");
  REQUIRE(f.good());  // run from the repository root (make unit does)
  std::stringstream ss;
  ss << f.rdbuf();
  std::string text = ss.str();
  const std::string begin = "<!-- BEGIN CONFIG REFERENCE -->", end = "<!-- END CONFIG REFERENCE -->";
  size_t a = text.find(begin), b = text.find(end);
  REQUIRE(a != std::string::npos);
  REQUIRE(b != std::string::npos);
  std::string inReadme = text.substr(a + begin.size(), b - a - begin.size());
  std::string ref = slip::conf::referenceMarkdown();
  while (!ref.empty() && ref.back() == '\n') ref.pop_back();
  CHECK(inReadme == "\n" + ref + "\n");
}
