// The configuration loader: INI text → Config, or every error with file:line.
//
// Our own line reader, in front of the directive table. It used to feed
// inih (Debian's libinih), but that build reads lines into a fixed 200-byte
// buffer: a refresh token (a JWT of several hundred characters) or a cookie
// in a `header` line could not be written at all. inih did little else for
// us, so the reader now splits `key = value` itself, keeping inih's syntax:
//  - A line holds up to kMaxLine bytes; a longer one is one error at its own
//    line (later lines keep their numbers).
//  - Comments: a line whose first non-blank character is `;` or `#`; inline,
//    only `;` preceded by whitespace (`a = x ;note` gives "x"). An inline `#`
//    is part of the value, as is `;` right after a character (`a=b;c`) or at
//    the very start of the value.
//  - Leading whitespace is stripped, so indentation is only cosmetic and no
//    line continues another (inih's INI_ALLOW_MULTILINE is not kept).
//  - `[kind name]` headers are parsed here, names checked, text after `]`
//    refused; a line that is neither header, comment nor `key = value` is an
//    error (`key: value` included).
//  - A UTF-8 BOM at the start and CR before LF are ignored.
//
// Secrets can come from files: every Secret key has a `<key>_file` twin
// (derived in directives.cc); the file's content, line breaks at the end
// stripped, is the value. Secret values are never quoted in messages.
//
// Invariant: the directive apply functions write to the last mount / rule, so
// a mount or rule section is closed (defaults applied, checked) before the
// next section opens.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <map>
#include <system_error>

#include "conf/conf.h"
#include "conf/describe.h"

namespace slip::conf {
namespace {

using S = SectionKind;
using T = ValueType;

constexpr std::string_view kBlank = " \t";
constexpr size_t kMaxLine = 64 * 1024;        // bytes in one line
constexpr size_t kMaxSecretFile = 64 * 1024;  // bytes in a *_file

std::string_view trim(std::string_view s) {
  size_t b = s.find_first_not_of(kBlank);
  if (b == std::string_view::npos) return {};
  return s.substr(b, s.find_last_not_of(kBlank) - b + 1);
}

std::optional<SectionKind> kindNamed(std::string_view word) {
  for (SectionKind k : {S::Server, S::Cache, S::Account, S::User, S::Mount, S::Rule})
    if (word == kindName(k)) return k;
  return std::nullopt;
}

const Directive* findDirective(SectionKind k, std::string_view name) {
  for (const Directive& d : directives())
    if (d.section == k && d.name == name) return &d;
  return nullptr;
}

// The candidate closest to `word`, if close enough to be a likely typo.
std::string nearest(std::string_view word, const std::vector<std::string_view>& candidates) {
  std::string_view best;
  size_t bestDist = std::max<size_t>(2, word.size() / 3) + 1;
  for (std::string_view c : candidates) {
    size_t d = editDistance(word, c);
    if (d < bestDist) best = c, bestDist = d;
  }
  return std::string(best);
}

// ---------------------------------------------------------------- values

std::vector<std::string> splitList(std::string_view s) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < s.size()) {
    size_t b = s.find_first_not_of(" \t,", i);
    if (b == std::string_view::npos) break;
    size_t e = s.find_first_of(" \t,", b);
    if (e == std::string_view::npos) e = s.size();
    out.emplace_back(s.substr(b, e - b));
    i = e;
  }
  return out;
}

bool isControl(char ch) { return static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f; }

bool parseHeader(std::string_view s, Header* h, std::string* why) {
  size_t colon = s.find(':');
  if (colon == std::string_view::npos) {
    *why = "expected 'Name: value', as in 'Referer: https://example.com/'";
    return false;
  }
  std::string_view name = trim(s.substr(0, colon)), value = trim(s.substr(colon + 1));
  if (auto problem = headerProblem(name, value)) {
    *why = *problem;
    return false;
  }
  h->name = std::string(name);
  h->value = std::string(value);
  return true;
}

