// Private to store/: the LMDB index (RAII owners, record formats) and the
// data-file layout. Every structure on disk carries a magic and a version.
#pragma once

#include <lmdb.h>

#include <cstdint>
#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "store/store.h"

namespace slip::store {

inline constexpr uint32_t kIndexVersion = 1;
inline constexpr char kIndexMagic[8] = {'S', 'L', 'P', 'I', 'D', 'X', '1', '\0'};
inline constexpr uint32_t kObjectMagic = 0x314a424f;  // "OBJ1"
inline constexpr uint32_t kBlockMagic = 0x314b4c42;   // "BLK1"
inline constexpr uint32_t kFileVersion = 1;
inline constexpr char kFileMagic[8] = {'S', 'L', 'P', 'B', 'L', 'K', '1', '\0'};
inline constexpr uint64_t kFileHeader = 4096;  // data starts here: page-aligned blocks
inline constexpr size_t kMapSize = size_t{1} << 34;  // virtual; the file grows as needed

/// Hash of a page as stored in block records.
uint64_t pageHash(const void* data, size_t n);

// ------------------------------------------------------------------ RAII

class Env {
 public:
  Env() = default;
  ~Env() { close(); }
  Env(const Env&) = delete;
  Env& operator=(const Env&) = delete;
  /// Opens the index in `dir` (created by the caller); readOnly for the CLI.
  /// *foreign (if given) is set when it failed because the index is of
  /// another format version.
  bool open(const std::string& dir, bool readOnly, std::string* err, bool* foreign = nullptr);
  void close();
  MDB_env* get() const { return env_; }
  MDB_dbi meta = 0, objects = 0, blocks = 0, lru = 0;

 private:
  MDB_env* env_ = nullptr;
};

/// A transaction that aborts unless committed.
class Txn {
 public:
  Txn(MDB_env* env, bool readOnly) {
    rc_ = mdb_txn_begin(env, nullptr, readOnly ? MDB_RDONLY : 0, &txn_);
    if (rc_ != 0) txn_ = nullptr;
  }
  ~Txn() {
    if (txn_) mdb_txn_abort(txn_);
  }
  Txn(const Txn&) = delete;
  Txn& operator=(const Txn&) = delete;
  bool ok() const { return txn_ != nullptr; }
  int error() const { return rc_; }
  MDB_txn* get() const { return txn_; }
  int commit() {
    int rc = mdb_txn_commit(txn_);
    txn_ = nullptr;
    return rc;
  }

 private:
  MDB_txn* txn_ = nullptr;
  int rc_ = 0;
};

class Cursor {
 public:
  Cursor(MDB_txn* t, MDB_dbi d) { mdb_cursor_open(t, d, &c_); }
  ~Cursor() {
    if (c_) mdb_cursor_close(c_);
  }
  Cursor(const Cursor&) = delete;
  Cursor& operator=(const Cursor&) = delete;
  MDB_cursor* get() const { return c_; }

