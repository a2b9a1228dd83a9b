// Where should block bytes live? A measurement for store/DESIGN.md:
//  A) block bytes as LMDB values (one write txn per block, like a commit)
//  B) block bytes in a sparse data file (pwrite + fdatasync), LMDB holds only
//     the record with page checksums (what slipstream does)
// Measured: fill 256 blocks of 1 MiB, 20000 random 64 KiB reads (with
// checksum verification for B, as the gateway does), delete half the blocks
// and see what the file system gives back.
//
//   g++ -std=c++20 -O2 scripts/bench/store_bench.cc -llmdb -lxxhash -o build/store_bench
//   build/store_bench /var/tmp/store-bench
#include <fcntl.h>
#include <lmdb.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace {

constexpr size_t kBlock = 1 << 20;
constexpr size_t kPage = 64 << 10;
constexpr int kBlocks = 256;
constexpr int kReads = 20000;

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

long long allocated(const std::string& path) {
  struct stat st{};
  return stat(path.c_str(), &st) == 0 ? static_cast<long long>(st.st_blocks) * 512 : 0;
}

void check(int rc, const char* what) {
  if (rc != 0) {
    fprintf(stderr, "%s: %s\n", what, mdb_strerror(rc));
    exit(1);
  }
}

MDB_env* openEnv(const std::string& dir, MDB_dbi* dbi) {
  MDB_env* env;
  check(mdb_env_create(&env), "create");
  check(mdb_env_set_mapsize(env, size_t{4} << 30), "mapsize");
  check(mdb_env_open(env, dir.c_str(), 0, 0644), "open");
  MDB_txn* t;
  check(mdb_txn_begin(env, nullptr, 0, &t), "txn");
  check(mdb_dbi_open(t, nullptr, 0, dbi), "dbi");
  check(mdb_txn_commit(t), "commit");
  return env;
}

}  // namespace

