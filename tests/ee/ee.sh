#!/usr/bin/env bash
# Build the lab's execution environment and say what is in it.
#
#   ee.sh build    stage build/ee/ (the definition, the collection tarballs, the Python
#                  wheels) and build dicomsec/ee:<version> with ansible-builder
#   ee.sh image    print the image's name
#
# Needs `make build` (the collection tarball), `make lab` (the local base image) and the
# project's .venv (ansible-builder, pip, the `ansible` package whose copies of the
# dependencies are repacked). Nothing is pulled and nothing is pushed.
#
# Environment:
#   DICOMSEC_EE_IMAGE  the image to build (default dicomsec/ee:<galaxy.yml's version>)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(cd "$here/../.." && pwd)
version=$(awk '/^version:/ {print $2}' "$top/galaxy.yml")
image=${DICOMSEC_EE_IMAGE:-dicomsec/ee:$version}
stage=$top/build/ee
venv=$top/.venv/bin

log() { printf 'ee: %s\n' "$*" >&2; }
die() { printf 'ee: error: %s\n' "$*" >&2; exit 1; }

# A pin of requirements-dev.txt, so the EE runs the versions the tests ran.
dev_pin() {
    grep -i "^$1==" "$top/requirements-dev.txt" | head -n 1 || true
}

# The pip requirement the definition names at a dotted key.
definition_pin() {
    "$venv/python" - "$here/execution-environment.yml" "$1" <<'PY'
import sys, yaml
node = yaml.safe_load(open(sys.argv[1]))
for key in sys.argv[2].split("."):
    node = node[key]
print(node)
PY
}

cmd_build() {
    local tarball started core runner init site
    started=$(date +%s)
    tarball=$top/build/dicomsec-hardening-$version.tar.gz
    [ -f "$tarball" ] || die "no $tarball: run 'make build' first"
    [ -x "$venv/ansible-builder" ] || die "ansible-builder is missing from .venv: run 'make setup'"
    docker image inspect dicomsec/debian12:minbase >/dev/null 2>&1 \
        || die "the base image dicomsec/debian12:minbase is missing: run 'make lab'"

    core=$(definition_pin dependencies.ansible_core.package_pip)
    runner=$(definition_pin dependencies.ansible_runner.package_pip)
    init=$(definition_pin options.container_init.package_pip)
    [ "$core" = "$(dev_pin ansible-core)" ] \
        || die "execution-environment.yml installs $core, requirements-dev.txt pins $(dev_pin ansible-core): make them agree"

    rm -rf "$stage"
    mkdir -p "$stage/collections" "$stage/wheels"
    cp "$here/execution-environment.yml" "$here/requirements.yml" "$stage/"
    cp "$tarball" "$stage/collections/dicomsec-hardening.tar.gz"
    # The releases of the dependencies that the `ansible` package installed in .venv.
    site=$("$venv/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    for c in general crypto; do
        [ -f "$site/ansible_collections/community/$c/MANIFEST.json" ] \
            || die "community.$c is missing from .venv (the 'ansible' package of requirements-dev.txt)"
        "$venv/python" "$here/repack_collection.py" "$site/ansible_collections/community/$c" \
            "$stage/collections/community-$c.tar.gz" >&2
    done

    # Every wheel any stage installs, for Debian 12's Python 3.11 (the build machine's):
    # ansible-core and ansible-runner, ansible-builder's own bindep, the container init and
    # what the collection's requirements.txt asks for, at the versions the tests use.
    log "downloading the wheels of the EE's Python packages"
    # shellcheck disable=SC2046
    "$venv/pip" download -q --disable-pip-version-check --only-binary=:all: -d "$stage/wheels" \
        "$core" "$runner" "$init" bindep==2.14.0 \
        $(dev_pin pynetdicom) $(dev_pin pydicom) $(dev_pin jmespath) -r "$top/requirements.txt" \
        2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)

    log "building $image with ansible-builder (log: build/ee/ansible-builder.log)"
    if ! "$venv/ansible-builder" build --container-runtime docker -v 2 \
            -f "$stage/execution-environment.yml" -c "$stage/context" -t "$image" \
            >"$stage/ansible-builder.log" 2>&1; then
        tail -n 40 "$stage/ansible-builder.log" >&2
        die "ansible-builder failed"
    fi
    log "built $image in $(( $(date +%s) - started )) s"
    docker run --rm "$image" bash -c 'ansible --version | head -n 1; ansible-galaxy collection list 2>/dev/null | grep -E "^(dicomsec|community)\."' >&2
}

case "${1:-}" in
    build) cmd_build ;;
    image) echo "$image" ;;
    *) echo "usage: $0 {build|image}" >&2; exit 2 ;;
esac
