// Admission: pool caps, FIFO waiting, withdrawal, the grace a cut-off
// connection keeps, and the spare-slot signal.
#include <catch2/catch.hpp>

#include "proxy/fetch/admission.h"

using namespace slip;
using namespace slip::proxy;

namespace {

struct Fixture {
  event_base* base = event_base_new();
  ManualClock clock;
  Admission a{base, clock};
  ~Fixture() { event_base_free(base); }
  void turn() { event_base_loop(base, EVLOOP_NONBLOCK); }
};

}  // namespace

TEST_CASE("admission: a pool admits up to its limit, then queues first come first served", "[admission]") {
  Fixture f;
  int pool = f.a.addPool(2);
  int other = f.a.addPool(1);
  std::vector<int> granted;
  CHECK(f.a.acquire(pool, 1, [&] { granted.push_back(1); }));
  CHECK(f.a.acquire(pool, 2, [&] { granted.push_back(2); }));
  CHECK(f.a.free(pool) == 0);
  CHECK_FALSE(f.a.acquire(pool, 3, [&] { granted.push_back(3); }));
  CHECK_FALSE(f.a.acquire(pool, 4, [&] { granted.push_back(4); }));
  CHECK(f.a.free(pool) == -2);  // promised to the waiting ones
  CHECK(f.a.waiting(pool) == 2);
  CHECK(f.a.acquire(other, 5, [] {}));  // pools are independent
  f.a.release(pool, false);
  CHECK(granted.empty());  // granted from the loop, never under the caller
  f.turn();
  CHECK(granted == std::vector<int>{3});
  CHECK(f.a.running(pool) == 2);
  f.a.withdraw(pool, 4);  // gave up waiting
  f.a.release(pool, false);
  f.turn();
  CHECK(granted == std::vector<int>{3});
  CHECK(f.a.running(pool) == 1);
  CHECK(f.a.free(pool) == 1);
}

TEST_CASE("admission: a cut-off connection keeps its slot for the grace time", "[admission]") {
  Fixture f;
  int pool = f.a.addPool(1);
  REQUIRE(f.a.acquire(pool, 1, [] {}));
  bool second = false;
  CHECK_FALSE(f.a.acquire(pool, 2, [&] { second = true; }));
  f.a.release(pool, true);
  f.turn();
  CHECK_FALSE(second);
  CHECK(f.a.running(pool) == 1);
  f.clock.advanceMs(Admission::kCutOffGraceMs);
  for (int i = 0; i < 100 && !second; i++) event_base_loop(f.base, EVLOOP_ONCE);  // the grace timer fires
  CHECK(second);
  CHECK(f.a.running(pool) == 1);
  CHECK(f.a.waiting(pool) == 0);
}

TEST_CASE("admission: spare slots are signalled to every listener", "[admission]") {
  Fixture f;
  int pool = f.a.addPool(1);
  int heard = 0, heard2 = 0;
  Subscription s1 = f.a.onSpare([&] { heard++; });
  Subscription s2 = f.a.onSpare([&] { heard2++; });
  REQUIRE(f.a.acquire(pool, 1, [] {}));
  bool waiter = false;
  CHECK_FALSE(f.a.acquire(pool, 2, [&] { waiter = true; }));
  f.a.release(pool, false);
  f.turn();
  CHECK(waiter);
  CHECK(heard == 0);  // the freed slot went to the waiting request
  f.a.release(pool, false);
  f.turn();
  CHECK(heard == 1);
  CHECK(heard2 == 1);
  s2.reset();
  REQUIRE(f.a.acquire(pool, 3, [] {}));
  f.a.release(pool, false);
  f.turn();
  CHECK(heard == 2);
  CHECK(heard2 == 1);
}
