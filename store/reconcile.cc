// Opening reconciles the index with the data files (store/DESIGN.md, "Crash
// safety" rule 4, and "Damage"): what a crash left unlisted is reclaimed,
// and what the index lists but the disk no longer holds is unlisted, so it is
// fetched again instead of failing every read at the same byte.
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <set>

#include "store/index.h"

namespace slip::store {
namespace {

struct Listed {
  uint32_t length = 0;
  uint64_t prio = 0;
};
using ListedBlocks = std::map<Key, std::map<uint32_t, Listed>>;

void unlist(MDB_txn* t, const Env& env, const Key& key, uint32_t idx, const Listed& l) {
  BlockKey bk(key, idx);
  MDB_val bkv = bk.val();
  mdb_del(t, env.blocks, &bkv, nullptr);
  LruKey lk(l.prio, key, idx);
  MDB_val lkv = lk.val();
  mdb_del(t, env.lru, &lkv, nullptr);
}

// Block records: those of unknown objects or versions, or inconsistent with
// their object (index past the end, wrong length), are deleted; every kept
// one gets its LRU entry back if it lost it.
ListedBlocks listBlocks(MDB_txn* t, const Env& env, const std::map<Key, ObjectMeta>& objs,
                        Reconciled* out) {
  ListedBlocks listed;
  std::vector<std::pair<LruKey, std::string>> lruMissing;
  forEach(t, env.blocks, [&](MDB_cursor* c, const MDB_val& k, const MDB_val& v) {
    BlockRecord r;
    Key key;
    uint32_t idx = 0;
    bool ok = BlockKey::parse(k, &key, &idx) && decodeBlock(view(v), &r);
    auto it = ok ? objs.find(key) : objs.end();
    if (it == objs.end() || r.generation != it->second.generation ||
        idx >= it->second.blockCount() || r.length != it->second.blockLength(idx)) {
      if (ok && it != objs.end() && r.generation == it->second.generation) out->inconsistent++;
      mdb_cursor_del(c, 0);
      return true;
    }
    listed[key][idx] = Listed{r.length, r.prio};
    LruKey lk(r.prio, key, idx);
    MDB_val lkv = lk.val(), lv;
    if (mdb_get(t, env.lru, &lkv, &lv) != 0)
      lruMissing.push_back({lk, encodeLru({r.generation, r.length})});
    out->used += r.length;
    out->blocks++;
    return true;
  });
  for (auto& [lk, v] : lruMissing) {
    MDB_val kv = lk.val(), vv{v.size(), v.data()};
    mdb_put(t, env.lru, &kv, &vv, 0);
  }
  // LRU entries whose block is gone (or that are not LRU entries at all).
  forEach(t, env.lru, [&](MDB_cursor* c, const MDB_val& k, const MDB_val& v) {
    uint64_t prio = 0;
    Key key;
    uint32_t idx = 0;
    LruValue lv;
    bool ok = LruKey::parse(k, &prio, &key, &idx) && decodeLru(view(v), &lv);
    auto it = ok ? listed.find(key) : listed.end();
    if (it == listed.end() || !it->second.count(idx) || it->second[idx].prio != prio)
      mdb_cursor_del(c, 0);
    return true;
  });
  return listed;
}

// One data file of a known version: listed blocks the file no longer holds
// (it is shorter than they reach) are unlisted, the file gets its full
// length back, and unlisted regions are punched.
void reconcileFile(MDB_txn* t, const Env& env, int fd, const Key& key, const ObjectMeta& m,
                   std::map<uint32_t, Listed>& have, Reconciled* out, bool dryRun) {
  struct stat st {};
  if (fstat(fd, &st) != 0) return;
  const uint64_t fileSize = static_cast<uint64_t>(st.st_size);
  for (auto it = have.begin(); it != have.end();) {
    uint64_t end = blockOffset(m, it->first) + it->second.length;
    if (end <= fileSize) {
      ++it;
      continue;
    }
    if (!dryRun)
      conf::Log::write(conf::LogLevel::Warn, "cache_block_truncated",
                       "object=" + key.hex() + " path=" + conf::logValue(m.mount + m.path) +
                           " block=" + std::to_string(it->first) + " file_size=" +
                           std::to_string(fileSize) + " block_end=" + std::to_string(end));
    unlist(t, env, key, it->first, it->second);
    out->used -= std::min<uint64_t>(out->used, it->second.length);
    out->blocks--;
    out->truncated++;
    it = have.erase(it);
  }
  if (dryRun) return;
  const uint64_t full = kFileHeader + m.size;
  if (fileSize < full && ftruncate(fd, static_cast<off_t>(full)) != 0) {
    // Writes extend it again anyway; nothing listed lies past the end now.
  }
  for (uint32_t i = 0; i < m.blockCount(); i++) {
    uint64_t off = blockOffset(m, i);
    if (off >= fileSize) break;
    if (have.count(i)) continue;
    off_t dataAt = lseek(fd, static_cast<off_t>(off), SEEK_DATA);
    if (dataAt >= 0 && static_cast<uint64_t>(dataAt) < off + m.blockLength(i))
      fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(off),
                static_cast<off_t>(m.blockSize));
  }
}

}  // namespace

