#!/bin/sh
# The base images the Dockerfile and the compose files name (python:3.11-slim, redis:7), made from Debian's
# packages, for a host that cannot pull them from a registry: an air-gapped site, a closed network.
#
#   deploy/make-base-images.sh            # for each image: present -> kept; else pulled; else made here
#   deploy/make-base-images.sh --make     # made here, without trying a registry (replaces present ones)
#
# Made here: `debootstrap --variant=minbase` of Debian 12 (bookworm) from DEBIAN_MIRROR (default: the mirror
# apt uses on this host; an air-gapped site points it at its local mirror) with python3, pip, venv, the
# Python headers (the Dockerfile compiles the C hot path), redis-server, redis-sentinel, libsndfile1 and
# ca-certificates; then, as the registry's images do: root may pip-install (Debian's EXTERNALLY-MANAGED
# marker removed), `python` is python3, /data exists. The file system is `docker import`ed as
# python:3.11-slim, and redis:7 is built on it (WORKDIR /data, CMD redis-server): both names the files use,
# so they build and run unchanged. The images carry the label org.ocycle.base=debian so that they are told
# apart from the registry's. Needs root and debootstrap (installed with apt-get when missing). ~2-3 min.
set -eu

PYTHON_IMAGE=${PYTHON_IMAGE:-python:3.11-slim}
REDIS_IMAGE=${REDIS_IMAGE:-redis:7}
SUITE=${SUITE:-bookworm}
PACKAGES=python3,python3-pip,python3-venv,libpython3.11-dev,redis-server,redis-sentinel,libsndfile1,ca-certificates
PULL_TIMEOUT=${PULL_TIMEOUT:-60}

say() { echo "base images: $*" >&2; }

apt_mirror() {  # the first Debian mirror apt is set up with here
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] && sed -n 's/^URIs: *\([^ ]*\/debian\)$/\1/p' "$f"
    done | head -n 1 | grep . && return
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
        sed -n 's/^deb  *\(\[[^]]*\] *\)\{0,1\}\([^ ]*\/debian\)\/\{0,1\} .*/\2/p' | head -n 1 | grep . && return
    echo http://deb.debian.org/debian
}

have() { docker image inspect "$1" >/dev/null 2>&1; }

pull() { timeout "$PULL_TIMEOUT" docker pull -q "$1" >/dev/null 2>&1; }

make_images() {
    mirror=${DEBIAN_MIRROR:-$(apt_mirror)}
    if ! command -v debootstrap >/dev/null; then
        say "installing debootstrap (apt-get)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
    fi
    rootfs=$(mktemp -d /var/tmp/ocycle-rootfs.XXXXXX)
    trap 'rm -rf "$rootfs"' EXIT INT TERM
    say "debootstrap $SUITE from $mirror into $rootfs"
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || {
        tail -n 20 "$rootfs.log" >&2; rm -f "$rootfs.log"; return 1; }
    rm -f "$rootfs.log"
    rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED
    ln -sf python3 "$rootfs/usr/bin/python"
    mkdir -p "$rootfs/data"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    say "importing $PYTHON_IMAGE"
    tar -C "$rootfs" -c . | docker import \
        --change 'ENV LANG=C.UTF-8' \
        --change 'LABEL org.ocycle.base=debian' \
        --change 'CMD ["python3"]' - "$PYTHON_IMAGE" >/dev/null
    say "building $REDIS_IMAGE on it"
    printf 'FROM %s\nWORKDIR /data\nEXPOSE 6379\nCMD ["redis-server"]\n' "$PYTHON_IMAGE" |
        docker build -q -t "$REDIS_IMAGE" - >/dev/null
}

if [ "${1:-}" = "--make" ]; then
    make_images
elif have "$PYTHON_IMAGE" && have "$REDIS_IMAGE"; then
    say "$PYTHON_IMAGE and $REDIS_IMAGE are present"
elif pull "$PYTHON_IMAGE" && pull "$REDIS_IMAGE"; then
    say "pulled $PYTHON_IMAGE and $REDIS_IMAGE"
else
    say "cannot pull $PYTHON_IMAGE and $REDIS_IMAGE: making them from Debian packages"
    make_images
fi
for image in "$PYTHON_IMAGE" "$REDIS_IMAGE"; do
    echo "$image $(docker image inspect -f '{{.Id}} {{index .Config.Labels "org.ocycle.base"}}' "$image")"
done
