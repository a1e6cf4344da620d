#!/usr/bin/env bash
# Benchmarks of a long spec history (BENCHMARKS.md): first import, incremental sync, reconcile of
# a one-spec commit beside a full rescan, and API throughput.
#
#   scripts/bench-history.sh [--specs 10000] [--commits 1000] [--runs 20] [--repeats 3]
#                            [--duration 10] [--dirs 0] [--out /tmp/bench-history-section.md]
#                            [--profile]
#
# * builds `cargo build --release --example bench_reconcile --bins`;
# * generates the repository with scripts/gen-history.py, cached under
#   /tmp/kiln-bench-history-<specs>x<commits>-seed1[-dirs<N>] (delete it to regenerate); with
#   --dirs N the specs are spread over N sub-folders of specs/ instead of one folder;
# * (a) first import: `kiln sync --no-build` into an empty data dir, --repeats times, wall time
#   and peak RSS from `/usr/bin/time -v`;
# * (b) incremental: one more commit touching one spec (gen-history.py --touch), then
#   `kiln sync --no-build` on a copy of the imported data dir, --repeats times; and a no-op
#   sync (nothing new) for the process start-up cost;
# * (c) examples/bench_reconcile: the in-process part, --runs times each, interleaved; then
#   `--loop steps 200` and `--loop rescan 5` (back to back, warm caches), 3 processes each;
# * (d) `kiln serve --no-build` on 127.0.0.1 (free port), `wrk -t2 -c16 -d<duration>s --latency`
#   on /api/v1/specs and /api/v1/specs/spec-00042, --repeats times each;
# * --profile: `perf record` of one first import, one incremental sync and loops of
#   `Repo::steps` and of the full rescan in bench_reconcile; the top symbols of each are
#   appended to the output.
#
# Everything runs on 127.0.0.1 and under `timeout`; the server is killed on any exit. The
# markdown section is written to --out; raw outputs stay in the printed work dir when
# KEEP=1. Needs python3, git, /usr/bin/time and wrk (installed with apt-get when missing and
# running as root).
set -euo pipefail

SPECS=10000
COMMITS=1000
RUNS=20
REPEATS=3
DURATION=10
OUT=/tmp/bench-history-section.md
PROFILE=0
DIRS=0
TOUCH=
while [ $# -gt 0 ]; do
  case "$1" in
    --specs) SPECS=$2; shift 2 ;;
    --commits) COMMITS=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --repeats) REPEATS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --dirs) DIRS=$2; shift 2 ;;
    --profile) PROFILE=1; shift ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "bench-history: unknown argument $1" >&2; exit 2 ;;
  esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOUCH=$(printf "spec-%05d" $(( (SPECS + 1) / 2 )))  # the spec the extra commit edits
log() { printf '\n== %s\n' "$*" >&2; }

# ---- tools ----
need_apt=()
[ -x /usr/bin/time ] || need_apt+=(time)
command -v wrk >/dev/null || need_apt+=(wrk)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing ${need_apt[*]}"
    apt-get install -y "${need_apt[@]}" >/dev/null 2>&1 ||
      { apt-get update >/dev/null && apt-get install -y "${need_apt[@]}" >/dev/null; }
  else
    echo "bench-history: please install: ${need_apt[*]}" >&2
    exit 2
  fi
fi
for tool in python3 git curl; do
  command -v "$tool" >/dev/null || { echo "bench-history: $tool is required" >&2; exit 2; }
done

# ---- build ----
log "cargo build --release --example bench_reconcile --bins"
(cd "$ROOT" && cargo build --release --example bench_reconcile --bins)
KILN=$ROOT/target/release/kiln
EXAMPLE=$ROOT/target/release/examples/bench_reconcile

# ---- work dir; the server is always stopped ----
WORK=$(mktemp -d /tmp/kiln-bench.XXXXXX)
SERVER_PID=
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SERVER_PID" 2>/dev/null || true
  fi
  if [ "${KEEP:-0}" = 1 ]; then echo "bench-history: raw results kept in $WORK" >&2
  else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
RES=$WORK/results
mkdir -p "$RES"
# kiln reads ./kiln.toml when present: run it from an empty folder.
cd "$WORK"
export KILN_LOG=warn

