"""The layers: the core library (vla/) never imports the apps that install inside it (vla.serving,
vla.finetune), an app imports only the core and itself, and no module of the core or an app imports
itself back through a circle.

The apps depend on the core, not the other way round: importing the core must not pull in BentoML
or the training stack, and the core must work where only it is needed (a robot, `vla eval`).
Only the commands package (vla/commands/) and the dispatcher vla/cli.py may import the apps: a
command joins a core check with an app's part (the doctor with fine-tuning's memorize-and-replay),
and the dispatcher names the commands as strings, imported when that subcommand runs. They are also
the only modules that parse command lines (argparse): the library takes plain arguments.
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


def _package(path: Path) -> tuple[str, ...]:
    """The package a source file's relative imports start from (serving/x.py -> vla.serving)."""
    for package, folder in SOURCES.items():
        if package != "vla" and path.is_relative_to(folder):
            return (*package.split("."), *path.relative_to(folder).parts[:-1])
    return path.relative_to(ROOT).parts[:-1]


def _app_imports(path: Path) -> list[str]:
    names = _imports(path.read_text(), _package(path))
    return [n for n in names if any(n == app or n.startswith(app + ".") for app in APPS)]


def _library() -> list[Path]:
    """Every source of the core and the apps but the commands and the dispatcher."""
    return sorted(p for folder in SOURCES.values() for p in folder.rglob("*.py")
                  if p != DISPATCHER and COMMANDS not in p.parents)


def test_no_core_module_imports_an_app():
    core = sorted(p for p in (ROOT / "vla").rglob("*.py") if p != DISPATCHER and COMMANDS not in p.parents)
    assert len(core) > 50
    offenders = {str(p.relative_to(ROOT)): found for p in core if (found := _app_imports(p))}
    assert not offenders, f"the core library imports the apps: {offenders}"


def test_an_app_imports_no_other_app():
    offenders = {}
    for app in APPS:
        for path in SOURCES[app].rglob("*.py"):
            found = [n for n in _app_imports(path) if not (n == app or n.startswith(app + "."))]
            if found:
                offenders[str(path.relative_to(ROOT))] = found
    assert not offenders, f"an app imports another app (only vla/commands/ may join them): {offenders}"


def test_only_the_commands_parse_command_lines():
    library = _library()
    assert len(library) > 80 and ROOT / "finetune" / "export.py" in library
    offenders = [str(p.relative_to(ROOT)) for p in library
                 if any(n == "argparse" or n.startswith("argparse.") for n in _imports(p.read_text(), _package(p)))]
    assert not offenders, f"argparse outside vla/commands/ and vla/cli.py (move the parser to a command): {offenders}"


def test_the_dispatcher_names_the_commands_only_as_strings():
    tree = ast.parse(DISPATCHER.read_text())
    assert not _app_imports(DISPATCHER)
    imported = {n for n in _imports(DISPATCHER.read_text(), ("vla",)) if n.startswith("vla.")}
    assert imported <= {"vla.commands", "vla.commands._help"}, imported
    table = next(node.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
                 and any(isinstance(t, ast.Name) and t.id == "COMMANDS" for t in node.targets))
    targets = {name: target for name, (target, _) in ast.literal_eval(table).items()}
    assert {"data", "eval", "finetune", "serve", "export", "improve", "doctor", "tokenizer"} <= set(targets)
    for name, target in targets.items():
        module, func = target.split(":")
        assert module.startswith("vla.commands."), (name, target)
        path = COMMANDS / (module.removeprefix("vla.commands.") + ".py")
        functions = {n.name for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef)}
        assert func in functions, (name, target)


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
