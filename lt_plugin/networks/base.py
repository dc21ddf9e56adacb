"""What the papers' networks share: timm's classifier API over one Linear classifier, their data statistics."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def linear_head(in_features: int, num_classes: int) -> nn.Module:
    """timm's convention: 0 classes means no classifier (the model then returns its pre-logit features)."""
    return nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()



class PaperNet(nn.Module):
    """timm's classifier API over one Linear classifier, the attribute named by `classifier_name`.

    Subclasses set `num_classes`, `in_chans`, `num_features`, `head_hidden_size` (the classifier's input width) and
    `head_drop`, and initialise every layer with `_init_weights`; `reset_classifier` uses it too, so a new head
    starts as the reference's head does.
    """

    classifier_name = "fc"

    def get_classifier(self) -> nn.Module:
        return getattr(self, self.classifier_name)

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        head = linear_head(self.head_hidden_size, num_classes)
        head.apply(self._init_weights)
        setattr(self, self.classifier_name, head)

    def _classify(self, x: torch.Tensor, pre_logits: bool) -> torch.Tensor:
        x = self.head_drop(x)
        return x if pre_logits else self.get_classifier()(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class PooledPaperNet(PaperNet):
    """A convolutional network whose head is global average pooling and the classifier."""

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self._classify(F.adaptive_avg_pool2d(x, 1).flatten(1), pre_logits)


def reinitialise(model: nn.Module, seed: int) -> nn.Module:
    """Initialise `model` afresh at its own size, as its constructor initialises a network of these shapes (Early-Bird's
    reference builds the pruned network and lets it initialise itself): every layer's `reset_parameters` (torch's
    defaults, which depend on the layer's own fan-in), then the model's own scheme: timm's `init_weights()`, or the
    `_init_weights` the papers' networks apply to every module. Seeded with `seed`; returns `model`."""
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        with torch.no_grad():
            for module in model.modules():
                if callable(getattr(module, "reset_parameters", None)):
                    module.reset_parameters()
            if callable(getattr(model, "init_weights", None)):
                model.init_weights()
            elif callable(getattr(model, "_init_weights", None)):
                model.apply(model._init_weights)
    return model
