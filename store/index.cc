#include "store/index.h"

#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <charconv>
#include <climits>

namespace slip::store {

uint64_t pageHash(const void* data, size_t n) { return XXH3_64bits(data, n); }

std::optional<uint32_t> firstBadPage(const BlockRecord& r, const char* bytes, uint32_t p0, uint32_t p1) {
  const uint64_t from = static_cast<uint64_t>(p0) * kPageSize;
  for (uint32_t p = p0; p <= p1; p++) {
    uint64_t at = static_cast<uint64_t>(p) * kPageSize;
    if (p >= r.pages.size() || at >= r.length) return p;  // a record that does not cover the page
    uint64_t len = std::min<uint64_t>(kPageSize, r.length - at);
    if (pageHash(bytes + (at - from), len) != r.pages[p]) return p;
  }
  return std::nullopt;
}

Key objectKey(std::string_view mount, std::string_view path) {
  XXH3_state_t* st = XXH3_createState();
  XXH3_128bits_reset(st);
  XXH3_128bits_update(st, mount.data(), mount.size());
  XXH3_128bits_update(st, "\0", 1);
  XXH3_128bits_update(st, path.data(), path.size());
  XXH128_hash_t h = XXH3_128bits_digest(st);
  XXH3_freeState(st);
  XXH128_canonical_t c;
  XXH128_canonicalFromHash(&c, h);
  Key k;
  memcpy(k.b, c.digest, 16);
  return k;
}

std::string Key::hex() const {
  static const char kHex[] = "0123456789abcdef";
  std::string s(32, '0');
  for (int i = 0; i < 16; i++) {
    s[2 * i] = kHex[b[i] >> 4];
    s[2 * i + 1] = kHex[b[i] & 15];
  }
  return s;
}

// ------------------------------------------------------------------ Env

bool Env::open(const std::string& dir, bool readOnly, std::string* err, bool* foreign) {
  int rc = mdb_env_create(&env_);
  if (rc == 0) rc = mdb_env_set_maxdbs(env_, 8);
  if (rc == 0) rc = mdb_env_set_mapsize(env_, kMapSize);
  // NOTLS: read transactions are reset and renewed on the loop thread while
  // the disk thread writes.
  unsigned flags = MDB_NOTLS | (readOnly ? MDB_RDONLY : 0);
  if (rc == 0) rc = mdb_env_open(env_, dir.c_str(), flags, 0644);
  if (rc != 0) {
    *err = "index " + dir + ": " + mdb_strerror(rc);
    close();
    return false;
  }
  // Reader slots of processes that died (a killed gateway or CLI, a crashed
  // index check) would keep old pages from ever being reused.
  int dead = 0;
  if (!readOnly) mdb_reader_check(env_, &dead);
  Txn t(env_, readOnly);
  if (!t.ok()) {
    *err = std::string("index: ") + mdb_strerror(t.error());
    close();
    return false;
  }
  unsigned dflags = readOnly ? 0 : MDB_CREATE;
  if ((rc = mdb_dbi_open(t.get(), "meta", dflags, &meta)) ||
      (rc = mdb_dbi_open(t.get(), "objects", dflags, &objects)) ||
      (rc = mdb_dbi_open(t.get(), "blocks", dflags, &blocks)) ||
      (rc = mdb_dbi_open(t.get(), "lru", dflags, &lru))) {
    *err = std::string("index: ") + (rc == MDB_NOTFOUND ? "no cache here yet" : mdb_strerror(rc));
    close();
    return false;
  }
  // Format check: a fresh index gets our magic; a foreign one is refused.
  MDB_val k{6, const_cast<char*>("format")}, v;
  rc = mdb_get(t.get(), meta, &k, &v);
  std::string want(kIndexMagic, 8);
  want.append(reinterpret_cast<const char*>(&kIndexVersion), 4);
  if (rc == MDB_NOTFOUND) {
    if (readOnly) {
      *err = "index has no format record";
      close();
      return false;
    }
    MDB_val nv{want.size(), want.data()};
    mdb_put(t.get(), meta, &k, &nv, 0);
  } else if (rc != 0 || view(v) != want) {
    uint32_t ver = 0;
    if (rc == 0 && v.mv_size >= 12) memcpy(&ver, static_cast<char*>(v.mv_data) + 8, 4);
    if (foreign) *foreign = rc == 0;
    *err = "cache index format " + std::to_string(ver) + " is not the format this build reads (" +
           std::to_string(kIndexVersion) + "): move the cache directory away or point cache.dir elsewhere";
    close();
    return false;
  }
  // Committing (also a read-only txn) keeps the database handles open.
  if ((rc = t.commit()) != 0) {
    *err = std::string("index: ") + mdb_strerror(rc);
    close();
    return false;
  }
  return true;
}

void Env::close() {
  if (env_) mdb_env_close(env_);
  env_ = nullptr;
}

// ------------------------------------------------------------------ keys

namespace {
void putBe32(uint8_t* p, uint32_t v) {
  for (int i = 3; i >= 0; i--, v >>= 8) p[i] = static_cast<uint8_t>(v);
}
void putBe64(uint8_t* p, uint64_t v) {
  for (int i = 7; i >= 0; i--, v >>= 8) p[i] = static_cast<uint8_t>(v);
}
uint32_t getBe32(const uint8_t* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; i++) v = (v << 8) | p[i];
  return v;
}
uint64_t getBe64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v = (v << 8) | p[i];
  return v;
}
}  // namespace

