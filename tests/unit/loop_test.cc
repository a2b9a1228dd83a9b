// conf/loop.h: timers, triggers, signals, lifelines and the graveyard, on a
// real event base.
#include <catch2/catch.hpp>

#include "conf/loop.h"

using namespace slip;

namespace {

struct Base {
  event_base* b = event_base_new();
  ~Base() { event_base_free(b); }
  void turn() { event_base_loop(b, EVLOOP_NONBLOCK); }
};

}  // namespace

TEST_CASE("trigger: several fires, one call, from the loop", "[loop]") {
  Base base;
  int calls = 0;
  Trigger t(base.b, [&] { calls++; });
  t.fire();
  t.fire();
  CHECK(calls == 0);  // never synchronously
  base.turn();
  CHECK(calls == 1);
  t.fire();
  base.turn();
  CHECK(calls == 2);
}

TEST_CASE("timer: armed, re-armed, cancelled", "[loop]") {
  Base base;
  int calls = 0;
  Timer t(base.b, [&] { calls++; });
  t.armMs(0);
  CHECK(t.pending());
  event_base_loop(base.b, EVLOOP_ONCE);
  CHECK(calls == 1);
  CHECK_FALSE(t.pending());
  t.armMs(60'000);
  t.cancel();
  CHECK_FALSE(t.pending());
  base.turn();
  CHECK(calls == 1);
}

TEST_CASE("signal: many listeners, each removed with its subscription", "[loop]") {
  Signal s;
  int a = 0, b = 0;
  Subscription sa = s.subscribe([&] { a++; });
  {
    Subscription sb = s.subscribe([&] { b++; });
    s.notify();
    CHECK(a == 1);
    CHECK(b == 1);
  }
  s.notify();
  CHECK(a == 2);
  CHECK(b == 1);
  // A listener that drops another during delivery: the other is not called.
  Subscription sc;
  int c = 0;
  Subscription sd = s.subscribe([&] { sc.reset(); });
  sc = s.subscribe([&] { c++; });
  s.notify();
  CHECK(c == 0);
  CHECK(a == 3);
  sa.reset();
  sd.reset();
  CHECK(s.empty());
}

TEST_CASE("subscription outliving its signal is harmless", "[loop]") {
  Subscription sub;
  {
    Signal s;
    sub = s.subscribe([] {});
  }
  sub.reset();
  SUCCEED();
}

TEST_CASE("lifeline: a watch sees its owner go", "[loop]") {
  Watch w;
  CHECK_FALSE(w.alive());
  {
    Lifeline l;
    w = l.watch();
    CHECK(w.alive());
  }
  CHECK_FALSE(w.alive());
}

TEST_CASE("graveyard frees from the loop, not under the caller", "[loop]") {
  Base base;
  struct Thing {
    int* freed;
    ~Thing() { (*freed)++; }
  };
  int freed = 0;
  Graveyard g(base.b);
  auto t = std::make_unique<Thing>();
  t->freed = &freed;
  g.bury(std::move(t));
  CHECK(freed == 0);
  CHECK(g.size() == 1);
  base.turn();
  CHECK(freed == 1);
  CHECK(g.size() == 0);
}
