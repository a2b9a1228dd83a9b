#!/usr/bin/env bash
# The main job end to end on loopback: a throttled origin that rejects plain
# clients, the gateway in front of it, a download through it, cold and then
# cached. Everything runs under a temp dir and is stopped at the end.
set -euo pipefail
BIN=${1:-build/slipstream}
BIN=$(readlink -f "$BIN")
SIZE_MB=64
RATE=4m          # nginx limit_rate: per request, like a cloud drive's per-connection cap
RATE_MBS=4
work=$(mktemp -d /tmp/slipstream-demo.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
say() { printf '\033[1m%s\033[0m\n' "$*"; }
mib() { awk -v b="$1" 'BEGIN{printf "%.1f MiB", b/1048576}'; }
speed() { awk -v b="$1" -v t="$2" 'BEGIN{ if (t<=0) t=0.001; printf "%.1f MiB/s", b/1048576/t}'; }

mkdir -p "$work/www" "$work/nginx/tmp" "$work/cache"
head -c $((SIZE_MB << 20)) /dev/urandom > "$work/www/movie.mkv"
want=$(sha256sum "$work/www/movie.mkv" | cut -c1-16)

oport=$(port)
cat > "$work/nginx/nginx.conf" <<EOF
daemon off; master_process off; worker_processes 1;
pid $work/nginx/nginx.pid; error_log $work/nginx/error.log;
events { worker_connections 256; }
http {
  access_log $work/nginx/access.log;
  client_body_temp_path $work/nginx/tmp; proxy_temp_path $work/nginx/tmp;
  fastcgi_temp_path $work/nginx/tmp; uwsgi_temp_path $work/nginx/tmp; scgi_temp_path $work/nginx/tmp;
  server {
    listen 127.0.0.1:$oport;
    root $work/www;
    location / {
      valid_referers www.alipan.com;
      if (\$invalid_referer) { return 403; }
      if (\$http_user_agent != "pan.baidu.com") { return 403; }
      limit_rate $RATE;
    }
  }
}
EOF
nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" & pids+=($!)

gport=$(port)
cat > "$work/slipstream.ini" <<EOF
[server]
listen = 127.0.0.1:$gport
access_log = $work/access.log
log_level = warn
[cache]
dir = $work/cache
max_size = 1G
min_free = 100M
[mount cloud]
source = http
base_url = http://127.0.0.1:$oport
header = Referer: https://www.alipan.com/
header = User-Agent: pan.baidu.com
connections = 16
EOF
"$BIN" run -c "$work/slipstream.ini" 2>"$work/gateway.log" & pids+=($!)
for _ in $(seq 100); do
  curl -s -o /dev/null "http://127.0.0.1:$gport/-/health" && curl -s -o /dev/null "http://127.0.0.1:$oport/" && break
  sleep 0.05
done

say "slipstream demo: a ${SIZE_MB} MiB file on an origin that demands a Referer and a User-Agent and"
say "throttles every connection to ${RATE_MBS} MiB/s (real nginx: valid_referers, limit_rate)."
echo
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$oport/movie.mkv")
echo "before: a plain client (curl, no Referer)        -> HTTP $code: refused"
code=$(curl -s -o /dev/null -w '%{http_code}' -e https://www.alipan.com/ "http://127.0.0.1:$oport/movie.mkv" --max-time 5)
echo "        with a Referer but a player's User-Agent -> HTTP $code: refused"
read -r b t < <(curl -s -o /dev/null -w '%{size_download} %{time_total}\n' --max-time 3 \
  -e https://www.alipan.com/ -A pan.baidu.com "http://127.0.0.1:$oport/movie.mkv" || true)
echo "        with both headers, one connection        -> $(speed "$b" "$t"): $((SIZE_MB / RATE_MBS)) s for the file"
: > "$work/nginx/access.log"   # count only what the gateway fetches from here on
echo
say "after: the same plain client through the gateway (http://127.0.0.1:$gport/p/cloud/movie.mkv)"
for run in cold cached; do
  read -r code b t xc < <(curl -s -o "$work/got" -D "$work/hdr" -w '%{http_code} %{size_download} %{time_total} ' \
    "http://127.0.0.1:$gport/p/cloud/movie.mkv"; grep -i '^x-cache' "$work/hdr" | tr -d '\r' | awk '{print $2}'; echo)
  got=$(sha256sum "$work/got" | cut -c1-16)
  ok=$([ "$got" = "$want" ] && echo "sha256 matches" || echo "SHA256 MISMATCH")
  printf '  %-6s HTTP %s  X-Cache: %-7s %s in %.2f s = %s  sha256 %s… (%s)\n' "$run" "$code" "$xc" \
    "$(mib "$b")" "$t" "$(speed "$b" "$t")" "$got" "$ok"
done
origin_bytes=$(awk '{s+=$10} END{print s+0}' "$work/nginx/access.log")
echo
echo "origin sent $(mib "$origin_bytes") in all for two downloads of $(mib $((SIZE_MB << 20))): the second came from the cache."
"$BIN" cache stats -c "$work/slipstream.ini" | sed 's/^/  cache: /'
