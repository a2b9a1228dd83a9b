// Episode markers in file names (issue 13 item 4: the next episode, warmed
// ahead). Names are untrusted bytes: the scan is linear, reads only inside
// the name, and numbers are bounded before they are added up.
#include <algorithm>
#include <array>
#include <cstring>

#include "policy/policy.h"

namespace slip::policy {
namespace {

using Form = Episode::Form;

bool digit(char c) { return c >= '0' && c <= '9'; }
bool letter(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
bool alnum(char c) { return digit(c) || letter(c); }
char lowerAscii(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

/// Reads 1..maxDigits digits at `i`; false when there are none or more.
bool number(std::string_view s, size_t& i, int maxDigits, int* out, int minDigits = 1) {
  size_t b = i;
  int v = 0;
  while (i < s.size() && digit(s[i]) && static_cast<int>(i - b) < maxDigits + 1) v = v * 10 + (s[i++] - '0');
  int n = static_cast<int>(i - b);
  if (n < minDigits || n > maxDigits) {
    i = b;
    return false;
  }
  *out = v;
  return true;
}

/// A marker ends where a number could not go on.
bool endsNumber(std::string_view s, size_t i) { return i >= s.size() || !digit(s[i]); }
/// A marker starts where a word or number does not go on.
bool startsWord(std::string_view s, size_t i) { return i == 0 || !alnum(s[i - 1]); }

bool at(std::string_view s, size_t i, std::string_view what) { return s.substr(i, what.size()) == what; }

// UTF-8 of the CJK characters the markers use.
constexpr std::string_view kDi = "\xe7\xac\xac";  // 第
constexpr std::array<std::string_view, 4> kUnits = {
    "\xe9\x9b\x86",  // 集
    "\xe8\xaf\x9d",  // 话
    "\xe8\xa9\xb1",  // 話
    "\xe5\x9b\x9e",  // 回
};
struct Numeral {
  std::string_view text;
  int value;  // 10, 100: multipliers
};
constexpr std::array<Numeral, 14> kNumerals = {{{"\xe9\x9b\xb6", 0},   // 零
                                                {"\xe3\x80\x87", 0},   // 〇
                                                {"\xe4\xb8\x80", 1},   // 一
                                                {"\xe4\xba\x8c", 2},   // 二
                                                {"\xe4\xb8\xa4", 2},   // 两
                                                {"\xe4\xb8\x89", 3},   // 三
                                                {"\xe5\x9b\x9b", 4},   // 四
                                                {"\xe4\xba\x94", 5},   // 五
                                                {"\xe5\x85\xad", 6},   // 六
                                                {"\xe4\xb8\x83", 7},   // 七
                                                {"\xe5\x85\xab", 8},   // 八
                                                {"\xe4\xb9\x9d", 9},   // 九
                                                {"\xe5\x8d\x81", 10},  // 十
                                                {"\xe7\x99\xbe", 100}}};  // 百

/// 十二 = 12, 二十 = 20, 二十三 = 23, 一百零五 = 105, 三 = 3 (at most 999).
bool chineseNumber(std::string_view s, size_t& i, int* out) {
  size_t b = i;
  int total = 0, pending = -1, chars = 0;
  while (i < s.size() && chars < 8) {
    const Numeral* n = nullptr;
    for (const Numeral& x : kNumerals)
      if (at(s, i, x.text)) n = &x;
    if (!n) break;
    i += n->text.size();
    chars++;
    if (n->value >= 10) {
      total += (pending < 0 ? 1 : pending) * n->value;
      pending = -1;
    } else {
      pending = n->value;
    }
  }
  if (pending > 0) total += pending;
  if (chars == 0 || total == 0 || total > 999) {
    i = b;
    return false;
  }
  *out = total;
  return true;
}

/// An episode range's end after the first episode: E04, -E05, -05.
int rangeEnd(std::string_view s, size_t& i, int first) {
  size_t b = i;
  size_t j = i;
  if (j < s.size() && s[j] == '-') j++;
  if (j < s.size() && (s[j] == 'E' || s[j] == 'e')) j++;
  else if (j == i) return first;  // neither '-' nor 'E'
  int v;
  if (number(s, j, 4, &v) && endsNumber(s, j) && v > first) {
    i = j;
    return v;
  }
  i = b;
  return first;
}

// ---- one matcher per form; each returns true and fills `e` for a marker at i

bool seasonEpisode(std::string_view s, size_t i, Episode* e) {  // S01E03, s1e3, S01.E03, S01E03E04
  if (!(s[i] == 'S' || s[i] == 's') || !startsWord(s, i)) return false;
  size_t j = i + 1;
  int season, ep;
  if (!number(s, j, 4, &season)) return false;
  if (j < s.size() && (s[j] == '.' || s[j] == ' ' || s[j] == '_' || s[j] == '-')) j++;
  if (j >= s.size() || !(s[j] == 'E' || s[j] == 'e')) return false;
  j++;
  if (!number(s, j, 4, &ep) || !endsNumber(s, j)) return false;
  int last = rangeEnd(s, j, ep);
  *e = {Form::SeasonEpisode, season, ep, last, i, j};
  return true;
}

bool crossForm(std::string_view s, size_t i, Episode* e) {  // 1x03, 01x03
  if (!digit(s[i]) || !startsWord(s, i)) return false;
  size_t j = i;
  int season, ep;
  if (!number(s, j, 2, &season)) return false;
  if (j >= s.size() || !(s[j] == 'x' || s[j] == 'X')) return false;
  j++;
  if (!number(s, j, 3, &ep, 2) || !endsNumber(s, j)) return false;
  if (j < s.size() && (s[j] == 'x' || s[j] == 'X')) return false;  // 4x03x02: a size, not an episode
  *e = {Form::Cross, season, ep, rangeEnd(s, j, ep), i, j};
  return true;
}

bool epForm(std::string_view s, size_t i, Episode* e) {  // EP03, Ep.3, ep 12
  if (lowerAscii(s[i]) != 'e' || i + 1 >= s.size() || lowerAscii(s[i + 1]) != 'p' || !startsWord(s, i))
    return false;
  size_t j = i + 2;
  if (j < s.size() && (s[j] == '.' || s[j] == ' ' || s[j] == '_')) j++;
  int ep;
  if (!number(s, j, 4, &ep) || !endsNumber(s, j)) return false;
  *e = {Form::Ep, -1, ep, rangeEnd(s, j, ep), i, j};
  return true;
}

bool eForm(std::string_view s, size_t i, Episode* e) {  // E03
  if (lowerAscii(s[i]) != 'e' || !startsWord(s, i)) return false;
  size_t j = i + 1;
  int ep;
  if (!number(s, j, 4, &ep) || !endsNumber(s, j)) return false;
  *e = {Form::E, -1, ep, rangeEnd(s, j, ep), i, j};
  return true;
}

bool cjkForm(std::string_view s, size_t i, Episode* e) {  // 第3集, 第03话, 第十二話, 第 5 回
  if (!at(s, i, kDi)) return false;
  size_t j = i + kDi.size();
  while (j < s.size() && s[j] == ' ') j++;
  int ep;
  if (!number(s, j, 4, &ep) && !chineseNumber(s, j, &ep)) return false;
  while (j < s.size() && s[j] == ' ') j++;
  for (std::string_view unit : kUnits) {
    if (!at(s, j, unit)) continue;
    *e = {Form::Cjk, -1, ep, ep, i, j + unit.size()};
    return true;
  }
  return false;
}

bool dashForm(std::string_view s, size_t i, Episode* e) {  // "[Group] Title - 03 [1080p]"
  if (!at(s, i, " - ")) return false;
  size_t j = i + 3;
  int ep;
  if (!number(s, j, 3, &ep, 2)) return false;
  if (j < s.size() && (s[j] == 'v' || s[j] == 'V') && j + 1 < s.size() && digit(s[j + 1])) j += 2;  // 03v2
  if (j < s.size() && !(s[j] == ' ' || s[j] == '[' || s[j] == '(' || s[j] == '.')) return false;
  *e = {Form::Dash, -1, ep, ep, i + 3, j};
  return true;
}

/// The forms, the most telling first.
constexpr bool (*kForms[])(std::string_view, size_t, Episode*) = {seasonEpisode, crossForm, cjkForm,
                                                                   epForm,        eForm,     dashForm};

/// The part of a name that says which series it is: what comes before the
/// marker, lower case, without the separators around it.
std::string stemOf(std::string_view name, const Episode& e) {
  std::string out;
  for (char c : name.substr(0, e.begin)) out += lowerAscii(c);
  while (!out.empty() && std::strchr(" ._-[(", out.back())) out.pop_back();
  return out;
}

bool playable(std::string_view name) {
  std::string t = mimeType(name);
  return t.starts_with("video/") || t.starts_with("audio/");
}

}  // namespace

const char* episodeFormName(Episode::Form f) {
  switch (f) {
    case Form::SeasonEpisode: return "SxxEyy";
    case Form::Cross: return "NxNN";
    case Form::Ep: return "EPnn";
    case Form::E: return "Enn";
    case Form::Cjk: return "cjk";
    case Form::Dash: return "dash";
  }
  return "?";
}

std::optional<Episode> parseEpisode(std::string_view name) {
  name = baseName(name);
  std::optional<Episode> best;
  int bestRank = 100;
  for (size_t i = 0; i < name.size(); i++) {
    for (int rank = 0; rank < static_cast<int>(std::size(kForms)) && rank < bestRank; rank++) {
      Episode e{};
      if (kForms[rank](name, i, &e)) {
        best = e;
        bestRank = rank;  // the first marker of the most telling form
        break;
      }
    }
    if (bestRank == 0) break;
  }
  return best;
}

std::optional<size_t> nextEpisode(std::string_view current, const std::vector<std::string>& names) {
  std::string_view curName = baseName(current);
  auto cur = parseEpisode(curName);
  if (!cur) return std::nullopt;
  const std::string curStem = stemOf(curName, *cur);
  const std::string curExt = extensionOf(curName);
  struct Key {
    bool otherSeries, otherExt;
    int season, episode;
    auto operator<=>(const Key&) const = default;
  };
  std::optional<size_t> best;
  Key bestKey{};
  for (size_t i = 0; i < names.size(); i++) {
    std::string_view n = baseName(names[i]);
    if (n == curName || !(extensionOf(n) == curExt || playable(n)) || !playable(curName)) continue;
    auto e = parseEpisode(n);
    if (!e) continue;
    // Seasons count when both names say; otherwise the same season is assumed.
    int season = cur->season >= 0 && e->season >= 0 ? e->season : std::max(cur->season, 0);
    int curSeason = std::max(cur->season, 0);
    bool after = season > curSeason || (season == curSeason && e->episode > cur->last);
    if (!after) continue;
    Key k{stemOf(n, *e) != curStem, extensionOf(n) != curExt, season, e->episode};
    if (!best || k < bestKey || (k == bestKey && names[i] < names[*best])) {
      best = i;
      bestKey = k;
    }
  }
  return best;
}

}  // namespace slip::policy
