#!/usr/bin/env bash
# `make container-test`: build the CPU image with podman from a locally made Debian base, run it
# the way Kubernetes does (non-root, read-only root filesystem, no capabilities), and check it
# from the host over loopback: health SERVING, the HEALTHCHECK, a steered stream, metrics, and
# SIGTERM draining a stream in flight before a clean exit 0. A second run serves a tiny model
# and SAE mounted at /models. Needs root (rootful podman, debootstrap) on Debian or Ubuntu;
# installs podman, runc and debootstrap itself when they are missing.
#
# No image registry is needed: the base is `debootstrap --variant=minbase bookworm`, cached in
# build/container/ and in podman's storage, so reruns skip it (and reuse the build's layers).
# The CPU torch wheel (x86-64) goes into deploy/wheels/ (git-ignored): from pip's configured
# index, else from download.pytorch.org. Variables: TORCH_VERSION, DEBIAN_MIRROR, CA_BUNDLE,
# STEERING_TEST_IMAGE, PY (the host Python with the project installed). The image is kept.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=${TORCH_VERSION:-2.13.0}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
IMAGE=${STEERING_TEST_IMAGE:-localhost/steering-server:test}
BASE=localhost/steering-base:bookworm
BASE_PYTHON=3.11 # python3 of Debian bookworm: the torch wheel must match it
CACHE=build/container
PY=${PY:-.venv/bin/python}
GRACE_S=30 # the server's default, set explicitly through STEERING_GRACE_PERIOD_S
NAME=steering-test-$$
started=$(date +%s)

log() { printf '\n== %s (%ds)\n' "$*" "$(($(date +%s) - started))"; }
fail() {
    echo "FAIL: $*" >&2
    exit 1
}

# --- tools -----------------------------------------------------------------------------------
if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        fail "install podman, runc and debootstrap (apt-get install podman runc debootstrap)"
    fi
    log "installing podman, runc, debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        podman runc debootstrap ca-certificates >/dev/null
fi
[ "$(id -u)" = 0 ] || fail "run as root: the test uses rootful podman"

