#!/bin/sh
# Run by the Dockerfiles at build time: makes sure the base image has what an
# image needs, installing only what is missing.
#
# On the base image made by docker/base-image.sh everything is present, so
# nothing is fetched (offline builds). On a stock image such as
# debian:bookworm-slim the missing pieces are installed with apt-get and pip,
# which then needs network access during `docker compose build`.
#
# Usage: ensure-runtime.sh NEED...   where NEED is curl, python3 or moto
# (moto = moto[server] in a venv at /opt/moto, version $MOTO_VERSION).
set -eu

MOTO_VERSION=${MOTO_VERSION:-5.2.5}
apt_packages=""
need_moto=0

for need in "$@"; do
    case $need in
        curl)
            command -v curl >/dev/null 2>&1 || apt_packages="$apt_packages curl"
            [ -s /etc/ssl/certs/ca-certificates.crt ] || apt_packages="$apt_packages ca-certificates"
            ;;
        python3)
            command -v python3 >/dev/null 2>&1 || apt_packages="$apt_packages python3"
            ;;
        moto)
            if [ ! -x /opt/moto/bin/moto_server ]; then
                need_moto=1
                command -v python3 >/dev/null 2>&1 || apt_packages="$apt_packages python3"
                python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || apt_packages="$apt_packages python3-venv"
                [ -s /etc/ssl/certs/ca-certificates.crt ] || apt_packages="$apt_packages ca-certificates"
            fi
            ;;
        *)
            echo "ensure-runtime: unknown need '$need': use curl, python3 or moto" >&2
            exit 2
            ;;
    esac
done

if [ -n "$apt_packages" ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "ensure-runtime: the base image lacks$apt_packages and has no apt-get;" \
            "use docker/base-image.sh or a Debian/Ubuntu BASE_IMAGE" >&2
        exit 1
    fi
    echo "ensure-runtime: installing$apt_packages (the base image lacks them)" >&2
    apt-get update
    # shellcheck disable=SC2086 # a list of package names
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $apt_packages
    rm -rf /var/lib/apt/lists/*
fi

if [ "$need_moto" = 1 ]; then
    echo "ensure-runtime: installing moto[server]==$MOTO_VERSION into /opt/moto" >&2
    python3 -m venv /opt/moto
    /opt/moto/bin/pip install --no-cache-dir --disable-pip-version-check "moto[server]==$MOTO_VERSION"
fi
