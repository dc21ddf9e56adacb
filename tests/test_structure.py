"""Channel masks over Torch-Pruning's dependency graph, checked against physical pruning (an independent path)."""

import copy

import pytest
import timm
import torch
import torch_pruning as tp
from torch import nn

from lt_plugin import UnsupportedModelError, UserError, create_mask, export, load_ticket, save_ticket
from lt_plugin.structure import ChannelStructure

X32 = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def build(name, **kwargs):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10, **kwargs).eval()
    with torch.no_grad():  # random affine norms and layer scales, so that zeroed channels would show
        for module_name, p in model.named_parameters():
            if p.dim() == 1 and ("norm" in module_name or "bn" in module_name or module_name.endswith("gamma")):
                p.copy_(torch.rand_like(p) + 0.5)
    return model


class KeptChannelsNorm(nn.Module):
    """A LayerNorm whose mean and variance are taken over the channels a mask keeps: what the physically pruned
    LayerNorm computes, written out (the zeroed channels stay zero)."""

    def __init__(self, norm, keep):
        super().__init__()
        self.norm, self.keep = norm, keep.float()
        self.channels_first = isinstance(norm, timm.layers.LayerNorm2d)

    def forward(self, x):
        if self.channels_first:
            x = x.permute(0, 2, 3, 1)
        count = self.keep.sum()
        mean = (x * self.keep).sum(-1, keepdim=True) / count
        var = (((x - mean) * self.keep) ** 2).sum(-1, keepdim=True) / count
        y = ((x - mean) / torch.sqrt(var + self.norm.eps) * self.norm.weight + self.norm.bias) * self.keep
        return y.permute(0, 3, 1, 2) if self.channels_first else y


def kept_channel_norms(masked, mask):
    """The masked model with every LayerNorm over its kept channels only: on any network, the function its
    physically pruned copy must compute (on BatchNorm networks, the masked model itself)."""
    reference = copy.deepcopy(masked)
    for name, module in list(reference.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, nn.LayerNorm) and f"{full}.weight" in mask.tensors:
                setattr(module, child_name, KeptChannelsNorm(child, mask.tensors[f"{full}.weight"]))
    return reference


# Outputs are O(1) and the exported model sums in other orders (narrower matrices): float32 rounding over ~20
# layers stays near 1e-6. A zeroed channel counted by a LayerNorm, or an attention at another temperature, moves
# them by 1e-3 to 1e-1.
ATOL = 1e-4


def assert_export_matches_mask(model, mask, x):
    masked = mask.apply(copy.deepcopy(model)).eval()
    small = export(model, mask, x).eval()
    # 1. the exported weights are exactly the masked model's surviving entries
    dense_again = mask.to_dense(small.state_dict(), masked.state_dict())
    for name, value in masked.state_dict().items():
        assert torch.equal(dense_again[name], value), name
    # 2. the outputs agree with the masked model's, LayerNorms taken over the kept channels
    with torch.no_grad():
        diff = (kept_channel_norms(masked, mask)(x) - small(x)).abs().max().item()
    assert diff <= ATOL, diff
    return small, diff


def test_resnet18_quarter_density_ticket_is_small_and_exact():
    model = build("resnet18")
    mask = create_mask(model, X32, 0.25, granularity="channel")
    assert abs(mask.density - 0.25) < 0.01
    small, _ = assert_export_matches_mask(model, mask, X32)
    dense_macs, _ = tp.utils.count_ops_and_params(model, X32[:1])
    small_macs, small_params = tp.utils.count_ops_and_params(small, X32[:1])
    assert small_macs <= 0.35 * dense_macs
    # the mask covers BatchNorm parameters and running statistics too
    masked_state = mask.apply(copy.deepcopy(model)).state_dict()
    bn_stats = [n for n in mask.tensors if n.endswith("running_var")]
    assert bn_stats and all((masked_state[n][~mask.tensors[n]] == 0).all() for n in bn_stats)
    assert any((~mask.tensors[n]).any() for n in bn_stats)


BN_MODELS = [("resnet18", {}), ("resnet50", {}), ("vgg16_bn", {}), ("efficientnet_b0", {}),
             ("mobilenetv3_small_100", {}), ("regnetx_002", {})]
LN_MODELS = [("convnext_atto", {}), ("deit_tiny_patch16_224", {"img_size": 32, "patch_size": 4})]


@pytest.mark.parametrize("name,kwargs", BN_MODELS, ids=[m for m, _ in BN_MODELS])
def test_batchnorm_families_export_equals_masked(name, kwargs):
    model = build(name, **kwargs)
    mask = create_mask(model, X32, 0.4, granularity="channel")
    assert abs(mask.density - 0.4) < 0.02
    assert_export_matches_mask(model, mask, X32)


@pytest.mark.parametrize("name,kwargs", LN_MODELS, ids=[m for m, _ in LN_MODELS])
def test_layernorm_families_export_computes_the_masked_model_with_norms_over_the_kept_channels(name, kwargs):
    # LayerNorm's statistics count zeroed channels, so the masked model's outputs differ from the exported one's
    # (README: measured); the exported one normalises over the kept channels, which the reference writes out.
    model = build(name, **kwargs)
    mask = create_mask(model, X32, 0.4, granularity="channel")
    assert abs(mask.density - 0.4) < 0.02
    small, _ = assert_export_matches_mask(model, mask, X32)
    with torch.no_grad():
        assert (mask.apply(copy.deepcopy(model)).eval()(X32) - small(X32)).abs().max() > 100 * ATOL
    if "deit" in name:  # attention heads keep their count and shrink their width consistently
        attn = small.blocks[0].attn
        assert attn.qkv.out_features == 3 * attn.num_heads * attn.head_dim


