#!/usr/bin/env bash
# Build the trainer image (docker/Dockerfile) with podman, reaching the same Python package sources as this machine.
#
# pip inside the build gets the host's index, extra indexes, find-links and CA bundle (from `pip config list` and the
# PIP_* environment): local directories and file:// indexes are mounted read-only into every RUN step, and the values
# are passed as the Dockerfile's PIP_* build arguments, which never end up in the image. The build uses the host's
# network (--network host), so a package mirror on the host's loopback or resolver works as it does for the host.
#
# Usage: docker/build-image.sh [--variant cpu|gpu] [--horovod 0|1] [--tag IMAGE]
#   defaults: --variant cpu --horovod 1 --tag localhost/cifar-job:dev-<variant>[-nohvd]
# Prints the image name on stdout (last line) and the build time on stderr. Runs docker/podman-setup.sh first.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
variant=cpu horovod=1 tag=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --variant) variant="$2"; shift 2 ;;
    --horovod) horovod="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$variant" == cpu || "$variant" == gpu ]] || { echo "--variant must be cpu or gpu" >&2; exit 2; }
[[ "$horovod" == 0 || "$horovod" == 1 ]] || { echo "--horovod must be 0 or 1" >&2; exit 2; }
[[ -n "$tag" ]] || tag="localhost/cifar-job:dev-$variant$([[ "$horovod" == 0 ]] && echo -nohvd || true)"
log() { echo "[build-image] $*" >&2; }

bash "$repo/docker/podman-setup.sh"

# --- the host's pip sources ---
python="${PYTHON:-$repo/.venv/bin/python}"
[[ -x "$python" ]] || python=python3
declare -A pipcfg=()
while IFS= read -r line; do
  # lines look like  global.find-links='/opt/wheels'  or  :env:.cert='/etc/...'; the environment wins over files
  key="${line%%=*}" value="${line#*=}"
  value="${value#\'}" value="${value%\'}"
  name="${key#*.}" scope="${key%%.*}"
  case "$scope" in :env:|global|install) ;; *) continue ;; esac
  if [[ "$scope" == ":env:" || -z "${pipcfg[$name]:-}" ]]; then pipcfg[$name]="$value"; fi
done < <("$python" -m pip config list 2>/dev/null)

build_args=() mounts=()
declare -A mounted=()
mount_ro() {  # mount a host directory at the same path in every RUN step, once
  local dir="$1"
  [[ -d "$dir" && -z "${mounted[$dir]:-}" ]] || return 0
  mounted[$dir]=1
  mounts+=(-v "$dir:$dir:ro")
}
local_sources() {  # mount what a space-separated list of URLs/paths needs; file:// indexes need their parent (files/)
  local item path
  for item in $1; do
    case "$item" in
      file://*) path="${item#file://}" ;;
      /*) path="$item" ;;
      *) continue ;;
    esac
    path="${path%/}"
    [[ "$(basename "$path")" == simple ]] && path="$(dirname "$path")"
    mount_ro "$path"
  done
}
for name in index-url extra-index-url find-links; do
  value="${pipcfg[$name]:-}"
  [[ -n "$value" ]] || continue
  arg="PIP_$(echo "$name" | tr 'a-z-' 'A-Z_')"
  build_args+=(--build-arg "$arg=$value")
  local_sources "$value"
done
cert="${pipcfg[cert]:-}"
if [[ -n "$cert" && -f "$cert" ]]; then
  # Not over /etc/ssl/certs: the build installs ca-certificates, which writes there.
  mounts+=(-v "$(readlink -f "$cert"):/run/host-pip-ca.crt:ro")
  build_args+=(--build-arg PIP_CERT=/run/host-pip-ca.crt)
fi

log "podman build $tag (VARIANT=$variant WITH_HOROVOD=$horovod; pip sources: ${build_args[*]:-PyPI} ${mounts[*]:-})"
start=$SECONDS
podman build \
  --file "$repo/docker/Dockerfile" \
  --ignorefile "$repo/docker/Dockerfile.dockerignore" \
  --build-arg "VARIANT=$variant" \
  --build-arg "WITH_HOROVOD=$horovod" \
  "${build_args[@]}" \
  "${mounts[@]}" \
  --network host \
  --tag "$tag" \
  "$repo" >&2
log "built $tag in $((SECONDS - start)) s"
echo "$tag"
