// classifyUpstream: one reading of every upstream answer (policy.h,
// "upstream answers"). What we asked decides what a status means: a 200 is
// the answer to a whole-body request but a refusal of Range to a piece; a 416
// to bytes=0-0 is an empty object, to a piece a changed one.

#include <cctype>

#include "policy/policy.h"
#include "policy/snake_name.h"

namespace slip::policy {
namespace {

using V = UpstreamVerdict;

bool etagDiffers(const std::string& got, const std::string& want) {
  return !got.empty() && !want.empty() && got != want;
}

int64_t retryAfterMsOf(const UpstreamAnswer& a, int64_t now) {
  auto s = parseRetryAfter(a.retryAfter, now);
  return s ? *s * 1000 : -1;  // at most kRetryAfterMaxSeconds: no overflow
}

/// The statuses every kind of ask reads the same way.
UpstreamJudgement byStatus(const UpstreamAnswer& a) {
  UpstreamJudgement j;
  const int st = a.status;
  j.detail = "upstream answered " + std::to_string(st);
  if (st == 401 || st == 403 || st == 410) {
    j.verdict = V::Denied;
    j.detail = "upstream refused the link: " + std::to_string(st);
  } else if (st == 404) {
    j.verdict = V::Gone;
    j.detail = "upstream: 404";
  } else if (st == 429 || st == 503) {
    j.verdict = V::Busy;
  } else if (st == 501 || st == 505 || st == 508) {
    // Not implemented, version not supported, a loop (our own 508
    // self_request): asking again gets the same answer.
    j.verdict = V::BadStatus;
    j.permanent = true;
  } else if (st >= 500 || st == 408) {
    j.verdict = V::ServerError;  // 408: the server gave up on us; a new request may do
  } else {
    j.verdict = V::BadStatus;  // asking again gets the same answer
    j.permanent = true;
  }
  return j;
}

/// A Content-Encoding that is not "identity" (codings are a list,
/// case-insensitive; empty elements are allowed by the list syntax).
bool encoded(std::string_view v) {
  size_t i = 0;
  while (i <= v.size()) {
    size_t comma = v.find(',', i);
    std::string_view item = v.substr(i, comma == std::string_view::npos ? std::string_view::npos : comma - i);
    while (!item.empty() && (item.front() == ' ' || item.front() == '\t')) item.remove_prefix(1);
    while (!item.empty() && (item.back() == ' ' || item.back() == '\t')) item.remove_suffix(1);
    if (!item.empty()) {
      static constexpr std::string_view kIdentity = "identity";
      if (item.size() != kIdentity.size()) return true;
      for (size_t k = 0; k < item.size(); k++)
        if (std::tolower(static_cast<unsigned char>(item[k])) != kIdentity[k]) return true;
    }
    if (comma == std::string_view::npos) break;
    i = comma + 1;
  }
  return false;
}

UpstreamJudgement probe(const UpstreamAnswer& a) {
  UpstreamJudgement j;
  auto cr = parseContentRange(a.contentRange);
  if (a.status == 206) {
    if (!cr || !cr->length) {
      j.verdict = V::BadAnswer;
      j.detail = "probe: 206 without a total length: " + a.contentRange;
      return j;
    }
    j.verdict = V::Ok;
    j.total = cr->length;
    return j;
  }
  if (a.status == 200) {
    j.verdict = V::IgnoresRanges;  // no length: the object cannot be cut into blocks
    j.total = a.contentLength;
    return j;
  }
  if (a.status == 416) {
    j.total = cr && cr->length ? *cr->length : 0;
    j.verdict = *j.total == 0 ? V::Ok : V::BadAnswer;  // bytes=0-0 of nothing: empty
    if (*j.total != 0) j.detail = "probe: 416 for bytes=0-0 on a non-empty object";
    return j;
  }
  return byStatus(a);
}

UpstreamJudgement piece(const UpstreamAsk& ask, const UpstreamAnswer& a) {
  UpstreamJudgement j;
  if (a.status == 206) {
    auto cr = parseContentRange(a.contentRange);
    if (cr) j.total = cr->length;
    if (!cr || !cr->range || (cr->length && *cr->length != ask.size)) {
      j.verdict = cr && cr->length ? V::Changed : V::BadAnswer;
      j.detail = "Content-Range " + a.contentRange + " for an object of " + std::to_string(ask.size) + " bytes";
      return j;
    }
    if (etagDiffers(a.etag, ask.etag)) {
      j.verdict = V::Changed;
      j.detail = "ETag " + a.etag + ", expected " + ask.etag;
      return j;
    }
    if (cr->range->begin != ask.range.begin || cr->range->end < ask.range.end) {
      j.verdict = V::BadAnswer;
      j.detail = "asked " + upstreamRange(ask.range) + ", got " + a.contentRange;
      return j;
    }
    j.verdict = V::Ok;
    j.range = *cr->range;
    return j;
  }
  if (a.status == 200) {
    j.total = a.contentLength;
    j.verdict = a.contentLength && *a.contentLength == ask.size ? V::IgnoresRanges : V::Changed;
    j.detail = "200 to a range request";
    return j;
  }
  if (a.status == 416) {
    j.verdict = V::Changed;  // our range fits the version we know: it is not that version
    j.detail = "upstream answered 416";
    return j;
  }
  return byStatus(a);
}

UpstreamJudgement whole(const UpstreamAsk& ask, const UpstreamAnswer& a) {
  UpstreamJudgement j = a.status == 200 ? UpstreamJudgement{} : byStatus(a);
  j.detail = "whole-body request: status " + std::to_string(a.status) + ", length " +
             (a.contentLength ? std::to_string(*a.contentLength) : std::string("?")) + ", ETag " + a.etag;
  if (a.status != 200) {
    if (a.status == 206 || a.status == 416) j.verdict = V::BadAnswer;  // we sent no Range
    return j;
  }
  j.total = a.contentLength;
  bool same = (!a.contentLength || *a.contentLength == ask.size) && !etagDiffers(a.etag, ask.etag);
  j.verdict = same ? V::Ok : V::Changed;
  j.range = {0, ask.size};
  return j;
}

UpstreamJudgement stream(const UpstreamAsk& ask, const UpstreamAnswer& a) {
  using K = WireRange::Kind;
  const bool ranged = ask.wire.kind == K::Single || ask.wire.kind == K::Suffix;
  UpstreamJudgement j;
  auto cr = parseContentRange(a.contentRange);
  if (a.status == 206) {
    if (!cr || !cr->range || !cr->length) {
      j.verdict = V::BadAnswer;
      j.detail = "206 without a usable Content-Range: " + a.contentRange;
      return j;
    }
    j.total = cr->length;
    if (!ranged || (ask.wire.kind == K::Single && cr->range->begin != ask.wire.first)) {
      j.verdict = V::BadAnswer;
      j.detail = "upstream answered a range we did not ask for: " + a.contentRange;
      return j;
    }
    j.verdict = V::Ok;
    j.range = *cr->range;
    return j;
  }
  if (a.status == 200) {
    j.total = a.contentLength;
    j.verdict = ranged ? V::IgnoresRanges : V::Ok;
    if (a.contentLength) j.range = {0, *a.contentLength};
    return j;
  }
  if (a.status == 416) {
    j.verdict = V::Unsatisfiable;
    j.total = cr && cr->length ? *cr->length : 0;
    return j;
  }
  return byStatus(a);
}

}  // namespace

const char* upstreamVerdictName(UpstreamVerdict v) {
  switch (v) {
#define SLIP_UPSTREAM_VERDICT_NAME(name, text) \
  case UpstreamVerdict::name: {                \
    static constexpr SnakeName code(#name);    \
    return code.chars;                         \
  }
    SLIP_UPSTREAM_VERDICTS(SLIP_UPSTREAM_VERDICT_NAME)
#undef SLIP_UPSTREAM_VERDICT_NAME
  }
  return "unknown";
}

namespace {

UpstreamJudgement judge(const UpstreamAsk& ask, const UpstreamAnswer& answer) {
  switch (ask.kind) {
    case UpstreamAsk::Kind::Probe: return probe(answer);
    case UpstreamAsk::Kind::Piece: return piece(ask, answer);
    case UpstreamAsk::Kind::Whole: return whole(ask, answer);
    case UpstreamAsk::Kind::Stream: return stream(ask, answer);
  }
  return byStatus(answer);
}

}  // namespace

UpstreamJudgement classifyUpstream(const UpstreamAsk& ask, const UpstreamAnswer& answer,
                                   int64_t nowUnixSeconds) {
  UpstreamJudgement j = judge(ask, answer);
  if (j.verdict == V::Busy || j.verdict == V::ServerError)
    j.retryAfterMs = retryAfterMsOf(answer, nowUnixSeconds);
  // We ask for identity: encoded bytes are not the object's bytes (a gzip
  // body of "the right length" would be cached and served as the file).
  if (answer.status >= 200 && answer.status < 300 && encoded(answer.contentEncoding)) {
    j.verdict = V::BadAnswer;
    j.permanent = true;
    j.range = {};
    j.detail = "Content-Encoding " + answer.contentEncoding + " (asked for identity)";
  }
  return j;
}

}  // namespace slip::policy