BlockKey::BlockKey(const Key& k, uint32_t idx) {
  memcpy(b, k.b, 16);
  putBe32(b + 16, idx);
}
bool BlockKey::parse(const MDB_val& v, Key* k, uint32_t* idx) {
  if (v.mv_size != sizeof(BlockKey::b)) return false;
  *k = object(v);
  *idx = index(v);
  return true;
}
uint32_t BlockKey::index(const MDB_val& v) {
  return getBe32(static_cast<const uint8_t*>(v.mv_data) + 16);
}
Key BlockKey::object(const MDB_val& v) {
  Key k;
  memcpy(k.b, v.mv_data, 16);
  return k;
}

LruKey::LruKey(uint64_t prio, const Key& k, uint32_t idx) {
  putBe64(b, prio);
  memcpy(b + 8, k.b, 16);
  putBe32(b + 24, idx);
}
bool LruKey::parse(const MDB_val& v, uint64_t* prio, Key* k, uint32_t* idx) {
  if (v.mv_size != sizeof(LruKey::b)) return false;
  *prio = LruKey::prio(v);
  *k = object(v);
  *idx = index(v);
  return true;
}
uint64_t LruKey::prio(const MDB_val& v) { return getBe64(static_cast<const uint8_t*>(v.mv_data)); }
Key LruKey::object(const MDB_val& v) {
  Key k;
  memcpy(k.b, static_cast<const uint8_t*>(v.mv_data) + 8, 16);
  return k;
}
uint32_t LruKey::index(const MDB_val& v) {
  return getBe32(static_cast<const uint8_t*>(v.mv_data) + 24);
}

// ------------------------------------------------------------------ records
// Little-endian fixed fields followed by length-prefixed strings.

namespace {

class Writer {
 public:
  template <typename T>
  void num(T v) {
    s_.append(reinterpret_cast<const char*>(&v), sizeof v);
  }
  void str(std::string_view v) {
    num(static_cast<uint16_t>(std::min<size_t>(v.size(), 65535)));
    s_.append(v.substr(0, 65535));
  }
  std::string take() { return std::move(s_); }

 private:
  std::string s_;
};

class Reader {
 public:
  explicit Reader(std::string_view s) : s_(s) {}
  template <typename T>
  bool num(T* v) {
    if (s_.size() < sizeof(T)) return false;
    memcpy(v, s_.data(), sizeof(T));
    s_.remove_prefix(sizeof(T));
    return true;
  }
  bool str(std::string* v) {
    uint16_t n = 0;
    if (!num(&n) || s_.size() < n) return false;
    v->assign(s_.data(), n);
    s_.remove_prefix(n);
    return true;
  }
  size_t left() const { return s_.size(); }

 private:
  std::string_view s_;
};

}  // namespace

std::string encodeObject(const ObjectMeta& m, int64_t createdMs) {
  Writer w;
  w.num(kObjectMagic);
  w.num(m.size);
  w.num(m.generation);
  w.num(m.blockSize);
  w.num(m.validatedMs);
  w.num(createdMs);
  w.num(static_cast<uint8_t>(m.noRanges ? 1 : 0));
  w.str(m.etag);
  w.str(m.lastModified);
  w.str(m.contentType);
  w.str(m.mount);
  w.str(m.path);
  return w.take();
}

std::map<Key, ObjectMeta> readObjects(MDB_txn* t, MDB_dbi objects, bool dropBad) {
  std::map<Key, ObjectMeta> out;
  forEach(t, objects, [&](MDB_cursor* c, const MDB_val& k, const MDB_val& v) {
    ObjectMeta m;
    if (k.mv_size == 16 && decodeObject(view(v), &m)) {
      Key key;
      memcpy(key.b, k.mv_data, 16);
      out[key] = m;
    } else if (dropBad) {
      mdb_cursor_del(c, 0);
    }
    return true;
  });
  return out;
}