def test_channel_mask_never_revives_and_layerwise_prunes_every_group():
    model = build("resnet18")
    first = create_mask(model, X32, 0.6, granularity="channel")
    with torch.no_grad():  # pruned channels regrow to ordinary values: they must still stay pruned
        for name, p in model.named_parameters():
            if name in first.tensors:
                keep = first.tensors[name]
                p[~keep] = torch.randn(int((~keep).sum())) * p[keep].std()
    second = create_mask(model, X32, 0.3, granularity="channel", previous=first)
    for name, keep in second.tensors.items():
        if name in first.tensors:
            assert not (keep & ~first.tensors[name]).any(), name
    assert abs(second.density - 0.3) < 0.02
    layerwise = create_mask(build("resnet18"), X32, 0.5, granularity="channel", scope="layerwise")
    conv_densities = [v for n, v in layerwise.layer_densities().items() if n.endswith("conv1.weight")]
    assert all(v < 1.0 for v in conv_densities)


def test_ticket_file_round_trip_rebuilds_the_small_model(tmp_path):
    model = build("resnet18")
    mask = create_mask(model, X32, 0.3, granularity="channel")
    masked = mask.apply(copy.deepcopy(model)).eval()
    save_ticket(tmp_path / "t.safetensors", masked, mask, model_name="resnet18",
                model_kwargs={"num_classes": 10}, input_size=(3, 32, 32))
    ticket = load_ticket(tmp_path / "t.safetensors")
    assert ticket.metadata["physical"] and ticket.metadata["granularity"] == "channel"
    with torch.no_grad():
        assert (ticket.model(X32) - masked(X32)).abs().max() <= 1e-4
    assert sum(p.numel() for p in ticket.model.parameters()) < 0.5 * sum(p.numel() for p in model.parameters())
    assert abs(ticket.mask.density - mask.density) < 1e-9


def test_unsupported_model_gets_a_clear_error_naming_the_layer():
    model = timm.create_model("poolformer_s12", num_classes=10).eval()
    with pytest.raises(UnsupportedModelError, match=r"breaks at layer stages\.\S+ \("):
        create_mask(model, torch.zeros(1, 3, 64, 64), 0.5, granularity="channel")


def test_plan_replays_to_the_same_mask():
    model = build("mobilenetv3_small_100")
    mask = create_mask(model, X32, 0.5, granularity="channel")
    again = ChannelStructure(copy.deepcopy(model), X32, ignored=[]).mask_from_plan(mask.plan)
    for name, keep in mask.tensors.items():
        assert torch.equal(again.tensors[name], keep), name


@pytest.mark.parametrize("name,kwargs", [("resnet18", {}), LN_MODELS[1]], ids=["resnet18", "deit_tiny"])
def test_random_channel_mask_keeps_every_layer_density_and_exports(name, kwargs):
    model = build(name, **kwargs)
    structure = ChannelStructure(model, X32, ignored=[model.get_classifier()])
    first = structure.select(0.7)
    ticket = structure.select(0.4, previous=first)
    control = structure.random_like(ticket, first, seed=0)
    assert control.layer_densities() == pytest.approx(ticket.layer_densities())
    assert control.distance(ticket) > 0.05
    for tensor_name, keep in control.tensors.items():
        if tensor_name in first.tensors:
            assert not (keep & ~first.tensors[tensor_name]).any(), tensor_name
    assert_export_matches_mask(model, control, X32)


def test_any_torch_pruning_importance_decides_the_channels():
    class IndexImportance(tp.importance.Importance):
        """Scores a channel by its index: the lowest indices must go first, in every group alike."""

        def __call__(self, group):
            return torch.arange(len(group[0].idxs), dtype=torch.float32)

    model = build("resnet18")
    mask = create_mask(model, X32, 0.5, granularity="channel", importance=IndexImportance())
    assert mask.plan and abs(mask.density - 0.5) < 0.02
    cutoff = max(max(idxs) for _, _, idxs in mask.plan)
    for _, _, idxs in mask.plan:  # one global threshold on the index: each group loses 0..cutoff
        assert idxs == list(range(cutoff + 1))
    by_name = create_mask(model, X32, 0.5, granularity="channel", importance="bn-scale")
    assert by_name.distance(mask) > 0


def _widths(model):
    return {name: m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
            for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


@pytest.mark.parametrize("round_to", [8, 16])
def test_round_to_keeps_a_multiple_of_n_channels_in_every_pruned_layer_across_levels(round_to):
    model = timm.create_model("resnet18", num_classes=10).eval()
    example = torch.zeros(1, 3, 32, 32)
    dense = _widths(model)
    previous, densities = None, []
    for density in (0.5, 0.25):
        mask = create_mask(model, example, density, "channel", previous=previous, round_to=round_to)
        widths = _widths(export(model, mask, example))
        pruned = {name: w for name, w in widths.items() if w != dense[name]}
        assert pruned, "nothing was pruned"
        assert all(w % round_to == 0 for w in pruned.values()), pruned
        densities.append(mask.density)
        previous = mask
    assert densities[0] == pytest.approx(0.5, abs=0.05) and densities[1] == pytest.approx(0.25, abs=0.05)


def test_round_to_must_be_a_positive_whole_number():
    with pytest.raises(UserError, match="--round-to"):
        create_mask(timm.create_model("test_resnet"), torch.zeros(1, 3, 16, 16), 0.5, "channel", round_to=0)
