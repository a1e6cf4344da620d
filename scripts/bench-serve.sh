#!/usr/bin/env bash
# `kiln serve` under load, two builds side by side (BENCHMARKS.md "Serving under load"):
#
#   scripts/bench-serve.sh BEFORE_DIR AFTER_DIR [--rounds 2] [--duration 20] [--log-mb 200]
#                          [--out /tmp/bench-serve-section.md]
#
# BEFORE_DIR and AFTER_DIR are checkouts whose `target/release` holds `kiln` and
# `examples/populate_store` (`cargo build --release --bin kiln --example populate_store`).
#
# Part 1, latency: an empty data dir, a repository with one spec `noisy` whose base image has
# an `ONBUILD RUN seq …` that prints LOG_MB MB (100-byte lines), `kiln serve` with one build
# slot. Once the noisy build streams, a commit adds 10,000 specs (scripts/gen-specs.py), so
# the import (reconcile + one sled transaction) runs beside the log stream; for DURATION
# seconds `wrk -t1 -c4 --latency` measures `/healthz` and, at the same time, a second wrk
# measures `/`. The p99 of each is the figure.
#
# Part 2, memory: a store of 10,000 specs × 10 jobs and one LOG_MB MB log written by each
# build's own examples/populate_store, `kiln serve --no-build`, one full read of the big log
# through the API; the server's peak RSS (VmHWM) is the figure.
#
# Rounds alternate before/after. Everything listens on 127.0.0.1 and is stopped by PID on
# exit. Needs the dev-env (Engine + registry 127.0.0.1:5000 + kiln/bookworm:minbase), wrk,
# python3, git.
set -Eeuo pipefail

BEFORE=${1:?before dir}
AFTER=${2:?after dir}
shift 2
ROUNDS=2
DURATION=20
LOG_MB=200
OUT=/tmp/bench-serve-section.md
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --log-mb) LOG_MB=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    *) echo "bench-serve: unknown argument $1" >&2; exit 2 ;;
  esac
done
ROOT=$(cd "$(dirname "$0")/.." && pwd)
REG=127.0.0.1:5000
MIN_BASE=${MIN_BASE:-$REG/kiln/bookworm:minbase}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }

WORK=$(mktemp -d /tmp/kiln-bench-serve.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  [ "${KEEP:-0}" = 1 ] || rm -rf "$WORK"
}
trap cleanup EXIT
say() { printf '== %s\n' "$*" >&2; }

# A noisy base: every child build runs `seq` for LOG_MB MB of output. A new one per round (a
# nonce label), so no round can take the ONBUILD step from the layer cache of an earlier one.
noisy_base() {
  local ref pad
  ref="$REG/kiln/bench-serve-noisy:$(date +%s%N)"
  pad=$(printf 'x%.0s' {1..82})
  printf 'FROM %s\nLABEL io.kiln.bench.nonce="%s"\nONBUILD RUN seq -f "noisy %%010.0f %s" 1 %d\n' \
    "$MIN_BASE" "$ref" "$pad" $((LOG_MB * 10000)) | docker build -q -t "$ref" - >/dev/null
  docker push -q "$ref" >/dev/null
  echo "$ref"
}

python3 "$ROOT/scripts/gen-specs.py" "$WORK/import-specs" --count 10000 --flat --seed 1 >/dev/null

start_serve() { # start_serve KILN LOGFILE ARGS... → sets SERVER_PID, BASE
  local kiln=$1 log=$2
  shift 2
  KILN_LOG=warn "$kiln" serve --listen 127.0.0.1:0 "$@" >"$log" 2>&1 &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  BASE=
  for _ in $(seq 1 400); do
    BASE=$(grep -o 'http://127.0.0.1:[0-9]*' "$log" | head -1 || true)
    [ -n "$BASE" ] && curl -fs "$BASE/healthz" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "kiln serve did not start: $(cat "$log")" >&2
  return 1
}
stop_serve() { kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; }
p99() { awk '$1=="99%" {print $2}' "$1"; }
to_ms() { # wrk latency (us/ms/s) → ms
  awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000; printf "%.1f", n }'
}

