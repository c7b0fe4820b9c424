"""Shared test setup: offline, seeded, and one default-backbone build per run."""

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
# The default backbone is built once into the repo's (gitignored) cache and reused by later runs
# (and by subprocesses the tests start, which inherit the variable).
REPO = Path(__file__).resolve().parents[1]
os.environ["VLA_CACHE"] = os.environ.get("VLA_TEST_CACHE") or str(REPO / ".cache" / "vla-test")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def default_backbone_dir() -> Path:
    """The full default backbone (30 layers, 49 image tokens), built at most once per cache."""
    from vla.backbones.default import ensure_default_backbone

    return ensure_default_backbone()


@pytest.fixture(scope="session")
def small_backbone_dir() -> Path:
    """A 2-layer, 16-image-token variant of the default backbone (cheap to load and run)."""
    from vla.backbones.default import ensure_default_backbone

    return ensure_default_backbone(num_layers=2, image_tokens=16)


@pytest.fixture(scope="session")
def default_backbone(default_backbone_dir: Path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import vla.backbones.efficientnet  # noqa: F401  registers the vision tower with the Auto classes

    return (AutoModelForImageTextToText.from_pretrained(default_backbone_dir).eval(),
            AutoProcessor.from_pretrained(default_backbone_dir))
