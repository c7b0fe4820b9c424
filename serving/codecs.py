"""Server-side wire decoding: untrusted request bodies -> arrays, with limits; refusals are BadRequest (400/413).

The forms are the ones vla/client/codecs.py encodes: images (PNG/JPEG bytes, base64 strings,
optionally a ``data:`` URL, or a raw uint8 array), openpi's msgpack-numpy and OpenVLA's json-numpy.
Images are first *probed* (``probe_image``: format, side and JPEG scan count from the headers,
which bounds what decoding them costs) and decoded later, when the model is about to use them
(``PendingImage.decode``), by the library's one image decoder (vla/images.py) to a C-contiguous
``(H, W, 3)`` uint8 array.

No decoder here ever unpickles: arrays are rebuilt with ``np.frombuffer`` from plain numeric
dtypes only (bool, ints, floats); object, void, structured and datetime dtypes are refused.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import math
from typing import Any

import msgpack
import numpy as np
from PIL import Image

from vla import images
from vla.client.codecs import NUMERIC_KINDS
from vla.errors import InvalidInputError
from vla.images import DEFAULT_MAX_IMAGE_SIDE

ACCEPTED_IMAGES = (
    "PNG or JPEG bytes (multipart file part), a base64 string of PNG/JPEG bytes "
    "(a 'data:image/...;base64,' prefix is allowed), or a raw array "
    '{"dtype": "uint8", "shape": [H, W, 3], "data": "<base64 of H*W*3 bytes>"}'
)


class BadRequest(InvalidInputError):
    """A request the server refuses; carries the HTTP status and a short machine-readable code."""

    def __init__(self, code: str, detail: str, status: int = 400):
        self.code, self.detail, self.status = code, detail, status
        super().__init__(f"{code}: {detail}")

    def to_dict(self) -> dict[str, str]:
        return {"error": self.code, "detail": self.detail}


# ----------------------------------------------------------------------------------- images
def _wire(decode):
    """The library's image decoder, with its errors as HTTP answers (413 for too large, else 400)."""

    @functools.wraps(decode)
    def wrapper(*args, **kwargs):
        try:
            return decode(*args, **kwargs)
        except BadRequest:
            raise
        except InvalidInputError as e:
            status = 413 if e.code in ("image_too_large", "image_too_costly") else 400
            hint = "" if status == 413 else f". Accepted: {ACCEPTED_IMAGES}"
            raise BadRequest(e.code, f"{e}{hint}", status=status) from None

    return wrapper


decode_image_bytes = _wire(images.decode_image_bytes)
probe_image_bytes = _wire(images.probe_image_bytes)
open_pixels = _wire(images.open_pixels)
image_from_array = _wire(images.image_from_array)
_check_side = _wire(images.check_side)


