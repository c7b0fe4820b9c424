"""What `pip install` puts into site-packages: one `vla` package (the apps inside it as vla.serving
and vla.finetune) with every file the code reads at run time."""

import fnmatch
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import vla
import vla.finetune as finetune
from vla.defaults import DEFAULT_POLICY_DIR
from vla.finetune.model_card import TEMPLATE

ROOT = Path(__file__).resolve().parents[1]
APPS = {"vla.serving": "serving", "vla.finetune": "finetune"}


def _setuptools() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["setuptools"]


def _package_data() -> dict[str, list[str]]:
    return _setuptools()["package-data"]


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
    assert not _ships(ROOT / "finetune" / "runner.py", finetune)  # .py files ship as modules, not package data


def test_every_package_folder_is_listed_and_the_apps_map_into_vla():
    config = _setuptools()
    assert config["package-dir"] == APPS
    folders = {"vla": "vla", **APPS}
    found = set()
    for name, folder in folders.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([name, *rel.parts]))
    assert found == set(config["packages"]), "list these package folders in pyproject's [tool.setuptools] packages"


def _run(code: str, cwd: Path, pythonpath: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


IMPORTS = ("import importlib.util, vla.serving, vla.finetune, vla.finetune.config; "
           "print(vla.serving.__file__); print(vla.finetune.__file__); "
           "print(importlib.util.find_spec('serving'), importlib.util.find_spec('finetune'))")


def test_the_editable_install_maps_the_apps_from_any_directory(tmp_path):
    out = _run(IMPORTS, cwd=tmp_path)  # not the repository root: the install's finder, not the cwd, finds them
    assert out.returncode == 0, out.stderr
    serving_file, finetune_file, top = out.stdout.splitlines()
    assert Path(serving_file) == ROOT / "serving" / "__init__.py"
    assert Path(finetune_file) == ROOT / "finetune" / "__init__.py"
    assert top == "None None", "serving/finetune must not import as top-level modules"


def test_the_wheel_holds_one_top_level_package(vla_wheel, tmp_path):
    wheel = vla_wheel
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        top_level = z.read(next(n for n in names if n.endswith(".dist-info/top_level.txt"))).decode().split()
    assert {n.split("/")[0] for n in names} == {"vla", wheel.name.split("-py3")[0] + ".dist-info"}
    assert top_level == ["vla"]
    for module in ("vla/serving/service.py", "vla/client/http.py", "vla/finetune/runner.py", "vla/commands/serve.py",
                   "vla/finetune/model_card_template.md", "vla/default_policy/vla_config.json"):
        assert module in names, module

    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    out = _run(IMPORTS, cwd=tmp_path, pythonpath=str(site))  # the unpacked wheel shadows the editable install
    assert out.returncode == 0, out.stderr
    serving_file, finetune_file, top = out.stdout.splitlines()
    assert Path(serving_file) == site / "vla" / "serving" / "__init__.py"
    assert Path(finetune_file) == site / "vla" / "finetune" / "__init__.py"
    assert top == "None None"
