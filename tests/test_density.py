"""Density, the x-axis of every result, counted by hand on two networks small enough to write down: a
conv-BN-ReLU-linear stack and a residual block, for weight and channel tickets and for `lt-plugin check`'s columns.

A channel mask also covers BatchNorm parameters and buffers, biases and the classifier's input columns; density
counts only the prunable Conv and Linear weights (the classifier left out), as these hand counts do.
"""

import pytest
import torch
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from lt_plugin import create_mask
from lt_plugin.check import NUM_CLASSES, check_model
from lt_plugin.masks import resolve_ignored
from lt_plugin.structure import ChannelStructure

CLASSES = 3
X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


class _Classified(nn.Module):
    """timm's classifier API over the Linear `head`, which lt_plugin leaves unpruned."""

    def get_classifier(self):
        return self.head

    def reset_classifier(self, num_classes):
        self.head = nn.Linear(self.head.in_features, num_classes)


class HandCountedStack(_Classified):
    """conv1 3->4 (3x3) BN ReLU, conv2 4->6 (3x3) BN ReLU, global average pool, fc1 6->5 ReLU, head 5->classes.

    Prunable weights: conv1 4*3*9 = 108, conv2 6*4*9 = 216, fc1 5*6 = 30; 354 in all. Channel groups: conv1's 4
    outputs (with bn1 and conv2's inputs), conv2's 6 (with bn2 and fc1's inputs), fc1's 5 (with the head's inputs).
    """

    def __init__(self, num_classes=CLASSES, in_chans=3):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(in_chans, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.fc1, self.head = nn.Linear(6, 5), nn.Linear(5, num_classes)

    def forward(self, x):
        x = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        return self.head(F.relu(self.fc1(x.mean(dim=(2, 3)))))


class HandCountedResidual(_Classified):
    """stem 3->4 (3x3) BN ReLU, then a basic block: conv1 4->4 BN ReLU, conv2 4->4 BN, added to the stem's output,
    ReLU, global average pool, head 4->classes.

    Prunable weights: stem 108, conv1 144, conv2 144; 396 in all. Channel groups: the residual channels (the stem's
    and conv2's outputs, bn0, bn2, conv1's and the head's inputs, coupled by the addition) and conv1's outputs
    (with bn1 and conv2's inputs).
    """

    def __init__(self, num_classes=CLASSES, in_chans=3):
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(in_chans, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.conv1, self.bn1 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.head = nn.Linear(4, num_classes)

    def forward(self, x):
        h = F.relu(self.bn0(self.stem(x)))
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(h)))))
        return self.head(F.relu(h + y).mean(dim=(2, 3)))


default_cfgs = generate_default_cfgs({name: dict(input_size=(3, 32, 32), mean=(0.5,) * 3, std=(0.5,) * 3,
                                                 num_classes=CLASSES, classifier="head")
                                      for name in ("hand_counted_stack", "hand_counted_residual")})


@register_model
def hand_counted_stack(pretrained=False, **kwargs):
    return build_model_with_cfg(HandCountedStack, "hand_counted_stack", pretrained, **kwargs)


@register_model
def hand_counted_residual(pretrained=False, **kwargs):
    return build_model_with_cfg(HandCountedResidual, "hand_counted_residual", pretrained, **kwargs)


# Per network: its channel groups {a module in the group: the group's letter} and channels per group; the kept
# prunable weights and the exported model's parameters (BatchNorm scales and shifts, the biases and the head
# included) when each group loses r[letter] channels.
def _stack_kept(r):
    a, b, c = 4 - r["a"], 6 - r["b"], 5 - r["c"]
    return a * 3 * 9 + b * a * 9 + c * b


def _stack_params(r, classes):
    a, b, c = 4 - r["a"], 6 - r["b"], 5 - r["c"]
    return a * 27 + 2 * a + b * a * 9 + 2 * b + (c * b + c) + (classes * c + classes)


def _residual_kept(r):
    a, b = 4 - r["a"], 4 - r["b"]
    return a * 27 + b * a * 9 + a * b * 9


def _residual_params(r, classes):
    a, b = 4 - r["a"], 4 - r["b"]
    return a * 27 + 2 * a + b * a * 9 + 2 * b + a * b * 9 + 2 * a + (classes * a + classes)


