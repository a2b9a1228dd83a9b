// The error log: one `key=value` line per event on stderr.
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <ctime>
#include <mutex>

#include "conf/conf.h"

namespace slip::conf {
namespace {
std::atomic<int> gLevel{static_cast<int>(LogLevel::Info)};
std::mutex gMutex;

const char* levelName(LogLevel l) {
  switch (l) {
    case LogLevel::Debug: return "debug";
    case LogLevel::Info: return "info";
    case LogLevel::Warn: return "warn";
    case LogLevel::Error: return "error";
  }
  return "?";
}
}  // namespace

void Log::setLevel(LogLevel l) { gLevel.store(static_cast<int>(l)); }

bool Log::enabled(LogLevel l) { return static_cast<int>(l) >= gLevel.load(std::memory_order_relaxed); }

void Log::write(LogLevel l, std::string_view event, std::string_view kv) {
  if (!enabled(l)) return;
  timeval tv{};
  gettimeofday(&tv, nullptr);
  tm t{};
  gmtime_r(&tv.tv_sec, &t);
  char ts[40];
  strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &t);
  std::string line;
  line.reserve(64 + event.size() + kv.size());
  line += ts;
  char ms[8];
  snprintf(ms, sizeof ms, ".%03dZ", static_cast<int>(tv.tv_usec / 1000));
  line += ms;
  line += " level=";
  line += levelName(l);
  line += " event=";
  line += event;
  if (!kv.empty()) {
    line += ' ';
    line += kv;
  }
  line += '\n';
  std::lock_guard<std::mutex> g(gMutex);
  fwrite(line.data(), 1, line.size(), stderr);
  fflush(stderr);
}

std::string logValue(std::string_view v) {
  bool quote = v.empty();
  for (unsigned char c : v)
    if (c <= ' ' || c == '"' || c == '\\' || c == 0x7f || c == '=') quote = true;
  if (!quote) return std::string(v);
  std::string out = "\"";
  for (unsigned char c : v) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  out += '"';
  return out;
}

}  // namespace slip::conf
