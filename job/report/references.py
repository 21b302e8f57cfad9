"""The published reference figure of each bundled preset, from README's preset table: what its recipe reached in
the literature (test top-1), shown beside a run's result. Presets without one are absent."""
from __future__ import annotations

from dataclasses import dataclass

from job.config import Config, load_config


@dataclass(frozen=True)
class Reference:
    top1: float  # the figure as a fraction (a range's middle)
    text: str  # as the source states it


REFERENCES: dict[str, Reference] = {
    "cifar100_resnet18": Reference(0.756, "≈75.6% top-1 (ResNet-18, CIFAR-100, 200 epochs)"),
    "cifar100_elu": Reference(0.7572, "75.72% top-1 (24.28% error; Clevert et al. 2015)"),
    "cifar100_vgg16": Reference(0.735, "≈73–74% top-1 (VGG-16-BN, CIFAR-100, 200 epochs)"),
    "cifar10_resnet20": Reference(0.9125, "91.25% top-1 (He et al. 2016)"),
    "cifar10_resnet56": Reference(0.9303, "93.03% top-1 (He et al. 2016)"),
    "cifar10_resnet110": Reference(0.9357, "93.57% top-1 (He et al. 2016)"),
    "cifar10_simple_cnn": Reference(0.68, "≈68% top-1 (CIFAR-10, 10 epochs)"),
    "cifar10_airbench": Reference(0.94, "94% top-1 (airbench94, 3.83 s on an A100; not measured here)"),
    "digits_resnet20": Reference(0.97, "≥97% top-1 (this project's offline demo)"),
}


def reference_for(cfg: Config) -> Reference | None:
    """The run's preset's figure, if the run trains that preset's model on its dataset: with another model (e.g.
    `--config digits_resnet20 model.name=simple_cnn`) the figure is another recipe's and is not shown."""
    reference = REFERENCES.get(cfg.preset)
    if reference is None:
        return None
    preset = load_config(cfg.preset)
    same = (cfg.model.name, cfg.data.name, cfg.data.label_mode) == (preset.model.name, preset.data.name,
                                                                     preset.data.label_mode)
    return reference if same else None
