"""SIGTERM (what Kubernetes sends before it kills a pod): commit a checkpoint within the grace period, exit 75 so the
Job's podFailurePolicy retries without counting it, and resume from that checkpoint on the next start."""
import json
import os
import re
import shlex
import signal
import time

import pytest
import yaml

from tests.support.trainer_runs import (
    ROOT,
    committed_steps,
    job_command,
    run_job,
    start_job,
    start_with_held_write,
    trainer_env,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # trainer runs: a limit for hangs only (pytest.ini)

EXIT_PREEMPTED = 75


def grace_period_seconds() -> int:
    documents = yaml.safe_load_all((ROOT / "k8s" / "job.yaml").read_text())
    job = next(d for d in documents if d and d.get("kind") == "Job")
    return job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]


# checkpoint.every_steps is large: the only mid-epoch checkpoint a run can have is the one SIGTERM makes. So many
# epochs (90 steps each) that a run cannot end by itself before the signal, whatever the machine's speed.
ARGS = ["--config", "digits_resnet20", "model.name=simple_cnn", "train.epochs=1000", "train.batch_size=16",
        "checkpoint.every_steps=100000", "data.validation_split=0"]
FIRST_EPOCH_DONE = re.compile(r"epoch 1/\d+  step \d+  loss")  # logged once the first epoch's steps have run


def assert_sigterm_checkpoint_is_newest(log: str, run_dir) -> int:
    """The stop path names the step it committed; that checkpoint, not an epoch-end one, must be the newest.
    (Its step may still fall on an epoch boundary: a signal in an epoch's last step stops there.)"""
    found = re.search(r"checkpoint at step (\d+) committed; run the same command again", log)
    assert found, log[-3000:]
    steps = committed_steps(run_dir)
    assert steps and steps[-1] == int(found[1]), f"newest committed {steps}, SIGTERM committed {found[1]}"
    return steps[-1]


def resume_args(log: str, step: int) -> list[str]:
    """A resume of the stopped run that trains on to the end of the epoch the signal stopped it in."""
    steps_per_epoch = int(re.search(r"starting simple_cnn on digits: \d+ epochs of (\d+) steps", log)[1])
    return ["train", *ARGS, f"train.epochs={step // steps_per_epoch + 1}"]


def terminate_mid_training(run_dir, env, log_path, command=("train", *ARGS)):
    """Start `python -m job <command> run.dir=<run_dir>` and send it SIGTERM once it has logged the end of its first
    epoch (so it is training, with 999 epochs to go)."""
    process = start_job(*command, f"run.dir={run_dir}", env=env, log_path=log_path)
    wait_for(lambda: FIRST_EPOCH_DONE.search(log_path.read_text()), timeout=300, process=process,
             what="the first epoch to end")
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=grace_period_seconds())
    return code, time.monotonic() - sent


