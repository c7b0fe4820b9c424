"""Files the code reads at run time must ship in the wheel, not only sit in the repository."""

import fnmatch
import tomllib
from pathlib import Path

import pytest

import finetune
import vla
from finetune.model_card import TEMPLATE
from vla.defaults import DEFAULT_POLICY_DIR

ROOT = Path(__file__).resolve().parents[1]


def _package_data() -> dict[str, list[str]]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["setuptools"]["package-data"]


def _ships(path: Path, package) -> bool:
    package_dir = Path(package.__file__).parent
    rel = path.resolve().relative_to(package_dir).as_posix()
    return any(fnmatch.fnmatch(rel, pattern) for pattern in _package_data().get(package.__name__, []))


@pytest.mark.parametrize("path,package", [
    (TEMPLATE, finetune),
    *[(p, vla) for p in sorted(DEFAULT_POLICY_DIR.rglob("*")) if p.is_file()],
], ids=lambda x: x.name if isinstance(x, Path) else x.__name__)
def test_runtime_file_is_package_data(path, package):
    assert path.is_file(), path
    assert _ships(path, package), f"{path} is read at run time but pyproject's package-data does not ship it"


def test_the_check_notices_a_file_outside_package_data():
    assert not _ships(ROOT / "finetune" / "loop.py", finetune)  # .py files ship as modules, not package data
