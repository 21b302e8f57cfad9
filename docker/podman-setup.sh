#!/usr/bin/env bash
# Make this machine able to build and run the trainer image with podman, without a daemon and without a registry.
# Idempotent: what is already in place is left alone (a second run takes about a second).
#
#   1. podman, buildah, runc, debootstrap from Debian (apt-get; needs root)
#   2. /etc/containers/containers.conf.d/50-cifar-job.conf: runtime runc (crun fails on this machine's cgroups) and
#      default ulimits (podman's default nofile exceeds the hard limit here, and runc then refuses to start anything)
#   3. the base image docker/Dockerfile names (FROM debian:12.11-slim): pulled where a registry is reachable, else made
#      with `debootstrap --variant=minbase bookworm` and `podman import` under that name, so the Dockerfile builds
#      unchanged. (The stand-in is Debian 12 as the mirror has it today, not the 12.11 point release.)
#
# Usage: docker/podman-setup.sh      Env: DEBIAN_MIRROR (default http://deb.debian.org/debian)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
conf=/etc/containers/containers.conf.d/50-cifar-job.conf
log() { echo "[podman-setup] $*" >&2; }
die() { echo "[podman-setup] ERROR: $*" >&2; exit 1; }

# --- 1. tools ---
missing=()
for tool in podman buildah runc debootstrap; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  [[ "$(id -u)" == 0 ]] || die "missing ${missing[*]}; run this script as root or apt-get install ${missing[*]}"
  log "apt-get install ${missing[*]}"
  apt-get update -qq
  # With recommends: kube play builds its pod "pause" image from catatonit, a recommended package.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --- 2. containers.conf ---
wanted='# Written by docker/podman-setup.sh (cifar-job): crun fails on this machine'"'"'s cgroups; podman'"'"'s default nofile
# limit is above the hard limit here, so runc refuses to start containers without explicit ulimits.
[engine]
runtime = "runc"

[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]'
if [[ "$(cat "$conf" 2>/dev/null)" != "$wanted" ]]; then
  [[ "$(id -u)" == 0 ]] || die "$conf needs writing; run this script as root"
  log "writing $conf"
  mkdir -p "$(dirname "$conf")"
  printf '%s\n' "$wanted" > "$conf"
fi

# --- 3. base image ---
base="$(sed -n 's/^FROM \([^ ]*\) AS base$/\1/p' "$repo/docker/Dockerfile")"
[[ -n "$base" ]] || die "no 'FROM <image> AS base' line in docker/Dockerfile"
case "$base" in */*) full="$base" ;; *) full="docker.io/library/$base" ;; esac
if podman image exists "$full"; then
  log "base image $full is present"
elif podman pull -q "$full" >/dev/null 2>&1; then
  log "pulled $full"
else
  [[ "$base" == debian:12* ]] || die "cannot pull $full and can only make a Debian 12 stand-in"
  log "no registry: making $full with debootstrap --variant=minbase bookworm (about a minute)"
  rootfs="$(mktemp -d /var/tmp/cifar-job-rootfs.XXXXXX)"
  trap 'rm -rf "$rootfs"' EXIT
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
    || { tail -20 "$rootfs.log" >&2; rm -f "$rootfs.log"; die "debootstrap failed"; }
  rm -f "$rootfs.log"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | podman import -q \
    --change 'CMD ["bash"]' --change 'LABEL org.opencontainers.image.description=debootstrap-stand-in' \
    - "$full" >/dev/null
  log "imported $full ($(cat "$rootfs/etc/debian_version" 2>/dev/null || echo '?'))"
fi
