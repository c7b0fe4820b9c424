"""Wire encoders: what a robot sends and what the server answers (numpy, pillow, msgpack only).

The decoding half, which reads untrusted input with size limits and answers 400/413, is the
server's (serving/codecs.py). Both halves agree on these forms:

- Images: PNG/JPEG bytes, base64 strings, or a raw uint8 array
  ``{"dtype": "uint8", "shape": [H, W, 3], "data": <base64>}``.
- msgpack-numpy, byte-compatible with ``openpi_client.msgpack_numpy``:
  ``{b"__ndarray__": True, b"data": bytes, b"dtype": str, b"shape": list}``.
- json-numpy, compatible with the ``json_numpy`` package that OpenVLA's ``deploy.py`` uses:
  ``{"__numpy__": <base64>, "dtype": "<f4", "shape": [...]}``.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import msgpack
import numpy as np
from PIL import Image as PILImage

from vla import images

NUMERIC_KINDS = "biuf"  # bool, signed, unsigned, float: the only dtypes sent or rebuilt


# ----------------------------------------------------------------------------------- images
def to_uint8_rgb(img: Any) -> np.ndarray:
    """PIL image / uint8 array / PNG-JPEG bytes -> (H, W, 3) uint8 (no size limit)."""
    return images.to_rgb_array(img if isinstance(img, (PILImage.Image, bytes, bytearray)) else np.asarray(img))


def encode_image(img: Any, encoding: str = "jpeg", quality: int = 90) -> bytes | np.ndarray:
    """One image -> PNG/JPEG bytes (``"png"``/``"jpeg"``) or a uint8 array (``"raw"``).

    PNG/JPEG bytes given with the matching encoding are passed through untouched.
    """
    if encoding == "raw":
        return np.ascontiguousarray(to_uint8_rgb(img))
    if encoding not in ("png", "jpeg"):
        raise ValueError(f"unknown image encoding {encoding!r}; choose 'jpeg', 'png' or 'raw'")
    if isinstance(img, (bytes, bytearray)):
        magic_png = bytes(img[:4]) == b"\x89PNG"
        if (encoding == "png") == magic_png:
            return bytes(img)
    buf = io.BytesIO()
    pil = PILImage.fromarray(to_uint8_rgb(img))
    if encoding == "png":
        pil.save(buf, format="PNG", compress_level=1)  # level 1: ~5x faster, a little larger
    else:
        pil.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def image_to_json(img: Any, encoding: str = "jpeg", quality: int = 90) -> str | dict:
    """One image -> its JSON form (base64 string, or a raw-array dict)."""
    enc = encode_image(img, encoding, quality)
    if isinstance(enc, np.ndarray):
        return {"dtype": "uint8", "shape": list(enc.shape), "data": base64.b64encode(enc.tobytes()).decode()}
    return base64.b64encode(enc).decode()


# ------------------------------------------------------------------------- numeric arrays
def _msgpack_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in NUMERIC_KINDS:
            raise TypeError(f"cannot send arrays of dtype {obj.dtype}")
        return {b"__ndarray__": True, b"data": np.ascontiguousarray(obj).tobytes(), b"dtype": obj.dtype.str, b"shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot msgpack an object of type {type(obj).__name__}")


def msgpack_pack(obj: Any) -> bytes:
    """Pack with numpy arrays in openpi's msgpack-numpy layout."""
    return msgpack.packb(obj, default=_msgpack_default, use_bin_type=True)


def json_numpy_default(obj: Any) -> Any:
    """``json.dumps(default=...)``: arrays -> json-numpy dicts (what ``json_numpy.patch()`` clients decode)."""
    if isinstance(obj, (np.ndarray, np.generic)):
        a = np.ascontiguousarray(obj)
        return {"__numpy__": base64.b64encode(a.tobytes()).decode(), "dtype": a.dtype.str, "shape": list(a.shape)}
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")
