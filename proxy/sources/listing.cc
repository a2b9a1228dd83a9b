#include "proxy/sources/listing.h"

#include <algorithm>

namespace slip::proxy {
namespace {

constexpr size_t kMaxFolders = 1024;  // folders whose listing is kept

using policy::Reason;

}  // namespace

void Source::list(const std::string&, ListCb cb) {
  cb(listFailure(Reason::CannotList,
                 "http sources have no folder listing: only paths you know can be fetched"));
}

std::string folderPath(const std::string& rest) {
  std::string out;
  size_t b = 0;
  while (b < rest.size()) {
    size_t e = rest.find('/', b);
    if (e == std::string::npos) e = rest.size();
    if (e > b) out += "/" + rest.substr(b, e - b);
    b = e + 1;
  }
  return out.empty() ? "/" : out;
}

ListingCache::ListingCache(MountDirectory& mounts, const Clock& clock) : mounts_(mounts), clock_(clock) {}

ListingCache::ListingCache(const conf::Config& cfg, std::vector<std::unique_ptr<Source>>& sources,
                           const Clock& clock)
    : owned_(std::make_unique<IndexedMounts>(cfg, sources)), mounts_(*owned_), clock_(clock) {}

void ListingCache::list(int mount, const std::string& rest, ListCb cb) {
  Key key{mount, folderPath(rest)};
  Source* src = mounts_.source(mount);
  if (!src) {
    cb(listFailure(Reason::UnknownMount, "the mount is no longer configured"));
    return;
  }
  auto it = entries_.find(key);
  if (it != entries_.end()) {
    Entry& e = it->second;
    if (e.pending) {
      e.waiters.push_back(std::move(cb));
      return;
    }
    if (e.entries && clock_.monoMs() - e.fetchedMs < src->listTtlMs()) {
      ListResult r;
      r.entries = e.entries;
      cb(r);
      return;
    }
  }
  if (entries_.size() >= kMaxFolders) evictOne();
  Entry& e = entries_[key];
  e.pending = true;
  e.gen = ++gen_;
  e.waiters.push_back(std::move(cb));
  uint64_t gen = e.gen;
  fetches_++;
  // May answer synchronously, erasing `e`: nothing below touches it. The
  // source lives until it answered (a reload may drop its mount meanwhile).
  src->list(key.second, [this, key, gen, hold = mounts_.hold(mount)](const ListResult& r) { finish(key, gen, r); });
}

void ListingCache::evictOne() {
  auto oldest = entries_.end();
  for (auto i = entries_.begin(); i != entries_.end(); ++i)
    if (!i->second.pending &&
        (oldest == entries_.end() || i->second.fetchedMs < oldest->second.fetchedMs))
      oldest = i;
  if (oldest != entries_.end()) entries_.erase(oldest);
}

// Settles the entry before any waiter runs: a waiter may list this very
// folder again.
void ListingCache::finish(const Key& key, uint64_t gen, const ListResult& r) {
  auto it = entries_.find(key);
  if (it == entries_.end() || !it->second.pending || it->second.gen != gen) return;
  Entry& e = it->second;
  std::vector<ListCb> waiters;
  waiters.swap(e.waiters);
  e.pending = false;
  ListResult out;
  out.reason = r.reason;
  const conf::Mount* m = mounts_.mount(key.first);
  Source* src = mounts_.source(key.first);
  if (r.reason != Reason::None) {
    out.detail = "mount " + (m ? m->name : std::string("?")) + ": " + r.detail;
    entries_.erase(it);
  } else {
    auto kept = std::make_shared<DirEntries>();
    if (r.entries) {
      for (const DirEntry& d : *r.entries)
        if (policy::listableName(d.name)) kept->push_back(d);
      std::stable_sort(kept->begin(), kept->end(),
                       [](const DirEntry& a, const DirEntry& b) { return a.name < b.name; });
      kept->erase(
          std::unique(kept->begin(), kept->end(),
                      [](const DirEntry& a, const DirEntry& b) { return a.name == b.name; }),
          kept->end());
    }
    out.entries = kept;
    if (src && src->listTtlMs() > 0) {
      e.entries = kept;
      e.fetchedMs = clock_.monoMs();
    } else {
      entries_.erase(it);
    }
  }
  for (auto& w : waiters) w(out);
}

void ListingCache::stat(int mount, const std::string& rest, StatCb cb) {
  std::string path = folderPath(rest);
  if (path == "/") {
    StatResult r;
    r.entry.folder = true;
    cb(r);
    return;
  }
  size_t slash = path.rfind('/');
  std::string parent = slash == 0 ? "/" : path.substr(0, slash);
  std::string name = path.substr(slash + 1);
  list(mount, parent, [cb = std::move(cb), name, parent](const ListResult& l) {
    StatResult r;
    if (l.reason != Reason::None) {
      // A file where a folder was expected on the way: the path does not exist.
      r.reason = l.reason == Reason::NotAFolder ? Reason::NotFound : l.reason;
      r.detail = l.detail;
      cb(r);
      return;
    }
    auto it = std::lower_bound(l.entries->begin(), l.entries->end(), name,
                               [](const DirEntry& d, const std::string& n) { return d.name < n; });
    if (it == l.entries->end() || it->name != name) {
      r.reason = Reason::NotFound;
      r.detail = "no '" + name + "' in " + parent;
      cb(r);
      return;
    }
    r.entry = *it;
    cb(r);
  });
}

}  // namespace slip::proxy
