// `slipstream cache stats` and `slipstream cache verify`: walks of the index
// and the data files. Both first check the index in a child process (a
// corrupt index is reported, never crashes the command). Read-only walks are
// safe while the gateway runs (LMDB readers do not block its writer); they
// say so when the figures may be moving. `verify --repair` writes, so it
// needs the directory lock.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <map>
#include <vector>

#include "store/index.h"

namespace slip::store {
namespace {

struct Walk {
  DirLock lock;  // held by `verify --repair` only
  Env env;
  std::map<Key, ObjectMeta> objects;
};

bool openWalk(const conf::Cache& cfg, Walk* w, FILE* out, bool write) {
  std::string err;
  struct stat st {};
  if (stat((cfg.dir + "/index/data.mdb").c_str(), &st) != 0) {
    fprintf(out, "cache %s: no cache here yet\n", cfg.dir.c_str());
    return false;
  }
  if (write) {
    if (!w->lock.acquire(cfg.dir, &err)) {
      fprintf(out,
              "cache %s: cannot repair: %s; the gateway drops bad blocks itself when it reads "
              "them, or stop it and repair\n",
              cfg.dir.c_str(), err.c_str());
      return false;
    }
  } else if (long pid = DirLock::holder(cfg.dir)) {
    fprintf(out, "note: a gateway (%s) is running on this cache: the figures may be moving\n",
            pid > 0 ? ("pid " + std::to_string(pid)).c_str() : "pid unknown");
  }
  RealClock clock;  // the command line's only time: the index check's limit
  if (!checkIndex(cfg.dir, write, clock, &err)) {
    fprintf(out, "cache %s: %s\n", cfg.dir.c_str(), err.c_str());
    return false;
  }
  if (!w->env.open(cfg.dir + "/index", !write, &err)) {
    fprintf(out, "cache %s: %s\n", cfg.dir.c_str(), err.c_str());
    return false;
  }
  Txn t(w->env.get(), true);
  w->objects = readObjects(t.get(), w->env.objects, false);
  return true;
}

std::string human(uint64_t n) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double d = static_cast<double>(n);
  int u = 0;
  while (d >= 1024 && u < 4) {
    d /= 1024;
    u++;
  }
  char buf[32];
  snprintf(buf, sizeof buf, u ? "%.1f %s" : "%.0f %s", d, units[u]);
  return buf;
}

/// One data file of an object version, opened once per verify.
struct OpenFile {
  int fd = -1;  // -1 missing, -2 wrong header
  uint64_t size = 0;
};

OpenFile openData(const std::string& dir, const Key& key, const ObjectMeta& m) {
  OpenFile f;
  f.fd = ::open(dataPath(dir, key, m.generation).c_str(), O_RDONLY | O_CLOEXEC);
  struct stat st {};
  if (f.fd >= 0 && (!checkFileHeader(f.fd, key, m.generation) || fstat(f.fd, &st) != 0)) {
    close(f.fd);
    f.fd = -2;
  }
  f.size = static_cast<uint64_t>(st.st_size);
  return f;
}

// Why the listed block is bad (": reason", or " page=N: checksum ..."), or ""
// when its bytes are all there and match.
std::string checkBlock(const OpenFile& f, const ObjectMeta& m, uint32_t idx, const BlockRecord& r,
                       std::vector<char>& buf) {
  if (f.fd == -1) return ": data file is missing";
  if (f.fd == -2) return ": data file has a wrong header";
  uint64_t at = blockOffset(m, idx);
  if (at + r.length > f.size)
    return ": data file is shorter than its listed blocks (ends at " + std::to_string(f.size) +
           ", the block at " + std::to_string(at + r.length) + ")";
  buf.resize(r.length);
  if (pread(f.fd, buf.data(), r.length, static_cast<off_t>(at)) != static_cast<ssize_t>(r.length))
    return ": short read";
  if (r.pages.empty()) return "";
  auto p = firstBadPage(r, buf.data(), 0, static_cast<uint32_t>(r.pages.size() - 1));
  if (!p) return "";
  size_t off = static_cast<size_t>(*p) * kPageSize;
  uint64_t h = pageHash(buf.data() + off, std::min<size_t>(kPageSize, r.length - off));
  char msg[96];
  snprintf(msg, sizeof msg, " page=%u: checksum %016llx, index says %016llx", *p,
           static_cast<unsigned long long>(h), static_cast<unsigned long long>(r.pages[*p]));
  return msg;
}

struct BadBlock {
  Key key;
  uint32_t idx;
  uint64_t prio;
  uint64_t offset;
  uint32_t length;
  uint64_t generation;
};

// Unlists the bad blocks (then punches their bytes): the gateway fetches them
// again. Returns how many were unlisted.
size_t repair(const conf::Cache& cfg, Walk& w, const std::vector<BadBlock>& bad, FILE* out) {
  Txn t(w.env.get(), false);
  if (!t.ok()) {
    fprintf(out, "repair failed: %s\n", mdb_strerror(t.error()));
    return 0;
  }
  size_t n = 0;
  for (const BadBlock& b : bad) {
    BlockKey bk(b.key, b.idx);
    MDB_val bkv = bk.val();
    LruKey lk(b.prio, b.key, b.idx);
    MDB_val lkv = lk.val();
    mdb_del(t.get(), w.env.lru, &lkv, nullptr);
    if (mdb_del(t.get(), w.env.blocks, &bkv, nullptr) == 0) n++;
  }
  int rc = t.commit();
  if (rc != 0) {
    fprintf(out, "repair failed: %s\n", mdb_strerror(rc));
    return 0;
  }
  for (const BadBlock& b : bad) {
    int fd = ::open(dataPath(cfg.dir, b.key, b.generation).c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) continue;
    fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(b.offset),
              static_cast<off_t>(b.length));
    close(fd);
  }
  return n;
}

}  // namespace

