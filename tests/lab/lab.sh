#!/usr/bin/env bash
# The local lab engine: a Docker engine and a systemd-capable Debian 12 image,
# both made on this machine with no container registry.
#
#   lab.sh engine   use a running Docker engine, or install and start one
#   lab.sh image    build the lab image unless it is already current
#   lab.sh up       engine + image
#   lab.sh status   say what is running and which image is in use
#   lab.sh down     remove lab containers and networks, stop the engine if we started it
#   lab.sh run -- CMD...
#                   engine + image, run CMD, then remove what CMD left and stop the
#                   engine again if this call started it (CI leaves no daemon behind)
#
# Environment:
#   DICOMSEC_LAB_IMAGE  image the scenarios use (default dicomsec/lab:debian12). When it
#                       names an image that already exists, nothing is built, so CI
#                       elsewhere can pull a registry image instead.
#   DICOMSEC_LAB_STATE  where the engine keeps its pid, log and config (default .lab/)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(cd "$here/../.." && pwd)
state=${DICOMSEC_LAB_STATE:-$top/.lab}
image=${DICOMSEC_LAB_IMAGE:-dicomsec/lab:debian12}
base_image=dicomsec/debian12:minbase
# Label that marks every container and network the lab creates, so `down`
# removes only ours and never a container someone else runs on this engine.
lab_label=dicomsec.lab=1

log() { printf 'lab: %s\n' "$*" >&2; }
die() { printf 'lab: error: %s\n' "$*" >&2; exit 1; }

# Run as root only where we must touch the system (packages, dockerd).
need_root() { [ "$(id -u)" = 0 ] || die "$1 needs root (run as root, or start Docker yourself)"; }

engine_alive() { timeout 10 docker info >/dev/null 2>&1; }

