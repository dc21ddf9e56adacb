"""The layout a contributor relies on: who may import whom, and strategies that use other modules' public names."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lt_plugin"


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
    assert wrong.stderr.strip().splitlines() == ["lt-plugin: error: --run DIR is required: the finished IMP run whose "
                                                 "tickets to pool"]
