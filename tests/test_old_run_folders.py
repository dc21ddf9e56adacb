"""A run folder written by an earlier lt_plugin goes on working: reread, resumed, exported and pooled by today's code.

tests/fixtures/run_folder_0.1.0/ is the folder the main of 2026-11-25 (commit 81d139e) wrote with COMMAND, shipped
as it was (tensors included, so the test holds on any machine: trained tensors differ in their last bits between
CPUs, so the folder is not retrained here).
"""

import json
import shutil
from pathlib import Path

import pytest
import torch

from lt_plugin.cli import main as cli_main
from lt_plugin.store import load_weights

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "run_folder_0.1.0"
COMMAND = ["imp", "--model", "test_efficientnet", "--dataset", "digits", "--image-size", "8",
           "--max-train-samples", "256", "--batch-size", "32", "--epochs", "1", "--levels", "1"]
ONE_TEST_IMAGE = 1 / 180  # digits' test split: an evaluation on other CPU kernels may flip a near tie


@pytest.fixture
def earlier_run(tmp_path):
    out = tmp_path / "run"
    shutil.copytree(FIXTURE, out)
    return out


def _json(path: Path):
    return json.loads(path.read_text())


def test_an_earlier_finished_run_is_reread_not_retrained(earlier_run):
    earlier = _json(FIXTURE / "results.json")
    assert cli_main([*COMMAND, "--out", str(earlier_run)]) == 0
    assert _json(earlier_run / "results.json") == earlier
    assert not (earlier_run / "level_1" / "train" / "checkpoint.safetensors").exists()


def test_an_earlier_unfinished_run_resumes_to_its_result(earlier_run):
    for name in ("level_1/result.json", "level_1/weights.safetensors"):
        (earlier_run / name).unlink()
    assert cli_main([*COMMAND, "--out", str(earlier_run)]) == 0
    resumed = load_weights(earlier_run / "level_1" / "weights.safetensors")
    earlier = load_weights(FIXTURE / "level_1" / "weights.safetensors")
    assert resumed.keys() == earlier.keys()
    assert all(torch.equal(resumed[k], earlier[k]) for k in earlier)  # read back from its training, not retrained
    result, before = _json(earlier_run / "level_1" / "result.json"), _json(FIXTURE / "level_1" / "result.json")
    assert result["density"] == before["density"] and result["params"] == before["params"]
    assert result["test_accuracy"] == pytest.approx(before["test_accuracy"], abs=ONE_TEST_IMAGE + 1e-9)


def test_an_earlier_run_is_exported_and_pooled(earlier_run, tmp_path):
    assert cli_main(["export", "--run", str(earlier_run), "--level", "1", "--out", str(tmp_path / "t.safetensors")]) == 0
    assert cli_main(["lottery-pools", "--run", str(earlier_run), "--alphas", "0.5",
                     "--out", str(tmp_path / "pools")]) == 0
    pooled = _json(tmp_path / "pools" / "results.json")
    assert [r["level"] for r in pooled] == [0, 1]
    assert all(r["pooled_val_accuracy"] >= r["ticket_bn_val_accuracy"] for r in pooled)