# ---- the repository (cached) ----
CACHE=/tmp/kiln-bench-history-${SPECS}x${COMMITS}-seed1
[ "$DIRS" = 0 ] || CACHE=$CACHE-dirs$DIRS
if [ ! -f "$CACHE.json" ] || [ ! -d "$CACHE/.git" ]; then
  log "generating $CACHE"
  rm -rf "$CACHE" "$CACHE.json"
  start=$(date +%s.%N)
  timeout 900 python3 "$ROOT/scripts/gen-history.py" "$CACHE" --specs "$SPECS" \
    --commits "$COMMITS" --seed 1 --dirs "$DIRS" >"$CACHE.json.tmp"
  end=$(date +%s.%N)
  python3 - "$CACHE.json.tmp" "$start" "$end" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
d["generate_seconds"] = float(sys.argv[3]) - float(sys.argv[2])
json.dump(d, open(sys.argv[1], "w"))
EOF
  mv "$CACHE.json.tmp" "$CACHE.json"
else
  log "using cached $CACHE"
fi
cp "$CACHE.json" "$RES/generated.json"
du -sk "$CACHE/.git" | cut -f1 >"$RES/git_kb"
REPO=$WORK/repo
cp -a "$CACHE" "$REPO"

# `timed NAME CMD...`: /usr/bin/time -v into $RES/NAME.time, stdout into $RES/NAME.out.
timed() {
  local name=$1; shift
  /usr/bin/time -v -o "$RES/$name.time" timeout 1800 "$@" >"$RES/$name.out" 2>"$RES/$name.err" || {
    echo "bench-history: $name failed:" >&2; cat "$RES/$name.err" >&2; exit 1; }
}

# ---- (a) first import ----
for i in $(seq "$REPEATS"); do
  log "(a) first import $i/$REPEATS"
  rm -rf "$WORK/import"
  timed "import-$i" "$KILN" sync --no-build --repo "$REPO" --data-dir "$WORK/import"
  cat "$RES/import-$i.out" >&2
done
du -sk "$WORK/import" | cut -f1 >"$RES/data_kb"
# Keep the imported state before the extra commit; the example and (b) start from copies.
mv "$WORK/import" "$WORK/pre"

# ---- (b) incremental sync after one commit touching one spec ----
log "(b) one more commit touching $TOUCH"
python3 "$ROOT/scripts/gen-history.py" "$REPO" --touch "$TOUCH" >"$RES/touch.out"
for i in $(seq "$REPEATS"); do
  log "(b) incremental sync $i/$REPEATS"
  rm -rf "$WORK/incr"
  cp -a "$WORK/pre" "$WORK/incr"
  timed "incr-$i" "$KILN" sync --no-build --repo "$REPO" --data-dir "$WORK/incr"
  cat "$RES/incr-$i.out" >&2
  timed "noop-$i" "$KILN" sync --no-build --repo "$REPO" --data-dir "$WORK/incr"
done

# ---- (c) in-process: reconcile of the one-spec commit vs full rescan ----
log "(c) examples/bench_reconcile --runs $RUNS"
timeout 1800 "$EXAMPLE" --repo "$REPO" --data-dir "$WORK/pre" --runs "$RUNS" \
  >"$RES/reconcile.out" 2>"$RES/reconcile.err" || {
  cat "$RES/reconcile.err" >&2; exit 1; }
cat "$RES/reconcile.out" >&2
# The same phases back to back in a loop (warm caches), 3 times each.
for i in $(seq 3); do
  timeout 900 "$EXAMPLE" --repo "$REPO" --data-dir "$WORK/pre" --loop steps 200 >"$RES/loop-steps-$i.out"
  timeout 900 "$EXAMPLE" --repo "$REPO" --data-dir "$WORK/pre" --loop rescan 5 >"$RES/loop-rescan-$i.out"
done
cat "$RES"/loop-*.out >&2

# ---- (d) API throughput ----
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
log "(d) kiln serve on 127.0.0.1:$PORT"
"$KILN" serve --no-build --repo "$REPO" --data-dir "$WORK/incr" \
  --listen "127.0.0.1:$PORT" --poll-interval 3600 >"$RES/serve.out" 2>"$RES/serve.err" &
SERVER_PID=$!
up=0
for _ in $(seq 600); do
  if curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1; then up=1; break; fi
  kill -0 "$SERVER_PID" 2>/dev/null || break
  sleep 0.1
done
[ "$up" = 1 ] || { echo "bench-history: kiln serve did not come up" >&2; cat "$RES/serve.err" >&2; exit 1; }
curl -fsS "http://127.0.0.1:$PORT/api/v1/specs" -o "$RES/specs.json"
curl -fsS "http://127.0.0.1:$PORT/api/v1/specs/spec-00042" -o "$RES/spec-00042.json"
# One request at a time (no concurrency): the cost of one response.
for target in specs one; do
  url=http://127.0.0.1:$PORT/api/v1/specs
  [ "$target" = one ] && url=$url/spec-00042
  for _ in $(seq 30); do
    curl -fsS -o /dev/null -w '%{time_total}\n' --max-time 30 "$url"
  done >"$RES/curl-$target.out"
