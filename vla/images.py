"""The one image decoder: PNG/JPEG bytes, uint8 arrays or PIL images -> (H, W, 3) uint8 RGB.

The policy, the server's wire codecs and the dataset readers all decode through here. The cost of
a decode is bounded from the header *before* pixels are decoded: the format (PNG or JPEG only), the
side length, and for JPEG the number of scans (``probe_image_bytes``). Errors are
``InvalidInputError`` with a code (``invalid_image``, ``image_too_large``, ``image_too_costly``)
naming ``what``.
Only numpy and pillow: robot-side clients import it too.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

from .errors import DatasetError, InvalidInputError

DEFAULT_MAX_IMAGE_SIDE = 2048
IMAGE_FORMATS = ("PNG", "JPEG")
UNLIMITED = 1 << 30
# A JPEG decoder passes over every block of the image once per scan, so scans x pixels is the decode
# cost: thousands of empty scans keep a core busy for seconds to minutes. Encoders write 1 (baseline)
# to about 10 (progressive, libjpeg's default) scans; mozjpeg's tuned progressions stay under 20.
MAX_JPEG_SCANS = 32


def check_side(h: int, w: int, max_side: int, what: str) -> None:
    if h < 1 or w < 1:
        raise InvalidInputError(f"{what}: image has an empty side ({h}x{w})", code="invalid_image")
    if max(h, w) > max_side:
        raise InvalidInputError(
            f"{what}: image is {h}x{w} pixels; this server accepts at most {max_side} pixels per side. "
            "Resize on the robot before sending (the model works at a few hundred pixels anyway).",
            code="image_too_large")


def count_jpeg_scans(data: bytes, stop_after: int = MAX_JPEG_SCANS) -> int:
    """Start-of-scan markers in a JPEG, found by walking its segments (no pixel is decoded).

    Stops counting past ``stop_after``: the caller only needs to know the limit was crossed. Marker
    segments are skipped by their length, entropy-coded data up to the next marker that is neither
    a stuffed 0xFF00 nor a restart marker (an EXIF thumbnail's own scans are not counted).
    """
    scans, i, n = 0, 2, len(data)
    while i + 4 <= n and scans <= stop_after:
        if data[i] != 0xFF:
            break  # corrupt: the decoder will say so
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xD9:  # end of image
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # no length field
            i += 2
            continue
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
        if marker != 0xDA:
            continue
        scans += 1
        while True:  # entropy-coded data
            i = data.find(b"\xff", i)
            if i < 0 or i + 1 >= n:
                return scans
            nxt = data[i + 1]
            if nxt == 0x00 or 0xD0 <= nxt <= 0xD7 or nxt == 0xFF:
                i += 2 if nxt != 0xFF else 1
                continue
            break
    return scans


def probe_image_bytes(data: bytes, max_side: int = DEFAULT_MAX_IMAGE_SIDE, what: str = "image") -> Image.Image:
    """Open PNG/JPEG bytes and bound what decoding them costs, from headers only.

    Returns the lazily opened image (no pixel decoded yet). Refuses other formats, a side over
    ``max_side`` and a JPEG of more than ``MAX_JPEG_SCANS`` scans.
    """
    if not data:
        raise InvalidInputError(f"{what}: empty image bytes; send PNG or JPEG", code="invalid_image")
    try:
        im = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as e:
        raise InvalidInputError(f"{what}: {e}", code="image_too_large") from None
    except Exception as e:  # PIL raises several types for garbage input
        raise InvalidInputError(f"{what}: not a readable PNG or JPEG ({type(e).__name__})", code="invalid_image") from None
    w, h = im.size
    check_side(h, w, max_side, what)
    if im.format == "JPEG" and (scans := count_jpeg_scans(data)) > MAX_JPEG_SCANS:
        raise InvalidInputError(
            f"{what}: the JPEG has more than {MAX_JPEG_SCANS} scans ({scans} counted); this server accepts at most "
            f"{MAX_JPEG_SCANS} per image (encoders write 1 to about 10). Re-encode it as a baseline JPEG or PNG.",
            code="image_too_costly")
    return im


def decode_image_bytes(data: bytes, max_side: int = DEFAULT_MAX_IMAGE_SIDE, what: str = "image") -> np.ndarray:
    """PNG/JPEG bytes -> (H, W, 3) uint8, its cost bounded first (``probe_image_bytes``)."""
    return np.asarray(open_pixels(probe_image_bytes(data, max_side, what), what))


def open_pixels(im: Image.Image, what: str = "image") -> Image.Image:
    """The pixels of an image ``probe_image_bytes`` opened, decoded -> an RGB PIL image.

    The one copy a large frame needs: an RGB image is not converted again, and no array is made
    (the model's processor reads PIL images).
    """
    try:
        im.load()
        return im if im.mode == "RGB" else im.convert("RGB")
    except Exception as e:  # truncated or corrupt pixel data
        raise InvalidInputError(f"{what}: corrupt {im.format} data ({e})", code="invalid_image") from None


def image_from_array(arr: Any, max_side: int = DEFAULT_MAX_IMAGE_SIDE, what: str = "image") -> np.ndarray:
    """A uint8 array -> (H, W, 3): HWC or CHW (openpi's ALOHA convention), grayscale, or RGBA."""
    if not isinstance(arr, np.ndarray):
        raise InvalidInputError(f"{what}: expected an image array, got {type(arr).__name__}", code="invalid_image")
    if arr.dtype != np.uint8:
        raise InvalidInputError(f"{what}: image arrays must be uint8, got {arr.dtype}. Convert first "
                                "(e.g. openpi_client.image_tools.convert_to_uint8).", code="invalid_image")
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] not in (3, 4):
        arr = arr.transpose(1, 2, 0)  # CHW -> HWC
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise InvalidInputError(f"{what}: image array must be (H, W, 3) or (3, H, W), got shape {arr.shape}",
                                code="invalid_image")
    check_side(arr.shape[0], arr.shape[1], max_side, what)
    return np.ascontiguousarray(arr)


def to_rgb_array(image: Any, max_side: int = UNLIMITED, what: str = "image") -> np.ndarray:
    """A PIL image, uint8 array or PNG/JPEG bytes -> (H, W, 3) uint8."""
    if isinstance(image, Image.Image):
        arr = np.asarray(image.convert("RGB"), dtype=np.uint8)
        check_side(arr.shape[0], arr.shape[1], max_side, what)
        return arr
    if isinstance(image, (bytes, bytearray, memoryview)):
        return decode_image_bytes(bytes(image), max_side, what)
    if isinstance(image, np.ndarray):
        return image_from_array(image, max_side, what)
    raise InvalidInputError(f"{what} has type {type(image).__name__}; expected a PIL image, uint8 array or "
                            "PNG/JPEG bytes", code="invalid_image")


def decode_stored_image(data: bytes, what: str) -> np.ndarray:
    """A frame a dataset stores inline (RLDS records, LeRobot "image" features); corrupt -> DatasetError."""
    try:
        return decode_image_bytes(data, UNLIMITED, what)
    except InvalidInputError as e:
        raise DatasetError(f"{e}; the dataset file is corrupt") from e