def b64decode(s: str, what: str) -> bytes:
    """Strict base64 (standard alphabet), tolerating a ``data:...;base64,`` prefix and whitespace."""
    if not isinstance(s, str):
        raise BadRequest("invalid_base64", f"{what}: expected a base64 string, got {type(s).__name__}")
    if s.startswith("data:"):
        s = s.partition(",")[2]
    try:
        return base64.b64decode("".join(s.split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadRequest("invalid_base64", f"{what}: not valid base64 ({e}). Accepted: {ACCEPTED_IMAGES}") from None


def decode_raw_array(obj: dict, max_side: int = DEFAULT_MAX_IMAGE_SIDE, what: str = "image") -> np.ndarray:
    """``{"dtype": "uint8", "shape": [H, W, 3], "data": base64}`` -> (H, W, 3) uint8."""
    extra = set(obj) - {"dtype", "shape", "data"}
    missing = {"dtype", "shape", "data"} - set(obj)
    if extra or missing:
        raise BadRequest(
            "invalid_image",
            f"{what}: a raw image needs exactly the keys dtype, shape, data "
            f"(missing {sorted(missing)}, unexpected {sorted(extra)}). Accepted: {ACCEPTED_IMAGES}",
        )
    if obj["dtype"] not in ("uint8", "|u1", "u1", "B"):
        raise BadRequest("invalid_image", f"{what}: raw image dtype must be 'uint8', got {obj['dtype']!r}")
    shape = obj["shape"]
    if not (isinstance(shape, list) and len(shape) == 3 and all(type(v) is int for v in shape) and shape[2] == 3):
        raise BadRequest("invalid_image", f"{what}: raw image shape must be [H, W, 3] integers, got {shape!r}")
    _check_side(shape[0], shape[1], max_side, what)
    data = b64decode(obj["data"], what)
    expected = shape[0] * shape[1] * 3
    if len(data) != expected:
        raise BadRequest(
            "invalid_image", f"{what}: raw data has {len(data)} bytes, shape {shape} needs {expected} (uint8, C order)"
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


class PendingImage:
    """An image whose decoding cost is known and bounded (header probed), its pixels not yet decoded."""

    def __init__(self, source: Any, height: int, width: int, what: str):
        self._source, self.height, self.width, self.what = source, height, width, what

    @property
    def pixels(self) -> int:
        return self.height * self.width

    def decode(self) -> np.ndarray | Image.Image:
        """The pixels: a raw (H, W, 3) uint8 array as sent, else an RGB PIL image (no array copy of a
        large frame; the model's processor reads PIL). The encoded bytes are released once decoded."""
        if isinstance(self._source, np.ndarray):
            return self._source
        im, self._source = open_pixels(self._source, self.what), None
        return im


def probe_image(obj: Any, max_side: int = DEFAULT_MAX_IMAGE_SIDE, what: str = "image") -> PendingImage:
    """Any accepted wire form of one image -> a PendingImage, its cost checked from headers only.

    Raw arrays cost a copy at most, so they are taken as they are; PNG/JPEG is opened lazily.
    """
    if isinstance(obj, (dict, np.ndarray)):
        arr = decode_image(obj, max_side, what)
        return PendingImage(arr, arr.shape[0], arr.shape[1], what)
    if isinstance(obj, str):
        obj = b64decode(obj, what)
    if not isinstance(obj, (bytes, bytearray, memoryview)):
        decode_image(obj, max_side, what)  # raises with the accepted forms
    im = probe_image_bytes(bytes(obj), max_side, what)
    return PendingImage(im, im.size[1], im.size[0], what)


def decode_image(obj: Any, max_side: int = DEFAULT_MAX_IMAGE_SIDE, what: str = "image") -> np.ndarray:
    """Any accepted wire form of one image -> (H, W, 3) uint8."""
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return decode_image_bytes(bytes(obj), max_side, what)
    if isinstance(obj, str):
        return decode_image_bytes(b64decode(obj, what), max_side, what)
    if isinstance(obj, dict):
        return decode_raw_array(obj, max_side, what)
    if isinstance(obj, np.ndarray):
        return image_from_array(obj, max_side, what)
    raise BadRequest("invalid_image", f"{what}: unsupported image value of type {type(obj).__name__}. Accepted: {ACCEPTED_IMAGES}")


# ------------------------------------------------------------------------- numeric arrays
def _array_from_parts(data: Any, dtype: Any, shape: Any, what: str) -> np.ndarray:
    """Rebuild an array from buffer + dtype string + shape, refusing anything but plain numbers."""
    if not isinstance(dtype, str):
        raise BadRequest("invalid_array", f"{what}: dtype must be a string like '<f4', got {type(dtype).__name__}")
    try:
        dt = np.dtype(dtype)
    except (TypeError, ValueError):
        raise BadRequest("invalid_array", f"{what}: unknown dtype {dtype!r}") from None
    if dt.kind not in NUMERIC_KINDS or dt.fields is not None or dt.subdtype is not None:
        raise BadRequest("invalid_array", f"{what}: dtype {dtype!r} is not allowed; use bool, int, uint or float")
    if not isinstance(shape, (list, tuple)) or not all(type(v) is int and v >= 0 for v in shape) or len(shape) > 8:
        raise BadRequest("invalid_array", f"{what}: shape must be a list of at most 8 non-negative ints, got {shape!r}")
    if not isinstance(data, (bytes, bytearray)):
        raise BadRequest("invalid_array", f"{what}: array data must be bytes")
    n = math.prod(shape)  # Python ints: a shape like [10**20] cannot overflow
    if n * dt.itemsize != len(data):
        raise BadRequest(
            "invalid_array", f"{what}: {len(data)} data bytes do not match shape {list(shape)} of dtype {dt.str}"
        )
    return np.frombuffer(bytes(data), dtype=dt).reshape(shape)


# msgpack-numpy (openpi) -----------------------------------------------------------------
def _msgpack_hook(obj: dict) -> Any:
    if b"__ndarray__" in obj or "__ndarray__" in obj:
        get = (lambda k: obj.get(k.encode(), obj.get(k)))  # openpi uses bytes keys
        return _array_from_parts(get("data"), get("dtype"), get("shape"), "msgpack array")
    if b"__npgeneric__" in obj or "__npgeneric__" in obj:
        get = (lambda k: obj.get(k.encode(), obj.get(k)))
        arr = _array_from_parts(b"", get("dtype"), [0], "msgpack scalar")
        try:
            return arr.dtype.type(get("data"))
        except (TypeError, ValueError, OverflowError):
            raise BadRequest("invalid_array", "msgpack scalar: value does not fit its dtype") from None
    return obj


def msgpack_unpack(data: bytes, max_bytes: int = 64 << 20) -> Any:
    """Unpack untrusted msgpack (openpi layout for arrays), with size limits; raises BadRequest."""
    if len(data) > max_bytes:
        raise BadRequest("payload_too_large", f"message is {len(data)} bytes; the limit is {max_bytes}", status=413)
    try:
        return msgpack.unpackb(
            data, object_hook=_msgpack_hook, raw=False, strict_map_key=False,
            max_str_len=1 << 20, max_array_len=1 << 16, max_map_len=1 << 12,
            max_ext_len=0,
        )
    except BadRequest:
        raise
    except Exception as e:  # ExtraData, FormatError, StackError, ValueError, UnicodeDecodeError...
        raise BadRequest(
            "invalid_msgpack", f"cannot decode the msgpack message ({type(e).__name__}: {e}). "
            "Send one msgpack map per frame, arrays in openpi's msgpack_numpy layout.",
        ) from None


# json-numpy (OpenVLA) ---------------------------------------------------------------------
def json_numpy_hook(dct: dict) -> Any:
    """``json.loads(object_hook=...)``: json-numpy dicts -> arrays (plain numeric dtypes only)."""
    if "__numpy__" in dct:
        data = b64decode(dct["__numpy__"], "json-numpy array")
        shape = dct.get("shape")
        arr = _array_from_parts(data, dct.get("dtype"), list(shape) if shape else [], "json-numpy array")
        return arr if shape else arr.reshape(-1)[0] if arr.size else arr
    return dct


def json_loads(data: bytes | str, numpy: bool = False) -> Any:
    """Parse an untrusted JSON body; raises BadRequest naming what was wrong."""
    try:
        return json.loads(data, object_hook=json_numpy_hook if numpy else None)
    except BadRequest:
        raise
    except (ValueError, RecursionError) as e:
        raise BadRequest("invalid_json", f"the request body is not valid JSON ({e})") from None
