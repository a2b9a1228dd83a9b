#!/usr/bin/env bash
# Installs the Debian 12 packages that building, testing, the demo and the
# benchmark need, when they are missing. Idempotent and quiet when everything
# is present. Never starts or enables the system nginx service: the tests and
# the demo start their own nginx on loopback ports with their own config.
#
#   scripts/deps.sh            build + test + demo packages
#   scripts/deps.sh bench      also the benchmark peers and tools (wrk, hyperfine,
#                              varnish; e2fsprogs + util-linux for the slow-disk row)
set -euo pipefail

pkgs=(
  # build
  g++ make pkg-config universal-ctags
  libevent-dev libcurl4-openssl-dev liblmdb-dev libxxhash-dev libssl-dev
  catch2 nlohmann-json3-dev libexpat1-dev libcrypt-dev
  # fuzzing (make fuzz, the fuzz smoke in make test): clang and libFuzzer
  clang libclang-rt-14-dev
  # llhttp's C sources (the front end's HTTP parser), compiled into the build
  node-llhttp
  # tests and demo: a real nginx origin, real clients, the test runner
  nginx curl wget aria2 python3 openssl procps iproute2 lmdb-utils ffmpeg
  # test_upstream_tls.py counts the CA files the gateway opens (issue 9 #19)
  strace
  # WebDAV clients and the conformance suite (tests/integration/test_dav.py)
  rclone litmus
  # the status page's browser test
  chromium
  # make deb and its test: package tools, lintian, systemd-analyze
  dpkg-dev fakeroot lintian systemd adduser man-db
)
if [ "${1:-}" = bench ]; then
  pkgs+=(wrk hyperfine varnish e2fsprogs util-linux)
fi

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "deps.sh: missing Debian packages: ${missing[*]}" >&2
  echo "deps.sh: run as root (or: sudo apt-get install ${missing[*]})" >&2
  exit 1
fi

echo "deps.sh: installing ${missing[*]}" >&2
# Keep package scripts from starting services (nginx) while we install.
created_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  created_policy=1
fi
cleanup() { [ $created_policy -eq 1 ] && rm -f /usr/sbin/policy-rc.d; return 0; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
apt_opts=(-y -q --no-install-recommends -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
if ! apt-get install "${apt_opts[@]}" "${missing[@]}" >/tmp/slipstream-deps.log 2>&1; then
  apt-get update -q >>/tmp/slipstream-deps.log 2>&1 || true
  if ! apt-get install "${apt_opts[@]}" "${missing[@]}" >>/tmp/slipstream-deps.log 2>&1; then
    tail -n 30 /tmp/slipstream-deps.log >&2
    echo "deps.sh: apt-get install failed (log: /tmp/slipstream-deps.log)" >&2
    exit 1
  fi
fi

# The distribution's nginx unit must stay disabled and stopped: ours run on
# loopback ports under the tests' control.
if printf '%s\n' "${missing[@]}" | grep -qx nginx; then
  if command -v systemctl >/dev/null 2>&1; then
    systemctl disable nginx >/dev/null 2>&1 || true
  fi
  rm -f /etc/systemd/system/multi-user.target.wants/nginx.service
  if [ -s /run/nginx.pid ]; then
    kill "$(cat /run/nginx.pid)" 2>/dev/null || true
  fi
fi
echo "deps.sh: done" >&2
