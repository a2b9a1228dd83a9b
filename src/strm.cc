// `slipstream strm`: exports a mount as a tree of .strm files for media
// servers (Emby, Jellyfin, Kodi), mirroring its folders.
//
//   slipstream strm -c FILE --mount NAME --out DIR [--ext mkv,mp4,...] [--prune]
//                   [--sign-ttl 0|DURATION] [--base-url URL] [--sidecar-max SIZE]
//
// Each media file gets `<stem>.strm` holding one line: its gateway URL
// (/d/<mount>/<path>, percent-encoded, signed when sign_secret is set).
// Sidecars (subtitles, .nfo, posters) in folders that hold media are copied,
// fetched through the gateway at --base-url, because media servers read
// them only as files next to the .strm. Files are written to a temporary
// name and renamed, and only when their content changes, so a second run
// over an unchanged source touches nothing.
//
// DIR/.slipstream-strm.json (format "slipstream-strm", version 1) records
// every file and folder the export made, with the source's size and mtime
// and the SHA-256 of what was written. --prune removes recorded files whose
// source is gone (only if they still hold what we wrote) and the recorded
// folders that are left empty; it never touches a file it did not make, and
// it does nothing when any folder could not be listed.
#include <curl/curl.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "policy/policy.h"
#include "src/browse.h"
#include "src/commands.h"

namespace slip::cmd {
namespace {

using json = nlohmann::json;

constexpr const char* kManifestName = ".slipstream-strm.json";
constexpr const char* kManifestFormat = "slipstream-strm";
constexpr int kManifestVersion = 1;
constexpr const char* kDefaultExts =
    "mkv,mp4,m4v,avi,mov,wmv,ts,m2ts,mts,webm,flv,iso,rmvb,mpg,mpeg,vob";
constexpr const char* kSidecarExts[] = {"srt", "ass", "ssa", "sub",  "idx", "vtt",
                                        "sup", "nfo", "jpg", "jpeg", "png"};
constexpr int64_t kDefaultSidecarMax = 32LL << 20;

const std::string* flag(const Flags& f, const std::string& name) {
  for (const auto& [k, v] : f)
    if (k == name) return &v;
  return nullptr;
}

struct Options {
  int mount = -1;
  std::string out;
  std::set<std::string> exts;
  bool prune = false;
  int64_t expiry = 0;  // of the signs; 0 = never
  std::string base;
  int64_t sidecarMax = kDefaultSidecarMax;
};

struct Record {
  std::string kind;  // "strm" | "sidecar"
  uint64_t size = 0;
  int64_t mtimeMs = 0;
  std::string sha256;  // of the bytes written
};

struct Manifest {
  std::string mount;
  std::map<std::string, Record> files;  // by path below DIR
  std::set<std::string> dirs;           // folders the export created, below DIR
};

/// What this run wants on disk.
struct Planned {
  std::string rel;
  Record rec;
  std::string content;  // strm: the URL line
  std::string source;   // sidecar: the path below the mount
};

struct Counts {
  int media = 0, sidecars = 0, written = 0, unchanged = 0, copied = 0, tooBig = 0, pruned = 0,
      conflicts = 0, errors = 0;
};

std::string sha256Hex(std::string_view data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_Digest(data.data(), data.size(), md, &n, EVP_sha256(), nullptr);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < n; i++) {
    out += kHex[md[i] >> 4];
    out += kHex[md[i] & 15];
  }
  return out;
}

/// Whole file into *out; false when it cannot be read or is larger than max.
bool readFile(const std::string& path, std::string* out, uint64_t max) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || static_cast<uint64_t>(st.st_size) > max) {
    close(fd);
    return false;
  }
  out->clear();
  char buf[65536];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n > 0) out->append(buf, static_cast<size_t>(n));
    if (n == 0 || (n < 0 && errno != EINTR) || out->size() > max) break;
  }
  close(fd);
  return out->size() <= max;
}

std::string tempNameFor(const std::string& path) {
  size_t slash = path.rfind('/');
  return path.substr(0, slash + 1) + "." + path.substr(slash + 1) + ".tmp-" +
         std::to_string(getpid());
}

/// Writes `data` to a temporary file beside `path`, then renames it over
/// `path`; with `sync`, the data reach the disk before the rename.
bool writeAtomic(const std::string& path, std::string_view data, bool sync, std::string* err) {
  std::string tmp = tempNameFor(path);
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    *err = tmp + ": " + strerror(errno);
    return false;
  }
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = write(fd, data.data() + off, data.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      *err = tmp + ": " + strerror(errno);
      close(fd);
      unlink(tmp.c_str());
      return false;
    }
    off += static_cast<size_t>(n);
  }
  if ((sync && fsync(fd) != 0) || close(fd) != 0 || rename(tmp.c_str(), path.c_str()) != 0) {
    *err = path + ": " + strerror(errno);
    unlink(tmp.c_str());
    return false;
  }
  return true;
}

