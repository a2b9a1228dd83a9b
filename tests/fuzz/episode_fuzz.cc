// The episode parser and the next-episode pick on hostile names: a marker
// lies inside the name's last segment, its numbers are in range, the answer
// is the same twice, and the file nextEpisode picks is another one of the
// list whose episode really comes after. The input: the current name on the
// first line, the folder's names on the following ones.
#include <string>
#include <vector>

#include "policy/policy.h"
#include "tests/fuzz/fuzz.h"

using namespace slip::policy;

namespace {

void checkOne(std::string_view name) {
  std::optional<Episode> e = parseEpisode(name);
  std::optional<Episode> again = parseEpisode(name);
  FUZZ_ASSERT(e.has_value() == again.has_value());
  if (!e) return;
  std::string_view base = baseName(name);
  FUZZ_ASSERT(e->begin < e->end && e->end <= base.size());
  FUZZ_ASSERT(e->episode >= 0 && e->episode <= 9999 && e->last >= e->episode && e->last <= 9999);
  FUZZ_ASSERT(e->season >= -1 && e->season <= 9999);
  FUZZ_ASSERT(again->begin == e->begin && again->episode == e->episode &&
              again->season == e->season);
  FUZZ_ASSERT(episodeFormName(e->form)[0] != '?');
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Input in{data, size};
  std::string_view current = in.line();
  std::vector<std::string> names;
  while (in.size > 0 && names.size() < 64) names.emplace_back(in.line());
  checkOne(current);
  for (const std::string& n : names) checkOne(n);
  std::optional<size_t> next = nextEpisode(current, names);
  if (!next) return 0;
  FUZZ_ASSERT(*next < names.size());
  auto cur = parseEpisode(current);
  auto e = parseEpisode(names[*next]);
  FUZZ_ASSERT(cur && e);
  FUZZ_ASSERT(baseName(names[*next]) != baseName(current));
  // It comes after: a later season, or the same (assumed when a name does
  // not say) with a later episode than current's last.
  int curSeason = cur->season < 0 ? 0 : cur->season;
  int season = cur->season >= 0 && e->season >= 0 ? e->season : curSeason;
  FUZZ_ASSERT(season > curSeason || (season == curSeason && e->episode > cur->last));
  FUZZ_ASSERT(nextEpisode(current, names) == next);
  return 0;
}
