#!/usr/bin/env bash
# Benchmark the pool of build workers on this machine's Engines (scripts/dev-env.sh up: the
# main Engine as w0, the worker Engines w1 and w2). Takes ~10-20 min with the defaults.
#
#   scripts/bench-pool.sh [--runs R] [--parts "1 2 3"] [--no-build] [--out FILE]
#
#   --runs R     rounds of every measurement (default 3)
#   --parts P    which parts to run (default "1 2 3")
#   --no-build   skip `cargo build --release --bins --examples` (use target/release as is)
#   --out FILE   also write the Markdown summary to FILE
#
# Parts (each `kiln sync` run: fresh data dir, max_attempts 1):
#   1  makespan of twelve specs in one commit, `kiln sync` on one worker (w1, capacity 3) and on
#      three (w0, w1, w2, capacity 1 each), max_parallel_builds 3 in both: the same number of
#      builds at once, on one Engine or spread over three. Each spec installs jq and a package
#      of its own (so no two specs share a RUN step: BuildKit would build a shared one once),
#      and every round starts FROM a fresh base (an ENV nonce), so nothing is cached but the
#      Engines' apt cache mounts. Rounds alternate which set-up goes first.
#   2  a cold worker: w1 and w2 reset (empty data roots), the spec (apt jq + pip six, CA
#      bundle, registry 127.0.0.1:5000) built on w1 alone (a cold build: pulls the base,
#      downloads everything), then a change of its tests (new labels, same packages) built on
#      w2 alone, which has nothing but the registry's inline cache of the spec's `latest`.
#   3  what placing one build costs, in-process (examples/bench_placement.rs).
#
# This machine has two cores: three Engines cannot build three times as fast on it; part 1
# reports what was measured. Images it builds are named kiln-bench-pool/*, bases
# 127.0.0.1:5000/kiln-bench-pool/base:*; the work dir is removed on exit.
set -Eeuo pipefail

RUNS=3
PARTS="1 2 3"
BUILD=1
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS="$2"; shift 2 ;;
    --parts) PARTS="$2"; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --out) OUT="$2"; shift 2 ;;
    *) echo "usage: $0 [--runs R] [--parts \"1 2 3\"] [--no-build] [--out FILE]" >&2; exit 2 ;;
  esac