def test_sigterm_commits_within_the_grace_period_and_resumes_locally(tmp_path):
    run = tmp_path / "run"
    code, seconds = terminate_mid_training(run, trainer_env(), tmp_path / "first.log")
    log = (tmp_path / "first.log").read_text()
    assert code == EXIT_PREEMPTED, log[-3000:]
    assert "SIGTERM received" in log
    step = assert_sigterm_checkpoint_is_newest(log, run)
    print(f"SIGTERM to exit: {seconds:.1f} s (grace period {grace_period_seconds()} s)")

    again = run_job(*resume_args(log, step), f"run.dir={run}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from step {step}" in again.stderr


def test_sigterm_with_a_bucket_commits_the_checkpoint_in_the_bucket(tmp_path, gcs_bucket):
    from job.storage import open_storage

    url = f"{gcs_bucket}/run"
    env = trainer_env(STORAGE_EMULATOR_HOST=os.environ["STORAGE_EMULATOR_HOST"])
    bucket = open_storage(url)
    code, seconds = terminate_mid_training(url, env, tmp_path / "first.log")
    log = (tmp_path / "first.log").read_text()
    assert code == EXIT_PREEMPTED, log[-3000:]
    commits = [p for p in bucket.list("checkpoints/") if p.endswith(".commit.json")]
    assert commits, bucket.list()
    print(f"SIGTERM to exit with uploads: {seconds:.1f} s (grace period {grace_period_seconds()} s)")

    step = max(int(p.split("ckpt-")[1].split(".")[0]) for p in commits)
    again = run_job(*resume_args(log, step), f"run.dir={url}", f"run.work_dir={tmp_path / 'fresh'}", env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from step {step}" in again.stderr


def test_sigterm_while_a_checkpoint_is_written_in_the_background_commits_it_and_exits_75(tmp_path):
    run, log = tmp_path / "run", tmp_path / "first.log"
    # ckpt-10's background write is held half-done (tests/support/hooked_train.py --hold-write) until the trainer has
    # received SIGTERM and its next save (the periodic ckpt-15, or the final one, whichever comes first) has said that
    # it waits for that write: so the signal lands, by construction, while a snapshot is being written, and a save has
    # to wait.
    args = [*ARGS, "checkpoint.every_steps=5", f"run.dir={run}"]
    process = start_with_held_write(10, args, tmp_path / "events", log, "--release-after-sigterm")
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=grace_period_seconds())
    text = log.read_text()
    assert code == EXIT_PREEMPTED, text[-3000:]
    assert re.search(r"waiting for the background write of \S+/ckpt-10-[0-9a-f]{8} before the next snapshot", text)
    waited = float(re.search(r"waited ([\d.]+) s for the write of \S+/ckpt-10-", text)[1])
    step = assert_sigterm_checkpoint_is_newest(text, run)
    assert step > 10 and 10 in committed_steps(run), committed_steps(run)
    events = [json.loads(line) for line in (tmp_path / "events" / "events-0.jsonl").read_text().splitlines()]
    saves = [e for e in events if e["event"] == "checkpoint_saved"]
    assert saves[-1]["saved_step"] == step
    waiter = next(e for e in saves if e["saved_step"] > 10)  # the save after ckpt-10 is the one that waited
    assert waiter["blocking_seconds"] >= waited - 0.005  # its blocking time includes the wait (logged to 0.01 s)

    again = run_job(*resume_args(text, step), f"run.dir={run}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from step {step}" in again.stderr


# MPIJob pods (k8s/horovod-mpijob.yaml): Kubernetes' SIGTERM reaches sshd or mpirun; `python -m job relay` passes it on.

def test_relay_passes_a_workers_sigterm_to_the_trainer_below_it(tmp_path):
    """A worker pod's sshd stands between Kubernetes and the rank: here a shell that started the trainer."""
    run = tmp_path / "run"
    trainer = shlex.join(job_command("train", *ARGS))
    # $0: the run.dir=... argument terminate_mid_training appends; like sshd, the shell outlives the trainer
    relayed = ("relay", "--to", "descendants", "--", "sh", "-c", f'{trainer} "$0" & wait; exec sleep 600')
    code, seconds = terminate_mid_training(run, trainer_env(), tmp_path / "log", command=relayed)
    log = (tmp_path / "log").read_text()
    assert "passing it to 1 trainer process(es)" in log, log[-3000:]
    assert "SIGTERM received: saving a checkpoint" in log and "committed; run the same command again" in log
    assert code == 128 + signal.SIGTERM, log[-3000:]  # then the shell got SIGTERM too, as sshd would
    assert_sigterm_checkpoint_is_newest(log, run)
    print(f"SIGTERM to the relay to exit: {seconds:.1f} s")


def test_relay_turns_a_launchers_sigterm_into_sigusr1_which_the_trainer_obeys(tmp_path):
    """The launcher's mpirun passes SIGUSR1 on to every rank (SIGTERM would make it kill them); here the relayed
    command is the trainer itself, so what is shown is the relay's translation and the trainer's SIGUSR1 stop."""
    run = tmp_path / "run"
    relayed = ("relay", "--to", "child-as-usr1", "--", job_command()[0], *job_command("train", *ARGS)[1:])
    code, _ = terminate_mid_training(run, trainer_env(), tmp_path / "log", command=relayed)
    log = (tmp_path / "log").read_text()
    assert "SIGTERM received: passing SIGUSR1" in log and "SIGUSR1 received: saving a checkpoint" in log, log[-3000:]
    assert code == EXIT_PREEMPTED, log[-3000:]
    step = assert_sigterm_checkpoint_is_newest(log, run)
    again = run_job(*resume_args(log, step), f"run.dir={run}")
    assert again.returncode == 0 and f"resuming from step {step}" in again.stderr, again.stderr[-3000:]
