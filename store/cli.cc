// `slipstream cache stats` and `slipstream cache verify`: read-only walks of
// the index and the data files. Safe while the gateway runs (LMDB readers do
// not block its writer).
#include <fcntl.h>
#include <unistd.h>

#include <map>
#include <vector>

#include "store/index.h"

namespace slip::store {
namespace {

struct Walk {
  Env env;
  std::map<Key, ObjectMeta> objects;
};

bool openWalk(const conf::Cache& cfg, Walk* w, FILE* out) {
  std::string err;
  if (!w->env.open(cfg.dir + "/index", true, &err)) {
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

}  // namespace

int Store::printStats(const conf::Cache& cfg, FILE* out, bool verbose) {
  Walk w;
  if (!openWalk(cfg, &w, out)) return 1;
  std::map<Key, std::pair<uint64_t, uint64_t>> per;  // blocks, bytes
  uint64_t blocks = 0, bytes = 0;
  {
    Txn t(w.env.get(), true);
    forEach(t.get(), w.env.blocks, [&](MDB_cursor*, const MDB_val& k, const MDB_val& v) {
      BlockRecord r;
      Key key = BlockKey::object(k);
      auto it = w.objects.find(key);
      if (!decodeBlock(view(v), &r) || it == w.objects.end() || it->second.generation != r.generation)
        return true;
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
              static_cast<unsigned long long>(b), m.blockCount(), static_cast<unsigned long long>(n),
              m.etag.empty() ? "-" : m.etag.c_str());
    }
  }
  return 0;
}

int Store::verify(const conf::Cache& cfg, FILE* out) {
  Walk w;
  if (!openWalk(cfg, &w, out)) return 1;
  uint64_t checked = 0, bad = 0, bytes = 0;
  std::map<Key, int> fds;
  std::vector<char> buf;
  Txn t(w.env.get(), true);
  {
    Cursor c(t.get(), w.env.blocks);
    MDB_val k, v;
    for (int rc = mdb_cursor_get(c.get(), &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c.get(), &k, &v, MDB_NEXT)) {
      BlockRecord r;
      Key key = BlockKey::object(k);
      uint32_t idx = BlockKey::index(k);
      auto it = w.objects.find(key);
      if (!decodeBlock(view(v), &r)) {
        fprintf(out, "bad object=%s block=%u: unreadable index record\n", key.hex().c_str(), idx);
        bad++;
        continue;
      }
      if (it == w.objects.end() || it->second.generation != r.generation) continue;  // stale, never served
      const ObjectMeta& m = it->second;
      checked++;
      auto f = fds.find(key);
      if (f == fds.end()) {
        int fd = ::open(dataPath(cfg.dir, key, m.generation).c_str(), O_RDONLY | O_CLOEXEC);
        if (fd >= 0 && !checkFileHeader(fd, key, m.generation)) {
          close(fd);
          fd = -2;
        }
        f = fds.emplace(key, fd).first;
      }
      std::string where = "object=" + key.hex() + " path=" + m.mount + m.path +
                          " block=" + std::to_string(idx);
      if (f->second < 0) {
        fprintf(out, "bad %s: data file %s\n", where.c_str(),
                f->second == -2 ? "has a wrong header" : "is missing");
        bad++;
        continue;
      }
      buf.resize(r.length);
      if (pread(f->second, buf.data(), r.length, static_cast<off_t>(blockOffset(m, idx))) !=
          static_cast<ssize_t>(r.length)) {
        fprintf(out, "bad %s: short read\n", where.c_str());
        bad++;
        continue;
      }
      bytes += r.length;
      if (r.pages.empty()) continue;
      if (auto p = firstBadPage(r, buf.data(), 0, static_cast<uint32_t>(r.pages.size() - 1))) {
        size_t off = static_cast<size_t>(*p) * kPageSize;
        uint64_t h = pageHash(buf.data() + off, std::min<size_t>(kPageSize, r.length - off));
        fprintf(out, "bad %s page=%u: checksum %016llx, index says %016llx\n", where.c_str(), *p,
                static_cast<unsigned long long>(h), static_cast<unsigned long long>(r.pages[*p]));
        bad++;
      }
    }
  }
  for (auto& [_, fd] : fds)
    if (fd >= 0) close(fd);
  fprintf(out, "verified %llu blocks (%llu bytes) in %zu objects: %llu bad\n",
          static_cast<unsigned long long>(checked), static_cast<unsigned long long>(bytes),
          w.objects.size(), static_cast<unsigned long long>(bad));
  return bad ? 1 : 0;
}

}  // namespace slip::store
