"""Input normalization fitted on the training set and applied INSIDE the model, so checkpoints and exports carry it.

Modes:
- standardize: per-channel mean and standard deviation.
- gcn_zca: global contrast normalization, then ZCA whitening, as in the ELU paper (Clevert et al. 2015), which follows
  the maxout recipe (Goodfellow et al. 2013, pylearn2): each image minus its mean, scaled to an L2 norm of 55 (for
  32x32x3; expressed here as a per-value RMS of 55/sqrt(3072) so other image sizes get the same scale), then ZCA with
  `filter_bias` 0.1 added to the covariance eigenvalues (pylearn2's default), which damps the noisiest directions.
- none: the pixels as they are, in [0, 255].
"""
from __future__ import annotations

import keras
import numpy as np

GCN_RMS = 55.0 / np.sqrt(32 * 32 * 3)
ZCA_FILTER_BIAS = 0.1
ZCA_MAX_FIT_EXAMPLES = 10_000
MODES = ("standardize", "gcn_zca", "none")


def fit_preprocessing(x_train: np.ndarray, mode: str) -> dict[str, np.ndarray]:
    """The statistics `Preprocess(mode, ...)` needs, computed from uint8 NHWC training images."""
    if mode == "none":
        return {}
    if mode == "standardize":
        mean, std = _channel_mean_std(x_train)
        return {"mean": mean.astype(np.float32), "std": np.maximum(std, 1e-3).astype(np.float32)}
    if mode == "gcn_zca":
        return _fit_zca(x_train)
    raise ValueError(f"unknown normalization {mode!r}; use one of {', '.join(MODES)}")


def _channel_mean_std(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-channel mean and std; for uint8 from 256-bin histograms, built in chunks of images (no big float
    copy, and a streamed set, job/data/shards.py, is read a chunk at a time)."""
    if x.dtype != np.uint8:
        pixels = x.reshape(-1, x.shape[-1])
        return pixels.mean(axis=0, dtype=np.float64), pixels.std(axis=0, dtype=np.float64)
    channels = x.shape[-1]
    histograms = np.zeros((channels, 256))
    per_chunk = max(1, (1 << 21) // max(1, int(np.prod(x.shape[1:-1]))))  # about 2M pixels a chunk
    for start in range(0, len(x), per_chunk):
        pixels = np.asarray(x[start:start + per_chunk]).reshape(-1, channels)
        for c in range(channels):
            histograms[c] += np.bincount(pixels[:, c], minlength=256)
    p = histograms / histograms[0].sum()
    values = np.arange(256.0)
    mean = p @ values
    var = (p * (values[None, :] - mean[:, None]) ** 2).sum(axis=1)
    return mean, np.sqrt(var)


def _fit_zca(x_train: np.ndarray) -> dict[str, np.ndarray]:
    """ZCA matrix W = (C + bias I)^(-1/2) of the covariance C of the GCN'd training images.

    For 32x32x3 images C is 3072x3072. X^T X over all 50,000 images costs ~0.5 TFLOP in float64, so C is estimated on
    an evenly spaced subsample of at most 10,000 images (still > 3x the dimension, so full rank), in float64 so the
    small eigenvalues stay accurate; `eigh` exploits the symmetry (a few seconds to a minute on 2 cores; it runs once
    per training run). With fewer images than dimensions (small test sets) the thin SVD of the data gives the same W
    exactly and far faster: outside the data's span, C is zero and W is 1/sqrt(bias).
    """
    step = max(1, -(-len(x_train) // ZCA_MAX_FIT_EXAMPLES))
    sample = x_train[::step]
    flat = gcn(sample.reshape(len(sample), -1).astype(np.float64))
    n, dim = flat.shape
    mean = flat.mean(axis=0)
    centred = flat - mean
    if n >= dim:
        eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred / n)
        zca = (eigenvectors / np.sqrt(np.maximum(eigenvalues, 0.0) + ZCA_FILTER_BIAS)) @ eigenvectors.T
    else:
        _, singular, basis = np.linalg.svd(centred, full_matrices=False)  # basis: (n, dim), orthonormal rows
        eigenvalues = singular**2 / n
        floor = 1.0 / np.sqrt(ZCA_FILTER_BIAS)
        zca = (basis.T * (1.0 / np.sqrt(eigenvalues + ZCA_FILTER_BIAS) - floor)) @ basis + floor * np.eye(dim)
    return {"zca_mean": mean.astype(np.float32), "zca_matrix": zca.astype(np.float32)}


def gcn(flat: np.ndarray) -> np.ndarray:
    """Global contrast normalization of (N, D) rows, in numpy (the layer does the same in the graph)."""
    flat = flat - flat.mean(axis=1, keepdims=True)
    rms = np.sqrt((flat * flat).mean(axis=1, keepdims=True))
    return GCN_RMS * flat / np.maximum(rms, 1e-8)


@keras.saving.register_keras_serializable(package="job")
class Preprocess(keras.layers.Layer):
    """float32 [0, 255] NHWC -> normalized float32. The statistics are non-trainable weights, set by `set_stats`."""

    def __init__(self, mode: str = "standardize", image_shape: tuple[int, int, int] = (32, 32, 3), **kwargs):
        kwargs.setdefault("dtype", "float32")  # whitening in float16 would lose precision under mixed precision
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(f"unknown normalization {mode!r}; use one of {', '.join(MODES)}")
        self.mode = mode
        self.image_shape = tuple(int(d) for d in image_shape)
        channels, size = self.image_shape[-1], int(np.prod(self.image_shape))
        shapes = {
            "standardize": {"mean": (channels,), "std": (channels,)},
            "gcn_zca": {"zca_mean": (size,), "zca_matrix": (size, size)},
            "none": {},
        }[mode]
        initial = {"std": "ones", "zca_matrix": "identity"}
        self._stat_names = tuple(shapes)
        for name, shape in shapes.items():
            # plain attributes, not a dict: tf.train.Checkpoint only follows variables held directly by the layer
            setattr(self, name, self.add_weight(name=name, shape=shape, initializer=initial.get(name, "zeros"),
                                                trainable=False))

    @property
    def stats(self) -> dict:
        return {name: getattr(self, name) for name in self._stat_names}

    def set_stats(self, stats: dict[str, np.ndarray]) -> None:
        if set(stats) != set(self.stats):
            raise ValueError(f"{self.mode} needs statistics {sorted(self.stats)}, got {sorted(stats)}")
        for name, value in stats.items():
            self.stats[name].assign(np.asarray(value, dtype=np.float32))

    def call(self, images):
        images = keras.ops.cast(images, "float32")
        if self.mode == "standardize":
            return (images - self.stats["mean"]) / self.stats["std"]
        if self.mode == "gcn_zca":
            flat = keras.ops.reshape(images, (-1, int(np.prod(self.image_shape))))
            flat = flat - keras.ops.mean(flat, axis=1, keepdims=True)
            rms = keras.ops.sqrt(keras.ops.mean(flat * flat, axis=1, keepdims=True))
            flat = GCN_RMS * flat / keras.ops.maximum(rms, 1e-8)
            white = keras.ops.matmul(flat - self.stats["zca_mean"], self.stats["zca_matrix"])
            return keras.ops.reshape(white, (-1, *self.image_shape))
        return images

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "image_shape": list(self.image_shape)}