int Store::printStats(const conf::Cache& cfg, FILE* out, bool verbose) {
  Walk w;
  if (!openWalk(cfg, &w, out, false)) return 1;
  std::map<Key, std::pair<uint64_t, uint64_t>> per;  // blocks, bytes
  uint64_t blocks = 0, bytes = 0;
  {
    Txn t(w.env.get(), true);
    forEach(t.get(), w.env.blocks, [&](MDB_cursor*, const MDB_val& k, const MDB_val& v) {
      BlockRecord r;
      Key key;
      uint32_t idx = 0;
      if (!BlockKey::parse(k, &key, &idx) || !decodeBlock(view(v), &r)) return true;
      auto it = w.objects.find(key);
      if (it == w.objects.end() || it->second.generation != r.generation) return true;
      blocks++;
      bytes += r.length;
      per[key].first++;
      per[key].second += r.length;
      return true;
    });
  }
  fprintf(out, "objects %zu\nblocks %llu\nbytes %llu (%s)\nmax_size %lld (%s)\n", w.objects.size(),
          static_cast<unsigned long long>(blocks), static_cast<unsigned long long>(bytes),
          human(bytes).c_str(), static_cast<long long>(cfg.maxSize),
          human(static_cast<uint64_t>(cfg.maxSize)).c_str());
  if (verbose) {
    for (const auto& [key, m] : w.objects) {
      auto [b, n] = per[key];
      fprintf(out, "%s %s:%s size=%llu blocks=%llu/%u bytes=%llu etag=%s\n", key.hex().c_str(),
              m.mount.c_str(), m.path.c_str(), static_cast<unsigned long long>(m.size),
              static_cast<unsigned long long>(b), m.blockCount(),
              static_cast<unsigned long long>(n), m.etag.empty() ? "-" : m.etag.c_str());
    }
  }
  return 0;
}

int Store::verify(const conf::Cache& cfg, FILE* out, bool repairBad) {
  Walk w;
  if (!openWalk(cfg, &w, out, repairBad)) return 1;
  uint64_t checked = 0, bytes = 0, unreadable = 0;
  std::map<Key, OpenFile> files;
  std::vector<BadBlock> bad;
  std::vector<char> buf;
  {
    Txn t(w.env.get(), true);
    forEach(t.get(), w.env.blocks, [&](MDB_cursor*, const MDB_val& k, const MDB_val& v) {
      BlockRecord r;
      Key key;
      uint32_t idx = 0;
      if (!BlockKey::parse(k, &key, &idx) || !decodeBlock(view(v), &r)) {
        fprintf(out, "bad index record of %zu bytes: unreadable (opening the cache drops it)\n",
                v.mv_size);
        unreadable++;
        return true;
      }
      auto it = w.objects.find(key);
      if (it == w.objects.end() || it->second.generation != r.generation)
        return true;  // stale, never served
      const ObjectMeta& m = it->second;
      checked++;
      auto f = files.find(key);
      if (f == files.end()) f = files.emplace(key, openData(cfg.dir, key, m)).first;
      std::string why = idx >= m.blockCount() || r.length != m.blockLength(idx)
                            ? ": the record disagrees with its object's size"
                            : checkBlock(f->second, m, idx, r, buf);
      if (why.empty()) {
        bytes += r.length;
        return true;
      }
      fprintf(out, "bad object=%s path=%s%s block=%u%s\n", key.hex().c_str(), m.mount.c_str(),
              m.path.c_str(), idx, why.c_str());
      bad.push_back({key, idx, r.prio, blockOffset(m, idx), r.length, r.generation});
      return true;
    });
  }
  for (auto& [_, f] : files)
    if (f.fd >= 0) close(f.fd);
  fprintf(out, "verified %llu blocks (%llu bytes) in %zu objects: %llu bad\n",
          static_cast<unsigned long long>(checked), static_cast<unsigned long long>(bytes),
          w.objects.size(), static_cast<unsigned long long>(bad.size() + unreadable));
  if (repairBad && !bad.empty()) {
    size_t n = repair(cfg, w, bad, out);
    fprintf(out, "repaired: %zu bad blocks unlisted (the gateway fetches them again)\n", n);
  } else if (!bad.empty()) {
    fprintf(out,
            "run `slipstream cache verify --repair` to unlist them (the gateway also drops "
            "each one the first time it reads it)\n");
  }
  return bad.empty() && unreadable == 0 ? 0 : 1;
}

}  // namespace slip::store
