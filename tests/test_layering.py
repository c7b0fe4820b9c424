"""The core library (vla/) never imports the apps that install inside it (vla.serving, vla.finetune).

The apps depend on the core, not the other way round: importing the core must not pull in BentoML
or the training stack, and the core must work where only it is needed (a robot, `vla eval`).
The one exception is the command-line dispatcher vla/cli.py: `vla serve`, `vla finetune` and
`vla export` are implemented by the apps, and the dispatcher names their entry points as strings,
imported only when that subcommand runs.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APPS = ("vla.serving", "vla.finetune")
DISPATCHER = ROOT / "vla" / "cli.py"


def _imports(source: str, package: tuple[str, ...]) -> list[str]:
    """Absolute names of the modules a source imports, anywhere in it (relative imports resolved)."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            names += [module] + [f"{module}.{a.name}" for a in node.names]
    return names


def _app_imports(path: Path) -> list[str]:
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    names = _imports(path.read_text(), package)
    return [n for n in names if any(n == app or n.startswith(app + ".") for app in APPS)]


def test_no_core_module_imports_an_app():
    core = sorted(p for p in (ROOT / "vla").rglob("*.py") if p != DISPATCHER)
    assert len(core) > 50
    offenders = {str(p.relative_to(ROOT)): found for p in core if (found := _app_imports(p))}
    assert not offenders, f"the core library imports the apps: {offenders}"


def test_the_dispatcher_names_the_apps_only_as_strings():
    assert not _app_imports(DISPATCHER)
    text = DISPATCHER.read_text()
    assert "vla.finetune.cli:main" in text and "vla.serving.cli:serve_main" in text


def test_the_check_sees_relative_and_function_level_imports():
    source = "def f():\n    from ..serving import client\n    import vla.finetune.runner\n    from . import suite\n"
    names = _imports(source, ("vla", "evaluation"))
    assert {"vla.serving.client", "vla.finetune.runner", "vla.evaluation.suite"} <= set(names)
