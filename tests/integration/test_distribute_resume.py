"""Two-worker trainer runs on 127.0.0.1 that are killed and restarted, or stopped by SIGTERM, for both backends.

For multiworker and for horovod:
  1. an uninterrupted two-process run, started the way users start one (scripts/launch_local.py, what
     `make train-local-2` runs), leaves exactly the files of one writer in its run directory;
  2. a second two-process run is SIGKILLed (every process, as when Kubernetes reschedules the Job) after a checkpoint
     was committed, then started again: both workers log that they resume from the same step, the newest committed
     one, and the run ends with the same checkpoint and evaluation as the uninterrupted run.
In the killed-and-restarted runs worker 1 runs under strace: it must not create, change, rename or delete anything in
the run directory (the checks on names alone could miss a file it overwrote in place), except for the storage probe
every worker makes at start-up (a uniquely named file written, read back and deleted).
SIGTERM to one worker only (one pod evicted) stops every worker after the same step, with a committed checkpoint.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from tests.support.trainer_runs import committed_prefix, committed_steps, free_loopback_ports

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from job.errors import EXIT_PREEMPTED  # noqa: E402

# two-process runs, each killed and resumed, after a one-process reference: a limit for hangs only (pytest.ini)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = REPO / "scripts" / "launch_local.py"
STEPS_PER_EPOCH, EPOCHS, EVERY = 12, 2, 3
TOTAL_STEPS = STEPS_PER_EPOCH * EPOCHS
# MLP on digits keeps each run to seconds of compute; crop augmentation stays on (a resume must continue it exactly).
JOB_ARGS = ["--config", "digits_resnet20", "model.name=mlp", f"train.epochs={EPOCHS}",
            f"train.max_steps_per_epoch={STEPS_PER_EPOCH}", "train.batch_size=16", f"checkpoint.every_steps={EVERY}",
            "checkpoint.keep=2", "train.deterministic=true", "run.progress=false",
            "distribute.collective_timeout_seconds=120", "export.litert=false"]
STRACE = shutil.which("strace")  # tests/tools/install.sh installs it (Debian's package)
# Everything that can create, change or remove a file or folder (open/openat only count with a write flag).
WRITE_SYSCALLS = ("open,openat,openat2,creat,truncate,rename,renameat,renameat2,unlink,unlinkat,mkdir,mkdirat,rmdir,"
                  "link,linkat,symlink,symlinkat")
WRITE_FLAGS = re.compile(r"O_WRONLY|O_RDWR|O_CREAT|O_TRUNC|O_APPEND")
EVENT_FILE = re.compile(r"events\.out\.tfevents\.\d+\.(?P<host>.+)\.(?P<pid>\d+)\.\d+\.v2")
TRAINER_LOG = re.compile(r"\d{8}T\d{6}Z-(?P<host>.+)-(?P<pid>\d+)\.log")  # job/runlog.py: one per start
TEMP_FILE = re.compile(r"\.(?P<target>.+)\.tmp-\w+")  # job/storage.py's temp files of atomic writes
CKPT_FILE = re.compile(r"(?P<prefix>ckpt-(?P<step>\d+)(?:-[0-9a-f]{8})?)\.(index|data-00000-of-00001|commit\.json)")


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(REPO),
               JOB_PROGRESS="log", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    for key in ("TF_CONFIG", "JOB_COMPLETION_INDEX", "WORKER_HOSTS"):
        env.pop(key, None)
    env.update(extra)
    return env


def _job(run_dir: Path, backend: str) -> list[str]:
    return [sys.executable, "-m", "job", "train", *JOB_ARGS, f"run.dir={run_dir}", f"distribute.backend={backend}"]


class Workers:
    """Two trainer processes, each in a session of its own (so a kill reaches strace and the python under it)."""

    def __init__(self, tmp: Path, name: str):
        self.tmp, self.name = tmp, name
        self.procs: list[subprocess.Popen] = []
        self.logs = [tmp / f"{name}-worker-{i}.log" for i in range(2)]
        self.trace = tmp / f"{name}-worker-1.strace"

    def start(self, command: list[str], envs: list[dict[str, str]]) -> Workers:
        strace = _strace()  # before any worker starts: a failure here leaves no process behind
        for index, env in enumerate(envs):
            args = command
            if index == 1:
                # -ff: one file per thread, so no call is split over lines; -y: paths of descriptors (openat's dirfd).
                args = [strace, "-f", "-ff", "-y", "-qq", "--seccomp-bpf", "-e", f"trace={WRITE_SYSCALLS}",
                        "-o", str(self.trace), *command]
            self.procs.append(subprocess.Popen(args, env=env, cwd=REPO, stdout=self.logs[index].open("w"),
                                               stderr=subprocess.STDOUT, start_new_session=True))
        return self

    def kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        for p in self.procs:
            p.wait(timeout=60)

    def wait_ok(self, timeout: float = 600) -> None:
        try:
            for p in self.procs:
                p.wait(timeout=timeout)
        finally:
            self.kill_all()
        for p, log in zip(self.procs, self.logs):
            assert p.returncode == 0, f"{log.name}: exit {p.returncode}\n{log.read_text()[-3000:]}"

    def trainer_pid(self, index: int) -> int:
        """The python process of worker `index` (under strace, strace's child: strace itself ignores SIGTERM)."""
        pid = self.procs[index].pid
        if index == 1:
            deadline = time.monotonic() + 60
            while not (children := Path(f"/proc/{pid}/task/{pid}/children").read_text().split()):
                assert time.monotonic() < deadline, "strace started no trainer"
                time.sleep(0.05)
            pid = int(children[0])
        return pid

    def text(self, index: int) -> str:
        return self.logs[index].read_text()


def _multiworker_envs() -> list[dict[str, str]]:
    """What a Kubernetes Indexed Job gives its pods: the pod's index and every worker's address."""
    hosts = ",".join(f"127.0.0.1:{p}" for p in free_loopback_ports(2))
    return [_env(JOB_COMPLETION_INDEX=str(i), WORKER_HOSTS=hosts) for i in range(2)]


@contextmanager
def _horovod_envs():
    """Horovod's own gloo rendezvous server and each rank's environment, what horovodrun sets up, so that the test
    starts (and kills) the ranks itself and can run rank 1 under strace."""
    from horovod.runner.common.util.hosts import get_host_assignments, parse_hosts
    from horovod.runner.gloo_run import create_run_env_vars, create_slot_env_vars
    from horovod.runner.http.http_server import RendezvousServer

    server = RendezvousServer()
    port = server.start()
    plan = get_host_assignments(parse_hosts("localhost:2"), 2)
    server.init(plan)
    run_env = {k: str(v) for k, v in create_run_env_vars("127.0.0.1", ["lo"], port).items()}
    try:
        yield [_env(**run_env, **create_slot_env_vars(slot)) for slot in plan]
    finally:
        server.stop()


# The chief's commit of ckpt-6 (and everything queued after it) is held until the kill (job/rundir.py, TEST_HOLD_ENV):
# the kill lands with exactly ckpt-3 committed, however fast the workers train.
HOLD = {"JOB_TEST_HOLD_TASK": r"^checkpoint ckpt-6$"}
KILLED_AT = 3


def _wait_for_held(workers: Workers, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while "held for a test: checkpoint ckpt-6" not in workers.text(0):
        for p, log in zip(workers.procs, workers.logs):
            assert p.poll() is None, f"{log.name}: exit {p.returncode} before the hold\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"the commit of ckpt-6 was not held within {timeout} s"
        time.sleep(0.05)


def _wait_for_commit(run_dir: Path, workers: Workers, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not committed_steps(run_dir):
        for p, log in zip(workers.procs, workers.logs):
            assert p.poll() is None, f"{log.name}: exit {p.returncode} before a checkpoint\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no committed checkpoint after {timeout} s"
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------------- the checks


def _run_files(run_dir: Path) -> list[str]:
    return sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file())


def _assert_one_writers_files(run_dir: Path, chief_starts: int) -> None:
    """The run directory holds what one trainer writes and nothing else: no worker-named files, no second set of
    event files (one per chief start: the killed chief's and the resumed chief's), checkpoints only under commits."""
    files = _run_files(run_dir)
    fixed = {"config.yaml", "checkpoints/checkpoint", "eval/metrics.json", "eval/report.txt", "eval/report.html",
             "status.json", "history.json", "classes.json", "export/model.keras", "export/model.h5",
             "export/classes.json", "export/model_card.json", "export/MODEL_CARD.md"}
    assert fixed <= set(files), files
    committed = set(committed_steps(run_dir))
    assert committed and max(committed) == TOTAL_STEPS
    event_pids: dict[str, set[str]] = {}
    log_pids: set[str] = set()
    for name in set(files) - fixed:
        folder, _, base = name.rpartition("/")
        temp = TEMP_FILE.fullmatch(base)
        if temp and chief_starts > 1:
            # An atomic write (temp file, then rename) the killed chief did not finish; storage never lists these.
            target = temp["target"]
            assert (folder == "checkpoints" and (target == "checkpoint" or CKPT_FILE.fullmatch(target))
                    or (folder, target) in (("", "status.json"), ("", "history.json"))), name
            continue
        if folder == "checkpoints":
            match = CKPT_FILE.fullmatch(base)
            assert match and int(match["step"]) in committed, f"{name}: not a file of a committed checkpoint"
            if not base.endswith(".commit.json"):
                assert committed_prefix(run_dir, int(match["step"])).endswith(f"/{match['prefix']}"), \
                    f"{name}: not a file its commit object names"
        elif folder in ("logs/train", "logs/validation", "logs/eval"):
            match = EVENT_FILE.fullmatch(base)
            assert match, f"{name}: not a TensorBoard event file"
            event_pids.setdefault(folder, set()).add(match["pid"])
        elif folder.startswith(("export/saved_model", "export/tfserving/")):
            continue  # a SavedModel's own layout (saved_model.pb, variables/, assets/, fingerprint.pb)
        elif folder == "logs/trainer":
            match = TRAINER_LOG.fullmatch(base)
            assert match, f"{name}: not a trainer log (job/runlog.py)"
            log_pids.add(match["pid"])
        else:
            pytest.fail(f"{name}: a file the trainer does not write")
    # Every writer of event files writes all three folders at once: one pid per chief start, the same in each.
    assert event_pids.get("logs/train") == event_pids.get("logs/validation") == event_pids.get("logs/eval"), event_pids
    assert len(event_pids["logs/train"]) == chief_starts, event_pids
    assert len([f for f in files if f.startswith("logs/train/")]) == chief_starts
    assert log_pids == event_pids["logs/train"], (log_pids, event_pids)  # one log per chief start, the chief's


def _worker_1_calls(trace_prefix: Path, run_dir: Path) -> dict[str, list[str]]:
    """Worker 1's successful calls on paths under run_dir, from its strace files: writes, storage probes, reads."""
    calls: dict[str, list[str]] = {"writes": [], "probes": [], "reads": []}
    root = str(run_dir.resolve())
    for trace in trace_prefix.parent.glob(trace_prefix.name + ".*"):
        for line in trace.read_text(errors="replace").splitlines():
            if root not in line or re.search(r"= -1 E", line):  # failed calls change nothing
                continue
            syscall = line.split("(", 1)[0].strip()
            if syscall in ("open", "openat", "openat2") and not WRITE_FLAGS.search(line):
                calls["reads"].append(line)
            elif _is_storage_probe(line, root):
                calls["probes"].append(line)
            else:
                calls["writes"].append(line)
    return calls


def _is_storage_probe(line: str, root: str) -> bool:
    """RunDir.open's check that the run directory is usable, which every worker makes: it creates the folder if need
    be (whoever comes first) and writes, reads and deletes a uniquely named `.preflight-*` file. It leaves nothing."""
    if line.startswith("mkdir(") and f'"{root}"' in line:
        return True
    paths = re.findall(r'"([^"]+)"', line)
    return bool(paths) and all(Path(p).parent == Path(root) and ".preflight-" in Path(p).name for p in paths)


def _strace() -> str:
    """strace, which shows that worker 1 wrote nothing in the run directory (docs/distributed.md promises it)."""
    if not STRACE:
        pytest.fail("strace is not installed: worker 1's 'wrote nothing' check needs it; run tests/tools/install.sh")
    return STRACE


def _assert_worker_1_wrote_nothing(workers: Workers, run_dir: Path, must_read: str = "") -> None:
    calls = _worker_1_calls(workers.trace, run_dir)
    assert not calls["writes"], "worker 1 wrote to the run directory:\n" + "\n".join(calls["writes"][:20])
    # The trace did see worker 1 at work in the run directory (a trace of the wrong process would see nothing).
    assert any(".preflight-" in line for line in calls["probes"]), calls
    if must_read:
        assert any(must_read in line for line in calls["reads"]), f"worker 1 never read {must_read}: {calls}"


def _checkpoint_tensors(run_dir: Path) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(run_dir / "checkpoints")))
    return {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map() if n != "_CHECKPOINTABLE_OBJECT_GRAPH"}


