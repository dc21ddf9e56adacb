"""Torch-Pruning's habits in lt_plugin's own-loop pruners: each of BasePruner's arguments (read from the installed
torch_pruning) is taken with its meaning or refused in one line that says what to do instead, and docs/own-loop.md's
table names every one; the habits that mean something for a ticket work as Torch-Pruning's do, each checked against
a computation by hand or Torch-Pruning's own result."""

import inspect
import re
from pathlib import Path

import pytest
import timm
import torch
import torch_pruning as tp
from torch import nn

import lt_plugin
from lt_plugin.early_bird_pruner import EarlyBirdPruner
from lt_plugin.errors import UnsupportedModelError
from lt_plugin.pruner_arguments import NOT_TAKEN
from lt_plugin.pruners import IMPPruner

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = torch.zeros(1, 3, 16, 16)


def _resnet(seed=0):
    torch.manual_seed(seed)
    return timm.create_model("test_resnet", num_classes=10)


def _arguments(cls):
    return [name for name in inspect.signature(cls.__init__).parameters if name not in ("self", "model")]


PRUNERS = {
    "IMPPruner": (lambda **kw: IMPPruner(_resnet(), EXAMPLE, **kw), tp.pruner.BasePruner),
    "EarlyBirdPruner": (lambda **kw: EarlyBirdPruner(_resnet(), EXAMPLE, **kw), tp.pruner.BNScalePruner),
    "GradualPruner": (lambda **kw: lt_plugin.GradualPruner(_resnet(), total_steps=100, **kw), tp.pruner.BasePruner),
}


@pytest.mark.parametrize("pruner", list(PRUNERS))
def test_every_torch_pruning_argument_is_taken_or_refused_in_one_line(pruner):
    build, torch_pruning_class = PRUNERS[pruner]
    own = set(_arguments(getattr(lt_plugin, pruner)))
    refused = [name for name in _arguments(torch_pruning_class) if name not in own]
    assert "max_pruning_ratio" in refused and "forward_fn" not in refused
    for name in refused:
        with pytest.raises(lt_plugin.UserError) as error:
            build(**{name: None})
        message = str(error.value)
        assert message.startswith(f"{pruner} does not take {name}: ") and "\n" not in message, message
    with pytest.raises(lt_plugin.UserError, match="has no argument 'pruning_ration'"):  # a typo
        build(pruning_ration=0.5)


def test_the_own_loop_page_says_what_becomes_of_every_base_pruner_argument():
    page = (REPO / "docs" / "own-loop.md").read_text()
    table = page[page.index("## How they map onto Torch-Pruning"):page.index("## fit with callbacks")]
    named = set(re.findall(r"`([a-z_]+)", table))
    missing = [name for name in _arguments(tp.pruner.BasePruner) + _arguments(tp.pruner.BNScalePruner)
               if name not in named]
    assert missing == []
    assert set(NOT_TAKEN) <= named


def test_interactive_steps_are_one_line():
    for pruner in (IMPPruner(_resnet(), EXAMPLE, pruning_ratio=0.5), lt_plugin.GradualPruner(_resnet(), start=1, end=2,
                                                                                            frequency=1),
                   EarlyBirdPruner(_resnet(), EXAMPLE)):
        for call in (lambda: pruner.step(True), lambda: pruner.step(interactive=True)):
            with pytest.raises(lt_plugin.UserError, match="interactive=True.*call step"):
                call()


def test_a_tuple_key_ranks_its_layers_together_under_global_pruning():
    model = _resnet()
    a, b = model.layer1[0].conv1, model.layer1[0].conv2
    names = ["layer1.0.conv1.weight", "layer1.0.conv2.weight"]
    joint = IMPPruner(model, EXAMPLE, pruning_ratio=0.5, pruning_ratio_dict={(a, b): 0.75})
    joint.step()
    # by hand: one threshold over both layers' |w|, the largest quarter of the 2 x 9216 kept
    theta_0 = _resnet().state_dict()
    scores = torch.cat([theta_0[n].abs().flatten() for n in names])
    kept = scores > torch.kthvalue(scores, scores.numel() - round(0.25 * scores.numel())).values
    assert torch.equal(torch.cat([joint.mask.tensors[n].flatten() for n in names]), kept)
    assert int(joint.mask.tensors[names[0]].sum()) != int(joint.mask.tensors[names[1]].sum())  # not per layer
    alone = IMPPruner(_resnet(), EXAMPLE, pruning_ratio=0.5, global_pruning=False,
                      pruning_ratio_dict={("layer1.0.conv1", "layer1.0.conv2"): 0.75})
    alone.step()  # Torch-Pruning's local pruning: each layer of the tuple on its own
    assert [int(alone.mask.tensors[n].sum()) for n in names] == [round(0.25 * 9216)] * 2
    with pytest.raises(lt_plugin.UserError, match="has no form in an IMP run folder"):
        joint.save_level("unused", model_name="test_resnet")
    gradual = lt_plugin.GradualPruner(_resnet(), pruning_ratio=0.5, start=0, end=1, frequency=1,
                                      global_pruning=True,
                                      pruning_ratio_dict={("layer1.0.conv1", "layer1.0.conv2"): 0.75})
    gradual.step()
    assert sum(int(gradual.mask.tensors[n].sum()) for n in names) == round(0.25 * 2 * 9216)


