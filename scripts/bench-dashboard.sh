#!/usr/bin/env bash
# Dashboard benchmark for BENCHMARKS.md: 10,000 specs and 100,000 jobs written through
# kiln::store::Store (examples/populate_store.rs), served by `kiln serve --no-build` (on an empty
# git repository, so the store is only read), measured with wrk on loopback; plus a 200 MB log
# on one job, whose page and raw download are fetched while the server's memory is sampled.
#
#   scripts/bench-dashboard.sh [OUTPUT.md]      (default /tmp/bench-dashboard-section.md)
#
# Environment: SPECS (10000), JOBS_PER_SPEC (10), LOG_MB (200), DURATION (10s), THREADS (2),
# CONNECTIONS (32). Everything listens on 127.0.0.1 only and stops by itself.
set -Eeuo pipefail
cd "$(dirname "$0")/.."

OUT="${1:-/tmp/bench-dashboard-section.md}"
SPECS="${SPECS:-10000}"
JOBS_PER_SPEC="${JOBS_PER_SPEC:-10}"
LOG_MB="${LOG_MB:-200}"
DURATION="${DURATION:-10s}"
THREADS="${THREADS:-2}"
CONNECTIONS="${CONNECTIONS:-32}"

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }

echo "==> building (release)"
cargo build --release --quiet --bin kiln --example populate_store
KILN=target/release/kiln
POPULATE=target/release/examples/populate_store

WORK="$(mktemp -d /tmp/kiln-bench-dash.XXXXXX)"
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "==> populating $SPECS specs × $JOBS_PER_SPEC jobs, one ${LOG_MB} MB log"
t0=$(date +%s.%N)
"$POPULATE" --data-dir "$WORK/data" --specs "$SPECS" --jobs-per-spec "$JOBS_PER_SPEC" --log-mb "$LOG_MB" > "$WORK/populate.env"
t1=$(date +%s.%N)
# shellcheck disable=SC1091
. "$WORK/populate.env"
POPULATE_S=$(echo "$t1 - $t0" | bc)
DB_SIZE=$(du -sh "$WORK/data" | cut -f1)

git init -q -b main "$WORK/repo"   # no commits: the sync finds nothing and changes nothing
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
BASE="http://127.0.0.1:$PORT"
KILN_LOG=warn "$KILN" serve --no-build --repo "$WORK/repo" --data-dir "$WORK/data" \
  --listen "127.0.0.1:$PORT" --poll-interval 3600 > "$WORK/serve.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 200); do curl -fs "$BASE/healthz" >/dev/null 2>&1 && break; sleep 0.05; done
curl -fs "$BASE/healthz" >/dev/null

mem() { awk -v k="$1:" '$1==k {print $2}' "/proc/$SERVER_PID/status"; }   # kB
mib() { echo "scale=1; $1 / 1024" | bc; }

LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
echo "==> cold requests"
cold_list=$(curl -s -o /dev/null -w '%{time_total}' "$BASE/")
warm_list=$(curl -s -o /dev/null -w '%{time_total}' "$BASE/")
cold_metrics=$(curl -s -o /dev/null -w '%{time_total}' "$BASE/metrics")
warm_metrics=$(curl -s -o /dev/null -w '%{time_total}' "$BASE/metrics")
list_bytes=$(curl -s "$BASE/" | wc -c)
list_gzip=$(curl -s -H 'accept-encoding: gzip' "$BASE/" | wc -c)

# wrk: prints "Requests/sec" and the latency distribution.
run_wrk() { # name path [lua script]
  local name="$1" path="$2" script=()
  [ -n "${3:-}" ] && script=(-s "$3")
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "${script[@]}" "$BASE$path" > "$WORK/wrk-$name.txt"
  local rps p50 p99 non2xx
  rps=$(awk '/Requests\/sec/ {print $2}' "$WORK/wrk-$name.txt")
  p50=$(awk '$1=="50%" {print $2}' "$WORK/wrk-$name.txt")
  p99=$(awk '$1=="99%" {print $2}' "$WORK/wrk-$name.txt")
  non2xx=$(awk '/Non-2xx/ {print $NF}' "$WORK/wrk-$name.txt")
  printf '| `%s` | %s | %s | %s | %s |\n' "${4:-$path}" "$(printf '%.0f' "$rps")" "$p50" "$p99" "${non2xx:-0}"
  echo "    $path: $rps req/s, p50 $p50, p99 $p99" >&2
}

