#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine (as root): prepares the local Docker
# Engine, registries and base images (scripts/dev-env.sh), then checks formatting, lints and
# runs every test. `.ci/run` calls exactly this.
set -Eeuo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "environment (Docker Engine, registries, base images)"
bash scripts/dev-env.sh up

step "browser for the dashboard tests (Debian's chromium + chromium-driver)"
bash scripts/install-browser.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "cargo test (unit, integration against the real Engine, registries and git)"
# CI=true makes Docker-dependent tests fail loudly instead of skipping. tests/deploy.rs builds
# Kiln's image from the test build's own binary (no release build here; ~1 min cold, mostly
# apt-get in the image's runtime stage).
# --no-fail-fast: one failing test binary must not hide the results of the others.
export CI="${CI:-true}"
cargo test --all-targets --no-fail-fast -- --test-threads=2