# Without systemd or a container engine daemon: cgroupfs and a file event log. runc, with lower
# limits: containers default to nofile 1048576 and nproc 4194304, above what this kind of machine
# allows ("error setting rlimit"); 16384 of each (or the shell's hard limit, if lower) is plenty.
PODMAN=(podman --cgroup-manager=cgroupfs --events-backend=file --runtime=runc)
pod() { "${PODMAN[@]}" "$@"; }
limit() { if [ "$1" = unlimited ] || [ "$1" -gt 16384 ]; then echo 16384; else echo "$1"; fi; }
nofile=$(limit "$(ulimit -Hn)")
nproc=$(limit "$(ulimit -Hu)")
ULIMITS=(--ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc")

# --- base image: Debian bookworm from debootstrap, like debian:bookworm-slim ------------------
mkdir -p "$CACHE"
if ! pod image exists "$BASE"; then
    tarball=$CACHE/bookworm-minbase.tar
    if [ ! -s "$tarball" ]; then
        log "debootstrap bookworm (cached in $tarball)"
        rootfs=$CACHE/rootfs
        rm -rf "$rootfs"
        debootstrap --variant=minbase bookworm "$rootfs" "$DEBIAN_MIRROR" >"$CACHE/debootstrap.log"
        cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $DEBIAN_MIRROR bookworm main
deb $DEBIAN_MIRROR bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
        rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
            "$rootfs"/var/cache/apt/archives/*.deb
        tar --numeric-owner -C "$rootfs" -cf "$tarball.part" .
        mv "$tarball.part" "$tarball"
        rm -rf "$rootfs"
    fi
    log "importing the base as $BASE"
    pod import --quiet --change 'CMD ["bash"]' "$tarball" "$BASE" >/dev/null
fi

# --- the CPU torch wheel ----------------------------------------------------------------------
torch_pin="torch==${TORCH_VERSION}+cpu"
shopt -s nullglob
wheels=(deploy/wheels/torch-"${TORCH_VERSION}"+cpu-cp"${BASE_PYTHON/./}"-*x86_64.whl)
if [ ${#wheels[@]} = 0 ]; then
    log "fetching $torch_pin for Python $BASE_PYTHON into deploy/wheels/"
    download=("$PY" -m pip download -q --no-deps --only-binary=:all: --dest deploy/wheels
        --python-version "$BASE_PYTHON" --platform manylinux_2_28_x86_64 "$torch_pin")
    "${download[@]}" 2>/dev/null \
        || "${download[@]}" --index-url https://download.pytorch.org/whl/cpu \
        || fail "no $torch_pin wheel: put one in deploy/wheels/"
fi

# --- build ------------------------------------------------------------------------------------
# pip in the build trusts what the host trusts (a TLS-inspecting proxy's CA, say): the host's CA
# bundle goes in as a build secret, which never lands in a layer.
ca_bundle=${CA_BUNDLE:-${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}}
trust=()
if [ -s "$ca_bundle" ]; then
    trust=(--secret "id=ca_bundle,src=$ca_bundle" --build-arg PIP_CERT=/run/secrets/ca_bundle)
fi
log "building $IMAGE"
build_started=$(date +%s)
pod build --format docker --pull=never "${ULIMITS[@]}" "${trust[@]}" \
    --build-arg BASE_IMAGE="$BASE" --build-arg TORCH_VERSION="${TORCH_VERSION}+cpu" \
    -t "$IMAGE" . >"$CACHE/build.log" 2>&1 \
    || {
        tail -40 "$CACHE/build.log"
        fail "image build (log: $CACHE/build.log)"
    }
build_s=$(($(date +%s) - build_started))
size=$(pod image inspect --format '{{.Size}}' "$IMAGE")
echo "built in ${build_s} s; image size $((size / 1000000)) MB"
[ "$(pod image inspect --format '{{.Config.User}}' "$IMAGE")" = "10001:10001" ] \
    || fail "the image does not run as user 10001"
tools=$(pod run --rm "${ULIMITS[@]}" --entrypoint /opt/venv/bin/python "$IMAGE" \
    -c 'import importlib.util as u; print(u.find_spec("grpc_tools") is not None)' \
    2> >(grep -v 'systemd connection' >&2))
[ "$tools" = False ] || fail "grpcio-tools is in the image"

# --- run it as Kubernetes would ---------------------------------------------------------------
free_port() {
    "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
cleanup() {
    pod rm -f -t 0 "$NAME" >/dev/null 2>&1 || true
    if [ -n "${models:-}" ]; then rm -rf "$models"; fi
}
trap cleanup EXIT

# $1: what it serves, then extra `podman run` arguments, `--`, and the server's arguments.
start() {
    grpc_port=$(free_port)
    metrics_port=$(free_port)
    local what=$1
    shift
    log "starting the container: $what"
    pod rm -f -t 0 "$NAME" >/dev/null 2>&1 || true
    local extra=()
    while [ "$1" != -- ]; do
        extra+=("$1")
        shift
    done
    shift
    local t0
    t0=$(date +%s)
    # `U`: the tmpfs belongs to the container's user. Podman logs that it cannot schedule the
    # HEALTHCHECK without systemd; `podman healthcheck run` below runs it by hand.
    pod run -d --name "$NAME" "${ULIMITS[@]}" \
        --read-only --tmpfs /tmp --tmpfs /var/cache/steering:rw,U \
        --cap-drop=all --security-opt=no-new-privileges \
        -p "127.0.0.1:$grpc_port:50051" -p "127.0.0.1:$metrics_port:9090" \
        -e STEERING_GRACE_PERIOD_S=$GRACE_S "${extra[@]}" "$IMAGE" "$@" \
        >/dev/null 2> >(grep -v 'systemd connection' >&2)
    local waited=0
    until "$PY" deploy/container_probe.py health "127.0.0.1:$grpc_port" 5 >/dev/null 2>&1; do
        waited=$((waited + 5))
        if [ "$(pod inspect --format '{{.State.Running}}' "$NAME")" != true ] \
            || [ $waited -ge 600 ]; then
            pod logs "$NAME" 2>&1 | tail -30
            fail "not SERVING (the container's log is above)"
        fi
    done
    echo "health: SERVING $(($(date +%s) - t0)) s after the start"
}

# SIGTERM (through `podman kill`, to tini, to the server), then exit 0 within the grace period.
stop_and_check_exit() {
    local sent
    sent=$(date +%s)
    if [ "${1:-}" = drain ]; then
        "$PY" deploy/container_probe.py drain "127.0.0.1:$grpc_port" \
            -- "${PODMAN[@]}" kill --signal TERM "$NAME"
    else
        pod kill --signal TERM "$NAME" >/dev/null
    fi
    local code took
    code=$(timeout $((GRACE_S + 30)) "${PODMAN[@]}" wait "$NAME") \
        || fail "no exit within the grace period"
    took=$(($(date +%s) - sent))
    pod logs "$NAME" 2>&1 | grep -E 'signal received|stopped' | sed 's/^/  log: /'
    echo "exit code $code, $took s after SIGTERM (grace $GRACE_S s)"
    [ "$code" = 0 ] || fail "exit code $code"
    [ "$took" -le "$GRACE_S" ] || fail "took longer than the grace period"
}

start "the demo" -- --demo
uid=$(pod exec "$NAME" id -u)
pid1=$(pod exec "$NAME" sh -c 'tr "\0" " " </proc/1/cmdline')
echo "user id $uid; PID 1: $pid1"
[ "$uid" != 0 ] || fail "runs as root"
case $pid1 in /usr/bin/tini*) ;; *) fail "PID 1 is not tini" ;; esac
pod healthcheck run "$NAME" >/dev/null || fail "the image's HEALTHCHECK"
echo "HEALTHCHECK: healthy"
"$PY" -m steering_client --target "127.0.0.1:$grpc_port" describe
"$PY" deploy/container_probe.py stream "127.0.0.1:$grpc_port" demo 632 490 || fail "stream"
"$PY" deploy/container_probe.py metrics "http://127.0.0.1:$metrics_port/metrics" || fail "metrics"
stop_and_check_exit drain

# A tiny random Gemma 2 and a Gemma Scope 2 SAE, mounted read-only at /models.
models=$(mktemp -d)
chmod 755 "$models"
"$PY" - "$models" <<'EOF'
import sys

import steering
from steering.demo.toy import build_model_folder, random_sae

build_model_folder(f"{sys.argv[1]}/tiny-gemma2", "gemma2")
steering.save_sae(random_sae(64, 128), f"{sys.argv[1]}/sae-layer1", "gemma_scope_2")
EOF
chmod -R a+rX "$models"
start "weights mounted at /models" -v "$models:/models:ro" \
    -e STEERING_MODEL=/models/tiny-gemma2 -e STEERING_SAE=toy=/models/sae-layer1@1 --
"$PY" deploy/container_probe.py stream "127.0.0.1:$grpc_port" toy 3 8 || fail "stream (/models)"
stop_and_check_exit

log "container test passed: build ${build_s} s, image $((size / 1000000)) MB"
