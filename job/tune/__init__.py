"""`python -m job tune`: hyperparameter search with the same trainer, on Optuna.

    python -m job tune --config cifar10_resnet20 --space space.yaml [--study-dir DIR] [--storage URL]
                       [--workers K] [key=value ...]
    python -m job tune --space space.yaml --summary         # the leaderboard at any time

Modules: space.py (the space file), study.py (storage, sampler, pruner, counting, retries), worker.py (a worker's
loop and the trial hook), results.py (leaderboard, best.yaml, report.html).

A study dir holds `trials/<n>/` (each an ordinary run), `space.yaml` (the space it was started with), `study.db`
(the SQLite study, when no database is given), `leaderboard.txt`, `best.yaml` and `report.html`.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading

from job.errors import EXIT_OK, EXIT_PREEMPTED, ConfigError, UserError

log = logging.getLogger("job")

SPACE_COPY = "space.yaml"
BASE_ATTR = "base"  # the study's base config and overrides, as its first worker was given them


def main(args) -> int:
    from job.tune.space import load_space

    space = load_space(args.space)
    study_dir = (args.study_dir or f"runs/tune-{space.study}").rstrip("/")
    from job.tune.study import open_study, storage_url

    url = storage_url(args.storage, study_dir)
    if args.summary:
        study = open_study(space, url, create=False)
        return _finish(study, study_dir)
    if not args.config:
        raise UserError("tune needs --config PRESET_OR_YAML: the base config every trial starts from")
    _check_base(space, args.config, args.overrides)
    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    _keep_space(args.space, study_dir)
    study = open_study(space, url)  # created here, once, before any worker races for it
    _check_same_base(study, args.config, list(args.overrides))
    if args.workers > 1:
        code = _run_workers(args, url, study_dir)
    else:
        from job.tune.worker import run_worker

        code = run_worker(study, args.config, list(args.overrides), study_dir)
    if code == EXIT_PREEMPTED or args.no_results:
        return code
    _finish(study, study_dir)
    if not study.done():
        log.warning("study %s has %s (a worker died?); run the same command again to go on", space.study,
                    study.progress())
        return 1
    return EXIT_OK


def _finish(study, study_dir: str) -> int:
    from job.tune.results import BEST_FILE, REPORT_FILE, write_results

    base = study.study.user_attrs.get(BASE_ATTR, {})
    print(write_results(study, study_dir, base.get("config", ""), base.get("overrides", [])), end="", flush=True)
    print(f"{study_dir}/{BEST_FILE} trains the best trial; {study_dir}/{REPORT_FILE} has the plots", flush=True)
    return EXIT_OK


def _check_same_base(study, config: str, overrides: list[str]) -> None:
    """Every worker of a study trains from the same base: trials from different bases would not be comparable."""
    base = {"config": config, "overrides": overrides}
    stored = study.study.user_attrs.get(BASE_ATTR)
    if stored is None:
        study.study.set_user_attr(BASE_ATTR, base)
    elif stored != base:
        raise UserError(f"study {study.space.study} trains --config {stored['config']} "
                        f"{' '.join(stored['overrides'])}".rstrip() + f", not --config {config} {' '.join(overrides)}"
                        .rstrip() + "; give the same base, or name another study in the space file")


def _check_base(space, config: str, overrides) -> None:
    """The base config must have a validation split (the objective), and each parameter must be a valid key."""
    from job.config import load_config
    from job.tune.space import check_params_against_config

    cfg = load_config(config, list(overrides))
    if not cfg.data.validation_split:
        raise ConfigError(f"{config} has no validation split, so trials have no validation top-1 to compare; add "
                          "data.validation_split=0.1")
    check_params_against_config(space, config, list(overrides))


def _keep_space(path: str, study_dir: str) -> None:
    from pathlib import Path

    from job.storage import open_storage

    open_storage(study_dir).write_bytes(SPACE_COPY, Path(path).read_bytes())


def _run_workers(args, url: str, study_dir: str) -> int:
    """--workers K: K worker processes on this machine, each `python -m job tune ... --workers 1`, their output
    prefixed with [worker i]; SIGTERM and Ctrl-C are passed on to them."""
    command = [sys.executable, "-m", "job", "tune", "--config", args.config, "--space", args.space,
               "--study-dir", study_dir, "--storage", url, "--workers", "1", "--no-results", *args.overrides]
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=dict(os.environ, JOB_PROGRESS="log")) for _ in range(args.workers)]
    log.info("started %d trial workers (pids %s)", len(workers), ", ".join(str(w.pid) for w in workers))
    relays = [threading.Thread(target=_relay, args=(i, w), daemon=True) for i, w in enumerate(workers)]
    for relay in relays:
        relay.start()
    previous = {s: signal.signal(s, lambda signum, _: [w.send_signal(signum) for w in workers if w.poll() is None])
                for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        codes = [w.wait() for w in workers]
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    for relay in relays:
        relay.join()
    for i, code in enumerate(codes):
        if code not in (EXIT_OK, EXIT_PREEMPTED):
            log.warning("worker %d exited with %s", i, code if code >= 0 else f"signal {-code}")
    return EXIT_PREEMPTED if EXIT_PREEMPTED in codes else EXIT_OK


def _relay(index: int, worker: subprocess.Popen) -> None:
    for line in worker.stdout:
        sys.stdout.write(f"[worker {index}] {line}")
        sys.stdout.flush()
