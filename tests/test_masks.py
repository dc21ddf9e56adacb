"""Weight masks against hand computation; Mask arithmetic, files and enforcement."""

import math

import pytest
import torch
from torch import nn

from lt_plugin import Mask, create_mask
from lt_plugin.masks import magnitude_mask, prunable_weight_names


def tiny_net():
    net = nn.Sequential(nn.Conv2d(1, 2, 2, bias=False), nn.Flatten(), nn.Linear(2 * 3 * 3, 3), nn.Linear(3, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([0.5, -0.1, 0.3, -0.3, 0.9, 0.05, -0.2, 0.7]).reshape(2, 1, 2, 2))
        net[2].weight.copy_(torch.linspace(-1, 1, 54).reshape(3, 18))
        net[3].weight.copy_(torch.tensor([[0.3, 2.0, -0.01], [0.3, -0.3, 1.0]]))
    return net


def test_global_magnitude_prunes_exactly_the_smallest_weights_ties_included():
    net = tiny_net()
    names = ["0.weight", "2.weight", "3.weight"]
    all_abs = torch.cat([net.state_dict()[n].abs().reshape(-1) for n in names])
    density = 0.5
    n_prune = all_abs.numel() - round(density * all_abs.numel())
    threshold = sorted(all_abs.tolist())[n_prune - 1]  # by hand: the n-th smallest |w|
    mask = magnitude_mask(net, density, names, "global")
    for n in names:
        expected = net.state_dict()[n].abs() > threshold
        assert torch.equal(mask.tensors[n], expected), n
    # 0.3 appears several times across layers: ties at the threshold are pruned together
    assert (all_abs == 0.3).sum() >= 3


def test_layerwise_keeps_the_same_fraction_of_every_layer():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 20), nn.Linear(20, 30), nn.Linear(30, 5))
    names = ["0.weight", "1.weight", "2.weight"]
    mask = magnitude_mask(net, 0.3, names, "layerwise")
    for n in names:
        weight = net.state_dict()[n]
        kept = mask.tensors[n]
        assert int(kept.sum()) == round(0.3 * weight.numel())
        assert weight.abs()[kept].min() > weight.abs()[~kept].max()


def test_a_new_mask_never_revives_a_pruned_weight():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 20), nn.Linear(20, 5))
    names = prunable_weight_names(net)
    first = magnitude_mask(net, 0.5, names)
    with torch.no_grad():  # the pruned weights grow large: they must still stay pruned
        for n, p in net.named_parameters():
            if n in first.tensors:
                p[~first.tensors[n]] = 100.0
    second = magnitude_mask(net, 0.4, names, previous=first)
    for n in names:
        assert not (second.tensors[n] & ~first.tensors[n]).any()
    assert abs(second.density - 0.4) < 0.01


def test_density_distance_and_intersection_by_hand():
    a = Mask({"w": torch.tensor([True, True, False, False])}, ["w"])
    b = Mask({"w": torch.tensor([True, False, True, False])}, ["w"])
    assert a.density == 0.5
    assert a.distance(b) == 0.5
    assert torch.equal((a & b).tensors["w"], torch.tensor([True, False, False, False]))


def test_apply_enforcer_and_file_round_trip(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 4), nn.Linear(4, 3))
    mask = create_mask(net, torch.zeros(1, 6), 0.5, granularity="weight", ignore_classifier=False)
    enforce = mask.enforcer(net)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    enforce()
    for n, keep in mask.tensors.items():
        assert (net.state_dict()[n][~keep] == 0).all()
        assert (net.state_dict()[n][keep] != 0).all()
    mask.save(tmp_path / "m.safetensors")
    loaded = Mask.load(tmp_path / "m.safetensors")
    assert loaded.prunable == mask.prunable and loaded.granularity == "weight"
    assert all(torch.equal(loaded.tensors[n], mask.tensors[n]) for n in mask.tensors)


def test_classifier_is_ignored_by_default():
    import timm
    model = timm.create_model("test_resnet", num_classes=5)
    mask = create_mask(model, torch.zeros(1, 3, 32, 32), 0.3, granularity="weight")
    assert "fc.weight" not in mask.tensors
    assert abs(mask.density - 0.3) < 1e-3


def test_atomic_files_get_the_usual_permissions(tmp_path):
    import os
    import stat
    from lt_plugin.store import atomic_write_json
    atomic_write_json({"a": 1}, tmp_path / "x.json")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # no temp file left behind


@pytest.mark.parametrize("k", [1, 1000, 2_000_000, 3_999_999, 4_000_000])
def test_kth_smallest_equals_kthvalue_with_ties_and_infinities(k):
    from lt_plugin.masks import kth_smallest
    g = torch.Generator().manual_seed(1)
    flat = torch.randn(4_000_000, generator=g).abs().round(decimals=2)  # many ties
    flat[:500_000] = -math.inf  # entries an earlier level pruned
    assert kth_smallest(flat, k) == torch.kthvalue(flat, k).values