done
for i in $(seq "$REPEATS"); do
  for target in specs one; do
    url=http://127.0.0.1:$PORT/api/v1/specs
    [ "$target" = one ] && url=$url/spec-00042
    log "(d) wrk $url $i/$REPEATS"
    timeout $((DURATION + 60)) wrk -t2 -c16 -d"${DURATION}s" --timeout 10s --latency "$url" \
      >"$RES/wrk-$target-$i.out"
    grep -E 'Requests/sec|50%|99%' "$RES/wrk-$target-$i.out" >&2
  done
done
grep -E '^(VmHWM|VmRSS)' "/proc/$SERVER_PID/status" >"$RES/serve.rss" || true
kill "$SERVER_PID"
wait "$SERVER_PID" 2>/dev/null || true
SERVER_PID=

# ---- optional profiles ----
if [ "$PROFILE" = 1 ] && command -v perf >/dev/null; then
  log "perf record: first import"
  rm -rf "$WORK/prof"
  timeout 1800 perf record -F 499 -g -o "$RES/import.perf" -- \
    "$KILN" sync --no-build --repo "$REPO" --data-dir "$WORK/prof" >/dev/null 2>&1 || true
  perf report -i "$RES/import.perf" --no-children --percent-limit 2 --stdio -g none \
    2>/dev/null | grep -v '^#' | grep -v '^$' | head -25 >"$RES/import.perf.txt" || true
  log "perf record: incremental sync"
  rm -rf "$WORK/prof"; cp -a "$WORK/pre" "$WORK/prof"
  timeout 600 perf record -F 4999 -g -o "$RES/incr.perf" -- \
    "$KILN" sync --no-build --repo "$REPO" --data-dir "$WORK/prof" >/dev/null 2>&1 || true
  perf report -i "$RES/incr.perf" --no-children --percent-limit 2 --stdio -g none \
    2>/dev/null | grep -v '^#' | grep -v '^$' | head -25 >"$RES/incr.perf.txt" || true
  for phase in steps rescan; do
    log "perf record: bench_reconcile --loop $phase"
    n=200; [ "$phase" = rescan ] && n=5
    timeout 900 perf record -F 999 -g -o "$RES/$phase.perf" -- "$EXAMPLE" --repo "$REPO" \
      --data-dir "$WORK/pre" --loop "$phase" "$n" >"$RES/$phase.loop" 2>&1 || true
    perf report -i "$RES/$phase.perf" --no-children --percent-limit 2 --stdio -g none \
      2>/dev/null | grep -v '^#' | grep -v '^$' | head -25 >"$RES/$phase.perf.txt" || true
  done
fi

# ---- the markdown section ----
log "writing $OUT"
KILN_COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null)" ]; then
  KILN_COMMIT="$KILN_COMMIT + uncommitted changes in src/"
fi
python3 - "$RES" "$OUT" "$SPECS" "$COMMITS" "$RUNS" "$REPEATS" "$DURATION" "$TOUCH" "$KILN_COMMIT" <<'EOF'
import json, os, re, statistics, subprocess, sys
res, out, specs, commits, runs, repeats, duration, touch, kiln_commit = sys.argv[1:]
repeats = int(repeats)
med = statistics.median

def read(name):
    with open(os.path.join(res, name)) as f:
        return f.read()

def gnu_time(name):
    text = read(name + ".time")
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", text).group(1)
    secs = 0.0
    for part in wall.split(":"):
        secs = secs * 60 + float(part)
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    user = float(re.search(r"User time \(seconds\): (\S+)", text).group(1))
    system = float(re.search(r"System time \(seconds\): (\S+)", text).group(1))
    cpu = int(re.search(r"Percent of CPU this job got: (\d+)%", text).group(1))
    return secs, rss / 1024, user, system, cpu

def row_time(label, prefix, unit="s"):
    rows = [gnu_time(f"{prefix}-{i}") for i in range(1, repeats + 1)]
    walls = [r[0] for r in rows]
    f = (lambda x: f"{x:.2f}") if unit == "s" else (lambda x: f"{x * 1000:.0f}")
    return (f"| {label} | {f(med(walls))} | {f(min(walls))} – {f(max(walls))} | "
            f"{med(r[1] for r in rows):.0f} | {med(r[2] for r in rows):.2f} | "
            f"{med(r[3] for r in rows):.2f} | {med(r[4] for r in rows):.0f} |")