std::string dirOf(const std::string& rel) {
  size_t slash = rel.rfind('/');
  return slash == std::string::npos ? "" : rel.substr(0, slash);
}

/// Creates the folders of `relDir` below out, recording those it made.
bool makeDirs(const std::string& out, const std::string& relDir, Manifest& m, std::string* err) {
  size_t b = 0;
  while (b < relDir.size()) {
    size_t e = relDir.find('/', b);
    if (e == std::string::npos) e = relDir.size();
    std::string sub = relDir.substr(0, e);
    std::string full = out + "/" + sub;
    if (mkdir(full.c_str(), 0755) == 0) {
      m.dirs.insert(sub);
    } else if (errno != EEXIST) {
      *err = full + ": " + strerror(errno);
      return false;
    }
    b = e + 1;
  }
  return true;
}

// ------------------------------------------------------------------ manifest

bool loadManifest(const std::string& path, Manifest* m, std::string* err) {
  std::string text;
  if (access(path.c_str(), F_OK) != 0) return true;  // first export
  if (!readFile(path, &text, 256u << 20)) {
    *err = path + ": cannot read";
    return false;
  }
  json j = json::parse(text, nullptr, false);
  auto str = [&j](const char* k) {
    auto it = j.find(k);
    return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
  };
  if (j.is_discarded() || !j.is_object() || str("format") != kManifestFormat) {
    *err = path + ": not a slipstream strm manifest";
    return false;
  }
  auto ver = j.find("version");
  if (ver == j.end() || !ver->is_number_integer() || ver->get<int>() != kManifestVersion) {
    *err = path + ": manifest version is not " + std::to_string(kManifestVersion);
    return false;
  }
  m->mount = str("mount");
  if (auto f = j.find("files"); f != j.end() && f->is_object()) {
    for (const auto& [rel, r] : f->items()) {
      if (!r.is_object()) continue;
      auto text = [&r](const char* k) {
        auto it = r.find(k);
        return it != r.end() && it->is_string() ? it->get<std::string>() : std::string();
      };
      Record rec;
      rec.kind = text("kind");
      rec.sha256 = text("sha256");
      if (auto sz = r.find("size"); sz != r.end() && sz->is_number_unsigned())
        rec.size = sz->get<uint64_t>();
      if (auto t = r.find("mtime_ms"); t != r.end() && t->is_number_integer())
        rec.mtimeMs = t->get<int64_t>();
      m->files[rel] = rec;
    }
  }
  if (auto d = j.find("dirs"); d != j.end() && d->is_array())
    for (const auto& x : *d)
      if (x.is_string()) m->dirs.insert(x.get<std::string>());
  return true;
}

std::string manifestText(const Manifest& m) {
  json files = json::object();
  for (const auto& [rel, r] : m.files)
    files[rel] = {
        {"kind", r.kind}, {"size", r.size}, {"mtime_ms", r.mtimeMs}, {"sha256", r.sha256}};
  json doc = {{"format", kManifestFormat},
              {"version", kManifestVersion},
              {"mount", m.mount},
              {"files", files},
              {"dirs", m.dirs}};
  return doc.dump(1) + "\n";
}

// ------------------------------------------------------------------ options and plan

