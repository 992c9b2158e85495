#!/usr/bin/env bash
# Makes the base image of the docker compose fleet WITHOUT pulling any image:
# a minimal Debian root filesystem made with debootstrap, with python3, curl,
# ca-certificates and moto[server] (the CloudWatch Logs stand-in) in a venv
# at /opt/moto, imported with `docker import`.
#
# Needs: root (debootstrap and chroot), debootstrap, a Debian mirror, python3
# with pip on the host (it downloads the moto wheels, honouring your pip
# configuration: index, proxy, certificates), and a Docker engine.
#
# On a machine that can pull images you do not need this script at all:
#   BASE_IMAGE=debian:bookworm-slim docker compose up --build
# (the Dockerfiles install whatever the base image lacks).
#
# Usage: docker/base-image.sh [--force]
#   --force            rebuild even if the image exists
# Environment:
#   LOGDRAIN_BASE_IMAGE  image name to make   (default logdrain-base:bookworm)
#   DEBIAN_SUITE         Debian release         (default bookworm; its glibc must be at
#                                                least the one the binaries were built with)
#   DEBIAN_MIRROR        Debian mirror URL      (default http://deb.debian.org/debian)
#   MOTO_VERSION         moto version           (default 5.2.5)
set -euo pipefail

IMAGE=${LOGDRAIN_BASE_IMAGE:-logdrain-base:bookworm}
SUITE=${DEBIAN_SUITE:-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
MOTO_VERSION=${MOTO_VERSION:-5.2.5}
PACKAGES=python3,python3-venv,ca-certificates,curl
FORCE=0

die() {
    echo "base-image: error: $*" >&2
    exit 1
}
say() { echo "base-image: $*" >&2; }

for arg in "$@"; do
    case $arg in
        --force) FORCE=1 ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *) die "unknown argument '$arg'; use --force or --help" ;;
    esac
done

docker info >/dev/null 2>&1 ||
    die "cannot reach a Docker engine ('docker info' failed); start it, or check DOCKER_HOST and your permissions"

if [ "$FORCE" = 0 ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    say "$IMAGE already exists; nothing to do (pass --force to rebuild it)"
    exit 0
fi

[ "$(id -u)" = 0 ] || die "debootstrap and chroot need root: run 'sudo $0'"
if ! command -v debootstrap >/dev/null && command -v apt-get >/dev/null; then
    say "debootstrap is not installed; installing it with apt-get"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap; } >"${TMPDIR:-/tmp}/logdrain-apt.log" 2>&1 ||
        say "apt-get install debootstrap failed (see ${TMPDIR:-/tmp}/logdrain-apt.log)"
fi
command -v debootstrap >/dev/null ||
    die "debootstrap is not installed: 'apt-get install debootstrap' (or use BASE_IMAGE=debian:${SUITE}-slim on a machine that can pull images)"
python3 -m pip --version >/dev/null 2>&1 ||
    die "python3 with pip is needed on this machine to download moto: 'apt-get install python3-pip'"

case $(uname -m) in
    x86_64) ARCH=amd64 WHEEL_ARCH=x86_64 ;;
    aarch64) ARCH=arm64 WHEEL_ARCH=aarch64 ;;
    *) die "unsupported machine $(uname -m): this script knows x86_64 and aarch64" ;;
esac

WORK=$(mktemp -d "${TMPDIR:-/tmp}/logdrain-base.XXXXXX")
ROOTFS=$WORK/rootfs
# Runs a command in the rootfs with a clean environment: the host's pip and
# locale settings mean nothing inside.
in_rootfs() { env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 chroot "$ROOTFS" "$@"; }
cleanup() {
    # debootstrap may leave /proc mounted in the rootfs when it fails midway.
    if mountpoint -q "$ROOTFS/proc" 2>/dev/null; then umount "$ROOTFS/proc" || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

started=$(date +%s)
say "debootstrap $SUITE ($ARCH, minbase + $PACKAGES) from $MIRROR"
debootstrap --variant=minbase --arch="$ARCH" --include="$PACKAGES" \
    "$SUITE" "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || {
    tail -n 30 "$WORK/debootstrap.log" >&2
    die "debootstrap failed (log above); check DEBIAN_MIRROR=$MIRROR and DEBIAN_SUITE=$SUITE"
}

say "debootstrap done in $(($(date +%s) - started)) s"
PY_VERSION=$(in_rootfs python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
PY_TAG=cp${PY_VERSION/./}
say "downloading moto[server]==$MOTO_VERSION wheels for CPython $PY_VERSION ($WHEEL_ARCH)"
# Downloaded by the host's pip for the rootfs' Python, then installed inside
# the chroot without network access: only the host needs to reach PyPI.
python3 -m pip download --quiet --disable-pip-version-check \
    --dest "$ROOTFS/tmp/wheels" --only-binary=:all: \
    --implementation cp --python-version "$PY_VERSION" --abi "$PY_TAG" \
    --platform "manylinux2014_$WHEEL_ARCH" --platform "manylinux_2_17_$WHEEL_ARCH" \
    --platform "manylinux_2_28_$WHEEL_ARCH" \
    "moto[server]==$MOTO_VERSION" ||
    die "pip could not download moto[server]==$MOTO_VERSION; check your pip index/proxy settings"
say "wheels downloaded ($(($(date +%s) - started)) s so far)"

say "installing moto into /opt/moto"
in_rootfs python3 -m venv /opt/moto
in_rootfs /opt/moto/bin/pip install --quiet --disable-pip-version-check \
    --no-index --find-links /tmp/wheels "moto[server]==$MOTO_VERSION"
in_rootfs /opt/moto/bin/python -c 'import moto, boto3; print("moto", moto.__version__)' >&2

# Leave nothing of this machine or of the build in the image: Docker provides
# resolv.conf, hosts and hostname at run time.
rm -rf "$ROOTFS/tmp/wheels" "$ROOTFS/var/lib/apt/lists/"* "$ROOTFS/var/cache/apt/"*.bin \
    "$ROOTFS/var/cache/apt/archives/"*.deb "$ROOTFS/var/log/"*.log "$ROOTFS/root/.cache"
: >"$ROOTFS/etc/resolv.conf"
: >"$ROOTFS/etc/hostname"

say "importing the root filesystem as $IMAGE"
tar --numeric-owner -C "$ROOTFS" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change "LABEL org.opencontainers.image.description=\"logdrain compose base: Debian $SUITE minbase, python3, curl, moto $MOTO_VERSION in /opt/moto\"" \
    --change 'CMD ["/bin/bash"]' \
    - "$IMAGE" >/dev/null

size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
say "made $IMAGE ($((size / 1024 / 1024)) MiB) in $(($(date +%s) - started)) s"
