"""Shared test setup: offline, seeded, and one default-backbone build per run."""

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
# The default backbone is built once into the repo's (gitignored) cache and reused by later runs.
os.environ.setdefault("VLA_CACHE", str(Path(__file__).resolve().parents[1] / ".cache" / "vla"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    np.random.seed(0)
    torch.manual_seed(0)