def _assert_same_result(run_dir: Path, reference: Path, rtol: float = 1e-6) -> None:
    got, want = _checkpoint_tensors(run_dir), _checkpoint_tensors(reference)
    assert got.keys() == want.keys() and len(got) > 5
    assert int(got["step/.ATTRIBUTES/VARIABLE_VALUE"]) == TOTAL_STEPS
    for name, value in want.items():
        if value.dtype.kind == "f" and value.size:
            diff = np.max(np.abs(got[name] - value)) / max(float(np.max(np.abs(value))), 1e-12)
            assert diff < rtol, f"{name}: relative difference {diff} from the uninterrupted run"
    got_eval = json.loads((run_dir / "eval" / "metrics.json").read_text())
    want_eval = json.loads((reference / "eval" / "metrics.json").read_text())
    assert (got_eval["examples"], got_eval["top1"]) == (want_eval["examples"], want_eval["top1"])
    assert got_eval["loss"] == pytest.approx(want_eval["loss"], rel=max(rtol, 1e-6))


def _resumed_step(log: str) -> int:
    found = re.findall(r"resuming from step (\d+) ", log)
    assert len(found) == 1, log[-3000:]
    return int(found[0])


def _assert_both_resumed_from(workers: Workers, step: int) -> None:
    assert [_resumed_step(workers.text(i)) for i in range(2)] == [step, step]


