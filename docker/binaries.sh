#!/bin/sh
# Run in docker/Dockerfile's binaries stage, in a copy of the repository:
# puts logdrain-gateway, agent-shim and logdrain-test-intake in directory $1.
#
# With cargo in the builder image (the default, Rust's official image) they
# are built from the source. Without it (the offline base image) they are
# taken from docker/bin/, where docker/offline.sh staged them.
set -eu

out=$1
bins="logdrain-gateway agent-shim logdrain-test-intake"
mkdir -p "$out"

if command -v cargo >/dev/null 2>&1; then
    cargo build --release --locked -p logdrain-gateway -p agent-shim -p logdrain-test-intake
    for bin in $bins; do cp "target/release/$bin" "$out/"; done
    exit 0
fi

for bin in $bins; do
    if [ ! -x "docker/bin/$bin" ]; then
        echo "binaries: the builder image has no cargo and docker/bin/$bin is missing." \
            "Where images can be pulled, leave BUILDER_IMAGE unset (Rust's image builds them);" \
            "with no registry, run docker/offline.sh, which stages them." >&2
        exit 1
    fi
    cp "docker/bin/$bin" "$out/"
done
