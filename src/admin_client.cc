#include "src/admin_client.h"

#include <curl/curl.h>
#include <limits.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <thread>

#include "policy/policy.h"

namespace slip::cmd {
namespace {

using json = nlohmann::json;

const std::string* flag(const Flags& f, const std::string& name) {
  for (const auto& [k, v] : f)
    if (k == name) return &v;
  return nullptr;
}

struct CurlFree {
  void operator()(CURL* c) const { curl_easy_cleanup(c); }
  void operator()(curl_slist* l) const { curl_slist_free_all(l); }
};

struct Reply {
  long status = 0;
  std::string body;
  std::string failure;  // transport error; empty when an HTTP answer came
};

size_t collect(char* p, size_t size, size_t n, void* out) {
  static_cast<std::string*>(out)->append(p, size * n);
  return size * n;
}

// One API call. POST and DELETE carry the JSON type and the custom header
// the API's cross-site guard asks for.
Reply call(const conf::Config& cfg, const std::string& base, const std::string& method,
           const std::string& route, const std::string& body = "") {
  Reply r;
  std::unique_ptr<CURL, CurlFree> c(curl_easy_init());
  if (!c) {
    r.failure = "curl_easy_init failed";
    return r;
  }
  std::unique_ptr<curl_slist, CurlFree> headers;
  auto add = [&headers](const std::string& h) {
    headers.reset(curl_slist_append(headers.release(), h.c_str()));
  };
  if (!cfg.server.adminToken.empty()) add("Authorization: Bearer " + cfg.server.adminToken);
  if (method != "GET") {
    add("Content-Type: application/json");
    add("X-Slipstream: 1");
  }
  std::string url = base + "/-/api/v1/" + route;
  curl_easy_setopt(c.get(), CURLOPT_URL, url.c_str());
  curl_easy_setopt(c.get(), CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(c.get(), CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c.get(), CURLOPT_CONNECTTIMEOUT_MS, 5000L);
  curl_easy_setopt(c.get(), CURLOPT_TIMEOUT_MS, 30000L);
  curl_easy_setopt(c.get(), CURLOPT_HTTPHEADER, headers.get());
  curl_easy_setopt(c.get(), CURLOPT_WRITEFUNCTION, collect);
  curl_easy_setopt(c.get(), CURLOPT_WRITEDATA, &r.body);
  if (method == "POST") {
    curl_easy_setopt(c.get(), CURLOPT_POSTFIELDS, body.c_str());
    curl_easy_setopt(c.get(), CURLOPT_POSTFIELDSIZE, static_cast<long>(body.size()));
  } else if (method != "GET") {
    curl_easy_setopt(c.get(), CURLOPT_CUSTOMREQUEST, method.c_str());
  }
  CURLcode rc = curl_easy_perform(c.get());
  if (rc != CURLE_OK) {
    r.failure = std::string(curl_easy_strerror(rc)) + " (" + url + ")";
    return r;
  }
  curl_easy_getinfo(c.get(), CURLINFO_RESPONSE_CODE, &r.status);
  return r;
}

// "404 unknown_mount: no mount serves /x" from an API error body.
std::string describe(const Reply& r) {
  if (!r.failure.empty()) return "cannot reach the gateway: " + r.failure;
  json j = json::parse(r.body, nullptr, false);
  if (!j.is_discarded() && j.contains("error") && j["error"].is_object()) {
    const json& e = j["error"];
    return std::to_string(r.status) + " " + e.value("reason", std::string("?")) + ": " +
           e.value("detail", std::string());
  }
  return "HTTP " + std::to_string(r.status);
}

// File names are untrusted: never let their bytes drive the terminal.
std::string printable(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
  return out;
}

std::string human(double n) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (n >= 1024 && u < 4) {
    n /= 1024;
    u++;
  }
  char buf[32];
  snprintf(buf, sizeof buf, u ? "%.1f %s" : "%.0f %s", n, units[u]);
  return buf;
}

std::string speed(double bps) {
  const char* units[] = {"B/s", "KB/s", "MB/s", "GB/s"};
  int u = 0;
  while (bps >= 1000 && u < 3) {
    bps /= 1000;
    u++;
  }
  char buf[32];
  snprintf(buf, sizeof buf, u && bps < 100 ? "%.1f %s" : "%.0f %s", bps, units[u]);
  return buf;
}

std::string ago(int64_t seconds) {
  if (seconds < 0) seconds = 0;
  int64_t d = seconds / 86400, h = seconds % 86400 / 3600, m = seconds % 3600 / 60;
  if (d) return std::to_string(d) + "d " + std::to_string(h) + "h";
  if (h) return std::to_string(h) + "h " + std::to_string(m) + "m";
  if (m) return std::to_string(m) + "m " + std::to_string(seconds % 60) + "s";
  return std::to_string(seconds) + "s";
}

std::string percent(const json& ratio) {
  if (!ratio.is_number()) return "-";
  char buf[16];
  snprintf(buf, sizeof buf, "%.1f %%", 100 * ratio.get<double>());
  return buf;
}

std::string lastError(const json& e, int64_t now) {
  if (!e.is_object()) return "-";
  return e.at("reason").get<std::string>() + ": " + printable(e.at("detail").get<std::string>()) +
         " (" + ago(now - e.at("at").get<int64_t>()) + " ago)";
}

void renderHead(const json& s, std::string* out) {
  int64_t now = s.at("now");
  const json& c = s.at("cache");
  char lag[64];
  snprintf(lag, sizeof lag, "%.1f ms (max %.1f ms)", s.at("loop_lag_ms").at("last").get<double>(),
           s.at("loop_lag_ms").at("max").get<double>());
  *out += "slipstream " + s.at("version").get<std::string>() + " · up " +
          ago(s.at("uptime_s").get<int64_t>()) + " · config " +
          printable(s.at("config").at("file").get<std::string>()) + " (loaded " +
          ago(now - s.at("config").at("loaded_at").get<int64_t>()) + " ago)\n";
  *out += "requests " + std::to_string(s.at("requests").at("active").get<uint64_t>()) +
          " active, " + std::to_string(s.at("requests").at("total").get<uint64_t>()) +
          " total · event-loop lag " + lag + "\n";
  if (c.at("enabled").get<bool>())
    *out += "cache " + human(c.at("bytes_used").get<double>()) + " of " +
            human(c.at("max_size").get<double>()) + " · disk free " +
            human(c.at("disk_free").get<double>()) + " · " +
            std::to_string(c.at("objects").get<uint64_t>()) + " objects · hit ratio " +
            percent(c.at("hit_ratio").at("bytes")) + " of bytes, " +
            percent(c.at("hit_ratio").at("requests")) + " of requests · " +
            std::to_string(c.at("evicted_blocks").get<uint64_t>()) + " blocks evicted\n";
  else
    *out += "cache off\n";
}

void renderTransfers(const json& list, int width, std::string* out) {
  *out += "\ntransfers (" + std::to_string(list.size()) + ")\n";
  if (list.empty()) *out += "  none\n";
  for (const json& t : list) {
    std::string path = printable(t.at("path").get<std::string>());
    uint64_t total = t.at("range").at("end").get<uint64_t>() - t.at("range").at("begin").get<uint64_t>();
    *out += "  " + std::string(policy::baseName(path)) + "\n";
    *out += "    " + speed(t.at("speed_bps").get<double>()) + " · " +
            human(t.at("bytes_sent").get<double>()) + " of " + human(static_cast<double>(total)) +
            " · " + std::to_string(t.at("upstream_connections").get<int>()) + " upstream · " +
            t.at("delivery").get<std::string>() +
            (t.at("cache").is_string() ? " " + t.at("cache").get<std::string>() : "") + " · " +
            printable(t.at("client").get<std::string>()) + "\n";
    *out += "    " + path + "\n";
    if (t.at("blocks").is_object())
      *out += "    [" + blockBar(t.at("blocks").at("states").get<std::string>(), width - 6) + "]\n";
  }
}

void renderPrefetches(const json& list, int width, std::string* out) {
  *out += "\nprefetch (" + std::to_string(list.size()) + ")\n";
  if (list.empty()) *out += "  none\n";
  for (const json& p : list) {
    double total = p.at("bytes_total").is_number() ? p.at("bytes_total").get<double>() : 0;
    double done = p.at("bytes_done").get<double>();
    *out += "  " + p.at("id").get<std::string>() + " " +
            printable(p.at("path").get<std::string>()) + " · " + p.at("state").get<std::string>() +
            " · " + speed(p.at("speed_bps").get<double>()) + "\n";
    *out += "    " + progressBar(total > 0 ? done / total : 0, width - 4) + "\n";
    if (p.at("error").is_object())
      *out += "    error " + p.at("error").at("reason").get<std::string>() + ": " +
              printable(p.at("error").at("detail").get<std::string>()) + "\n";
  }
}

void renderSources(const json& s, std::string* out) {
  int64_t now = s.at("now");
  *out += "\nmounts\n";
  for (const json& m : s.at("mounts"))
    *out += "  " + m.at("name").get<std::string>() + " (" + m.at("prefix").get<std::string>() +
            ", " + m.at("source").get<std::string>() + ") · links " +
            (m.at("links_resolved").is_number()
                 ? std::to_string(m.at("links_resolved").get<uint64_t>())
                 : std::string("-")) +
            " · refused " +
            std::to_string(m.at("link_refusals").get<uint64_t>()) + " · 429s " +
            std::to_string(m.at("rate_limited").get<uint64_t>()) + " · last error " +
            lastError(m.at("last_error"), now) + "\n";
  if (s.at("accounts").empty()) return;
  *out += "\naccounts\n";
  for (const json& a : s.at("accounts"))
    *out += "  " + a.at("name").get<std::string>() + " · " +
            (a.at("authorized").get<bool>() ? "authorized" : "NOT authorized") +
            " · token rotated " +
            (a.at("last_rotation").is_number()
                 ? ago(now - a.at("last_rotation").get<int64_t>()) + " ago"
                 : std::string("never")) +
            " · API calls " + std::to_string(a.at("api_calls").get<uint64_t>()) + " · 429s " +
            std::to_string(a.at("rate_limited").get<uint64_t>()) + " · downloads " +
            std::to_string(a.at("downloads_open").get<uint64_t>()) + " open, " +
            std::to_string(a.at("downloads_waiting").get<uint64_t>()) + " waiting · last error " +
            lastError(a.at("last_error"), now) + "\n";
}

int terminalWidth() {
  if (const char* c = getenv("COLUMNS")) {
    int w = 0;
    for (const char* p = c; *p >= '0' && *p <= '9' && w < 1000; p++) w = w * 10 + (*p - '0');
    if (w >= 40) return w;
  }
  return 80;
}

}  // namespace

std::string apiBase(const conf::Config& cfg) {
  const conf::ListenAddr* pick = nullptr;
  for (const auto& l : cfg.server.listen)
    if (!pick || (pick->tls && !l.tls)) pick = &l;
  if (!pick) return "http://127.0.0.1:8690";
  std::string host = pick->host == "0.0.0.0" ? "127.0.0.1" : pick->host == "::" ? "::1" : pick->host;
  if (host.find(':') != std::string::npos) host = "[" + host + "]";
  return std::string(pick->tls ? "https://" : "http://") + host + ":" + std::to_string(pick->port);
}

std::string progressBar(double fraction, int width) {
  fraction = std::clamp(std::isnan(fraction) ? 0.0 : fraction, 0.0, 1.0);
  int cells = std::max(10, width - 9);  // "[" + cells + "]" + " 100 %"
  int full = static_cast<int>(std::floor(fraction * cells));
  char pct[16];
  snprintf(pct, sizeof pct, " %3d %%", static_cast<int>(std::floor(fraction * 100)));
  return "[" + std::string(full, '#') + std::string(cells - full, '.') + "]" + pct;
}

std::string blockBar(std::string_view states, int width) {
  size_t n = states.size();
  size_t cells = std::min<size_t>(n, static_cast<size_t>(std::max(10, width)));
  std::string out;
  for (size_t c = 0; c < cells; c++) {
    size_t a = c * n / cells, b = std::max((c + 1) * n / cells, a + 1);
    std::string_view run = states.substr(a, b - a);
    if (run.find('F') != std::string_view::npos) out += '>';
    else if (run.find_first_not_of('S') == std::string_view::npos) out += '#';
    else out += '.';
  }
  return out;
}

std::string renderStatus(std::string_view stats, std::string_view transfers,
                         std::string_view prefetches, int width, std::string* err) {
  json s = json::parse(stats, nullptr, false), t = json::parse(transfers, nullptr, false),
       p = json::parse(prefetches, nullptr, false);
  if (s.is_discarded() || t.is_discarded() || p.is_discarded()) {
    *err = "the gateway's answer is not JSON";
    return "";
  }
  std::string out;
  try {  // a schema mismatch (older or newer gateway) is one clear error
    renderHead(s, &out);
    renderTransfers(t.at("transfers"), width, &out);
    renderPrefetches(p.at("prefetches"), width, &out);
    renderSources(s, &out);
  } catch (const json::exception& e) {
    *err = std::string("unexpected answer from the gateway: ") + e.what();
    return "";
  }
  return out;
}

int status(const conf::Config& cfg, const Flags& flags) {
  std::string base = flag(flags, "url") ? *flag(flags, "url") : apiBase(cfg);
  Reply s = call(cfg, base, "GET", "stats");
  if (s.status != 200) {
    fprintf(stderr, "slipstream status: %s\n", describe(s).c_str());
    return 1;
  }
  Reply t = call(cfg, base, "GET", "transfers"), p = call(cfg, base, "GET", "prefetch");
  for (const Reply* r : {&t, &p}) {
    if (r->status != 200) {
      fprintf(stderr, "slipstream status: %s\n", describe(*r).c_str());
      return 1;
    }
  }
  std::string err;
  std::string text = renderStatus(s.body, t.body, p.body, terminalWidth(), &err);
  if (text.empty()) {
    fprintf(stderr, "slipstream status: %s\n", err.c_str());
    return 1;
  }
  fputs(text.c_str(), stdout);
  return 0;
}

int prefetch(const conf::Config& cfg, const std::vector<std::string>& args, const Flags& flags) {
  if (args.size() != 1 || args[0].empty() || args[0][0] != '/') {
    fprintf(stderr, "slipstream prefetch: expected one path like /movies/a.mkv\n");
    return 2;
  }
  const std::string* wait = flag(flags, "wait");
  bool follow = !wait || *wait == "yes";
  std::string base = flag(flags, "url") ? *flag(flags, "url") : apiBase(cfg);
  Reply r = call(cfg, base, "POST", "prefetch", json{{"path", args[0]}}.dump());
  if (r.status != 202) {
    fprintf(stderr, "slipstream prefetch: %s\n", describe(r).c_str());
    return 1;
  }
  json job = json::parse(r.body, nullptr, false);
  if (job.is_discarded() || !job.contains("id") || !job["id"].is_string()) {
    fprintf(stderr, "slipstream prefetch: unexpected answer from the gateway\n");
    return 1;
  }
  std::string id = job["id"];
  printf("prefetch %s started for %s\n", id.c_str(), printable(args[0]).c_str());
  bool tty = isatty(STDOUT_FILENO);
  while (follow) {
    std::string state = job.value("state", std::string("?"));
    double total = job.value("bytes_total", json()).is_number() ? job["bytes_total"].get<double>() : 0;
    double done = job.value("bytes_done", 0.0);
    std::string line = progressBar(total > 0 ? done / total : 0, terminalWidth() - 30) + " " +
                       speed(job.value("speed_bps", 0.0)) + " " + state;
    printf(tty ? "\r%s\033[K" : "%s\n", line.c_str());
    fflush(stdout);
    if (state == "done" || state == "failed" || state == "cancelled") {
      if (tty) printf("\n");
      if (state != "done" && job.value("error", json()).is_object())
        fprintf(stderr, "slipstream prefetch: %s: %s\n",
                job["error"].value("reason", std::string("?")).c_str(),
                job["error"].value("detail", std::string()).c_str());
      return state == "done" ? 0 : 1;
    }
    std::this_thread::sleep_for(std::chrono::seconds(1));
    r = call(cfg, base, "GET", "prefetch/" + id);
    job = json::parse(r.body, nullptr, false);
    if (r.status != 200 || job.is_discarded() || !job.is_object()) {
      fprintf(stderr, "\nslipstream prefetch: %s\n", describe(r).c_str());
      return 1;
    }
  }
  return 0;
}

namespace {

struct Running {
  long pid = 0;
  std::string file;
  json lastReload;  // null before the first
};

std::optional<Running> running(const conf::Config& cfg, const std::string& base) {
  Reply r = call(cfg, base, "GET", "stats");
  json j = json::parse(r.body, nullptr, false);
  if (r.status != 200 || j.is_discarded() || !j.value("pid", json()).is_number_integer() ||
      !j.value("config", json()).is_object()) {
    fprintf(stderr, "slipstream reload: %s\n", r.status == 200 ? "unexpected answer from the gateway" : describe(r).c_str());
    return std::nullopt;
  }
  Running out;
  out.pid = j["pid"].get<long>();
  out.file = j["config"].value("file", std::string());
  out.lastReload = j["config"].value("last_reload", json());
  return out;
}

}  // namespace

int reload(const conf::Config& cfg, const Flags& flags) {
  std::string base = flag(flags, "url") ? *flag(flags, "url") : apiBase(cfg);
  auto before = running(cfg, base);
  if (!before) return 1;
  char real[PATH_MAX];
  std::string mine = realpath(cfg.file.c_str(), real) ? real : cfg.file;
  if (before->file != mine) {
    fprintf(stderr, "slipstream reload: the gateway at %s runs %s, not %s: nothing sent\n", base.c_str(),
            printable(before->file).c_str(), printable(mine).c_str());
    return 1;
  }
  if (before->pid <= 1 || kill(static_cast<pid_t>(before->pid), SIGHUP) != 0) {
    fprintf(stderr, "slipstream reload: cannot signal pid %ld: %s (run it as the gateway's user)\n", before->pid,
            strerror(errno));
    return 1;
  }
  // The outcome: a last_reload newer than the one before.
  for (int i = 0; i < 100; i++) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    auto now = running(cfg, base);
    if (!now) return 1;
    const json& lr = now->lastReload;
    if (!lr.is_object() || lr == before->lastReload) continue;
    for (const json& k : lr.value("needs_restart", json::array()))
      if (k.is_string()) printf("needs a restart (running value kept): %s\n", printable(k.get<std::string>()).c_str());
    if (lr.value("ok", false)) {
      printf("reloaded %s (pid %ld)\n", printable(mine).c_str(), now->pid);
      return 0;
    }
    for (const json& e : lr.value("errors", json::array()))
      if (e.is_string()) fprintf(stderr, "%s\n", printable(e.get<std::string>()).c_str());
    fprintf(stderr, "slipstream reload: the gateway kept its running configuration\n");
    return 1;
  }
  fprintf(stderr, "slipstream reload: signal sent to pid %ld, no outcome reported within 10 s\n", before->pid);
  return 1;
}