# Random filters and pages: every request a different query, so most miss the page cache.
cat > "$WORK/random-q.lua" <<'LUA'
math.randomseed(42)
request = function() return wrk.format(nil, "/?q=" .. math.random(0, 999)) end
LUA
cat > "$WORK/random-page.lua" <<'LUA'
math.randomseed(7)
request = function() return wrk.format(nil, "/?page=" .. math.random(1, 97)) end
LUA
echo "==> wrk ($THREADS threads, $CONNECTIONS connections, $DURATION each)"
ROWS=$(
  run_wrk list "/"
  run_wrk list-page "/" "$WORK/random-page.lua" "/?page=RANDOM(1..97)"
  run_wrk filter "/" "$WORK/random-q.lua" "/?q=RANDOM(0..999)"
  run_wrk spec "/specs/$SAMPLE_SPEC"
  run_wrk job "/jobs/$((BIG_LOG_JOB - 1))"
)
RSS_AFTER_WRK=$(mem VmRSS)
HWM_AFTER_WRK=$(mem VmHWM)

echo "==> the ${LOG_MB} MB log (job $BIG_LOG_JOB, $BIG_LOG_LINES lines)"
sample_rss() { # sample VmRSS every 50 ms while $1 runs; prints the max in kB
  local pid=$1 max=0 v
  while kill -0 "$pid" 2>/dev/null; do
    v=$(mem VmRSS); [ "${v:-0}" -gt "$max" ] && max=$v
    sleep 0.05
  done
  echo "$max"
}
RSS_BEFORE_LOG=$(mem VmRSS)
page_t=$(curl -s -o "$WORK/job.html" -w '%{time_total}' "$BASE/jobs/$BIG_LOG_JOB")
page_bytes=$(wc -c < "$WORK/job.html")
first_t=$(curl -s -o /dev/null -w '%{time_total}' "$BASE/jobs/$BIG_LOG_JOB?from=0")
mid_t=$(curl -s -o /dev/null -w '%{time_total}' "$BASE/jobs/$BIG_LOG_JOB?from=$((BIG_LOG_LINES / 2))")
RSS_AFTER_PAGES=$(mem VmRSS)
curl -s -o "$WORK/raw.log" -w '%{time_total} %{size_download}\n' "$BASE/api/v1/jobs/$BIG_LOG_JOB/log" > "$WORK/raw.t" &
CURL_PID=$!
RAW_MAX_RSS=$(sample_rss $CURL_PID)
wait $CURL_PID
read -r raw_t raw_bytes < "$WORK/raw.t"
curl -s -H 'accept-encoding: gzip' -o /dev/null -w '%{time_total} %{size_download}\n' "$BASE/api/v1/jobs/$BIG_LOG_JOB/log" > "$WORK/rawgz.t" &
CURL_PID=$!
RAWGZ_MAX_RSS=$(sample_rss $CURL_PID)
wait $CURL_PID
read -r rawgz_t rawgz_bytes < "$WORK/rawgz.t"
curl -s -o /dev/null -w '%{time_total} %{size_download}\n' "$BASE/api/v1/jobs/$BIG_LOG_JOB/log" > "$WORK/raw2.t" &
CURL_PID=$!
RAW2_MAX_RSS=$(sample_rss $CURL_PID)
wait $CURL_PID
read -r raw2_t _ < "$WORK/raw2.t"
log_page_wrk=$(run_wrk bigjob "/jobs/$BIG_LOG_JOB" 2>/dev/null)
RSS_END=$(mem VmRSS)
HWM_END=$(mem VmHWM)
rm -f "$WORK/raw.log"

CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
NPROC=$(nproc)
{
  echo "## Dashboard ($SPECS specs, $((SPECS * JOBS_PER_SPEC)) jobs)"
  echo
  echo "\`scripts/bench-dashboard.sh\` on $(date -u +%Y-%m-%d): $CPU, $NPROC cores shared with the load generator (load average before the run: $LOAD), release build."
  echo "The store was written through \`kiln::store::Store\` by \`examples/populate_store.rs\` in ${POPULATE_S%.*} s ($DB_SIZE on disk):"
  echo "$SPECS specs, $JOBS_PER_SPEC revisions and jobs each, every job state represented, 1 % invalid and 2 % deleted specs."
  echo "\`kiln serve --no-build\` on an empty repository (nothing to sync), \`wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency\` on 127.0.0.1."
  echo
  echo "| page | req/s | p50 | p99 | non-2xx |"
  echo "|---|---:|---:|---:|---:|"
  echo "$ROWS"
  echo "$log_page_wrk"
  echo
  echo "* \`/\` (first page) is served from a 1-second page cache that is also dropped whenever the store changes; the random"
  echo "  \`?page=\` and \`?q=\` rows show the rendering path (1,000 different filters: almost every request renders)."
  echo "* Every list page renders 100 of $SPECS rows ($list_bytes bytes, $list_gzip gzip) from an in-memory index of all specs (status, image, revision) that"
  echo "  store change events invalidate (a rebuild reads every spec record and its current revision); building it took $(printf '%.0f' "$(echo "$cold_list * 1000" | bc)") ms on the first request (then $(printf '%.1f' "$(echo "$warm_list * 1000" | bc)") ms per page with curl)."
  echo "  Filtering (\`?q=\`) and paging scan that index, never the store."
  echo "* \`/specs/NAME\` reads the spec, its current revision and one page of its jobs from sled (no index)."
  echo "* \`/metrics\`: first scrape $(printf '%.0f' "$(echo "$cold_metrics * 1000" | bc)") ms (job counts and the build-duration histogram over all $((SPECS * JOBS_PER_SPEC)) jobs, cached until a job changes), then $(printf '%.1f' "$(echo "$warm_metrics * 1000" | bc)") ms."
  echo "* Server memory after the wrk runs: RSS $(mib "$RSS_AFTER_WRK") MiB (peak $(mib "$HWM_AFTER_WRK") MiB)."
  echo
  echo "### A ${LOG_MB} MB log ($BIG_LOG_LINES lines)"
  echo
  echo "| request | time | bytes | server RSS peak during it |"
  echo "|---|---:|---:|---:|"
  echo "| \`/jobs/$BIG_LOG_JOB\` (last 500 lines) | $(printf '%.1f' "$(echo "$page_t * 1000" | bc)") ms | $page_bytes | — |"
  echo "| \`/jobs/$BIG_LOG_JOB?from=0\` (first page) | $(printf '%.1f' "$(echo "$first_t * 1000" | bc)") ms | | |"
  echo "| \`/jobs/$BIG_LOG_JOB?from=$((BIG_LOG_LINES / 2))\` (middle page) | $(printf '%.1f' "$(echo "$mid_t * 1000" | bc)") ms | | |"
  echo "| \`/api/v1/jobs/$BIG_LOG_JOB/log\` (raw, streamed) | $(printf '%.2f' "$raw_t") s | $raw_bytes | $(mib "$RAW_MAX_RSS") MiB |"
  echo "| same, \`accept-encoding: gzip\` | $(printf '%.2f' "$rawgz_t") s | $rawgz_bytes | $(mib "$RAWGZ_MAX_RSS") MiB |"
  echo "| raw again (third full read) | $(printf '%.2f' "$raw2_t") s | | $(mib "$RAW2_MAX_RSS") MiB |"
  echo
  echo "Server RSS before the log requests: $(mib "$RSS_BEFORE_LOG") MiB; after the three page requests: $(mib "$RSS_AFTER_PAGES") MiB; after the raw downloads: $(mib "$RSS_END") MiB; peak over the whole run (VmHWM): $(mib "$HWM_END") MiB."
  echo "The page reads 500 lines with one sled range scan and the raw log streams 2,000-line pages, so"
  echo "neither holds the log in memory: the page requests leave the server's RSS where it was. The raw downloads read all"
  echo "$BIG_LOG_LINES lines through sled; the growth during the first full reads is sled's page cache (whose size accounting is"
  echo "approximate) and memory the allocator keeps for re-use, and it levels off: compare the last full read with the ones before."
} > "$OUT"
echo "==> wrote $OUT"
cat "$OUT"