def _launch_local(backend: str, run_dir: Path, log: Path) -> str:
    """scripts/launch_local.py, as `make train-local-2` runs it; returns its output."""
    command = [sys.executable, str(LAUNCHER), "--backend", backend, "--nproc", "2", "--",
               *JOB_ARGS, f"run.dir={run_dir}"]
    with log.open("w") as out:
        proc = subprocess.run(command, env=_env(), cwd=REPO, stdout=out, stderr=subprocess.STDOUT, timeout=900)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert "2 replica(s) on 2 worker(s)" in text, text[-3000:]
    return text


# ---------------------------------------------------------------------------------------------------- the tests


def _assert_resumed_like_uninterrupted(first, second, run_dir: Path, reference: Path, killed_at: int) -> None:
    """After a kill and a restart: both workers resumed from the killed run's newest commit, only the chief of each
    start wrote the run dir, and the result equals the uninterrupted run's."""
    _assert_both_resumed_from(second, killed_at)
    _assert_worker_1_wrote_nothing(second, run_dir, must_read=f"ckpt-{killed_at}-")
    _assert_one_writers_files(run_dir, chief_starts=2)
    chief_pids = {str(first.procs[0].pid), str(second.procs[0].pid)}
    assert {EVENT_FILE.fullmatch(p.name)["pid"] for p in (run_dir / "logs").rglob("events.*")} == chief_pids
    _assert_same_result(run_dir, reference)


