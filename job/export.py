"""The trained model, stored in the run for use outside the trainer (with its preprocessing inside)."""
from __future__ import annotations

import logging

import keras

from job.rundir import RunDir

log = logging.getLogger("job")

KERAS_FILE = "export/model.keras"


def export_model(run: RunDir, model: keras.Model) -> None:
    path = run.local / KERAS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    run.publish(KERAS_FILE)
    log.info("exported the model with its preprocessing to %s/%s", run.url, KERAS_FILE)
