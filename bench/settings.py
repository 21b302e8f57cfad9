"""What `make bench` (full) and the test (`--tiny`) measure: models, presets, sizes and repeats."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LoopCase:
    label: str
    preset: str  # the preset's batch size and optimizer are used on both sides
    overrides: tuple[str, ...]
    steps: int  # steps per trial; the steady rate is taken over steps - 2 of them


@dataclass(frozen=True)
class StepsPerCallCase:
    """Several training steps per call of the compiled function: the loop at train.steps_per_call=1 and =N, and Keras
    fit at steps_per_execution=N, in one interleaved set of trials."""
    label: str
    preset: str
    overrides: tuple[str, ...]
    steps: int  # steps per trial: a multiple of steps_per_call, at least 3 calls (the steady rate skips the first)
    steps_per_call: int


@dataclass(frozen=True)
class CheckpointCase:
    label: str
    preset: str
    resume: bool  # also time a fresh and a resumed start of the trainer (each start costs tens of seconds)


@dataclass(frozen=True)
class Settings:
    mode: str
    warmup: int  # untimed trials per side before the timed ones
    repeats: int  # timed trials per side, interleaved A B, B A, ...
    loop_cases: tuple[LoopCase, ...]
    steps_per_call_case: StepsPerCallCase | None  # part of (1), after the loop cases
    pipeline_preset: str
    pipeline_overrides: tuple[str, ...]
    checkpoint_cases: tuple[CheckpointCase, ...]
    checkpoint_repeats: int
    checkpoint_overrides: tuple[str, ...]  # the data the saver builds its model for (the size does not depend on it)
    # The epoch a checkpoint's blocking time is compared with: the trainer's step time for the model, measured by the
    # loop worker. On a CPU at a small batch (the per-image time hardly depends on it there), on a GPU at the preset's.
    epoch_probe_overrides_cpu: tuple[str, ...]
    epoch_probe_overrides_gpu: tuple[str, ...]
    epoch_probe_steps: int
    # `python -m job train` starts for the start-up figure: tiny data, a small batch and two steps per start, so a
    # start is mostly start-up
    resume_overrides: tuple[str, ...]
    # Both sides of (1): Keras fit gets the arrays as they are, so the loop trains on them unaugmented too (what the
    # augmentation costs is figure (2)); otherwise the loop would pay for crop and flip and fit for nothing. The loop
    # logs its train metrics every 100 steps, as in a CIFAR epoch (390 steps of 128), not every quarter of these short
    # trials (every 5-12 steps): each log reads the metric sums, which waits for the queued steps.
    loop_vs_fit_overrides: tuple[str, ...] = ("data.augment.crop_padding=0", "data.augment.flip=false",
                                              "run.log_every_steps=100")
    # Without a GPU, a checkpoint's blocking time is also set against an epoch on this GPU (a projection): the model's
    # training FLOPs (bench/flops.py) at this share of its 16-bit data-sheet peak, the design's reference (NVIDIA's
    # ResNet-50 with AMP+XLA reaches about 19 % of an A100's peak). Small CIFAR models reach less, so their epochs
    # are longer than this and the projected share is an upper bound.
    projection_gpu: str = "A100"
    projection_fraction_of_peak: float = 0.19
    gpu_overrides: tuple[str, ...] = ("train.precision=mixed_float16", "train.jit_compile=true")
    gpu_steps_factor: int = 5  # GPU steps are short: more of them per trial
    epoch_images: int = 50_000  # a CIFAR training epoch
    # (6) the run report: a CIFAR-100 test set (10,000 images) and a 200-epoch history
    # data.name=folder: photos decoded into the cache, and the pipeline fed from its shards (bench/folder_data.py)
    folder_images: int = 2000
    folder_pipeline_images: int = 20_000  # drained per pipeline trial (epochs of the folder's training images)
    folder_preset: str = "cifar10_resnet20"
    folder_overrides: tuple[str, ...] = ()
    report_preset: str = "cifar100_simple_cnn"
    report_examples: int = 10_000
    report_epochs: int = 200
    # the end of a run with one prediction pass vs two: four more page renders per trial, too slow for the tiny run
    report_end_of_run: bool = True
    # (7) serving: a freshly built model of each preset behind `python -m job serve` (batching on and off), trials of
    # this many seconds per side (1 client, 8 clients, in-process, in-process batched); `python -m job predict` (with
    # the last preset's model) on this many PNG files, this many times per side
    serving_presets: tuple[str, ...] = ("cifar10_resnet20", "cifar10_simple_cnn")
    serving_trial_seconds: float = 3.0
    predict_files: int = 1000
    predict_repeats: int = 2
    # (8) LiteRT: (label, preset) of the models whose .tflite files are timed one image per call, this many images
    # per trial
    litert_cases: tuple[tuple[str, str], ...] = (("simple_cnn", "cifar10_simple_cnn"), ("resnet20", "cifar10_resnet20"))
    litert_images: int = 300
    # (9) the recipe: test top-1 of a BatchNorm model on digits_noisy (a task made not to saturate) at a fixed step
    # budget, each technique on and off, over these seeds (bench/recipe.py). 6 epochs of 11 steps of 128 images.
    recipe_preset: str = "digits_resnet20"
    recipe_overrides: tuple[str, ...] = ("data.name=digits_noisy", "data.validation_split=0", "train.batch_size=128")
    recipe_epochs: int = 6
    recipe_seeds: tuple[int, ...] = (0, 1, 2)
    recipe_recalibration_batches: int = 20  # the trainer's default (11 here: all the full batches 1,438 images hold)
    recipe_ema_decay: float = 0.9  # a short run: the initial weights' share is 0.9^66 = 0.1% at the end
    recipe_mixup: float = 0.8  # timm's defaults
    recipe_cutmix: float = 1.0
    recipe_smoothing: float = 0.2  # the fast preset's (airbench's)
    recipe_peak: float = 0.23  # the triangular schedule's peak, as a share of the run (the fast preset's)
    pipeline_goal_ratio: float = 20.0
    pipeline_goal_per_core: float = 20_000.0


FULL = Settings(
    mode="full",
    warmup=1,
    repeats=5,
    loop_cases=(
        LoopCase("resnet20", "cifar10_resnet20", ("data.synthetic_examples=10240",), steps=20),
        LoopCase("simple_cnn", "cifar10_simple_cnn", ("data.synthetic_examples=10240",), steps=48),
    ),
    # 6 calls of 8 steps per trial: the steady figures come from the middle 4 (on a GPU 5x as many steps)
    steps_per_call_case=StepsPerCallCase("resnet20", "cifar10_resnet20", ("data.synthetic_examples=10240",),
                                         steps=48, steps_per_call=8),
    pipeline_preset="cifar100_resnet18",  # crop (4 px padding) + flip, batch 128: the CIFAR presets' augmentation
    pipeline_overrides=("data.synthetic_examples=50000",),
    checkpoint_cases=(
        CheckpointCase("resnet18", "cifar100_resnet18", resume=True),  # the default preset: what `make train` runs
        CheckpointCase("elu18", "cifar100_elu", resume=False),
    ),
    # A save's write time scatters 4x here (the kernel's write path: page-cache reclaim as system time), on either
    # side at random: the paired median needs many trials to resolve the ±10 % goal.
    checkpoint_repeats=15,
    checkpoint_overrides=("data.synthetic_examples=64", "train.batch_size=32"),
    epoch_probe_overrides_cpu=("data.synthetic_examples=96", "train.batch_size=32"),
    epoch_probe_overrides_gpu=("data.synthetic_examples=8192",),
    epoch_probe_steps=3,
    resume_overrides=("data.synthetic_examples=64", "train.batch_size=32", "train.max_steps_per_epoch=2",
                      "checkpoint.every_steps=1000000", "run.progress=false", "run.summary_flush_seconds=1"),
)

TINY = Settings(
    mode="tiny",
    # the harness, not the recipe: a small model without BatchNorm traces fast; 2 steps per run
    recipe_overrides=("data.name=digits_noisy", "data.validation_split=0", "train.batch_size=32",
                      "train.max_steps_per_epoch=2", "model.name=simple_cnn", "train.eval_batch_size=500"),
    recipe_epochs=1,
    recipe_seeds=(0, 1),
    litert_cases=(("simple_cnn", "cifar10_simple_cnn"),),
    litert_images=10,
    folder_images=24,
    folder_pipeline_images=64,
    folder_overrides=("train.batch_size=8",),
    report_examples=300,
    report_epochs=3,
    report_end_of_run=False,
    serving_presets=("cifar10_simple_cnn",),
    serving_trial_seconds=0.5,
    predict_files=40,
    predict_repeats=1,
    warmup=1,
    repeats=2,
    loop_cases=(LoopCase("simple_cnn", "cifar10_simple_cnn",
                         ("data.synthetic_examples=128", "train.batch_size=16"), steps=3),),
    steps_per_call_case=StepsPerCallCase("simple_cnn", "cifar10_simple_cnn",
                                         ("data.synthetic_examples=512", "train.batch_size=16"),
                                         steps=32, steps_per_call=8),
    pipeline_preset="cifar100_resnet18",
    pipeline_overrides=("data.synthetic_examples=512", "train.batch_size=64"),
    checkpoint_cases=(CheckpointCase("simple_cnn", "cifar10_simple_cnn", resume=True),),
    checkpoint_repeats=2,
    checkpoint_overrides=("data.synthetic_examples=64", "train.batch_size=16"),
    epoch_probe_overrides_cpu=("data.synthetic_examples=48", "train.batch_size=16"),
    epoch_probe_overrides_gpu=("data.synthetic_examples=48", "train.batch_size=16"),
    epoch_probe_steps=3,
    resume_overrides=("data.synthetic_examples=64", "train.batch_size=16", "train.max_steps_per_epoch=2",
                      "checkpoint.every_steps=1000000", "run.progress=false", "run.summary_flush_seconds=1"),
)
