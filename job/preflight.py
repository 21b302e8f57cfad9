"""What a training start can check before TensorFlow is imported. TensorFlow prints its start-up lines on import,
whatever TF_CPP_MIN_LOG_LEVEL says, so a problem found after it would be buried under them: every data, storage and
config problem a start can detect is reported here, in one line, with nothing else on the terminal."""
from __future__ import annotations

from job.config import Config
from job.data import Splits, load_splits
from job.runconfig import check_run_config
from job.storage import open_storage


def check_training_start(cfg: Config) -> Splits:
    """The run's data, once it has been found, verified and read; raises a one-line UserError for a missing or damaged
    dataset, an unusable run directory or bucket, or a config that would change what the run's checkpoints mean."""
    # First: a bad dataset leaves no run directory behind. (A folder dataset is decoded here, into its cache, so every
    # worker of a distributed run has its images before the collectives start: job/data/decoded.py.)
    splits = load_splits(cfg.data, cfg.train.seed, run_dir=cfg.run_dir)
    storage = open_storage(cfg.run_dir)
    if storage.is_remote:
        storage.preflight()  # writes and deletes a small object
    else:
        storage.check_writable()  # creates nothing: a start refused later (by the device) leaves no folder behind
    check_run_config(storage, cfg)
    return splits
