"""The lottery-ticket papers' reference networks, registered as timm models.

Importing this module (``import lt_plugin`` does) registers them in timm's registry, so that
``timm.create_model("cifar_resnet20", num_classes=10)`` builds one like any timm model and every strategy can
train one by name (``--model cifar_resnet20``). Results are comparable with the papers only on the papers' own
networks; timm's ``resnet18`` or ``vgg16_bn`` are ImageNet networks with other stems, heads and sizes.

================  =====================================================================================
timm name         source it follows
================  =====================================================================================
lenet_300_100     Frankle & Carbin, ICLR 2019 (arXiv:1803.03635), Section 2 and Figure 2 (Lenet);
                  layer names as open_lth's models/mnist_lenet.py (github.com/facebookresearch/open_lth)
conv2/4/6         Frankle & Carbin, ICLR 2019, Section 3 and Figure 2 (Conv-2/4/6); the paper defines them,
                  open_lth has no Conv-N
cifar_resnet20    open_lth models/cifar_resnet.py, ``cifar_resnet_20``
cifar_resnet56    open_lth models/cifar_resnet.py, ``cifar_resnet_56``
cifar_vgg16       open_lth models/cifar_vgg.py, ``cifar_vgg_16``
cifar_resnet18    Lottery Pools (github.com/luuyin/Lottery-pools) CIFAR/models/ResNet.py, ``resnet18`` with
                  ``imagenet=False``
cifar_vgg16_bn    Early-Bird Tickets (github.com/GATECH-EIC/Early-Bird-Tickets) models/vgg.py, ``vgg`` with
                  ``depth=16`` (``defaultcfg[16]``)
================  =====================================================================================

Parameter and submodule names are the reference code's, so a state dict saved by it maps key for key (Lottery
Pools' also holds its input normaliser's ``normalize.mean``/``normalize.std`` buffers, to be dropped first). Two
choices apply to all of them: the input is normalised by the data pipeline with the pretrained config's mean/std,
as timm models expect, not inside the network (Lottery Pools' ``NormalizeByChannelMeanStd``); and the convolutional
networks pool globally, which at 32x32 is exactly the references' ``AvgPool2d(2)``/``avg_pool2d(x, x.size(3))``
and keeps other sizes working. ``drop_rate`` is timm's dropout before the classifier only, 0 by default: none of
the reference definitions has a dropout layer.

No weights are published for these networks: each pretrained config gives its dataset's input size, mean/std and
class count and no weight location, so ``pretrained=True`` fails with timm's "No pretrained weights exist" error
(a local file still loads through ``pretrained_cfg_overlay=dict(file=...)``, as ``--pretrained-file`` does).
"""

from __future__ import annotations

from typing import Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from timm.layers import to_2tuple
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

__all__ = ["LeNet300100", "ConvN", "OpenLthCifarResNet", "OpenLthCifarVGG", "CifarResNet18", "EarlyBirdVGG"]

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
LTH_PAPER = "The Lottery Ticket Hypothesis: Finding Sparse, Trainable Neural Networks"


def _linear_head(in_features: int, num_classes: int) -> nn.Module:
    """timm's convention: 0 classes means no classifier (the model then returns its pre-logit features)."""
    return nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()


def _glorot_normal(module: nn.Module) -> None:
    """LTH Figure 2: "Gaussian Glorot" for every layer. The paper does not say how biases start; they start at
    zero, as in Glorot & Bengio (2010)."""
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        nn.init.xavier_normal_(module.weight)
        nn.init.zeros_(module.bias)