bool decodeObject(std::string_view v, ObjectMeta* m) {
  Reader r(v);
  uint32_t magic = 0;
  int64_t created = 0;
  uint8_t flags = 0;
  if (!r.num(&magic) || magic != kObjectMagic) return false;
  bool ok = r.num(&m->size) && r.num(&m->generation) && r.num(&m->blockSize) &&
            r.num(&m->validatedMs) && r.num(&created) && r.num(&flags) && r.str(&m->etag) &&
            r.str(&m->lastModified) && r.str(&m->contentType) && r.str(&m->mount) &&
            r.str(&m->path);
  m->noRanges = flags & 1;
  // A record is trusted only as far as it is consistent: these fields size
  // reads, files and loops.
  uint32_t bs = m->blockSize;
  return ok && r.left() == 0 && bs >= 4096 && bs <= kMaxBlockSize && (bs & (bs - 1)) == 0 &&
         m->size <= kMaxObjectSize && (m->size + bs - 1) / bs <= UINT32_MAX;
}

std::string encodeBlock(const BlockRecord& b) {
  Writer w;
  w.num(kBlockMagic);
  w.num(b.generation);
  w.num(b.length);
  w.num(b.blockHash);
  w.num(b.storedMs);
  w.num(b.accessMs);
  w.num(b.hits);
  w.num(b.lastRequest);
  w.num(b.prio);
  w.num(static_cast<uint32_t>(b.pages.size()));
  for (uint64_t p : b.pages) w.num(p);
  return w.take();
}

bool decodeBlock(std::string_view v, BlockRecord* b) {
  Reader r(v);
  uint32_t magic = 0, n = 0;
  if (!r.num(&magic) || magic != kBlockMagic) return false;
  if (!(r.num(&b->generation) && r.num(&b->length) && r.num(&b->blockHash) &&
        r.num(&b->storedMs) && r.num(&b->accessMs) && r.num(&b->hits) && r.num(&b->lastRequest) &&
        r.num(&b->prio) && r.num(&n)))
    return false;
  if (b->length == 0 || b->length > kMaxBlockSize) return false;
  if (n != (b->length + kPageSize - 1) / kPageSize || r.left() != static_cast<size_t>(n) * 8)
    return false;
  b->pages.resize(n);
  for (auto& p : b->pages) r.num(&p);
  return true;
}

std::string encodeLru(const LruValue& v) {
  Writer w;
  w.num(v.generation);
  w.num(v.length);
  return w.take();
}

bool decodeLru(std::string_view s, LruValue* v) {
  Reader r(s);
  return r.num(&v->generation) && r.num(&v->length) && r.left() == 0 && v->length > 0 &&
         v->length <= kMaxBlockSize;
}

// ------------------------------------------------------------------ files

std::string dataPath(const std::string& dir, const Key& k, uint64_t gen) {
  std::string hex = k.hex();
  char g[24];
  auto [p, ec] = std::to_chars(g, g + sizeof g, gen, 16);
  (void)ec;
  return dir + "/data/" + hex.substr(0, 2) + "/" + hex + "-" + std::string(g, p) + ".blk";
}

bool parseDataName(std::string_view name, Key* k, uint64_t* gen) {
  if (name.size() < 32 + 1 + 1 + 4 || !name.ends_with(".blk") || name[32] != '-') return false;
  for (int i = 0; i < 16; i++) {
    unsigned v = 0;
    auto [p, ec] = std::from_chars(name.data() + 2 * i, name.data() + 2 * i + 2, v, 16);
    if (ec != std::errc() || p != name.data() + 2 * i + 2) return false;
    k->b[i] = static_cast<uint8_t>(v);
  }
  std::string_view g = name.substr(33, name.size() - 33 - 4);
  auto [p, ec] = std::from_chars(g.data(), g.data() + g.size(), *gen, 16);
  return ec == std::errc() && p == g.data() + g.size();
}

std::string encodeFileHeader(const Key& k, uint64_t gen, uint32_t blockSize, uint64_t size) {
  std::string h(kFileHeader, '\0');
  memcpy(h.data(), kFileMagic, 8);
  memcpy(h.data() + 8, &kFileVersion, 4);
  memcpy(h.data() + 12, &blockSize, 4);
  memcpy(h.data() + 16, &gen, 8);
  memcpy(h.data() + 24, k.b, 16);
  memcpy(h.data() + 40, &size, 8);
  return h;
}

bool checkFileHeader(int fd, const Key& k, uint64_t gen) {
  char h[48];
  if (pread(fd, h, sizeof h, 0) != static_cast<ssize_t>(sizeof h)) return false;
  uint32_t ver = 0;
  uint64_t g = 0;
  memcpy(&ver, h + 8, 4);
  memcpy(&g, h + 16, 8);
  return memcmp(h, kFileMagic, 8) == 0 && ver == kFileVersion && g == gen &&
         memcmp(h + 24, k.b, 16) == 0;
}

}  // namespace slip::store