bool parseOptions(const conf::Config& cfg, const Flags& flags, bool prune, const Clock& clock,
                  Options* o) {
  const std::string* name = flag(flags, "mount");
  const std::string* out = flag(flags, "out");
  if (!name || !out || out->empty()) {
    fprintf(stderr, "slipstream strm: --mount NAME and --out DIR are required\n");
    return false;
  }
  for (size_t i = 0; i < cfg.mounts.size(); i++)
    if (cfg.mounts[i].name == *name) o->mount = static_cast<int>(i);
  if (o->mount < 0) {
    fprintf(stderr, "slipstream strm: no [mount %s] in %s\n", name->c_str(), cfg.file.c_str());
    return false;
  }
  o->out = *out;
  while (o->out.size() > 1 && o->out.back() == '/') o->out.pop_back();
  const std::string* ext = flag(flags, "ext");
  std::string list = ext ? *ext : kDefaultExts;
  for (size_t b = 0; b < list.size();) {
    size_t e = list.find(',', b);
    if (e == std::string::npos) e = list.size();
    std::string x = list.substr(b, e - b);
    while (!x.empty() && (x[0] == '.' || x[0] == ' ')) x.erase(0, 1);
    while (!x.empty() && x.back() == ' ') x.pop_back();
    for (auto& c : x) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (!x.empty()) o->exts.insert(x);
    b = e + 1;
  }
  if (o->exts.empty()) {
    fprintf(stderr, "slipstream strm: --ext names no extension\n");
    return false;
  }
  o->prune = prune;
  if (const std::string* t = flag(flags, "sign-ttl")) {
    auto d = conf::parseDuration(*t);
    if (!d || *d < 0) {
      fprintf(stderr, "slipstream strm: bad --sign-ttl %s (0 = never expires, or 90d, 4h, ...)\n",
              t->c_str());
      return false;
    }
    o->expiry = *d > 0 ? clock.wallSeconds() + (*d + 999) / 1000 : 0;
  }
  const std::string* base = flag(flags, "base-url");
  o->base = base ? *base : defaultBaseUrl(cfg);
  if (!o->base.starts_with("http://") && !o->base.starts_with("https://")) {
    fprintf(stderr, "slipstream strm: --base-url must be an http(s) URL such as http://nas:8690\n");
    return false;
  }
  if (const std::string* s = flag(flags, "sidecar-max")) {
    auto n = conf::parseSize(*s);
    if (!n) {
      fprintf(stderr, "slipstream strm: bad --sidecar-max %s\n", s->c_str());
      return false;
    }
    o->sidecarMax = *n;
  }
  return true;
}

/// The decoded virtual path of a file below the mount ("/films/a b.mkv").
std::string virtualPath(const conf::Mount& m, const std::string& rel) {
  return (m.prefix == "/" ? "" : m.prefix) + "/" + rel;
}

std::string stemOf(const std::string& name) {
  size_t dot = name.rfind('.');
  return dot == std::string::npos || dot == 0 ? name : name.substr(0, dot);
}

/// The files this run wants: a .strm per media file (`<stem>.strm`, or
/// `<name>.strm` when two media files of a folder share a stem) and the
/// sidecars of every folder with media in it or below it.
std::vector<Planned> plan(const conf::Config& cfg, const Options& o, const browse::WalkResult& w,
                          Counts& n) {
  const conf::Mount& m = cfg.mounts[o.mount];
  std::map<std::pair<std::string, std::string>, int> stems;  // (folder, stem) → media files
  std::set<std::string> mediaDirs;
  for (const auto& f : w.files) {
    if (!o.exts.count(policy::extensionOf(f.path))) continue;
    stems[{dirOf(f.path), stemOf(std::string(policy::baseName(f.path)))}]++;
    for (std::string d = dirOf(f.path);; d = dirOf(d)) {
      mediaDirs.insert(d);
      if (d.empty()) break;
    }
  }
  std::vector<Planned> out;
  for (const auto& f : w.files) {
    std::string ext = policy::extensionOf(f.path);
    std::string dir = dirOf(f.path), name(policy::baseName(f.path));
    Planned p;
    p.rec.size = f.size;
    p.rec.mtimeMs = f.mtimeMs;
    if (o.exts.count(ext)) {
      n.media++;
      bool shared = stems[{dir, stemOf(name)}] > 1;
      p.rel = (dir.empty() ? "" : dir + "/") + (shared ? name : stemOf(name)) + ".strm";
      p.rec.kind = "strm";
      p.content = gatewayUrl(cfg, o.base, virtualPath(m, f.path), o.expiry) + "\n";
      p.rec.sha256 = sha256Hex(p.content);
    } else if (mediaDirs.count(dir) && std::find(std::begin(kSidecarExts), std::end(kSidecarExts),
                                                 ext) != std::end(kSidecarExts)) {
      n.sidecars++;
      p.rel = f.path;
      p.rec.kind = "sidecar";
      p.source = f.path;
    } else {
      continue;
    }
    out.push_back(std::move(p));
  }
  return out;
}

// ------------------------------------------------------------------ writing

/// Where a planned file stands against what is on disk.
enum class OnDisk { Missing, Same, Ours, Foreign };

OnDisk judge(const std::string& path, const std::string& rel, const Manifest& m,
             const std::string& wantSha, uint64_t maxRead) {
  std::string have;
  if (access(path.c_str(), F_OK) != 0) return OnDisk::Missing;
  bool readable = readFile(path, &have, maxRead);
  if (readable && sha256Hex(have) == wantSha) return OnDisk::Same;
  auto it = m.files.find(rel);
  // Ours only while it still holds what we wrote: a file the user edited is theirs.
  if (it != m.files.end() && readable && sha256Hex(have) == it->second.sha256) return OnDisk::Ours;
  return OnDisk::Foreign;
}

