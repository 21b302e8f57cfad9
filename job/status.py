"""`python -m job status RUN_DIR [--watch] [--json]`: where a run is, from anywhere, without TensorFlow.

Reads the chief's status record (`status.json`, job/hooks/status.py), the newest checkpoint commit object, the final
evaluation and the newest trainer log through job/storage.py only, so it answers in well under a second locally (it
must not import job.checkpoint or anything else that imports TensorFlow; tests/integration/test_status.py checks).
"""
from __future__ import annotations

import json
import sys
import time
from typing import Any

from job.commits import commit_path, committed_steps
from job.errors import StorageUnavailableError, UserError, first_line
from job.layout import CONFIG_FILE, METRICS_FILE, STATUS_FILE
from job.layout import TRAINER_LOG_DIR as LOG_DIR
from job.records import LOST, duration, outcome_of
from job.storage import Storage, open_storage

LOST_MEANING = "lost (no final record: killed, or its node went away)"
STALE_FLUSHES = 3  # a record older than this many flush intervals on an unfinished run: no heartbeat,
STALE_MIN_SECONDS = 10.0  # but never sooner: uploads queue behind checkpoints, and tiny intervals (tests) jitter
_ENDED = ("finished", "stopped", "preempted", "failed")


def read_status(url: str, stale_after: float | None = None, now: float | None = None) -> dict[str, Any]:
    """Everything `status` shows, as one dict (what --json prints). Raises UserError if `url` is not a run."""
    storage = open_storage(url)
    now = time.time() if now is None else now
    try:
        return _gather(storage, url, stale_after, now)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - storage errors, as one line: a missing bucket, no permission, no network
        raise _storage_error(url, e) from None


def _storage_error(url: str, e: Exception) -> UserError:
    name = type(e).__name__
    if name == "NotFound":
        return UserError(f"cannot read {url}: its bucket does not exist; check the URL")
    if name in ("Forbidden", "Unauthorized"):
        return UserError(f"cannot read {url}: permission denied ({first_line(e)}); it needs storage.objects.list "
                         f"and storage.objects.get (roles/storage.objectViewer)")
    return StorageUnavailableError(f"cannot read {url} ({name}: {first_line(e)}); check the network or "
                                   f"STORAGE_EMULATOR_HOST")


def _gather(storage: Storage, url: str, stale_after: float | None, now: float) -> dict[str, Any]:
    if not storage.is_remote and not storage.root.is_dir():
        what = "is not a directory" if storage.root.exists() else "does not exist"
        raise UserError(f"{url} {what}; give the run.dir of a run (a local path or gs://BUCKET/PREFIX)")
    record = storage.read_json(STATUS_FILE)
    has_config = storage.exists(CONFIG_FILE)
    if record is None and not has_config:
        raise UserError(f"{url} is not a run directory: it has no {STATUS_FILE} or {CONFIG_FILE}; give the run.dir "
                        f"that `python -m job train` wrote")
    if record is not None and not isinstance(record.get("phase"), str):
        raise UserError(f"{url}/{STATUS_FILE} is not a status record of this trainer (it has no phase)")
    out: dict[str, Any] = {"run": url, "now": now}
    if record is None:  # a run of an older trainer, or one that has not reached its first record yet
        out.update(phase="unknown", reason=f"no {STATUS_FILE} yet (started before this trainer version, or starting)")
    else:
        out.update(record)
        out["record_age_seconds"] = now - record["updated_at"] if record.get("updated_at") else None
        flush = float(record.get("flush_seconds") or 60.0)
        limit = max(STALE_FLUSHES * flush, STALE_MIN_SECONDS) if stale_after is None else stale_after
        out["stale_after_seconds"] = limit
        # A process that ended wrote its last record on purpose: only a "running" one can lose its heartbeat.
        out["stale"] = record["phase"] not in _ENDED and (out["record_age_seconds"] or 0) > limit
        out["eta_seconds"] = _eta(record, now)
    out["checkpoint"] = _newest_checkpoint(storage, now)
    metrics = storage.read_json(METRICS_FILE)
    out["evaluation"] = {k: metrics[k] for k in ("loss", "top1", "top5", "step", "checkpoint") if k in metrics} \
        if metrics else None
    logs = [name for name in storage.list(LOG_DIR + "/") if name.endswith(".log")]
    out["newest_log"] = logs[-1] if logs else None  # names start with the UTC start time: sorted = by start
    out["log_count"] = len(logs)
    return out


def _eta(record: dict, now: float) -> float | None:
    """Seconds to the last step from the recent wall-clock step rate (validation and saves included), or from
    images/s where the rate is not known yet; the time since the record was written counts as spent."""
    if record.get("phase") != "running":
        return None
    left = int(record.get("total_steps") or 0) - int(record.get("step") or 0)
    rate = record.get("steps_per_second")
    if not rate and record.get("images_per_second") and record.get("batch_size"):
        rate = record["images_per_second"] / record["batch_size"]
    if not rate or left < 0:
        return None
    return max(0.0, left / rate - max(0.0, now - float(record.get("updated_at") or now)))


