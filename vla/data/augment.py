"""Image augmentation for robot learning, in numpy + Pillow (no torchvision).

Mild random resized crop (the robot and the scene must stay in view) and colour
jitter (brightness, contrast, saturation, hue), as used by OpenVLA/Octo-style
training. Seeded by a key (e.g. (epoch, sample index)) so that results do not
depend on DataLoader worker scheduling; ``eval()`` turns it into the identity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..errors import ConfigError

# ITU-R 601 luma weights, as PIL's convert("L") uses.
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@dataclass
class Augment:
    """Seeded image augmentation; output images keep their input size and dtype (uint8 HWC)."""

    crop_scale: tuple[float, float] = (0.9, 1.0)  # kept area fraction
    crop_ratio: tuple[float, float] = (0.95, 1.05)  # aspect-ratio change of the crop
    brightness: float = 0.2  # factor in [1 - b, 1 + b]
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.05  # shift in [-h, h] of a full turn (max 0.5)
    seed: int = 0
    training: bool = True

    def __post_init__(self) -> None:
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ConfigError(f"crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ConfigError(f"crop_ratio must satisfy 0 < min <= max, got {self.crop_ratio}")
        for k in ("brightness", "contrast", "saturation"):
            if not 0 <= getattr(self, k) < 1:
                raise ConfigError(f"{k} must be in [0, 1), got {getattr(self, k)}")
        if not 0 <= self.hue <= 0.5:
            raise ConfigError(f"hue must be in [0, 0.5], got {self.hue}")

    def train(self, mode: bool = True) -> "Augment":
        self.training = mode
        return self

    def eval(self) -> "Augment":
        return self.train(False)

    def rng(self, key) -> np.random.Generator:
        key = key if isinstance(key, (tuple, list)) else (key,)
        return np.random.default_rng([self.seed, *[int(k) for k in key]])

    def __call__(self, images: list[np.ndarray], key=0) -> list[np.ndarray]:
        """Augment each camera image independently; the same key gives the same result."""
        if not self.training:
            return images
        rng = self.rng(key)
        return [self._one(img, rng) for img in images]

    def _one(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = img.shape[:2]
        pil = Image.fromarray(img)
        # Random resized crop: area fraction and aspect ratio (log-uniform), then back to (h, w).
        area = rng.uniform(*self.crop_scale) * h * w
        ratio = math.exp(rng.uniform(math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1])))
        cw = int(round(min(w, math.sqrt(area * ratio))))
        ch = int(round(min(h, math.sqrt(area / ratio))))
        x0 = int(rng.integers(0, w - cw + 1))
        y0 = int(rng.integers(0, h - ch + 1))
        if (cw, ch) != (w, h):
            pil = pil.resize((w, h), Image.Resampling.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
        # Colour jitter in a fixed order: brightness, contrast, saturation (float), then hue (HSV).
        x = np.asarray(pil, dtype=np.float32)
        b = rng.uniform(1 - self.brightness, 1 + self.brightness)
        c = rng.uniform(1 - self.contrast, 1 + self.contrast)
        s = rng.uniform(1 - self.saturation, 1 + self.saturation)
        hshift = rng.uniform(-self.hue, self.hue)
        x = np.clip(x * b, 0, 255)
        gray = x @ _LUMA
        x = np.clip(gray.mean() + (x - gray.mean()) * c, 0, 255)
        gray = (x @ _LUMA)[..., None]
        x = np.clip(gray + (x - gray) * s, 0, 255)
        out = x.round().astype(np.uint8)
        if hshift:
            hsv = np.array(Image.fromarray(out).convert("HSV"))
            hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(round(hshift * 256))) % 256
            out = np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))
        return out
