// Guarding the cache directory: its lock (one gateway per directory), the
// check of the index before anything in this process maps it, and
// `slipstream cache reset`.
//
// Why a child process: LMDB trusts its file. Random bytes over a page or a
// flipped bit in a page header make liblmdb follow wild pointers inside the
// map (SIGSEGV), past the end of a truncated file (SIGBUS), or free memory
// twice. None of that can be caught in-process, so a forked child walks every
// page the gateway will ever read — the free list, the main table, the four
// databases, every record through our own decoders — and reports. A child
// that dies by a signal, or says "corrupt", means the index is corrupt; the
// parent then refuses to open it and tells the user what to do.
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>

#include "store/index.h"

// Set only in sanitizer builds (weak: null otherwise).
extern "C" void __sanitizer_set_report_fd(void* fd) __attribute__((weak));

namespace slip::store {
namespace {

constexpr const char* kLockName = "/slipstream.lock";
constexpr int kCheckTimeoutMs = 120'000;  // a healthy index of millions of blocks takes seconds

std::string errnoText() { return strerror(errno); }

// Reads the holder's pid from the lock file; 0 if unknown.
long pidIn(int fd) {
  char buf[32] = {};
  ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
  if (n <= 0) return 0;
  char* end = nullptr;
  long pid = strtol(buf, &end, 10);
  return end != buf && pid > 0 ? pid : 0;
}

std::string holderText(long pid) { return pid > 0 ? "pid " + std::to_string(pid) : "pid unknown"; }

}  // namespace

// ------------------------------------------------------------------ lock

DirLock::~DirLock() {
  if (fd_ >= 0) close(fd_);  // releases the flock
}

DirLock::DirLock(DirLock&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }

bool DirLock::acquire(const std::string& dir, std::string* err) {
  std::string path = dir + kLockName;
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) {
    *err = "cannot open " + path + ": " + errnoText();
    return false;
  }
  // A read-only command probing the lock holds it shared for an instant:
  // try a few times before calling the directory busy.
  int rc = -1;
  for (int i = 0; i < 20 && (rc = flock(fd, LOCK_EX | LOCK_NB)) != 0 && errno == EWOULDBLOCK; i++)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  if (rc != 0) {
    bool busy = errno == EWOULDBLOCK;
    *err = busy ? "cache directory " + dir + " is in use by another slipstream (" +
                      holderText(pidIn(fd)) + "); two gateways must not share one cache.dir"
                : "cannot lock " + path + ": " + errnoText();
    close(fd);
    return false;
  }
  std::string pid = std::to_string(getpid()) + "\n";
  if (ftruncate(fd, 0) != 0 ||
      pwrite(fd, pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size())) {
    // The lock holds without the pid; others just cannot name us.
  }
  fd_ = fd;
  return true;
}

