"""job/images.py: every common format and mode, at any size and orientation, becomes the model's uint8 (S, S, 3) the
way docs/serving.md states; what cannot be classified is refused in one line. No TensorFlow here."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from job.images import ImageError, TooManyPixelsError, decode
from tests.support.sample_images import encode, png_bomb, truncated_png

SIDE = 32


def _quadrants(side: int = 64) -> np.ndarray:
    """Red top-left, green top-right, blue bottom-left, white bottom-right: orientation is visible after a resize."""
    image = np.zeros((side, side, 3), np.uint8)
    half = side // 2
    image[:half, :half] = (255, 0, 0)
    image[:half, half:] = (0, 255, 0)
    image[half:, :half] = (0, 0, 255)
    image[half:, half:] = (255, 255, 255)
    return image


def _corners(image: np.ndarray) -> list[tuple[int, ...]]:
    return [tuple(int(v) for v in image[y, x]) for y, x in ((2, 2), (2, -3), (-3, 2), (-3, -3))]


QUADRANT_CORNERS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]


@pytest.mark.parametrize("fmt, params", [("PNG", {}), ("JPEG", {"quality": 95}), ("WEBP", {"lossless": True}),
                                         ("BMP", {}), ("TIFF", {}), ("GIF", {})])
def test_every_common_format_decodes_to_the_same_picture(fmt, params):
    out = decode(encode(_quadrants(), fmt, **params), SIDE)
    assert out.shape == (SIDE, SIDE, 3) and out.dtype == np.uint8
    assert np.abs(np.array(_corners(out), int) - np.array(QUADRANT_CORNERS)).max() <= 12, (fmt, _corners(out))


def test_gif_gives_its_first_frame():
    frames = [Image.fromarray(np.full((40, 40, 3), value, np.uint8)) for value in (200, 30, 90)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    assert abs(int(decode(buffer.getvalue(), SIDE).mean()) - 200) <= 2


def test_grayscale_palette_and_16_bit_become_rgb_with_the_right_brightness():
    grey = np.full((50, 50), 100, np.uint8)
    assert (decode(encode(grey), SIDE) == 100).all()  # L
    palette = Image.fromarray(_quadrants()).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG")
    assert _corners(decode(buffer.getvalue(), SIDE)) == QUADRANT_CORNERS
    sixteen = Image.fromarray(np.full((50, 50), 65535 // 2, np.uint16))  # a 16-bit grayscale PNG at half range
    buffer = io.BytesIO()
    sixteen.save(buffer, format="PNG")
    assert abs(int(decode(buffer.getvalue(), SIDE).mean()) - 128) <= 1


def test_transparency_is_composited_on_white():
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., 0] = 255  # red, fully transparent on the left half, opaque on the right
    rgba[:, 20:, 3] = 255
    out = decode(encode(rgba), SIDE)
    assert tuple(out[16, 2]) == (255, 255, 255) and tuple(out[16, -3]) == (255, 0, 0)


def test_exif_orientation_is_honoured():
    """A camera stores the sensor's pixels and says "rotate 90° clockwise to view" in EXIF tag 274 (orientation 6)."""
    stored = np.rot90(_quadrants(), k=1)  # what the sensor saved: the upright picture turned 90° anticlockwise
    exif = Image.Exif()
    exif[274] = 6
    data = encode(stored, "JPEG", quality=95, exif=exif.tobytes())
    out = decode(data, SIDE)
    assert np.abs(np.array(_corners(out), int) - np.array(QUADRANT_CORNERS)).max() <= 12, _corners(out)


def test_a_wide_image_is_centre_cropped_not_squashed():
    wide = np.zeros((60, 180, 3), np.uint8)  # black bands left and right of a centred 60x60 white square
    wide[:, 60:120] = 255
    assert (decode(encode(wide), SIDE) >= 250).all()
    tall = np.zeros((180, 60, 3), np.uint8)
    tall[60:120] = 255
    assert (decode(encode(tall), SIDE) >= 250).all()


def test_the_resize_is_antialiased():
    """A one-pixel checkerboard shrunk 10x is mid-grey when filtered; nearest-neighbour would keep 0s and 255s."""
    board = (np.indices((320, 320)).sum(axis=0) % 2 * 255).astype(np.uint8)
    out = decode(encode(board), SIDE).astype(int)
    assert np.abs(out - 128).max() <= 8, (out.min(), out.max())


def test_an_image_at_the_model_size_is_left_as_it_is():
    pixels = np.random.default_rng(0).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
    assert (decode(encode(pixels), SIDE) == pixels).all()


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b"this is a text file, not an image\n", "not an image"),
    (None, "truncated"),
])
def test_what_is_not_an_image_is_refused_in_one_line(data, message):
    with pytest.raises(ImageError, match=message) as error:
        decode(truncated_png() if data is None else data, SIDE)
    assert "\n" not in str(error.value)


def test_a_decompression_bomb_is_refused_from_its_header_with_its_size_and_the_limit():
    """20,000 x 20,000 pixels (1.2 GB as RGB) in a 49 KB file; and the caller's own limit."""
    with pytest.raises(TooManyPixelsError, match="20000x20000 = 400,000,000 pixels is over the limit of 40,000,000"):
        decode(png_bomb(), SIDE)
    with pytest.raises(TooManyPixelsError, match=r"3000x3000 = 9,000,000 pixels is over the limit of 1,000,000"):
        decode(encode(np.zeros((3000, 3000), np.uint8)), SIDE, max_pixels=1_000_000)