def test_multiworker_killed_and_restarted_resumes_on_both_workers(tmp_path):
    reference = tmp_path / "uninterrupted"
    out = _launch_local("multiworker", reference, tmp_path / "uninterrupted.log")
    assert "[worker 1]" in out and "(multiworker backend)" in out
    _assert_one_writers_files(reference, chief_starts=1)
    chief_pid = re.search(r"worker pids: 0=(\d+) 1=\d+", out)[1]
    assert {EVENT_FILE.fullmatch(p.name)["pid"] for p in (reference / "logs").rglob("events.*")} == {chief_pid}

    run_dir = tmp_path / "killed"
    first = Workers(tmp_path, "first").start(_job(run_dir, "multiworker"), [{**e, **HOLD} for e in _multiworker_envs()])
    try:
        _wait_for_held(first)
    finally:
        first.kill_all()  # every process at once, as when the Job's pods are deleted and rescheduled
    killed_at = committed_steps(run_dir)[-1]
    assert killed_at == KILLED_AT, committed_steps(run_dir)
    _assert_worker_1_wrote_nothing(first, run_dir)

    second = Workers(tmp_path, "second").start(_job(run_dir, "multiworker"), _multiworker_envs())
    second.wait_ok()
    _assert_resumed_like_uninterrupted(first, second, run_dir, reference, killed_at)