long DirLock::holder(const std::string& dir) {
  int fd = ::open((dir + kLockName).c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  long pid = 0;
  if (flock(fd, LOCK_SH | LOCK_NB) == 0) {
    flock(fd, LOCK_UN);
  } else if (errno == EWOULDBLOCK) {
    pid = pidIn(fd);
    if (pid == 0) pid = -1;
  }
  close(fd);
  return pid;
}

// ------------------------------------------------------------------ the walk

namespace {

// The child's walk. Returns "" when every page and record was readable, else
// what is wrong. Records our decoders reject are counted in *bad: opening
// drops them, they do not make the index unusable.
std::string walkIndex(const std::string& indexDir, uint64_t* bad) {
  std::string data = indexDir + "/data.mdb";
  struct stat st {};
  if (stat(data.c_str(), &st) != 0) return "cannot stat " + data + ": " + errnoText();
  Env env;
  std::string err;
  bool foreign = false;
  // Another format version is refused by the opener itself, with its own message.
  if (!env.open(indexDir, true, &err, &foreign)) return foreign ? "" : err;
  MDB_envinfo info{};
  MDB_stat est{};
  mdb_env_info(env.get(), &info);
  mdb_env_stat(env.get(), &est);
  uint64_t need = (static_cast<uint64_t>(info.me_last_pgno) + 1) * est.ms_psize;
  if (static_cast<uint64_t>(st.st_size) < need)
    return "data.mdb is " + std::to_string(st.st_size) + " bytes but its pages reach " +
           std::to_string(need) + " (truncated)";
  // No tree of a healthy file has more entries than this: a cycle does.
  const uint64_t cap = static_cast<uint64_t>(st.st_size) / 8 + 16;
  Txn t(env.get(), true);
  if (!t.ok()) return std::string("cannot read: ") + mdb_strerror(t.error());
  uint64_t badFree = 0;
  auto walk = [&](MDB_dbi dbi, const char* name, uint64_t* badCount, auto check) -> std::string {
    Cursor c(t.get(), dbi);
    if (!c.get()) return std::string("cannot open a cursor on ") + name;
    MDB_val k{}, v{}, prev{};
    uint64_t n = 0;
    int rc = mdb_cursor_get(c.get(), &k, &v, MDB_FIRST);
    for (; rc == 0; rc = mdb_cursor_get(c.get(), &k, &v, MDB_NEXT)) {
      if (++n > cap) return std::string("the ") + name + " database loops";
      // A damaged key count in a page header brings back stale nodes of
      // that page: readable records, but not in order (the gateway's write
      // rehearsal caught them; `cache stats` and `verify` did not).
      if (n > 1 && mdb_cmp(t.get(), dbi, &prev, &k) >= 0)
        return std::string("the ") + name + " database has keys out of order";
      prev = k;  // points into the read-only map, valid for the transaction
      if (!check(k, v)) ++*badCount;
    }
    if (rc != MDB_NOTFOUND) return std::string("the ") + name + " database: " + mdb_strerror(rc);
    return "";
  };
  // The free list (pages a write may reuse): txn id → [count, pgno...].
  std::string why = walk(0, "free-page", &badFree, [&](const MDB_val& k, const MDB_val& v) {
    if (k.mv_size != sizeof(size_t) || v.mv_size < sizeof(size_t) || v.mv_size % sizeof(size_t))
      return false;
    size_t ids[1];
    memcpy(ids, v.mv_data, sizeof ids);
    if (ids[0] != v.mv_size / sizeof(size_t) - 1) return false;
    for (size_t i = 1; i <= ids[0]; i++) {
      size_t pg = 0;
      memcpy(&pg, static_cast<const char*>(v.mv_data) + i * sizeof(size_t), sizeof pg);
      if (pg < 2 || pg > info.me_last_pgno) return false;
    }
    return true;
  });
  if (why.empty()) why = walk(1, "main", bad, [](const MDB_val&, const MDB_val&) { return true; });
  if (!why.empty()) return why;
  if (badFree) return "the free-page list names pages that do not exist";
  ObjectMeta m;
  BlockRecord b;
  LruValue l;
  Key key;
  uint32_t idx = 0;
  uint64_t prio = 0;
  if (why.empty())
    why = walk(env.objects, "objects", bad, [&](const MDB_val& k, const MDB_val& v) {
      return k.mv_size == 16 && decodeObject(view(v), &m);
    });
  if (why.empty())
    why = walk(env.blocks, "blocks", bad, [&](const MDB_val& k, const MDB_val& v) {
      return BlockKey::parse(k, &key, &idx) && decodeBlock(view(v), &b);
    });
  if (why.empty())
    why = walk(env.lru, "lru", bad, [&](const MDB_val& k, const MDB_val& v) {
      return LruKey::parse(k, &prio, &key, &idx) && decodeLru(view(v), &l);
    });
  return why;
}

// Rewrites every record of one database in place, in transactions of at
// most kRewriteChunk records that are aborted: every page is copied and
// written the way later commits will, so a page whose layout only reads
// well crashes here rather than in the gateway.
constexpr size_t kRewriteChunk = 8192;

std::string rewriteAll(const Env& env, MDB_dbi dbi, const char* name) {
  std::string from;
  bool more = true;
  while (more) {
    Txn t(env.get(), false);
    if (!t.ok()) return std::string("cannot write: ") + mdb_strerror(t.error());
    Cursor c(t.get(), dbi);
    MDB_val k{from.size(), from.data()}, v{};
    int rc = mdb_cursor_get(c.get(), &k, &v, from.empty() ? MDB_FIRST : MDB_SET_RANGE);
    size_t n = 0;
    for (; rc == 0 && n < kRewriteChunk; rc = mdb_cursor_get(c.get(), &k, &v, MDB_NEXT), n++) {
      std::string key(view(k)), value(view(v));
      MDB_val nk{key.size(), key.data()}, nv{value.size(), value.data()};
      if ((rc = mdb_cursor_put(c.get(), &nk, &nv, MDB_CURRENT)) != 0) break;
      from = key;
    }
    if (rc != 0 && rc != MDB_NOTFOUND)
      return std::string("rewriting the ") + name + " database: " + mdb_strerror(rc);
    more = rc == 0;
    if (more) from.push_back('\0');  // the next key after `from`
  }
  return "";
}

// What the gateway will write, rehearsed: reconciliation, then every page.
std::string rehearseWrites(const std::string& dir) {
  Env env;
  std::string err;
  if (!env.open(dir + "/index", false, &err)) return err;
  Reconciled rec;
  if (!reconcile(env, dir, &rec, &err, true)) return err;
  for (auto [dbi, name] :
       {std::pair{env.objects, "objects"}, {env.blocks, "blocks"}, {env.lru, "lru"}})
    if (std::string why = rewriteAll(env, dbi, name); !why.empty()) return why;
  return "";
}

std::string signalText(int sig) {
  const char* name = sig == SIGSEGV   ? "SIGSEGV"
                     : sig == SIGBUS  ? "SIGBUS"
                     : sig == SIGABRT ? "SIGABRT"
                                      : nullptr;
  return name ? name : "signal " + std::to_string(sig);
}

}  // namespace

bool checkIndex(const std::string& dir, bool writes, const Clock& clock, std::string* err,
                uint64_t* badRecords) {
  std::string indexDir = dir + "/index";
  struct stat st {};
  if (stat((indexDir + "/data.mdb").c_str(), &st) != 0) return true;  // no index yet
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) {
    *err = "cannot check the index: pipe: " + errnoText();
    return false;
  }
  pid_t pid = fork();
  if (pid < 0) {
    close(p[0]);
    close(p[1]);
    *err = "cannot check the index: fork: " + errnoText();
    return false;
  }
  if (pid == 0) {
    // The child: a crash here is the answer. Its stderr goes nowhere (a
    // sanitizer's report of the crash is not for the user).
    close(p[0]);
    int devnull = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (devnull >= 0) {
      dup2(devnull, 2);
      if (__sanitizer_set_report_fd)  // a sanitizer build: its report files too
        __sanitizer_set_report_fd(reinterpret_cast<void*>(static_cast<intptr_t>(devnull)));
    }
    // Die by the signal itself (a sanitizer would turn it into exit status 1).
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL}) sigaction(sig, &dfl, nullptr);
    uint64_t bad = 0;
    std::string why = walkIndex(indexDir, &bad);
    if (why.empty() && writes) why = rehearseWrites(dir);
    std::string line = (why.empty() ? "ok " + std::to_string(bad) : "corrupt " + why) + "\n";
    ssize_t w = write(p[1], line.data(), line.size());
    _exit(w == static_cast<ssize_t>(line.size()) ? 0 : 3);
  }
  close(p[1]);
  std::string out;
  const int64_t deadline = clock.monoMs() + kCheckTimeoutMs;
  bool timedOut = false;
  for (;;) {
    int left = static_cast<int>(std::min<int64_t>(deadline - clock.monoMs(), kCheckTimeoutMs));
    if (left <= 0) {
      timedOut = true;
      break;
    }
    pollfd pfd{p[0], POLLIN, 0};
    int rc = poll(&pfd, 1, left);
    if (rc < 0 && errno == EINTR) continue;
    if (rc <= 0) continue;
    char buf[512];
    ssize_t n = read(p[0], buf, sizeof buf);
    if (n > 0 && out.size() < 4096) out.append(buf, static_cast<size_t>(n));
    if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) break;
  }
  close(p[0]);
  if (timedOut) kill(pid, SIGKILL);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  std::string what;
  if (timedOut) {
    what = "reading it did not finish in " + std::to_string(kCheckTimeoutMs / 1000) + " s";
  } else if (WIFSIGNALED(status)) {
    what = "reading it crashed (" + signalText(WTERMSIG(status)) + ")";
  } else if (out.starts_with("ok ")) {
    if (badRecords) *badRecords = strtoull(out.c_str() + 3, nullptr, 10);
    return true;
  } else if (out.starts_with("corrupt ")) {
    what = out.substr(8);
    while (!what.empty() && what.back() == '\n') what.pop_back();
  } else {
    what = "reading it failed (exit status " +
           std::to_string(WIFEXITED(status) ? WEXITSTATUS(status) : -1) + ")";
  }
  *err = "index corrupt: " + what + " (in " + indexDir +
         "), move the cache directory away or run `slipstream cache reset -c <config>`";
  return false;
}