int purge(const conf::Config& cfg, const std::vector<std::string>& args, const Flags& flags) {
  const std::string* prefix = flag(flags, "prefix");
  if ((prefix ? 1 : 0) + args.size() != 1) {
    fprintf(stderr, "slipstream purge: expected one path (/movies/a.mkv) or --prefix /movies/dir\n");
    return 2;
  }
  std::string base = flag(flags, "url") ? *flag(flags, "url") : apiBase(cfg);
  json body = prefix ? json{{"prefix", *prefix}} : json{{"path", args[0]}};
  Reply r = call(cfg, base, "POST", "purge", body.dump());
  json j = json::parse(r.body, nullptr, false);
  if (r.status != 200 || j.is_discarded() || !j.contains("purged") || !j["purged"].is_array()) {
    fprintf(stderr, "slipstream purge: %s\n", describe(r).c_str());
    return 1;
  }
  for (const json& o : j["purged"])
    printf("purged %s (%s stored%s)\n", printable(o.value("virtual_path", std::string())).c_str(),
           human(o.value("bytes", 0.0)).c_str(),
           o.value("in_use", false) ? ", a reader finishes from what it has" : "");
  printf("%zu object%s, %s dropped\n", j["purged"].size(), j["purged"].size() == 1 ? "" : "s",
         human(j.value("bytes", 0.0)).c_str());
  return 0;
}

}  // namespace slip::cmd
