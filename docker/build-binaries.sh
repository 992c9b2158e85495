#!/usr/bin/env bash
# Builds the release binaries the compose images need (logdrain-gateway,
# agent-shim, logdrain-test-intake) with cargo on this machine, and stages
# them in docker/bin/, the directory the Dockerfiles copy them from.
#
# The images run them on the base image's glibc (Debian bookworm: 2.36), so
# build on a system whose glibc is not newer, or choose a newer BASE_IMAGE;
# the image build stops with a clear error otherwise.
#
# Usage: docker/build-binaries.sh   (extra arguments go to cargo build)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
command -v cargo >/dev/null || {
    echo "build-binaries: error: cargo not found; install the Rust toolchain (rustup.rs)" >&2
    exit 1
}
binaries=(logdrain-gateway agent-shim logdrain-test-intake)
started=$(date +%s)
cargo build --release -p logdrain-gateway -p agent-shim -p logdrain-test-intake "$@"
target_dir=$(cargo metadata --format-version 1 --no-deps |
    grep -o '"target_directory":"[^"]*"' | cut -d'"' -f4)
mkdir -p docker/bin
for bin in "${binaries[@]}"; do
    cp -p "$target_dir/release/$bin" "docker/bin/$bin"
done
echo "build-binaries: staged ${binaries[*]} in docker/bin/ ($(($(date +%s) - started)) s)" >&2
