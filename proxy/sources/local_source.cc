// `local` mounts: a directory on this machine. Reads (proxy/local_job.cc) and
// listings both open paths through openBeneath, so nothing — `..`, absolute
// or relative symlinks — resolves outside the mount's directory. Listings
// run on the engine's worker thread: a cold NAS disk can take seconds to
// stat a big folder, and the event loop must not wait for it.
#include <dirent.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>

#include "proxy/sources/listing.h"

namespace slip::proxy {
namespace {

using policy::Reason;

Reason openFailure(int err) {
  if (err == EXDEV || err == ELOOP) return Reason::LocalEscape;
  if (err == ENOENT || err == ENOTDIR) return Reason::NotFound;
  if (err == EACCES || err == EPERM) return Reason::Denied;
  return Reason::Internal;
}

int64_t mtimeMs(const struct stat& st) {
  return static_cast<int64_t>(st.st_mtim.tv_sec) * 1000 + st.st_mtim.tv_nsec / 1'000'000;
}

class LocalSource final : public Source {
 public:
  LocalSource(const conf::Mount& m, int rootFd, Worker& w)
      : mount_(m), rootFd_(rootFd), worker_(w) {}

  void resolve(const std::string&, const ClientInfo&, ResolveCb cb) override {
    ResolveResult r;
    r.reason = Reason::RedirectImpossible;
    cb(r);
  }
  int64_t defaultTtlMs() const override { return 0; }
  int64_t listTtlMs() const override { return mount_.listTtlMs; }

  void list(const std::string& rest, ListCb cb) override {
    auto out = std::make_shared<ListResult>();
    int root = rootFd_;
    worker_.post([out, root, rest] { *out = readLocalFolder(root, rest); },
                 [out, cb = std::move(cb)] { cb(*out); });
  }

 private:
  const conf::Mount& mount_;
  int rootFd_;
  Worker& worker_;
};

}  // namespace

int openBeneath(int rootFd, const std::string& rest, int flags) {
  std::string rel = rest;
  while (!rel.empty() && rel.front() == '/') rel.erase(0, 1);
  if (rel.empty()) rel = ".";
  open_how how{};
  how.flags = static_cast<uint64_t>(flags);
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
  long fd = syscall(SYS_openat2, rootFd, rel.c_str(), &how, sizeof how);
  if (fd >= 0) return static_cast<int>(fd);
  if (errno != ENOSYS && errno != EXDEV) return -errno;
  // Kernels before 5.6, and absolute symlinks (RESOLVE_BENEATH refuses them
  // all, even those pointing inside): open, then check where the opened file
  // really is.
  int f = openat(rootFd, rel.c_str(), flags);
  if (f < 0) return -errno;
  char rootPath[PATH_MAX], filePath[PATH_MAX], link[64];
  snprintf(link, sizeof link, "/proc/self/fd/%d", rootFd);
  ssize_t a = readlink(link, rootPath, sizeof rootPath - 1);
  snprintf(link, sizeof link, "/proc/self/fd/%d", f);
  ssize_t b = readlink(link, filePath, sizeof filePath - 1);
  if (a <= 0 || b <= 0) {
    close(f);
    return -EXDEV;
  }
  std::string r(rootPath, a), p(filePath, b);
  if (p != r && !(p.size() > r.size() && p.compare(0, r.size(), r) == 0 &&
                  (r == "/" || p[r.size()] == '/'))) {
    close(f);
    return -EXDEV;
  }
  return f;
}

std::string localEtag(const struct stat& st) {
  char etag[64];
  snprintf(etag, sizeof etag, "\"%llx-%llx\"", static_cast<unsigned long long>(st.st_mtime),
           static_cast<unsigned long long>(st.st_size));
  return etag;
}

bool hiddenLocalName(const std::string& name) {
  static const char* const kHousekeeping[] = {"@eaDir", "#recycle", "#snapshot", "@Recycle",
                                              "lost+found"};
  if (name.empty() || name[0] == '.') return true;
  for (const char* h : kHousekeeping)
    if (name == h) return true;
  return false;
}

ListResult readLocalFolder(int rootFd, const std::string& rest) {
  int pathFd = openBeneath(rootFd, rest, O_PATH | O_CLOEXEC);
  if (pathFd < 0) return listFailure(openFailure(-pathFd), rest + ": " + strerror(-pathFd));
  struct stat st {};
  int rc = fstat(pathFd, &st);
  if (rc != 0 || !S_ISDIR(st.st_mode)) {
    close(pathFd);
    return listFailure(rc != 0 ? Reason::Internal : Reason::NotAFolder,
                       "'" + rest + "' is not a folder");
  }
  int dirFd = openat(pathFd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  close(pathFd);
  if (dirFd < 0) return listFailure(openFailure(errno), rest + ": " + strerror(errno));
  DIR* dir = fdopendir(dirFd);
  if (!dir) {
    close(dirFd);
    return listFailure(Reason::Internal, rest + ": " + strerror(errno));
  }
  auto entries = std::make_shared<DirEntries>();
  std::string base = rest.empty() || rest.back() != '/' ? rest + "/" : rest;
  while (dirent* d = readdir(dir)) {
    std::string name = d->d_name;
    if (name == "." || name == ".." || hiddenLocalName(name)) continue;
    if (fstatat(dirFd, d->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) continue;  // gone meanwhile
    if (S_ISLNK(st.st_mode)) {
      // Followed only while it stays beneath the root, as reads are.
      int f = openBeneath(rootFd, base + name, O_PATH | O_CLOEXEC);
      if (f < 0) continue;
      int ok = fstat(f, &st);
      close(f);
      if (ok != 0) continue;
    }
    if (!S_ISDIR(st.st_mode) && !S_ISREG(st.st_mode)) continue;  // devices, FIFOs, sockets
    if (entries->size() >= kMaxListEntries) {
      closedir(dir);
      return listFailure(Reason::Internal, "'" + rest + "' has more than " +
                                               std::to_string(kMaxListEntries) + " entries");
    }
    DirEntry e;
    e.name = std::move(name);
    e.folder = S_ISDIR(st.st_mode);
    e.mtimeMs = mtimeMs(st);
    if (!e.folder) {
      e.size = static_cast<uint64_t>(st.st_size);
      e.etag = localEtag(st);
    }
    entries->push_back(std::move(e));
  }
  closedir(dir);
  ListResult out;
  out.entries = entries;
  return out;
}

std::unique_ptr<Source> makeLocalSource(const conf::Mount& m, int rootFd, Worker& worker) {
  return std::make_unique<LocalSource>(m, rootFd, worker);
}

}  // namespace slip::proxy