NETWORKS = {
    "hand_counted_stack": dict(cls=HandCountedStack, total=354, groups={"conv1": "a", "conv2": "b", "fc1": "c"},
                               channels={"a": 4, "b": 6, "c": 5}, kept=_stack_kept, params=_stack_params),
    "hand_counted_residual": dict(cls=HandCountedResidual, total=396,
                                  groups={"stem": "a", "conv2": "a", "conv1": "b"}, channels={"a": 4, "b": 4},
                                  kept=_residual_kept, params=_residual_params),
}


def _build(name):
    torch.manual_seed(0)
    return NETWORKS[name]["cls"]().eval()


def _removed(net, plan):
    """Channels each group loses, from a plan's entries (every entry names a module of its group)."""
    removed = dict.fromkeys(net["channels"], 0)
    for root, _, idxs in plan:
        removed[net["groups"][root]] += len(idxs)
    return removed


def test_hand_written_plans_give_the_hand_counted_density_layer_by_layer():
    # The stack loses conv1's channel 1, conv2's channels 0 and 3, fc1's output 2: conv1 keeps 3*3*9 = 81,
    # conv2 4*3*9 = 108, fc1 4*4 = 16 weights.
    stack = _build("hand_counted_stack")
    mask = ChannelStructure(stack, X, resolve_ignored(stack)).mask_from_plan(
        [["conv1", True, [1]], ["conv2", True, [0, 3]], ["fc1", True, [2]]])
    kept = {name: int(mask.tensors[name].sum()) for name in mask.prunable}
    assert kept == {"conv1.weight": 81, "conv2.weight": 108, "fc1.weight": 16}
    assert mask.density == 205 / 354
    # what the density leaves out is masked too: BatchNorm's channel, fc1's bias entry, the head's input column
    assert mask.tensors["bn1.running_var"].tolist() == [True, False, True, True]
    assert not mask.tensors["fc1.bias"][2] and not mask.tensors["head.weight"][:, 2].any()
    # The residual block loses residual channel 2 and conv1's outputs 0 and 3: the stem keeps 3*3*9 = 81, conv1
    # 2 outputs of 3 inputs (54), conv2 3 outputs of 2 inputs (54).
    block = _build("hand_counted_residual")
    mask = ChannelStructure(block, X, resolve_ignored(block)).mask_from_plan(
        [["stem", True, [2]], ["conv1", True, [0, 3]]])
    kept = {name: int(mask.tensors[name].sum()) for name in mask.prunable}
    assert kept == {"stem.weight": 81, "conv1.weight": 54, "conv2.weight": 54}
    assert mask.density == 189 / 396
    assert not mask.tensors["bn2.weight"][2] and not mask.tensors["head.weight"][:, 2].any()


@pytest.mark.parametrize("name", list(NETWORKS))
def test_created_tickets_have_the_hand_counted_density(name):
    net, model = NETWORKS[name], _build(name)
    for target in (0.7, 0.4):
        channel = create_mask(model, X, target, "channel")
        assert channel.density == net["kept"](_removed(net, channel.plan)) / net["total"]
        weight = create_mask(model, X, target, "weight")  # random weights: no ties at the threshold
        assert weight.density == round(target * net["total"]) / net["total"]


@pytest.mark.parametrize("name", list(NETWORKS))
def test_check_reports_the_hand_counted_density_and_parameters(name):
    net = NETWORKS[name]
    dense_params = net["params"](dict.fromkeys(net["channels"], 0), NUM_CLASSES)  # check's classifier
    for row in check_model(name, granularity="channel")["rows"]:
        # some number of channels removed from each group gives both columns exactly
        counts = [{}]
        for group, n in net["channels"].items():
            counts = [{**c, group: r} for c in counts for r in range(n)]
        matches = [r for r in counts if row["density"] == net["kept"](r) / net["total"]
                   and row["params"] == net["params"](r, NUM_CLASSES) / dense_params]
        assert matches, row
    for row in check_model(name, granularity="weight")["rows"]:
        kept = round(row["target"] * net["total"])
        assert row["density"] == kept / net["total"]
        assert row["params"] == (dense_params - (net["total"] - kept)) / dense_params