def test_a_parameter_in_ignored_layers_leaves_its_layer_whole():
    model = _resnet()
    weight = IMPPruner(model, EXAMPLE, pruning_ratio=0.5, ignored_layers=[model.layer1[0].conv1.weight])
    assert "layer1.0.conv1.weight" not in weight.mask.prunable and "layer1.0.conv2.weight" in weight.mask.prunable
    channel_model = _resnet()
    conv = channel_model.conv1[0]
    channel = IMPPruner(channel_model, EXAMPLE, pruning_ratio=0.5, granularity="channel",
                        ignored_layers=[conv.weight])
    channel.step()
    assert conv.out_channels == 16 and channel_model.conv1[3].out_channels < 16  # as ignoring the layer
    vit = timm.create_model("test_vit", num_classes=10, img_size=16, patch_size=4)
    assert IMPPruner(vit, EXAMPLE, pruning_ratio=0.5, ignored_layers=[vit.pos_embed]).step() is vit
    with pytest.raises(lt_plugin.UserError, match="cannot keep a parameter outside a layer"):
        IMPPruner(vit, EXAMPLE, pruning_ratio=0.5, granularity="channel", ignored_layers=[vit.pos_embed]).step()


def test_early_bird_regularize_takes_torch_prunings_generic_call():
    pruner = EarlyBirdPruner(_resnet(), EXAMPLE, pruning_ratio=0.5, penalty=1e-3)
    model = pruner.model
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 16, 16)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    gamma = model.bn1.weight if hasattr(model, "bn1") else model.conv1[1].weight
    before = gamma.grad.clone()
    pruner.regularize(model, loss)  # BasePruner.regularize(model, loss)
    torch.testing.assert_close(gamma.grad, before + 1e-3 * torch.sign(gamma.detach()))
    with pytest.raises(lt_plugin.UserError, match="scales only"):
        pruner.regularize(model, bias=True)


def test_gradual_pruner_takes_torch_prunings_positional_example_inputs():
    a = lt_plugin.GradualPruner(_resnet(), EXAMPLE, pruning_ratio=0.5, start=0, end=1, frequency=1)
    b = lt_plugin.GradualPruner(_resnet(), pruning_ratio=0.5, start=0, end=1, frequency=1)
    a.step()
    b.step()
    assert a.mask.distance(b.mask) == 0.0 and a.mask.density == pytest.approx(0.5, abs=1e-3)
    with pytest.raises(lt_plugin.UserError, match="ranks \\|w\\|"):
        lt_plugin.GradualPruner(_resnet(), EXAMPLE, tp.importance.GroupMagnitudeImportance())


class _DictModel(nn.Module):
    """A model that takes and returns dicts, as Hugging Face models do."""

    def __init__(self):
        super().__init__()
        self.net = _resnet()

    def forward(self, batch):
        return {"logits": self.net(batch["image"])}


def test_forward_fn_and_output_transform_give_channel_tickets_of_dict_models():
    model = _DictModel()
    batch = {"image": torch.zeros(1, 3, 16, 16)}
    run = dict(forward_fn=lambda m, inputs: m(inputs), output_transform=lambda out: out["logits"])
    with pytest.raises(UnsupportedModelError, match="Torch-Pruning cannot trace"):
        IMPPruner(_DictModel(), batch, pruning_ratio=0.5, granularity="channel").step()
    pruner = IMPPruner(model, batch, pruning_ratio=0.5, granularity="channel",
                       ignored_layers=[model.net.get_classifier()], **run)
    dense = _DictModel()
    pruner.step()
    assert model.net.fc.out_features == 10 and pruner.mask.density == pytest.approx(0.5, abs=0.02)
    x = {"image": torch.randn(2, 3, 16, 16)}
    with torch.no_grad():  # the same ticket as the masked dense model, its zeroed channels removed
        torch.testing.assert_close(model.eval()(x)["logits"], pruner.mask.apply(dense).eval()(x)["logits"],
                                   rtol=1e-4, atol=1e-4)
    searched = _DictModel()
    early_bird = EarlyBirdPruner(searched, batch, pruning_ratio=0.5, window=2, epsilon=1.0,
                                 ignored_layers=[searched.net.fc], **run)
    assert early_bird.update(1)
    ticket = early_bird.step().eval()
    assert ticket(x)["logits"].shape == (2, 10)
    assert sum(p.numel() for p in ticket.parameters()) < sum(p.numel() for p in searched.parameters())
    with pytest.raises(lt_plugin.UserError, match="forward_fn and output_transform"):
        IMPPruner(_resnet(), EXAMPLE, forward_fn=run["forward_fn"])
