"""The TensorFlow / Keras / Horovod combinations the distributed backends are known to work with.

A wrong combination fails in confusing ways deep inside a collective (Horovod's ops library is compiled against one
TensorFlow ABI; Keras 2 variables and Keras 3 variables need different code), so it is refused up front with one line.
"""
from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from job.errors import UserError


@dataclass(frozen=True)
class Supported:
    tensorflow: str  # PEP 440 specifiers
    keras: str
    horovod: str  # only checked for the horovod backend

    def describe(self, with_horovod: bool) -> str:
        text = f"tensorflow {self.tensorflow} with keras {self.keras}"
        return text + (f" and horovod {self.horovod}" if with_horovod else "")


# Measured combinations (docs/distributed.md); add a row only after the distribute tests pass with it.
SUPPORTED = (Supported(tensorflow="==2.21.*", keras=">=3.10,<4", horovod="==0.28.1"),)


def check_version_combo(backend: str, tensorflow: str | None, keras: str | None, horovod: str | None = None) -> None:
    """Raise UserError unless the given versions (None = not installed) match a row of SUPPORTED for `backend`."""
    with_horovod = backend == "horovod"
    found = {"tensorflow": tensorflow, "keras": keras}
    if with_horovod:
        found["horovod"] = horovod
    for row in SUPPORTED:
        if all(_matches(version, getattr(row, package)) for package, version in found.items()):
            return
    found_text = ", ".join(f"{p} {v or 'not installed'}" for p, v in found.items())
    supported_text = "; ".join(row.describe(with_horovod) for row in SUPPORTED)
    fix = " (docker/build-horovod.sh builds horovod for the installed tensorflow)" if with_horovod else ""
    raise UserError(
        f"the {backend} backend does not support {found_text}; supported: {supported_text}; "
        f"install a supported combination{fix}"
    )


def check_versions(backend: str) -> None:
    """Check the installed packages for `backend` (single | mirrored | multiworker | horovod)."""
    check_version_combo(
        backend,
        tensorflow=installed_version("tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tf-nightly"),
        keras=installed_version("keras"),
        horovod=installed_version("horovod") if backend == "horovod" else None,
    )


def installed_version(*distributions: str) -> str | None:
    """The version of the first of `distributions` that is installed (TF ships under several names)."""
    for name in distributions:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _matches(version: str | None, spec: str) -> bool:
    if version is None:
        return False
    try:
        return SpecifierSet(spec).contains(Version(version), prereleases=True)
    except InvalidVersion:
        return False
