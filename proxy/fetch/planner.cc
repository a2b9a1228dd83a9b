// planFill: replays the scheduling rules (planner.h) on a copy of the input,
// counting the transfers it starts as it goes, so that later decisions see
// the slots earlier ones took.
#include "proxy/fetch/planner.h"

#include <algorithm>
#include <set>

namespace slip::proxy::plan {
namespace {

uint64_t pageFloor(uint64_t v) { return v / kPage * kPage; }

/// The planner's working state: the input, and what the plan did to it.
class Sim {
 public:
  explicit Sim(const Input& in)
      : in_(in), objs_(in.objects), pools_(in.pools), hosts_(in.hosts), fillRunning_(in.fillRunning) {
    tick_ = in.tick;
    stale_.resize(objs_.size());
    for (size_t i = 0; i < objs_.size(); i++)
      for (size_t r = 0; r < objs_[i].readers.size(); r++)
        stale_[i].push_back(staleReader(objs_[i], r, readAheadOf(objs_[i], in.cacheMaxSize)));
  }

  Plan run() {
    for (bool fair : {true, false}) {
      contenders_.clear();
      if (fair)
        for (size_t i = 0; i < objs_.size(); i++)
          if (wantsTransfer(objs_[i]) && !onlyBackground(objs_[i])) contenders_[objs_[i].pool]++;
      fair_ = fair;
      for (int i : order()) {
        if (fillRunning_ >= in_.fillLimit) break;
        if (fair && onlyBackground(objs_[i])) continue;  // after every playing object
        startWork(i);
      }
    }
    preempt();
    return std::move(plan_);
  }

 private:
  // ---- what an object may do
  static bool anyStalled(const Object& o) {
    return std::any_of(o.readers.begin(), o.readers.end(),
                       [](const Reader& r) { return r.stalled && r.priority == Priority::Playing; });
  }
  static bool onlyBackground(const Object& o) {
    return !o.readers.empty() && std::all_of(o.readers.begin(), o.readers.end(), [](const Reader& r) {
      return r.priority == Priority::Background;
    });
  }

  /// Stalled readers first, objects that only prefetch last, then the one
  /// served longest ago.
  std::vector<int> order() const {
    std::vector<int> idx(objs_.size());
    for (size_t i = 0; i < idx.size(); i++) idx[i] = static_cast<int>(i);
    std::stable_sort(idx.begin(), idx.end(), [this](int a, int b) {
      const Object &x = objs_[a], &y = objs_[b];
      if (anyStalled(x) != anyStalled(y)) return anyStalled(x);
      if (onlyBackground(x) != onlyBackground(y)) return !onlyBackground(x);
      return x.servedTick < y.servedTick;
    });
    return idx;
  }

  int connLimit(const Object& o) const {
    int n = 1;
    for (const Reader& r : o.readers) n = std::max(n, r.connections);
    if (o.readers.empty()) n = std::max(n, o.defaultConnections);
    return n;
  }
  int fairCap(const Object& o) const {
    if (!fair_) return INT_MAX;
    auto it = contenders_.find(o.pool);
    int n = it == contenders_.end() ? 0 : it->second;
    if (n <= 1) return INT_MAX;
    int limit = pools_.at(o.pool).limit;
    return std::max(1, (limit + n - 1) / n);
  }
  int poolFree(const Object& o) const {
    auto it = pools_.find(o.pool);
    return it == pools_.end() ? 0 : it->second.free;
  }
  /// Slots the object's upstream host has left (its adaptive target).
  int hostFree(const Object& o) const {
    auto it = hosts_.find(o.host);
    return it == hosts_.end() ? INT_MAX : it->second.target - it->second.running;
  }
  bool canStart(const Object& o) const {
    return o.running < connLimit(o) && o.running < fairCap(o) && poolFree(o) > 0 && hostFree(o) > 0 &&
           fillRunning_ < in_.fillLimit;
  }
  int freeSlots(const Object& o) const {
    return std::min({connLimit(o) - o.running, fairCap(o) - o.running, poolFree(o), hostFree(o),
                     in_.fillLimit - fillRunning_});
  }
  void count(Object& o, int n = 1) {
    o.running += n;
    fillRunning_ += n;
    if (n > 0) pools_[o.pool].free -= n;  // a cut transfer's pool slot cools down (Admission)
    if (auto it = hosts_.find(o.host); it != hosts_.end()) it->second.running += n;
    if (n > 0) o.servedTick = ++tick_;
  }

