"""A run's stored results, read through job/storage.py (local or gs://) without TensorFlow: its config, its per-epoch
history (job/hooks/history.py writes it) and its final evaluation (job/evaluate.py writes it), plus the figures the
report's header and `compare`'s table derive from them."""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from job import config as configlib
from job.config import Config
from job.errors import StorageUnavailableError, UserError, first_line
from job.layout import CONFIG_FILE, HISTORY_FILE, METRICS_FILE
from job.storage import Storage, open_storage


@dataclass
class RunData:
    url: str
    cfg: Config
    history: dict[str, Any]  # an empty history ({"starts": [], "epochs": []}) for a run that has none yet
    metrics: dict[str, Any] | None  # None before the final evaluation

    @property
    def epochs(self) -> list[dict[str, Any]]:
        return self.history.get("epochs", [])

    @property
    def starts(self) -> list[dict[str, Any]]:
        return self.history.get("starts", [])

    @property
    def name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1] or self.url

    @property
    def dataset(self) -> str:
        return dataset_label(self.cfg)

    @property
    def total_epochs(self) -> int:
        return self.cfg.train.epochs + self.cfg.train.finetune_epochs

    @property
    def restarts(self) -> int:
        return max(0, len(self.starts) - 1)

    @property
    def wall_seconds(self) -> float | None:
        """Each process start's time up to its last recorded event, summed (a start killed mid-epoch counts to its
        last epoch's end)."""
        spans = [s["last_at"] - s["started_at"] for s in self.starts if "last_at" in s and "started_at" in s]
        return sum(spans) if spans else None

    @property
    def images_per_second(self) -> float | None:
        rates = [e["images_per_second"] for e in self.epochs if e.get("images_per_second")]
        return statistics.median(rates) if rates else None

    @property
    def best_val_top1(self) -> float | None:
        values = [e["val_top1"] for e in self.epochs if e.get("val_top1") is not None]
        return max(values) if values else None

    @property
    def parameters(self) -> int | None:
        return self.history.get("model", {}).get("parameters")


def dataset_label(cfg: Config) -> str:
    """What `compare` requires to be the same across runs: the dataset and, for CIFAR-100, the label set."""
    return f"{cfg.data.name} ({cfg.data.label_mode})" if cfg.data.name == "cifar100" else cfg.data.name


def load_run(url: str, storage: Storage | None = None) -> RunData:
    """The run at `url` (read through `storage` when given: a report reads its own up-to-date working copy). A
    directory that is no run, or files that are not this trainer's, raise a one-line UserError."""
    try:
        storage = storage or open_storage(url)
        if not storage.is_remote and not storage.root.is_dir():
            what = "is not a directory" if storage.root.exists() else "does not exist"
            raise UserError(f"{url} {what}; give the run.dir of a run (a local path or gs://BUCKET/PREFIX)")
        try:
            raw = storage.read_bytes(CONFIG_FILE).decode()
        except FileNotFoundError:
            raise UserError(f"{url} is not a run directory: it has no {CONFIG_FILE}; give the run.dir that "
                            f"`python -m job train` wrote") from None
        cfg = configlib.from_dict(configlib.parse_yaml(raw, f"{url}/{CONFIG_FILE}"))
        history = storage.read_json(HISTORY_FILE) or {}
        history.setdefault("starts", [])
        history.setdefault("epochs", [])
        return RunData(url=url, cfg=cfg, history=history, metrics=storage.read_json(METRICS_FILE))
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - storage errors as one line: a missing bucket, no permission, no network
        if type(e).__name__ == "NotFound":
            raise UserError(f"cannot read {url}: its bucket does not exist; check the URL") from None
        raise StorageUnavailableError(f"cannot read {url} ({type(e).__name__}: {first_line(e)})") from None
