#!/usr/bin/env bash
# Build Kiln's container image from a binary built on the host (deploy/Dockerfile, stage
# `prebuilt`), for machines where no Rust toolchain can be reached from inside a container.
#
#   scripts/build-image.sh [--binary PATH] [--tag TAG] [--base IMAGE]
#
#   --binary PATH  the kiln binary to put in the image (default: target/release/kiln, built or
#                  refreshed first with `cargo build --release --bin kiln`)
#   --tag TAG      image tag (default: kiln/kiln:dev)
#   --base IMAGE   runtime base image (default: kiln/bookworm:minbase when the Engine has it,
#                  as scripts/dev-env.sh builds it; else debian:bookworm-slim)
#
# The build context is a temporary directory holding only the binary (debug info stripped)
# and the two deploy/ files the image needs, never the multi-GB target/ folder. Idempotent:
# an unchanged binary and base hit the Engine's layer cache and give the same image id.
# With Docker Hub access and no prebuilt binary, build from source instead:
#   docker build -f deploy/Dockerfile -t kiln/kiln .
set -Eeuo pipefail
cd "$(dirname "$0")/.."

say() { printf '[build-image] %s\n' "$*"; }
die() { printf '[build-image] ERROR: %s\n' "$*" >&2; exit 1; }

binary=""
tag=kiln/kiln:dev
base=""
while (($#)); do
    case $1 in
        --binary) binary=${2:?--binary needs a path}; shift 2 ;;
        --tag) tag=${2:?--tag needs a value}; shift 2 ;;
        --base) base=${2:?--base needs an image}; shift 2 ;;
        -h | --help) sed -n '2,/^set -/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

docker info >/dev/null 2>&1 || die "no Docker Engine answers (run scripts/dev-env.sh up)"

if [[ -z $binary ]]; then
    binary=target/release/kiln
    say "cargo build --release --bin kiln (a no-op when nothing changed)"
    cargo build --release --bin kiln
fi
[[ -x $binary ]] || die "$binary is not an executable file"

if [[ -z $base ]]; then
    if docker image inspect kiln/bookworm:minbase >/dev/null 2>&1; then
        base=kiln/bookworm:minbase
    else
        base=debian:bookworm-slim
    fi
fi

ctx=$(mktemp -d "${TMPDIR:-/tmp}/kiln-image.XXXXXX")
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/deploy"
cp deploy/kiln.toml deploy/kiln-healthcheck "$ctx/deploy/"
if command -v strip >/dev/null 2>&1; then
    strip --strip-debug -o "$ctx/kiln" "$binary"
    say "binary: $binary ($(du -h "$binary" | cut -f1)), debug info stripped: $(du -h "$ctx/kiln" | cut -f1)"
else
    cp "$binary" "$ctx/kiln"
    say "binary: $binary ($(du -h "$binary" | cut -f1)); no 'strip' here (binutils), copied as is"
fi

version=$("$ctx/kiln" --version | awk '{print $2}')
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [[ $revision != unknown ]] && ! git diff --quiet HEAD -- src web Cargo.toml Cargo.lock 2>/dev/null; then
    revision="$revision-dirty"
fi
# The commit time, not the build time: the same commit gives the same labels (and image id).
created=$(git log -1 --format=%cI 2>/dev/null || echo unknown)

# The network RUN steps need, as scripts/dev-env.sh found it (bridge NAT, or host as fallback).
network=()
env_file=${KILN_ENV_DIR:-/var/lib/kiln-env}/dockerd.env
if [[ -r $env_file ]]; then
    # shellcheck disable=SC1090
    build_network=$(. "$env_file" && printf '%s' "${KILN_ENV_BUILD_NETWORK:-default}")
    [[ $build_network != default ]] && network=(--network "$build_network")
fi

say "docker build -f deploy/Dockerfile --target prebuilt --build-arg BASE_IMAGE=$base ${network[*]} -t $tag (kiln $version, $revision)"
start=$SECONDS
docker build -f deploy/Dockerfile --target prebuilt "${network[@]}" \
    --build-arg "BASE_IMAGE=$base" \
    --build-arg KILN_BINARY=kiln \
    --build-arg "KILN_VERSION=$version" \
    --build-arg "KILN_REVISION=$revision" \
    --build-arg "KILN_CREATED=$created" \
    -t "$tag" "$ctx"
size=$(docker image inspect --format '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1 / 1000000}')
say "built $tag in $((SECONDS - start)) s, $size (FROM $base)"
say "run it: docker run --rm -p 8080:8080 -v /var/run/docker.sock:/var/run/docker.sock --group-add \$(stat -c %g /var/run/docker.sock) -e KILN_REPO=https://git.example.com/org/specs.git $tag"
