"""That an exported model file (`--model`) is whole, checked before TensorFlow is imported.

The export writes each model file's size and SHA-256 into model_card.json beside it (job/export.py): a file that does
not match is refused, since a damaged HDF5 weight may load without any error and give wrong answers. Without a card
(or an older card without checksums) the container's own checks still catch a truncated or damaged file: a .keras is
a zip whose members carry CRC-32s, an .h5 has a superblock that records its length, a .tflite is a flatbuffer that
LiteRT's verifier walks before it is used.
"""
from __future__ import annotations

import hashlib
import json
import zipfile
import zlib
from pathlib import Path

from job.errors import UserError, first_line
from job.layout import MODEL_CARD_FILE

CHECKSUMS_KEY = "checksums"  # in model_card.json: {file name: {"bytes": n, "sha256": hex}}


def file_checksum(path: Path) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def check_intact(path: str) -> None:
    """A UserError naming `path` if it is truncated or damaged (or differs from the model card beside it)."""
    file = Path(path)
    damaged = (f"--model {path} is damaged or truncated ({{}}); copy the run's export/ again, or use --run-dir RUN "
               f"for its checkpoints")
    expected = _card_checksums(file).get(file.name)
    if isinstance(expected, dict):
        actual = file_checksum(file)
        if actual["bytes"] != expected.get("bytes"):
            raise UserError(damaged.format(f"{actual['bytes']} bytes, {MODEL_CARD_FILE} says {expected.get('bytes')}"))
        if actual["sha256"] != expected.get("sha256"):
            raise UserError(damaged.format(f"its SHA-256 differs from the one in {MODEL_CARD_FILE}"))
    if file.suffix == ".keras":
        try:
            with zipfile.ZipFile(file) as archive:
                bad = archive.testzip()  # reads every member and checks its CRC-32
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as e:
            raise UserError(damaged.format(f"not a complete .keras zip archive: {first_line(e)}")) from None
        if bad is not None:
            raise UserError(damaged.format(f"{bad} inside it fails its CRC-32 check"))
    elif file.suffix == ".h5":
        import h5py

        try:
            h5py.File(file, "r").close()
        except OSError as e:
            raise UserError(damaged.format(f"not a readable HDF5 file: {first_line(e)}")) from None
    elif file.suffix == ".tflite":
        from ai_edge_litert.interpreter import Interpreter  # LiteRT's runtime alone: no TensorFlow

        try:
            Interpreter(model_path=str(file))  # verifies the flatbuffer; tensors are not allocated
        except (ValueError, RuntimeError) as e:
            raise UserError(damaged.format(f"not a valid LiteRT flatbuffer: {first_line(e)}")) from None


def _card_checksums(file: Path) -> dict:
    try:
        card = json.loads(file.with_name(MODEL_CARD_FILE).read_text())
    except (OSError, ValueError):
        return {}
    checksums = card.get(CHECKSUMS_KEY) if isinstance(card, dict) else None
    return checksums if isinstance(checksums, dict) else {}
