"""Loaded by schemathesis (its `hooks` setting; tests/integration/test_serve_openapi.py): what an image is, for the
fuzzer.

POST /v1/predict's description says each file part is one of job/serve/app.py IMAGE_MEDIA_TYPES. schemathesis has no
generator for those types of its own (it sends any bytes, or a zip or a PDF, as "binary"), so this registers one per
type: small random pictures of random size and mode, encoded by Pillow in that format. Standard schemathesis
extension point (schemathesis.openapi.media_type), no change to its checks.
"""
from __future__ import annotations

import io

import numpy as np
import schemathesis
from hypothesis import strategies as st
from PIL import Image

_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP", "image/bmp": "BMP",
            "image/gif": "GIF", "image/tiff": "TIFF"}


def _picture(kind: str):
    @st.composite
    def encoded(draw) -> bytes:
        width, height = draw(st.integers(1, 48)), draw(st.integers(1, 48))
        mode = draw(st.sampled_from(["RGB", "L"] if kind == "JPEG" else ["RGB", "L", "RGBA"]))
        seed = draw(st.integers(0, 2**32 - 1))
        channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
        pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels).save(buffer, kind)
        return buffer.getvalue()

    return encoded()


for _media_type, _kind in _FORMATS.items():
    schemathesis.openapi.media_type(_media_type, _picture(_kind))