def _newest_checkpoint(storage: Storage, now: float) -> dict | None:
    steps = committed_steps(storage)
    for step in reversed(steps):  # the newest readable one (pruning may remove one meanwhile)
        try:
            commit = storage.read_json(commit_path(step))
        except UserError:
            continue
        if commit is None:
            continue
        when = commit.get("time")
        return {"step": step, "prefix": commit.get("prefix"), "committed_at": when,
                "age_seconds": now - when if isinstance(when, (int, float)) else None,
                "metrics": commit.get("metrics") or {}, "count": len(steps)}
    return None


# ----------------------------------------------------------------------------------------------------------- text

def _clock(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def _metrics(values: dict | None, keys: tuple[str, ...]) -> str:
    return "  ".join(f"{k} {values[k]:.4g}" for k in keys if isinstance((values or {}).get(k), (int, float)))


def format_status(s: dict[str, Any]) -> str:
    lines = [f"run        {s['run']}"]
    phase = s["phase"]
    if phase == "running" and s.get("step") is not None and s.get("step") >= (s.get("total_steps") or 1):
        phase = "running (final evaluation)"
    text = f"{phase}: {s.get('reason', '')}".rstrip(": ")
    if s.get("stale"):
        text = (f"no heartbeat since {_clock(s['updated_at'])} ({duration(s['record_age_seconds'])} ago; last "
                f"seen {phase} on {s.get('host')} pid {s.get('pid')}): the process is gone or stuck")
    lines.append(f"phase      {text}")
    if s.get("total_steps"):
        step, total = s["step"], s["total_steps"]
        lines.append(f"progress   step {step}/{total} ({100 * step / total:.1f}%), epoch {s['epoch']}/"
                     f"{s['total_epochs']} ({s['steps_per_epoch']} steps each), {s.get('model')} on "
                     f"{s.get('dataset')}, batch {s.get('batch_size')} on {s.get('replicas')} replica(s)")
    if s.get("images_per_second") or s.get("steps_per_second"):
        speed = f"speed      {s['images_per_second'] or 0:,.0f} images/s"
        if s.get("steps_per_second"):
            speed += f", {s['steps_per_second']:.3g} steps/s over the recent minutes"
        if s.get("eta_seconds") is not None and not s.get("stale"):
            speed += f"; ETA {duration(s['eta_seconds'])} (about {_clock(s['now'] + s['eta_seconds'])})"
        lines.append(speed)
    if s.get("train"):
        lines.append(f"train      {_metrics(s['train'], ('loss', 'top1', 'top5', 'lr'))}")
    if s.get("validation"):
        lines.append(f"validation epoch {s['validation'].get('epoch')}: "
                     f"{_metrics(s['validation'], ('val_loss', 'val_top1', 'val_top5'))}")
    ckpt = s.get("checkpoint")
    if ckpt:
        lines.append(f"checkpoint step {ckpt['step']}, committed {duration(ckpt['age_seconds'])} ago "
                     f"({ckpt['count']} kept)")
    else:
        lines.append("checkpoint none committed yet")
    if s.get("start_count"):
        lines.append(f"starts     {s['start_count']} (the newest last)")
        for start in s.get("starts", [])[-5:]:
            outcome = outcome_of(start)
            ended = f", ended {LOST_MEANING if outcome == LOST else outcome}" if outcome else ""
            lines.append(f"           {_clock(start['started_at'])} on {start.get('host')} pid {start.get('pid')} "
                         f"from step {start.get('step')}{ended}")
    if s.get("updated_at"):
        lines.append(f"updated    {_clock(s['updated_at'])} ({duration(s['record_age_seconds'])} ago)")
    if s.get("evaluation"):
        lines.append(f"evaluation {_metrics(s['evaluation'], ('top1', 'top5', 'loss'))} (test set, step "
                     f"{s['evaluation'].get('step')})")
    if s.get("newest_log"):
        lines.append(f"log        {s['run'].rstrip('/')}/{s['newest_log']} ({s['log_count']} in {LOG_DIR}/)")
    return "\n".join(lines)


def main(run_dir: str, watch: bool = False, as_json: bool = False, interval: float = 5.0,
         stale_after: float | None = None) -> int:
    if interval <= 0:
        raise UserError(f"--interval {interval} must be a positive number of seconds")
    if stale_after is not None and stale_after <= 0:
        raise UserError(f"--stale-after {stale_after} must be a positive number of seconds")
    first = True
    while True:
        status = read_status(run_dir, stale_after)
        if as_json:
            print(json.dumps(status, sort_keys=True), flush=True)
        else:
            if watch and sys.stdout.isatty():
                print("\033[H\033[2J", end="")  # clear the terminal: the block replaces the previous one
            elif watch and not first:
                print()
            print(format_status(status), flush=True)
        if not watch:
            return 0
        first = False
        try:
            time.sleep(interval)
        except KeyboardInterrupt:
            return 0