int main(int argc, char** argv) {
  std::string base = argc > 1 ? argv[1] : "/var/tmp/store-bench";
  std::string a = base + "/lmdb-values", b = base + "/files";
  if (system(("rm -rf " + base + " && mkdir -p " + a + " " + b + "/index").c_str()) != 0) return 1;
  std::vector<char> data(kBlock);
  std::mt19937_64 rng(42);
  for (auto& c : data) c = static_cast<char>(rng());
  std::vector<char> out(2 * kPage);

  // ---- A: values in LMDB
  MDB_dbi dbiA;
  MDB_env* envA = openEnv(a, &dbiA);
  double t0 = now();
  for (uint32_t i = 0; i < kBlocks; i++) {
    MDB_txn* t;
    check(mdb_txn_begin(envA, nullptr, 0, &t), "txn");
    // The value carries its page checksums, as the index would.
    std::vector<char> val(kBlock + kBlock / kPage * 8);
    memcpy(val.data(), data.data(), kBlock);
    for (size_t p = 0; p < kBlock / kPage; p++) {
      uint64_t h = XXH3_64bits(data.data() + p * kPage, kPage);
      memcpy(val.data() + kBlock + p * 8, &h, 8);
    }
    MDB_val k{4, &i}, v{val.size(), val.data()};
    check(mdb_put(t, dbiA, &k, &v, 0), "put");
    check(mdb_txn_commit(t), "commit");
  }
  double fillA = now() - t0;
  t0 = now();
  uint64_t sink = 0;
  for (int r = 0; r < kReads; r++) {
    uint32_t i = static_cast<uint32_t>(rng() % kBlocks);
    size_t off = rng() % (kBlock - kPage);
    MDB_txn* t;
    check(mdb_txn_begin(envA, nullptr, MDB_RDONLY, &t), "rtxn");
    MDB_val k{4, &i}, v;
    check(mdb_get(t, dbiA, &k, &v), "get");
    const char* blk = static_cast<const char*>(v.mv_data);
    size_t p0 = off / kPage, p1 = (off + kPage - 1) / kPage;
    for (size_t p = p0; p <= p1; p++) {  // verified like B: LMDB does not checksum values
      uint64_t h;
      memcpy(&h, blk + kBlock + p * 8, 8);
      if (XXH3_64bits(blk + p * kPage, kPage) != h) return 2;
    }
    memcpy(out.data(), blk + off, kPage);
    mdb_txn_abort(t);
    sink += static_cast<unsigned char>(out[0]);
  }
  double readA = now() - t0;
  long long beforeA = allocated(a + "/data.mdb");
  for (uint32_t i = 0; i < kBlocks; i += 2) {
    MDB_txn* t;
    check(mdb_txn_begin(envA, nullptr, 0, &t), "txn");
    MDB_val k{4, &i};
    check(mdb_del(t, dbiA, &k, nullptr), "del");
    check(mdb_txn_commit(t), "commit");
  }
  long long afterA = allocated(a + "/data.mdb");
  mdb_env_close(envA);

  // ---- B: sparse data file + LMDB records with page checksums
  MDB_dbi dbiB;
  MDB_env* envB = openEnv(b + "/index", &dbiB);
  std::string file = b + "/object.blk";
  int fd = open(file.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0644);
  std::vector<uint64_t> hashes(kBlock / kPage);
  t0 = now();
  for (uint32_t i = 0; i < kBlocks; i++) {
    for (size_t o = 0; o < kBlock; o += 64 << 10)  // arrives in 64 KiB writes
      if (pwrite(fd, data.data() + o, 64 << 10, 4096 + static_cast<off_t>(i) * kBlock + o) < 0) return 1;
    for (size_t p = 0; p < hashes.size(); p++) hashes[p] = XXH3_64bits(data.data() + p * kPage, kPage);
    fdatasync(fd);
    MDB_txn* t;
    check(mdb_txn_begin(envB, nullptr, 0, &t), "txn");
    MDB_val k{4, &i}, v{hashes.size() * 8, hashes.data()};
    check(mdb_put(t, dbiB, &k, &v, 0), "put");
    check(mdb_txn_commit(t), "commit");
  }
  double fillB = now() - t0;
  t0 = now();
  for (int r = 0; r < kReads; r++) {
    uint32_t i = static_cast<uint32_t>(rng() % kBlocks);
    size_t off = rng() % (kBlock - kPage);
    MDB_txn* t;
    check(mdb_txn_begin(envB, nullptr, MDB_RDONLY, &t), "rtxn");
    MDB_val k{4, &i}, v;
    check(mdb_get(t, dbiB, &k, &v), "get");
    const uint64_t* h = static_cast<const uint64_t*>(v.mv_data);
    size_t p0 = off / kPage, p1 = (off + kPage - 1) / kPage;
    size_t len = (p1 - p0 + 1) * kPage;
    if (pread(fd, out.data(), len, 4096 + static_cast<off_t>(i) * kBlock + p0 * kPage) != static_cast<ssize_t>(len)) return 1;
    for (size_t p = p0; p <= p1; p++)
      if (XXH3_64bits(out.data() + (p - p0) * kPage, kPage) != h[p]) return 2;
    mdb_txn_abort(t);
    sink += static_cast<unsigned char>(out[0]);
  }
  double readB = now() - t0;
  long long beforeB = allocated(file);
  for (uint32_t i = 0; i < kBlocks; i += 2) {
    MDB_txn* t;
    check(mdb_txn_begin(envB, nullptr, 0, &t), "txn");
    MDB_val k{4, &i};
    check(mdb_del(t, dbiB, &k, nullptr), "del");
    check(mdb_txn_commit(t), "commit");
    fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 4096 + static_cast<off_t>(i) * kBlock, kBlock);
  }
  long long afterB = allocated(file);
  close(fd);
  mdb_env_close(envB);

  double mb = kBlocks * kBlock / 1048576.0;
  printf("store layout benchmark: %d blocks of 1 MiB, %d random 64 KiB reads (sink %llu)\n", kBlocks,
         kReads, static_cast<unsigned long long>(sink % 2));
  printf("| layout | fill MiB/s (commit per block) | 64 KiB reads/s | disk before delete | after deleting half |\n");
  printf("|---|---|---|---|---|\n");
  printf("| A: bytes in LMDB values (verified reads) | %.0f | %.0f | %.1f MiB | %.1f MiB |\n", mb / fillA, kReads / readA,
         beforeA / 1048576.0, afterA / 1048576.0);
  printf("| B: sparse file + LMDB records (verified reads) | %.0f | %.0f | %.1f MiB | %.1f MiB |\n",
         mb / fillB, kReads / readB, beforeB / 1048576.0, afterB / 1048576.0);
  system(("rm -rf " + base).c_str());
  return 0;
}
