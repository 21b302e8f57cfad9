"""Distributed backends in real two-process runs on 127.0.0.1 (CPU); the version table, cluster discovery and the
peer-loss errors: tests/unit/test_distribute_config.py.

Two kinds of process tests:
  - tests/support/dist_train.py, a minimal custom loop written only against the Backend interface, on two workers:
    identical weights from different initial values, disjoint shards covering the data, all_reduce_sum; then one worker
    is lost and the other must exit with EXIT_PEER_LOST within PEER_LOSS_DEADLINE seconds instead of hanging;
  - the real trainer (`python -m job train`) on two workers with global batch 2b must end with the checkpoint and
    evaluation of one process with batch 2b (relative difference < 1e-5; no augmentation, no dropout).
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.support.trainer_runs import free_loopback_ports

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from job.errors import EXIT_PEER_LOST  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
GLOBAL_BATCH = 8  # two workers x 4; dist_train.py has 32 examples, so 4 steps are one full epoch
STEPS = 4
# distribute.collective_timeout_seconds of the peer-loss runs. It also bounds start-up (Horovod's rendezvous waits
# that long for the other rank), so it leaves room for a worker that imports TF late on the shared 2 cores; the
# trainer runs, which must succeed, get a generous one.
COLLECTIVE_TIMEOUT = 30
RELAXED_TIMEOUT = 120
# A survivor must be gone this long after its peer was lost (detection is the collective timeout at worst).
PEER_LOSS_DEADLINE = COLLECTIVE_TIMEOUT + 60
HOROVOD = importlib.util.find_spec("horovod") is not None
needs_horovod = pytest.mark.skipif(not HOROVOD, reason="horovod is not installed; run docker/build-horovod.sh")


# ---------------------------------------------------------------------------------------------------- processes


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(REPO),
               JOB_PROGRESS="log")
    for key in ("TF_CONFIG", "JOB_COMPLETION_INDEX", "WORKER_HOSTS"):
        env.pop(key, None)
    env.update(extra)
    return env


def _multiworker_env(index: int, ports: list[int]) -> dict[str, str]:
    """A Kubernetes Indexed Job's view: this pod's index plus every worker's address."""
    return _env(JOB_COMPLETION_INDEX=str(index), WORKER_HOSTS=",".join(f"127.0.0.1:{p}" for p in ports))


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(args, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=REPO)


def _stop_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()  # also ends a SIGSTOPped process
        p.wait(timeout=60)


def _wait_all_ok(procs: list[subprocess.Popen], logs: list[Path], timeout: float = 600) -> None:
    try:
        for p in procs:
            p.wait(timeout=timeout)
    finally:
        _stop_all(procs)
    for p, log in zip(procs, logs):
        assert p.returncode == 0, f"exit {p.returncode}:\n{log.read_text()[-3000:]}"


def run_on_two_workers(command: list[str], backend: str, out: Path, timeout: float = 600) -> list[Path]:
    """`command` on two workers on 127.0.0.1, waited for until both exit 0: two processes placed as the pods of an
    Indexed Job (multiworker) or two ranks under `horovodrun --gloo` (horovod). Returns their logs (horovodrun: one)."""
    if backend == "multiworker":
        ports = free_loopback_ports(2)
        logs = [out / f"worker-{i}.log" for i in range(2)]
        procs = [_start(command, _multiworker_env(i, ports), logs[i]) for i in range(2)]
    else:
        horovodrun = Path(sys.executable).parent / "horovodrun"
        logs = [out / "horovodrun.log"]
        env = _env(PATH=f"{horovodrun.parent}{os.pathsep}{os.environ.get('PATH', '')}")
        procs = [_start([str(horovodrun), "--gloo", "-np", "2", "-H", "localhost:2", *command], env, logs[0])]
    _wait_all_ok(procs, logs, timeout)
    return logs