@pytest.mark.skipif(not shutil.which("horovodrun", path=str(Path(sys.executable).parent)),
                    reason="horovod is not installed; run docker/build-horovod.sh")
def test_horovod_killed_and_restarted_resumes_on_both_ranks(tmp_path):
    reference = tmp_path / "uninterrupted"
    out = _launch_local("horovod", reference, tmp_path / "uninterrupted.log")
    assert "horovodrun --gloo -np 2 -H localhost:2" in out and "(horovod backend)" in out
    _assert_one_writers_files(reference, chief_starts=1)

    run_dir = tmp_path / "killed"
    with _horovod_envs() as envs:
        first = Workers(tmp_path, "first").start(_job(run_dir, "horovod"), [{**e, **HOLD} for e in envs])
        try:
            _wait_for_held(first)
        finally:
            first.kill_all()
    killed_at = committed_steps(run_dir)[-1]
    assert killed_at == KILLED_AT, committed_steps(run_dir)
    _assert_worker_1_wrote_nothing(first, run_dir)

    with _horovod_envs() as envs:  # a new launch: a new rendezvous, as a restarted MPIJob launcher makes
        second = Workers(tmp_path, "second").start(_job(run_dir, "horovod"), envs)
        second.wait_ok()
    _assert_resumed_like_uninterrupted(first, second, run_dir, reference, killed_at)


@pytest.mark.parametrize("calls", [[], ["train.steps_per_call=4", "checkpoint.every_steps=1000",
                                        "run.log_every_steps=12"]], ids=["one-step-per-call", "four-steps-per-call"])
def test_multiworker_sigterm_to_one_worker_stops_both_after_the_same_step(tmp_path, calls):
    # One evicted pod: only worker 1 gets SIGTERM. Both must leave the loop after the same step (the request travels
    # with the step's all-reduce), so the chief commits that step's checkpoint and both exit 75 for a restart. With
    # several steps per call the request travels with the next call's steps.
    run_dir = tmp_path / "run"
    # So many epochs that the run cannot end before the signal, whatever the machine's speed.
    workers = Workers(tmp_path, "sigterm").start([*_job(run_dir, "multiworker"), "train.epochs=1000", *calls],
                                                 _multiworker_envs())
    try:
        _wait_for_commit(run_dir, workers)
        os.kill(workers.trainer_pid(1), signal.SIGTERM)
        for p in workers.procs:
            p.wait(timeout=300)
    finally:
        workers.kill_all()
    assert [p.returncode for p in workers.procs] == [EXIT_PREEMPTED, EXIT_PREEMPTED], workers.text(0)[-3000:]
    assert "SIGTERM received" in workers.text(1)
    assert "another worker was asked to stop" in workers.text(0)
    stopped = [re.findall(r"checkpoint at step (\d+) committed", workers.text(i)) for i in range(2)]
    assert stopped[0] == stopped[1] and len(stopped[0]) == 1, stopped
    assert int(stopped[0][0]) == committed_steps(run_dir)[-1]
    _assert_worker_1_wrote_nothing(workers, run_dir)


@pytest.mark.parametrize("backend", ["multiworker", "horovod"])
def test_a_hook_on_the_chief_that_asks_to_stop_stops_both_workers_after_the_same_step(tmp_path, backend):
    # A tuner's pruning hook decides on the chief alone; worker 1 never asks. Both must end after the same step
    # (the request travels with the step's all-reduce), the chief commits and evaluates that step, both exit 0.
    if backend == "horovod" and not shutil.which("horovodrun", path=str(Path(sys.executable).parent)):
        pytest.skip("horovod is not installed; run docker/build-horovod.sh")
    run_dir, events = tmp_path / "run", tmp_path / "events"
    command = [sys.executable, "-m", "tests.support.hooked_train", "--events", str(events), "--stop-at-step",
               "5", "--", *JOB_ARGS, f"run.dir={run_dir}", f"distribute.backend={backend}"]
    if backend == "multiworker":
        Workers(tmp_path, "hook").start(command, _multiworker_envs()).wait_ok()
    else:
        with _horovod_envs() as envs:
            Workers(tmp_path, "hook").start(command, envs).wait_ok()
    ends = [json.loads((events / f"events-{i}.jsonl").read_text().splitlines()[-1]) for i in range(2)]
    assert [e["event"] for e in ends] == ["train_end", "train_end"]
    assert [e["outcome"] for e in ends] == ["stopped", "stopped"], ends
    # asked after step 5, carried by step 6, read back while step 7 runs: both stop after step 7
    assert ends[0]["step"] == ends[1]["step"] == 7 < TOTAL_STEPS, ends
    assert committed_steps(run_dir)[-1] == 7
    assert json.loads((run_dir / "eval" / "metrics.json").read_text())["step"] == 7
    assert [e["evaluated"] for e in ends] == [True, False]  # only the chief evaluates


