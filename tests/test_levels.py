"""IMP's level arithmetic (lt_plugin.levels): layers pruned at rates of their own, the others as the scope says;
create_mask's density check."""

import pytest
import timm
import torch

import lt_plugin


def test_layer_rates_prune_each_layer_on_its_own_and_the_others_as_the_scope_says():
    model = timm.create_model("test_resnet", num_classes=10)
    x = torch.zeros(1, 3, 16, 16)
    mask = lt_plugin.create_mask(model, x, 0.5, "weight", layer_densities={"conv1.0.weight": 0.9})
    assert mask.layer_densities()["conv1.0.weight"] == pytest.approx(0.9, abs=1e-2)
    rest = [n for n in mask.prunable if n != "conv1.0.weight"]
    kept = sum(int(mask.tensors[n].sum()) for n in rest) / sum(mask.tensors[n].numel() for n in rest)
    assert kept == pytest.approx(0.5, abs=1e-3)  # one global threshold over the others
    with pytest.raises(lt_plugin.UserError, match="weight tickets"):
        lt_plugin.create_mask(model, x, 0.5, "channel", layer_densities={"conv1.0.weight": 0.9})


@pytest.mark.parametrize("granularity", ["weight", "channel"])
def test_create_mask_takes_densities_in_0_1_at_both_granularities(granularity):
    model = timm.create_model("test_resnet", num_classes=10)
    x = torch.zeros(1, 3, 16, 16)
    for density in (0.0, 1.5):
        with pytest.raises(lt_plugin.UserError, match=r"density must be in \(0, 1\]"):
            lt_plugin.create_mask(model, x, density, granularity)
    assert lt_plugin.create_mask(model, x, 1.0, granularity).num_pruned() == 0


def test_layer_rates_are_checked_before_anything_is_written(tmp_path, capsys):
    from lt_plugin.cli import main as cli_main
    flags = ["imp", "--model", "lenet_300_100", "--image-size", "8", "--out", str(tmp_path / "r")]
    assert cli_main([*flags, "--layer-prune-fractions", '{"nowhere*": 0.1}']) == 2
    assert "names no Conv or Linear layer" in capsys.readouterr().err
    assert cli_main([*flags, "--layer-prune-fractions", '{"fc": 0.1}', "--granularity", "channel"]) == 2
    assert cli_main([*flags, "--layer-prune-fractions", '{"fc": 1.5}']) == 2
    assert not (tmp_path / "r" / "config.json").exists()