bool reconcile(const Env& env, const std::string& dir, Reconciled* out, std::string* err,
               bool dryRun) {
  Txn t(env.get(), false);
  if (!t.ok()) {
    *err = std::string("index: ") + mdb_strerror(t.error());
    return false;
  }
  std::map<Key, ObjectMeta> objs = readObjects(t.get(), env.objects, true);
  for (const auto& [key, m] : objs) out->nextGen = std::max(out->nextGen, m.generation + 1);
  ListedBlocks listed = listBlocks(t.get(), env, objs, out);
  // Data files: orphans go; known files are checked against their blocks.
  std::set<Key> withFile;
  std::string dataDir = dir + "/data";
  if (DIR* d = opendir(dataDir.c_str())) {
    while (dirent* sub = readdir(d)) {
      if (sub->d_name[0] == '.') continue;
      std::string subPath = dataDir + "/" + sub->d_name;
      DIR* d2 = opendir(subPath.c_str());
      if (!d2) continue;
      while (dirent* e = readdir(d2)) {
        if (e->d_name[0] == '.') continue;
        std::string path = subPath + "/" + e->d_name;
        Key key;
        uint64_t gen = 0;
        auto it = parseDataName(e->d_name, &key, &gen) ? objs.find(key) : objs.end();
        int fd = it != objs.end() && it->second.generation == gen
                     ? ::open(path.c_str(), (dryRun ? O_RDONLY : O_RDWR) | O_CLOEXEC)
                     : -1;
        if (fd < 0 || !checkFileHeader(fd, key, gen)) {
          if (fd >= 0) close(fd);
          if (!dryRun) unlink(path.c_str());
          continue;
        }
        withFile.insert(key);
        reconcileFile(t.get(), env, fd, key, it->second, listed[key], out, dryRun);
        close(fd);
      }
      closedir(d2);
    }
    closedir(d);
  }
  // Objects without a file, or without a block, are dropped with their records.
  for (auto& [key, m] : objs) {
    auto it = listed.find(key);
    bool empty = it == listed.end() || it->second.empty();
    if (withFile.count(key) && !empty) {
      out->objects++;
      continue;
    }
    MDB_val k{16, const_cast<uint8_t*>(key.b)};
    mdb_del(t.get(), env.objects, &k, nullptr);
    if (!empty) {
      for (const auto& [idx, l] : it->second) {
        unlist(t.get(), env, key, idx, l);
        out->used -= std::min<uint64_t>(out->used, l.length);
        out->blocks--;
      }
    }
    if (!dryRun) unlink(dataPath(dir, key, m.generation).c_str());
  }
  if (dryRun) return true;  // the transaction aborts: nothing was changed
  int rc = t.commit();
  if (rc != 0) {
    *err = std::string("index commit: ") + mdb_strerror(rc);
    return false;
  }
  return true;
}

}  // namespace slip::store
