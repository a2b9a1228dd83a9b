// The read-only WebDAV front: /dav/<virtual path>, the same virtual paths
// as /p/ (a mount's prefix, then the path below it). See README "WebDAV".
//
//  request ─▶ Authenticator (dav_allow, or a [user] by HTTP Basic; hashing
//             on authWorker, never on the loop)
//          ─▶ OPTIONS: DAV: 1 │ PUT DELETE MKCOL MOVE COPY PROPPATCH: 403
//             LOCK UNLOCK POST …: 405 │ PROPFIND: Engine::stat/list → 207
//             GET/HEAD of a file: deliverPath(Route::Dav) — rules, cache,
//             parallel fetch, Range, exactly as /p/ │ of a folder: an index
//
// Folders that mount prefixes make ("/" above every mount, "/media" above
// "/media/films") are collections of their own; where a mount's folder has a
// name another mount's prefix takes, the mount wins (as matchMount decides
// where its files come from).
//
// Listings and hashings answer later, when the exchange may be gone: their
// callbacks find it again through ExRef, never through a raw pointer alone.
#include <ctime>

#include "src/front.h"
#include "src/webdav.h"

namespace slip {
namespace {

using policy::Reason;
using Impl = Server::Impl;

/// An exchange found again from a callback that may outlive it (or the
/// server): null once it ended.
class ExRef {
 public:
  ExRef(Impl& s, Exchange& ex) : life_(s.life), s_(&s), ex_(&ex), id_(ex.id()) {}
  Exchange* get() const {
    if (life_.expired()) return nullptr;
    auto it = s_->active.find(ex_);
    // The address may be another exchange's by now: the id tells.
    if (it == s_->active.end() || ex_->id() != id_ || !ex_->running()) return nullptr;
    return ex_;
  }

