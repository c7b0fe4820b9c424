"""Decode the encoded (PNG/JPEG) frames that datasets store inline (RLDS records, LeRobot "image" features)."""

from __future__ import annotations

import io

import numpy as np

from ..errors import DatasetError


def decode_image(data: bytes, what: str) -> np.ndarray:
    """Encoded image bytes -> (H, W, 3) uint8; undecodable bytes raise DatasetError naming ``what``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise DatasetError(f"{what}: cannot decode the image bytes ({e}); the dataset file is corrupt") from e