done

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
KILN="$ROOT/target/release/kiln"
WORK="$(mktemp -d /tmp/kiln-bench-pool.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
log() { echo "[bench-pool] $*" >&2; }
now_ms() { date +%s%3N; }
median() { sort -n | awk '{a[NR]=$1} END {if (NR == 0) print "-"; else if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
secs() { awk -v ms="$1" 'BEGIN {printf "%.1f s", ms / 1000}'; }

if [ "$BUILD" = 1 ]; then
  (cd "$ROOT" && cargo build --release --bins --examples)
fi
for n in 1 2; do
  docker -H "unix:///run/kiln-w$n/docker.sock" info >/dev/null 2>&1 \
    || { echo "worker Engine $n does not answer: run scripts/dev-env.sh up" >&2; exit 1; }
done

# A base nobody has built on: an ENV-only child of $1, pushed to the open registry.
fresh_base() {
  local tag
  tag="127.0.0.1:5000/kiln-bench-pool/base:$2-$(date +%s%N)"
  printf 'FROM %s\nENV KILN_BENCH_NONCE=%s\n' "$1" "$tag" | DOCKER_BUILDKIT=0 docker build -q -t "$tag" - >/dev/null
  docker push -q "$tag" >/dev/null
  echo "$tag"
}

# kiln.toml with the workers "N:CAPACITY ..." (0 = the main Engine) and extra keys.
workers_toml() {
  local file="$1" extra="$2"; shift 2
  printf 'max_attempts = 1\nworker_probe_interval = 1\n%b\n' "$extra" >"$file"
  for wc in "$@"; do
    local n="${wc%%:*}" cap="${wc##*:}" endpoint
    if [ "$n" = 0 ]; then endpoint="unix:///var/run/docker.sock"; else endpoint="unix:///run/kiln-w$n/docker.sock"; fi
    printf '\n[[workers]]\nname = "w%s"\nkind = "docker"\nendpoint = "%s"\ncapacity = %s\n' "$n" "$endpoint" "$cap" >>"$file"
  done
}

# `kiln sync` of REPO with CONFIG into a fresh DATA; prints the wall time in ms.
timed_sync() {
  local config="$1" repo="$2" data="$3" start end
  start=$(now_ms)
  "$KILN" sync --config "$config" --repo "$repo" --data-dir "$data" >"$data.log" 2>&1 \
    || { log "kiln sync failed:"; tail -20 "$data.log" >&2; return 1; }
  end=$(now_ms)
  echo $((end - start))
}

new_repo() {
  rm -rf "$1"; mkdir -p "$1"
  git -C "$1" init -q -b main
  git -C "$1" -c user.name=bench -c user.email=bench@localhost commit -q --allow-empty -m empty
}
commit_all() { git -C "$1" add -A && git -C "$1" -c user.name=bench -c user.email=bench@localhost commit -q -m "$2"; }

SUMMARY="$WORK/summary.md"
{
  echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(date -u +%Y-%m-%dT%H:%MZ), Kiln $(git -C "$ROOT" rev-parse --short HEAD)"
  echo
} >"$SUMMARY"

# ---- part 1: twelve specs, one worker vs three ------------------------------------------------
if [[ " $PARTS " == *" 1 "* ]]; then
  OWN=(bc file less lsof patch psmisc pv rsync time tree unzip zip)
  : >"$WORK/one.ms"; : >"$WORK/three.ms"
  for round in $(seq 1 "$RUNS"); do
    order=(one three); [ $((round % 2)) = 0 ] && order=(three one)
    for setup in "${order[@]}"; do
      base=$(fresh_base 127.0.0.1:5000/kiln/bookworm:minbase "p1-$setup-$round")
      repo="$WORK/p1-$setup-$round/repo"; new_repo "$repo"
      for i in $(seq 0 11); do
        printf 'name: s%02d\nbaseImage: %s\npackages:\n  apt: [jq, %s]\n' "$i" "$base" "${OWN[$i]}" >"$repo/s$(printf %02d "$i").yaml"
      done
      commit_all "$repo" "twelve specs"
      config="$WORK/p1-$setup-$round/kiln.toml"
      if [ "$setup" = one ]; then
        workers_toml "$config" 'max_parallel_builds = 3' 1:3
      else
        workers_toml "$config" 'max_parallel_builds = 3' 0:1 1:1 2:1
      fi
      ms=$(timed_sync "$config" "$repo" "$WORK/p1-$setup-$round/data")
      log "part 1 round $round: $setup worker(s): $(secs "$ms")"
      echo "$ms" >>"$WORK/$setup.ms"
    done
  done
  one=$(median <"$WORK/one.ms"); three=$(median <"$WORK/three.ms")
  {
    echo "### Twelve specs in one commit: one worker vs three (\`kiln sync\`, $RUNS rounds)"
    echo
    echo "| set-up | median makespan | all rounds |"
    echo "|---|---:|---|"
    echo "| one worker (w1, capacity 3) | $(secs "$one") | $(paste -sd' ' "$WORK/one.ms") ms |"
    echo "| three workers (w0, w1, w2, capacity 1 each) | $(secs "$three") | $(paste -sd' ' "$WORK/three.ms") ms |"
    echo "| **three ÷ one** | **$(ratio "$three" "$one")** | |"
    echo
  } >>"$SUMMARY"
fi

# ---- part 2: a cold worker rebuilds from the registry cache ------------------------------------
if [[ " $PARTS " == *" 2 "* ]]; then
  : >"$WORK/cold.ms"; : >"$WORK/rebuild.ms"; : >"$WORK/cached.n"
  for round in $(seq 1 "$RUNS"); do
    bash "$ROOT/scripts/dev-env.sh" worker-reset 1 >&2
    bash "$ROOT/scripts/dev-env.sh" worker-reset 2 >&2
    base=$(fresh_base 127.0.0.1:5000/kiln/bookworm-python:minbase "p2-$round")
    dir="$WORK/p2-$round"; repo="$dir/repo"; new_repo "$repo"
    spec() { printf 'name: cold\nbaseImage: %s\npackages:\n  apt: [jq]\n  pip: [six==1.16.0]\n%b' "$base" "$1" >"$repo/cold.yaml"; }
    spec ""; commit_all "$repo" "a spec"
    extra="registry = '127.0.0.1:5000/kiln-bench-pool'\nca_bundle = '/etc/ssl/certs/ca-certificates.crt'\nmax_parallel_builds = 1"
    workers_toml "$dir/w1.toml" "$extra" 1:1
    workers_toml "$dir/w2.toml" "$extra" 2:1
    ms=$(timed_sync "$dir/w1.toml" "$repo" "$dir/data"); echo "$ms" >>"$WORK/cold.ms"
    spec "tests:\n  - python3 -c 'import six'\n"; commit_all "$repo" "a test"
    ms2=$(timed_sync "$dir/w2.toml" "$repo" "$dir/data"); echo "$ms2" >>"$WORK/rebuild.ms"
    log "part 2 round $round: cold build on w1 $(secs "$ms"), rebuild on cold w2 $(secs "$ms2")"
  done
  cold=$(median <"$WORK/cold.ms"); rebuild=$(median <"$WORK/rebuild.ms")
  {
    echo "### A cold worker rebuilds a known spec from the registry cache ($RUNS rounds)"
    echo
    echo "| measurement | median | all rounds |"
    echo "|---|---:|---|"
    echo "| cold build on an emptied w1 (\`kiln sync\`, pushes with inline cache) | $(secs "$cold") | $(paste -sd' ' "$WORK/cold.ms") ms |"
    echo "| the spec with new labels on an emptied w2 | $(secs "$rebuild") | $(paste -sd' ' "$WORK/rebuild.ms") ms |"
    echo "| **rebuild ÷ cold build** | **$(ratio "$rebuild" "$cold")** | |"
    echo
  } >>"$SUMMARY"
fi

# ---- part 3: placement ------------------------------------------------------------------------
if [[ " $PARTS " == *" 3 "* ]]; then
  {
    echo "### Placing one build (in-process, \`examples/bench_placement.rs\`)"
    echo
    "$ROOT/target/release/examples/bench_placement" --leases 20000 | grep -v '^JSON:'
    echo
  } >>"$SUMMARY"
fi

cat "$SUMMARY"
[ -n "$OUT" ] && cp "$SUMMARY" "$OUT"
exit 0
