// The INI loader (conf::loadString) and the value parsers it uses. A load
// either gives a config and no errors or errors and no config; every error
// points at a line of the input (or 0 for whole-file ones); loading is
// deterministic. The value parsers never give a negative size or duration.
#include <algorithm>

#include "conf/conf.h"
#include "tests/fuzz/fuzz.h"

using namespace slip::conf;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  LoadResult r = loadString(text, "fuzz.ini");
  FUZZ_ASSERT(r.config.has_value() == r.errors.empty());
  const int lines = static_cast<int>(std::count(text.begin(), text.end(), '\n')) + 1;
  for (const Error& e : r.errors) {
    FUZZ_ASSERT(e.line >= 0 && e.line <= lines);
    FUZZ_ASSERT(!e.message.empty());
    FUZZ_ASSERT(e.file == "fuzz.ini");
    (void)e.str();
  }
  LoadResult again = loadString(text, "fuzz.ini");
  FUZZ_ASSERT(again.errors.size() == r.errors.size());
  for (size_t i = 0; i < r.errors.size(); i++) FUZZ_ASSERT(again.errors[i].str() == r.errors[i].str());

  // The first line as a value of each type.
  fuzz::Input in{data, size};
  std::string_view v = in.line();
  std::string why;
  if (auto s = parseSize(v, &why)) FUZZ_ASSERT(*s >= 0);
  if (auto d = parseDuration(v, &why)) FUZZ_ASSERT(*d >= 0);
  (void)parseBool(v, &why);
  (void)parseCidr(v, &why);
  (void)parseListen(v, &why);
  return 0;
}
