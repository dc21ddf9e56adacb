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

from typing import Tuple

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .base import CIFAR10_MEAN, CIFAR10_STD, MNIST_MEAN, MNIST_STD
from .cifar import CifarResNet18, EarlyBirdVGG, OpenLthCifarResNet, OpenLthCifarVGG
from .lth import ConvN, LeNet300100

__all__ = ["LeNet300100", "ConvN", "OpenLthCifarResNet", "OpenLthCifarVGG", "CifarResNet18", "EarlyBirdVGG"]

LTH_PAPER = "The Lottery Ticket Hypothesis: Finding Sparse, Trainable Neural Networks"


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
