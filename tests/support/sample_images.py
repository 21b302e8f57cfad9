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
    row = b"\0" * (1 + (side + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def rgb_png_bomb(side: int = 30_000) -> bytes:
    """A valid 8-bit RGB PNG of side x side black pixels: 2.6 MB on disk, 2.7 GB of pixel rows once inflated (Pillow
    keeps RGB at 4 bytes a pixel: 3.6 GB). Made in 0.1 s: every 100 rows (all zero bytes, filter bytes included)
    deflate to the same bytes after a full flush, so one piece is compressed and repeated."""
    rows_per_piece = 100
    assert side % rows_per_piece == 0
    row = 1 + 3 * side  # filter byte 0 + RGB
    zeros = bytes(row * rows_per_piece)
    compressor = zlib.compressobj(9)
    first = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)  # with the zlib header
    piece = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    total = row * side
    adler32 = ((total % 65521) << 16) | 1  # of `total` zero bytes: a stays 1, b adds 1 per byte
    idat = first + piece * (side // rows_per_piece - 1) + b"\x03\x00" + struct.pack(">I", adler32)  # empty final block
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
