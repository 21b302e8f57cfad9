"""One way to build a run's parts from its config: the backend, the data, the model, the optimizer, the state the
checkpoint carries besides them, the checkpoint and its store, and TensorBoard writers. `train`, `evaluate`, the
benchmarks and any later command build runs here, so they all get the same parts in the same order.

Order matters: the backend comes first (MultiWorkerMirroredStrategy must start before any other TensorFlow op), the
data before the run directory (bad data fails before anything is written), the stored config is checked before
anything is written, and the model is built inside the backend's scope.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import keras
import tensorflow as tf

from job import data as datalib
from job.batching import BatchPlan, plan_batches
from job.checkpoint import CheckpointStore, Committed
from job.config import Config
from job.data import Splits
from job.devices import resolve as resolve_for_device
from job.distribute import Backend, make_backend
from job.ema import WeightAverage
from job.layout import CLASSES_FILE, DATA_MANIFEST_FILE
from job.metrics import best_metric
from job.models.assembly import PREPROCESS_LAYER, build_full_model, initialize_network_from_data, is_transfer, set_phase
from job.optim import make_optimizer
from job.runconfig import check_run_config, load_run_config, store_run_config
from job.rundir import RunDir
from job.summaries import SummaryWriters
from job.weights import build_inference_model

log = logging.getLogger("job")

def configure(cfg: Config) -> Config:
    """Process-wide TensorFlow settings, before any model or dataset exists. Returns `cfg` as it runs here: with
    train.precision and train.jit_compile `auto` resolved for this device (job/devices.py)."""
    cfg = resolve_for_device(cfg)
    keras.utils.set_random_seed(cfg.train.seed)
    if cfg.train.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy(cfg.train.precision)
    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(gpu, True)
    return cfg


@dataclass
class TrainState:
    """Variables the checkpoint carries besides model and optimizer."""

    step: tf.Variable
    best_val_top1: tf.Variable
    epochs_without_improvement: tf.Variable

    @classmethod
    def create(cls) -> TrainState:
        return cls(step=tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step"),
                   best_val_top1=tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best_val_top1"),
                   epochs_without_improvement=tf.Variable(0, dtype=tf.int64, trainable=False, name="bad_epochs"))


@dataclass
class RunParts:
    cfg: Config
    backend: Backend
    splits: Splits
    run: RunDir
    model: keras.Model
    checkpoint: tf.train.Checkpoint
    store: CheckpointStore
    steps_per_epoch: int
    optimizer: keras.optimizers.Optimizer | None = None  # None when built for evaluation
    state: TrainState | None = None
    ema: WeightAverage | None = None  # the averaged weights, with train.ema_decay
    writers: SummaryWriters | None = None  # the chief's, when built for training
    batches: BatchPlan = BatchPlan(global_batch=0, workers=1, replicas=1, accumulation=1)  # how a step is split

    @property
    def total_epochs(self) -> int:
        return self.cfg.train.epochs + self.cfg.train.finetune_epochs

    @property
    def total_steps(self) -> int:
        return self.total_epochs * self.steps_per_epoch

    @property
    def step(self) -> int:
        return int(self.state.step.numpy())

    def restore_or_initialize(self) -> Committed | None:
        """Restore the newest committed checkpoint, or fit the preprocessing statistics (and a model's initialisation
        from the data, job/models/assembly.py) for a fresh start; then make every worker hold the chief's values.
        Returns the checkpoint restored, if any."""
        latest = self.store.latest()
        if latest is not None:
            self.store.restore(self.checkpoint, latest)
        else:
            stats = datalib.fit_preprocessing(self.splits.x_train, self.cfg.data.normalization)
            self.model.get_layer(PREPROCESS_LAYER).set_stats(stats)
            initialize_network_from_data(self.model, self.cfg, self.splits.x_train)
        self.backend.broadcast_initial_state(self.model.variables + self.optimizer.variables)
        _check_same_step(self.backend, self.step)
        return latest


def build_run(cfg: Config, backend: Backend | None = None, writers: bool = True,
              splits: Splits | None = None) -> RunParts:
    """Every part a training run needs; the model's weights are initial (see RunParts.restore_or_initialize).
    `writers=False` leaves TensorBoard out (benchmarks of the bare loop); `splits`: the data, if loaded already (the
    CLI loads it before TensorFlow starts: job/preflight.py)."""
    cfg = configure(cfg)
    backend = backend or make_backend(cfg)
    batches = plan_batches(cfg, backend.num_workers, backend.num_replicas)
    if splits is None:
        splits = datalib.load_splits(cfg.data, cfg.train.seed, run_dir=cfg.run_dir)  # bad data fails first
    run = RunDir.open(cfg.run_dir, cfg.run.work_dir, cfg.run.summary_flush_seconds, worker=backend.worker_index)
    check_run_config(run.storage, cfg)  # refuses a changed model/dataset before anything is written
    if backend.is_chief:
        store_run_config(run, cfg)
        run.write_json(CLASSES_FILE, {"classes": list(splits.class_names)})  # predict/serve need no dataset
        if splits.record is not None:  # a folder dataset: which image went where; a resume checks it
            run.write_json(DATA_MANIFEST_FILE, splits.record)
    steps_per_epoch = datalib.steps_per_epoch(len(splits.x_train), cfg.train.batch_size)
    if cfg.train.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.train.max_steps_per_epoch)
    with backend.scope():
        model = build_full_model(cfg, splits.num_classes, splits.x_train.shape[1:])
        optimizer = make_optimizer(cfg, steps_per_epoch)
        state = TrainState.create()
        if is_transfer(cfg) and cfg.train.finetune_epochs:
            set_phase(model, cfg, 2)
        # Built on every variable any phase trains, so the checkpoint has all slots from the start.
        optimizer.build(model.trainable_variables)
        ema = averaged_weights(model, cfg)
        if is_transfer(cfg):
            set_phase(model, cfg, 1)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=state.step,
                                     best_val_top1=state.best_val_top1,
                                     epochs_without_improvement=state.epochs_without_improvement,
                                     rng=random_state_variables(model), **({"ema": ema.trackable} if ema else {}))
    return RunParts(cfg=cfg, backend=backend, splits=splits, run=run, model=model, checkpoint=checkpoint,
                    store=CheckpointStore(run, keep=cfg.checkpoint.keep, best_metric=best_metric(cfg)),
                    steps_per_epoch=steps_per_epoch, optimizer=optimizer, state=state, ema=ema,
                    writers=SummaryWriters(run, cfg) if writers and backend.is_chief else None, batches=batches)


def build_for_evaluation(run: RunDir) -> RunParts:
    """The model of an existing run, on one device, with a checkpoint of the model alone (restore it with
    `checkpoint.read(prefix).expect_partial()`): built as for inference (job/weights.py), with the run's data."""
    cfg = configure(load_run_config(run.storage))
    splits = datalib.load_splits(cfg.data, cfg.train.seed, run_dir=run.url)
    model = build_inference_model(cfg, splits.num_classes)
    ema = inference_average(model, cfg)
    steps_per_epoch = datalib.steps_per_epoch(len(splits.x_train), cfg.train.batch_size)
    single = dataclasses.replace(cfg, distribute=dataclasses.replace(cfg.distribute, backend="single"))
    return RunParts(cfg=cfg, backend=make_backend(single),
                    splits=splits, run=run, model=model,
                    checkpoint=tf.train.Checkpoint(model=model, **({"ema": ema.trackable} if ema else {})),
                    store=CheckpointStore(run, keep=cfg.checkpoint.keep, best_metric=best_metric(cfg)),
                    steps_per_epoch=steps_per_epoch, ema=ema)


