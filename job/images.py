"""Any image file -> the model's input: uint8 (H, W, 3) at the size the run was trained on.

The recipe (docs/serving.md, "What predict does to an image"): decode with Pillow (PNG, JPEG, WebP, BMP, TIFF, the first
frame of a GIF or an animated WebP), turn it as its EXIF orientation says, bring every mode to 8-bit RGB (16-bit and
32-bit grayscale scaled from their full range, palette and transparency composited on white), crop the centre square,
and resize it to the model's side with Pillow's antialiased Lanczos filter. CIFAR's images are whole objects, roughly
centred, in a square frame; a centre crop keeps the aspect ratio the model saw, where squashing would not.

The pixel count is checked from the header, before anything is decoded, so a small file that claims 20,000 x 20,000
pixels (a decompression bomb) is refused without allocating its 1.2 GB. That check, with the caller's limit, replaces
Pillow's process-wide guard (MAX_IMAGE_PIXELS, switched off on import), which would refuse above its own fixed limit
with a message that does not give the image's size.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 40_000_000  # a 40-megapixel photo; larger is refused (the decoded RGB alone would be 120 MB)
_WHITE = (255, 255, 255)
Image.MAX_IMAGE_PIXELS = None  # open_rgb checks every image's pixel count itself (see above)


class ImageError(ValueError):
    """A file that cannot be classified: not an image, truncated, or too large. The message is one line."""


class TooManyPixelsError(ImageError):
    """An image whose header claims more pixels than the limit (the server answers 413 to it, not 422)."""


def decode(data: bytes, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """`data` (an image file's bytes) as uint8 (size, size, 3), by the recipe in this module's docstring."""
    return to_model_input(open_rgb(data, max_pixels), size)


def open_rgb(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The file's first frame, upright, as an 8-bit RGB image of its own size."""
    if not data:
        raise ImageError("the file is empty")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError("not an image Pillow can read (PNG, JPEG, WebP, BMP, GIF, TIFF)") from None
    except (OSError, ValueError) as e:  # a header Pillow starts on and cannot finish
        raise ImageError(f"not a readable image ({e})") from None
    width, height = image.size
    if width * height > max_pixels:
        raise TooManyPixelsError(f"{width}x{height} = {width * height:,} pixels is over the limit of {max_pixels:,}; "
                                 "scale it down first")
    try:
        image.seek(0)  # the first frame of an animation
        image.load()
        return _to_rgb(ImageOps.exif_transpose(image))
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        # Pillow reports a cut-off file as OSError("image file is truncated ...") or a broken chunk
        raise ImageError(f"{image.format or 'the'} file is truncated or corrupt ({_first_line(e)})") from None


def to_model_input(image: Image.Image, size: int) -> np.ndarray:
    """Centre square of an RGB image, resized to size x size (antialiased), as uint8 (size, size, 3)."""
    square = centre_square(image)
    if square.size != (size, size):
        square = square.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return np.asarray(square, np.uint8)


def centre_square(image: Image.Image) -> Image.Image:
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side))


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_wide_to_uint8(np.asarray(image), mode), "L").convert("RGB")
    if mode in ("PA", "LA", "La", "RGBA", "RGBa") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _wide_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """16-bit grayscale (Pillow's I;16 modes, and mode I from a 16-bit PNG) spans 0..65535; float images and integers
    outside that range have no fixed range, so they are scaled from their own minimum and maximum."""
    values = values.astype(np.float64)
    low, high = float(values.min(initial=0.0)), float(values.max(initial=0.0))
    if mode != "F" and low >= 0 and high <= 65535:
        low, high = 0.0, 65535.0
    scaled = (values - low) / max(high - low, 1e-12) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _first_line(error: BaseException) -> str:
    from job.errors import first_line

    return first_line(error)
