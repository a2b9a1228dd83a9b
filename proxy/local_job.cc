// `local` mounts: files under a directory on this machine, with the same
// Range/HEAD semantics as the other sources. Opening goes through
// openBeneath (sources/local_source.cc) so no path — `..`, absolute or
// relative symlinks — resolves outside the mount's directory. Bodies go out
// as file segments (sendfile), never through a user-space buffer.
#include <event2/buffer.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "proxy/engine.h"
#include "proxy/sources/listing.h"

namespace slip::proxy {
namespace {

constexpr uint64_t kSegmentStep = 1 << 20;

class LocalJob final : public Job {
 public:
  LocalJob(Context& c, const Request& r, Sink* s) : c_(c), req_(r), sink_(s) {}

  ~LocalJob() override {
    if (seg_) evbuffer_file_segment_free(seg_);  // the fd closes with the last reference
    else if (fd_ >= 0) close(fd_);
  }

  void begin() {
    sink_->noteProgress(Sink::Progress::Opening);
    fd_ = openBeneath(c_.mountOf(req_)->rootFd, req_.rest,
                      O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd_ < 0) {
      int err = -fd_;
      fd_ = -1;
      if (err == EXDEV || err == ELOOP) return fail(policy::Reason::LocalEscape, "");
      if (err == ENOENT || err == ENOTDIR) return fail(policy::Reason::NotFound, "");
      if (err == EACCES || err == EPERM) return fail(policy::Reason::Denied, strerror(err));
      return fail(policy::Reason::Internal, strerror(err));
    }
    struct stat st{};
    if (fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) return fail(policy::Reason::NotAFile, "");
    ObjectInfo info;
    info.size = static_cast<uint64_t>(st.st_size);
    info.etag = localEtag(st);
    info.lastModified = httpDate(st.st_mtime);
    info.contentType = mimeTypeFor(req_.path);

    policy::WireRange wire = policy::parseRange(req_.range);
    if (!req_.ifRange.empty() && !policy::ifRangeAllows(req_.ifRange, info.etag, info.lastModified))
      wire = {};
    policy::RangeAnswer a = policy::resolveRange(wire, info.size);
    if (a.kind == policy::RangeAnswer::Kind::Unsatisfiable) {
      Headers h = unsatisfiableHeaders(info, CacheStatus::Hit);
      h.push_back({"Content-Length", "0"});
      sink_->sendHeaders(416, h);
      return done();
    }
    sink_->sendHeaders(a.kind == policy::RangeAnswer::Kind::Partial ? 206 : 200,
                       bodyHeaders(info, a, req_.path, CacheStatus::Hit));
    if (req_.head || a.range.size() == 0) return done();
    seg_ = evbuffer_file_segment_new(fd_, 0, st.st_size, EVBUF_FS_CLOSE_ON_FREE);
    if (!seg_) return fail(policy::Reason::Internal, "cannot map file");
    pos_ = a.range.begin;
    end_ = a.range.end;
    pump();
  }

  void onWritable() override { pump(); }

  void onClientGone() override {
    gone_ = true;
    sink_ = nullptr;
  }

 private:
  void pump() {
    if (gone_ || finished_ || !seg_) return;
    EvbufferPtr buf = makeEvbuffer();
    // Its chains end up in a socket's output buffer: keep file segments as
    // sendfile chains instead of letting libevent mmap them here.
    evbuffer_set_flags(buf.get(), EVBUFFER_FLAG_DRAINS_TO_FD);
    while (pos_ < end_ && sink_->queued() < kClientHighWater) {
      uint64_t n = std::min(kSegmentStep, end_ - pos_);
      evbuffer_add_file_segment(buf.get(), seg_, static_cast<ev_off_t>(pos_), static_cast<ev_off_t>(n));
      sink_->sendBody(buf.get());
      pos_ += n;
    }
    if (pos_ == end_) done();
  }

  void done() {
    finished_ = true;
    sink_->finish();
  }

  void fail(policy::Reason r, const std::string& detail) {
    finished_ = true;
    sink_->fail(r, detail);
  }

  Context& c_;
  Request req_;
  Sink* sink_;
  int fd_ = -1;
  evbuffer_file_segment* seg_ = nullptr;
  uint64_t pos_ = 0, end_ = 0;
  bool gone_ = false, finished_ = false;
};

}  // namespace

std::unique_ptr<Job> makeLocalJob(Context& c, const Request& r, Sink* s) {
  auto j = std::make_unique<LocalJob>(c, r, s);
  j->begin();
  return j;
}

}  // namespace slip::proxy
