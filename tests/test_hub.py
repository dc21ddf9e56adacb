"""Tickets as Hugging Face Hub folders: a weight ticket that timm loads (`local-dir:`) with no lt_plugin, giving the
run's ticket; a channel ticket that timm refuses by naming lt_plugin.load_ticket and that load_ticket (or timm and
Torch-Pruning alone) rebuild physically small; the model card from the run; the upload failing cleanly offline."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import lt_plugin
from lt_plugin import UserError, export, load_ticket
from lt_plugin.branches.export import _hub_dataset, load_run_ticket
from lt_plugin.cli import main as cli_main
from lt_plugin.layout import HubFolder, RunLayout
from lt_plugin.model_card import base_model

TINY = ["--model", "test_resnet", "--dataset", "digits", "--image-size", "16", "--max-train-samples", "128",
        "--batch-size", "32", "--epochs", "1", "--levels", "1", "--target-density", "0.4"]
# A process in which lt_plugin cannot be imported: what timm does there, it does without lt_plugin.
WITHOUT_LT_PLUGIN = "import sys; sys.modules['lt_plugin'] = None\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    for granularity in ("channel", "weight"):
        assert cli_main(["imp", *TINY, "--granularity", granularity, "--out", str(root / granularity)]) == 0
    assert cli_main(["imp", *TINY, "--seeds", "0", "1", "--out", str(root / "seeds")]) == 0
    return root


def _inputs():
    return torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def _run_python(code, tmp_path, **env):
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, **env})
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_timm_loads_a_weight_ticket_folder_without_lt_plugin_as_the_runs_ticket(runs, tmp_path):
    folder = tmp_path / "weight_ticket"
    assert cli_main(["export", "--run", str(runs / "weight"), "--level", "1", "--format", "hf",
                     "--out", str(folder)]) == 0
    save_file({"x": _inputs()}, tmp_path / "inputs.safetensors")
    _run_python(WITHOUT_LT_PLUGIN + f"""
import timm, torch
from safetensors.torch import load_file, save_file
model = timm.create_model("local-dir:{folder}", pretrained=True).eval()
with torch.no_grad():
    outputs = model(load_file("inputs.safetensors")["x"])
save_file({{"outputs": outputs, **{{f"state/{{k}}": v for k, v in model.state_dict().items()}}}}, "timm.safetensors")
""", tmp_path)
    loaded = load_file(tmp_path / "timm.safetensors")
    ticket, mask, _, _ = load_run_ticket(runs / "weight", "1")
    state = ticket.state_dict()
    assert {k[len("state/"):] for k in loaded if k.startswith("state/")} == set(state)
    assert all(torch.equal(loaded[f"state/{k}"], v) for k, v in state.items())  # the ticket's weights, zeros too
    assert all(int((state[name][~keep] != 0).sum()) == 0 for name, keep in mask.tensors.items())
    with torch.no_grad():
        expected = ticket(_inputs())
    assert torch.allclose(loaded["outputs"], expected, rtol=1e-5, atol=1e-6)
    assert load_ticket(f"local-dir:{folder}").mask.density == pytest.approx(mask.density)


def test_a_channel_ticket_folder_is_refused_by_timm_and_rebuilt_small_by_load_ticket(runs, tmp_path):
    folder = tmp_path / "channel_ticket"
    assert cli_main(["export", "--run", str(runs / "channel"), "--level", "1", "--format", "hf",
                     "--out", str(folder)]) == 0
    refused = subprocess.run([sys.executable, "-c", WITHOUT_LT_PLUGIN + f"""