  // ---- blocks
  uint64_t ra(const Object& o) const { return readAheadOf(o, in_.cacheMaxSize); }
  static const Block* block(const Object& o, uint32_t idx) {
    for (const Block& b : o.blocks)
      if (b.idx == idx) return &b;
    return nullptr;
  }
  static bool missing(const Object& o, uint32_t idx) { return !block(o, idx) && !(o.stored && o.stored(idx)); }
  /// Reader r's window, stale or not (rule 8).
  std::pair<uint32_t, uint32_t> window(const Object& o, size_t r) const {
    size_t i = static_cast<size_t>(&o - objs_.data());
    return windowOf(o.readers[r], o, ra(o), stale_[i][r]);
  }
  bool stale(const Object& o, size_t r) const { return stale_[static_cast<size_t>(&o - objs_.data())][r]; }
  bool wanted(const Object& o, uint32_t idx) const {
    for (size_t r = 0; r < o.readers.size(); r++) {
      if (o.readers[r].pos >= o.readers[r].end) continue;
      auto [first, last] = window(o, r);
      if (idx >= first && idx < last) return true;
    }
    return false;
  }
  /// Missing blocks inside the readers' windows, counted up to `cap`.
  int countMissing(const Object& o, int cap) const {
    std::set<uint32_t> seen;
    for (size_t r = 0; r < o.readers.size(); r++) {
      auto [first, last] = window(o, r);
      for (uint32_t i = first; i < last && static_cast<int>(seen.size()) < cap; i++)
        if (missing(o, i)) seen.insert(i);
    }
    return static_cast<int>(seen.size());
  }
  bool wantsTransfer(const Object& o) const {
    if (!o.ready || o.noRanges || !o.linkUsable) return false;
    for (const Block& b : o.blocks)
      for (const Piece& p : b.pieces)
        if (p.state == PieceState::Queued) return true;
    return countMissing(o, 1) > 0;
  }
  /// The next block to fetch: a block a playing reader is blocked on
  /// (urgent; fresh readers before stale ones), else the first missing block
  /// of an index region, else the nearest missing block in some reader's
  /// window.
  bool nextWanted(const Object& o, uint32_t* idx, std::optional<uint64_t>* urgent) const {
    const uint64_t bs = o.blockSize;
    for (bool staleOnes : {false, true}) {
      for (size_t k = 0; k < o.readers.size(); k++) {
        const Reader& r = o.readers[k];
        if (r.pos >= r.end || r.priority == Priority::Background || r.index || stale(o, k) != staleOnes) continue;
        uint32_t i = static_cast<uint32_t>(r.pos / bs);
        if (missing(o, i)) {
          *idx = i;
          *urgent = r.pos;
          return true;
        }
      }
    }
    uint64_t best = UINT64_MAX;
    for (bool indexOnes : {true, false}) {
      for (size_t k = 0; k < o.readers.size(); k++) {
        const Reader& r = o.readers[k];
        if (r.pos >= r.end || r.index != indexOnes) continue;
        auto [first, last] = window(o, k);
        for (uint32_t i = first; i < last; i++) {
          uint64_t off = static_cast<uint64_t>(i) * bs;
          uint64_t dist = off > r.pos ? off - r.pos : 0;
          if (dist >= best) break;
          if (!missing(o, i)) continue;
          best = dist;
          *idx = i;
          *urgent = std::nullopt;
          break;
        }
      }
      if (best != UINT64_MAX) return true;
    }
    return false;
  }

  void emit(Action::Kind k, int obj, uint32_t blk = 0, int piece = 0) {
    if (k == Action::Kind::NeedLink && !needLink_.insert(obj).second) return;  // once per object
    Action a;
    a.kind = k;
    a.object = obj;
    a.block = blk;
    a.piece = piece;
    plan_.actions.push_back(std::move(a));
  }
  /// Starts piece `pi` of `b` (a piece with nothing left completes without a transfer).
  void startPiece(int i, Block& b, size_t pi) {
    Piece& p = b.pieces[pi];
    emit(Action::Kind::StartPiece, i, b.idx, static_cast<int>(pi));
    if (p.begin + p.received >= p.end) {
      p.state = PieceState::Done;
      return;
    }
    p.state = PieceState::Running;
    count(objs_[i]);
  }

  /// A playing reader waits for a block: stalled (nothing fetches it) or
  /// on a block whose pieces are still queued.
  static bool playingWaits(const Object& o) {
    if (anyStalled(o)) return true;
    for (const Block& b : o.blocks)
      if (b.waitedOn)
        for (const Piece& p : b.pieces)
          if (p.state == PieceState::Queued) return true;
    return false;
  }
  void preempt();
  void startWhole(int i);
  void cancelUnwanted(int i);
  bool startQueued(int i);
  void startMissing(int i);
  void startWork(int i) {
    Object& o = objs_[i];
    if (!o.ready) return;
    cancelUnwanted(i);
    if (o.noRanges) return startWhole(i);
    if (!startQueued(i)) return;
    if (!o.linkUsable) return emit(Action::Kind::NeedLink, i);
    startMissing(i);
  }

