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

step "Kubernetes schema checker for tests/deploy.rs (PyPI's kubernetes-validate)"
# It ships the Kubernetes OpenAPI schemas, so the manifests are checked without a cluster.
if ! command -v kubernetes-validate >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check 'kubernetes-validate==1.37.0'
fi
PATH="$PATH:$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
export PATH
kubernetes-validate --version

step "JupyterHub spawners for tests/catalog.rs (PyPI's jupyterhub, jupyterhub-kubespawner, dockerspawner)"
# A venv of their own under the cache dir (the hub's dependencies stay out of the system
# Python); tests/catalog.rs runs deploy/jupyterhub/kiln_catalog.py against them.
KILN_JUPYTERHUB_VENV="${KILN_JUPYTERHUB_VENV:-$HOME/.cache/kiln/jupyterhub-venv}"
export KILN_JUPYTERHUB_VENV
if ! "$KILN_JUPYTERHUB_VENV/bin/python" -c 'import jupyterhub, kubespawner, dockerspawner' 2>/dev/null; then
  python3 -m venv "$KILN_JUPYTERHUB_VENV"
  "$KILN_JUPYTERHUB_VENV/bin/pip" install --quiet --disable-pip-version-check \
    'jupyterhub==5.2.1' 'jupyterhub-kubespawner==7.0.0' 'dockerspawner==14.0.0'
fi
"$KILN_JUPYTERHUB_VENV/bin/python" -c 'import jupyterhub, kubespawner, dockerspawner; print(jupyterhub.__version__, kubespawner.__version__, dockerspawner.__version__)'

step "CycloneDX validator for tests/changes.rs (PyPI's cyclonedx-python-lib[validation])"
# A venv of its own: tests/changes.rs validates a real build's SBOM against the CycloneDX 1.5
# JSON schema with it.
KILN_CYCLONEDX_VENV="${KILN_CYCLONEDX_VENV:-$HOME/.cache/kiln/cyclonedx-venv}"
export KILN_CYCLONEDX_VENV
if ! "$KILN_CYCLONEDX_VENV/bin/python" -c 'import cyclonedx.validation.json, jsonschema' 2>/dev/null; then
  python3 -m venv "$KILN_CYCLONEDX_VENV"
  "$KILN_CYCLONEDX_VENV/bin/pip" install --quiet --disable-pip-version-check \
    'cyclonedx-python-lib[validation]==8.5.0'
fi
"$KILN_CYCLONEDX_VENV/bin/python" -c 'import importlib.metadata as m; print("cyclonedx-python-lib", m.version("cyclonedx-python-lib"))'

step "private package sources for tests/sources.rs (PyPI's pypiserver + passlib; Debian's reprepro, nginx, gnupg)"
# pypiserver (with passlib for its htpasswd file) in a venv of its own; the apt repository is
# made with reprepro, signed with gnupg and served by nginx, from Debian.
KILN_PYPISERVER_VENV="${KILN_PYPISERVER_VENV:-$HOME/.cache/kiln/pypiserver-venv}"
export KILN_PYPISERVER_VENV
if ! "$KILN_PYPISERVER_VENV/bin/python" -c 'import pypiserver, passlib' 2>/dev/null; then
  python3 -m venv "$KILN_PYPISERVER_VENV"
  "$KILN_PYPISERVER_VENV/bin/pip" install --quiet --disable-pip-version-check \
    'pypiserver==2.3.2' 'passlib==1.7.4'
fi
"$KILN_PYPISERVER_VENV/bin/python" -c 'import importlib.metadata as m; print("pypiserver", m.version("pypiserver"), "passlib", m.version("passlib"))'
if ! command -v reprepro >/dev/null 2>&1 || ! command -v gpg >/dev/null 2>&1 || ! [ -x /usr/sbin/nginx ]; then
  # The tests start their own nginx (own config, pid file and port on 127.0.0.1). Debian's
  # package would also start a system nginx on port 80: a policy-rc.d that refuses every
  # service start keeps it from doing so, and the unit is disabled.
  apt-get update -qq
  policy=/usr/sbin/policy-rc.d own_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && own_policy=1
  fi
  install_rc=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends reprepro nginx gnupg >/dev/null || install_rc=$?
  [ "$own_policy" = 1 ] && rm -f "$policy"
  [ "$install_rc" = 0 ] || exit "$install_rc"
  if command -v systemctl >/dev/null 2>&1; then systemctl disable --now nginx >/dev/null 2>&1 || true; fi
fi
reprepro --version | head -1

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
# A one-off build gains nothing from incremental state, which is several GB on disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
cargo test --all-targets --no-fail-fast -- --test-threads=2
