"""A run folder written by an earlier lt_plugin (the main of 2026-11-25, tests/fixtures/run_folder_0.1.0.json)
goes on working: rerun, resumed, exported and pooled by today's code.

The fixture holds that folder's JSON files and its safetensors files' metadata and tensor digests. Training is
deterministic on the CPU, so today's code makes the same tensors; the test writes them with the earlier files'
metadata and JSON, checks every tensor against the earlier digests, and so rebuilds the earlier folder exactly.
"""

import hashlib
import json
from pathlib import Path

import pytest
from safetensors import safe_open

from lt_plugin.cli import main as cli_main
from lt_plugin.store import atomic_save_safetensors, read_safetensors

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "run_folder_0.1.0.json"


def tensor_digest(path) -> str:
    digest = hashlib.sha256()
    with safe_open(str(path), framework="pt") as f:
        for key in sorted(f.keys()):
            digest.update(key.encode())
            digest.update(f.get_tensor(key).contiguous().numpy().tobytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory):
    manifest = json.loads(FIXTURE.read_text())
    out = tmp_path_factory.mktemp("earlier") / "run"
    assert cli_main([*manifest["command"], "--out", str(out)]) == 0
    for name, entry in manifest["files"].items():
        path = out / name
        if "text" in entry:
            path.write_text(entry["text"])
            continue
        tensors, _ = read_safetensors(path)
        atomic_save_safetensors(tensors, path, entry["safetensors_metadata"])
        assert tensor_digest(path) == entry["sha256"], name  # the earlier code's very tensors
    return manifest, out


def test_an_earlier_finished_run_is_reread_not_retrained(earlier_run, capsys):
    manifest, out = earlier_run
    earlier = json.loads(manifest["files"]["results.json"]["text"])
    assert cli_main([*manifest["command"], "--out", str(out)]) == 0
    assert json.loads((out / "results.json").read_text()) == earlier


def test_an_earlier_unfinished_run_resumes_to_its_result(earlier_run, tmp_path):
    manifest, out = earlier_run
    for name in ("level_1/result.json", "level_1/weights.safetensors"):
        (out / name).unlink()
    assert cli_main([*manifest["command"], "--out", str(out)]) == 0
    assert tensor_digest(out / "level_1" / "weights.safetensors") == \
        manifest["files"]["level_1/weights.safetensors"]["sha256"]
    resumed = json.loads((out / "level_1" / "result.json").read_text())
    earlier = json.loads(manifest["files"]["level_1/result.json"]["text"])
    assert resumed["test_accuracy"] == earlier["test_accuracy"] and resumed["density"] == earlier["density"]


def test_an_earlier_run_is_exported_and_pooled(earlier_run, tmp_path):
    _, out = earlier_run
    assert cli_main(["export", "--run", str(out), "--level", "1", "--out", str(tmp_path / "t.safetensors")]) == 0
    assert cli_main(["lottery-pools", "--run", str(out), "--alphas", "0.5", "--out", str(tmp_path / "pools")]) == 0
    pooled = json.loads((tmp_path / "pools" / "results.json").read_text())
    assert [r["level"] for r in pooled] == [0, 1]
    assert all(r["pooled_val_accuracy"] >= r["ticket_val_accuracy"] for r in pooled)