apt_install() {
    need_root "installing $*"
    # `apt-get update` once per run of this script, and only when something is missing.
    if [ -z "${_apt_updated:-}" ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
        _apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null
}

write_daemon_config() {
    # Keep every Docker network inside 198.51.100.0/24 (documentation range,
    # reserved for this lab); scenarios put their own networks in 198.18.0.0/15.
    # ip6tables (experimental in Docker 20.10) isolates lab networks over IPv6
    # as they are over IPv4; without it the host routes IPv6 between them.
    mkdir -p "$state"
    cat >"$state/daemon.json" <<'EOF'
{
  "bip": "198.51.100.1/25",
  "experimental": true,
  "ip6tables": true,
  "default-address-pools": [{"base": "198.51.100.128/25", "size": 27}],
  "storage-driver": "overlay2",
  "log-driver": "json-file",
  "log-opts": {"max-size": "10m", "max-file": "2"}
}
EOF
}

cmd_engine() {
    if engine_alive; then
        log "Docker engine is running: using it"
        return 0
    fi
    command -v dockerd >/dev/null 2>&1 || apt_install docker.io
    command -v docker >/dev/null 2>&1 || apt_install docker-cli
    need_root "starting dockerd"
    write_daemon_config
    log "starting dockerd (config $state/daemon.json, log $state/dockerd.log)"
    # Started by hand because the build machine has no systemd as PID 1; its
    # pid is recorded so that `down` stops exactly this daemon and no other.
    setsid dockerd --config-file "$state/daemon.json" --pidfile "$state/dockerd.pid" \
        >"$state/dockerd.log" 2>&1 </dev/null &
    echo $! >"$state/dockerd.started"
    for _ in $(seq 1 60); do
        engine_alive && { log "Docker engine is up"; return 0; }
        sleep 1
    done
    tail -n 20 "$state/dockerd.log" >&2 || true
    die "dockerd did not come up within 60 s"
}

# The apt mirror the machine already uses, for debootstrap.
host_mirror() {
    local uri
    uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [ -n "$uri" ] || uri=$(awk '/^deb / && $3 ~ /bookworm$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    echo "${uri:-http://deb.debian.org/debian}"
}

build_base_image() {
    if docker image inspect "$base_image" >/dev/null 2>&1; then
        return 0
    fi
    command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
    need_root "debootstrap"
    local rootfs="$state/rootfs"
    rm -rf "$rootfs"
    mkdir -p "$rootfs"
    log "debootstrap bookworm from $(host_mirror) (about 30 s)"
    debootstrap --variant=minbase bookworm "$rootfs" "$(host_mirror)" >"$state/debootstrap.log" 2>&1 \
        || { tail -n 20 "$state/debootstrap.log" >&2; die "debootstrap failed"; }
    # The image uses the same mirror as the machine that built it.
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        mkdir -p "$rootfs/etc/apt/sources.list.d"
        cp /etc/apt/sources.list.d/debian.sources "$rootfs/etc/apt/sources.list.d/"
        rm -f "$rootfs/etc/apt/sources.list"
    fi
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | docker import - "$base_image" >/dev/null
    rm -rf "$rootfs"
    log "imported $base_image"
}

# Python packages the lab hosts need, pinned like the dev tools.
lab_wheels="pynetdicom==3.0.4 pydicom==3.0.2"

# A short digest of the image recipe: a changed Dockerfile or wheel list rebuilds the image.
recipe_digest() { { cat "$here/image/Dockerfile"; echo "$lab_wheels"; } | sha256sum | cut -c1-16; }

fetch_wheels() {
    local pip
    pip=$(command -v "$top/.venv/bin/pip" || command -v pip3 || true)
    [ -n "$pip" ] || die "pip is needed to fetch the lab's Python wheels (run 'make setup')"
    rm -rf "$here/image/wheels"
    # shellcheck disable=SC2086
    "$pip" download -q --no-deps --only-binary=:all: -d "$here/image/wheels" $lab_wheels
}

cmd_image() {
    engine_alive || die "no Docker engine: run '$0 engine' first"
    local want have
    want=$(recipe_digest)
    if docker image inspect "$image" >/dev/null 2>&1; then
        have=$(docker image inspect -f '{{ index .Config.Labels "dicomsec.recipe" }}' "$image" 2>/dev/null || true)
        if [ -n "${DICOMSEC_LAB_IMAGE:-}" ] || [ "$have" = "$want" ]; then
            log "image $image is current"
            return 0
        fi
    fi
    build_base_image
    fetch_wheels
    log "building $image (about 1 minute)"
    docker build -q --force-rm --build-arg BASE="$base_image" --label "dicomsec.recipe=$want" \
        -t "$image" "$here/image" >/dev/null
    log "built $image"
}

cmd_status() {
    if ! engine_alive; then
        echo "engine: not running"
        return 1
    fi
    echo "engine: running ($(docker version -f '{{.Server.Version}}' 2>/dev/null))"
    if [ -f "$state/dockerd.started" ]; then
        echo "engine started by the lab, pid $(cat "$state/dockerd.started")"
    fi
    if docker image inspect "$image" >/dev/null 2>&1; then
        echo "image: $image"
    else
        echo "image: $image (not built)"
    fi
    docker ps --filter "label=$lab_label" --format 'container: {{.Names}} {{.Status}}'
}

cmd_down() {
    if engine_alive; then
        # Molecule instances carry our label (see molecule/shared/platforms.yml).
        docker ps -aq --filter "label=$lab_label" | xargs -r docker rm -f >/dev/null
        docker network ls -q --filter "label=$lab_label" | xargs -r docker network rm >/dev/null
    fi
    if [ -f "$state/dockerd.started" ]; then
        local pid
        pid=$(cat "$state/dockerd.started")
        if kill -0 "$pid" 2>/dev/null; then
            log "stopping the dockerd the lab started (pid $pid)"
            kill "$pid"
            for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
            kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
        fi
        rm -f "$state/dockerd.started"
        # dockerd starts containerd itself and stops it on exit; nothing else to reap.
    fi
}

cmd_run() {
    [ "${1:-}" = "--" ] && shift
    [ $# -gt 0 ] || die "run needs a command"
    local started_here=""
    engine_alive || started_here=1
    cmd_engine
    if [ -n "$started_here" ]; then
        trap cmd_down EXIT
    fi
    cmd_image
    "$@"
}

case "${1:-}" in
    engine) cmd_engine ;;
    image) cmd_image ;;
    up) cmd_engine; cmd_image ;;
    status) cmd_status ;;
    down) cmd_down ;;
    run) shift; cmd_run "$@" ;;
    *) echo "usage: $0 {engine|image|up|status|down}" >&2; exit 2 ;;
esac