/// Puts `data` at p.rel unless the same bytes are there already or the file
/// there is not ours; counts in *written what it wrote.
void place(const Options& o, const Planned& p, std::string_view data, uint64_t maxRead, Manifest& m,
           Counts& n, int* written) {
  std::string path = o.out + "/" + p.rel, err;
  OnDisk d = judge(path, p.rel, m, p.rec.sha256, maxRead);
  if (d == OnDisk::Same) {
    n.unchanged++;
    m.files[p.rel] = p.rec;  // adopts an identical file
    return;
  }
  if (d == OnDisk::Foreign) {
    n.conflicts++;
    printf("! %s: exists and was not made by slipstream strm (left alone)\n", p.rel.c_str());
    return;
  }
  if (!makeDirs(o.out, dirOf(p.rel), m, &err) || !writeAtomic(path, data, false, &err)) {
    n.errors++;
    printf("! %s: %s\n", p.rel.c_str(), err.c_str());
    return;
  }
  (*written)++;
  m.files[p.rel] = p.rec;
  printf("%s %s\n", d == OnDisk::Missing ? "+" : "~", p.rel.c_str());
}

void writeStrm(const Options& o, const Planned& p, Manifest& m, Counts& n) {
  place(o, p, p.content, 1 << 20, m, n, &n.written);
}

size_t onBody(char* p, size_t size, size_t nmemb, void* ud) {
  auto* s = static_cast<std::pair<std::string*, size_t>*>(ud);
  if (s->first->size() + size * nmemb > s->second) return 0;  // larger than announced: abort
  s->first->append(p, size * nmemb);
  return size * nmemb;
}

/// GET `url` into *body; the body must be exactly `size` bytes.
bool fetch(const std::string& url, uint64_t size, std::string* body, std::string* err) {
  CURL* c = curl_easy_init();
  if (!c) {
    *err = "curl_easy_init failed";
    return false;
  }
  body->clear();
  std::pair<std::string*, size_t> sink{body, static_cast<size_t>(size)};
  char errbuf[CURL_ERROR_SIZE] = {};
  curl_easy_setopt(c, CURLOPT_URL, url.c_str());
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, onBody);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &sink);
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 10L);
  curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, 60L);
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(c, CURLOPT_USERAGENT, "slipstream-strm");
  CURLcode rc = curl_easy_perform(c);
  long status = 0;
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_cleanup(c);
  if (rc != CURLE_OK) {
    *err = errbuf[0] ? errbuf : curl_easy_strerror(rc);
    return false;
  }
  if (status != 200) {
    *err = "the gateway answered HTTP " + std::to_string(status);
    return false;
  }
  if (body->size() != size) {
    *err =
        "got " + std::to_string(body->size()) + " bytes, the listing says " + std::to_string(size);
    return false;
  }
  return true;
}

void copySidecar(const conf::Config& cfg, const Options& o, Planned p, Manifest& m, Counts& n) {
  std::string path = o.out + "/" + p.rel, err, body;
  auto known = m.files.find(p.rel);
  // Unchanged at the source and on disk: nothing to fetch.
  if (known != m.files.end() && known->second.size == p.rec.size &&
      known->second.mtimeMs == p.rec.mtimeMs &&
      judge(path, p.rel, m, known->second.sha256, p.rec.size) == OnDisk::Same) {
    n.unchanged++;
    return;
  }
  if (static_cast<int64_t>(p.rec.size) > o.sidecarMax) {
    n.tooBig++;
    printf("! %s: %llu bytes, more than --sidecar-max (not copied)\n", p.rel.c_str(),
           static_cast<unsigned long long>(p.rec.size));
    return;
  }
  std::string url = gatewayUrl(cfg, o.base, virtualPath(cfg.mounts[o.mount], p.source), o.expiry);
  if (!fetch(url, p.rec.size, &body, &err)) {
    n.errors++;
    printf("! %s: %s\n", p.rel.c_str(), err.c_str());
    return;
  }
  p.rec.sha256 = sha256Hex(body);
  place(o, p, body, static_cast<uint64_t>(o.sidecarMax), m, n, &n.copied);
}

