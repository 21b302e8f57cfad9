"""End to end on gs://: the real trainer as a process against a real fake-gcs-server, killed, corrupted, cut off from
its bucket and doubled, as a preemptible cluster would do it."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json
import logging
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from job.checkpoint import CheckpointStore
from job.errors import UserError
from job.rundir import RunDir
from job.storage import open_storage
from job.workcopy import folder_name

# The fake-gcs-server fixtures (gcs_server, gcs_bucket, gcs_durable_server) come from
# tests/support/gcs_server.py through conftest.py.
from tests.support.child_io import ChildLines
from tests.support.ckpt_kill_writer import make_checkpoint, set_state
from tests.support.gcs_proxy import GcsProxy
from tests.support.trainer_runs import ROOT, kill_hard, run_job, start_job, trainer_env, user_env, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # trainer runs: a limit for hangs only (pytest.ini)

# simple_cnn with dropout on digits: 10 MB checkpoints (uploads take a while) and every kind of state a resume must
# restore. Deterministic ops, so an interrupted run can be compared with an uninterrupted one weight for weight.
TOTAL_STEPS = 60
TINY = ["--config", "digits_resnet20", "model.name=simple_cnn", "model.dropout=0.25", "train.epochs=3",
        "train.max_steps_per_epoch=20", "train.batch_size=32", "train.deterministic=true", "checkpoint.every_steps=5",
        "optim.warmup_epochs=0.5", "run.progress=false", "run.summary_flush_seconds=1"]
ARTIFACTS = ["config.yaml", "checkpoints/checkpoint", "eval/metrics.json", "eval/report.txt", "export/model.keras"]
EVENT_DIRS = ["logs/train/", "logs/validation/", "logs/eval/"]


# ----------------------------------------------------------------------------------------------------------- helpers

def stored_commits(url: str) -> list[int]:
    names = open_storage(url).list("checkpoints/ckpt-")
    return sorted(int(n.split("-")[1].split(".")[0]) for n in names if n.endswith(".commit.json"))


def open_reader(url: str, work_dir: Path) -> CheckpointStore:
    """A store on the run with an empty working copy, as a freshly started pod has."""
    return CheckpointStore(RunDir.open(url, work_dir=str(work_dir)))


def verify_every_commit(url: str, work_dir: Path) -> list[int]:
    """Download and check every committed checkpoint against its commit object (DamagedCheckpoint if one fails)."""
    store = open_reader(url, work_dir)
    steps = store.committed_steps()
    for step in steps:
        assert store.verify(step) is not None, f"checkpoint {step} vanished while being verified"
    store.run.close(timeout=10)
    return steps


def final_weights(url: str, work_dir: Path) -> tuple[int, dict]:
    store = open_reader(url, work_dir)
    latest = store.latest()
    store.run.close(timeout=10)
    names = [n for n, _ in tf.train.list_variables(latest.prefix) if n.startswith(("model/", "optimizer/"))]
    assert len(names) > 10
    return latest.step, {n: tf.train.load_variable(latest.prefix, n) for n in names}


def assert_same_weights(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    # Deterministic ops on a CPU: the resumed run repeats the same arithmetic, so the tolerance is float32 rounding.
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=1e-6, atol=1e-7, err_msg=name)


def assert_run_complete(url: str) -> None:
    """Everything a finished run leaves under its URL."""
    stored = open_storage(url)
    names = stored.list()
    missing = [a for a in ARTIFACTS if a not in names]
    missing += [d for d in EVENT_DIRS if not any(n.startswith(d + "events.out.tfevents.") for n in names)]
    assert not missing, f"missing under {url}: {missing}; stored: {names}"
    assert TOTAL_STEPS in stored_commits(url)
    metrics = json.loads(stored.read_bytes("eval/metrics.json"))
    assert metrics["step"] == TOTAL_STEPS and metrics["examples"] > 0
    assert "top-1 accuracy" in stored.read_bytes("eval/report.txt").decode()


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@dataclass
class Reference:
    url: str
    step: int
    weights: dict
    commits: list[int]


@pytest.fixture(scope="module")
def reference(gcs_server, tmp_path_factory) -> Reference:
    """The same run, uninterrupted, in a bucket of its own: what every disturbed run must end up with."""
    tmp = tmp_path_factory.mktemp("reference")
    url = f"gs://{gcs_server.create_bucket()}/straight"
    done = run_job("train", *TINY, f"run.dir={url}", f"run.work_dir={tmp / 'work'}",
                   env=trainer_env(**gcs_server.env()))
    assert done.returncode == 0, done.stderr[-3000:]
    with pytest.MonkeyPatch.context() as env:
        env.setenv("STORAGE_EMULATOR_HOST", gcs_server.endpoint)
        assert_run_complete(url)
        step, weights = final_weights(url, tmp / "reader")
        return Reference(url=url, step=step, weights=weights, commits=stored_commits(url))


# ----------------------------------------------------------------------------------------------------------- resume

def test_kill_minus_nine_wipe_the_disk_and_resume_from_the_bucket(gcs_server, gcs_bucket, reference, tmp_path):
    url, work = gcs_bucket + "/run", tmp_path / "work"
    command = ["train", *TINY, f"run.dir={url}", f"run.work_dir={work}"]
    _kill_while_ckpt_15_is_committed(gcs_server, command, tmp_path / "first.log")
    shutil.rmtree(work)  # the pod's disk is gone: whatever the working copy held was lost

    killed_at = open_reader(url, tmp_path / "reader").latest().step
    assert killed_at == 10, "the newest commit is the one before the held one"
    again = run_job(*command, env=trainer_env(**gcs_server.env()))
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from step {killed_at} (" in again.stderr

    step, weights = final_weights(url, tmp_path / "final")
    assert step == reference.step == TOTAL_STEPS
    assert_same_weights(weights, reference.weights)
    assert_run_complete(url)
    assert stored_commits(url) == reference.commits  # the same checkpoints kept (newest 3 and the best)


def test_a_killed_trainers_working_copy_is_reused_and_a_finished_one_leaves_none(gcs_server, gcs_bucket, tmp_path):
    """No run.work_dir (docs/runs.md, "working copy"): the trainer's copy is a fixed folder under $TMPDIR/job-runs,
    which a kill -9 leaves behind, the next start reuses, and the end of the run removes."""
    url, temp_dir = gcs_bucket + "/run", tmp_path / "tmp"
    temp_dir.mkdir()
    command = ["train", *TINY, f"run.dir={url}"]
    _kill_while_ckpt_15_is_committed(gcs_server, command, tmp_path / "first.log", TMPDIR=str(temp_dir))
    left = temp_dir / "job-runs" / folder_name(url, 0)
    assert list((left / "checkpoints").glob("ckpt-15-*.index")), sorted(p.name for p in left.rglob("*"))

    again = run_job(*command, env=trainer_env(TMPDIR=str(temp_dir), **gcs_server.env()))
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"reusing the working copy {left} that an earlier start of {url} left" in again.stderr
    assert "resuming from step 10 (" in again.stderr
    assert_run_complete(url)
    assert not (temp_dir / "job-runs").exists(), sorted(str(p) for p in temp_dir.rglob("*"))
    assert not list(temp_dir.glob("job-*")), sorted(p.name for p in temp_dir.iterdir())


def _kill_while_ckpt_15_is_committed(gcs_server, command: list[str], log: Path, **env: str) -> None:
    """Start the trainer with ckpt-15's commit object held in the proxy and kill -9 it there: step 10 is the newest
    commit, ckpt-15's files are stored (in the bucket and the working copy) but not committed."""
    proxy = GcsProxy(gcs_server.endpoint)
    proxy.hold("upload", r"/checkpoints/ckpt-15\.commit\.json$")
    process = start_job(*command, env=trainer_env(**env, **proxy.env()), log_path=log)
    try:
        proxy.wait_held(timeout=600, check=lambda: _alive(process, log))
        kill_hard(process)
    finally:
        if process.poll() is None:
            kill_hard(process)
        proxy.close()


