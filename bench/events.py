"""Scalars from TensorBoard event files, read without importing TensorFlow (the parent process stays light)."""
from __future__ import annotations

import struct
from pathlib import Path

from tensorboard.compat.proto import event_pb2
from tensorboard.util import tensor_util


def read_scalars(log_dir: str | Path, names: list[str] | None = None) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] in file order, from the event files `names` in `log_dir` (default: all of them).
    TFRecord framing; the CRCs are not checked: a truncated last record is simply where the file ends."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    paths = [Path(log_dir) / n for n in names] if names is not None else Path(log_dir).glob("events.out.tfevents.*")
    for path in sorted(paths):
        for record in _records(path.read_bytes()):
            event = event_pb2.Event.FromString(record)
            for value in event.summary.value:
                kind = value.WhichOneof("value")
                if kind == "simple_value":
                    number = value.simple_value
                elif kind == "tensor" and not value.tensor.tensor_shape.dim:
                    number = float(tensor_util.make_ndarray(value.tensor))
                else:
                    continue
                scalars.setdefault(value.tag, []).append((event.step, number))
    return scalars


def _records(data: bytes):
    offset = 0
    while offset + 12 <= len(data):
        (length,) = struct.unpack_from("<Q", data, offset)
        start = offset + 12  # length, its CRC
        if start + length + 4 > len(data):
            return
        yield data[start:start + length]
        offset = start + length + 4  # the data's CRC