def averaged_weights(model: keras.Model, cfg: Config) -> WeightAverage | None:
    """The weight EMA of a run with train.ema_decay (job/ema.py), over the variables any phase trains: call with a
    transfer model in its phase 2 (or any other model as built)."""
    return WeightAverage(model, model.trainable_variables, cfg.train.ema_decay) if cfg.train.ema_decay else None


def inference_average(model: keras.Model, cfg: Config) -> WeightAverage | None:
    """The weight EMA of an existing run's model rebuilt for inference, over the same variables in the same order as
    build_run made it (a transfer model's phase-2 variables when it has a phase 2), to restore the averages into."""
    if not cfg.train.ema_decay:
        return None
    if is_transfer(cfg) and cfg.train.finetune_epochs:
        set_phase(model, cfg, 2)
    return averaged_weights(model, cfg)


def random_state_variables(model: keras.Model) -> list[tf.Variable]:
    """Keras layers' seed generators (dropout): not tracked by tf.train.Checkpoint through the model, yet a resumed
    run must continue their random streams to end with the same weights."""
    return [v.value for v in model.variables if v.path.endswith("seed_generator_state")]


def _check_same_step(backend: Backend, step: int) -> None:
    """Every worker must continue from the same checkpoint; a mismatch would silently train different models."""
    if backend.num_workers == 1:
        return
    total = backend.all_reduce_sum({"step": float(step)})["step"]
    if total != step * backend.num_workers:
        raise RuntimeError(f"workers restored different steps (this one {step}, sum {total}); restart the job")