def wrk(name):
    text = read(name)
    def lat(p):
        m = re.search(rf"^\s+{p}%\s+(\S+)", text, re.M)
        v = m.group(1)
        scale = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}
        n, u = re.match(r"([\d.]+)(\D+)", v).groups()
        return float(n) * scale[u]
    rps = float(re.search(r"Requests/sec:\s+(\S+)", text).group(1))
    transfer = re.search(r"Transfer/sec:\s+(\S+)", text).group(1)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    sock = re.search(r"Socket errors: (.*)", text)
    return rps, lat(50), lat(99), transfer, (errors.group(1) if errors else "0"), (sock.group(1) if sock else "")

gen = json.loads(read("generated.json"))
cpu = "unknown"
for line in open("/proc/cpuinfo"):
    if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
mem_gb = int(open("/proc/meminfo").readline().split()[1]) / 1024 / 1024
nproc = os.cpu_count()
kernel = os.uname().release
rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
load = open("/proc/loadavg").read().split()[:3]

L = []
w = L.append
w("## Long history: 10,000 specs, 1,000 commits" if (specs, commits) == ("10000", "1000")
  else f"## Long history: {specs} specs, {commits} commits")
w("")
w("### How to reproduce")
w("")
w("```sh")
w(f"scripts/bench-history.sh --specs {specs} --commits {commits} --runs {runs} --repeats {repeats} --duration {duration}"
  + (f" --dirs {gen['dirs']}" if gen.get("dirs") else ""))
w("```")
w("")
w("It builds `cargo build --release --example bench_reconcile --bins`, generates the repository with")
w(f"`scripts/gen-history.py REPO --specs {specs} --commits {commits}` (cached under `/tmp`), then measures")
w("the release binary and `examples/bench_reconcile.rs`. Only 127.0.0.1 is used.")
w("")
layout = (f"spread over {gen['dirs']} folders (`specs/g000/spec-00001.yaml` …)" if gen.get("dirs")
          else "in one folder (`specs/spec-00001.yaml` …)")
w(f"Repository: {gen['specs']} specs {layout}, {gen['commits']} commits on `main`: "
  f"the first adds every spec, each later one edits 1–3 specs ({gen['package_edits']} package "
  f"additions/removals, {gen['comment_edits']} comment-only edits), so the import must record "
  f"{gen['expected_revisions']} revisions. `.git` is {int(read('git_kb')) / 1024:.1f} MiB "
  f"(one fast-import pack); generating it took {gen.get('generate_seconds', float('nan')):.1f} s.")
w("")
w(f"Kiln at `{kiln_commit}`, release profile. "
  f"Machine: {nproc} vCPU ({cpu}), {mem_gb:.0f} GiB RAM, Linux {kernel}, {rustc}. "
  f"**The machine was shared** with other builds and tests while this ran (load average at the end: "
  f"{' '.join(load)}), so every figure is a median of repeated runs and the spread is shown.")
w("")

w("### First import and incremental sync (`kiln sync --no-build`, whole process)")
w("")
w(f"Medians of {repeats} runs; wall time, peak RSS and CPU times from `/usr/bin/time -v`. A CPU share "
  "well under 100 % means the process waited — on this shared machine mostly for a core.")
w("")
w("| run | wall s (median) | range s | peak RSS MiB | user s | sys s | CPU % of wall |")
w("|---|---:|---:|---:|---:|---:|---:|")
w(row_time(f"first import ({commits} commits, empty data dir)", "import"))
w(row_time(f"incremental: 1 commit touching 1 spec", "incr"))
w(row_time("no-op sync (already at head: start-up, open, exit)", "noop"))
w("")
w(f"The import printed `{read('import-1.out').strip()}`; the incremental sync printed "
  f"`{read('incr-1.out').strip()}`. Data dir after the import: {int(read('data_kb')) / 1024:.0f} MiB.")
w("")

w(f"### Reconcile of a one-spec commit vs a full rescan (in-process, `examples/bench_reconcile.rs`)")
w("")
rec = read("reconcile.out")
j = json.loads(re.search(r"^JSON: (.*)$", rec, re.M).group(1))
w("The store is the imported data dir (at the previous head); the new head is one commit that adds a "
  f"package to `{touch}`. *Incremental* is what `Syncer::sync_once` does before writing: "
  "`Repo::steps(last, head)`, the observation of the touched names, and `reconcile::reconcile` against "
  "the sled store. *Full rescan* is `Repo::spec_files_at(head)` plus `spec::parse_spec` of every file; the "
  "last row also feeds all of them to `reconcile` (what a controller that rescans on every commit would do). "
  f"One warm-up round, then {runs} rounds; each round runs every measurement once (interleaved, so "
  "that the machine's changing load hits all rows alike).")
