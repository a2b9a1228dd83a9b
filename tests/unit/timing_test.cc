// Time-dependent policy (freshness, link and token margins, backoff): every
// row a function of `now`, no clock read.
#include <catch2/catch.hpp>
#include <climits>

#include "policy/policy.h"

using namespace slip::policy;

TEST_CASE("freshness: a stored version is trusted for revalidate", "[timing]") {
  struct Row {
    int64_t validated, revalidate, now;
    bool fresh;
  } rows[] = {
      {1000, 600'000, 1000, true},           // just validated
      {1000, 600'000, 600'999, true},        // the last millisecond
      {1000, 600'000, 601'000, false},       // exactly revalidate later
      {1000, 0, 1000, false},                // revalidate = 0: always ask
      {1000, 600'000, 500, true},            // the clock went back: still fresh
      {0, 600'000, 1'700'000'000'000, false},  // never validated
  };
  for (const auto& r : rows) {
    INFO(r.validated << " + " << r.revalidate << " at " << r.now);
    CHECK(isFresh(r.validated, r.revalidate, r.now) == r.fresh);
  }
}

TEST_CASE("links: usable until a fifth of their life (at most a minute) before expiry", "[timing]") {
  struct Row {
    int64_t obtained, expires, now;
    bool usable;
  } rows[] = {
      {0, 0, INT64_MAX - 1, true},            // never expires
      {0, 100'000, 79'999, true},             // 100 s life: 20 s kept in hand
      {0, 100'000, 80'000, false},
      {0, 900'000, 839'999, true},            // 15 min life: the margin is capped at 60 s
      {0, 900'000, 840'000, false},
      {0, 1'000, 799, true},                  // a 1 s link: 200 ms margin
      {0, 1'000, 800, false},
      {5'000, 1'000, 0, true},                // expiry before it was obtained: no margin
      {5'000, 1'000, 1'000, false},
  };
  for (const auto& r : rows) {
    INFO(r.obtained << " .. " << r.expires << " at " << r.now);
    CHECK(linkUsable(r.obtained, r.expires, r.now) == r.usable);
  }
  CHECK(linkUsableUntil(0, 0) == INT64_MAX);
  CHECK(linkUsableUntil(0, 100'000) == 80'000);
}

TEST_CASE("access tokens: refreshed a fifth of their life (at most 5 min) early", "[timing]") {
  CHECK(accessMarginMs(0) == 0);
  CHECK(accessMarginMs(-5) == 0);
  CHECK(accessMarginMs(10'000) == 2'000);
  CHECK(accessMarginMs(7'200'000) == 300'000);
  struct Row {
    int64_t obtained, expires, now;
    bool usable;
  } rows[] = {
      {0, 10'000, 7'999, true},
      {0, 10'000, 8'000, false},
      {0, 7'200'000, 6'899'999, true},   // 2 h token: 5 min margin
      {0, 7'200'000, 6'900'000, false},
      {0, 0, 0, false},                  // no token
      {100, 50, 0, true},                // expiry before obtained: no margin, still before expiry
      {100, 50, 50, false},
  };
  for (const auto& r : rows) {
    INFO(r.obtained << " .. " << r.expires << " at " << r.now);
    CHECK(tokenUsable(r.obtained, r.expires, r.now) == r.usable);
  }
}

TEST_CASE("backoff doubles from its base up to its cap", "[timing]") {
  struct Row {
    Backoff b;
    int retry;
    int64_t ms;
  } rows[] = {
      {kFetchBackoff, 1, 250},     {kFetchBackoff, 2, 500},      {kFetchBackoff, 3, 1000},
      {kFetchBackoff, 6, 8000},    {kFetchBackoff, 7, 10'000},   {kFetchBackoff, 1000, 10'000},
      {kFetchBackoff, 0, 250},     {kFetchBackoff, -3, 250},     {{1000, 16'000}, 5, 16'000},
      {{1000, 16'000}, 4, 8'000},  {{1000, 16'000}, INT_MAX, 16'000},
  };
  for (const auto& r : rows) {
    INFO(r.b.baseMs << "/" << r.b.maxMs << " retry " << r.retry);
    CHECK(backoffDelayMs(r.b, r.retry) == r.ms);
  }
}
