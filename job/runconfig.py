"""The config a run was started with, stored in the run as config.yaml: written at the first start, checked at every
resume (a changed model or dataset would make the checkpoints mean something else), read by every command that uses
the run. No TensorFlow: the resume check runs before it is imported."""
from __future__ import annotations

from job import config as configlib
from job.config import Config
from job.errors import ConfigError
from job.layout import CONFIG_FILE
from job.storage import Storage


def stored_config(storage: Storage) -> dict | None:
    """The config tree stored in the run `storage` points at, or None if it has none yet."""
    try:
        raw = storage.read_bytes(CONFIG_FILE)
    except FileNotFoundError:
        return None
    name = f"{storage.url}/{CONFIG_FILE}"
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise ConfigError(f"{name} is not UTF-8 text; restore it from a copy, or start the run in a new run.dir") \
            from None
    return configlib.parse_yaml(text, name)


def check_run_config(storage: Storage, cfg: Config) -> None:
    """Refuse `cfg` if it would make the run's checkpoints mean something else (configlib.resume_conflict)."""
    stored = stored_config(storage)
    if stored is not None:
        conflict = configlib.resume_conflict(stored, cfg)
        if conflict:
            raise ConfigError(f"{storage.url} {conflict}")


def store_run_config(run, cfg: Config) -> None:
    """Into the run's working copy, then queued for upload (`run` a job.rundir.RunDir)."""
    (run.local / CONFIG_FILE).write_text(configlib.to_yaml(cfg))
    run.publish(CONFIG_FILE)


def load_run_config(storage: Storage) -> Config:
    stored = stored_config(storage)
    if stored is None:
        raise ConfigError(f"{storage.url} has no {CONFIG_FILE}: it is not a run directory made by "
                          f"`python -m job train`")
    return configlib.from_dict(stored)
