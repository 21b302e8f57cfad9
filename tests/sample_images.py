"""Image files for the tests of predict and serve: real digits, a truncated file, a decompression bomb."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def digit_images(count: int = 10) -> list[tuple[np.ndarray, int]]:
    """The first `count` images of scikit-learn's digits as the trainer sees them (job/data/splits.py: 32x32x3 uint8,
    nearest-neighbour upsampled), with their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    out = []
    for image, label in zip(digits.images[:count], digits.target[:count]):
        pixels = np.rint(image * (255.0 / 16.0)).astype(np.uint8).repeat(4, axis=0).repeat(4, axis=1)
        out.append((np.repeat(pixels[..., None], 3, axis=-1), int(label)))
    return out


def encode(image: np.ndarray, fmt: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **params)
    return buffer.getvalue()


def digit_png(index: int = 0, side: int = 96) -> tuple[bytes, int]:
    """Digit `index` as a PNG of side x side pixels (bigger than the model's input, as a user's file would be)."""
    image, label = digit_images(index + 1)[index]
    return encode(np.asarray(Image.fromarray(image).resize((side, side), Image.Resampling.NEAREST))), label


def truncated_png() -> bytes:
    data = digit_png(0)[0]
    return data[: len(data) // 2]


def png_bomb(side: int = 20_000) -> bytes:
    """A valid 1-bit PNG of side x side black pixels: about 60 KB on disk, 1.2 GB once decoded to RGB."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = b"\0" * (1 + (side + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
