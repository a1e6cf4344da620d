#!/usr/bin/env bash
# Benchmark Kiln's builds against the real Docker Engine: overhead, log ingestion, layer cache,
# re-use and the worker queue. Takes ~25-40 min with the defaults on a 2-core machine.
#
#   scripts/bench-builds.sh [--runs R] [--parts "1 2 3 4 5 6"] [--log-mb M] [--specs N]
#                           [--no-build] [--out FILE] [--keep]
#
#   --runs R     repetitions of every measurement (default 3)
#   --parts P    which parts to run (default "1 2 3 4 5 6"; 3 and 4 always run together)
#   --log-mb M   size of the noisy build log in part 2, in MB (10^6 bytes; default 200)
#   --specs N    specs changed in one commit in part 5 (default 50)
#   --no-build   skip `cargo build --release` (use $KILN_BIN or target/release/kiln as is)
#   --out FILE   also write the Markdown summary to FILE
#   --keep       keep the work dir (repos, data dirs, logs; printed path)
#
# Needs root, scripts/dev-env.sh (run here: Docker Engine, registry 127.0.0.1:5000, base images),
# git, curl, jq, GNU time (installed when missing), network access to deb.debian.org and PyPI.
#
# Parts (every Kiln run: fresh data dir, max_attempts 1; no `registry` key = nothing pushed,
# except in part 6):
#   1  overhead: `kiln sync` vs `DOCKER_BUILDKIT=1 docker build --no-cache` (the Engine's
#      BuildKit, as Kiln builds) of the very Dockerfile `kiln render --ca-bundle` prints
#      (context: Dockerfile + the CA bundle as kiln-ca-bundle.crt); with $KILN_BEFORE_BIN also
#      that older Kiln's `kiln sync` (the classic builder before issue 14);
#      spec: bookworm-python, apt [curl, jq], pip [six==1.16.0], ca_bundle set. Every build is
#      uncached: each starts FROM its own fresh copy of the base (an ENV-only image with a
#      nonce, pushed to 127.0.0.1:5000: BuildKit keys a RUN by the layers below it and its
#      environment), so no earlier image of anyone can serve a cache hit. Cache mounts (apt
#      archives, pip wheels) are the Engine's and stay warm: that is what Kiln's builds get. Runs alternate which goes first.
#      Also times the pieces Kiln adds (base refresh pull, the package-listing container,
#      `kiln sync --no-build`) to explain the difference.
#   2  a M MB build log: a base image with `ONBUILD RUN seq …` (100-byte lines) that Kiln builds
#      FROM; wall time, MB/s, lines/s, peak RSS (GNU time + /proc sampling every 0.5 s), the
#      stored line count through the API, the data dir size; vs `docker build` of the same.
#   3  first build vs an edit of the pip list only (+ idna==3.7); "Using cache" on the apt step.
#   4  revert to the first content: wall time and the job's status (`reused`); a no-op sync.
#   6  part 1 with a registry, the normal set-up: `kiln sync` with `registry = 127.0.0.1:5000`
#      (builds, pushes rN-sha7 and latest; the package listing overlaps the push) vs
#      `docker build --no-cache` + `docker push` of the same two tags.
#   5  N specs (apt [jq] + a distinct pip pin each) in one commit, `kiln serve` with builds,
#      max_parallel_builds 1 and 2 (alternating order); the layers are cached by an untimed
#      warm-up pass, so this measures Kiln's per-job cost and the queue. /api/v1/specs is sampled
#      every 0.25 s for the number of running and queued jobs.
#
# Everything it creates is named kb<pid>-…: images kiln/kb<pid>-* and the bench bases
# 127.0.0.1:5000/kiln/bench-*:kb<pid>-* (manifests deleted from the registry again); servers it
# starts are stopped by pid; all of it on EXIT/INT/TERM. Wall times are measured by the shell
# clock around each process (ms). The machine is printed first: it may be shared, so compare
# medians of interleaved runs, not single numbers. The Engine may be shared too (a test suite
# restarting dockerd): every round waits until `docker info` answers, and a round in which
# anything failed is dropped, counted, and run again (at most 3 tries).
set -Eeuo pipefail

RUNS=3
PARTS="1 2 3 4 5 6"
LOG_MB=200
SPECS=50
BUILD=1
OUT=""
KEEP=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --runs) RUNS=$2; shift 2 ;;
    --parts) PARTS=$2; shift 2 ;;
    --log-mb) LOG_MB=$2; shift 2 ;;
    --specs) SPECS=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --out) OUT=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) sed -n '2,44p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
want() { [[ " $PARTS " == *" $1 "* ]]; }
if want 3 || want 4; then PARTS="$PARTS 3 4"; fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

REG=127.0.0.1:5000
MIN_BASE=$REG/kiln/bookworm:minbase
PY_BASE=$REG/kiln/bookworm-python:minbase
CA=/etc/ssl/certs/ca-certificates.crt
TAG=kb$$                       # prefix of every spec, image and tag this run creates
SYNC_TIMEOUT=${KILN_BENCH_TIMEOUT:-1800}  # seconds, any single kiln/docker process
# Kiln builds on the Engine's BuildKit; so do the comparison builds. /usr/bin/docker (Debian's
# 20.10 CLI) drives BuildKit without buildx; a newer CLI in PATH may not.
DOCKER_BK=/usr/bin/docker
BEFORE_BIN=${KILN_BEFORE_BIN:-}

say() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
now_ms() { date +%s%3N; }

for tool in docker git curl jq; do
  command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 2; }
done
if [[ ! -x /usr/bin/time ]]; then
  say "installing GNU time (Debian package 'time')"
  apt-get install -y time >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y time >/dev/null; }
fi

say "environment: scripts/dev-env.sh up"
bash "$ROOT/scripts/dev-env.sh" up >&2

if [[ $BUILD == 1 ]]; then
  cargo build --release --bin kiln >&2
