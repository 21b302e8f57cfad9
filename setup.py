"""The `job` package: python -m job {train,evaluate,presets,config}, and the `job` console script.

TensorFlow is not listed here on purpose: the Makefile installs tensorflow-cpu or tensorflow[and-cuda] (same version)
depending on whether the machine has a GPU, and the Docker images pick theirs.
"""
from pathlib import Path

from setuptools import find_packages, setup


def requirements(name: str) -> list[str]:
    lines = (Path(__file__).parent / name).read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


setup(
    name="cifar-job",
    version="0.1.0",
    description="Containerized, distributed, preemption-safe training of CIFAR-10/100 classifiers",
    python_requires=">=3.10",
    packages=find_packages(include=["job", "job.*"]),
    package_data={"job": ["configs/*.yaml", "report/templates/*", "tune/templates/*", "serve/templates/*"]},
    install_requires=requirements("requirements.txt"),
    extras_require={"dev": requirements("requirements-dev.txt")},
    entry_points={"console_scripts": ["job=job.cli:main"]},
)
