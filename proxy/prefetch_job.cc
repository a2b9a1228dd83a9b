// Prefetch: a background fill of one file (the admin API's prefetch, the
// next episode's warming). A BlockReader with Background priority walks the
// wanted ranges: skip() moves it past stored blocks without reading them and
// waits where a block is missing, so the planner fetches its read-ahead
// window as for a client, after every playing client of the same pool
// (planner.h). Progress is the bytes it has walked past. For a media head
// (PrefetchSpec::mediaHead) the first bytes are read back once stored and
// policy::locateMediaIndex says which range comes next.
#include <event2/buffer.h>

#include "proxy/fetch/fetcher.h"

namespace slip::proxy {

const char* prefetchStateName(Prefetch::State s) {
  switch (s) {
    case Prefetch::State::Opening: return "opening";
    case Prefetch::State::Running: return "running";
    case Prefetch::State::Done: return "done";
    case Prefetch::State::Failed: return "failed";
    case Prefetch::State::Cancelled: return "cancelled";
  }
  return "?";
}

namespace {

/// Head bytes handed to locateMediaIndex (box and element headers sit in
/// the first few KiB; SeekHead soon after).
constexpr uint64_t kMediaProbeBytes = 256 * 1024;

class PrefetchJob final : public Prefetch, public BlockReader::Client {
 public:
  PrefetchJob(Context& c, const Request& r, const PrefetchSpec& spec) : c_(c), req_(r), spec_(spec) {}

  void begin() {
    reader_ = c_.fetcher->reader(this);
    reader_->priority = plan::Priority::Background;
    reader_->open(req_);
  }

  Progress progress() const override { return progress_; }

  void cancel() override {
    if (ended()) return;
    progress_.state = State::Cancelled;
    reader_->close();
    log("prefetch_cancelled");
  }

  // ---- BlockReader::Client
  void opened(const OpenResult& res) override;
  void wake() override { pump(); }
  void failed(policy::Reason r, const std::string& detail) override { fail(r, detail); }
  void upstreamBytes(uint64_t n) override { progress_.upstreamBytes += n; }

 private:
  bool ended() const {
    return progress_.state == State::Done || progress_.state == State::Failed || progress_.state == State::Cancelled;
  }
  void log(std::string_view event) const {
    conf::Log::write(conf::LogLevel::Info, event,
                     "path=" + conf::logValue(req_.path) + " done=" + std::to_string(progress_.done) +
                         " total=" + std::to_string(progress_.total) +
                         " upstream_bytes=" + std::to_string(progress_.upstreamBytes));
  }
  void fail(policy::Reason r, const std::string& detail) {
    if (ended()) return;
    progress_.state = State::Failed;
    progress_.reason = r;
    progress_.detail = detail;
    reader_->close();
    conf::Log::write(conf::LogLevel::Warn, "prefetch_failed",
                     "path=" + conf::logValue(req_.path) + " reason=" + policy::reasonCode(r) +
                         " detail=" + conf::logValue(detail));
  }
  void add(policy::ByteRange r) {
    r.end = std::min(r.end, size_);
    if (r.begin >= r.end) return;
    ranges_.push_back(r);
    progress_.total += r.size();
  }
  /// The media index range, from the stored head.
  bool addMediaIndex();
  void pump();

  Context& c_;
  Request req_;
  PrefetchSpec spec_;
  Progress progress_;
  std::unique_ptr<BlockReader> reader_;
  uint64_t size_ = 0;
  std::vector<policy::ByteRange> ranges_;
  size_t cur_ = 0;        // range walked now
  uint64_t pos_ = 0;      // next byte of ranges_[cur_] not known stored
  bool pumping_ = false, again_ = false;
  bool indexAdded_ = false;
};

void PrefetchJob::opened(const OpenResult& res) {
  if (progress_.state != State::Opening) return;
  if (res.uncacheable) return fail(policy::Reason::NotCacheable, "the upstream gives no length");
  if (res.reason != policy::Reason::None) return fail(res.reason, res.detail);
  size_ = reader_->meta().size;
  if (spec_.mediaHead > 0) add({0, spec_.mediaHead});
  else if (spec_.ranges.empty()) add({0, size_});
  for (const policy::ByteRange& r : spec_.ranges)
    if (spec_.mediaHead == 0) add(r);
  progress_.state = State::Running;
  log("prefetch_started");
  if (!ranges_.empty()) {
    pos_ = ranges_[0].begin;
    reader_->setRange(pos_, ranges_[0].end);
  }
  pump();
}

void PrefetchJob::pump() {
  if (progress_.state != State::Running) return;
  if (pumping_) {
    again_ = true;
    return;
  }
  pumping_ = true;
  do {
    again_ = false;
    while (progress_.state == State::Running) {
      if (cur_ < ranges_.size() && pos_ >= ranges_[cur_].end) {
        if (++cur_ < ranges_.size()) {
          pos_ = ranges_[cur_].begin;
          reader_->setRange(pos_, ranges_[cur_].end);
        }
        continue;
      }
      if (cur_ >= ranges_.size()) {
        if (spec_.mediaHead > 0 && !indexAdded_ && addMediaIndex()) continue;
        progress_.state = State::Done;
        reader_->close();
        log("prefetch_done");
        break;
      }
      BlockReader::Result r = reader_->skip(pos_, ranges_[cur_].end);
      if (r.kind == BlockReader::Result::Kind::Wait) break;  // wake() follows
      if (r.kind == BlockReader::Result::Kind::Failed) {
        fail(r.reason, r.detail);
        break;
      }
      pos_ += r.n;
      progress_.done += r.n;
    }
  } while (again_ && progress_.state == State::Running);
  pumping_ = false;
}

// The head is stored: read its first bytes back (verified) and ask where
// the player will look for the index. false: nothing more to fetch.
bool PrefetchJob::addMediaIndex() {
  indexAdded_ = true;
  EvbufferPtr buf = makeEvbuffer();
  uint64_t want = std::min({kMediaProbeBytes, spec_.mediaHead, size_});
  for (uint64_t at = 0; at < want;) {
    BlockReader::Result r = reader_->read(at, want - at, buf.get());
    if (r.kind != BlockReader::Result::Kind::Ok || r.n == 0) break;  // evicted meanwhile: use what we have
    at += r.n;
  }
  std::string head(evbuffer_get_length(buf.get()), '\0');
  evbuffer_remove(buf.get(), head.data(), head.size());
  policy::MediaIndex mi = policy::locateMediaIndex(size_, head, spec_.mediaHead);
  policy::ByteRange next = mi.kind == policy::MediaIndex::Kind::Unknown
                               ? policy::ByteRange{size_ > spec_.mediaHead ? size_ - spec_.mediaHead : 0, size_}
                               : mi.range;
  if (mi.inHead || next.begin < spec_.mediaHead) next.begin = std::max(next.begin, spec_.mediaHead);
  conf::Log::write(conf::LogLevel::Debug, "prefetch_media_index",
                   "path=" + conf::logValue(req_.path) + " container=" + policy::mediaContainerName(mi.container) +
                       " begin=" + std::to_string(next.begin) + " end=" + std::to_string(next.end));
  size_t before = ranges_.size();
  add(next);
  if (ranges_.size() == before) return false;
  pos_ = ranges_[cur_].begin;
  reader_->setRange(pos_, ranges_[cur_].end);
  return true;
}

}  // namespace

std::unique_ptr<Prefetch> makePrefetch(Context& c, const Request& r, const PrefetchSpec& spec) {
  auto j = std::make_unique<PrefetchJob>(c, r, spec);
  j->begin();
  return j;
}

}  // namespace slip::proxy
