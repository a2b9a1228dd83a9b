// How the configuration describes itself: section and value forms for the
// loader's messages, and the two references made from the directive table
// (`--help-config` and the README's, `--help-config-markdown`).
#include <optional>
#include <utility>

#include "conf/describe.h"

namespace slip::conf {
namespace {

using S = SectionKind;
using T = ValueType;

std::string formatDuration(int64_t ms) {
  static constexpr std::pair<int64_t, const char*> kUnits[] = {
      {86'400'000, "d"}, {3'600'000, "h"}, {60'000, "m"}, {1000, "s"}};
  for (auto [per, unit] : kUnits)
    if (ms != 0 && ms % per == 0) return std::to_string(ms / per) + unit;
  return ms == 0 ? "0" : std::to_string(ms) + "ms";
}

std::string formatNumber(const Directive& d, int64_t n) {
  if (d.type == T::Size) return formatSize(n);
  if (d.type == T::Duration) return formatDuration(n);
  return std::to_string(n);
}

const char* typeName(ValueType t) {
  switch (t) {
    case T::String:
      return "string";
    case T::Bool:
      return "bool";
    case T::Int:
      return "int";
    case T::Size:
      return "size";
    case T::Duration:
      return "duration";
    case T::Enum:
      return "enum";
    case T::List:
      return "list";
    case T::Header:
      return "header";
    case T::Listen:
      return "listen address";
    case T::CidrList:
      return "CIDR list";
    case T::Url:
      return "URL";
    case T::Path:
      return "path";
    case T::Secret:
      return "secret";
    case T::SecretFile:
      return "file";
  }
  return "?";
}

// "int 1..64 per object", "debug|info|warn|error", "size at least 1M".
std::string typeText(const Directive& d) {
  std::string s = d.type == T::Enum ? d.choices : typeName(d.type);
  if (d.type == T::Int || d.type == T::Size || d.type == T::Duration) {
    if (std::string b = boundsText(d); !b.empty()) s += " " + b;
  }
  if (d.units) s += std::string(", ") + d.units;
  return s;
}

// Repeatable / required / applicability, for the references.
std::string notesText(const Directive& d) {
  std::string s;
  auto add = [&s](const std::string& note) { s += (s.empty() ? "" : "; ") + note; };
  if (d.repeatable) add("repeatable");
  if (d.requiredFor == kAllSources)
    add(d.type == T::Secret ? "required: this or " + std::string(d.name) + "_file" : "required");
  else if (d.requiredFor)
    add("required for " + sourcesText(d.requiredFor));
  if (d.section == S::Mount && d.sources != kAllSources) add(sourcesText(d.sources) + " only");
  if (d.restart) add("needs a restart: SIGHUP keeps the running value");
  return s;
}

// Secrets have no default, so none can ever be printed.
std::string defaultText(const Directive& d) {
  return d.def && d.type != T::Secret ? d.def : "(unset)";
}

}  // namespace

const char* kindName(SectionKind k) {
  switch (k) {
    case S::Server:
      return "server";
    case S::Cache:
      return "cache";
    case S::Account:
      return "account";
    case S::User:
      return "user";
    case S::Mount:
      return "mount";
    case S::Rule:
      return "rule";
  }
  return "?";
}

bool named(SectionKind k) {
  return k == S::Account || k == S::User || k == S::Mount || k == S::Rule;
}

std::string headerForm(SectionKind k) {
  return named(k) ? std::string(kindName(k)) + " NAME" : kindName(k);
}

std::string sourcesText(unsigned mask) {
  std::string s;
  for (SourceType t : {SourceType::Http, SourceType::Local, SourceType::Alist,
                       SourceType::AliyundriveOpen}) {
    if (!(mask & sourceBit(t))) continue;
    if (!s.empty()) s += " and ";
    s += sourceTypeName(t);
  }
  return s;
}

std::string formatSize(int64_t n) {
  static constexpr std::pair<int, char> kUnits[] = {{40, 'T'}, {30, 'G'}, {20, 'M'}, {10, 'K'}};
  for (auto [shift, unit] : kUnits)
    if (n != 0 && n % (1LL << shift) == 0) return std::to_string(n >> shift) + unit;
  return std::to_string(n);
}

std::string boundsText(const Directive& d) {
  if (d.max == kUnbounded) return d.min == 0 ? "" : "at least " + formatNumber(d, d.min);
  return formatNumber(d, d.min) + ".." + formatNumber(d, d.max);
}

std::string helpText() {
  std::string out =
      "slipstream configuration: one INI file of [section] headers and key = value lines.\n"
      "Sizes take K, M, G or T (binary: 1K = 1024); durations ms, s, m, h or d (a bare\n"
      "number is seconds); bools on/off. Lists are separated by commas or spaces.\n"
      "Sizes and durations may have decimals (1.5G, 2.5s), rounded to a whole byte or ms.\n"
      "Comments are lines starting with ; or #, and ' ;' after a value. A line holds at\n"
      "most 64K characters; indentation is ignored. Every secret key also has a _file twin\n"
      "that reads the secret from a file.\n";
  std::optional<SectionKind> current;
  for (const Directive& d : directives()) {
    if (d.section != current) {
      current = d.section;
      out += "\n[" + headerForm(d.section) + "]\n";
    }
    out += "  " + std::string(d.name) + " = <" + typeText(d) + ">  default: " + defaultText(d);
    if (std::string notes = notesText(d); !notes.empty()) out += "  (" + notes + ")";
    out += "\n      " + std::string(d.doc) + "\n";
  }
  return out;
}

std::string referenceMarkdown() {
  auto cell = [](std::string s) {
    for (size_t i = 0; (i = s.find('|', i)) != std::string::npos; i += 2) s.insert(i, "\\");
    return s;
  };
  std::string out;
  std::optional<SectionKind> current;
  for (const Directive& d : directives()) {
    if (d.section != current) {
      current = d.section;
      out += std::string(out.empty() ? "" : "\n") + "### `[" + headerForm(d.section) + "]`\n\n" +
             "| key | type | default | meaning |\n|---|---|---|---|\n";
    }
    std::string def = d.def && d.type != T::Secret ? "`" + defaultText(d) + "`" : "";
    std::string meaning = d.doc;
    if (std::string notes = notesText(d); !notes.empty()) meaning += " *(" + notes + ")*";
    out += "| `" + std::string(d.name) + "` | " + cell(typeText(d)) + " | " + cell(def) + " | " +
           cell(meaning) + " |\n";
  }
  return out;
}

}  // namespace slip::conf