class _PaperNet(nn.Module):
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
        head = _linear_head(self.head_hidden_size, num_classes)
        head.apply(self._init_weights)
        setattr(self, self.classifier_name, head)

    def _classify(self, x: torch.Tensor, pre_logits: bool) -> torch.Tensor:
        x = self.head_drop(x)
        return x if pre_logits else self.get_classifier()(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class _PooledPaperNet(_PaperNet):
    """A convolutional network whose head is global average pooling and the classifier."""

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self._classify(F.adaptive_avg_pool2d(x, 1).flatten(1), pre_logits)


class LeNet300100(_PaperNet):
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
        self.fc = _linear_head(100, num_classes)
        self.apply(self._init_weights)

    _init_weights = staticmethod(_glorot_normal)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.fc_layers:
            x = F.relu(layer(x))
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self._classify(x, pre_logits)


class ConvN(_PaperNet):
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
        self.fc = _linear_head(256, num_classes)
        self.apply(self._init_weights)

    _init_weights = staticmethod(_glorot_normal)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.fc_layers:
            x = F.relu(layer(x))
        return self._classify(x, pre_logits)


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


class OpenLthCifarResNet(_PooledPaperNet):
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
        self.fc = _linear_head(64, num_classes)
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


class OpenLthCifarVGG(_PooledPaperNet):
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
        self.fc = _linear_head(512, num_classes)
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


class CifarResNet18(_PooledPaperNet):
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
        self.fc = _linear_head(512, num_classes)
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


class EarlyBirdVGG(_PooledPaperNet):
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
        self.classifier = _linear_head(512, num_classes)
        self.apply(self._init_weights)

    _init_weights = staticmethod(_early_bird_init)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature(x)


def _cfg(input_size: Tuple[int, int, int], mean, std, classifier: str = "fc", **kwargs) -> dict:
    """A pretrained config without a weight location: the data settings and head/stem names only."""
    return dict(input_size=input_size, mean=mean, std=std, num_classes=10, crop_pct=1.0, classifier=classifier,
                **kwargs)


_OPEN_LTH = dict(license="mit", origin_url="https://github.com/facebookresearch/open_lth")
_CIFAR = dict(input_size=(3, 32, 32), mean=CIFAR10_MEAN, std=CIFAR10_STD)
_CONV_N = dict(_CIFAR, first_conv="features.0", fixed_input_size=True, paper_ids="arXiv:1803.03635",
               paper_name=LTH_PAPER)
_OPEN_LTH_RESNET = dict(_CIFAR, **_OPEN_LTH, first_conv="conv", paper_ids=("arXiv:1512.03385", "arXiv:1912.05671"))

default_cfgs = generate_default_cfgs({
    "lenet_300_100": _cfg((1, 28, 28), MNIST_MEAN, MNIST_STD, fixed_input_size=True, paper_ids="arXiv:1803.03635",
                          paper_name=LTH_PAPER, **_OPEN_LTH),
    "conv2": _cfg(**_CONV_N),
    "conv4": _cfg(**_CONV_N),
    "conv6": _cfg(**_CONV_N),
    "cifar_resnet20": _cfg(**_OPEN_LTH_RESNET),
    "cifar_resnet56": _cfg(**_OPEN_LTH_RESNET),
    "cifar_vgg16": _cfg(**_CIFAR, **_OPEN_LTH, first_conv="layers.0.conv",
                        paper_ids=("arXiv:1409.1556", "arXiv:1912.05671")),
    "cifar_resnet18": _cfg(**_CIFAR, first_conv="conv1", paper_ids=("arXiv:1512.03385", "arXiv:2208.10842"),
                           origin_url="https://github.com/luuyin/Lottery-pools"),
    "cifar_vgg16_bn": _cfg(**_CIFAR, classifier="classifier", first_conv="feature.0", license="mit",
                           paper_ids=("arXiv:1409.1556", "arXiv:1909.11957"),
                           origin_url="https://github.com/GATECH-EIC/Early-Bird-Tickets"),
})


@register_model
def lenet_300_100(pretrained: bool = False, **kwargs) -> LeNet300100:
    """LeNet-300-100 (LTH, MNIST); see `LeNet300100`."""
    return build_model_with_cfg(LeNet300100, "lenet_300_100", pretrained, **kwargs)


@register_model
def conv2(pretrained: bool = False, **kwargs) -> ConvN:
    """Conv-2 (LTH, CIFAR-10): 64, 64, pool; see `ConvN`."""
    return build_model_with_cfg(ConvN, "conv2", pretrained, widths=(64,), **kwargs)


@register_model
def conv4(pretrained: bool = False, **kwargs) -> ConvN:
    """Conv-4 (LTH, CIFAR-10): 64, 64, pool, 128, 128, pool; see `ConvN`."""
    return build_model_with_cfg(ConvN, "conv4", pretrained, widths=(64, 128), **kwargs)


@register_model
def conv6(pretrained: bool = False, **kwargs) -> ConvN:
    """Conv-6 (LTH, CIFAR-10): 64, 64, pool, 128, 128, pool, 256, 256, pool; see `ConvN`."""
    return build_model_with_cfg(ConvN, "conv6", pretrained, widths=(64, 128, 256), **kwargs)


@register_model
def cifar_resnet20(pretrained: bool = False, **kwargs) -> OpenLthCifarResNet:
    """open_lth's ``cifar_resnet_20``; see `OpenLthCifarResNet`."""
    return build_model_with_cfg(OpenLthCifarResNet, "cifar_resnet20", pretrained, depth=3, **kwargs)


@register_model
def cifar_resnet56(pretrained: bool = False, **kwargs) -> OpenLthCifarResNet:
    """open_lth's ``cifar_resnet_56``; see `OpenLthCifarResNet`."""
    return build_model_with_cfg(OpenLthCifarResNet, "cifar_resnet56", pretrained, depth=9, **kwargs)


@register_model
def cifar_vgg16(pretrained: bool = False, **kwargs) -> OpenLthCifarVGG:
    """open_lth's ``cifar_vgg_16``; see `OpenLthCifarVGG`."""
    return build_model_with_cfg(OpenLthCifarVGG, "cifar_vgg16", pretrained, **kwargs)


@register_model
def cifar_resnet18(pretrained: bool = False, **kwargs) -> CifarResNet18:
    """Lottery Pools' CIFAR ResNet-18; see `CifarResNet18`."""
    return build_model_with_cfg(CifarResNet18, "cifar_resnet18", pretrained, **kwargs)


@register_model
def cifar_vgg16_bn(pretrained: bool = False, **kwargs) -> EarlyBirdVGG:
    """Early-Bird's CIFAR VGG-16 with BatchNorm; see `EarlyBirdVGG`."""
    return build_model_with_cfg(EarlyBirdVGG, "cifar_vgg16_bn", pretrained, **kwargs)
