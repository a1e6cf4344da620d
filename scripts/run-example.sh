#!/usr/bin/env bash
# Quick start: prepare the local Engine, registries and base images, then run Kiln on
# specs-example/ of this very repository (its `main` branch), with the embedded sled store in
# ./.kiln (git-ignored), pushing to the local registry 127.0.0.1:5000. Ctrl-C stops it.
#
#   scripts/run-example.sh [kiln serve flags…]
#   KILN_LISTEN=127.0.0.1:9090 scripts/run-example.sh     # another address (default 127.0.0.1:8080)
#
# Idempotent and quick the second time: dev-env.sh only checks, cargo rebuilds nothing when
# nothing changed, and the store in ./.kiln is reused (jobs already built are not rebuilt).
set -Eeuo pipefail
cd "$(dirname "$0")/.."

say() { printf '[run-example] %s\n' "$*"; }
die() { printf '[run-example] ERROR: %s\n' "$*" >&2; exit 1; }

listen=${KILN_LISTEN:-127.0.0.1:8080}
export KILN_LISTEN=$listen
port=${listen##*:}
host=${listen%:*}
[[ $host == 0.0.0.0 ]] && host=127.0.0.1
# Fail early and clearly when the address is taken (often: an earlier run-example.sh).
if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
    die "$listen is already in use (another Kiln?). Stop it, or pick another address: KILN_LISTEN=127.0.0.1:9090 $0"
fi

say "environment (Docker Engine, registries, base images)"
bash scripts/dev-env.sh up
git rev-parse --verify -q refs/heads/main >/dev/null ||
    die "this repository has no local branch 'main' for Kiln to follow (git branch main origin/main)"

say "cargo build --release --bin kiln (nothing to do when nothing changed)"
cargo build --release --bin kiln

mkdir -p .kiln
cat > .kiln/kiln.toml <<TOML
# Written by scripts/run-example.sh for the local demo environment (see deploy/kiln.toml for
# every key).
repo = "$(pwd)"
branch = "main"
specs_dir = "specs-example"
data_dir = "$(pwd)/.kiln"
registry = "127.0.0.1:5000"
docker_config = "${KILN_ENV_DIR:-/var/lib/kiln-env}/docker-config/config.json"
ca_bundle = "/etc/ssl/certs/ca-certificates.crt"
poll_interval = 10

[pull_secrets]
local-auth-registry = "127.0.0.1:5001"
TOML

cat <<EOF

  Kiln follows branch main of $(pwd), folder specs-example/ (commit there to build).
  Store: $(pwd)/.kiln   Registry: 127.0.0.1:5000   Config: .kiln/kiln.toml

  Dashboard:  http://$host:$port/
  API:        http://$host:$port/api/v1/specs
  Ctrl-C stops Kiln (running builds get 30 s to finish, then are re-queued for next time).

EOF
exec target/release/kiln serve --config .kiln/kiln.toml "$@"
