"""What a command imports before it works: the listings and --help name every command from lt_plugin.commands
without torch, timm or scipy; a command loads its own strategy's module only; `import lt_plugin` registers the
papers' networks with timm whichever of the two is imported first."""

import os
import subprocess
import sys

import pytest

from lt_plugin import commands

HEAVY = ("torch", "timm", "scipy", "datasets", "accelerate")


def _python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _after_cli(argv) -> str:
    """What `lt-plugin ARGV` printed, then the modules it left imported (one per line, after a marker)."""
    return _python(f"""
import sys
from lt_plugin.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
print("IMPORTED")
print("\\n".join(sorted(sys.modules)))
""")


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["strategies"], ["branches"], ["recipes"]])
def test_the_listings_and_help_import_no_torch_timm_or_scipy(argv):
    printed, imported = _after_cli(argv).split("IMPORTED\n")
    assert not set(HEAVY) & set(imported.split()), argv
    if argv == ["strategies"]:
        assert [line.split()[0] for line in printed.splitlines()] == sorted(commands.STRATEGIES)
        assert all(description in printed for _, description in commands.STRATEGIES.values())
    if argv == ["--help"]:
        assert all(name in printed for name in [*commands.STRATEGIES, *commands.BRANCHES])


def test_a_command_imports_its_own_strategy_alone():
    printed, imported = _after_cli(["imp", "--help"]).split("IMPORTED\n")
    modules = set(imported.split())
    assert "--rewind" in printed  # its flags come from its class
    own = {m for m in modules if m.startswith(("lt_plugin.strategies.", "lt_plugin.branches."))}
    assert own == {"lt_plugin.strategies.base", "lt_plugin.strategies.registry", "lt_plugin.strategies.imp"}
    assert "scipy.stats" not in modules and "datasets" not in modules


@pytest.mark.parametrize("first", ["lt_plugin", "timm"])
def test_import_lt_plugin_registers_the_papers_networks_before_or_after_timm(first):
    second = "timm" if first == "lt_plugin" else "lt_plugin"
    out = _python(f"""
import sys
import {first}
print("timm" in sys.modules)
import {second}
import timm
print(type(timm.create_model("lenet_300_100")).__name__, type(timm.create_model("cifar_resnet20")).__name__)
""")
    assert out.split() == [str(first == "timm"), "LeNet300100", "OpenLthCifarResNet"]


def test_import_lt_plugin_alone_imports_nothing_heavy():
    imported = _python("import sys, lt_plugin; print('\\n'.join(sys.modules))").split()
    assert not set(HEAVY) & set(imported)


def test_every_builtin_strategy_and_branch_lies_where_the_table_says_with_its_line():
    from lt_plugin.branches.base import get_branch_class
    from lt_plugin.strategies.registry import get_strategy_class
    for table, package, get in ((commands.STRATEGIES, "lt_plugin.strategies", get_strategy_class),
                                (commands.BRANCHES, "lt_plugin.branches", get_branch_class)):
        for name, command in table.items():
            cls = get(name)
            assert cls.__module__ == f"{package}.{command.module}" and cls.name == name, name
            assert cls.description == command.description, name
    assert set(commands.CONTROLS) <= set(commands.BRANCHES)


def test_a_builtin_class_takes_its_line_from_the_table_and_may_not_say_another():
    def registry():
        return commands.Registry("strategy", "nowhere", {"demo": commands.Command("demo", "the table's line")},
                                 "lt_plugin.test-group")
    silent, table = type("Silent", (), {}), registry()
    assert table.add("demo", silent).description == "the table's line" and table.get("demo", None) is silent
    with pytest.raises(ValueError, match="its class says another"):
        registry().add("demo", type("Talkative", (), {"description": "another line"}))


def test_an_installed_strategy_is_listed_from_its_metadata_and_a_broken_one_refused_in_one_line(tmp_path):
    (tmp_path / "broken_plugin.py").write_text("raise ImportError('a dependency is missing')\n")
    dist_info = tmp_path / "broken_plugin-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text("[lt_plugin.strategies]\nbroken = broken_plugin:Broken\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    listed = subprocess.run([sys.executable, "-c", "import sys\nfrom lt_plugin.cli import main\nmain(['strategies'])\n"
                             "print(sorted(set(sys.modules) & {'torch', 'timm', 'scipy', 'broken_plugin'}))"],
                            capture_output=True, text=True, env=env)
    assert listed.returncode == 0, listed.stderr
    assert "broken-plugin 0.1: broken_plugin:Broken" in listed.stdout and listed.stdout.splitlines()[-1] == "[]"
    run = subprocess.run([sys.executable, "-m", "lt_plugin", "broken", "--help"], capture_output=True, text=True,
                         env=env)
    assert run.returncode == 2 and run.stderr.strip().splitlines() == [
        "lt-plugin: error: entry point 'broken' (broken_plugin:Broken) cannot be imported: ImportError: a dependency "
        "is missing"]


def test_a_training_run_on_a_saved_dataset_does_not_import_scikit_learn(tmp_path):
    """Carving the validation split is lt_plugin's own copy of scikit-learn's split (tests/test_data.py holds the two
    equal), so a run pays for importing scikit-learn only where it reads scikit-learn's digits."""
    import numpy as np
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
    from PIL import Image as PILImage
    rng = np.random.default_rng(0)
    features = Features({"image": Image(), "label": ClassLabel(num_classes=2)})

    def rows(n):
        return {"image": [PILImage.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for _ in range(n)],
                "label": [i % 2 for i in range(n)]}
    DatasetDict(train=Dataset.from_dict(rows(80), features=features),
                test=Dataset.from_dict(rows(16), features=features)).save_to_disk(str(tmp_path / "data"))
    printed, imported = _after_cli(["imp", "--model", "test_resnet", "--dataset", str(tmp_path / "data"),
                                    "--image-size", "8", "--batch-size", "16", "--epochs", "1", "--levels", "0",
                                    "--out", str(tmp_path / "run")]).split("IMPORTED\n")
    assert (tmp_path / "run" / "results.json").exists(), printed
    assert "sklearn" not in set(imported.split())