def _alive(process: subprocess.Popen, log: Path) -> None:
    if process.poll() is not None:
        raise AssertionError(f"the trainer exited with {process.returncode}:\n{log.read_text()[-3000:]}")


def test_a_local_run_ends_with_the_same_weights_as_the_same_run_on_gs(reference, tmp_path):
    """Where the run lives changes nothing in what it trains: the gs:// client's uploads draw from Python's global
    `random` on a background thread while the model is built (job/runtime.py, seeded_weight_initialization)."""
    local = tmp_path / "run"
    done = run_job("train", *TINY, f"run.dir={local}")
    assert done.returncode == 0, done.stderr[-3000:]
    step, weights = final_weights(str(local), tmp_path / "reader")
    assert step == reference.step
    assert_same_weights(weights, reference.weights)


def test_a_corrupted_newest_checkpoint_falls_back_to_the_previous_one(gcs_server, gcs_bucket, reference, tmp_path):
    """A finished run's newest checkpoint gets one byte flipped in the bucket; the same command again must notice,
    say so, resume from the previous checkpoint and end with the same weights."""
    url = gcs_bucket + "/run"
    source, target = open_storage(reference.url), open_storage(url)
    for name in source.list():
        target.write_bytes(name, source.read_bytes(name))
    newest, previous = reference.commits[-1], reference.commits[-2]
    manifest = json.loads(target.read_bytes(f"checkpoints/ckpt-{newest}.commit.json"))
    data_file = next(f["name"] for f in manifest["files"] if ".data-" in f["name"])
    data = bytearray(target.read_bytes(f"checkpoints/{data_file}"))
    data[len(data) // 2] ^= 0x01  # same size: only the checksum can tell
    target.write_bytes(f"checkpoints/{data_file}", bytes(data))

    again = run_job("train", *TINY, f"run.dir={url}", f"run.work_dir={tmp_path / 'work'}",
                    env=trainer_env(**gcs_server.env()))
    assert again.returncode == 0, again.stderr[-3000:]
    warnings = [line for line in again.stderr.splitlines() if "is damaged" in line]
    assert len(warnings) == 1, again.stderr[-3000:]
    assert f"{url}/checkpoints/ckpt-{newest} is damaged ({data_file}: CRC32C" in warnings[0]
    assert f"using ckpt-{previous} instead" in warnings[0]
    assert f"resuming from step {previous} (" in again.stderr

    step, weights = final_weights(url, tmp_path / "final")
    assert step == newest
    assert_same_weights(weights, reference.weights)
    assert verify_every_commit(url, tmp_path / "verify") == reference.commits
    assert not [n for n in target.list("checkpoints/") if n.startswith(f"checkpoints/{manifest['prefix']}.")], \
        "the damaged checkpoint's files should be cleaned up once it is replaced"


# Where a trial's kill lands. The first two are moments chosen by time alone; the others are made by holding one request
# of the trainer in GcsProxy until the kill, so the kill lands there whatever the machine's speed.
KILL_MOMENTS = {
    "start-up": 0.15,  # a random 0.2-4 s after the start: fetching the config, resuming, training, a first save
    "after a save": 0.15,  # a random 0-1.5 s after its first local save: TF writing, uploading, committing, training
    "resume": 0.15,  # while it lists the committed checkpoints (or downloads the newest one's files into a new pod)
    "upload": 0.25,  # while the data file of its k-th checkpoint goes up: saved locally, not committed
    "commit": 0.2,  # while the commit object of its k-th checkpoint is written: files stored, not committed
    "prune": 0.1,  # while an older checkpoint (its commit object first) or a stale file is deleted after a commit
}


@pytest.mark.timeout(1200)  # 20 trainer starts, each killed at a held moment
def test_killed_at_random_moments_every_start_resumes_from_a_verified_checkpoint(gcs_server, gcs_bucket, tmp_path,
                                                                                 caplog):
    """20 seeded trials: start the trainer (the real CLI, in a child forked from a process that has TensorFlow
    imported already), SIGKILL it at a random moment of a random kind (KILL_MOMENTS: after a random delay, or while a
    given request of its resume, upload, commit or pruning is held by a proxy until the kill), then check what the
    next start will find: the newest committed checkpoint verifies, progress never goes backwards, and the next
    trainer says it resumes from exactly that step. Every kill of kind "upload" or "commit" lands while a checkpoint
    it saved is not committed, with the one before it the newest commit, by construction. Checkpoints every 2 steps
    of 10 MB each."""
    url = gcs_bucket + "/killed"
    trials, rng = 20, random.Random(20251121)
    args = ["--config", "digits_resnet20", "model.name=simple_cnn", "train.epochs=100", "train.max_steps_per_epoch=20",
            "train.batch_size=32", "checkpoint.every_steps=2", "checkpoint.keep=2", "run.progress=false",
            "run.summary_flush_seconds=0.5", f"run.dir={url}"]
    server = subprocess.Popen([sys.executable, "-m", "tests.support.trainer_fork_server", "train", *args], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env=trainer_env(**gcs_server.env()))

    lines = ChildLines(server, "the trainer fork server (tests/support/trainer_fork_server.py)")

    def ask(line: str) -> str:
        return lines.ask(line, 60, f"its answer to {line.split()[0]!r}")

    last_step, history, kinds, with_uploads_pending = 0, [], [], 0
    work = tmp_path / "work"
    try:
        assert lines.next(300, "its ready line (after importing TensorFlow)") == "ready"
        for trial in range(trials):
            # The same number of draws every trial, so the seed alone fixes every trial's kind and parameters.
            new_pod, kind = rng.random() < 0.5, rng.choices(list(KILL_MOMENTS), list(KILL_MOMENTS.values()))[0]
            nth, delay, extra = rng.randint(1, 3), rng.uniform(0.2, 4.0), rng.uniform(0.0, 1.5)
            if new_pod:
                shutil.rmtree(work, ignore_errors=True)  # a new pod; otherwise the same pod restarted
            downloads = new_pod and last_step > 0  # a resume into an empty working copy downloads the newest files
            log = tmp_path / f"trial{trial}.log"
            proxy = GcsProxy(gcs_server.endpoint)  # one per trainer: after the kill nothing of it can reach the bucket
            proxy.hold_checkpoint_moment(kind, nth, resume_downloads=downloads)
            started = time.time()
            try:
                assert ask(f"start {work} {log} STORAGE_EMULATOR_HOST={proxy.endpoint}").startswith("started ")
                if kind == "start-up":
                    time.sleep(delay)  # any moment will do: nothing below depends on where this one lands
                elif kind == "after a save":
                    wait_for(lambda log=log, started=started: _saved_a_checkpoint(log, work, since=started),
                             timeout=300, what=f"trial {trial}'s trainer to save a checkpoint")
                    time.sleep(extra)  # as above
                else:
                    held = proxy.wait_held(timeout=300, check=lambda log=log: _failed(log))  # then it waits for it
                    kinds.append(f"{kind}: {held}")
                outcome = ask("kill")
            finally:
                proxy.close()  # drops the held request; returns once no request of the killed trainer is in flight
            assert outcome == "killed", \
                f"trial {trial}: the trainer {outcome} before the kill:\n{log.read_text()[-3000:]}"

            text = log.read_text()
            assert "damaged" not in text and "Traceback" not in text and "error:" not in text, text[-3000:]
            if "resuming from step" in text:
                assert f"resuming from step {last_step} (" in text, (last_step, text[-2000:])
            elif "starting simple_cnn" in text:
                assert last_step == 0, text[-2000:]
            if kind == "resume":
                assert "resuming from step" not in text and "starting simple_cnn" not in text, \
                    f"trial {trial}: killed while resuming, yet it got past its start-up:\n{text[-2000:]}"
            if _uploads_pending(url, work, since=started):
                with_uploads_pending += 1
            elif kind in ("upload", "commit"):
                raise AssertionError(f"trial {trial}: killed during {kinds[-1]}, yet no saved checkpoint is "
                                     f"uncommitted:\n{text[-2000:]}")

            with caplog.at_level(logging.WARNING, logger="job.checkpoint"):
                store = open_reader(url, tmp_path / f"reader{trial}")
                found = store.latest()  # downloads and verifies against the commit object
                store.run.close(timeout=10)
            if kind in ("upload", "commit"):  # commits run in order: the checkpoint before the held one is the newest
                held_step = int(re.search(r"/ckpt-(\d+)", held.name)[1])
                assert (found.step if found else 0) == held_step - 2, f"trial {trial}: {kinds[-1]}, newest {found}"
            if kind == "prune":  # a commit came before it
                assert found is not None, f"trial {trial}: nothing committed after {kinds[-1]}"
            if found is not None:
                assert found.step >= last_step, f"committed progress went backwards: {history} then {found.step}"
                last_step = found.step
            history.append(last_step)
    finally:
        server.stdin.close()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)
    print(f"\nrandom kills: {trials} trials, {with_uploads_pending} with a saved checkpoint not yet committed; held "
          f"until the kill: {kinds}; resumable step after each: {history}")
    assert not [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert last_step > 0, f"no checkpoint was ever committed: {history}"
    # Fixed by the seed (each "upload" and "commit" trial counts, checked above); what the timing adds is a bonus.
    assert with_uploads_pending >= trials // 4, "too few kills landed while uploads were pending to test anything"


def _failed(log: Path) -> None:
    text = log.read_text() if log.exists() else ""
    if "Traceback" in text or "error:" in text:
        raise AssertionError(f"the trainer failed:\n{text[-3000:]}")


def _saved_a_checkpoint(log: Path, work: Path, since: float) -> bool:
    _failed(log)
    return any(p.stat().st_mtime >= since for p in (work / "checkpoints").glob("ckpt-*-*.index"))


def _uploads_pending(url: str, work: Path, since: float) -> bool:
    """Whether the killed trainer had written a checkpoint locally that no commit in the bucket names."""
    stored = open_storage(url)
    committed = {}
    for step in stored_commits(url):
        try:
            committed[step] = json.loads(stored.read_bytes(f"checkpoints/ckpt-{step}.commit.json"))["prefix"]
        except FileNotFoundError:
            pass
    for index in (work / "checkpoints").glob("ckpt-*.index"):
        step = int(index.name.split("-")[1].split(".")[0])
        if index.stat().st_mtime >= since and committed.get(step) != index.name[:-len(".index")]:
            return True
    return False


# ----------------------------------------------------------------------------------------------------------- outage

def test_an_outage_longer_than_the_retry_budget_delays_uploads_not_training(gcs_durable_server, reference, tmp_path):
    """The bucket goes away (filesystem backend: objects survive the restart, as in a real outage) for longer than the
    1 s retry budget, from the moment the trainer has looked for checkpoints to resume from (the server has answered,
    the proxy holds the answer until the server is down): all of training and the evaluation happen during the outage,
    then the server comes back and every checkpoint and result reaches the bucket."""
    server = gcs_durable_server
    url = f"gs://{server.create_bucket()}/run"
    log = tmp_path / "trainer.log"
    proxy = GcsProxy(server.endpoint)
    proxy.hold("list", r"/checkpoints/ckpt-$", after_forwarding=True)
    process = start_job("train", *TINY, f"run.dir={url}", f"run.work_dir={tmp_path / 'work'}", log_path=log,
                        env=trainer_env(**proxy.env(), JOB_STORAGE_RETRY_SECONDS="1"))
    try:
        proxy.wait_held(timeout=600, check=lambda: _alive(process, log))
        server.stop()  # before the trainer has the answer it needs to start training
        before_the_outage = log.read_text()
        proxy.release()
        wait_for(lambda: "evaluation stored in" in log.read_text(), timeout=600, process=process,
                 what="training and evaluation to finish with the bucket away")
        assert process.poll() is None, "the trainer must wait for its uploads"
        server.start()
        assert process.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            kill_hard(process)
        proxy.close()

    text = log.read_text()
    assert "starting simple_cnn" not in before_the_outage and "epoch 1/3" not in before_the_outage, before_the_outage
    assert text.startswith(before_the_outage)
    during = text[len(before_the_outage):]
    assert "starting simple_cnn" in during and f"epoch 3/3  step {TOTAL_STEPS}" in during, "training during the outage"
    # Uploads failed and went through later. (Not asserted: where the first failure is logged relative to the steps;
    # it comes once a request's 1 s retry budget is spent, and a fast machine may finish training before that.)
    failed_at = during.index("training goes on, retrying in the background")
    assert "works again" in during[failed_at:]
    assert_run_complete(url)
    assert verify_every_commit(url, tmp_path / "verify") == reference.commits
    step, weights = final_weights(url, tmp_path / "final")
    assert step == TOTAL_STEPS
    assert_same_weights(weights, reference.weights)


# ------------------------------------------------------------------------------------------------------- two writers

def test_two_trainers_on_one_run_one_stops_with_a_clear_error(gcs_server, gcs_bucket, tmp_path):
    """Started together (different seeds, so their checkpoints differ byte for byte): the first commit of a step both
    write decides; the other trainer stores nothing more and exits 2 with one line. Every commit left verifies.
    Their checkpoint uploads are held until both have started afresh, so neither can resume from the other's
    checkpoints (or find the run finished) however late it starts."""
    url = gcs_bucket + "/run"
    proxy = GcsProxy(gcs_server.endpoint)
    proxy.hold("upload", r"/checkpoints/")
    env = trainer_env(**proxy.env())
    logs = [tmp_path / f"trainer{seed}.log" for seed in (1, 2)]
    processes = [start_job("train", *TINY, f"train.seed={seed}", f"run.dir={url}",
                           f"run.work_dir={tmp_path / str(seed)}", env=env, log_path=log)
                 for seed, log in zip((1, 2), logs)]
    try:
        for process, log in zip(processes, logs):
            wait_for(lambda log=log: "starting simple_cnn" in log.read_text(), timeout=600, process=process,
                     what=f"{log.stem} to start")
        assert not stored_commits(url)
        proxy.release()
        codes = [p.wait(timeout=900) for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                kill_hard(p)
        proxy.close()
    assert sorted(codes) == [0, 2], [log.read_text()[-2000:] for log in logs]
    loser = logs[codes.index(2)].read_text()
    errors = error_lines(loser)
    assert len(errors) == 1 and errors[0] == loser.strip().splitlines()[-1], loser[-3000:]
    assert errors[0].startswith(f"error: another trainer is writing to {url}: it committed checkpoint ckpt-")
    assert errors[0].endswith("first; stop the other trainer or give this run its own run.dir")

    stored = open_storage(url)
    steps = verify_every_commit(url, tmp_path / "verify")
    assert steps[-1] == TOTAL_STEPS
    prefixes = {json.loads(stored.read_bytes(f"checkpoints/ckpt-{s}.commit.json"))["prefix"] for s in steps}
    data_files = [n for n in stored.list("checkpoints/ckpt-") if not n.endswith(".commit.json")]
    assert {n[len("checkpoints/"):].split(".")[0] for n in data_files} == prefixes, "uncommitted files left behind"
    assert_run_complete(url)


def test_the_loser_of_a_commit_race_cannot_overwrite_the_winners_files(gcs_bucket, tmp_path):
    """The race two trainers can run into, forced: the loser has checked that step 7 is not committed and is about to
    upload its files when the winner commits step 7. The loser's files must not replace the winner's."""
    url = gcs_bucket + "/run"
    winner_run = RunDir.open(url, work_dir=str(tmp_path / "winner"))
    loser_run = RunDir.open(url, work_dir=str(tmp_path / "loser"))
    winner, loser = CheckpointStore(winner_run), CheckpointStore(loser_run)
    loser_about_to_upload, winner_committed = threading.Event(), threading.Event()
    upload = loser_run.storage.put_file

    def upload_after_the_winner_commits(*args, **kwargs):
        loser_about_to_upload.set()
        assert winner_committed.wait(timeout=60)
        return upload(*args, **kwargs)

    loser_run.storage.put_file = upload_after_the_winner_commits  # the real upload, held back
    ckpt = make_checkpoint()
    set_state(ckpt, 7)
    ckpt.weights.assign(tf.fill(ckpt.weights.shape, -1.0))
    loser.save(ckpt, 7)
    assert loser_about_to_upload.wait(timeout=60)

    set_state(ckpt, 7)
    winner.save(ckpt, 7)
    assert winner_run.flush(timeout=60)
    winner_committed.set()
    with pytest.raises(UserError, match="another trainer is writing to"):
        loser_run.close(timeout=60)
    winner_run.close(timeout=60)

    reader = open_reader(url, tmp_path / "reader")
    found = reader.latest()
    assert found.step == 7
    restored = make_checkpoint()
    reader.restore(restored, found)
    np.testing.assert_array_equal(restored.weights.numpy(), np.full(restored.weights.shape, 7.0))
    reader.run.close(timeout=10)


# ----------------------------------------------------------------------------------------------------------- preflight

def _timed_train(url: str, env: dict, tmp_path: Path, record_property, case: str) -> subprocess.CompletedProcess:
    """Run the trainer against `url`; also time RunDir.open (the preflight) alone in this process, and report both."""
    started = time.monotonic()
    result = run_job("train", *TINY, f"run.dir={url}", f"run.work_dir={tmp_path / 'work'}", env=env)
    process_seconds = time.monotonic() - started
    started = time.monotonic()
    with pytest.raises(UserError):
        RunDir.open(url, work_dir=str(tmp_path / "work2"))
    preflight_seconds = time.monotonic() - started
    record_property("process_seconds", round(process_seconds, 2))
    record_property("preflight_seconds", round(preflight_seconds, 3))
    print(f"\n{case}: trainer exited after {process_seconds:.1f} s; the preflight alone took {preflight_seconds:.3f} s")
    return result


def test_preflight_missing_bucket_is_one_line_exit_2(gcs_server, gcs_bucket, tmp_path, record_property):
    url = "gs://no-such-bucket-e2e/run"
    result = _timed_train(url, user_env(**gcs_server.env()), tmp_path, record_property, "missing bucket")
    assert result.returncode == 2, result.stderr[-3000:]
    # before TensorFlow is imported (job/preflight.py): the error is the only line
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        f"error: cannot use {url}: bucket 'no-such-bucket-e2e' does not exist; create it "
        f"(gcloud storage buckets create gs://no-such-bucket-e2e) or fix run.dir"]
    assert not (tmp_path / "work" / "checkpoints").exists()


def test_preflight_refused_write_is_one_line_exit_2(gcs_durable_server, tmp_path, record_property):
    """fake-gcs-server has no IAM, so a 403 cannot be had from it. What it does refuse for real: an object name its
    filesystem backend cannot store (a path segment over 255 bytes). The run URL here is also longer than the 1024
    bytes GCS allows an object name, so GCS itself would refuse it with HTTP 400 too."""
    bucket = gcs_durable_server.create_bucket()
    url = f"gs://{bucket}/" + "/".join(["x" * 300] * 4)
    result = _timed_train(url, user_env(**gcs_durable_server.env()), tmp_path, record_property, "refused write")
    assert result.returncode == 2, result.stderr[-3000:]
    errors = error_lines(result.stderr)
    assert [line for line in result.stderr.splitlines() if line.strip()] == errors, result.stderr[-3000:]
    assert len(errors) == 1, result.stderr[-3000:]
    assert errors[0].startswith(f"error: cannot use {url}: the storage refused storage.objects.create of a test "
                                f"object under it (HTTP 400: ")
    assert errors[0].endswith("); fix run.dir")
    assert open_storage(f"gs://{bucket}").list() == []
