#!/usr/bin/env bash
# Commit → job latency by trigger: a watched local repository (notify), the same with polling
# only (1 s), and a remote mirror told by the post-receive hook (kiln notify → webhook).
# Each: N commits (default 100) at spread-out moments; the latency is from `git commit`
# returning (for the hook: from `git push` starting) until the new job is listed by the API,
# polled every millisecond. No Docker needed (--no-build).
#
#   scripts/bench-triggers.sh [N]      → prints and writes /tmp/bench-triggers-section.md
#
# Takes about N × (0.5 s + 1 s + 1.5 s): ~5 minutes for 100.
set -Eeuo pipefail
cd "$(dirname "$0")/.."

n="${1:-100}"
out="${BENCH_OUT:-/tmp/bench-triggers-section.md}"
table="$(mktemp)"
trap 'rm -f "$table"' EXIT

BENCH_COMMITS="$n" BENCH_OUT="$table" \
    cargo test --release --test triggers bench_commit_to_job_latency -- --ignored --nocapture

{
    echo "## Triggers: commit → job latency"
    echo
    echo "\`scripts/bench-triggers.sh $n\` on $(nproc) CPU(s), $(uname -sr), $(git --version)," \
        "$(date -u +%Y-%m-%d). Latency from \`git commit\` returning (hook row: from \`git push\` starting) until the" \
        "job is listed by \`GET /api/v1/specs/{name}/jobs\` (polled every millisecond), \`kiln serve --no-build\`," \
        "one spec edited per commit, commits spread over every phase of the poll interval."
    echo
    cat "$table"
    echo
    echo "The watcher reacts to the rename of \`refs/heads/<branch>\` (leading edge of a 50 ms debounce), so"
    echo "the latency is one sync pass: read the ref, diff one commit, one sled transaction + flush."
    echo "Polling only waits for the next tick (uniform over the interval). The hook row includes"
    echo "the whole \`git push\` (transfer, ref update, the hook running \`kiln notify\`) and a fetch into the mirror;"
    echo "webhook-triggered fetches are limited to one per second, hence pushes at least 1.1 s apart."
} >"$out"
cat "$out"
echo "written to $out"
