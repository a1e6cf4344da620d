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
    echo "The watcher reacts to the rename of \`refs/heads/<branch>\` (leading edge of a 50 ms debounce),"
    echo "so the latency is one sync pass: read the ref, diff one commit, one sled transaction + flush."
    echo "That pass often ends before \`git commit\` itself has returned (git updates the ref, then"
    echo "still writes the reflog, prints its summary and checks \`gc --auto\`): hence a p50 below a"
    echo "millisecond from the commit returning; the last column counts from the commit starting."
    echo "Polling only waits for the next tick (uniform over the interval). The hook row includes"
    echo "the whole \`git push\` (transfer, ref update, the hook running \`kiln notify\`) and a fetch"
    echo "into the mirror; webhook-triggered fetches are limited to one per second, hence pushes at"
    echo "least 1.1 s apart. The machine is shared: other benchmarks may have run at the same time."
} >"$out"
cat "$out"
echo "written to $out"