def _wait_for_file(path: Path, procs: list[subprocess.Popen], logs: list[Path], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        for p, log in zip(procs, logs):
            assert p.poll() is None, f"a worker exited early with {p.returncode}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {path.name} after {timeout} s"
        time.sleep(0.2)


# --- the Backend contract, then losing a peer, with tests/support/dist_train.py ---------------------------------


def _dist_train(backend: str, out: Path) -> list[str]:
    return [sys.executable, "-m", "tests.support.dist_train", "--backend", backend, "--global-batch", str(GLOBAL_BATCH),
            "--steps", str(STEPS), "--until-peer-lost", "--timeout", str(COLLECTIVE_TIMEOUT), "--out", str(out)]


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _weights(result: dict[str, np.ndarray]) -> list[np.ndarray]:
    return [result[f"arr_{i}"] for i in range(sum(k.startswith("arr_") for k in result))]


def _assert_backend_contract(out: Path) -> None:
    workers = [_load(out / f"worker-{i}.npz") for i in range(2)]
    # Each worker started from its own random init: identical weights mean the backend synchronised the start and
    # summed the gradients the same way on both.
    for a, b in zip(_weights(workers[0]), _weights(workers[1])):
        np.testing.assert_array_equal(a, b)
    # run_step sums over all replicas: both report the same whole-batch loss.
    np.testing.assert_array_equal(workers[0]["losses"], workers[1]["losses"])
    # Shards are disjoint and together cover the epoch (32 examples = 4 steps x 8) exactly once.
    seen = [w["seen"].tolist() for w in workers]
    assert len(seen[0]) == len(set(seen[0])) == len(seen[1]) == STEPS * GLOBAL_BATCH // 2
    assert not set(seen[0]) & set(seen[1])
    assert set(seen[0]) | set(seen[1]) == set(range(STEPS * GLOBAL_BATCH))
    # all_reduce_sum adds every worker's host numbers; exactly one chief.
    for w in workers:
        np.testing.assert_array_equal(w["totals"], [STEPS * GLOBAL_BATCH, 2.0])
    assert [w["meta"].tolist() for w in workers] == [[2, 2, 1], [2, 2, 0]]


def _lose_one_and_watch_the_other(procs: list[subprocess.Popen], logs: list[Path], victim: int,
                                  how: signal.Signals) -> None:
    """Send `how` to worker `victim` mid-training; the other must exit with EXIT_PEER_LOST within the deadline."""
    survivor = 1 - victim
    procs[victim].send_signal(how)
    try:
        procs[survivor].wait(timeout=PEER_LOSS_DEADLINE)
    except subprocess.TimeoutExpired:
        pytest.fail(f"worker {survivor} still running {PEER_LOSS_DEADLINE} s after worker {victim} got {how.name}")
    assert procs[survivor].returncode == EXIT_PEER_LOST, logs[survivor].read_text()[-3000:]
    assert "peer lost" in logs[survivor].read_text()


@pytest.mark.slow
@pytest.mark.timeout(900)  # two TF processes and a reference run
def test_multiworker_backend_contract_then_chief_killed(tmp_path):
    # Killing the chief is the harder case: it also leads TF's coordination service. (A SIGSTOPped peer was measured
    # to end the survivor the same way after about 12 s: the coordination service's heartbeat timeout.)
    ports = free_loopback_ports(2)
    logs = [tmp_path / f"worker-{i}.log" for i in range(2)]
    procs = [_start(_dist_train("multiworker", tmp_path), _multiworker_env(i, ports), logs[i]) for i in range(2)]
    try:
        for i in range(2):
            _wait_for_file(tmp_path / f"worker-{i}.npz", procs, logs)
        _assert_backend_contract(tmp_path)
        _lose_one_and_watch_the_other(procs, logs, victim=0, how=signal.SIGKILL)
    finally:
        _stop_all(procs)


SIGTERM_PROBE = """
import os, signal, time
from job.config import DistributeConfig
seen = []
signal.signal(signal.SIGTERM, lambda *_: seen.append("SIGTERM"))  # the trainer's handler is installed this early
from job.distribute.multiworker import MultiWorkerBackend
MultiWorkerBackend(DistributeConfig(backend="multiworker"))
os.kill(os.getpid(), signal.SIGTERM)
deadline = time.monotonic() + 60  # Python runs the handler on the main thread soon after; TF's would never run it
while not seen and time.monotonic() < deadline:
    time.sleep(0.01)
print("handled:", seen)
"""


@pytest.mark.slow
@pytest.mark.timeout(900)  # two TF processes and a reference run
def test_multiworker_backend_keeps_the_trainers_sigterm_handler():
    # TF's coordination service installs its own SIGTERM handler when the strategy is created (measured with TF 2.21);
    # the trainer would then never hear a pod's SIGTERM and run on until SIGKILL without committing a checkpoint.
    env = _multiworker_env(0, free_loopback_ports(1))
    proc = subprocess.run([sys.executable, "-c", SIGTERM_PROBE], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "handled: ['SIGTERM']" in proc.stdout, proc.stdout + proc.stderr[-3000:]


@pytest.fixture
def gloo_rendezvous():
    """Horovod's own rendezvous server, so the test starts (and stops) the ranks itself instead of horovodrun."""
    from horovod.runner.common.util.hosts import get_host_assignments, parse_hosts
    from horovod.runner.gloo_run import create_run_env_vars, create_slot_env_vars
    from horovod.runner.http.http_server import RendezvousServer

    server = RendezvousServer()
    port = server.start()
    plan = get_host_assignments(parse_hosts("localhost:2"), 2)
    server.init(plan)
    run_env = {k: str(v) for k, v in create_run_env_vars("127.0.0.1", ["lo"], port).items()}
    yield [_env(**run_env, **create_slot_env_vars(slot)) for slot in plan]
    server.stop()


@pytest.mark.slow
@pytest.mark.timeout(900)  # two TF processes and a reference run
@needs_horovod
def test_horovod_backend_contract_then_peer_frozen(tmp_path, gloo_rendezvous):
    # A frozen (SIGSTOPped) peer keeps its sockets open, so only the gloo timeout, set from
    # distribute.collective_timeout_seconds, can end the survivor's wait. A killed peer fails it at once (measured).
    logs = [tmp_path / f"rank-{i}.log" for i in range(2)]
    procs = [_start(_dist_train("horovod", tmp_path), env, log) for env, log in zip(gloo_rendezvous, logs)]
    try:
        for i in range(2):
            _wait_for_file(tmp_path / f"worker-{i}.npz", procs, logs)
        _assert_backend_contract(tmp_path)
        _lose_one_and_watch_the_other(procs, logs, victim=1, how=signal.SIGSTOP)
    finally:
        _stop_all(procs)


# --- the real trainer: two workers with batch b each end where one process with batch 2b ends -------------------

TRAIN_ARGS = ["train", "--config", "digits_resnet20", "model.name=mlp", "model.dropout=0",
              "data.augment.crop_padding=0", "data.augment.flip=false", "train.epochs=1", "train.max_steps_per_epoch=6",
              "train.batch_size=16",
              "optim.schedule=constant", "optim.warmup_epochs=0", "run.progress=false",
              f"distribute.collective_timeout_seconds={RELAXED_TIMEOUT}", "export.litert=false"]


# The two-process runs take 4 steps per call (5 after the first, alone), the one-process reference one: both the
# backends and train.steps_per_call must leave the training unchanged.
SEVERAL_STEPS_PER_CALL = ["train.steps_per_call=4", "run.log_every_steps=6"]


def _job(run_dir: Path, backend: str) -> list[str]:
    return [sys.executable, "-m", "job", *TRAIN_ARGS, f"run.dir={run_dir}", f"distribute.backend={backend}"]


def _checkpoint_tensors(run_dir: Path) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(run_dir / "checkpoints")))
    names = [n for n in reader.get_variable_to_shape_map() if n != "_CHECKPOINTABLE_OBJECT_GRAPH"]
    return {n: reader.get_tensor(n) for n in names}


