// Helpers shared by the conf unit tests (conf_test.cc, conf_values_test.cc).
#pragma once

#include <catch2/catch.hpp>
#include <string>

#include "conf/conf.h"

namespace conf_test {

using namespace slip::conf;

inline std::string allErrors(const LoadResult& r) {
  std::string s;
  for (const Error& e : r.errors) s += e.str() + "\n";
  return s;
}

inline bool hasError(const LoadResult& r, int line, const std::string& fragment,
                     const std::string& key) {
  for (const Error& e : r.errors)
    if (e.line == line && e.message.find(fragment) != std::string::npos &&
        (key.empty() || e.key == key))
      return true;
  return false;
}

inline Config mustLoad(const std::string& ini) {
  LoadResult r = loadString(ini, "test.ini");
  INFO(allErrors(r));
  REQUIRE(r.errors.empty());
  REQUIRE(r.config);
  return *r.config;
}

// An http mount that is valid on its own, to hang other keys on.
inline const std::string kHttp = "[mount m]\nsource = http\nbase_url = http://origin/\n";
// A valid account (lines 1-5).
inline const std::string kAcct =
    "[account ali]\nrefresh_token = rt\nclient_id = cid\nclient_secret = cs\n"
    "api_url = http://127.0.0.1:1/\n";

}  // namespace conf_test
