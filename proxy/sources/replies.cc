// Pure parsers of the sources' replies (see replies.h). Every access goes
// through field()/str()/integer() below: no nlohmann accessor that throws
// (get<T> on the wrong type, value(), at(), operator[] on a const object) is
// used on untrusted data, and a stray exception is still caught at the top.
#include "proxy/sources/replies.h"

#include <charconv>
#include <cmath>
#include <ctime>
#include <nlohmann/json.hpp>

#include "conf/conf.h"

namespace slip::proxy::replies {
namespace {

using json = nlohmann::json;

constexpr int64_t kMaxExpiresInSec = 30LL * 86'400;

Problem contract(std::string why) { return Problem{Problem::Kind::Contract, std::move(why)}; }

// Parses `body` as a JSON object.
Problem object(std::string_view body, json* j) {
  *j = json::parse(body.begin(), body.end(), nullptr, false);
  if (j->is_discarded()) return contract("the reply is not JSON");
  if (!j->is_object()) return contract("the reply is not a JSON object");
  return {};
}

// The member `key` of an object, or null when it is absent or JSON null.
const json* field(const json& obj, const char* key) {
  auto it = obj.find(key);
  return it == obj.end() || it->is_null() ? nullptr : &*it;
}

const char* typeName(const json& j) {
  switch (j.type()) {
    case json::value_t::null:
      return "null";
    case json::value_t::object:
      return "an object";
    case json::value_t::array:
      return "a list";
    case json::value_t::string:
      return "a string";
    case json::value_t::boolean:
      return "a boolean";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
    case json::value_t::number_float:
      return "a number";
    case json::value_t::binary:
      return "binary";
    case json::value_t::discarded:
      return "invalid";
  }
  return "?";
}

// A string member; absent/null gives "" unless required.
Problem str(const json& obj, const char* key, std::string* out, bool required,
            const std::string& where = "") {
  const json* v = field(obj, key);
  if (!v) return required ? contract(where + key + " is missing") : Problem{};
  if (!v->is_string()) return contract(where + key + " is " + typeName(*v) + ", not a string");
  *out = v->get<std::string>();
  if (required && out->empty()) return contract(where + key + " is empty");
  return {};
}

Problem integer(const json& obj, const char* key, int64_t* out, bool required) {
  const json* v = field(obj, key);
  if (!v) return required ? contract(std::string(key) + " is missing") : Problem{};
  if (!v->is_number()) return contract(std::string(key) + " is " + typeName(*v) + ", not a number");
  auto n = jsonInt(*v);
  if (!n) return contract(std::string(key) + " is not an integer of 64 bits");
  *out = *n;
  return {};
}

Problem boolean(const json& obj, const char* key, bool* out) {
  const json* v = field(obj, key);
  if (!v) return {};
  if (!v->is_boolean())
    return contract(std::string(key) + " is " + typeName(*v) + ", not a boolean");
  *out = v->get<bool>();
  return {};
}

bool httpUrl(const std::string& url) {
  return url.starts_with("http://") || url.starts_with("https://");
}

// Tokens go into `Authorization: Bearer …` and into JSON: visible ASCII only.
bool visibleAscii(const std::string& s) {
  for (char ch : s)
    if (ch < 0x21 || ch > 0x7e) return false;
  return !s.empty();
}

template <typename Fn>
Problem guarded(Fn fn) {
  try {
    return fn();
  } catch (const std::exception& e) {
    return contract(std::string("the reply could not be read: ") + e.what());
  }
}

Problem alistHeaders(const json& data, AlistLink* out) {
  const json* h = field(data, "header");
  if (!h) return {};
  if (!h->is_object())
    return contract("data.header is " + std::string(typeName(*h)) + ", not a map");
  for (const auto& [name, values] : h->items()) {
    if (values.is_null()) continue;
    std::string where = "data.header." + conf::printable(name);
    if (!values.is_array())
      return contract(where + " is " + typeName(values) + ", not a list of strings");
    for (const json& v : values) {
      if (!v.is_string()) return contract(where + " holds " + typeName(v) + ", not a string");
      const std::string& value = v.get_ref<const std::string&>();
      if (auto problem = conf::headerProblem(name, value))
        return Problem{Problem::Kind::Header, "data.header: " + *problem};
      out->headers.emplace_back(name, value);
    }
  }
  return {};
}

}  // namespace

// ---------------------------------------------------------------- AList

Problem parseAlistLink(std::string_view body, AlistLink* out) {
  return guarded([&]() -> Problem {
    json j;
    if (Problem p = object(body, &j)) return p;
    if (Problem p = integer(j, "code", &out->code, true)) return p;
    if (Problem p = str(j, "message", &out->message, false)) return p;
    if (out->code != 200) return {};
    const json* data = field(j, "data");
    if (!data) return contract("data is missing");
    if (!data->is_object())
      return contract("data is " + std::string(typeName(*data)) + ", not an object");
    if (Problem p = str(*data, "url", &out->url, true, "data.")) return p;
    if (out->url.starts_with("//")) out->url = "http:" + out->url;
    if (!httpUrl(out->url)) return contract("data.url is not an http(s) URL");
    return alistHeaders(*data, out);
  });
}

// ---------------------------------------------------------------- Aliyundrive Open

void parseApiError(std::string_view body, std::string* code, std::string* message) {
  guarded([&]() -> Problem {
    json j;
    if (object(body, &j)) return {};
    str(j, "code", code, false);
    str(j, "message", message, false);
    return {};
  });
}

Problem parseDriveId(std::string_view body, std::string_view type, std::string* driveId) {
  return guarded([&]() -> Problem {
    json j;
    if (Problem p = object(body, &j)) return p;
    std::string key = std::string(type) + "_drive_id";
    return str(j, key.c_str(), driveId, false);
  });
}

Problem parseListPage(std::string_view body, ListPage* out) {
  return guarded([&]() -> Problem {
    json j;
    if (Problem p = object(body, &j)) return p;
    const json* items = field(j, "items");
    if (!items) return contract("items is missing");
    if (!items->is_array())
      return contract("items is " + std::string(typeName(*items)) + ", not a list");
    size_t i = 0;
    for (const json& item : *items) {
      std::string where = "items[" + std::to_string(i++) + "].";
      if (!item.is_object())
        return contract(where.substr(0, where.size() - 1) + " is not an object");
      ListItem e;
      std::string type;
      if (Problem p = str(item, "file_id", &e.id, true, where)) return p;
      if (Problem p = str(item, "name", &e.name, true, where)) return p;
      if (Problem p = str(item, "type", &type, true, where)) return p;
      e.folder = type == "folder";
      int64_t size = 0;
      std::string updated;
      if (Problem p = integer(item, "size", &size, false)) return contract(where + p.why);
      if (size < 0) return contract(where + "size is negative");
      e.size = static_cast<uint64_t>(size);
      if (Problem p = str(item, "updated_at", &updated, false, where)) return p;
      if (!updated.empty()) e.updatedMs = parseIsoUtc(updated);
      if (Problem p = str(item, "content_hash", &e.contentHash, false, where)) return p;
      out->items.push_back(std::move(e));
    }
    return str(j, "next_marker", &out->nextMarker, false);
  });
}

Problem parseDownloadUrl(std::string_view body, DownloadUrl* out) {
  return guarded([&]() -> Problem {
    json j;
    if (Problem p = object(body, &j)) return p;
    if (Problem p = str(j, "url", &out->url, true)) return p;
    if (!httpUrl(out->url)) return contract("url is not an http(s) URL");
    std::string expiration;
    if (Problem p = str(j, "expiration", &expiration, false)) return p;
    if (field(j, "expiration")) {
      out->expirationMs = parseIsoUtc(expiration);
      if (!out->expirationMs) return contract("expiration is not an ISO 8601 UTC time");
    }
    return {};
  });
}

Problem parseTokenReply(std::string_view body, TokenReply* out) {
  return guarded([&]() -> Problem {
    json j;
    if (Problem p = object(body, &j)) return p;
    if (Problem p = str(j, "access_token", &out->accessToken, true)) return p;
    if (Problem p = str(j, "refresh_token", &out->refreshToken, true)) return p;
    if (!visibleAscii(out->accessToken))
      return contract("access_token holds characters a token cannot");
    if (!visibleAscii(out->refreshToken))
      return contract("refresh_token holds characters a token cannot");
    if (Problem p = integer(j, "expires_in", &out->expiresInSec, false)) return p;
    if (out->expiresInSec < 1 || out->expiresInSec > kMaxExpiresInSec)
      return contract("expires_in is out of range (1 s..30 days)");
    return {};
  });
}

Problem parseHelperResult(std::string_view body, HelperResult* out) {
  return guarded([&]() -> Problem {
    json j;
    if (Problem p = object(body, &j)) return p;
    const json* ok = field(j, "ok");
    if (!ok || !ok->is_boolean()) return contract("ok is missing or not a boolean");
    out->ok = ok->get<bool>();
    if (out->ok) {
      if (Problem p = str(j, "access_token", &out->accessToken, true)) return p;
      if (!visibleAscii(out->accessToken))
        return contract("access_token holds characters a token cannot");
      if (Problem p = integer(j, "access_expires_ms", &out->accessExpiresMs, true)) return p;
      if (Problem p = boolean(j, "reused", &out->reused)) return p;
      if (Problem p = boolean(j, "persisted", &out->persisted)) return p;
      if (Problem p = str(j, "refresh_token", &out->refreshToken, false)) return p;
      return str(j, "persist_error", &out->persistError, false);
    }
    if (Problem p = boolean(j, "refused", &out->refused)) return p;
    if (Problem p = integer(j, "status", &out->status, false)) return p;
    if (Problem p = str(j, "code", &out->code, false)) return p;
    return str(j, "message", &out->message, false);
  });
}

// ---------------------------------------------------------------- helpers

std::optional<int64_t> parseIsoUtc(std::string_view s) {
  // YYYY-MM-DDTHH:MM:SS[.fraction](Z|+00:00)
  auto num = [&s](size_t at, size_t n, int* v) {
    if (at + n > s.size()) return false;
    for (size_t i = at; i < at + n; i++)
      if (s[i] < '0' || s[i] > '9') return false;
    return std::from_chars(s.data() + at, s.data() + at + n, *v).ec == std::errc();
  };
  tm t{};
  int year = 0, mon = 0, day = 0, hour = 0, min = 0, sec = 0;
  if (!num(0, 4, &year) || s.size() < 19 || s[4] != '-' || !num(5, 2, &mon) || s[7] != '-' ||
      !num(8, 2, &day) || (s[10] != 'T' && s[10] != 't') || !num(11, 2, &hour) || s[13] != ':' ||
      !num(14, 2, &min) || s[16] != ':' || !num(17, 2, &sec))
    return std::nullopt;
  if (mon < 1 || mon > 12 || day < 1 || day > 31 || hour > 23 || min > 59 || sec > 60 ||
      year < 1970)
    return std::nullopt;
  size_t i = 19;
  int ms = 0, digits = 0;
  if (i < s.size() && s[i] == '.') {
    for (i++; i < s.size() && s[i] >= '0' && s[i] <= '9'; i++)
      if (digits++ < 3) ms = ms * 10 + (s[i] - '0');
    if (digits == 0) return std::nullopt;
    for (; digits < 3; digits++) ms *= 10;
  }
  std::string_view zone = s.substr(i);
  if (zone != "Z" && zone != "z" && zone != "+00:00") return std::nullopt;
  t.tm_year = year - 1900;
  t.tm_mon = mon - 1;
  t.tm_mday = day;
  t.tm_hour = hour;
  t.tm_min = min;
  t.tm_sec = sec;
  time_t secs = timegm(&t);
  if (secs == static_cast<time_t>(-1)) return std::nullopt;
  return static_cast<int64_t>(secs) * 1000 + ms;
}

std::optional<int64_t> jsonInt(const json& j) {
  if (j.is_number_unsigned()) {
    uint64_t u = j.get<uint64_t>();
    if (u > static_cast<uint64_t>(INT64_MAX)) return std::nullopt;
    return static_cast<int64_t>(u);
  }
  if (j.is_number_integer()) return j.get<int64_t>();
  if (j.is_number_float()) {
    double d = j.get<double>();
    constexpr double kExact = 9007199254740992.0;  // 2^53: every integer below is exact
    if (!std::isfinite(d) || std::floor(d) != d || std::fabs(d) > kExact) return std::nullopt;
    return static_cast<int64_t>(d);
  }
  return std::nullopt;
}

bool validUtf8(std::string_view s) {
  static constexpr uint32_t kMin[] = {0, 0x80, 0x800, 0x10000};  // shortest form per length
  for (size_t i = 0; i < s.size();) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      i++;
      continue;
    }
    size_t n = 0;
    uint32_t cp = 0;
    if ((c & 0xe0) == 0xc0)
      n = 1, cp = c & 0x1f;
    else if ((c & 0xf0) == 0xe0)
      n = 2, cp = c & 0x0f;
    else if ((c & 0xf8) == 0xf0)
      n = 3, cp = c & 0x07;
    else
      return false;
    if (i + n >= s.size()) return false;
    for (size_t k = 1; k <= n; k++) {
      auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3f);
    }
    if (cp < kMin[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += n + 1;
  }
  return true;
}

std::string dumpJson(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

}  // namespace slip::proxy::replies
