"""The data layer: CIFAR-10/100 archives (download, checksum, parsing), digits and synthetic sets, the tf.data
pipelines with vectorized stateless augmentation, and the in-model preprocessing layer."""
from job.data.augment import augmented_grid
from job.data.pipeline import eval_dataset, steps_per_epoch, train_dataset
from job.data.preprocess import Preprocess, fit_preprocessing
from job.data.splits import Splits, load_splits

__all__ = [
    "Preprocess",
    "Splits",
    "augmented_grid",
    "eval_dataset",
    "fit_preprocessing",
    "load_splits",
    "steps_per_epoch",
    "train_dataset",
]
