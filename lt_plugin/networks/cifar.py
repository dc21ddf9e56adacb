"""The CIFAR networks of the reference code: open_lth's ResNet-20/56 and VGG-16, Lottery Pools' ResNet-18,
Early-Bird's VGG-16 with BatchNorm."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import PooledPaperNet, linear_head


def _open_lth_init(module: nn.Module) -> None:
    """open_lth's default_hparams for its CIFAR ResNets and VGGs: ``model_init='kaiming_normal'``
    (models/initializers.py: ``kaiming_normal_`` on Conv2d/Linear weights, biases left at PyTorch's default) and
    ``batchnorm_init='uniform'`` (models/bn_initializers.py: BatchNorm weight ~ U[0, 1), bias 0)."""
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        nn.init.kaiming_normal_(module.weight)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.uniform_(module.weight, 0.0, 1.0)
        nn.init.zeros_(module.bias)


class OpenLthBlock(nn.Module):
    """open_lth models/cifar_resnet.py ``Model.Block``: two 3x3 conv+BN, the shortcut added before the last ReLU;
    a 1x1 conv+BN projection (stride 2) where the block changes width or resolution, otherwise the identity."""

    def __init__(self, in_channels: int, out_channels: int, downsample: bool):
        super().__init__()
        stride = 2 if downsample else 1
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if downsample or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class OpenLthCifarResNet(PooledPaperNet):
    """The CIFAR ResNet of open_lth models/cifar_resnet.py (github.com/facebookresearch/open_lth), ResNet-(6D+2):
    a 3x3 stem of 16 channels with BN and ReLU, three segments of D `OpenLthBlock` of 16, 32 and 64 channels (the
    first block of segments 2 and 3 halves the resolution), global average pooling and one Linear.

    D=3 is ``cifar_resnet_20`` (272,474 parameters with 10 classes, the count open_lth's
    models/test/test_cifar_resnet.py asserts), D=9 ``cifar_resnet_56`` (855,770). Initialised by `_open_lth_init`.
    """

    def __init__(self, depth: int, num_classes: int = 10, in_chans: int = 3, drop_rate: float = 0.0):
        super().__init__()
        self.num_classes, self.in_chans = num_classes, in_chans
        self.num_features = self.head_hidden_size = 64
        self.conv = nn.Conv2d(in_chans, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        blocks, channels = [], 16
        for segment, width in enumerate((16, 32, 64)):
            for index in range(depth):
                blocks.append(OpenLthBlock(channels, width, downsample=segment > 0 and index == 0))
                channels = width
        self.blocks = nn.Sequential(*blocks)
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = linear_head(64, num_classes)
        self.apply(self._init_weights)

    _init_weights = staticmethod(_open_lth_init)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(F.relu(self.bn(self.conv(x))))


VGG16_PLAN = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


class OpenLthConvModule(nn.Module):
    """open_lth models/cifar_vgg.py ``Model.ConvModule``: a 3x3 convolution (with bias), BN, ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class OpenLthCifarVGG(PooledPaperNet):
    """The CIFAR VGG-16 of open_lth models/cifar_vgg.py (github.com/facebookresearch/open_lth), ``cifar_vgg_16``:
    `VGG16_PLAN` of `OpenLthConvModule` and 2x2 max-pools (four: the last block has none), average pooling, one
    Linear 512 -> classes. 14,728,266 parameters with 10 classes, the count open_lth's models/test/test_cifar_vgg.py
    asserts. open_lth pools with ``nn.AvgPool2d(2)``, which at 32x32 (a 2x2 map) is this global average pool.
    Initialised by `_open_lth_init`.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 3, drop_rate: float = 0.0):
        super().__init__()
        self.num_classes, self.in_chans = num_classes, in_chans
        self.num_features = self.head_hidden_size = 512
        layers, channels = [], in_chans
        for spec in VGG16_PLAN:
            if spec == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers.append(OpenLthConvModule(channels, spec))
                channels = spec
        self.layers = nn.Sequential(*layers)
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = linear_head(512, num_classes)
        self.apply(self._init_weights)

    _init_weights = staticmethod(_open_lth_init)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def _torchvision_resnet_init(module: nn.Module) -> None:
    """Lottery Pools CIFAR/models/ResNet.py (torchvision's): convolutions kaiming normal (fan_out, ReLU), BatchNorm
    weight 1 and bias 0, the Linear left at PyTorch's default."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class BasicBlock(nn.Module):
    """Lottery Pools CIFAR/models/ResNet.py ``BasicBlock`` (torchvision's): two 3x3 conv+BN, the shortcut added
    before the last ReLU; `downsample` (1x1 conv+BN) where the block changes width or resolution."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class CifarResNet18(PooledPaperNet):
    """The CIFAR ResNet-18 of Lottery Pools, Yin et al., AAAI 2023 (arXiv:2208.10842), github.com/luuyin/Lottery-pools
    CIFAR/models/ResNet.py ``resnet18`` with ``imagenet=False``: a 3x3 stride-1 stem of 64 channels with BN and
    ReLU and no max-pool, four stages of two `BasicBlock` of 64, 128, 256 and 512 channels (stride 2 from the
    second), adaptive average pooling, one Linear. 11,173,962 parameters with 10 classes.

    Early-Bird (github.com/GATECH-EIC/Early-Bird-Tickets) has only an ImageNet ResNet-18 (models/resnet_imagenet.py:
    7x7 stem and max-pool), so this is the Lottery Pools one. Its in-network input normaliser is left to the data
    pipeline (see the module docstring). Initialised by `_torchvision_resnet_init`.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 3, drop_rate: float = 0.0):
        super().__init__()
        self.num_classes, self.in_chans = num_classes, in_chans
        self.num_features = self.head_hidden_size = 512
        self.conv1 = nn.Conv2d(in_chans, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        channels = 64
        for stage, width in enumerate((64, 128, 256, 512), start=1):
            stride = 1 if stage == 1 else 2
            self.add_module(f"layer{stage}", nn.Sequential(BasicBlock(channels, width, stride),
                                                          BasicBlock(width, width, 1)))
            channels = width
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = linear_head(512, num_classes)
        self.apply(self._init_weights)

    _init_weights = staticmethod(_torchvision_resnet_init)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def _early_bird_init(module: nn.Module) -> None:
    """Early-Bird models/vgg.py ``vgg._initialize_weights`` (network slimming's): convolutions N(0, 2/(3*3*out)),
    i.e. kaiming normal fan_out; BatchNorm weight 0.5 and bias 0; the Linear N(0, 0.01^2) with bias 0."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.constant_(module.weight, 0.5)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, 0.0, 0.01)
        nn.init.zeros_(module.bias)


class EarlyBirdVGG(PooledPaperNet):
    """The CIFAR VGG-16 of Early-Bird Tickets, You et al., ICLR 2020 (arXiv:1909.11957),
    github.com/GATECH-EIC/Early-Bird-Tickets models/vgg.py ``vgg(depth=16)``: ``defaultcfg[16]`` (`VGG16_PLAN`) of
    3x3 convolutions without bias, each followed by BN and ReLU, four 2x2 max-pools, average pooling, and the head as
    written there: a single Linear 512 -> classes (``self.classifier``; no hidden layers). 14,724,042 parameters
    with 10 classes: open_lth's VGG-16 less its 4,224 conv biases.

    The reference pools with ``nn.AvgPool2d(2)``, at 32x32 this global average pool. Initialised by
    `_early_bird_init`.
    """

    classifier_name = "classifier"

    def __init__(self, num_classes: int = 10, in_chans: int = 3, drop_rate: float = 0.0):
        super().__init__()
        self.num_classes, self.in_chans = num_classes, in_chans
        self.num_features = self.head_hidden_size = 512
        layers, channels = [], in_chans
        for spec in VGG16_PLAN:
            if spec == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, spec, 3, padding=1, bias=False), nn.BatchNorm2d(spec),
                           nn.ReLU(inplace=True)]
                channels = spec
        self.feature = nn.Sequential(*layers)
        self.head_drop = nn.Dropout(drop_rate)
        self.classifier = linear_head(512, num_classes)
        self.apply(self._init_weights)

    _init_weights = staticmethod(_early_bird_init)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature(x)
