"""The layout a contributor relies on: who may import whom (docs/architecture.md's layers), one module that names
the run folder's files, modules of a readable size, and strategies that use other modules' public names."""

import ast
import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lt_plugin"

# docs/architecture.md's layers: a module imports (at its top or inside a function) only modules of lower layers.
LAYERS = [
    ["errors", "_version", "loaders", "layout", "networks.base"],
    ["options", "recipes", "store", "deploy", "networks.lth", "networks.cifar", "stats", "schedules",
     "pruner_arguments", "commands", "strategies", "branches"],
    ["masks", "report", "networks", "model_checks", "acceptance", "data.transforms", "data.idx", "model_card"],
    ["callbacks", "structure", "pooling", "train.config", "train.evaluation", "data.sources", "data.images",
     "sparsity"],
    ["levels", "early_bird_rule", "train.checkpoint", "train.batches", "data.streaming", "", "train", "data", "pai"],
    ["train.loop", "data.splits", "tickets", "run_folder", "gradual", "early_bird_pruner", "swa", "denoisers"],
    ["data.load", "pruners", "pipeline", "experiment", "corruptions"],
    ["check", "scoring", "strategies.base", "replicates"],
    ["strategies.registry"],
    ["strategies.imp", "strategies.early_bird", "strategies.soups", "strategies.baselines"],
    ["strategies.swamp", "strategies.instant_soup"],
    ["branches.base"],
    ["branches.lottery_pools", "branches.instability", "branches.controls", "branches.export", "compare"],
    ["cli", "__main__"],
    ["seed_worker", "particle_worker"],
]
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path):
    """The lt_plugin modules `path` imports, at its top or inside functions (relative imports)."""
    package = _module_name(path).split(".") if path.name == "__init__.py" else _module_name(path).split(".")[:-1]
    package = [p for p in package if p]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1]
            if node.module:
                yield ".".join(base + [node.module])
            else:
                yield from (".".join(base + [alias.name]) for alias in node.names
                            if ".".join(base + [alias.name]) in LAYER_OF)


def _private_uses(path: Path):
    """Names starting with one underscore that `path` imports from, or calls on, something other than itself."""
    tree = ast.parse(path.read_text())
    own = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            yield from (f"import {alias.name}" for alias in node.names
                        if alias.name.startswith("_") and not alias.name.startswith("__"))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name, owner = node.func.attr, node.func.value
            if name.startswith("_") and not name.startswith("__"):
                mine = isinstance(owner, ast.Name) and owner.id in {"self", "cls"} | own
                if not mine and not (isinstance(owner, ast.Call) and getattr(owner.func, "id", "") == "super"):
                    yield f"{ast.unparse(owner)}.{name}()"


def test_no_strategy_calls_a_private_function_of_another_module():
    found = {path.name: list(_private_uses(path)) for path in (PACKAGE / "strategies").glob("*.py")}
    assert {name: uses for name, uses in found.items() if uses} == {}


def test_the_lower_layers_do_not_load_the_strategies():
    for module in ("lt_plugin.data", "lt_plugin.masks", "lt_plugin.structure", "lt_plugin.train", "lt_plugin.pooling"):
        code = f"import sys, {module}; print(sorted(m for m in sys.modules if m.startswith('lt_plugin.strategies')))"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert out.strip() == "[]", module


def test_every_strategy_prints_its_help(capsys):
    import pytest

    from lt_plugin import list_strategies
    from lt_plugin.cli import main as cli_main
    for name in list_strategies():
        with pytest.raises(SystemExit) as done:
            cli_main([name, "--help"])
        assert done.value.code == 0, name
        assert "--out" in capsys.readouterr().out


def test_python_dash_m_lt_plugin_is_the_command():
    import lt_plugin

    done = subprocess.run([sys.executable, "-m", "lt_plugin", "--version"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert lt_plugin.__version__ in done.stdout
    wrong = subprocess.run([sys.executable, "-m", "lt_plugin", "lottery-pools"], capture_output=True, text=True)
    assert wrong.returncode == 2  # main's return value, from a UserError: --run is required
    assert wrong.stderr.strip().splitlines() == ["lt-plugin: error: --run DIR is required: the finished run lottery-pools "
                                                 "works on"]


def test_every_module_imports_only_lower_layers():
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    assert sorted(set(modules) - set(LAYER_OF)) == []  # a new module gets its layer here and in the docs
    upward = [f"{name} imports {target}" for name, path in modules.items() for target in _imports(path)
              if target != name and target in LAYER_OF and LAYER_OF[target] >= LAYER_OF[name]]
    assert upward == []


# A run folder's file names, and an f-string part that makes one (level_{L}, step_{k}...).
LAYOUT_NAMES = re.compile(r"(^|/)(mask|weights|init|model|checkpoint|early_stop|emergence|start|swa_average)"
                          r"\.safetensors$|(^|/)(results?|config|path|imp_config|ensemble|sparsity)\.json$|\.jsonl$|"
                          r"^(level|ratio|seed|step|ingredient|soup|copy|rewind|particle|swa_step|denoiser)_$")


def test_no_module_but_the_layout_spells_a_run_folders_file_names():
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "layout.py" or "data" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and LAYOUT_NAMES.search(node.value):
                found.append(f"{path.name}:{node.lineno} {node.value!r}")
            if (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and path.name not in ("tickets.py",)
                    and (isinstance(node.right, ast.JoinedStr) or (isinstance(node.right, ast.Constant)
                                                                   and isinstance(node.right.value, str)))):
                found.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")  # a path built from a literal
    assert found == []


def test_no_module_is_too_long_to_read():
    lengths = {_module_name(path): len(path.read_text().splitlines()) for path in PACKAGE.rglob("*.py")}
    assert {name: n for name, n in lengths.items() if n > 450} == {}


def test_no_test_forks_pytests_own_process():
    # Forking a process whose OpenMP pool and helper threads already run (pytest's, after other tests) can hang the
    # children: a multi-process test launches a script of tests/jobs in a subprocess of its own.
    tests = Path(__file__).resolve().parent
    pattern = re.compile(r"debug_launcher|os\.fork\b|start_method=.fork")
    forking = [p.name for p in tests.glob("*.py") if p.name != Path(__file__).name and pattern.search(p.read_text())]
    assert forking == []
