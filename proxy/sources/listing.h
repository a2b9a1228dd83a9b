// Folder listings (SPEC §4): the cache in front of every source's list(),
// the `local` source (directory reads beneath the mount's root, on a worker
// thread), and AList's paginated /api/fs/list.
//
// The cache is keyed by (mount, folder). A listing is fetched once however
// many callers want it at the same time (they wait for the one fetch), kept
// the source's listTtlMs(), and handed out as an immutable shared snapshot,
// so a caller never holds anything that a refresh or an eviction frees.
// Every fetch carries a generation: the answer of a fetch that was
// superseded is dropped. Failures are not cached.
#pragma once

#include <sys/stat.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "conf/clock.h"
#include "conf/loop.h"
#include "conf/conf.h"
#include "conf/worker.h"
#include "proxy/proxy.h"
#include "proxy/sources/source.h"

namespace slip::proxy {

/// Most entries one folder may have; a bigger one is an error, not a silent cut.
inline constexpr size_t kMaxListEntries = 100'000;

inline ListResult listFailure(policy::Reason r, std::string detail) {
  ListResult out;
  out.reason = r;
  out.detail = std::move(detail);
  return out;
}

class ListingCache {
 public:
  /// Mounts by id (see MountDirectory); not owned.
  ListingCache(MountDirectory& mounts, const Clock& clock);
  /// `sources` is indexed like cfg.mounts; neither is owned.
  ListingCache(const conf::Config& cfg, std::vector<std::unique_ptr<Source>>& sources,
               const Clock& clock);

  /// See Engine::list. Entries are filtered (policy::listableName), sorted
  /// by name and unique.
  void list(int mount, const std::string& rest, ListCb cb);
  /// See Engine::stat.
  void stat(int mount, const std::string& rest, StatCb cb);

  /// Listings asked of the sources (not served from the cache).
  uint64_t fetches() const { return fetches_; }

 private:
  struct Entry {
    bool pending = false;
    uint64_t gen = 0;
    std::shared_ptr<const DirEntries> entries;  // the last good listing, or null
    int64_t fetchedMs = 0;                      // monotonic, of `entries`
    std::vector<ListCb> waiters;
  };
  using Key = std::pair<int, std::string>;
  void finish(const Key& key, uint64_t gen, const ListResult& r);
  void evictOne();

  std::unique_ptr<IndexedMounts> owned_;  // the Config-and-sources constructor's
  MountDirectory& mounts_;
  const Clock& clock_;
  std::map<Key, Entry> entries_;
  uint64_t gen_ = 0;
  uint64_t fetches_ = 0;
};

/// "/a/b" for "a/b/", "/a/b", "//a/b/"; "/" for "" and "/". The form the
/// cache keys folders by and sources are asked for.
std::string folderPath(const std::string& rest);

// ------------------------------------------------------------------ local

/// Opens `rest` below the directory `rootFd` with open(2) `flags`; -errno on
/// failure (-EXDEV when the path would leave the directory). Absolute and
/// relative symlinks are followed only while they stay inside.
int openBeneath(int rootFd, const std::string& rest, int flags);
/// The ETag a local file is served with: "<mtime hex>-<size hex>".
std::string localEtag(const struct stat& st);
/// Whether a local name is left out of listings: dot files and the NAS
/// housekeeping folders (@eaDir, #recycle, #snapshot, @Recycle, lost+found).
bool hiddenLocalName(const std::string& name);
/// Reads the folder `rest` below `rootFd` (blocking: run it on a Worker).
ListResult readLocalFolder(int rootFd, const std::string& rest);
/// The source of a `local` mount: lists through `worker`; has no links.
std::unique_ptr<Source> makeLocalSource(const conf::Mount& m, int rootFd, Worker& worker);

// ------------------------------------------------------------------ alist

/// Entries per /api/fs/list page asked for.
inline constexpr int kAlistPerPage = 100;

/// One /api/fs/list reply: HTTP 200 with {"code", "message", "data":
/// {"content": [...] | null, "total": N}}; code != 200 is an error (404
/// NotFound for "object not found", NotAFolder for "not a folder").
struct AlistListPage {
  policy::Reason reason = policy::Reason::None;
  std::string detail;
  DirEntries entries;
  int64_t total = 0;
};
AlistListPage parseAlistListPage(const std::string& body);

/// The listings of one alist mount in flight. Owned by its source: calls
/// still running when it goes are cancelled (their callbacks never run).
class AlistLister {
 public:
  AlistLister(const conf::Mount& m, CurlMulti& multi, const conf::Server& s);
  ~AlistLister();
  AlistLister(const AlistLister&) = delete;
  AlistLister& operator=(const AlistLister&) = delete;
  /// Lists `path` (on the AList side, root already applied) with every page.
  void list(const std::string& path, ListCb cb);

 private:
  struct Call;
  const conf::Mount& mount_;
  CurlMulti& multi_;
  const conf::Server& server_;
  std::map<Call*, std::unique_ptr<Call>> calls_;
  Graveyard graveyard_;  // finished calls, freed from the loop
};

}  // namespace slip::proxy
