"""The layers: the core library (vla/) never imports the apps that install inside it (vla.serving,
vla.finetune), and no module of the core or an app imports itself back through a circle.

The apps depend on the core, not the other way round: importing the core must not pull in BentoML
or the training stack, and the core must work where only it is needed (a robot, `vla eval`).
Only the commands package (vla/commands/) and the dispatcher vla/cli.py may import the apps: a
command joins a core check with an app's part (the doctor with fine-tuning's memorize-and-replay),
and the dispatcher names the apps' entry points as strings, imported when that subcommand runs.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APPS = ("vla.serving", "vla.finetune")
DISPATCHER = ROOT / "vla" / "cli.py"
COMMANDS = ROOT / "vla" / "commands"
SOURCES = {"vla": ROOT / "vla", "vla.serving": ROOT / "serving", "vla.finetune": ROOT / "finetune"}


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
    core = sorted(p for p in (ROOT / "vla").rglob("*.py") if p != DISPATCHER and COMMANDS not in p.parents)
    assert len(core) > 50
    offenders = {str(p.relative_to(ROOT)): found for p in core if (found := _app_imports(p))}
    assert not offenders, f"the core library imports the apps: {offenders}"


def test_the_dispatcher_names_the_apps_only_as_strings():
    assert not _app_imports(DISPATCHER)
    text = DISPATCHER.read_text()
    assert "vla.commands.finetune:main" in text and "vla.commands.serve:main" in text


def test_the_check_sees_relative_and_function_level_imports():
    source = "def f():\n    from ..serving import client\n    import vla.finetune.runner\n    from . import suite\n"
    names = _imports(source, ("vla", "evaluation"))
    assert {"vla.serving.client", "vla.finetune.runner", "vla.evaluation.suite"} <= set(names)


def _module_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (at module level or inside functions)."""
    files = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            if package == "vla" and any(path.is_relative_to(f) for f in SOURCES.values() if f != folder):
                continue
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            files[name] = path
    graph = {}
    for name, path in files.items():
        package = tuple(name.split(".")) if path.name == "__init__.py" else tuple(name.split(".")[:-1])
        # a module's own parent packages are imported before it anyway: not an edge of a circle
        graph[name] = {n for n in _imports(path.read_text(), package)
                       if n in files and n != name and not name.startswith(n + ".")}
    return graph


# Known circles, each to be broken by a move of its own (docs/architecture.md says which).
KNOWN_CIRCLES = {frozenset({"vla.sim.base", "vla.sim.randomization"})}


def test_no_import_circles():
    graph = _module_graph()
    assert "vla.action_codec" in graph and "vla.finetune.session" in graph and "vla.serving.engine" in graph
    circles = set()
    for start in graph:  # every module that can reach itself: the set of modules on its shortest circle
        seen, frontier, parent = {start}, [start], {}
        while frontier:
            nxt = []
            for m in frontier:
                for n in graph[m]:
                    if n == start:
                        path, k = [m], m
                        while k != start:
                            k = parent[k]
                            path.append(k)
                        circles.add(frozenset(path))
                        nxt = []
                        break
                    if n not in seen:
                        seen.add(n)
                        parent[n] = m
                        nxt.append(n)
                else:
                    continue
                break
            frontier = nxt
    assert circles <= KNOWN_CIRCLES, [sorted(c) for c in circles - KNOWN_CIRCLES]