w("")
lines = rec.splitlines()
start = next(i for i, l in enumerate(lines) if l.startswith("| measurement"))
for l in lines[start:]:
    if not l.startswith("|"):
        break
    w(l)
w("")
for l in lines[:start]:
    if l.strip():
        w(f"- {l.strip()}")
w("")
def loop(phase):
    vals = [float(re.search(r"([\d.]+) ms per run", read(f"loop-{phase}-{i}.out")).group(1)) for i in (1, 2, 3)]
    return med(vals), min(vals), max(vals)
ls, lr = loop("steps"), loop("rescan")
w(f"Back to back in one loop (`bench_reconcile --loop steps 200` and `--loop rescan 5`, "
  f"median of 3 processes, mean per call): `Repo::steps` of the one-spec commit **{ls[0]:.2f} ms** "
  f"({ls[1]:.2f} – {ls[2]:.2f}); full rescan (list + parse) **{lr[0]:.0f} ms** ({lr[1]:.0f} – {lr[2]:.0f}). "
  "The gap to the interleaved table is the machine's changing load, not a difference in work.")
w("")
w(f"**Ratio** full rescan / incremental (medians): **{j['ratio']:.0f}×** (list + parse), "
  f"**{j['ratio_reconcile']:.0f}×** (list + reconcile of all). "
  f"Aim: incremental < 10 ms — {'met' if j['incremental_ms'] < 10 else 'MISSED'} "
  f"({j['incremental_ms']:.2f} ms); rescan ≥ 100× slower — "
  f"{'met' if j['ratio'] >= 100 else 'MISSED'}.")
w("")

w(f"### API throughput (`kiln serve --no-build`, `wrk -t2 -c16 -d{duration}s --latency`, loopback)")
w("")
specs_json = json.loads(read("specs.json"))
size_kb = os.path.getsize(os.path.join(res, "specs.json")) / 1024
w(f"`GET /api/v1/specs` returns {len(specs_json)} specs, {size_kb:.0f} KiB of JSON (no compression "
  "requested). Client and server share the 2 cores. Medians of "
  f"{repeats} runs of {duration} s each. The last column is the median of 30 sequential `curl` requests "
  "(no concurrency).")
w("")
w("| endpoint | req/s (median) | req/s range | p50 ms | p99 ms | transfer/s | non-2xx | one request alone, ms: median (min) |")
w("|---|---:|---:|---:|---:|---:|---:|---:|")
for target, label in (("specs", f"`GET /api/v1/specs` ({len(specs_json)} specs)"), ("one", "`GET /api/v1/specs/spec-00042`")):
    rows = [wrk(f"wrk-{target}-{i}.out") for i in range(1, repeats + 1)]
    rps = [r[0] for r in rows]
    w(f"| {label} | {med(rps):.1f} | {min(rps):.1f} – {max(rps):.1f} | {med(r[1] for r in rows):.2f} | "
      f"{med(r[2] for r in rows):.2f} | {rows[len(rows) // 2][3]} | {max(int(r[4]) for r in rows)} | "
      f"{med(float(x) * 1000 for x in read(f'curl-{target}.out').split()):.2f} "
      f"({min(float(x) * 1000 for x in read(f'curl-{target}.out').split()):.2f}) |")
try:
    w("")
    w("Server memory after the runs: " + ", ".join(l.replace("\t", " ").strip() for l in read("serve.rss").splitlines()) + ".")
except FileNotFoundError:
    pass
w("")
for name, title in (("import.perf.txt", "first import (`kiln sync`)"),
                    ("incr.perf.txt", "incremental sync (`kiln sync`, whole process)"),
                    ("steps.perf.txt", "`Repo::steps` of the one-spec commit, in a loop (`bench_reconcile --loop steps 200`)"),
                    ("rescan.perf.txt", "full rescan, in a loop (`bench_reconcile --loop rescan 5`)")):
    p = os.path.join(res, name)
    if os.path.exists(p) and os.path.getsize(p):
        w(f"`perf report --no-children` (self time, top symbols), {title}:")
        w("")
        w("```text")
        w(read(name).rstrip())
        w("```")
        w("")
with open(out, "w") as f:
    f.write("\n".join(L) + "\n")
EOF
echo "bench-history: wrote $OUT" >&2