/// Removes recorded files that this run no longer wants (if they still hold
/// what we wrote), then recorded folders left empty, deepest first.
void prune(const Options& o, const std::vector<Planned>& want, Manifest& m, Counts& n) {
  std::set<std::string> wanted, neededDirs;
  for (const Planned& p : want) {
    wanted.insert(p.rel);
    for (std::string d = dirOf(p.rel); !d.empty(); d = dirOf(d)) neededDirs.insert(d);
  }
  for (auto it = m.files.begin(); it != m.files.end();) {
    if (wanted.count(it->first)) {
      ++it;
      continue;
    }
    std::string path = o.out + "/" + it->first;
    OnDisk d = judge(path, it->first, m, it->second.sha256, 64u << 20);
    if (d == OnDisk::Same) {
      if (unlink(path.c_str()) == 0) {
        n.pruned++;
        printf("- %s\n", it->first.c_str());
      } else {
        n.errors++;
        printf("! %s: %s\n", it->first.c_str(), strerror(errno));
        ++it;
        continue;
      }
    } else if (d != OnDisk::Missing) {
      printf("! %s: changed since it was exported (left alone, no longer tracked)\n",
             it->first.c_str());
    }
    it = m.files.erase(it);
  }
  std::vector<std::string> dirs(m.dirs.begin(), m.dirs.end());
  std::sort(dirs.begin(), dirs.end(), [](const std::string& a, const std::string& b) {
    return std::count(a.begin(), a.end(), '/') > std::count(b.begin(), b.end(), '/');
  });
  for (const std::string& d : dirs) {
    if (neededDirs.count(d)) continue;
    std::string path = o.out + "/" + d;
    int rc = rmdir(path.c_str());
    if (rc == 0) printf("- %s/\n", d.c_str());
    if (rc == 0 || errno == ENOENT) m.dirs.erase(d);  // else: it holds files we did not make
  }
}

}  // namespace

int strm(const conf::Config& cfg, const Flags& flags, bool pruneFlag, const Clock& clock) {
  Options o;
  if (!parseOptions(cfg, flags, pruneFlag, clock, &o)) return 2;
  if (cfg.mounts[o.mount].source == conf::SourceType::Http) {
    fprintf(stderr, "slipstream strm: mount %s is an http source, which cannot list folders\n",
            cfg.mounts[o.mount].name.c_str());
    return 2;
  }
  if (mkdir(o.out.c_str(), 0755) != 0 && errno != EEXIST) {
    fprintf(stderr, "slipstream strm: %s: %s\n", o.out.c_str(), strerror(errno));
    return 1;
  }
  Manifest man;
  std::string err, manifestPath = o.out + "/" + kManifestName;
  if (!loadManifest(manifestPath, &man, &err)) {
    fprintf(stderr, "slipstream strm: %s\n", err.c_str());
    return 1;
  }
  const std::string& name = cfg.mounts[o.mount].name;
  if (!man.mount.empty() && man.mount != name) {
    fprintf(stderr, "slipstream strm: %s holds the export of mount %s: use another --out for %s\n",
            o.out.c_str(), man.mount.c_str(), name.c_str());
    return 2;
  }
  man.mount = name;
  std::string before = manifestText(man);

  browse::WalkResult w;
  {
    browse::EngineLoop loop(cfg);
    if (!loop.start(&err)) {
      fprintf(stderr, "slipstream strm: %s\n", err.c_str());
      return 1;
    }
    w = browse::walk(loop, o.mount, "");
  }
  for (const std::string& e : w.errors) printf("! cannot list %s\n", e.c_str());
  Counts n;
  n.errors = static_cast<int>(w.errors.size());
  std::vector<Planned> want = plan(cfg, o, w, n);
  for (const Planned& p : want) {
    if (p.rec.kind == "strm")
      writeStrm(o, p, man, n);
    else
      copySidecar(cfg, o, p, man, n);
  }
  if (o.prune && !w.errors.empty())
    printf("! prune skipped: %zu folder(s) could not be listed\n", w.errors.size());
  else if (o.prune)
    prune(o, want, man, n);
  if (manifestText(man) != before && !writeAtomic(manifestPath, manifestText(man), true, &err)) {
    fprintf(stderr, "slipstream strm: %s\n", err.c_str());
    n.errors++;
  }
  printf(
      "strm: mount %s: %d media files, %d sidecars; %d strm written, %d sidecars copied, %d "
      "unchanged, "
      "%d too big, %d pruned, %d conflicts, %d errors\n",
      name.c_str(), n.media, n.sidecars, n.written, n.copied, n.unchanged, n.tooBig, n.pruned,
      n.conflicts, n.errors);
  return n.errors ? 1 : 0;
}

}  // namespace slip::cmd
