#!/usr/bin/env bash
# Installs Debian's headless browser for the dashboard tests (tests/dashboard.rs): `chromium`
# and `chromium-driver` (chromedriver), plus `wrk` for scripts/bench-dashboard.sh.
# Idempotent: does nothing when both binaries are already there. Needs root (or sudo).
set -Eeuo pipefail

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
if [ "${1:-}" = "--with-wrk" ]; then
  command -v wrk >/dev/null 2>&1 || need+=(wrk)
fi
# Fonts so screenshots render text (a minimal image may have none).
if ! fc-list 2>/dev/null | grep -qi -e dejavu -e liberation; then
  need+=(fonts-dejavu-core fonts-liberation)
fi

if [ "${#need[@]}" -eq 0 ]; then
  echo "install-browser: chromium $(chromium --version 2>/dev/null | awk '{print $2}') and chromedriver present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install-browser: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
chromium --version
chromedriver --version