 private:
  MDB_cursor* c_ = nullptr;
};

/// Calls fn(cursor, key, value) for each entry from the first (or from the
/// first key ≥ *from); fn returns false to stop. fn may delete the current
/// entry with mdb_cursor_del.
template <typename Fn>
void forEach(MDB_txn* t, MDB_dbi d, Fn fn, const MDB_val* from = nullptr) {
  Cursor c(t, d);
  MDB_val k{}, v{};
  if (from) k = *from;
  for (int rc = mdb_cursor_get(c.get(), &k, &v, from ? MDB_SET_RANGE : MDB_FIRST); rc == 0;
       rc = mdb_cursor_get(c.get(), &k, &v, MDB_NEXT))
    if (!fn(c.get(), k, v)) break;
}

// ------------------------------------------------------------------ records

/// Block key: object key (16) + block index (big-endian, so a cursor walks an
/// object's blocks in order).
struct BlockKey {
  uint8_t b[20];
  BlockKey(const Key& k, uint32_t idx);
  MDB_val val() { return {sizeof b, b}; }
  /// False when `v` is not a block key (wrong length).
  static bool parse(const MDB_val& v, Key* k, uint32_t* idx);
  // Callers have checked the length (20).
  static uint32_t index(const MDB_val& v);
  static Key object(const MDB_val& v);
};

/// LRU key: eviction priority (big-endian: smallest first) + block key.
struct LruKey {
  uint8_t b[28];
  LruKey(uint64_t prio, const Key& k, uint32_t idx);
  MDB_val val() { return {sizeof b, b}; }
  /// False when `v` is not an LRU key (wrong length).
  static bool parse(const MDB_val& v, uint64_t* prio, Key* k, uint32_t* idx);
  // Callers have checked the length (28).
  static uint64_t prio(const MDB_val& v);
  static Key object(const MDB_val& v);
  static uint32_t index(const MDB_val& v);
};

/// Value of an LRU entry: what eviction needs without another lookup.
struct LruValue {
  uint64_t generation = 0;
  uint32_t length = 0;
};

struct BlockRecord {
  uint64_t generation = 0;
  uint32_t length = 0;
  uint64_t blockHash = 0;    // XXH3-64 over the page hashes
  int64_t storedMs = 0;
  int64_t accessMs = 0;
  uint32_t hits = 0;         // distinct requests that read it
  uint64_t lastRequest = 0;
  uint64_t prio = 0;         // its current LRU key
  std::vector<uint64_t> pages;
};

/// Checks pages [p0, p1] of a block against its record. `bytes` holds the
/// block from the start of page p0 through the end of page p1 (or of the
/// block). Returns the first page whose checksum differs; nullopt when all
/// match. The one page check of the gateway and `cache verify`.
std::optional<uint32_t> firstBadPage(const BlockRecord& r, const char* bytes, uint32_t p0, uint32_t p1);

std::string encodeObject(const ObjectMeta& m, int64_t createdMs);
/// Every object record, by key. With `dropBad`, unreadable records are
/// deleted (the transaction must be a write transaction).
std::map<Key, ObjectMeta> readObjects(MDB_txn* t, MDB_dbi objects, bool dropBad);
bool decodeObject(std::string_view v, ObjectMeta* m);
std::string encodeBlock(const BlockRecord& r);
bool decodeBlock(std::string_view v, BlockRecord* r);
std::string encodeLru(const LruValue& v);
bool decodeLru(std::string_view s, LruValue* v);

inline std::string_view view(const MDB_val& v) {
  return {static_cast<const char*>(v.mv_data), v.mv_size};
}

/// The listing behind Store::listObjects (store/query.cc).
ObjectListing queryObjects(MDB_txn* t, const Env& env, const ObjectFilter& f);
/// Fills o->present, presentBlocks and presentBytes from the listed blocks
/// of o->meta's version of `k` (store/query.cc).
void queryPresent(MDB_txn* t, const Env& env, const Key& k, StoredObject* o);
/// Checks the index under `dir` in a child process (see store/guard.cc):
/// true when it is readable (or absent); false with *err = "index corrupt:
/// <what>, move the cache directory away or run `slipstream cache reset`"
/// when the walk crashed, looped or met an unreadable page. With `writes`
/// (the caller will write: the gateway, `verify --repair`) the child also
/// rehearses opening's reconciliation and rewrites every page, in
/// transactions it aborts. *badRecords counts records our decoders reject
/// (opening drops them).
/// `clock` measures the child's time limit.
bool checkIndex(const std::string& dir, bool writes, const Clock& clock, std::string* err,
                uint64_t* badRecords = nullptr);

/// What opening found and fixed (store/reconcile.cc).
struct Reconciled {
  uint64_t nextGen = 1;       // the next generation to hand out
  uint64_t used = 0;          // listed block bytes
  uint64_t objects = 0;
  uint64_t blocks = 0;
  uint64_t truncated = 0;     // listed blocks past the end of their data file: unlisted
  uint64_t inconsistent = 0;  // block records that disagree with their object: deleted
};
/// Brings data files and index into agreement after a crash, an unclean stop
/// or damage: unlisted bytes are punched out, orphan files and records
/// removed, blocks the data files no longer hold unlisted. With dryRun the
/// same index operations run in a transaction that is aborted and no file is
/// touched (the index check's child rehearses what opening will write).
bool reconcile(const Env& env, const std::string& dir, Reconciled* out, std::string* err,
               bool dryRun = false);

/// Largest block size a record may claim (the configuration allows 64M).
inline constexpr uint32_t kMaxBlockSize = 64u << 20;
/// Largest object size a record may claim (2^50 bytes, a petabyte).
inline constexpr uint64_t kMaxObjectSize = uint64_t{1} << 50;

/// Data file of one object version: DIR/data/xx/<key>-<gen>.blk
std::string dataPath(const std::string& dir, const Key& k, uint64_t gen);
/// Parses a data file name back; false for foreign files.
bool parseDataName(std::string_view name, Key* k, uint64_t* gen);
/// The 4 KiB header at the start of a data file.
std::string encodeFileHeader(const Key& k, uint64_t gen, uint32_t blockSize, uint64_t size);
bool checkFileHeader(int fd, const Key& k, uint64_t gen);
inline uint64_t blockOffset(const ObjectMeta& m, uint32_t idx) {
  return kFileHeader + static_cast<uint64_t>(idx) * m.blockSize;
}

}  // namespace slip::store