bool isHttpUrl(std::string_view s) {
  auto scheme = [&s](std::string_view p) {
    return s.size() >= p.size() && std::equal(p.begin(), p.end(), s.begin(), [](char a, char b) {
             return a == std::tolower(static_cast<unsigned char>(b));
           });
  };
  size_t start = scheme("http://") ? 7 : scheme("https://") ? 8 : 0;
  if (start == 0) return false;
  size_t hostEnd = s.find_first_of("/?#", start);
  if (hostEnd == start) return false;
  return std::none_of(s.begin(), s.end(), [](char ch) { return ch == ' ' || isControl(ch); });
}

// Parses and validates one value: type, bounds, then the row's own check.
bool parseValue(const Directive& d, std::string_view raw, DirectiveValue* v, std::string* why) {
  const std::string text(raw);
  switch (d.type) {
    case T::String:
      v->text = text;
      break;
    case T::Secret:
    case T::SecretFile:  // the loader has read the file: `raw` is its content
      // Secrets go into headers and JSON: one line of printable text.
      if (std::any_of(raw.begin(), raw.end(), [](char ch) { return ch != '\t' && isControl(ch); })) {
        *why = "must not contain line breaks or other control characters";
        return false;
      }
      v->text = text;
      break;
    case T::Path:
      if (raw.empty()) {
        *why = "empty value (expected a path)";
        return false;
      }
      v->text = text;
      break;
    case T::Url:
      if (!isHttpUrl(raw)) {
        *why = "not an http(s) URL: '" + text + "' (use http://host[:port]/path or https://...)";
        return false;
      }
      v->text = text;
      break;
    case T::Bool: {
      auto b = parseBool(raw, why);
      if (!b) return false;
      v->num = *b;
      break;
    }
    case T::Int: {
      auto [p, ec] = std::from_chars(raw.data(), raw.data() + raw.size(), v->num);
      if (raw.empty() || ec != std::errc() || p != raw.data() + raw.size()) {
        *why = ec == std::errc::result_out_of_range ? "number too large: '" + text + "'"
                                                    : "not a whole number: '" + text + "'";
        return false;
      }
      break;
    }
    case T::Size:
    case T::Duration: {
      auto n = d.type == T::Size ? parseSize(raw, why) : parseDuration(raw, why);
      if (!n) return false;
      v->num = *n;
      break;
    }
    case T::Enum: {
      std::string_view choices = d.choices;
      v->num = -1;
      for (int i = 0; !choices.empty(); i++) {
        size_t bar = choices.find('|');
        std::string_view c = choices.substr(0, bar);
        if (c == raw) v->num = i;
        choices = bar == std::string_view::npos ? "" : choices.substr(bar + 1);
      }
      if (v->num < 0) {
        std::string list(d.choices);
        std::replace(list.begin(), list.end(), '|', ',');
        *why = "unknown value '" + text + "' (use one of: " + list + ")";
        return false;
      }
      break;
    }
    case T::List:
      v->list = splitList(raw);
      break;
    case T::CidrList:
      for (const std::string& item : splitList(raw)) {
        auto c = parseCidr(item, why);
        if (!c) return false;
        v->cidrs.push_back(*c);
      }
      break;
    case T::Header:
      if (!parseHeader(raw, &v->header, why)) return false;
      break;
    case T::Listen: {
      auto l = parseListen(raw, why);
      if (!l) return false;
      v->listen = *l;
      v->listen.line = v->line;
      break;
    }
  }
  bool bounded = d.type == T::Int || d.type == T::Size || d.type == T::Duration;
  if (bounded && (v->num < d.min || v->num > d.max)) {
    *why = "'" + text + "' is out of range (" + boundsText(d) + ")";
    return false;
  }
  return !d.check || d.check(*v, why);
}

// ---------------------------------------------------------------- loader

class Loader {
 public:
  Loader(std::string_view text, std::string file) : text_(text) { config_.file = std::move(file); }

  LoadResult run() {
    while (pos_ < text_.size()) {
      size_t nl = text_.find('\n', pos_);
      size_t end = nl == std::string_view::npos ? text_.size() : nl;
      std::string_view line = text_.substr(pos_, end - pos_);
      pos_ = end + 1;
      line_++;
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      screen(line);
    }
    finish();
    std::stable_sort(errors_.begin(), errors_.end(),
                     [](const Error& a, const Error& b) { return a.line < b.line; });
  LoadResult r;
    if (errors_.empty()) r.config = std::move(config_);
    r.errors = std::move(errors_);
    return r;
  }

