// admin_body — the admin API's JSON request bodies (POST prefetch, POST
// purge), parsed defensively: bounded size and nesting, a JSON object with
// known keys only, paths normalised like request paths. Pure (no I/O, no
// context), so tests/fuzz/admin_body_fuzz.cc drives it with arbitrary bytes.
#include <algorithm>
#include <nlohmann/json.hpp>

#include "src/admin_api.h"

namespace slip::admin {
namespace {

using json = nlohmann::json;
using policy::Reason;

constexpr int kMaxJsonDepth = 16;  // our bodies are flat objects

// Deepest nesting of [ and { outside strings: refused before the parser
// sees a body built to exhaust its stack.
int nesting(std::string_view s) {
  int depth = 0, worst = 0;
  bool inString = false, escaped = false;
  for (char c : s) {
    if (inString) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') inString = false;
    } else if (c == '"') {
      inString = true;
    } else if (c == '[' || c == '{') {
      worst = std::max(worst, ++depth);
    } else if (c == ']' || c == '}') {
      depth--;
    }
  }
  return worst;
}

// The body as a JSON object whose keys are all in `allowed`.
std::optional<json> objectBody(std::string_view body, std::initializer_list<std::string_view> allowed,
                               ApiError* err) {
  if (body.size() > kMaxBody) {
    *err = {Reason::PayloadTooLarge, "at most " + std::to_string(kMaxBody) + " bytes"};
    return std::nullopt;
  }
  if (nesting(body) > kMaxJsonDepth) {
    *err = {Reason::BadJson, "nested too deeply"};
    return std::nullopt;
  }
  json j = json::parse(body, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    *err = {Reason::BadJson, j.is_discarded() ? "not valid JSON" : "expected a JSON object"};
    return std::nullopt;
  }
  for (const auto& [key, value] : j.items()) {
    if (std::find(allowed.begin(), allowed.end(), key) == allowed.end()) {
      *err = {Reason::BadJson, "unknown key '" + key + "'"};
      return std::nullopt;
    }
  }
  return j;
}

// A virtual path from a JSON string: absolute, normalised like a request path
// (no '..', NUL or backslash).
std::optional<std::string> virtualPath(const json& v, const char* key, ApiError* err) {
  if (!v.is_string() || v.get_ref<const std::string&>().empty()) {
    *err = {Reason::BadJson, std::string(key) + " must be a non-empty string"};
    return std::nullopt;
  }
  const std::string& raw = v.get_ref<const std::string&>();
  if (raw[0] != '/') {
    *err = {Reason::BadPath, std::string(key) + " must start with '/': /MOUNT/PATH"};
    return std::nullopt;
  }
  policy::PathResult pr = policy::normalizePath(policy::encodePath(raw));
  if (pr.reason != Reason::None) {
    *err = {pr.reason, std::string(key) + ": " + policy::reasonText(pr.reason)};
    return std::nullopt;
  }
  return pr.path;
}

}  // namespace

Outcome<std::string> parsePrefetchBody(std::string_view body) {
  using Out = Outcome<std::string>;
  ApiError err;
  auto j = objectBody(body, {"path"}, &err);
  if (!j) return Out::fail(err.reason, err.detail);
  auto path = virtualPath(j->contains("path") ? (*j)["path"] : json(), "path", &err);
  if (!path) return Out::fail(err.reason, err.detail);
  return Out::ok(std::move(*path));
}

Outcome<PurgeRequest> parsePurgeBody(std::string_view body) {
  using Out = Outcome<PurgeRequest>;
  ApiError err;
  auto j = objectBody(body, {"path", "prefix"}, &err);
  if (!j) return Out::fail(err.reason, err.detail);
  bool hasPath = j->contains("path"), hasPrefix = j->contains("prefix");
  if (hasPath == hasPrefix)
    return Out::fail(Reason::BadJson, "give exactly one of path (a file) or prefix (a folder)");
  const char* key = hasPath ? "path" : "prefix";
  auto path = virtualPath((*j)[key], key, &err);
  if (!path) return Out::fail(err.reason, err.detail);
  return Out::ok(PurgeRequest{std::move(*path), hasPrefix});
}

}  // namespace slip::admin