// ------------------------------------------------------------------ min_free

std::optional<std::string> Store::minFreeProblem(const conf::Cache& cfg) {
  // The directory may not exist yet: its nearest existing parent is on the
  // file system it will be created on.
  std::string at = cfg.dir;
  struct statvfs vfs {};
  while (statvfs(at.c_str(), &vfs) != 0) {
    size_t slash = at.find_last_of('/');
    if (at.empty() || at == "/" || slash == std::string::npos) return std::nullopt;
    at = slash == 0 ? "/" : at.substr(0, slash);
  }
  uint64_t size = static_cast<uint64_t>(vfs.f_blocks) * vfs.f_frsize;
  if (static_cast<uint64_t>(cfg.minFree) < size) return std::nullopt;
  return "[cache] min_free (" + std::to_string(cfg.minFree) +
         " bytes) is not below the size of the file system holding " + cfg.dir + " (" +
         std::to_string(size) +
         " bytes): nothing can ever be stored, the cache is off; lower min_free or move cache.dir";
}

// ------------------------------------------------------------------ reset

namespace {

bool isDir(const std::string& p) {
  struct stat st {};
  return lstat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

}  // namespace

int Store::reset(const conf::Cache& cfg, FILE* out) {
  const std::string& dir = cfg.dir;
  if (!isDir(dir)) {
    fprintf(out, "cache %s: no such directory, nothing to reset\n", dir.c_str());
    return 0;
  }
  DirLock lock;
  std::string err;
  if (!lock.acquire(dir, &err)) {
    fprintf(out, "cache reset refused: %s; stop it first\n", err.c_str());
    return 1;
  }
  // Only our own files: cache.dir may have been pointed at a folder that
  // holds other things too.
  uint64_t files = 0, bytes = 0;
  std::vector<std::string> left;
  auto remove = [&](const std::string& p) {
    struct stat st {};
    if (lstat(p.c_str(), &st) != 0) return;
    if (unlink(p.c_str()) != 0) {
      left.push_back(p + " (" + errnoText() + ")");
      return;
    }
    files++;
    bytes += static_cast<uint64_t>(st.st_blocks) * 512;
  };
  std::string index = dir + "/index";
  remove(index + "/data.mdb");
  remove(index + "/lock.mdb");
  if (isDir(index) && rmdir(index.c_str()) != 0) left.push_back(index + "/ (" + errnoText() + ")");
  std::string data = dir + "/data";
  if (DIR* d = opendir(data.c_str())) {
    while (dirent* sub = readdir(d)) {
      std::string name = sub->d_name;
      if (name == "." || name == "..") continue;
      std::string subPath = data + "/" + name;
      DIR* d2 = name.size() == 2 && isDir(subPath) ? opendir(subPath.c_str()) : nullptr;
      if (!d2) {
        left.push_back(subPath);
        continue;
      }
      while (dirent* e = readdir(d2)) {
        std::string fname = e->d_name;
        if (fname == "." || fname == "..") continue;
        Key k;
        uint64_t gen = 0;
        if (parseDataName(fname, &k, &gen))
          remove(subPath + "/" + fname);
        else
          left.push_back(subPath + "/" + fname);
      }
      closedir(d2);
      rmdir(subPath.c_str());
    }
    closedir(d);
    rmdir(data.c_str());
  }
  fprintf(out, "cache %s: removed the index and data, %llu files (%llu bytes on disk)\n",
          dir.c_str(), static_cast<unsigned long long>(files),
          static_cast<unsigned long long>(bytes));
  for (const std::string& p : left) fprintf(out, "left alone (not the cache's): %s\n", p.c_str());
  return left.empty() ? 0 : 1;
}

}  // namespace slip::store
