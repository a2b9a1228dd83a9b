// The sources' replies, parsed by pure functions: bytes in, a struct or the
// reason the bytes are not what the API's contract says. Nothing here does
// I/O or throws; every field is read with a type check (a number that is a
// string, null, 1e300, a value past int64, a negative count, a list where a
// map belongs). Used by the alist and aliyundrive_open sources and by the
// token-exchange helper; table-tested in tests/unit/replies_test.cc and meant
// for fuzz targets.
#pragma once

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace slip::proxy::replies {

/// Why a reply was refused.
struct Problem {
  enum class Kind {
    None,
    Contract,  // not the API's reply shape: wrong type, missing field, not JSON
    Header,    // a header the source asks for cannot be sent (name or value)
  };
  Kind kind = Kind::None;
  std::string why;  // names the field, never a token's or header's value
  explicit operator bool() const { return kind != Kind::None; }
};

// ---------------------------------------------------------------- AList

/// POST /api/fs/link → {"code":200,"message":"success","data":{"url":…,"header":{…}}}.
struct AlistLink {
  int64_t code = 0;  // 200 = success; otherwise an error AList reports
  std::string message;
  std::string url;  // data.url, code 200 only ("//host/…" gets "http:")
  std::vector<std::pair<std::string, std::string>> headers;  // data.header, flattened
};

/// `code` must be an integer, `message` a string (or absent/null); with
/// code 200, `data` an object whose `url` is a non-empty http(s) URL and whose
/// `header` (absent or null = none) is a map of lists of strings, each name
/// and value one conf::headerProblem() accepts.
Problem parseAlistLink(std::string_view body, AlistLink* out);

// ---------------------------------------------------------------- Aliyundrive Open

/// code/message of an error reply, when they are strings (else empty).
void parseApiError(std::string_view body, std::string* code, std::string* message);

/// POST /adrive/v1.0/user/getDriveInfo: the `<type>_drive_id` asked for
/// ("default", "resource", "backup"); empty when the account has none.
Problem parseDriveId(std::string_view body, std::string_view type, std::string* driveId);

struct ListItem {
  std::string id;
  std::string name;
  bool folder = false;
  uint64_t size = 0;                 // files; absent/null = 0
  std::optional<int64_t> updatedMs;  // `updated_at` when it is an ISO 8601 UTC time
  std::string contentHash;           // `content_hash` (SHA-1 hex), "" when absent
};
struct ListPage {
  std::vector<ListItem> items;
  std::string nextMarker;  // "" = last page
};
/// POST /adrive/v1.0/openFile/list: `items` a list of objects with non-empty
/// string `file_id` and `name` and a string `type`, and where present a
/// non-negative integer `size` and string `updated_at`/`content_hash` (an
/// `updated_at` that is not ISO 8601 is ignored: it only dates a listing);
/// `next_marker` a string (absent/null = last page).
Problem parseListPage(std::string_view body, ListPage* out);

struct DownloadUrl {
  std::string url;
  std::optional<int64_t> expirationMs;  // Unix ms, when the reply says
};
/// POST /adrive/v1.0/openFile/getDownloadUrl: `url` an http(s) URL,
/// `expiration` (absent/null allowed) an ISO 8601 UTC time.
Problem parseDownloadUrl(std::string_view body, DownloadUrl* out);

struct TokenReply {
  std::string accessToken;
  std::string refreshToken;
  int64_t expiresInSec = 7200;
};
/// The token endpoint's success reply: `access_token` and `refresh_token`
/// non-empty strings of visible ASCII (they go into headers and JSON),
/// `expires_in` (absent/null = 7200) an integer of 1 s..30 days.
Problem parseTokenReply(std::string_view body, TokenReply* out);

/// The token-exchange helper's one result line (proxy/sources/aliyun_token.cc).
struct HelperResult {
  bool ok = false;
  // ok
  std::string accessToken;
  int64_t accessExpiresMs = 0;
  bool reused = false;
  bool persisted = true;
  std::string refreshToken;  // when not persisted
  std::string persistError;
  // not ok
  bool refused = false;
  int64_t status = 0;
  std::string code;
  std::string message;
};
Problem parseHelperResult(std::string_view body, HelperResult* out);

// ---------------------------------------------------------------- helpers

/// "2024-05-01T10:00:00.000Z" (or "+00:00") → Unix ms; nullopt otherwise.
std::optional<int64_t> parseIsoUtc(std::string_view s);

/// An integer-valued JSON number that fits int64 (integral floats within
/// ±2^53 included); nullopt for anything else (strings, 1e300, 2^64, 1.5).
std::optional<int64_t> jsonInt(const nlohmann::json& j);

/// Whether `s` is well-formed UTF-8 (JSON strings must be).
bool validUtf8(std::string_view s);

/// j.dump() that never throws: invalid UTF-8 is replaced, not an exception.
std::string dumpJson(const nlohmann::json& j);

}  // namespace slip::proxy::replies