@pytest.fixture(scope="module")
def single_process_trainer_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("single") / "run"
    proc = subprocess.run(_job(run_dir, "single"), env=_env(), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return run_dir


def _assert_same_training(run_dir: Path, reference: Path) -> None:
    got, want = _checkpoint_tensors(run_dir), _checkpoint_tensors(reference)
    assert got.keys() == want.keys() and len(got) > 5
    assert int(got["step/.ATTRIBUTES/VARIABLE_VALUE"]) == 6
    for name, value in want.items():
        if value.dtype.kind == "f" and value.size:
            diff = np.max(np.abs(got[name] - value)) / max(float(np.max(np.abs(value))), 1e-12)
            assert diff < 1e-5, f"{name}: relative difference {diff}"
    got_eval = json.loads((run_dir / "eval" / "metrics.json").read_text())
    want_eval = json.loads((reference / "eval" / "metrics.json").read_text())
    assert got_eval["examples"] == want_eval["examples"]
    assert got_eval["top1"] == pytest.approx(want_eval["top1"], abs=1e-9)
    assert got_eval["loss"] == pytest.approx(want_eval["loss"], rel=1e-4)


@pytest.mark.slow
@pytest.mark.timeout(900)  # two TF processes and a reference run
@pytest.mark.parametrize("backend", ["multiworker", pytest.param("horovod", marks=needs_horovod)])
def test_trainer_on_two_workers_matches_one_process(tmp_path, single_process_trainer_run, backend):
    run_dir = tmp_path / "run"  # shared: the chief writes it, the other worker only takes part in the collectives
    logs = run_on_two_workers([*_job(run_dir, backend), *SEVERAL_STEPS_PER_CALL], backend, tmp_path)
    log = logs[0].read_text()
    assert "replica(s) on 2 worker(s)" in log and f"({backend} backend)" in log
    _assert_same_training(run_dir, single_process_trainer_run)