  const Input& in_;
  std::vector<Object> objs_;
  std::map<int, Pool> pools_;
  std::map<int, Host> hosts_;
  int fillRunning_;
  uint64_t tick_ = 0;
  bool fair_ = true;
  std::map<int, int> contenders_;
  std::set<int> needLink_;
  std::vector<std::vector<bool>> stale_;  // per object, per reader (rule 8)
  Plan plan_;
};

void Sim::startWhole(int i) {
  Object& o = objs_[i];
  if (o.wholeRunning || o.readers.empty() || !canStart(o) || o.wholeBackoff) return;
  // Only worth it while some reader needs a block that is not stored.
  bool need = false;
  for (const Reader& r : o.readers)
    for (uint64_t off = r.pos / o.blockSize * o.blockSize; off < r.end && !need; off += o.blockSize)
      need = missing(o, static_cast<uint32_t>(off / o.blockSize));
  if (!need) return;
  if (!o.linkUsable) return emit(Action::Kind::NeedLink, i);
  emit(Action::Kind::StartWhole, i);
  o.wholeRunning = true;
  count(o);
}

/// Rule 9: in-flight blocks nobody wants any more are cancelled, running
/// pieces included, unless more than half fetched, waited on or stream-fed.
/// The object's (and the fill's) transfers they held are free again at once.
void Sim::cancelUnwanted(int i) {
  Object& o = objs_[i];
  for (auto it = o.blocks.begin(); it != o.blocks.end();) {
    const Block& b = *it;
    uint64_t len = 0, got = 0;
    int running = 0;
    bool allDone = true;
    for (const Piece& p : b.pieces) {
      len += p.end - p.begin;
      got += std::min(p.received, p.end - p.begin);
      if (p.state == PieceState::Running) running++;
      if (p.state != PieceState::Done) allDone = false;
    }
    if (b.length) len = b.length;
    if (b.waitedOn || b.stream || b.keep || allDone || wanted(o, b.idx) || 2 * got > len) {
      ++it;
      continue;
    }
    emit(Action::Kind::Cancel, i, b.idx);
    count(o, -running);
    it = o.blocks.erase(it);
  }
}

/// Rule 11's preemption: a playing reader still waits after the passes and
/// its pool is full: stop a running background piece of that pool. Their slots free after the admission's
/// cut-off grace; the next plan gives them to the playing object first.
void Sim::preempt() {
  for (int i : order()) {
    Object& o = objs_[i];
    bool waits = o.probeWaiting || (o.ready && o.linkUsable && playingWaits(o) && o.running < connLimit(o));
    if (onlyBackground(o) || !waits || poolFree(o) > 0 || pools_[o.pool].freeing) continue;
    // One piece at a time: enough to unblock the reader (its block or its
    // probe gets the slot); a reader still waiting later preempts another.
    int want = 1;
    pools_[o.pool].freeing = true;
    for (size_t j = 0; j < objs_.size() && want > 0; j++) {
      Object& bg = objs_[j];
      if (!onlyBackground(bg) || bg.pool != o.pool) continue;
      for (Block& b : bg.blocks)
        for (size_t pi = 0; pi < b.pieces.size() && want > 0; pi++) {
          Piece& p = b.pieces[pi];
          if (p.state != PieceState::Running) continue;
          emit(Action::Kind::Preempt, static_cast<int>(j), b.idx, static_cast<int>(pi));
          p.state = PieceState::Queued;
          bg.running--;
          want--;
        }
    }
  }
}

/// Queued pieces, blocks a reader waits on first; unwanted queued read-ahead
/// is cancelled. false: the object's caps are reached (stop here).
bool Sim::startQueued(int i) {
  Object& o = objs_[i];
  std::vector<uint32_t> order;
  for (const Block& b : o.blocks)
    if (b.waitedOn) order.push_back(b.idx);
  for (const Block& b : o.blocks)
    if (!b.waitedOn) order.push_back(b.idx);
  for (uint32_t idx : order) {
    auto it = std::find_if(o.blocks.begin(), o.blocks.end(), [idx](const Block& b) { return b.idx == idx; });
    Block& b = *it;
    bool queued = false;
    for (const Piece& p : b.pieces) queued = queued || p.state == PieceState::Queued;
    if (!queued) continue;
    for (size_t pi = 0; pi < b.pieces.size(); pi++) {
      if (b.pieces[pi].state != PieceState::Queued) continue;
      if (!canStart(o)) return false;
      if (!o.linkUsable) break;  // startWork asks for the link
      startPiece(i, b, pi);
    }
  }
  return true;
}

/// New blocks: the free slots are shared out among the missing ones (a short
/// range is fetched in parallel pieces, a long read one block each).
void Sim::startMissing(int i) {
  Object& o = objs_[i];
  int missingLeft = countMissing(o, freeSlots(o) + 1);
  while (canStart(o)) {
    uint32_t idx;
    std::optional<uint64_t> urgent;
    if (!nextWanted(o, &idx, &urgent)) break;
    int share = urgent ? freeSlots(o) : std::max(1, freeSlots(o) / std::max(1, missingLeft));
    missingLeft--;
    uint64_t begin = idx * o.blockSize;
    uint64_t end = std::min(o.size, begin + o.blockSize);
    if (end <= begin) break;
    Action a;
    a.kind = Action::Kind::NewBlock;
    a.object = i;
    a.block = idx;
    a.urgentPos = urgent;
    a.pieces = splitBlock(begin, end, urgent, share);
    Block b;
    b.idx = idx;
    for (const auto& r : a.pieces) b.pieces.push_back(Piece{PieceState::Queued, r.begin, r.end, 0});
    // Readers stalled on this block now wait on it.
    for (Reader& r : o.readers)
      if (r.stalled && r.pos / o.blockSize == idx) {
        r.stalled = false;
        b.waitedOn = true;
      }
    plan_.actions.push_back(std::move(a));
    auto at = std::lower_bound(o.blocks.begin(), o.blocks.end(), idx,
                               [](const Block& x, uint32_t v) { return x.idx < v; });
    at = o.blocks.insert(at, std::move(b));
    for (size_t pi = 0; pi < at->pieces.size() && canStart(o); pi++) startPiece(i, *at, pi);
  }
}

}  // namespace

const char* pieceStateName(PieceState s) {
  switch (s) {
    case PieceState::Queued: return "queued";
    case PieceState::Running: return "running";
    case PieceState::Backoff: return "backoff";
    case PieceState::Done: return "done";
  }
  return "?";
}

const char* actionKindName(Action::Kind k) {
  switch (k) {
    case Action::Kind::Cancel: return "cancel";
    case Action::Kind::NewBlock: return "new_block";
    case Action::Kind::StartPiece: return "start_piece";
    case Action::Kind::StartWhole: return "start_whole";
    case Action::Kind::NeedLink: return "need_link";
    case Action::Kind::Preempt: return "preempt";
  }
  return "?";
}

Plan planFill(const Input& in) { return Sim(in).run(); }

uint64_t readAheadOf(const Object& o, uint64_t cacheMaxSize) { return std::min(o.readAhead, cacheMaxSize / 4); }

uint64_t rampOf(const Reader& r, const Object& o, uint64_t readAhead) {
  uint64_t read = r.pos > r.start ? r.pos - r.start : 0;
  return std::min(readAhead, std::max<uint64_t>(o.blockSize, read));
}

namespace {
/// End (exclusive, bytes) of r's window when it is not stale.
uint64_t windowEnd(const Reader& r, const Object& o, uint64_t readAhead) {
  const uint64_t bs = o.blockSize;
  if (r.index) return r.end;
  return std::min(r.end, std::max(r.pos + rampOf(r, o, readAhead), (r.pos / bs + 1) * bs));
}
}  // namespace

std::pair<uint32_t, uint32_t> windowOf(const Reader& r, const Object& o, uint64_t readAhead, bool stale) {
  const uint64_t bs = o.blockSize;
  if (r.pos >= r.end || bs == 0) return {0, 0};
  uint64_t lim = stale ? std::min(r.end, (r.pos / bs + 1) * bs) : windowEnd(r, o, readAhead);
  return {static_cast<uint32_t>(r.pos / bs), static_cast<uint32_t>((lim + bs - 1) / bs)};
}

bool staleReader(const Object& o, size_t i, uint64_t readAhead) {
  const Reader& r = o.readers[i];
  if (r.client == 0 || r.index || o.blockSize == 0) return false;
  uint64_t lim = windowEnd(r, o, readAhead);
  for (const Reader& n : o.readers) {
    if (&n == &r || n.index || n.client != r.client || n.seq <= r.seq) continue;
    if (n.pos + o.blockSize < r.pos || n.pos >= lim) return true;
  }
  return false;
}

std::vector<policy::ByteRange> splitBlock(uint64_t begin, uint64_t end, std::optional<uint64_t> urgentPos,
                                          int share) {
  std::vector<policy::ByteRange> out;
  uint64_t from = urgentPos ? std::max(begin, pageFloor(*urgentPos)) : begin;
  uint64_t span = end - from;
  uint64_t k = std::clamp<uint64_t>(span / kMinPiece, 1, std::max(1, share - (from > begin ? 1 : 0)));
  uint64_t step = pageFloor((span + k - 1) / k + kPage - 1);
  if (step == 0) step = span;
  for (uint64_t a = from; a < end; a += step) out.push_back({a, std::min(end, a + step)});
  if (from > begin) out.push_back({begin, from});
  return out;
}

}  // namespace slip::proxy::plan