 private:
  struct Given {
    int line = 0;
    bool ok = false;  // the value parsed
  };
  struct Section {
    SectionKind kind;
    std::string label;  // "server", "mount movies"
    int line = 0;       // of the [header]; 0 = the section is absent
    std::map<std::string, Given, std::less<>> given;

    int lineOf(std::string_view key) const {
      auto it = given.find(key);
      return it == given.end() ? 0 : it->second.line;
    }
    // The key's line, or its _file twin's (a secret may be given either way).
    int lineOfEither(const Directive& d) const {
      if (int l = lineOf(d.name)) return l;
      return d.type == T::Secret ? lineOf(std::string(d.name) + "_file") : 0;
    }
    // Like lineOf, but 0 also when the value was rejected (already reported).
    int goodLine(std::string_view key) const {
      auto it = given.find(key);
      return it == given.end() || !it->second.ok ? 0 : it->second.line;
    }
  };

  // One physical line: a header opens a section, `key = value` is set,
  // comments and blank lines are skipped, anything else is reported.
  void screen(std::string_view line) {
    if (line_ == 1 && line.starts_with("\xEF\xBB\xBF")) line.remove_prefix(3);
    if (line.size() > kMaxLine) {
      error(line_, "", "", "line is longer than " + std::to_string(kMaxLine) + " characters");
      return;
    }
    if (line.find('\0') != std::string_view::npos) {
      error(line_, "", "", "line contains a NUL byte");
      return;
    }
    line = trim(line);
    if (line.empty() || line[0] == ';' || line[0] == '#') return;
    if (line[0] == '[') {
      openSection(line);
      return;
    }
    // The first separator: '=', ':' or a ';' comment.
    size_t sep = 0;
    while (sep < line.size() && line[sep] != '=' && line[sep] != ':' &&
           !(line[sep] == ';' && sep > 0 && (line[sep - 1] == ' ' || line[sep - 1] == '\t')))
      sep++;
    // Never quote the line: it may hold a secret.
    if (sep == line.size() || line[sep] != '=') {
      error(line_, open_ ? open_->label : "", "",
            "missing '=' (expected 'key = value' or '[section]')");
      return;
    }
    if (sep == 0) {
      error(line_, open_ ? open_->label : "", "", "missing key name before '='");
      return;
    }
    std::string_view key = trim(line.substr(0, sep));
    std::string_view value = trim(line.substr(sep + 1));
    // An inline comment: ';' after whitespace inside the value.
    for (size_t i = 1; i < value.size(); i++) {
      if (value[i] == ';' && (value[i - 1] == ' ' || value[i - 1] == '\t')) {
        value = trim(value.substr(0, i));
        break;
      }
    }
    setKey(key, value);
  }