# ---------------------------------------------------------------------------------------- resume on other capacity
# No dropout: its masks are drawn per replica (job/batching.py); crop augmentation stays on: a global batch's random
# numbers are drawn whole, so the images of a step do not depend on the number of workers.
ELASTIC_ARGS = ["model.dropout=0"]


@pytest.fixture(scope="module")
def one_worker_reference(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("elastic") / "uninterrupted"
    result = subprocess.run([*_job(run_dir, "single"), *ELASTIC_ARGS], env=_env(), cwd=REPO, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def _elastic_starts(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "history.json").read_text())["starts"]


def test_two_workers_killed_mid_epoch_finish_on_one_like_an_uninterrupted_one_worker_run(tmp_path,
                                                                                          one_worker_reference):
    run_dir = tmp_path / "run"
    first = Workers(tmp_path, "two").start([*_job(run_dir, "multiworker"), *ELASTIC_ARGS],
                                           [{**e, **HOLD} for e in _multiworker_envs()])
    try:
        _wait_for_held(first)
    finally:
        first.kill_all()
    assert committed_steps(run_dir)[-1] == KILLED_AT  # step 3 of a 12-step epoch
    second = subprocess.run([*_job(run_dir, "single"), *ELASTIC_ARGS], env=_env(), cwd=REPO, capture_output=True,
                            text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resuming from step {KILLED_AT} " in second.stderr
    assert ("resumed with workers=1, replicas=1, device_batch=16 where the last start had workers=2, replicas=2, "
            "device_batch=8; the global batch, data order and schedule are unchanged") in second.stderr
    starts = _elastic_starts(run_dir)
    assert [(s["step"], s["workers"], s["device_batch"]) for s in starts] == [(0, 2, 8), (KILLED_AT, 1, 16)]
    _assert_same_result(run_dir, one_worker_reference, rtol=1e-5)


@pytest.mark.skipif(not shutil.which("horovodrun", path=str(Path(sys.executable).parent)),
                    reason="horovod is not installed; run docker/build-horovod.sh")
def test_one_worker_killed_mid_epoch_finishes_on_two_horovod_ranks_like_the_uninterrupted_run(tmp_path,
                                                                                              one_worker_reference):
    run_dir = tmp_path / "run"
    first = subprocess.Popen([*_job(run_dir, "single"), *ELASTIC_ARGS], env=_env(**HOLD), cwd=REPO,
                             stdout=(tmp_path / "one.log").open("w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while "held for a test: checkpoint ckpt-6" not in (tmp_path / "one.log").read_text():
            assert first.poll() is None and time.monotonic() < deadline, (tmp_path / "one.log").read_text()[-3000:]
            time.sleep(0.05)
    finally:
        first.kill()
        first.wait(timeout=60)
    assert committed_steps(run_dir)[-1] == KILLED_AT
    horovodrun = Path(sys.executable).parent / "horovodrun"
    second = subprocess.run([str(horovodrun), "--gloo", "-np", "2", "-H", "localhost:2",
                             *_job(run_dir, "horovod"), *ELASTIC_ARGS], env=_env(), cwd=REPO, capture_output=True,
                            text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    starts = _elastic_starts(run_dir)
    assert [(s["step"], s["workers"], s["device_batch"]) for s in starts] == [(0, 1, 16), (KILLED_AT, 2, 8)]
    _assert_same_result(run_dir, one_worker_reference, rtol=1e-5)
