#!/usr/bin/env bash
# Runs libFuzzer targets for a bounded time each and prints one summary line
# per target. Exits non-zero when any target finds something (crash, leak,
# sanitizer report, timeout, out-of-memory) or does not run at all.
#
#   scripts/fuzz.sh SECONDS BIN_DIR [TARGET...]     (default: every binary in BIN_DIR)
#
# The seed corpus is tests/fuzz/corpus/<target>/ (in the tree, read only);
# what the fuzzer learns goes to build/fuzz/corpus/<target>/ and findings to
# build/fuzz/findings/<target>/ (both out of the tree). An optional
# tests/fuzz/<target>.dict is passed as the dictionary.
set -uo pipefail

seconds=${1:?seconds}
bindir=${2:?bin dir}
shift 2
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for b in "$bindir"/*; do [ -x "$b" ] && targets+=("$(basename "$b")"); done
fi
[ ${#targets[@]} -gt 0 ] || { echo "fuzz: no targets in $bindir" >&2; exit 1; }

root=$(cd "$(dirname "$0")/.." && pwd)
work=$root/build/fuzz
summary=()
failed=0
for t in "${targets[@]}"; do
  seeds=$root/tests/fuzz/corpus/$t
  corpus=$work/corpus/$t
  findings=$work/findings/$t
  log=$work/logs/$t.log
  mkdir -p "$corpus" "$findings" "$work/logs"
  args=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
        -artifact_prefix="$findings/")
  [ -f "$root/tests/fuzz/$t.dict" ] && args+=(-dict="$root/tests/fuzz/$t.dict")
  dirs=("$corpus")
  [ -d "$seeds" ] && dirs+=("$seeds")
  "$bindir/$t" "${args[@]}" "${dirs[@]}" >"$log" 2>&1
  rc=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n1 | cut -d' ' -f2)
  n=$(find "$corpus" -type f | wc -l)
  if [ $rc -eq 0 ] && [ -n "$runs" ]; then
    result=ok
  else
    result="FAILED (exit $rc; log $log; findings in $findings/)"
    failed=1
    grep -E 'ERROR: |runtime error|SUMMARY' "$log" | head -n 5 >&2
  fi
  summary+=("$(printf 'fuzz: %-14s %4ss  runs=%-10s cov=%-5s corpus=%-5s %s' \
    "$t" "$seconds" "${runs:-0}" "${cov:-?}" "$n" "$result")")
done
printf '%s\n' "${summary[@]}"
exit $failed