  void openSection(std::string_view line) {
    closeSection();
    skipping_ = true;  // until the header proves good
    size_t close = line.find(']');
    if (close == std::string_view::npos) {
      error(line_, "", "", "section header is missing ']'");
      return;
    }
    std::string_view after = trim(line.substr(close + 1));
    if (!after.empty() && after[0] != ';' && after[0] != '#') {
      error(line_, "", "", "unexpected text after ']'");
      return;
    }
    std::string_view inner = trim(line.substr(1, close - 1));
    size_t space = inner.find_first_of(kBlank);
    std::string_view kindWord = inner.substr(0, space);
    std::string name(space == std::string_view::npos ? "" : trim(inner.substr(space)));

    std::optional<SectionKind> kind = kindNamed(kindWord);
    if (!kind) {
      auto near = kindNamed(nearest(kindWord, {"server", "cache", "account", "user", "mount", "rule"}));
      error(line_, "", "",
            "unknown section [" + std::string(kindWord) + "]" +
                (near ? " (did you mean [" + headerForm(*near) + "]?)"
                      : " (sections: [server], [cache], [account NAME], [user NAME], "
                        "[mount NAME], [rule NAME])"));
      return;
    }
    std::string label = named(*kind) ? headerForm(*kind) : kindName(*kind);
    if (*kind == S::Server || *kind == S::Cache) {
      if (!name.empty()) {
        error(line_, label, "", "[" + label + "] takes no name");
        return;
      }
      // A repeated [server] or [cache] continues the same section.
      open_ = *kind == S::Server ? &server_ : &cache_;
      if (open_->line == 0) open_->line = line_;
      skipping_ = false;
      return;
    }
    if (name.empty()) {
      error(line_, label, "", "section needs a name: [" + label + "]");
      return;
    }
    label = std::string(kindName(*kind)) + " " + name;
    if (!std::all_of(name.begin(), name.end(), [](char ch) {
          return std::isalnum(static_cast<unsigned char>(ch)) || ch == '_' || ch == '.' ||
                 ch == '-';
        })) {
      error(line_, label, "", "name may contain only letters, digits, '_', '.' and '-'");
      return;
    }
    std::vector<Section>& sections = *kind == S::Mount     ? mounts_
                                     : *kind == S::Account ? accounts_
                                     : *kind == S::User    ? users_
                                                           : rules_;
    for (const Section& s : sections) {
      if (s.label == label) {
        error(line_, label, "",
              "duplicate " + std::string(kindName(*kind)) + " '" + name + "' (first on line " +
                  std::to_string(s.line) + ")");
        return;
      }
    }
    if (*kind == S::Mount) {
      config_.mounts.push_back(Mount{.name = name, .line = line_});
    } else if (*kind == S::Account) {
      config_.accounts.push_back(Account{.name = name, .line = line_});
    } else if (*kind == S::User) {
      config_.users.push_back(User{.name = name, .line = line_});
    } else {
      config_.rules.push_back(Rule{.name = name, .line = line_});
    }
    sections.push_back(Section{*kind, label, line_, {}});
    open_ = &sections.back();
    skipping_ = false;
  }

  void setKey(std::string_view name, std::string_view value) {
    if (skipping_) return;  // the header was already reported
    if (!open_) {
      error(
          line_, "", std::string(name),
          "key outside any section (put it under [server], [cache], [account NAME], [user NAME], "
          "[mount NAME] or [rule NAME])");
      return;
    }
    const Directive* d = findDirective(open_->kind, name);
    if (!d) {
      error(line_, open_->label, std::string(name), unknownKey(open_->kind, name));
      return;
    }
    if (int first = open_->lineOf(name); first && !d->repeatable) {
      error(line_, open_->label, d->name,
            "given twice (first on line " + std::to_string(first) + ")");
      return;
    }
    // A secret and its _file twin are one setting.
    std::string twin = d->fileOf                  ? std::string(d->fileOf)
                       : d->type == T::Secret ? std::string(d->name) + "_file"
                                              : std::string();
    if (int first = twin.empty() ? 0 : open_->lineOf(twin)) {
      error(line_, open_->label, d->name,
            "give either " + std::string(d->fileOf ? d->fileOf : d->name) + " or its _file, not both (" +
                twin + " is on line " + std::to_string(first) + ")");
      return;
    }
    DirectiveValue v;
    v.line = line_;
    std::string why, content;
    bool ok = d->type != T::SecretFile || readSecretFile(value, &content, &why);
    if (ok) ok = parseValue(*d, d->type == T::SecretFile ? content : value, &v, &why);
    open_->given.try_emplace(d->name, Given{line_, ok});
    if (!ok) {
      error(line_, open_->label, d->name, why);
      return;
    }
    d->apply(config_, v);
  }

