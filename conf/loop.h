// Owning libevent handles and the lifetime helpers every module uses. One
// rule for all of them (see proxy/DESIGN.md, "Lifetimes"):
//
//  - every C handle has one RAII owner (EventPtr, EvbufferPtr, Timer,
//    Trigger); nobody calls event_free/evbuffer_free by hand;
//  - a callback that can arrive after its target went away (a disk
//    completion, a link resolution, an open result) carries a Watch of the
//    target's Lifeline and does nothing when the target is gone;
//  - something that leaves while one of its own callbacks may be on the stack
//    (a transfer ending in its completion, an object whose last user left) is
//    handed to a Graveyard, which frees it from its own loop callback —
//    never under a caller's frame;
//  - "tell me when X happens" is a Signal with RAII Subscriptions, so no
//    callback slot can be claimed twice or left dangling.
//
// Everything here is used on the loop thread only.
#pragma once

#include <event2/buffer.h>
#include <event2/event.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <vector>

#include "conf/clock.h"

namespace slip {

struct EventFree {
  void operator()(event* e) const { event_free(e); }
};
struct EvbufferFree {
  void operator()(evbuffer* b) const { evbuffer_free(b); }
};
/// An event (timer, socket, signal), freed with its owner.
using EventPtr = std::unique_ptr<event, EventFree>;
/// An evbuffer, freed with its owner.
using EvbufferPtr = std::unique_ptr<evbuffer, EvbufferFree>;

inline EvbufferPtr makeEvbuffer() { return EvbufferPtr(evbuffer_new()); }

/// A one-shot timer calling `fn` from the loop. Re-arming replaces the
/// pending expiry. Not movable: libevent holds a pointer to it.
class Timer {
 public:
  Timer(event_base* base, std::function<void()> fn) : fn_(std::move(fn)) {
    ev_.reset(evtimer_new(base, &Timer::fire, this));
  }
  Timer(const Timer&) = delete;
  Timer& operator=(const Timer&) = delete;

  /// Fires in `ms` milliseconds (negative: at once, from the loop).
  void armMs(int64_t ms) {
    timeval tv = msToTimeval(ms);
    evtimer_add(ev_.get(), &tv);
  }
  void cancel() { evtimer_del(ev_.get()); }
  bool pending() const { return evtimer_pending(ev_.get(), nullptr) != 0; }

 private:
  static void fire(evutil_socket_t, short, void* arg) { static_cast<Timer*>(arg)->fn_(); }
  std::function<void()> fn_;
  EventPtr ev_;
};

/// Runs `fn` once from the loop soon after fire() (several fires before it
/// runs coalesce into one call). Not movable.
class Trigger {
 public:
  Trigger(event_base* base, std::function<void()> fn) : fn_(std::move(fn)) {
    ev_.reset(event_new(base, -1, 0, &Trigger::run, this));
  }
  Trigger(const Trigger&) = delete;
  Trigger& operator=(const Trigger&) = delete;

  void fire() {
    if (armed_) return;
    armed_ = true;
    event_active(ev_.get(), 0, 0);
  }
  bool armed() const { return armed_; }

 private:
  static void run(evutil_socket_t, short, void* arg) {
    auto* t = static_cast<Trigger*>(arg);
    t->armed_ = false;
    t->fn_();
  }
  std::function<void()> fn_;
  EventPtr ev_;
  bool armed_ = false;
};

/// Whether the owner of a Lifeline still exists.
class Watch {
 public:
  Watch() = default;
  bool alive() const { return flag_ && *flag_; }
  explicit operator bool() const { return alive(); }

 private:
  friend class Lifeline;
  explicit Watch(std::shared_ptr<const bool> f) : flag_(std::move(f)) {}
  std::shared_ptr<const bool> flag_;
};

/// Held by a target that callbacks may outlive: each callback captures a
/// watch() and checks it before touching the target.
class Lifeline {
 public:
  Lifeline() : flag_(std::make_shared<bool>(true)) {}
  ~Lifeline() { end(); }
  Lifeline(const Lifeline&) = delete;
  Lifeline& operator=(const Lifeline&) = delete;
  Watch watch() const { return Watch(flag_); }
  /// The owner is gone for its callbacks from now on (it was retired and
  /// only waits in a Graveyard to be freed).
  void end() { *flag_ = false; }

 private:
  std::shared_ptr<bool> flag_;
};

/// Keeps a Signal listener registered while it lives.
class Subscription {
 public:
  Subscription() = default;
  Subscription(Subscription&&) noexcept = default;
  Subscription& operator=(Subscription&& o) noexcept {
    reset();
    list_ = std::move(o.list_);
    id_ = o.id_;
    return *this;
  }
  ~Subscription() { reset(); }
  void reset() {
    if (auto l = list_.lock()) l->erase(id_);
    list_.reset();
  }

 private:
  friend class Signal;
  using List = std::map<uint64_t, std::function<void()>>;
  Subscription(std::weak_ptr<List> l, uint64_t id) : list_(std::move(l)), id_(id) {}
  std::weak_ptr<List> list_;
  uint64_t id_ = 0;
};

/// "Something happened" for any number of listeners. A listener removed
/// while the signal is being delivered is not called any more.
class Signal {
 public:
  Signal() : list_(std::make_shared<Subscription::List>()) {}
  Signal(const Signal&) = delete;
  Signal& operator=(const Signal&) = delete;

  [[nodiscard]] Subscription subscribe(std::function<void()> fn) {
    uint64_t id = ++next_;
    (*list_)[id] = std::move(fn);
    return Subscription(list_, id);
  }
  void notify() {
    std::vector<uint64_t> ids;
    for (const auto& [id, fn] : *list_) ids.push_back(id);
    auto keep = list_;  // a listener may destroy the signal's owner
    for (uint64_t id : ids) {
      auto it = keep->find(id);
      if (it != keep->end()) {
        auto fn = it->second;  // the listener may unsubscribe itself
        fn();
      }
    }
  }
  bool empty() const { return list_->empty(); }

 private:
  std::shared_ptr<Subscription::List> list_;
  uint64_t next_ = 0;
};

/// Frees what it is given from its own loop callback, so that a thing may
/// leave while its own member function is still on the stack.
class Graveyard {
 public:
  explicit Graveyard(event_base* base) : sweep_(base, [this] { sweep(); }) {}
  Graveyard(const Graveyard&) = delete;
  Graveyard& operator=(const Graveyard&) = delete;
  ~Graveyard() { sweep(); }

  template <typename T>
  void bury(std::unique_ptr<T> p) {
    if (!p) return;
    dead_.push_back(std::shared_ptr<void>(std::move(p)));
    sweep_.fire();
  }
  /// Takes `key`'s owner out of a map of unique_ptrs and buries it.
  template <typename Map, typename Key>
  void buryFrom(Map& owners, const Key& key) {
    auto it = owners.find(key);
    if (it == owners.end()) return;
    bury(std::move(it->second));
    owners.erase(it);
  }
  size_t size() const { return dead_.size(); }

 private:
  void sweep() {
    // Destructors may bury more: free until nothing is left.
    while (!dead_.empty()) {
      std::vector<std::shared_ptr<void>> batch;
      batch.swap(dead_);
    }
  }
  std::vector<std::shared_ptr<void>> dead_;
  Trigger sweep_;
};

}  // namespace slip
