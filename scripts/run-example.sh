#!/usr/bin/env bash
# Quick start: prepare the local Engine, registries and base images, then run Kiln on
# specs-example/ of this very repository (its `main` branch), with the embedded sled store in
# ./.kiln, pushing to the local registry 127.0.0.1:5000. Ctrl-C stops it.
set -Eeuo pipefail
cd "$(dirname "$0")/.."

bash scripts/dev-env.sh up
cargo build --release --bin kiln

mkdir -p .kiln
cat > .kiln/kiln.toml <<TOML
# Written by scripts/run-example.sh for the local demo environment.
repo = "."
branch = "main"
specs_dir = "specs-example"
data_dir = ".kiln"
registry = "127.0.0.1:5000"
docker_config = "${KILN_ENV_DIR:-/var/lib/kiln-env}/docker-config/config.json"
ca_bundle = "/etc/ssl/certs/ca-certificates.crt"
poll_interval = 10

[pull_secrets]
local-auth-registry = "127.0.0.1:5001"
TOML

echo "Kiln follows branch main of $(pwd), folder specs-example/ (commit there to build)."
exec target/release/kiln serve --config .kiln/kiln.toml "$@"