  // The content of a *_file secret: a regular file of at most
  // kMaxSecretFile bytes, line breaks at the end stripped, not empty. A
  // relative path is taken from the configuration file's folder.
  bool readSecretFile(std::string_view value, std::string* out, std::string* why) {
    std::string path(value);
    if (path.empty()) {
      *why = "empty value (expected the path of a file holding the secret)";
      return false;
    }
    if (path[0] != '/') {
      size_t slash = config_.file.rfind('/');
      if (slash != std::string::npos) path = config_.file.substr(0, slash + 1) + path;
    }
    int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    struct stat st {};
    if (fd < 0 || fstat(fd, &st) != 0) {
      *why = "cannot read '" + path + "': " + std::generic_category().message(errno);
      if (fd >= 0) close(fd);
      return false;
    }
    if (!S_ISREG(st.st_mode)) {
      close(fd);
      *why = "'" + path + "' is not a regular file";
      return false;
    }
    char buf[4096];
    for (;;) {
      ssize_t n = read(fd, buf, sizeof buf);
      if (n > 0) out->append(buf, static_cast<size_t>(n));
      if (n == 0 || out->size() > kMaxSecretFile) break;
      if (n < 0 && errno != EINTR) {
        *why = "cannot read '" + path + "': " + std::generic_category().message(errno);
        close(fd);
        return false;
      }
    }
    close(fd);
    if (out->size() > kMaxSecretFile) {
      *why = "'" + path + "' is larger than " + formatSize(kMaxSecretFile) + " (is it the right file?)";
      return false;
    }
    while (!out->empty() && (out->back() == '\n' || out->back() == '\r')) out->pop_back();
    if (out->empty()) {
      *why = "'" + path + "' is empty";
      return false;
    }
    return true;
  }

  std::string unknownKey(SectionKind k, std::string_view name) {
    std::string msg = "unknown key '" + std::string(name) + "'";
    std::vector<std::string_view> keys;
    for (const Directive& d : directives()) {
      if (d.section == k)
        keys.push_back(d.name);
      else if (d.name == name)
        return msg + " (it belongs in [" + headerForm(d.section) + "])";
    }
    std::string near = nearest(name, keys);
    return near.empty() ? msg : msg + " (did you mean '" + near + "'?)";
  }

  void closeSection() {
    if (open_ && open_->kind == S::Mount) closeMount(*open_, config_.mounts.back());
    if (open_ && open_->kind == S::Rule) closeRule(*open_, config_.rules.back());
    if (open_ && open_->kind == S::Account) closeAccount(*open_, config_.accounts.back());
    if (open_ && open_->kind == S::User) closeRequired(*open_);
    open_ = nullptr;
  }

  // Applies the table's default of every key not given that applies here.
  void applyDefaults(const Section& s, unsigned sources) {
    for (const Directive& d : directives()) {
      if (d.section != s.kind || !d.def || d.derivedDefault || !(d.sources & sources) ||
          s.lineOf(d.name))
        continue;
      DirectiveValue v;
      std::string why;
      if (parseValue(d, d.def, &v, &why))
        d.apply(config_, v);
      else
        error(0, s.label, d.name, "the built-in default does not parse: " + why);
    }
  }

  void closeMount(const Section& s, Mount& m) {
    if (!s.lineOf("prefix")) m.prefix = "/" + m.name;
    if (!s.lineOf("source"))
      error(s.line, s.label, "source",
            "required key is missing (http, local, alist or aliyundrive_open)");
    if (!s.goodLine("source")) return;  // nothing more can be judged

    unsigned bit = sourceBit(m.source);
    std::string type = sourceTypeName(m.source);
    for (const Directive& d : directives()) {
      if (d.section != S::Mount) continue;
      int line = s.lineOf(d.name);
      if (line && !(d.sources & bit))
        error(line, s.label, d.name,
              "does not apply to " + type + " mounts (only " + sourcesText(d.sources) + ")");
      if (!s.lineOfEither(d) && (d.requiredFor & bit))
        error(s.line, s.label, d.name, "required for " + type + " mounts but missing");
    }
    applyDefaults(s, bit);

    if (m.source == SourceType::Local && m.delivery == Delivery::Redirect)
      error(s.lineOf("delivery"), s.label, "delivery",
            "redirect is impossible for a local mount: there is no upstream link to send the "
            "client to");
    if (m.delivery == Delivery::ProxyUrl && !s.lineOf("proxy_url"))
      error(s.lineOf("delivery"), s.label, "delivery",
            "proxy_url delivery needs proxy_url in this mount");
    if (int line = s.goodLine("root"); line && m.source == SourceType::Local) {
      struct stat st {};
      if (m.root[0] != '/')
        error(line, s.label, "root", "must be an absolute path: '" + m.root + "'");
      else if (stat(m.root.c_str(), &st) != 0)
        error(line, s.label, "root",
              "cannot use '" + m.root + "': " + std::generic_category().message(errno));
      else if (!S_ISDIR(st.st_mode))
        error(line, s.label, "root", "not a directory: '" + m.root + "'");
    }
  }

