"""Tiny policies for tests, examples and benchmarks (random weights, real code paths)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .action_tokenizers import make_action_tokenizer
from .backbones.tiny import build_tiny_vlm
from .embodiment import Embodiment
from .normalize import Stats


def tiny_embodiments() -> list[Embodiment]:
    """Two robots with different action spaces, cameras and statistics."""
    rng = np.random.default_rng(0)
    arm = rng.normal(0, [0.5, 0.5, 0.5, 1.0], size=(256, 4))
    biarm = rng.normal(0, 0.3, size=(256, 14))
    return [
        Embodiment("sawyer", ["dx", "dy", "dz", "grip"], control_hz=10, chunk_size=4,
                   cameras=["observation.images.corner"], state_names=[f"q{i}" for i in range(4)],
                   unnormalized=[False, False, False, True], action_stats=Stats.from_array(arm),
                   state_stats=Stats.from_array(arm), image_size=(32, 32)),
        Embodiment("aloha", [f"joint_{i}" for i in range(14)], control_hz=50, chunk_size=2,
                   cameras=["observation.images.top", "observation.images.wrist"],
                   action_stats=Stats.from_array(biarm), image_size=(32, 32)),
    ]


def make_tiny_policy(family: str = "llava", *, kind: str = "bins", decoding: str = "autoregressive",
                     action_token_mode: str = "new", use_state: bool = False, seed: int = 0, **tokenizer_options):
    """A randomly initialised policy on a tiny VLM of ``family``."""
    from .policy import VLAPolicy

    tokenizer = make_action_tokenizer(kind, **({"bins": 32} if kind == "bins" else {}) | tokenizer_options)
    return VLAPolicy.from_backbone(build_tiny_vlm(family, seed), tiny_embodiments(), tokenizer,
                                   action_token_mode=action_token_mode, decoding=decoding, use_state=use_state,
                                   seed=seed)


def make_tiny_checkpoint(out_dir: str | Path, family: str = "llava", **options) -> Path:
    """Save a tiny policy as a checkpoint directory and return its path."""
    return make_tiny_policy(family, **options).save_pretrained(out_dir)


def scan_heavy_jpeg(side: int = 2048, extra_scans: int = 1000) -> bytes:
    """A grey progressive JPEG with ``extra_scans`` empty scans appended: a few tens of KB that cost
    libjpeg a pass over every block per scan (~7 ms per scan at 2048x2048), i.e. seconds of CPU.

    The attack image of the server's decode-cost bound (``vla.images.MAX_JPEG_SCANS``).
    """
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((side, side, 3), 128, np.uint8)).save(buf, "JPEG", progressive=True, quality=90)
    data = buf.getvalue()
    start = data.rindex(b"\xff\xda")  # the last scan (an AC refinement): repeating it changes nothing
    end = len(data) - 2  # before the end-of-image marker
    return data[:end] + data[start:end] * extra_scans + data[end:]