latency_round() { # latency_round VARIANT DIR ROUND
  local variant=$1 dir=$2 round=$3 w=$WORK/lat-$1-$3 NOISY
  NOISY=$(noisy_base)
  mkdir -p "$w/repo/specs"
  git -C "$w/repo" init -q -b main
  printf 'name: noisy\nbaseImage: %s\n' "$NOISY" >"$w/repo/specs/noisy.yaml"
  git -C "$w/repo" add -A
  git -C "$w/repo" -c user.name=bench -c user.email=b@localhost commit -qm noisy
  cat >"$w/kiln.toml" <<EOF
repo = "$w/repo"
specs_dir = "specs"
data_dir = "$w/data"
registry = "$REG"
max_parallel_builds = 1
poll_interval = 3600
EOF
  start_serve "$dir/target/release/kiln" "$w/serve.log" --config "$w/kiln.toml"
  # wait until the noisy build streams (its log grows)
  local lines=0
  for _ in $(seq 1 1200); do
    lines=$(curl -fs "$BASE/api/v1/jobs/1" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin).get("log_lines",0))' 2>/dev/null || echo 0)
    [ "$lines" -gt 20000 ] && break
    sleep 0.1
  done
  say "$variant round $round: noisy build streaming ($lines lines); importing 10,000 specs"
  cp "$WORK"/import-specs/*.yaml "$w/repo/specs/"
  git -C "$w/repo" add -A
  git -C "$w/repo" -c user.name=bench -c user.email=b@localhost commit -qm import
  wrk -t1 -c4 -d"${DURATION}s" --latency "$BASE/healthz" >"$w/wrk-healthz.txt" &
  local wh=$!
  wrk -t1 -c4 -d"${DURATION}s" --latency "$BASE/" >"$w/wrk-index.txt" &
  local wi=$!
  wait "$wh" "$wi"
  local specs
  specs=$(curl -fs "$BASE/api/v1/specs" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(len(d if isinstance(d,list) else d.get("specs",[])))' 2>/dev/null || echo "?")
  lines=$(curl -fs "$BASE/api/v1/jobs/1" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("log_lines",0))' 2>/dev/null || echo "?")
  stop_serve
  printf '%s %s %s %s %s %s\n' "$variant" "$round" "$(to_ms "$(p99 "$w/wrk-healthz.txt")")" \
    "$(to_ms "$(p99 "$w/wrk-index.txt")")" "$specs" "$lines" >>"$WORK/latency.txt"
  say "$variant round $round: healthz p99 $(p99 "$w/wrk-healthz.txt"), / p99 $(p99 "$w/wrk-index.txt"); specs after $specs, log lines $lines"
  rm -rf "$w/data"
}

populate() { # populate VARIANT DIR → $WORK/store-VARIANT, BIG_LOG_JOB
  local out=$WORK/store-$1
  "$2/target/release/examples/populate_store" --data-dir "$out" --specs 10000 --jobs-per-spec 10 \
    --log-mb "$LOG_MB" >"$WORK/populate-$1.env"
}

memory_round() { # memory_round VARIANT DIR ROUND
  local variant=$1 dir=$2 round=$3 w=$WORK/mem-$1-$3
  mkdir -p "$w"
  cp -a "$WORK/store-$variant" "$w/data"
  git -C "$w" init -q -b main repo
  # shellcheck disable=SC1090
  . "$WORK/populate-$variant.env"
  start_serve "$dir/target/release/kiln" "$w/serve.log" --no-build --repo "$w/repo" \
    --data-dir "$w/data" --poll-interval 3600
  curl -fs -o /dev/null "$BASE/"
  local bytes
  bytes=$(curl -fs "$BASE/api/v1/jobs/$BIG_LOG_JOB/log" | wc -c)
  local hwm rss
  hwm=$(awk '$1=="VmHWM:" {print $2}' "/proc/$SERVER_PID/status")
  rss=$(awk '$1=="VmRSS:" {print $2}' "/proc/$SERVER_PID/status")
  stop_serve
  printf '%s %s %s %s %s\n' "$variant" "$round" "$((hwm / 1024))" "$((rss / 1024))" "$bytes" >>"$WORK/memory.txt"
  say "$variant round $round: peak RSS $((hwm / 1024)) MiB (after the read $((rss / 1024)) MiB), log $bytes bytes"
  rm -rf "$w"
}

say "populating the stores (10,000 specs × 10 jobs, one $LOG_MB MB log) with each build's populate_store"
populate before "$BEFORE"
populate after "$AFTER"

for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then order="before after"; else order="after before"; fi
  for v in $order; do
    d=$BEFORE; [ "$v" = after ] && d=$AFTER
    latency_round "$v" "$d" "$r"
    memory_round "$v" "$d" "$r"
  done
done

median() { sort -n | awk '{a[NR]=$1} END { if (NR%2) print a[(NR+1)/2]; else printf "%.1f\n", (a[NR/2]+a[NR/2+1])/2 }'; }
col() { awk -v v="$1" -v c="$2" '$1==v {print $c}' "$3" | median; }
{
  echo "| figure (median of $ROUNDS rounds) | before | after | after / before |"
  echo "|---|---:|---:|---:|"
  for spec in "healthz p99 (ms)|3|latency" "/ p99 (ms)|4|latency" "peak RSS (MiB)|3|memory"; do
    IFS='|' read -r label c f <<<"$spec"
    b=$(col before "$c" "$WORK/$f.txt")
    a=$(col after "$c" "$WORK/$f.txt")
    printf '| %s | %s | %s | %s |\n' "$label" "$b" "$a" "$(awk -v a="$a" -v b="$b" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')"
  done
  echo
  echo "Raw rounds (variant round healthz_p99_ms index_p99_ms specs_after log_lines_after):"
  echo '```'
  cat "$WORK/latency.txt"
  echo '```'
  echo "Memory rounds (variant round peak_rss_mib rss_after_mib log_bytes):"
  echo '```'
  cat "$WORK/memory.txt"
  echo '```'
} >"$OUT"
cat "$OUT"