  void closeAccount(const Section& s, Account& a) {
    for (const Directive& d : directives())
      if (d.section == S::Account && d.requiredFor && !s.lineOfEither(d))
        error(s.line, s.label, d.name, "required key is missing");
    applyDefaults(s, kAllSources);
    // The token exchange needs our own app's credentials, or a relay that
    // holds them.
    if (!a.clientId.empty() && a.clientSecret.empty())
      error(s.lineOf("client_id"), s.label, "client_secret", "client_id needs client_secret");
    else if (a.clientId.empty() && !a.clientSecret.empty())
      error(s.lineOf("client_secret"), s.label, "client_id", "client_secret needs client_id");
    else if (!a.clientId.empty() && !a.oauthTokenUrl.empty())
      error(s.lineOf("oauth_token_url"), s.label, "oauth_token_url",
            "set either client_id/client_secret or oauth_token_url, not both");
    else if (a.clientId.empty() && a.oauthTokenUrl.empty())
      error(s.line, s.label, "client_id",
            "set client_id and client_secret (your Open-platform app), or oauth_token_url (a "
            "token relay)");
  }

  // Required keys, then defaults: all a section without cross-key checks needs.
  void closeRequired(const Section& s) {
    for (const Directive& d : directives())
      if (d.section == s.kind && d.requiredFor && !s.lineOf(d.name))
        error(s.line, s.label, d.name, "required key is missing");
    applyDefaults(s, kAllSources);
  }

  void closeRule(const Section& s, Rule& r) {
    closeRequired(s);
    if (r.minSize && r.maxSize && *r.minSize > *r.maxSize) {
      bool maxLast = s.lineOf("max_size") > s.lineOf("min_size");
      error(std::max(s.lineOf("max_size"), s.lineOf("min_size")), s.label,
            maxLast ? "max_size" : "min_size",
            "min_size " + formatSize(*r.minSize) + " is larger than max_size " +
                formatSize(*r.maxSize));
    }
  }

  // Checks that span sections, once everything is read.
  void finish() {
    closeSection();
    applyDefaults(server_, kAllSources);
    applyDefaults(cache_, kAllSources);

    std::map<std::pair<std::string, uint16_t>, int> listens;
    for (const ListenAddr& l : config_.server.listen) {
      if (l.port == 0) continue;  // each asks the kernel for its own free port
      auto [it, fresh] = listens.try_emplace({l.host, l.port}, l.line);
      if (!fresh)
        error(l.line, "server", "listen",
              "address given twice (first on line " + std::to_string(it->second) + ")");
    }

    checkTls();

    // An edge serves /<path>?sign=… to anyone holding a link: without a
    // secret it would be an open proxy for every mount.
    if (config_.server.role == Role::Edge && config_.server.signSecret.empty())
      error(server_.lineOf("role"), "server", "role",
            "role = edge needs sign_secret (the key its links are signed with, e.g. AList's token)");

    std::vector<std::string_view> accountNames;
    for (const Account& a : config_.accounts) accountNames.push_back(a.name);
    std::map<std::string, size_t> prefixes;
    std::vector<std::string_view> mountNames;
    for (size_t i = 0; i < config_.mounts.size(); i++) {
      Mount& m = config_.mounts[i];
      if (m.source == SourceType::AliyundriveOpen && !m.account.empty()) {
        auto a = std::find_if(config_.accounts.begin(), config_.accounts.end(),
                              [&m](const Account& x) { return x.name == m.account; });
        if (a != config_.accounts.end()) {
          m.accountIndex = static_cast<int>(a - config_.accounts.begin());
        } else {
          std::string near = nearest(m.account, accountNames);
          error(mounts_[i].lineOf("account"), mounts_[i].label, "account",
                "no [account " + m.account + "] in this file" +
                    (near.empty() ? "" : " (did you mean '" + near + "'?)"));
        }
      }
      mountNames.push_back(m.name);
      auto [it, fresh] = prefixes.try_emplace(m.prefix, i);
      if (!fresh) {
        int line = mounts_[i].lineOf("prefix");
        error(line ? line : m.line, mounts_[i].label, "prefix",
              "'" + m.prefix + "' is already the prefix of mount '" +
                  config_.mounts[it->second].name + "'");
      }
    }

    for (size_t i = 0; i < config_.rules.size(); i++) {
      const Rule& r = config_.rules[i];
      const Section& s = rules_[i];
      std::string lacking;  // named mounts without a proxy_url
      for (const std::string& name : r.mounts) {
        auto m = std::find_if(config_.mounts.begin(), config_.mounts.end(),
                              [&name](const Mount& x) { return x.name == name; });
        if (m == config_.mounts.end()) {
          std::string near = nearest(name, mountNames);
          error(s.lineOf("mount"), s.label, "mount",
                "unknown mount '" + name + "'" +
                    (near.empty() ? "" : " (did you mean '" + near + "'?)"));
        } else if (m->proxyUrl.empty()) {
          lacking += (lacking.empty() ? "'" : ", '") + name + "'";
        }
      }
      if (r.action != Delivery::ProxyUrl || s.lineOf("proxy_url")) continue;
      if (r.mounts.empty())
        error(s.lineOf("action"), s.label, "action",
              "proxy_url needs proxy_url in this rule (it applies to every mount)");
      else if (!lacking.empty())
        error(s.lineOf("action"), s.label, "action",
              "proxy_url needs proxy_url in this rule or on mount " + lacking);
    }
  }

