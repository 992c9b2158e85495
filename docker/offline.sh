#!/usr/bin/env bash
# The compose fleet on a machine that cannot pull images, in one command:
#
#   docker/offline.sh up       # or: docker/offline.sh (build only), then docker compose up
#
#  1. makes the base image logdrain-base:bookworm when it is missing
#     (docker/base-image.sh: debootstrap and docker import, pulls nothing;
#     needs root, so it runs it with sudo when you are not root);
#  2. builds the release binaries with cargo on this machine and stages them
#     in docker/bin/ (the images run them on the base image's glibc, Debian
#     bookworm's 2.36: build on a system whose glibc is not newer);
#  3. builds every image of docker-compose.yml on that base image, with the
#     binaries from docker/bin/ (BASE_IMAGE and BUILDER_IMAGE both set to it);
#  4. runs `compose ARGS...` when arguments are given (up, up -d, ...), with
#     the same settings.
#
# Where images can be pulled this script is not needed: `docker compose up`
# builds the binaries in Rust's image.
#
# Environment: LOGDRAIN_BASE_IMAGE (default logdrain-base:bookworm), and what
# docker/base-image.sh reads. Extra cargo arguments: CARGO_BUILD_ARGS.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
IMAGE=${LOGDRAIN_BASE_IMAGE:-logdrain-base:bookworm}
say() { echo "offline: $*" >&2; }
die() {
    echo "offline: error: $*" >&2
    exit 1
}

command -v docker >/dev/null || die "the docker command is not installed"
docker info >/dev/null 2>&1 ||
    die "cannot reach a Docker engine ('docker info' failed); start it, or check DOCKER_HOST and your permissions"
if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
    compose=(docker-compose)
else
    die "neither 'docker compose' (v2 plugin) nor 'docker-compose' is installed"
fi
command -v cargo >/dev/null || die "cargo not found; install the Rust toolchain (rustup.rs)"

started=$SECONDS
if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
    say "making the base image $IMAGE (docker/base-image.sh)"
    if [ "$(id -u)" = 0 ]; then
        LOGDRAIN_BASE_IMAGE=$IMAGE docker/base-image.sh
    elif sudo -n true 2>/dev/null; then
        sudo LOGDRAIN_BASE_IMAGE="$IMAGE" docker/base-image.sh
    else
        die "the base image $IMAGE is missing and making it needs root: run 'sudo docker/base-image.sh' once, then this again"
    fi
fi

say "building the release binaries (cargo build --release)"
bins=(logdrain-gateway agent-shim logdrain-test-intake)
# shellcheck disable=SC2086 # extra cargo arguments, split on purpose
cargo build --release --locked -p logdrain-gateway -p agent-shim -p logdrain-test-intake ${CARGO_BUILD_ARGS:-}
target_dir=$(cargo metadata --format-version 1 --no-deps |
    grep -o '"target_directory":"[^"]*"' | cut -d'"' -f4)
mkdir -p docker/bin
for bin in "${bins[@]}"; do
    cp -p "$target_dir/release/$bin" "docker/bin/$bin"
done

say "building the images on $IMAGE (${compose[*]} build)"
export BASE_IMAGE=$IMAGE BUILDER_IMAGE=$IMAGE
"${compose[@]}" build
say "images ready in $((SECONDS - started)) s"

if [ $# -gt 0 ]; then
    exec "${compose[@]}" "$@"
fi
say "start the fleet with: ${compose[*]} up"
