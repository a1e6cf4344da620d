#!/usr/bin/env bash
# Compare the CPU time (user + sys) of two `kiln check` binaries on the same generated specs.
#
#   scripts/bench-check-cpu.sh BEFORE_BIN AFTER_BIN [--rounds R] [--count N]
#
# Makes two data sets with scripts/gen-specs.py (seed 1): N valid specs, and the same N with
# every 10th broken. Each round runs both binaries on both sets, alternating which binary goes
# first, so load changes on a shared machine hit both alike. Prints every run and, per binary
# and set, the median of user+sys CPU over the rounds (GNU time, /usr/bin/time). CPU time,
# unlike wall time, does not depend on how many cores happen to be free.
set -Eeuo pipefail
BEFORE=$1
AFTER=$2
shift 2
ROUNDS=9
COUNT=10000
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --count) COUNT=$2; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kiln-bench-cpu.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
python3 "$ROOT/scripts/gen-specs.py" "$WORK/valid" --count "$COUNT" --seed 1 >/dev/null
python3 "$ROOT/scripts/gen-specs.py" "$WORK/invalid-10" --count "$COUNT" --seed 1 --invalid-every 10 >/dev/null
run() { # bin set -> "user+sys" seconds
  /usr/bin/time -f "%U %S" -o "$WORK/t" "$1" check "$WORK/$2" >"$WORK/out" 2>&1 || true
  awk '{ printf "%.3f\n", $1 + $2 }' "$WORK/t"
}
for set in valid invalid-10; do run "$BEFORE" $set >/dev/null; run "$AFTER" $set >/dev/null; done # warm-up
declare -A samples
for ((r = 1; r <= ROUNDS; r++)); do
  if ((r % 2)); then order="before after"; else order="after before"; fi
  for set in valid invalid-10; do
    for which in $order; do
      bin=$BEFORE; [[ $which == after ]] && bin=$AFTER
      t=$(run "$bin" $set)
      samples[$which.$set]+="$t "
      echo "round $r  $set  $which  ${t}s"
    done
  done
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
echo "== median user+sys CPU over $ROUNDS rounds ($COUNT specs)"
for set in valid invalid-10; do
  b=$(echo "${samples[before.$set]}" | median)
  a=$(echo "${samples[after.$set]}" | median)
  echo "$set: before ${b}s  after ${a}s"
done
