"""The networks of Frankle & Carbin, ICLR 2019 (arXiv:1803.03635): LeNet-300-100 and Conv-2/4/6."""

from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn.functional as F
from timm.layers import to_2tuple
from torch import nn

from .base import PaperNet, linear_head


def _glorot_normal(module: nn.Module) -> None:
    """LTH Figure 2: "Gaussian Glorot" for every layer. The paper does not say how biases start; they start at
    zero, as in Glorot & Bengio (2010)."""
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        nn.init.xavier_normal_(module.weight)
        nn.init.zeros_(module.bias)



class LeNet300100(PaperNet):
    """LeNet-300-100 of Frankle & Carbin, ICLR 2019 (arXiv:1803.03635), Section 2 and Figure 2: fully connected
    layers of 300 and 100 ReLU units and the classifier, on flattened 28x28 MNIST digits (266,610 parameters with
    10 classes: 266,200 weights and 410 biases).

    Layer names are those of open_lth's models/mnist_lenet.py (``fc_layers.0``, ``fc_layers.1``, ``fc``), the same
    network. Initialisation is the paper's Gaussian Glorot (open_lth's default is kaiming normal instead), biases
    zero. `img_size` (an int or (height, width); timm passes its config's) sets the flattened input width,
    ``in_chans * height * width``.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 1, img_size: Union[int, Sequence[int]] = 28,
                 drop_rate: float = 0.0):
        super().__init__()
        height, width = to_2tuple(img_size)
        self.num_classes, self.in_chans = num_classes, in_chans
        self.num_features = self.head_hidden_size = 100
        self.fc_layers = nn.ModuleList([nn.Linear(in_chans * height * width, 300), nn.Linear(300, 100)])
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = linear_head(100, num_classes)
        self.apply(self._init_weights)

    _init_weights = staticmethod(_glorot_normal)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.fc_layers:
            x = F.relu(layer(x))
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self._classify(x, pre_logits)


class ConvN(PaperNet):
    """Conv-2, Conv-4 and Conv-6 of Frankle & Carbin, ICLR 2019 (arXiv:1803.03635), Section 3 and Figure 2, for
    CIFAR-10: blocks of two 3x3 convolutions (padding 1, ReLU, no BatchNorm) and a 2x2 max-pool, of 64, then 128,
    then 256 channels, then fully connected layers of 256 and 256 ReLU units and the classifier.

    The paper's table is the only definition (open_lth has no Conv-N). Initialisation is its Gaussian Glorot,
    biases zero. The first fully connected layer takes the flattened feature map, so its width depends on
    `img_size` (an int or (height, width); timm passes its config's 32x32). The layers the table lists give
    4,301,642, 2,425,930 and 2,262,602 parameters with 10 classes; the table's own totals are 4.3M, 2.4M and 1.7M,
    the last of which does not follow from the layers (the 4x4x256 = 4,096 features into 256 units alone are 1.05M
    weights on top of 1.15M in the convolutions).
    """

    def __init__(self, widths: Sequence[int], num_classes: int = 10, in_chans: int = 3,
                 img_size: Union[int, Sequence[int]] = 32, drop_rate: float = 0.0):
        super().__init__()
        height, width = to_2tuple(img_size)
        self.num_classes, self.in_chans = num_classes, in_chans
        self.num_features, self.head_hidden_size = widths[-1], 256
        layers, channels = [], in_chans
        for out_channels in widths:
            layers += [nn.Conv2d(channels, out_channels, 3, padding=1), nn.ReLU(inplace=True),
                       nn.Conv2d(out_channels, out_channels, 3, padding=1), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            channels = out_channels
        self.features = nn.Sequential(*layers)
        shrink = 2 ** len(widths)
        self.fc_layers = nn.ModuleList([nn.Linear(channels * (height // shrink) * (width // shrink), 256),
                                        nn.Linear(256, 256)])
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = linear_head(256, num_classes)
        self.apply(self._init_weights)

    _init_weights = staticmethod(_glorot_normal)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.fc_layers:
            x = F.relu(layer(x))
        return self._classify(x, pre_logits)