import timm
timm.create_model("local-dir:{folder}", pretrained=True)
"""], capture_output=True, text=True)
    assert refused.returncode != 0 and "lt_plugin.load_ticket" in refused.stderr.strip().splitlines()[-1]
    model, mask, experiment, _ = load_run_ticket(runs / "channel", "1")
    small = export(model, mask, experiment.example_inputs()).eval()
    ticket = load_ticket(f"local-dir:{folder}")
    assert sum(p.numel() for p in ticket.model.parameters()) == sum(p.numel() for p in small.parameters()) < sum(
        p.numel() for p in model.parameters())
    with torch.no_grad():
        assert torch.equal(ticket.model(_inputs()), small(_inputs()))
    assert ticket.mask.plan == mask.plan and ticket.metadata["granularity"] == "channel"
    assert json.loads(HubFolder(folder).pruning_history.read_text()) == mask.plan


def test_the_cards_fragment_rebuilds_a_channel_ticket_with_timm_and_torch_pruning_alone(runs, tmp_path):
    folder = tmp_path / "channel_ticket"
    assert cli_main(["export", "--run", str(runs / "channel"), "--level", "1", "--format", "hf",
                     "--out", str(folder)]) == 0
    card = HubFolder(folder).card.read_text()
    fragment = re.findall(r"```python\n(.*?)```", card, re.S)[-1].replace("FOLDER", str(folder))
    save_file({"x": _inputs()}, tmp_path / "inputs.safetensors")
    _run_python(WITHOUT_LT_PLUGIN + fragment + """
from safetensors.torch import save_file
with torch.no_grad():
    save_file({"outputs": model.eval()(load_file("inputs.safetensors")["x"])}, "rebuilt.safetensors")
