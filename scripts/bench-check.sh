#!/usr/bin/env bash
# Benchmark `kiln check` on a folder of generated specs: wall time and peak RSS.
#
#   scripts/bench-check.sh [--count N] [--runs R] [--no-build] [--keep]
#
#   --count N    specs per data set (default 10000)
#   --runs R     timed runs per data set, after one untimed warm-up run (default 7)
#   --no-build   skip `cargo build --release` (use $KILN_BIN or target/release/kiln as is)
#   --keep       keep the generated specs (printed path) instead of deleting them
#
# Data sets, both made by scripts/gen-specs.py with the same seed:
#   valid        N specs, all valid                       -> expects exit 0
#   invalid-10   the same N specs, every 10th one broken  -> expects exit 1
#
# Each run is `kiln check DIR` with stdout/stderr to a file, measured by GNU time
# (/usr/bin/time, Debian package `time`: peak RSS = "Maximum resident set size") and by the
# shell clock around it (wall time in ms). The page cache is warm (the warm-up run reads every
# file first). Prints one line per run and a median summary per data set; the machine (nproc,
# CPU model, memory) and the kiln commit are printed first.
set -Eeuo pipefail

COUNT=10000
RUNS=7
BUILD=1
KEEP=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --count) COUNT=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --keep) KEEP=1; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

if [[ ! -x /usr/bin/time ]]; then
  echo "installing GNU time (Debian package 'time')" >&2
  apt-get install -y time >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y time >/dev/null; }
fi

if [[ $BUILD == 1 ]]; then
  cargo build --release --bin kiln
fi
BIN=${KILN_BIN:-$ROOT/target/release/kiln}
[[ -x $BIN ]] || { echo "no kiln binary at $BIN" >&2; exit 2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/kiln-bench-check.XXXXXX")
if [[ $KEEP == 1 ]]; then
  echo "keeping generated specs in $WORK" >&2
else
  trap 'rm -rf "$WORK"' EXIT
fi

echo "== machine"
echo "nproc:  $(nproc)"
echo "cpu:    $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "memory: $(free -g | awk '/^Mem:/ {print $2 " GiB"}')"
echo "kernel: $(uname -r)"
echo "load:   $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min; other work on the machine skews wall time, not user+sys)"
echo "kiln:   $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet HEAD -- src 2>/dev/null || echo ' (+ uncommitted changes in src/)')"
echo "binary: $BIN ($(du -h "$BIN" | cut -f1))"
echo

python3 scripts/gen-specs.py "$WORK/valid" --count "$COUNT"
python3 scripts/gen-specs.py "$WORK/invalid-10" --count "$COUNT" --invalid-every 10
echo "data: $(du -sh --apparent-size "$WORK/valid" | cut -f1) of YAML per set ($(du -sh "$WORK/valid" | cut -f1) on disk)"
echo

median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

bench_set() {
  local name=$1 expect=$2 dir=$WORK/$1
  local out=$WORK/$name.out times=$WORK/$name.times
  : >"$times"
  # Warm-up: fills the page cache and checks the exit code and the summary line.
  set +e
  "$BIN" check "$dir" >"$out" 2>&1
  local rc=$?
  set -e
  if [[ $rc != "$expect" ]]; then
    echo "$name: kiln check exited $rc, expected $expect; last lines:" >&2
    tail -5 "$out" >&2
    exit 1
  fi
  echo "== $name: $(tail -1 "$out")"
  for ((i = 1; i <= RUNS; i++)); do
    local t0 t1
    t0=$(date +%s%N)
    set +e
    /usr/bin/time -f '%M %U %S' -o "$WORK/time.txt" "$BIN" check "$dir" >"$out" 2>&1
    set -e
    t1=$(date +%s%N)
    # GNU time puts "Command exited with non-zero status N" first when kiln exits non-zero.
    read -r rss user sys < <(tail -n 1 "$WORK/time.txt")
    local wall_ms=$(( (t1 - t0) / 1000000 ))
    printf '  run %d: wall %5d ms  user %ss  sys %ss  peak RSS %6.1f MB\n' \
      "$i" "$wall_ms" "$user" "$sys" "$(echo "$rss / 1024" | bc -l)"
    echo "$wall_ms $rss $(echo "($user + $sys) * 1000 / 1" | bc)" >>"$times"
  done
  local med_wall med_rss med_cpu min_wall
  med_wall=$(cut -d' ' -f1 "$times" | median)
  min_wall=$(cut -d' ' -f1 "$times" | sort -n | head -1)
  med_rss=$(cut -d' ' -f2 "$times" | median)
  med_cpu=$(cut -d' ' -f3 "$times" | median)
  printf '  median of %d: wall %s ms (min %s), user+sys %s ms, peak RSS %.1f MB\n\n' \
    "$RUNS" "$med_wall" "$min_wall" "$med_cpu" "$(echo "$med_rss / 1024" | bc -l)"
  SUMMARY+=("$(printf '| %-10s | %6d | %10s ms | %7s ms | %14s ms | %14.1f MB |' \
    "$name" "$COUNT" "$med_wall" "$min_wall" "$med_cpu" "$(echo "$med_rss / 1024" | bc -l)")")
}

SUMMARY=()
bench_set valid 0
bench_set invalid-10 1

echo "== summary (median of $RUNS runs, warm page cache; load now $(cut -d' ' -f1-3 /proc/loadavg))"
echo "| data set   |  specs | wall (median) | wall (min) | user+sys (median) | peak RSS (median) |"
echo "|------------|--------|---------------|------------|-------------------|-------------------|"
printf '%s\n' "${SUMMARY[@]}"
