"""Distributed backends: version table, cluster discovery, and real two-process runs on 127.0.0.1 (CPU).

The process tests run tests/dist_train.py, a minimal custom loop written against the Backend interface, as a
single-process reference with global batch 2b and as two workers with b each, then compare the saved weights.
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from job.distribute.errors import is_peer_lost_error  # noqa: E402
from job.distribute.multiworker import tf_config_from_env, worker_position  # noqa: E402
from job.distribute.versions import check_version_combo, check_versions  # noqa: E402
from job.errors import EXIT_PEER_LOST, ConfigError, UserError  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tests" / "dist_train.py"
GLOBAL_BATCH = 8  # two workers x 4; dist_train.py has 32 examples, so 4 steps are one full epoch
STEPS = 4
# distribute.collective_timeout_seconds of the peer-loss runs; it also bounds start-up (Horovod's rendezvous), so the
# runs that must succeed get a generous one: the 2 cores are shared and a worker may import TF much later.
COLLECTIVE_TIMEOUT = 20
RELAXED_TIMEOUT = 120
# A survivor must be gone this long after its peer was lost (detection is the collective timeout at worst).
PEER_LOSS_DEADLINE = COLLECTIVE_TIMEOUT + 60
HOROVOD = importlib.util.find_spec("horovod") is not None
needs_horovod = pytest.mark.skipif(not HOROVOD, reason="horovod is not installed; run docker/build-horovod.sh")


# ---------------------------------------------------------------------------------------------------- versions


def test_supported_combination_passes():
    check_version_combo("horovod", "2.21.0", "3.15.1", "0.28.1")
    check_version_combo("multiworker", "2.21.3", "3.10.0")


def test_installed_versions_are_supported():
    check_versions("multiworker")


@pytest.mark.parametrize(
    "backend,tf_version,keras_version,horovod_version,named",
    [
        ("horovod", "2.20.0", "3.15.1", "0.28.1", "tensorflow 2.20.0"),
        ("multiworker", "2.21.0", "2.15.0", None, "keras 2.15.0"),
        ("horovod", "2.21.0", "3.15.1", "0.28.0", "horovod 0.28.0"),
        ("horovod", "2.21.0", "3.15.1", None, "horovod not installed"),
        ("multiworker", None, "3.15.1", None, "tensorflow not installed"),
    ],
)
def test_unsupported_combination_is_refused_in_one_line(backend, tf_version, keras_version, horovod_version, named):
    with pytest.raises(UserError) as info:
        check_version_combo(backend, tf_version, keras_version, horovod_version)
    message = str(info.value)
    assert named in message
    assert "supported: tensorflow ==2.21.* with keras >=3.10,<4" in message
    assert "\n" not in message


# ---------------------------------------------------------------------------------------------------- cluster


def test_indexed_job_env_builds_the_cluster():
    env = {"JOB_COMPLETION_INDEX": "1", "WORKER_HOSTS": "train-0.train:2222, train-1.train:2222"}
    tf_config = tf_config_from_env(env)
    assert tf_config == {"cluster": {"worker": ["train-0.train:2222", "train-1.train:2222"]},
                         "task": {"type": "worker", "index": 1}}
    assert worker_position(tf_config) == (1, 2)


def test_tf_config_wins_and_chief_is_worker_zero():
    tf_config = {"cluster": {"chief": ["c:1"], "worker": ["w0:1", "w1:1"]}, "task": {"type": "worker", "index": 1}}
    env = {"TF_CONFIG": json.dumps(tf_config), "JOB_COMPLETION_INDEX": "0", "WORKER_HOSTS": "x:1"}
    assert tf_config_from_env(env) == tf_config
    assert worker_position(tf_config) == (2, 3)
    assert worker_position({**tf_config, "task": {"type": "chief", "index": 0}}) == (0, 3)


@pytest.mark.parametrize(
    "env,named",
    [
        ({}, "TF_CONFIG, or JOB_COMPLETION_INDEX and WORKER_HOSTS"),
        ({"JOB_COMPLETION_INDEX": "2", "WORKER_HOSTS": "a:1,b:1"}, "lists 2 workers"),
        ({"JOB_COMPLETION_INDEX": "0", "WORKER_HOSTS": "a,b:1"}, "'a' is not host:port"),
        ({"TF_CONFIG": "{not json"}, "TF_CONFIG is not valid"),
        ({"TF_CONFIG": '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}'}, "task index 3"),
    ],
)
def test_bad_cluster_env_is_a_config_error(env, named):
    with pytest.raises(ConfigError, match=named):
        tf_config_from_env(env)


# ---------------------------------------------------------------------------------------------------- peer loss


def test_peer_lost_errors_are_recognised():
    assert is_peer_lost_error(tf.errors.UnavailableError(None, None, "recvmsg:Connection reset by peer"))
    assert is_peer_lost_error(tf.errors.DeadlineExceededError(None, None, "collective timed out"))
    horovod_text = "Horovod has been shut down. This was caused by an exception on one of the ranks"
    assert is_peer_lost_error(tf.errors.UnknownError(None, None, horovod_text))
    try:
        try:
            raise tf.errors.UnknownError(None, None, "gloo: Timed out waiting 15000ms for recv operation")
        except tf.errors.UnknownError as e:
            raise RuntimeError("step failed") from e
    except RuntimeError as chained:
        assert is_peer_lost_error(chained)


def test_ordinary_errors_are_not_peer_loss():
    assert not is_peer_lost_error(ValueError("shapes (4, 3) and (5,) are incompatible"))
    assert not is_peer_lost_error(tf.errors.InvalidArgumentError(None, None, "logits and labels must match"))
    assert not is_peer_lost_error(tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor"))


# ---------------------------------------------------------------------------------------------------- processes


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(REPO))
    for key in ("TF_CONFIG", "JOB_COMPLETION_INDEX", "WORKER_HOSTS"):
        env.pop(key, None)
    env.update(extra)
    return env


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _train_args(backend: str, out: Path, steps: int = STEPS) -> list[str]:
    """Train `steps` steps (0 = until a peer is lost, with the short collective timeout)."""
    timeout = COLLECTIVE_TIMEOUT if steps == 0 else RELAXED_TIMEOUT
    return [sys.executable, str(SCRIPT), "--backend", backend, "--global-batch", str(GLOBAL_BATCH),
            "--steps", str(steps), "--timeout", str(timeout), "--out", str(out)]


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(args, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=REPO)


def _wait_all(procs: list[subprocess.Popen], logs: list[Path], timeout: float = 300) -> None:
    try:
        for p in procs:
            p.wait(timeout=timeout)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, f"exit {p.returncode}:\n{log.read_text()[-3000:]}"


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _weights(result: dict[str, np.ndarray]) -> list[np.ndarray]:
    return [result[f"arr_{i}"] for i in range(sum(k.startswith("arr_") for k in result))]


def _max_rel_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    assert [x.shape for x in a] == [y.shape for y in b]
    return max(float(np.max(np.abs(x - y)) / max(float(np.max(np.abs(y))), 1e-12)) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def single_process_run(tmp_path_factory) -> dict[str, np.ndarray]:
    """The reference: one process, the whole global batch (2b) per step."""
    out = tmp_path_factory.mktemp("single")
    proc = subprocess.run(_train_args("single", out), env=_env(), cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return _load(out / "worker-0.npz")


def _assert_matches_single_process(out: Path, single: dict[str, np.ndarray]) -> None:
    workers = [_load(out / f"worker-{i}.npz") for i in range(2)]
    # Identical on both workers (each started from a different random init: the backend synchronised them) ...
    assert _max_rel_diff(_weights(workers[0]), _weights(workers[1])) == 0.0
    # ... and equal to one process taking the whole global batch.
    assert _max_rel_diff(_weights(workers[0]), _weights(single)) < 1e-5
    np.testing.assert_allclose(workers[0]["losses"], single["losses"], rtol=1e-5)
    np.testing.assert_array_equal(workers[0]["losses"], workers[1]["losses"])
    # Shards are disjoint and together cover the epoch exactly once.
    seen = [set(w["seen"].tolist()) for w in workers]
    assert len(workers[0]["seen"]) == len(seen[0]) == STEPS * GLOBAL_BATCH // 2
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(single["seen"].tolist()) == set(range(STEPS * GLOBAL_BATCH))
    # all_reduce_sum adds every worker's host numbers; exactly one chief.
    for w in workers:
        np.testing.assert_array_equal(w["totals"], [STEPS * GLOBAL_BATCH, 2.0])
    assert [w["meta"].tolist() for w in workers] == [[2, 2, 1], [2, 2, 0]]


def _multiworker_env(index: int, ports: list[int]) -> dict[str, str]:
    return _env(JOB_COMPLETION_INDEX=str(index), WORKER_HOSTS=",".join(f"127.0.0.1:{p}" for p in ports))


def _wait_for_step(log: Path, step: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while f" step {step} " not in log.read_text():
        assert proc.poll() is None, f"worker exited early with {proc.returncode}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no step {step} after {timeout} s:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)


def _lose_one_and_watch_the_other(procs: list[subprocess.Popen], logs: list[Path], victim: int,
                                  how: signal.Signals) -> None:
    """Send `how` to worker `victim` mid-training; the other must exit with EXIT_PEER_LOST within the deadline."""
    survivor = 1 - victim
    try:
        for proc, log in zip(procs, logs):
            _wait_for_step(log, 3, proc)
        procs[victim].send_signal(how)
        try:
            procs[survivor].wait(timeout=PEER_LOSS_DEADLINE)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker {survivor} still running {PEER_LOSS_DEADLINE} s after worker {victim} got {how.name}")
        assert procs[survivor].returncode == EXIT_PEER_LOST, logs[survivor].read_text()[-3000:]
        assert "peer lost" in logs[survivor].read_text()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()


@pytest.mark.slow
def test_multiworker_two_processes_match_single_process(tmp_path, single_process_run):
    ports = _free_ports(2)
    logs = [tmp_path / f"worker-{i}.log" for i in range(2)]
    procs = [_start(_train_args("multiworker", tmp_path), _multiworker_env(i, ports), logs[i]) for i in range(2)]
    _wait_all(procs, logs)
    _assert_matches_single_process(tmp_path, single_process_run)


@pytest.mark.slow
def test_multiworker_survivor_exits_when_the_chief_is_killed(tmp_path):
    # The chief also leads TF's coordination service: losing it must still end the survivor with a Python error
    # (not a hang or an abort). A frozen (SIGSTOPped) peer was measured to fail the survivor the same way within
    # about 12 s, by the coordination service's heartbeat timeout before the collective timeout.
    ports = _free_ports(2)
    logs = [tmp_path / f"worker-{i}.log" for i in range(2)]
    procs = [_start(_train_args("multiworker", tmp_path, steps=0), _multiworker_env(i, ports), logs[i])
             for i in range(2)]
    _lose_one_and_watch_the_other(procs, logs, victim=0, how=signal.SIGKILL)


@pytest.mark.slow
@needs_horovod
def test_horovod_two_processes_match_single_process(tmp_path, single_process_run):
    horovodrun = Path(sys.executable).parent / "horovodrun"
    log = tmp_path / "horovodrun.log"
    env = _env(PATH=f"{horovodrun.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = _start([str(horovodrun), "--gloo", "-np", "2", "-H", "localhost:2", *_train_args("horovod", tmp_path)],
                  env, log)
    _wait_all([proc], [log])
    _assert_matches_single_process(tmp_path, single_process_run)


@pytest.fixture
def gloo_rendezvous():
    """Horovod's own rendezvous server, so the test starts (and kills) the ranks itself instead of horovodrun."""
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
@needs_horovod
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "frozen"])
def test_horovod_survivor_exits_when_peer_is_lost(tmp_path, gloo_rendezvous, how):
    # SIGKILL closes the peer's sockets (gloo fails at once); SIGSTOP leaves them open, so only the gloo timeout
    # set from distribute.collective_timeout_seconds can end the survivor's wait.
    logs = [tmp_path / f"rank-{i}.log" for i in range(2)]
    procs = [_start(_train_args("horovod", tmp_path, steps=0), env, log) for env, log in zip(gloo_rendezvous, logs)]
    _lose_one_and_watch_the_other(procs, logs, victim=1, how=how)