  // The files themselves are read by src/tls.cc (`check` and start-up report
  // what is wrong with them); here only the keys must agree.
  void checkTls() {
    const conf::Server& sv = config_.server;
    int cert = server_.lineOf("tls_cert"), key = server_.lineOf("tls_key");
    if (cert && !key)
      error(cert, "server", "tls_key", "tls_cert needs tls_key (the certificate's private key)");
    else if (key && !cert)
      error(key, "server", "tls_cert", "tls_key needs tls_cert (the certificate it belongs to)");
    for (const ListenAddr& l : sv.listen) {
      if (l.tls && !cert && !key) {
        error(l.line, "server", "listen",
              "the tls flag needs tls_cert and tls_key in [server]");
        break;
      }
    }
    if (cert && key && !sv.anyTls())
      error(cert, "server", "tls_cert",
            "no listen address has the tls flag, so the certificate would not be used "
            "(e.g. listen = 0.0.0.0:8443 tls)");
  }

  void error(int line, std::string section, std::string key, std::string message) {
    errors_.push_back(
        Error{config_.file, line, std::move(section), std::move(key), std::move(message)});
  }

  std::string_view text_;
  size_t pos_ = 0;
  int line_ = 0;
  Config config_;
  std::vector<Error> errors_;
  Section server_{S::Server, "server"};
  Section cache_{S::Cache, "cache"};
  std::vector<Section> accounts_, users_, mounts_, rules_;  // parallel to config_'s vectors
  Section* open_ = nullptr;              // nullptr before the first section
  bool skipping_ = false;                // inside a section whose header was rejected
};

}  // namespace

LoadResult loadString(std::string_view text, const std::string& name) {
  return Loader(text, name).run();
}

LoadResult loadFile(const std::string& path) {
  auto fail = [&path](const std::string& why) {
    return LoadResult{std::nullopt, {Error{path, 0, "", "", why}}};
  };
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fail("cannot open: " + std::generic_category().message(errno));
  struct stat st {};
  if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
    close(fd);
    return fail("is a directory, not a configuration file");
  }
  std::string text;
  char buf[65536];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n > 0) {
      text.append(buf, static_cast<size_t>(n));
    } else if (n == 0) {
      break;
    } else if (errno != EINTR) {
      std::string why = "cannot read: " + std::generic_category().message(errno);
      close(fd);
      return fail(why);
    }
  }
  close(fd);
  return loadString(text, path);
}

}  // namespace slip::conf
