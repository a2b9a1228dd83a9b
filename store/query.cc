// Read-only queries over the index for the admin API: which objects are
// cached, and which of their blocks are present. One read transaction; the
// writer is never blocked (LMDB readers see a snapshot).
#include <algorithm>
#include <tuple>

#include "store/index.h"

namespace slip::store {

ObjectListing queryObjects(MDB_txn* t, const Env& env, const ObjectFilter& f) {
  ObjectListing out;
  std::vector<std::pair<Key, ObjectMeta>> hits;
  for (auto& [key, meta] : readObjects(t, env.objects, false)) {
    if (!f.mount.empty() && meta.mount != f.mount) continue;
    if (!meta.path.starts_with(f.prefix)) continue;
    hits.emplace_back(key, std::move(meta));
  }
  auto order = [](const auto& a, const auto& b) {
    return std::tie(a.second.mount, a.second.path) < std::tie(b.second.mount, b.second.path);
  };
  std::sort(hits.begin(), hits.end(), order);
  auto first = hits.begin();
  if (!f.after.empty()) {
    // "mount:path" of the last object already listed; mount names have no ':'.
    size_t colon = f.after.find(':');
    std::string mount = f.after.substr(0, colon);
    std::string path = colon == std::string::npos ? "" : f.after.substr(colon + 1);
    first = std::upper_bound(hits.begin(), hits.end(), std::tie(mount, path),
                             [](const auto& m, const auto& h) {
                               return m < std::tie(h.second.mount, h.second.path);
                             });
  }
  size_t limit = std::max<size_t>(1, f.limit);
  for (auto it = first; it != hits.end() && out.objects.size() < limit; ++it) {
    StoredObject o;
    o.meta = it->second;
    queryPresent(t, env, it->first, &o);
    out.objects.push_back(std::move(o));
  }
  if (!out.objects.empty() && out.objects.size() == limit &&
      first + static_cast<std::ptrdiff_t>(limit) != hits.end())
    out.next = out.objects.back().meta.mount + ":" + out.objects.back().meta.path;
  return out;
}

void queryPresent(MDB_txn* t, const Env& env, const Key& key, StoredObject* o) {
  o->present.assign(o->meta.blockCount(), false);
  o->presentBlocks = 0;
  o->presentBytes = 0;
  BlockKey from(key, 0);
  MDB_val fromVal = from.val();
  forEach(
      t, env.blocks,
      [&](MDB_cursor*, const MDB_val& k, const MDB_val& v) {
        if (BlockKey::object(k) != key) return false;
        BlockRecord r;
        uint32_t idx = BlockKey::index(k);
        if (decodeBlock(view(v), &r) && r.generation == o->meta.generation &&
            idx < o->present.size() && !o->present[idx]) {
          o->present[idx] = true;
          o->presentBlocks++;
          o->presentBytes += r.length;
        }
        return true;
      },
      &fromVal);
}

}  // namespace slip::store
