"""Model FLOPs and GPU peaks, for the fraction of a GPU's peak a model reaches (model FLOPs x images/s / peak).

FLOPs count a multiply-add as two, for convolutions and dense layers only (everything else is a few percent of them
in these models), and a training step as three forward passes (forward, and the two products of the backward pass),
the convention behind NVIDIA's and MLPerf's utilization figures.
"""
from __future__ import annotations

# Dense peak TFLOP/s per GPU from the vendors' data sheets: (float32 without tensor cores, 16-bit with tensor cores)
GPU_PEAK_TFLOPS = {
    "H100 SXM": (67.0, 989.0),
    "H100 PCIe": (51.0, 756.0),
    "H100": (67.0, 989.0),
    "A100": (19.5, 312.0),
    "A10G": (31.2, 70.0),
    "A10": (31.2, 125.0),
    "L40S": (91.6, 362.0),
    "L4": (30.3, 121.0),
    "V100": (15.7, 125.0),
    "T4": (8.1, 65.0),
    "RTX 4090": (82.6, 165.0),
    "RTX 3090": (35.6, 71.0),
}


def forward_flops_per_image(model) -> int:
    import keras

    total = 0
    for layer in _leaf_layers(model):
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            c_in = layer.input.shape[-1] // layer.groups
            total += 2 * h * w * kh * kw * c_in * c_out
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * layer.input.shape[-1] * layer.units
    return int(total)


def train_flops_per_image(model) -> int:
    return 3 * forward_flops_per_image(model)


def gpu_peak_tflops(gpu_name: str, sixteen_bit: bool) -> float | None:
    """The data-sheet peak of the first table entry found in the device name (longest names first); None if unknown."""
    for key in sorted(GPU_PEAK_TFLOPS, key=len, reverse=True):
        if key.lower() in gpu_name.lower():
            return GPU_PEAK_TFLOPS[key][1 if sixteen_bit else 0]
    return None


def _leaf_layers(model):
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:  # a nested model (the trainer wraps the classifier)
            yield from _leaf_layers(layer)
        else:
            yield layer