fi
BIN=${KILN_BIN:-$ROOT/target/release/kiln}
[[ -x $BIN ]] || { echo "no kiln binary at $BIN" >&2; exit 2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/kiln-bench-builds.XXXXXX")
RESULTS=$WORK/results.tsv
: >"$RESULTS"
: >"$WORK/bases"
SERVERS=()

# --- cleanup -------------------------------------------------------------------------------

stop_pid() {  # stop_pid PID: TERM, wait up to 40 s (Kiln's shutdown grace is 30 s), then KILL
  local pid=$1 i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 400; i++)); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

registry_delete() {  # registry_delete REF: delete the manifest REF's tag points at (registry 5000)
  local ref=$1 repo tag digest
  repo=${ref#"$REG"/}; tag=${repo##*:}; repo=${repo%:*}
  digest=$(curl -sfI --max-time 10 \
      -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
      "http://$REG/v2/$repo/manifests/$tag" | tr -d '\r' |
    awk -F': ' 'tolower($1)=="docker-content-digest"{print $2}') || true
  [[ -n $digest ]] && curl -sf --max-time 10 -X DELETE "http://$REG/v2/$repo/manifests/$digest" >/dev/null || true
}

remove_images() {  # remove_images PATTERN: every local tag whose repo:tag matches the ERE
  local refs
  refs=$(docker images --format '{{.Repository}}:{{.Tag}}' | grep -E "$1" || true)
  [[ -z $refs ]] || xargs -r docker rmi -f <<<"$refs" >/dev/null 2>&1 || true
}

cleanup() {
  local rc=$? pid ref
  trap - EXIT INT TERM
  for pid in "${SERVERS[@]}"; do stop_pid "$pid"; done
  say "cleanup: images kiln/$TAG-* and the bench bases"
  remove_images "^kiln/$TAG-"
  if [[ -s $WORK/bases ]]; then
    while read -r ref; do
      registry_delete "$ref"
      docker rmi -f "$ref" >/dev/null 2>&1 || true
    done <"$WORK/bases"
  fi
  if [[ $KEEP == 1 ]]; then say "work dir kept: $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- helpers -------------------------------------------------------------------------------

REC=$RESULTS                   # where record() writes: the results, or the current round's buffer
ROUND_FAILED=0
record() { printf '%s\t%s\n' "$1" "$2" >>"$REC"; }

# The Engine is shared: another engineer's test suite may stop and restart dockerd (its
# tests/engine_down.rs does). Wait until it answers before each round.
wait_engine() {
  local i
  for ((i = 0; i < 600; i++)); do
    docker info >/dev/null 2>&1 && return 0
    ((i % 50)) || say "waiting for the Docker Engine to answer"
    sleep 1
  done
  echo "the Docker Engine did not answer for 10 min" >&2
  return 1
}

# round FN ARGS...: run one round; its results count only when nothing in it failed. A failed
# round (e.g. the Engine was restarted under it) is recorded as such and tried again, twice.
round() {
  local try
  for try in 1 2 3; do
    wait_engine
    : >"$WORK/round.tsv"
    REC=$WORK/round.tsv
    ROUND_FAILED=0
    "$@"
    REC=$RESULTS
    if ((ROUND_FAILED == 0)); then
      cat "$WORK/round.tsv" >>"$RESULTS"
      return 0
    fi
    record "$1.failed_rounds" 1
    say "$* failed (try $try of 3); its numbers are dropped"
  done
}

# stats: numbers on stdin -> "median min max n"
stats() {
  sort -g | awk '{a[NR]=$1} END {
    if (NR == 0) { print "- - - 0"; exit }
    m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
    print m, a[1], a[NR], NR }'
}
values() { awk -F'\t' -v k="$1" '$1 == k {print $2}' "$RESULTS"; }
median() { values "$1" | stats | cut -d' ' -f1; }

# timed VAR LOG CMD...: run CMD with stdout+stderr to LOG, wall ms into VAR; returns CMD's status
timed() {
  local __var=$1 __log=$2 __s __rc
  shift 2
  __s=$(now_ms)
  set +e
  "$@" >"$__log" 2>&1
  __rc=$?
  set -e
  printf -v "$__var" '%s' $(($(now_ms) - __s))
  return $__rc
}

free_port() {
  local p
  for p in $(shuf -i 20000-45000 -n 50); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return 0; fi
  done
  return 1
}

wait_http() {  # wait_http URL SECONDS
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    curl -sf --max-time 2 "$1" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "no answer from $1 after $2 s" >&2
  return 1
}

# start_serve VAR_PID VAR_URL LOG ARGS...: `kiln serve ARGS --listen 127.0.0.1:PORT` in the background
start_serve() {
  local __pidvar=$1 __urlvar=$2 __log=$3 __port __spid
  shift 3
  __port=$(free_port)
  timeout -k 10 "$SYNC_TIMEOUT" "$BIN" serve "$@" --listen "127.0.0.1:$__port" >"$__log" 2>&1 &
  __spid=$!
  SERVERS+=("$__spid")
  printf -v "$__pidvar" '%s' "$__spid"
  printf -v "$__urlvar" '%s' "http://127.0.0.1:$__port"
}
stop_serve() {
  local pid=$1 keep=() p
  stop_pid "$pid"
  for p in "${SERVERS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
  SERVERS=("${keep[@]}")
}
# inspect DATA_DIR REPO: a read-only `kiln serve --no-build` on a finished data dir; sets API
inspect_start() {
  start_serve INSPECT_PID API "$WORK/inspect.log" --repo "$2" --data-dir "$1" --no-build --no-watch --poll-interval 3600
  wait_http "$API/healthz" 30
}
inspect_stop() { stop_serve "$INSPECT_PID"; }

# fresh_base SRC KIND: an ENV-only child of SRC with a unique nonce, pushed to $REG; prints its
# ref. BuildKit keys a RUN by the layers below it and the command with its environment, so no
# RUN anyone ran before can be a cache hit for a build FROM it.
fresh_base() {
  local ref
  ref="$REG/kiln/bench-$2:$TAG-$(date +%s%N)-$RANDOM"
  printf 'FROM %s\nENV KILN_BENCH_NONCE="%s"\n' "$1" "$ref" |
    DOCKER_BUILDKIT=0 docker build -q -t "$ref" - >/dev/null 2>&1
  echo "$ref" >>"$WORK/bases"
  docker push "$ref" >/dev/null
  echo "$ref"
}

# noisy_base LINES: FROM bookworm:minbase, ONBUILD RUN seq … -> LINES lines of 100 bytes each
noisy_base() {
  local ref pad
  ref="$REG/kiln/bench-noisy:onbuild-$TAG-$(date +%s%N)-$RANDOM"
  pad=$(printf 'x%.0s' {1..82})   # "noisy " + 10 digits + " " + 82 + "\n" = 100 bytes
  printf 'FROM %s\nLABEL io.kiln.bench.nonce="%s"\nENV KILN_BENCH_NONCE="%s"\nONBUILD RUN seq -f "noisy %%010.0f %s" 1 %d\n' \
    "$MIN_BASE" "$ref" "$ref" "$pad" "$1" | DOCKER_BUILDKIT=0 docker build -q -t "$ref" - >/dev/null 2>&1
  echo "$ref" >>"$WORK/bases"
  docker push "$ref" >/dev/null
  echo "$ref"
}

drop_base() { registry_delete "$1"; docker rmi -f "$1" >/dev/null 2>&1 || true; }

git_commit() {  # git_commit DIR MESSAGE
  git -C "$1" add -A
  git -C "$1" -c user.name=bench -c user.email=bench@localhost commit -qm "$2"
}
new_repo() { rm -rf "$1"; mkdir -p "$1"; git -C "$1" init -q -b main; }

# spec_yaml NAME BASE APT PIP (APT/PIP: flow lists like "[curl, jq]" or "")
spec_yaml() {
  printf 'name: %s\nbaseImage: %s\n' "$1" "$2"
  if [[ -n $3$4 ]]; then
    printf 'packages:\n'
    [[ -z $3 ]] || printf '  apt: %s\n' "$3"
    [[ -z $4 ]] || printf '  pip: %s\n' "$4"
  fi
}

config() {  # config FILE PARALLEL CA(0|1)
  {
    [[ $3 == 1 ]] && printf 'ca_bundle = "%s"\n' "$CA"
    printf 'max_parallel_builds = %s\nmax_attempts = 1\nbuild_timeout = %s\n' "$2" "$SYNC_TIMEOUT"
  } >"$1"
}

kiln_sync() {  # kiln_sync VAR LOG CONFIG REPO DATA [more flags]
  local __v=$1 log=$2 cfg=$3 repo=$4 data=$5
  shift 5
  timed "$__v" "$log" timeout -k 10 "$SYNC_TIMEOUT" "$BIN" sync --config "$cfg" --repo "$repo" --data-dir "$data" --no-watch "$@"
}

fail_note() {  # fail_note WHAT LOG: the round failed
  ROUND_FAILED=1
  say "FAILED: $1 (last lines of $2):"
  tail -n 15 "$2" >&2 || true
}

descendant_named() {  # descendant_named PID COMM: first descendant of PID named COMM
  local frontier=("$1") next p c
  for _ in 1 2 3 4; do
    next=()
    for p in "${frontier[@]}"; do
      for c in $(ps -o pid= --ppid "$p" 2>/dev/null); do
        [[ $(cat "/proc/$c/comm" 2>/dev/null) == "$2" ]] && { echo "$c"; return 0; }
        next+=("$c")
      done
    done
    ((${#next[@]})) || return 1
    frontier=("${next[@]}")
  done
  return 1
}

sec() { awk -v ms="$1" 'BEGIN {printf "%.1f", ms / 1000}'; }

# --- machine -------------------------------------------------------------------------------

{
  echo "== machine"
  echo "date:     $(date -u +%FT%TZ)"
  echo "nproc:    $(nproc)"
  echo "cpu:      $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "memory:   $(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
  echo "kernel:   $(uname -r)"
  echo "engine:   Docker $(docker version --format '{{.Server.Version}}') ($(docker info --format '{{.Driver}}' 2>/dev/null), builds on its BuildKit)"
  echo "kiln:     $BIN ($("$BIN" --version), sha256 $(sha256sum "$BIN" | cut -c1-12)); repo HEAD $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')${KILN_BIN:+ (KILN_BIN given: the binary may be from another commit)}"
  echo "load avg: $(cut -d' ' -f1-3 /proc/loadavg) (at start)"
  echo "runs:     $RUNS, parts: $PARTS, log: $LOG_MB MB, specs: $SPECS"
} | tee "$WORK/machine.txt" >&2

CFG_CA=$WORK/kiln-ca.toml
CFG_PLAIN=$WORK/kiln-plain.toml
config "$CFG_CA" 2 1
config "$CFG_PLAIN" 2 0

# --- parts 1 and 6: overhead vs docker build (6: with a registry, both push) ---------------

CFG_PUSH=$WORK/kiln-push.toml
{ cat "$CFG_CA"; printf 'registry = "%s"\n' "$REG"; } >"$CFG_PUSH"

overhead_kiln() {  # overhead_kiln PART ROUND DIR BASE
  local p=$1 i=$2 dir=$3 base=$4 name=$TAG-p$1k$2 t cfg=$CFG_CA what="kiln sync"
  new_repo "$dir/repo"
  spec_yaml "$name" "$base" "[curl, jq]" "[six==1.16.0]" >"$dir/repo/$name.yaml"
  git_commit "$dir/repo" "p$p round $i"
  if [[ $p == 6 ]]; then
    cfg=$CFG_PUSH what="kiln sync + push"
    printf '%s\n' "$REG/$name:r1-$(git -C "$dir/repo" rev-parse --short=7 HEAD)" "$REG/$name:latest" >>"$WORK/bases"
  fi
  if kiln_sync t "$dir/kiln.log" "$cfg" "$dir/repo" "$dir/data"; then
    record "p$p.kiln_ms" "$t"; say "p$p round $i: $what $(sec "$t") s"
  else
    fail_note "p$p kiln sync round $i" "$dir/kiln.log"
  fi
}

overhead_docker() {  # overhead_docker PART ROUND DIR BASE
  local p=$1 i=$2 dir=$3 base=$4 name=$TAG-p$1d$2 t img what="docker build"
  mkdir -p "$dir/ctx"
  spec_yaml "$name" "$base" "[curl, jq]" "[six==1.16.0]" >"$dir/$name.yaml"
  "$BIN" render --ca-bundle "$dir/$name.yaml" >"$dir/ctx/Dockerfile"
  cp "$CA" "$dir/ctx/kiln-ca-bundle.crt"
  local cmd=(env DOCKER_BUILDKIT=1 "$DOCKER_BK" build --progress=plain --no-cache -t "kiln/$name:bench" "$dir/ctx")
  if [[ $p == 6 ]]; then
    img=$REG/$name what="docker build + push"
    printf '%s\n' "$img:r1" "$img:latest" >>"$WORK/bases"
    cmd=(sh -c 'DOCKER_BUILDKIT=1 "$3" build --progress=plain --no-cache -t "$1:r1" -t "$1:latest" "$2" && docker push "$1:r1" && docker push "$1:latest"' sh "$img" "$dir/ctx" "$DOCKER_BK")
  fi
  if timed t "$dir/docker.log" timeout -k 10 "$SYNC_TIMEOUT" "${cmd[@]}"; then
    record "p$p.docker_ms" "$t"; say "p$p round $i: $what $(sec "$t") s"
  else
    fail_note "p$p $what round $i" "$dir/docker.log"
  fi
}

# What Kiln does besides the build, timed separately with the docker CLI (approximations: the
# CLI adds its own start-up of ~0.1 s per command).
part1_pieces() {  # part1_pieces ROUND DIR BASE
  local i=$1 dir=$2 base=$3 img t
  img=$(docker images --format '{{.Repository}}:{{.Tag}}' | grep -m1 -E "^kiln/$TAG-p1k$i:r") || return 0
  timed t "$dir/pull.log" docker pull "$base" && record p1.pull_refresh_ms "$t"
  local s
  s=$(now_ms)
  # The one listing container Kiln runs (Workers::list_installed): dpkg, pip via importlib.metadata, conda.
  docker run --rm --network none "$img" sh -c "dpkg-query -W >/dev/null 2>&1; python3 -c 'import importlib.metadata as m; [d.version for d in m.distributions()]' >/dev/null 2>&1; command -v conda >/dev/null && conda list --export >/dev/null 2>&1; exit 0" || true
  record p1.probes_ms $(($(now_ms) - s))
  if kiln_sync t "$dir/nobuild.log" "$CFG_CA" "$dir/repo" "$dir/data-nobuild" --no-build; then
    record p1.sync_nobuild_ms "$t"
  fi
}

# The older Kiln given as $KILN_BEFORE_BIN (classic builder), same spec, its own fresh base.
overhead_before() {  # overhead_before ROUND DIR BASE
  local i=$1 dir=$2 base=$3 name=$TAG-p1b$1 t
  new_repo "$dir/repo-before"
  spec_yaml "$name" "$base" "[curl, jq]" "[six==1.16.0]" >"$dir/repo-before/$name.yaml"
  git_commit "$dir/repo-before" "p1 before round $i"
  if timed t "$dir/before.log" timeout -k 10 "$SYNC_TIMEOUT" "$BEFORE_BIN" sync --config "$CFG_CA" \
    --repo "$dir/repo-before" --data-dir "$dir/data-before" --no-watch; then
    record p1.before_ms "$t"; say "p1 round $i: older kiln sync (classic) $(sec "$t") s"
  else
    fail_note "p1 older kiln sync round $i" "$dir/before.log"
  fi
}

overhead_round() {  # overhead_round PART ROUND
  local p=$1 i=$2 dir=$WORK/p$1-$2 bk bd bb=""
  rm -rf "$dir"
  mkdir -p "$dir"
  bk=$(fresh_base "$PY_BASE" py)
  bd=$(fresh_base "$PY_BASE" py)
  if [[ $p == 1 && -n $BEFORE_BIN ]]; then bb=$(fresh_base "$PY_BASE" py); fi
  if ((i % 2)); then
    overhead_kiln "$p" "$i" "$dir" "$bk"; overhead_docker "$p" "$i" "$dir" "$bd"
    [[ -n $bb ]] && overhead_before "$i" "$dir" "$bb"
  else
    [[ -n $bb ]] && overhead_before "$i" "$dir" "$bb"
    overhead_docker "$p" "$i" "$dir" "$bd"; overhead_kiln "$p" "$i" "$dir" "$bk"
  fi
  if [[ -n $bb ]]; then remove_images "^kiln/$TAG-p1b$i:"; drop_base "$bb"; rm -rf "$dir/data-before"; fi
  [[ $p == 1 ]] && part1_pieces "$i" "$dir" "$bk"
  remove_images "^kiln/$TAG-p$p[kd]$i:|^$REG/$TAG-p$p[kd]$i:"
  drop_base "$bk"; drop_base "$bd"
  rm -rf "$dir/data" "$dir/data-nobuild"
}
part1() {
  say "== part 1: kiln sync vs docker build --no-cache ($RUNS rounds, alternating order)"
  local i
  for ((i = 1; i <= RUNS; i++)); do round overhead_round 1 "$i"; done
}
part6() {
  say "== part 6: kiln sync with a registry vs docker build --no-cache + docker push ($RUNS rounds)"
  local i
  for ((i = 1; i <= RUNS; i++)); do round overhead_round 6 "$i"; done
}

# --- part 2: a big build log ---------------------------------------------------------------

part2_kiln() {  # part2_kiln ROUND DIR BASE
  local i=$1 dir=$2 base=$3 name=$TAG-noisy$1 pid kpid s t rc maxrss
  new_repo "$dir/repo"
  spec_yaml "$name" "$base" "" "" >"$dir/repo/$name.yaml"
  git_commit "$dir/repo" "p2 round $i"
  : >"$dir/rss.txt"
  s=$(now_ms)
  /usr/bin/time -v -o "$dir/time.txt" timeout -k 10 "$SYNC_TIMEOUT" "$BIN" sync --config "$CFG_PLAIN" \
    --repo "$dir/repo" --data-dir "$dir/data" --no-watch >"$dir/kiln.log" 2>&1 &
  pid=$!
  SERVERS+=("$pid")
  kpid=""
  for _ in $(seq 50); do kpid=$(descendant_named "$pid" kiln) && break; sleep 0.1; done
  # Sample Kiln's RSS every 0.5 s, and note when the Engine is done producing the log: the
  # build container of the ONBUILD RUN step carries the base's nonce label and is the first
  # container with it; it exits when `seq` has written its last line and the Engine has
  # handed that line to its client (Kiln reads the stream eagerly).
  local engine_done="" engine_rss="" seen=0 now rss
  if [[ -n $kpid ]]; then
    while [[ -r /proc/$kpid/status ]]; do
      now=$(($(now_ms) - s))
      rss=$(awk '/^VmRSS/{print $2}' "/proc/$kpid/status" 2>/dev/null) || break
      [[ -n $rss ]] || break
      echo "$now $rss" >>"$dir/rss.txt"
      if [[ -z $engine_done ]]; then
        if [[ -n $(docker ps -q --filter "label=io.kiln.bench.nonce=$base" 2>/dev/null) ]]; then
          seen=1
        elif ((seen)); then
          engine_done=$now; engine_rss=$rss
        fi
      fi
      sleep 0.5
    done
  fi
  set +e; wait "$pid"; rc=$?; set -e
  t=$(($(now_ms) - s))
  stop_serve "$pid"
  if [[ $rc != 0 ]]; then
    fail_note "p2 kiln sync round $i" "$dir/kiln.log"; return 0
  fi
  maxrss=$(awk -F': ' '/Maximum resident set size/{print $2}' "$dir/time.txt")
  record p2.kiln_ms "$t"
  record p2.kiln_maxrss_kb "$maxrss"
  [[ -z $engine_done ]] || { record p2.engine_done_ms "$engine_done"; record p2.rss_at_engine_done_kb "$engine_rss"; }
  # CPU time (user + sys) of Kiln, and what it wrote to disk (GNU time: 512-byte blocks)
  record p2.kiln_cpu_ms "$(awk -F': ' '/User time|System time/ {s += $2} END {printf "%d", s * 1000}' "$dir/time.txt")"
  record p2.kiln_written_bytes "$(awk -F': ' '/File system outputs/ {print $2 * 512}' "$dir/time.txt")"
  # RSS profile: the sample at 25/50/75 % of the run and the last one, to see whether it is flat
  record p2.rss_profile "$(awk '{r[NR]=$2} END {if (NR) printf "%d/%d/%d/%d MiB", r[int(NR*.25)+1]/1024, r[int(NR*.5)+1]/1024, r[int(NR*.75)+1]/1024, r[NR]/1024}' "$dir/rss.txt")"
  say "p2 round $i: kiln sync $(sec "$t") s, max RSS $((maxrss / 1024)) MB; the Engine was done after ${engine_done:-?} ms (Kiln RSS then $((${engine_rss:-0} / 1024)) MB)"

  inspect_start "$dir/data" "$dir/repo"
  local id lines counts s2 l n k b
  id=$(curl -sf "$API/api/v1/specs/$name/jobs" | jq '.[0].id')
  lines=$(curl -sf "$API/api/v1/jobs/$id" | jq '.log_lines')
  s2=$(now_ms)
  counts=$(curl -sf --max-time 900 "$API/api/v1/jobs/$id/log" |
    LC_ALL=C awk '/^noisy /{n++} /^kiln:/{k++} {l++; b += length($0) + 1} END {print l+0, n+0, k+0, b+0}')
  record p2.api_log_ms $(($(now_ms) - s2))
  local spid
  spid=$(descendant_named "$INSPECT_PID" kiln) &&
    record p2.serve_hwm_kb "$(awk '/^VmHWM/{print $2}' "/proc/$spid/status")"
  inspect_stop
  read -r l n k b <<<"$counts"
  record p2.log_lines_api "$lines"
  record p2.log_lines_streamed "$l"
  record p2.noisy_lines "$n"
  record p2.kiln_lines "$k"
  record p2.log_bytes "$b"
  record p2.data_dir_bytes "$(du -sb "$dir/data" | cut -f1)"
  say "p2 round $i: API log_lines=$lines, streamed $l lines ($n noisy, $k kiln:), $((b / 1000000)) MB; data dir $(du -sh "$dir/data" | cut -f1)"
}

part2_docker() {  # part2_docker ROUND DIR BASE
  local i=$1 dir=$2 base=$3 name=$TAG-noisyd$1 t
  mkdir -p "$dir/ctx"
  spec_yaml "$name" "$base" "" "" >"$dir/$name.yaml"
  "$BIN" render "$dir/$name.yaml" >"$dir/ctx/Dockerfile"
  if timed t "$dir/docker.log" timeout -k 10 "$SYNC_TIMEOUT" env DOCKER_BUILDKIT=1 "$DOCKER_BK" build --progress=plain --no-cache -t "kiln/$name:bench" "$dir/ctx"; then
    record p2.docker_ms "$t"
    record p2.docker_out_bytes "$(stat -c %s "$dir/docker.log")"
    say "p2 round $i: docker build $(sec "$t") s, $(($(stat -c %s "$dir/docker.log") / 1000000)) MB of output"
  else
    fail_note "p2 docker build round $i" "$dir/docker.log"
  fi
  rm -f "$dir/docker.log"
}

part2_round() {
  local i=$1 dir=$WORK/p2-$1 lines=$((LOG_MB * 10000)) bk bd
  rm -rf "$dir"
  mkdir -p "$dir"
  bk=$(noisy_base "$lines")
  bd=$(noisy_base "$lines")
  if ((i % 2)); then
    part2_kiln "$i" "$dir" "$bk"; part2_docker "$i" "$dir" "$bd"
  else
    part2_docker "$i" "$dir" "$bd"; part2_kiln "$i" "$dir" "$bk"
  fi
  remove_images "^kiln/$TAG-noisyd?$i:"
  drop_base "$bk"; drop_base "$bd"
  rm -rf "$dir/data"
}
part2() {
  say "== part 2: a $LOG_MB MB build log ($((LOG_MB * 10000)) lines of 100 bytes) ($RUNS rounds, alternating order)"
  local i
  for ((i = 1; i <= RUNS; i++)); do round part2_round "$i"; done
}

# --- parts 3 + 4: pip-only edit, revert ----------------------------------------------------

part34_round() {
  local i=$1 dir=$WORK/p3-$1 base name t
  rm -rf "$dir"
  mkdir -p "$dir"
  base=$(fresh_base "$PY_BASE" py)
  name=$TAG-edit$i
  new_repo "$dir/repo"
  spec_yaml "$name" "$base" "[curl, jq]" "[six==1.16.0]" >"$dir/repo/$name.yaml"
  git_commit "$dir/repo" "first"
  if ! kiln_sync t "$dir/1.log" "$CFG_CA" "$dir/repo" "$dir/data"; then
    fail_note "p3 first build round $i" "$dir/1.log"; drop_base "$base"; return 0
  fi
  record p3.first_ms "$t"; local first=$t
  spec_yaml "$name" "$base" "[curl, jq]" "[six==1.16.0, idna==3.7]" >"$dir/repo/$name.yaml"
  git_commit "$dir/repo" "pip: + idna==3.7"
  if kiln_sync t "$dir/2.log" "$CFG_CA" "$dir/repo" "$dir/data"; then
    record p3.edit_ms "$t"
    record p3.ratio "$(awk -v a="$t" -v b="$first" 'BEGIN {printf "%.3f", a / b}')"
  else
    fail_note "p3 edit build round $i" "$dir/2.log"
  fi
  local edit=$t
  spec_yaml "$name" "$base" "[curl, jq]" "[six==1.16.0]" >"$dir/repo/$name.yaml"
  git_commit "$dir/repo" "revert the pip edit"
  if kiln_sync t "$dir/3.log" "$CFG_CA" "$dir/repo" "$dir/data"; then record p4.reuse_ms "$t"; else fail_note "p4 revert round $i" "$dir/3.log"; fi
  local reuse=$t
  if kiln_sync t "$dir/4.log" "$CFG_CA" "$dir/repo" "$dir/data"; then record p4.noop_ms "$t"; else fail_note "p4 no-op round $i" "$dir/4.log"; fi
  say "p3/4 round $i: first $(sec "$first") s, pip edit $(sec "$edit") s, revert $(sec "$reuse") s, no-op $(sec "$t") s"

  inspect_start "$dir/data" "$dir/repo"
  curl -sf "$API/api/v1/specs/$name/jobs" >"$dir/jobs.json"
  local id2 statuses cached
  statuses=$(jq -r '[.[] | "\(.id):\(.status)"] | join(" ")' "$dir/jobs.json")
  record p4.statuses "$statuses"
  record p4.newest_status "$(jq -r '.[0].status' "$dir/jobs.json")"
  id2=$(jq -r '.[] | select(.revision == 2) | .id' "$dir/jobs.json")
  curl -sf --max-time 60 "$API/api/v1/jobs/$id2/log" >"$dir/job2.log"
  inspect_stop
  # BuildKit's verdict on the apt and the pip step (`#N CACHED`), and whether pip downloaded
  # six again (it must come from the Engine's wheel cache) and idna (new unless cached earlier)
  cached=$(awk '/^#[0-9]+ \[.*\] RUN .*apt-get/{a=$1} /^#[0-9]+ \[.*\] RUN .*pip install/{p=$1} {c[$0]=1} /Downloading six-/{s=1} /Downloading idna-/{d=1} END {print (c[a " CACHED"] ? "apt=cached" : "apt=NOT-cached"), (c[p " CACHED"] ? "pip=cached" : "pip=rebuilt"), (s ? "six=downloaded" : "six=from-wheel-cache"), (d ? "idna=downloaded" : "idna=from-wheel-cache")}' "$dir/job2.log")
  record p3.cache "$cached"
  say "p3/4 round $i: jobs $statuses; edit build: $cached"
  remove_images "^kiln/$name:"
  drop_base "$base"
  rm -rf "$dir/data"
}
part34() {
  say "== parts 3+4: first build, pip-only edit, revert (re-use), no-op ($RUNS rounds)"
  local i
  for ((i = 1; i <= RUNS; i++)); do round part34_round "$i"; done
}

# --- part 5: many specs in one commit, the queue -------------------------------------------

# Small pure-Python distributions without dependencies, one pin per spec.
PINS=(six==1.10.0 six==1.11.0 six==1.12.0 six==1.13.0 six==1.14.0 six==1.15.0 six==1.16.0 six==1.17.0
  idna==2.5 idna==2.6 idna==2.7 idna==2.8 idna==2.9 idna==2.10 idna==3.0 idna==3.1 idna==3.2 idna==3.3
  idna==3.4 idna==3.5 idna==3.6 idna==3.7 idna==3.8 idna==3.9 idna==3.10
  attrs==19.1.0 attrs==19.2.0 attrs==19.3.0 attrs==20.1.0 attrs==20.2.0 attrs==20.3.0 attrs==21.1.0
  attrs==21.2.0 attrs==21.3.0 attrs==21.4.0 attrs==22.1.0 attrs==22.2.0 attrs==23.1.0 attrs==23.2.0
  attrs==24.1.0 attrs==24.2.0 attrs==24.3.0 attrs==25.1.0 attrs==25.2.0 attrs==25.3.0
  toml==0.10.0 toml==0.10.1 toml==0.10.2 tomli==2.0.1 tomli==2.2.1)

part5_specs() {  # part5_specs DIR BASE
  local j name
  for ((j = 0; j < SPECS; j++)); do
    name=$(printf '%s-m%03d' "$TAG" "$j")
    spec_yaml "$name" "$2" "[jq]" "[${PINS[j % ${#PINS[@]}]}]" >"$1/$name.yaml"
  done
}

part5_run() {  # part5_run ROUND PARALLEL BASE
  local i=$1 p=$2 base=$3 dir=$WORK/p5-$1-p$2 pid api s now line done_n=0 failed_n=0 deadline j
  mkdir -p "$dir"
  new_repo "$dir/repo"
  part5_specs "$dir/repo" "$base"
  git_commit "$dir/repo" "$SPECS specs, round $i, parallel $p"
  config "$dir/kiln.toml" "$p" 1
  : >"$dir/samples.txt"
  s=$(now_ms)
  start_serve pid api "$dir/serve.log" --config "$dir/kiln.toml" --repo "$dir/repo" \
    --data-dir "$dir/data" --no-watch --poll-interval 3600
  deadline=$((s + SYNC_TIMEOUT * 1000))
  while :; do
    now=$(now_ms)
    line=$(curl -sf --max-time 5 "$api/api/v1/specs" 2>/dev/null | jq -r --arg p "$TAG-m" '
      [.[] | select(.name | startswith($p)) | .status] |
      "\(map(select(. == "running")) | length) \(map(select(. == "queued")) | length) \(map(select(. == "succeeded" or . == "reused")) | length) \(map(select(. == "failed" or . == "cancelled")) | length)"' 2>/dev/null) || line=""
    if [[ -n $line ]]; then
      echo "$((now - s)) $line" >>"$dir/samples.txt"
      read -r _ _ done_n failed_n <<<"$line"
      ((done_n + failed_n >= SPECS)) && break
    fi
    ((now < deadline)) || { say "p5: timed out"; break; }
    kill -0 "$pid" 2>/dev/null || { say "p5: kiln serve exited"; tail -n 20 "$dir/serve.log" >&2; break; }
    sleep 0.25
  done
  local wall=$(($(now_ms) - s))
  # per-job start/finish (second resolution) for the makespan and the mean job duration
  for ((j = 0; j < SPECS; j++)); do
    curl -sf --max-time 5 "$api/api/v1/specs/$(printf '%s-m%03d' "$TAG" "$j")/jobs" | jq -c '.[0]'
  done >"$dir/jobs.jsonl" 2>/dev/null || true
  stop_serve "$pid"
  [[ $failed_n == 0 && $done_n == "$SPECS" ]] || { ROUND_FAILED=1; say "p5: $done_n of $SPECS jobs succeeded, $failed_n failed"; }
  record "p5.p$p.wall_ms" "$wall"
  # samples: t running queued done failed
  record "p5.p$p.max_running" "$(awk 'BEGIN{m=0} $2>m{m=$2} END{print m}' "$dir/samples.txt")"
  # time-weighted mean of running jobs while work was left, and the share of that time in
  # which a worker slot was free although jobs were queued
  record "p5.p$p.mean_running" "$(awk -v P="$p" 'NR>1 && (pq+pr)>0 {dt=$1-pt; busy+=dt; run+=pr*dt; if (pq>0 && pr<P) idle+=dt}
      {pt=$1; pr=$2; pq=$3} END {printf "%.2f", busy ? run/busy : 0}' "$dir/samples.txt")"
  record "p5.p$p.idle_slot_share" "$(awk -v P="$p" 'NR>1 && (pq+pr)>0 {dt=$1-pt; busy+=dt; if (pq>0 && pr<P) idle+=dt}
      {pt=$1; pr=$2; pq=$3} END {printf "%.3f", busy ? idle/busy : 0}' "$dir/samples.txt")"
  record "p5.p$p.job_median_s" "$(jq -r 'select(.started_at and .finished_at) | ((.finished_at | fromdateiso8601) - (.started_at | fromdateiso8601))' "$dir/jobs.jsonl" | stats | cut -d' ' -f1)"
  record "p5.p$p.makespan_s" "$(jq -s -r '[.[] | select(.started_at and .finished_at)] | if length == 0 then 0 else ((map(.finished_at | fromdateiso8601) | max) - (map(.started_at | fromdateiso8601) | min)) end' "$dir/jobs.jsonl")"
  say "p5 round $i parallel $p: $(sec "$wall") s for $SPECS specs, max running $(awk 'BEGIN{m=0} $2>m{m=$2} END{print m}' "$dir/samples.txt"), $failed_n failed"
  rm -rf "$dir/data"
}

part5_warmup() {  # part5_warmup BASE
  local base=$1 t dir=$WORK/p5-warm
  rm -rf "$dir"
  mkdir -p "$dir"
  new_repo "$dir/repo"
  part5_specs "$dir/repo" "$base"
  git_commit "$dir/repo" "warm-up"
  config "$dir/kiln.toml" 2 1
  say "p5: warm-up pass (uncached pip layers, parallel 2)"
  if kiln_sync t "$dir/kiln.log" "$dir/kiln.toml" "$dir/repo" "$dir/data"; then
    record p5.warmup_ms "$t"
  else
    fail_note "p5 warm-up" "$dir/kiln.log"
  fi
  say "p5: warm-up $(sec "$t") s"
  rm -rf "$dir/data"
}
part5() {
  say "== part 5: $SPECS specs in one commit, max_parallel_builds 1 and 2 ($RUNS rounds each)"
  local base i
  base=$(fresh_base "$PY_BASE" py)
  round part5_warmup "$base"
  for ((i = 1; i <= RUNS; i++)); do
    if ((i % 2)); then round part5_run "$i" 1 "$base"; round part5_run "$i" 2 "$base"
    else round part5_run "$i" 2 "$base"; round part5_run "$i" 1 "$base"; fi
  done
  remove_images "^kiln/$TAG-m[0-9]+:"
  drop_base "$base"
}

want 1 && part1
want 6 && part6
want 2 && part2
want 3 && part34
want 5 && part5

# --- summary -------------------------------------------------------------------------------

row() {  # row LABEL KEY [unit: s|MB|x|raw]
  local st m lo hi n
  st=$(values "$2" | stats); read -r m lo hi n <<<"$st"
  case ${3:-s} in
    s) [[ $n == 0 ]] || { m=$(sec "$m"); lo=$(sec "$lo"); hi=$(sec "$hi"); } ;;
    MB) [[ $n == 0 ]] || { m=$(awk -v v="$m" 'BEGIN{printf "%.1f", v/1024}'); lo=$(awk -v v="$lo" 'BEGIN{printf "%.1f", v/1024}'); hi=$(awk -v v="$hi" 'BEGIN{printf "%.1f", v/1024}'); } ;;
  esac
  printf '| %s | %s | %s – %s | %s |\n' "$1" "$m" "$lo" "$hi" "$n"
}
ratio() { awk -v a="$(median "$1")" -v b="$(median "$2")" 'BEGIN {if (b > 0) printf "%.3f", a / b; else print "-"}'; }

{
  echo "### Build benchmarks (scripts/bench-builds.sh)"
  echo
  sed 's/^/    /' "$WORK/machine.txt"
  echo "    load avg: $(cut -d' ' -f1-3 /proc/loadavg) (at end)"
  echo
  echo "| measurement | median | min – max | n |"
  echo "|---|---|---|---|"
  if want 1; then
    row "1. \`kiln sync\`, uncached build (s)" p1.kiln_ms
    row "1. \`DOCKER_BUILDKIT=1 docker build --no-cache\`, same Dockerfile (s)" p1.docker_ms
    echo "| 1. ratio of medians kiln / docker | $(ratio p1.kiln_ms p1.docker_ms) | | |"
    if [[ -n $BEFORE_BIN ]]; then
      row "1. older \`kiln sync\` (classic builder, $BEFORE_BIN) (s)" p1.before_ms
      echo "| 1. ratio of medians kiln / older kiln | $(ratio p1.kiln_ms p1.before_ms) | | |"
    fi
    row "1. piece: base refresh \`docker pull\` (s)" p1.pull_refresh_ms
    row "1. piece: the package-listing container (s)" p1.probes_ms
    row "1. piece: \`kiln sync --no-build\` (s)" p1.sync_nobuild_ms
  fi
  if want 6; then
    row "6. \`kiln sync\` with a registry: build + push 2 tags (s)" p6.kiln_ms
    row "6. \`docker build --no-cache\` + \`docker push\` of 2 tags (s)" p6.docker_ms
    echo "| 6. ratio of medians kiln / docker | $(ratio p6.kiln_ms p6.docker_ms) | | |"
  fi
  if want 2; then
    row "2. \`kiln sync\`, $LOG_MB MB log (s)" p2.kiln_ms
    row "2. \`docker build\`, same log to a file (s)" p2.docker_ms
    echo "| 2. kiln ingestion (MB/s, median run) | $(awk -v b="$(median p2.log_bytes)" -v t="$(median p2.kiln_ms)" 'BEGIN{printf "%.1f", b/1e6/(t/1000)}') | | |"
    echo "| 2. kiln ingestion (lines/s, median run) | $(awk -v l="$(median p2.log_lines_api)" -v t="$(median p2.kiln_ms)" 'BEGIN{printf "%.0f", l/(t/1000)}') | | |"
    row "2. the Engine done producing the log, after (s)" p2.engine_done_ms
    row "2. kiln RSS when the Engine was done (MiB)" p2.rss_at_engine_done_kb MB
    row "2. kiln peak RSS (MiB)" p2.kiln_maxrss_kb MB
    row "2. kiln CPU time, user + sys (s)" p2.kiln_cpu_ms
    echo "| 2. kiln disk writes during the build (MB, median run) | $(awk -v b="$(median p2.kiln_written_bytes)" 'BEGIN{printf "%.0f", b/1e6}') | | |"
    echo "| 2. RSS at 25/50/75/100 % of the run | $(values p2.rss_profile | paste -sd';' | sed 's/;/; /g') | | |"
    row "2. stored log lines (API log_lines)" p2.log_lines_api raw
    row "2. streamed log lines (GET …/log)" p2.log_lines_streamed raw
    row "2. GET …/log of the whole log (s)" p2.api_log_ms
    row "2. \`kiln serve --no-build\` peak RSS after that GET (MiB)" p2.serve_hwm_kb MB
    echo "| 2. data dir after the build (MB) | $(awk -v b="$(median p2.data_dir_bytes)" 'BEGIN{printf "%.0f", b/1e6}') | | |"
  fi
  if want 3; then
    row "3. first build (s)" p3.first_ms
    row "3. pip-only edit rebuild (s)" p3.edit_ms
    row "3. ratio edit / first (per round)" p3.ratio raw
    echo "| 3. layer cache on the edit build | $(values p3.cache | sort | uniq -c | awk '{c=$1; $1=""; printf "%s×%s; ", c, $0}') | | |"
    row "4. revert to built content, \`kiln sync\` (s)" p4.reuse_ms
    echo "| 4. newest job status after the revert | $(values p4.newest_status | sort | uniq -c | awk '{printf "%s×%s; ", $1, $2}') | | |"
    row "4. no-op \`kiln sync\` (nothing new) (s)" p4.noop_ms
  fi
  if want 5; then
    row "5. warm-up: $SPECS specs uncached, parallel 2, \`kiln sync\` (s)" p5.warmup_ms
    for p in 1 2; do
      row "5. $SPECS specs, max_parallel_builds $p, \`kiln serve\` wall (s)" "p5.p$p.wall_ms"
      row "5. p=$p makespan from API timestamps (s)" "p5.p$p.makespan_s" raw
      row "5. p=$p median job duration (s, 1 s resolution)" "p5.p$p.job_median_s" raw
      row "5. p=$p max jobs running at once (sampled 4/s)" "p5.p$p.max_running" raw
      row "5. p=$p mean jobs running while work was left" "p5.p$p.mean_running" raw
      row "5. p=$p share of time with a free slot and a queue" "p5.p$p.idle_slot_share" raw
    done
    echo "| 5. speed-up p=2 vs p=1 (ratio of median walls) | $(ratio p5.p1.wall_ms p5.p2.wall_ms) | | |"
  fi
  failures=$(awk -F'\t' '$1 ~ /failed_rounds/ {n += $2} END {print n+0}' "$RESULTS")
  echo
  echo "Failed rounds (dropped and run again; e.g. the shared Engine was restarted): $failures"
} | tee "$WORK/summary.md"
if [[ -n $OUT ]]; then
  cp "$WORK/summary.md" "$OUT"
  cp "$RESULTS" "$OUT.tsv"
fi