 private:
  std::weak_ptr<bool> life_;
  Impl* s_;
  Exchange* ex_;
  uint64_t id_;
};

/// What a /dav/ path names.
struct Target {
  Reason reason = Reason::None;
  std::string detail;
  bool collection = false;
  proxy::DirEntry entry;               // what the source says (files, folders in a mount)
  int mount = -1;                      // the mount whose source lists it; -1 = mount folders only
  std::string rest;                    // below the mount's prefix
  std::vector<std::string> mountDirs;  // folders mount prefixes make below it
};
using TargetCb = std::function<void(Exchange&, Target&&)>;
using MembersCb = std::function<void(Exchange&, Reason, const std::string&, proxy::DirEntries&&)>;

/// "/dav/movies/a.mkv" → "/movies/a.mkv"; "/dav", "/dav/" → "/". `slash`:
/// the path ended in '/' (the client names a folder).
std::string virtualPath(const std::string& path, bool* slash) {
  std::string v = path.size() > 4 ? path.substr(4) : "";
  *slash = v.empty() || v.back() == '/';
  while (v.size() > 1 && v.back() == '/') v.pop_back();
  return v.empty() ? "/" : v;
}

std::string davPath(const std::string& virt) { return "/dav" + virt; }

std::string child(const std::string& folder, const std::string& name) {
  return folder == "/" ? "/" + name : folder + "/" + name;
}

/// Known to be a folder without asking a source: a mount's root, a folder
/// that mount prefixes make, the top.
bool plainCollection(const conf::Config& cfg, const std::string& virt) {
  policy::MountMatch mm = policy::matchMount(cfg.mounts, virt);
  return mm.index < 0 || mm.rest == "/" || !policy::mountFolders(cfg.mounts, virt).empty();
}

void resolve(Impl& s, Exchange& ex, const std::string& virt, TargetCb done) {
  Target t;
  const conf::Config& cfg = *ex.gen->cfg;  // the request's configuration
  t.mountDirs = policy::mountFolders(cfg.mounts, virt);
  policy::MountMatch mm = policy::matchMount(cfg.mounts, virt);
  if (mm.index < 0) {
    if (virt != "/" && t.mountDirs.empty()) t.reason = Reason::UnknownMount;
    t.collection = true;
    return done(ex, std::move(t));
  }
  t.mount = mm.index;
  t.rest = mm.rest;
  if (mm.rest == "/") {
    t.collection = true;
    return done(ex, std::move(t));
  }
  ex.setState(ExState::Resolving);
  ExRef ref(s, ex);
  s.engine.stat(ex.gen->setup, mm.index, mm.rest, [ref, t, done](const proxy::StatResult& r) mutable {
    Exchange* e = ref.get();
    if (!e) return;
    if (r.reason == Reason::None) {
      t.entry = r.entry;
      t.collection = r.entry.folder;
    } else if (!t.mountDirs.empty()) {
      t.collection = true;  // the source has no such folder; mount prefixes make one
      t.mount = -1;
    } else {
      t.reason = r.reason;
      t.detail = r.detail;
    }
    done(*e, std::move(t));
  });
}

/// The folders mount prefixes make, added to (or replacing) a listing.
void addMountDirs(proxy::DirEntries& out, const std::vector<std::string>& dirs) {
  for (const std::string& name : dirs) {
    proxy::DirEntry d;
    d.name = name;
    d.folder = true;
    auto it =
        std::lower_bound(out.begin(), out.end(), name,
                         [](const proxy::DirEntry& e, const std::string& n) { return e.name < n; });
    if (it != out.end() && it->name == name)
      *it = std::move(d);
    else
      out.insert(it, std::move(d));
  }
}

void members(Impl& s, Exchange& ex, const Target& t, MembersCb done) {
  if (t.mount < 0) {
    proxy::DirEntries out;
    addMountDirs(out, t.mountDirs);
    return done(ex, Reason::None, "", std::move(out));
  }
  ex.setState(ExState::Resolving);
  ExRef ref(s, ex);
  std::vector<std::string> dirs = t.mountDirs;
  s.engine.list(ex.gen->setup, t.mount, t.rest, [ref, dirs, done](const proxy::ListResult& r) {
    Exchange* e = ref.get();
    if (!e) return;
    proxy::DirEntries out;
    if (r.reason == Reason::None) {
      out = *r.entries;
    } else if (dirs.empty() || (r.reason != Reason::NotFound && r.reason != Reason::CannotList)) {
      return done(*e, r.reason, r.detail, {});
    }
    addMountDirs(out, dirs);
    done(*e, Reason::None, "", std::move(out));
  });
}

webdav::Resource resourceOf(const std::string& virt, const proxy::DirEntry& e, bool collection) {
  webdav::Resource r;
  r.path = davPath(virt);
  r.collection = collection;
  r.size = collection ? 0 : e.size;
  r.mtimeMs = e.mtimeMs;
  r.etag = e.etag;
  if (!collection) r.contentType = policy::mimeType(virt);
  return r;
}

void propfind(Impl& s, Exchange& ex, const std::string& virt, bool slash) {
  const std::string* d = ex.request().headers.find("Depth");
  webdav::Depth depth = webdav::parseDepth(d ? std::string_view(*d) : "", d != nullptr);
  if (depth == webdav::Depth::Infinity)
    return ex.respondError(Reason::InfiniteDepth,
                           {{"Content-Type", webdav::kXmlType}, {"Cache-Control", "no-store"}},
                           webdav::finiteDepthBody());
  if (depth == webdav::Depth::Invalid) return ex.sendError(Reason::BadDepth, "");
  webdav::ParseResult body = webdav::parsePropfind(ex.request().body);
  if (!body.ok) return ex.sendError(Reason::BadPropfind, body.error);
  webdav::Propfind req = std::move(body.request);
  resolve(s, ex, virt, [&s, virt, slash, depth, req](Exchange& ex, Target&& t) {
    if (t.reason != Reason::None) return ex.sendError(t.reason, t.detail);
    if (slash && !t.collection) return ex.sendError(Reason::NotAFolder, "");  // "a.mkv/"
    std::vector<webdav::Resource> out{resourceOf(virt, t.entry, t.collection)};
    const proxy::Headers head = {{"Content-Type", webdav::kXmlType}, {"Cache-Control", "no-store"}};
    if (!t.collection || depth == webdav::Depth::Zero)
      return ex.respond(207, head, webdav::multistatus(out, req));
    members(s, ex, t,
            [virt, req, out, head](Exchange& ex, Reason r, const std::string& detail,
                                   proxy::DirEntries&& entries) mutable {
              if (r != Reason::None) return ex.sendError(r, detail);
              out.reserve(entries.size() + 1);
              for (const proxy::DirEntry& e : entries)
                out.push_back(resourceOf(child(virt, e.name), e, e.folder));
              ex.respond(207, head, webdav::multistatus(out, req));
            });
  });
}

std::string indexDate(int64_t ms) {
  if (ms <= 0) return "-";
  time_t secs = static_cast<time_t>(ms / 1000);
  tm t{};
  gmtime_r(&secs, &t);
  char buf[32];
  strftime(buf, sizeof buf, "%d-%b-%Y %H:%M", &t);
  return buf;
}

/// An nginx-autoindex-like page: for browsers, and for Kodi's "web server
/// directory (HTTP)" source, which reads the links of such pages.
std::string indexPage(const std::string& virt, const proxy::DirEntries& entries) {
  std::string title = webdav::xmlEscape("Index of " + webdav::href(davPath(virt), true));
  std::string o = "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>" + title +
                  "</title></head>\n<body><h1>" + title + "</h1><hr><pre>";
  if (virt != "/") {
    std::string parent = virt.substr(0, virt.rfind('/'));
    o += "<a href=\"" +
         webdav::xmlEscape(webdav::href(davPath(parent.empty() ? "/" : parent), true)) +
         "\">../</a>\n";
  }
  for (const proxy::DirEntry& e : entries) {
    std::string name = e.name + (e.folder ? "/" : "");
    o += "<a href=\"" + webdav::xmlEscape(webdav::href(davPath(child(virt, e.name)), e.folder)) +
         "\">" + webdav::xmlEscape(name) + "</a> " + indexDate(e.mtimeMs) + " " +
         (e.folder ? "-" : std::to_string(e.size)) + "\n";
  }
  o += "</pre><hr></body></html>\n";
  return o;
}

void index(Impl& s, Exchange& ex, const std::string& virt) {
  resolve(s, ex, virt, [&s, virt](Exchange& ex, Target&& t) {
    if (t.reason != Reason::None) return ex.sendError(t.reason, t.detail);
    if (!t.collection) return ex.sendError(Reason::NotAFolder, "");
    members(s, ex, t,
            [virt](Exchange& ex, Reason r, const std::string& detail, proxy::DirEntries&& entries) {
              if (r != Reason::None) return ex.sendError(r, detail);
              ex.respond(200,
                         {{"Content-Type", "text/html; charset=utf-8"},
                          {"Cache-Control", "no-store"},
                          {"Content-Security-Policy", "default-src 'none'"},
                          {"X-Content-Type-Options", "nosniff"}},
                         indexPage(virt, entries));
            });
  });
}

void serve(Impl& s, Exchange& ex) {
  bool slash = false;
  std::string virt = virtualPath(ex.path(), &slash);
  switch (webdav::classifyMethod(ex.method())) {
    case webdav::Action::Options: {
      proxy::Headers h;
      for (const auto& o : webdav::optionsHeaders()) h.push_back({o.name, o.value});
      return ex.respond(200, h, "");
    }
    case webdav::Action::Forbidden:
      return ex.sendError(Reason::ReadOnly, "", webdav::kAllow);
    case webdav::Action::NotAllowed:
      return ex.sendError(Reason::DavMethodNotAllowed, "", webdav::kAllow);
    case webdav::Action::Propfind:
      return propfind(s, ex, virt, slash);
    case webdav::Action::Deliver:
      if (!ex.request().body.empty()) return ex.sendError(Reason::RequestBody, "");
      // A folder answers with an index page; anything else is a file and goes
      // through the normal delivery without asking the source first (an
      // `http` mount cannot be asked, and a player's range requests must
      // not each cost a listing).
      if (slash || plainCollection(*ex.gen->cfg, virt)) return index(s, ex, virt);
      return s.deliverPath(ex, policy::Route::Dav, virt);
  }
}

}  // namespace

void Server::Impl::addDavRoutes() {
  if (cfg().server.role == conf::Role::Edge) return;  // an edge serves signed paths only
  for (const char* pattern : {"/dav", "/dav/"}) {
    router.add({.pattern = pattern,
                .prefix = pattern[4] == '/',
                .anyMethod = true,
                .acceptsBody = true,
                .handler = [this](Exchange& ex) { davRequest(ex); }});
  }
}

void Server::Impl::davRequest(Exchange& ex) {
  ExRef ref(*this, ex);
  std::string authorization(ex.request().headers.get("Authorization"));
  authenticator.check(ex.client(), std::move(authorization), authWorker,
                      [this, ref](const auth::Result& r) {
                        Exchange* e = ref.get();
                        if (!e) return;
                        switch (r.verdict) {
                          case auth::Verdict::Trusted:
                            break;
                          case auth::Verdict::Ok:
                            e->setUser(r.user);
                            break;
                          case auth::Verdict::NoUsers:
                            return e->sendError(Reason::DavNoUsers, "");
                          case auth::Verdict::Missing:
                          case auth::Verdict::Malformed:
                          case auth::Verdict::Refused:
                            return e->sendErrorWith(Reason::AuthRequired, "",
                                                    {{"WWW-Authenticate", auth::kChallenge}});
                        }
                        serve(*this, *e);
                      });
}

}  // namespace slip
