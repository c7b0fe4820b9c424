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


# Longest files first: `make test` runs two processes a file at a time (pytest-xdist --dist loadfile),
# and a long file that starts last would run alone at the end.
SLOW_FIRST = ("test_readme.py", "test_evaluation.py", "test_serving_hardening.py", "test_serving_fairness.py",
              "test_doctor.py", "test_finetune.py", "test_default_backbone.py", "test_sim.py", "test_policy.py",
              "test_serving_server.py", "test_checkpoint_integrity.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))  # stable: the rest keep their order


def _shared_root(config) -> Path:
    """The temp folder every process of this run sees: the xdist controller's basetemp (workers get subfolders)."""
    base = config._tmp_path_factory.getbasetemp()
    return base.parent if hasattr(config, "workerinput") else base


@pytest.fixture(scope="session")
def default_server(request) -> str:
    """URL of a `vla serve` of the shipped default policy: one server for the whole run, all workers."""
    from servers import SharedServer

    return SharedServer(_shared_root(request.config)).url()  # stopped by pytest_sessionfinish


def pytest_sessionfinish(session):
    if not hasattr(session.config, "workerinput"):  # the xdist controller (or a plain run): after every worker
        from servers import SharedServer

        SharedServer(_shared_root(session.config)).stop()


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


@pytest.fixture(scope="session")
def vla_wheel(tmp_path_factory) -> Path:
    """This project's wheel, built once from a copy of the sources (the build writes nothing into the repo)."""
    import shutil
    import subprocess
    import sys

    tmp = tmp_path_factory.mktemp("wheel")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("vla", "serving", "finetune"):
        shutil.copytree(REPO / name, tmp / "src" / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, tmp / "src" / name)
    code = f"from setuptools import build_meta; print(build_meta.build_wheel({str(tmp / 'dist')!r}))"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp / "src", capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return tmp / "dist" / out.stdout.strip().splitlines()[-1]