""", tmp_path)
    with torch.no_grad():
        expected = load_ticket(folder).model(_inputs())
    assert torch.allclose(load_file(tmp_path / "rebuilt.safetensors")["outputs"], expected, rtol=1e-5, atol=1e-6)


def test_the_card_tells_the_tickets_provenance_and_shows_the_runs_figures(runs, tmp_path):
    folder = tmp_path / "card"
    assert cli_main(["export", "--run", str(runs / "channel"), "--level", "1", "--format", "hf",
                     "--out", str(folder)]) == 0
    card = HubFolder(folder).card.read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "timm" and {"lottery-ticket", "pruning", "sparse"} <= set(front["tags"])
    assert "datasets" not in front and "base_model" not in front  # the digits are not on the Hub; trained from scratch
    result = json.loads((runs / "channel" / "level_1" / "result.json").read_text())
    assert f"{result['density']:.2%} density" in card and f"{result['test_accuracy']:.2%}" in card
    assert "arxiv.org/abs/1803.03635" in card and "target_density: 0.4" in card  # the paper, every option
    ticket_params, dense_params = re.search(r"\| parameters [^|]*\| ([\d,]+) \| ([\d,]+) \|", card).groups()
    assert int(ticket_params.replace(",", "")) == result["params"] < int(dense_params.replace(",", ""))
    shown = re.findall(r"!\[[^]]*\]\(figures/([^)]+)\)", card)
    assert shown == [p.name for p in RunLayout(runs / "channel").plots()] == ["accuracy_vs_density.png"]
    assert HubFolder(folder).figure(shown[0]).read_bytes() == (runs / "channel" / shown[0]).read_bytes()
    assert f'load_ticket("local-dir:{folder}")' in card


def test_a_seeds_card_gives_the_mean_and_95_percent_interval_over_the_seeds(runs, tmp_path):
    folder = tmp_path / "seeded"
    assert cli_main(["export", "--run", str(runs / "seeds"), "--level", "1", "--format", "hf",
                     "--out", str(folder)]) == 0
    assert not folder.exists() and (tmp_path / "seeded_seed0").is_dir() and (tmp_path / "seeded_seed1").is_dir()
    card = HubFolder(tmp_path / "seeded_seed1").card.read_text()
    row = next(r for r in json.loads((runs / "seeds" / "results.json").read_text()) if r["level"] == 1)
    low, high = row["test_accuracy_ci"]
    assert f"over the run's 2 seeds (0, 1): mean {row['test_accuracy']:.2%}, 95% interval [{low:.2%}, {high:.2%}]" \
        in card


def test_the_upload_fails_in_one_line_offline_and_without_a_token_leaving_the_folder(runs, tmp_path, capsys):
    offline = tmp_path / "offline"
    assert cli_main(["export", "--run", str(runs / "weight"), "--level", "1", "--format", "hf", "--out",
                     str(offline), "--push-to-hub", "someone/ticket"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "offline (HF_HUB_OFFLINE)" in err and HubFolder(offline).weights.exists()
    assert 'timm.create_model("hf-hub:someone/ticket", pretrained=True)' in HubFolder(offline).card.read_text()
    no_token = tmp_path / "no_token"
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    done = subprocess.run([sys.executable, "-m", "lt_plugin", "export", "--run", str(runs / "weight"), "--level", "1",
                           "--format", "hf", "--out", str(no_token), "--push-to-hub", "someone/ticket"],
                          capture_output=True, text=True, env={**env, "HF_HUB_OFFLINE": "0",
                                                               "HF_HOME": str(tmp_path / "hf_home")})
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "no Hugging Face token" in done.stderr
    assert HubFolder(no_token).weights.exists()
    assert cli_main(["export", "--run", str(runs / "weight"), "--level", "1", "--out", str(tmp_path / "t.st"),
                     "--push-to-hub", "someone/ticket"]) == 2
    assert "--format hf" in capsys.readouterr().err
    assert cli_main(["export", "--run", str(runs / "seeds"), "--level", "1", "--format", "hf", "--out",
                     str(tmp_path / "s"), "--push-to-hub", "someone/ticket"]) == 2
    assert "export one of them" in capsys.readouterr().err and not (tmp_path / "s_seed0").exists()


def test_an_hf_hub_source_is_downloaded_with_huggingface_hub(runs, tmp_path, monkeypatch):
    with pytest.raises(UserError, match="hf-hub:someone/ticket: cannot download it"):
        load_ticket("hf-hub:someone/ticket")  # offline in the tests
    folder = tmp_path / "downloaded"
    lt_plugin.export_run_ticket(runs / "weight", "1", folder, fmt="hf")
    asked = []
    monkeypatch.setattr("huggingface_hub.snapshot_download",
                        lambda repo_id, revision=None, **kwargs: asked.append((repo_id, revision)) or str(folder))
    ticket = load_ticket("hf-hub:someone/ticket@v1")
    assert asked == [("someone/ticket", "v1")]
    with torch.no_grad():
        assert torch.equal(ticket.model(_inputs()), load_ticket(f"local-dir:{folder}").model(_inputs()))


def test_a_ticket_folder_is_replaced_whole_and_another_folder_is_refused(runs, tmp_path, capsys):
    folder = tmp_path / "ticket"
    lt_plugin.export_run_ticket(runs / "weight", "1", folder, fmt="hf")
    (folder / "stale.txt").write_text("from before")
    lt_plugin.export_run_ticket(runs / "channel", "1", folder, fmt="hf")
    assert not (folder / "stale.txt").exists() and load_ticket(folder).metadata["granularity"] == "channel"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ticket"]  # no temporary folder left
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert cli_main(["export", "--run", str(runs / "weight"), "--level", "1", "--format", "hf",
                     "--out", str(mine)]) == 2
    assert "not a ticket folder" in capsys.readouterr().err and (mine / "notes.txt").read_text() == "keep"


def test_the_card_names_the_hub_dataset_and_the_hub_model_a_run_started_from(tmp_path):
    assert _hub_dataset("fashion-mnist") == "zalando-datasets/fashion_mnist"
    assert _hub_dataset("someone/scans") == "someone/scans"
    assert _hub_dataset("digits") is None and _hub_dataset(str(tmp_path)) is None
    cached = "/home/u/.cache/huggingface/hub/models--timm--resnet18.a1_in1k/snapshots/abc/model.safetensors"
    assert base_model(cached) == "timm/resnet18.a1_in1k"
    assert base_model("/data/my_weights.safetensors") is None and base_model(None) is None


def test_a_timm_too_old_for_the_folder_is_one_line_before_any_work(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("timm.models.save_for_hf", lambda model, save_directory, model_config=None: None)
    out = tmp_path / "old_timm"
    assert cli_main(["export", "--run", str(runs / "weight"), "--level", "1", "--format", "hf", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install -U timm" in err and not out.exists()
