"""The papers' reference networks as timm models (lt_plugin.networks): sizes checked against the sources' layer
sizes and parameter counts, timm's classifier API, and physical channel pruning through Torch-Pruning."""

import copy

import pytest
import timm
import torch
from torch import nn

import lt_plugin
from lt_plugin.experiment import takes_img_size
from lt_plugin.networks.lth import ConvN

MNIST = ((1, 28, 28), (0.1307,), (0.3081,))
CIFAR10 = ((3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


def conv(c_in, c_out, k=3, bias=True):
    return c_in * c_out * k * k + (c_out if bias else 0)


def linear(n_in, n_out):
    return n_in * n_out + n_out


def bn(c):
    return 2 * c


def basic_block(c_in, c_out):  # two 3x3 conv+BN, a 1x1 conv+BN projection where the width changes
    projection = conv(c_in, c_out, 1, bias=False) + bn(c_out) if c_in != c_out else 0
    return conv(c_in, c_out, bias=False) + bn(c_out) + conv(c_out, c_out, bias=False) + bn(c_out) + projection


def open_lth_resnet(d):  # stem, 3 segments of d blocks (16, 32, 64 channels), fc
    widths = [16] * d + [32] * d + [64] * d
    blocks = sum(basic_block(c_in, c_out) for c_in, c_out in zip([16] + widths[:-1], widths))
    return conv(3, 16, bias=False) + bn(16) + blocks + linear(64, 10)


RESNET18 = [(64, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 512), (512, 512)]
VGG16_WIDTHS = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]  # the plan without its max-pools
VGG16 = list(zip([3] + VGG16_WIDTHS[:-1], VGG16_WIDTHS))

# Parameter counts with 10 classes, from the layer sizes each source gives (an independent path from the modules).
EXPECTED_PARAMS = {
    # LTH Figure 2: 784-300-100-10, weights and biases: 235,200 + 300 + 30,000 + 100 + 1,000 + 10
    "lenet_300_100": 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10,
    # Conv-2: convs 3->64, 64->64 (3x3 with bias), pool to 16x16x64 = 16,384 features, FC 256, 256, 10
    "conv2": conv(3, 64) + conv(64, 64) + linear(16 * 16 * 64, 256) + linear(256, 256) + linear(256, 10),
    # Conv-4 by hand: convs 1,792 + 36,928 + 73,856 + 147,584 = 260,160; 8x8x128 = 8,192 features;
    # FC 8,192*256+256 = 2,097,408, 256*256+256 = 65,792, 256*10+10 = 2,570: 2,425,930 in all
    "conv4": 1_792 + 36_928 + 73_856 + 147_584 + 2_097_408 + 65_792 + 2_570,
    # Conv-6: Conv-4's convs, 128->256, 256->256, pool to 4x4x256 = 4,096 features, FC 256, 256, 10
    "conv6": (conv(3, 64) + conv(64, 64) + conv(64, 128) + conv(128, 128) + conv(128, 256) + conv(256, 256)
              + linear(4 * 4 * 256, 256) + linear(256, 256) + linear(256, 10)),
    # open_lth: ResNet-20 (D=3) is the 272,474 its models/test/test_cifar_resnet.py asserts; ResNet-56 is D=9
    "cifar_resnet20": open_lth_resnet(3),
    "cifar_resnet56": open_lth_resnet(9),
    # open_lth VGG-16: 13 conv (with bias) + BN, fc 512->10: the 14,728,266 of its models/test/test_cifar_vgg.py
    "cifar_vgg16": sum(conv(i, o) + bn(o) for i, o in VGG16) + linear(512, 10),
    # Lottery Pools ResNet-18: 3x3 stem of 64 + BN, [2, 2, 2, 2] basic blocks, 1x1 projections at 128/256/512, fc
    "cifar_resnet18": (conv(3, 64, bias=False) + bn(64) + sum(basic_block(c_in, c_out) for c_in, c_out in RESNET18)
                       + linear(512, 10)),
    # Early-Bird VGG-16: the same 13 conv without bias + BN, one Linear 512->10
    "cifar_vgg16_bn": sum(conv(i, o, bias=False) + bn(o) for i, o in VGG16) + linear(512, 10),
}
DATA = {"lenet_300_100": MNIST}
NAMES = list(EXPECTED_PARAMS)
# Tracing is the slow part (Conv-2's 16,384-wide flatten most of all): every small network, and one large one.
PRUNED = ["lenet_300_100", "conv2", "conv4", "conv6", "cifar_resnet20", "cifar_vgg16_bn"]


def build(name, **kwargs):
    torch.manual_seed(0)
    model = timm.create_model(name, **{"num_classes": 10, **kwargs}).eval()
    with torch.no_grad():  # BatchNorm statistics away from 0/1, so that a channel exported wrongly would show
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    return model


def inputs(name, batch=2):
    return torch.randn(batch, *DATA.get(name, CIFAR10)[0], generator=torch.Generator().manual_seed(0))


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_the_counts_are_the_sources_numbers():
    """The arithmetic above lands on the counts the sources assert (open_lth's model tests: 266,610, 272,474,
    14,728,266) and on those their layer tables imply."""
    assert EXPECTED_PARAMS["lenet_300_100"] == 266_610
    assert EXPECTED_PARAMS["conv2"] == 4_301_642 and EXPECTED_PARAMS["conv6"] == 2_262_602
    assert EXPECTED_PARAMS["conv4"] == 2_425_930
    assert EXPECTED_PARAMS["cifar_resnet20"] == 272_474 and EXPECTED_PARAMS["cifar_resnet56"] == 855_770
    assert EXPECTED_PARAMS["cifar_vgg16"] == 14_728_266
    assert EXPECTED_PARAMS["cifar_resnet18"] == 11_173_962
    assert EXPECTED_PARAMS["cifar_vgg16_bn"] == 14_728_266 - sum(VGG16_WIDTHS) == 14_724_042


@pytest.mark.parametrize("name", NAMES)
def test_builds_forwards_and_counts(name):
    assert timm.is_model(name)
    assert name in timm.list_models(module="networks")
    model = build(name)
    x = inputs(name)
    assert x.shape[1:] == timm.models.get_pretrained_cfg(name).input_size
    with torch.no_grad():
        assert model(x).shape == (2, 10)
    assert n_params(model) == EXPECTED_PARAMS[name]


@pytest.mark.parametrize("name", NAMES)
def test_pretrained_cfg(name):
    cfg = timm.models.get_pretrained_cfg(name)
    input_size, mean, std = DATA.get(name, CIFAR10)
    assert (cfg.input_size, cfg.mean, cfg.std, cfg.num_classes) == (input_size, mean, std, 10)
    assert not cfg.has_weights and cfg.paper_ids
    model = build(name)
    modules = dict(model.named_modules())
    assert modules[cfg.classifier] is model.get_classifier()
    if name == "lenet_300_100":
        assert cfg.first_conv is None
    else:
        assert isinstance(modules[cfg.first_conv], nn.Conv2d) and modules[cfg.first_conv].in_channels == 3
    with pytest.raises(RuntimeError, match="No pretrained weights exist"):
        timm.create_model(name, pretrained=True)


@pytest.mark.parametrize("name", NAMES)
def test_classifier_api(name):
    model = build(name)
    x = inputs(name)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert model.get_classifier() is linears[-1] and model.num_classes == 10
    with torch.no_grad():
        features = model.forward_features(x)
        assert torch.equal(model.forward_head(features), model(x))
        assert model.forward_head(features, pre_logits=True).shape == (2, model.head_hidden_size)
        model.reset_classifier(5)
        assert model.num_classes == 5 and model.get_classifier().out_features == 5
        assert model(x).shape == (2, 5)
        model.reset_classifier(0)
        assert model(x).shape == (2, model.head_hidden_size)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_kwargs_are_refused(name):
    with pytest.raises(TypeError, match="unexpected keyword argument 'not_an_option'"):
        timm.create_model(name, not_an_option=1)
    with pytest.raises(TypeError, match="drop_path_rate"):
        timm.create_model(name, drop_path_rate=0.1)


def test_input_channels_size_and_dropout():
    model = build("cifar_resnet20", in_chans=1, drop_rate=0.5)
    assert model.conv.in_channels == 1 and model.head_drop.p == 0.5
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    lenet = build("lenet_300_100", in_chans=3, img_size=32)  # the flattened width follows the input
    assert lenet.fc_layers[0].in_features == 3 * 32 * 32 and lenet(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    conv4 = build("conv4", img_size=64)
    assert conv4.fc_layers[0].in_features == 128 * 16 * 16 and conv4(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    # lt_plugin's experiments build the flattening networks for their image size, and only those
    assert takes_img_size("lenet_300_100") and takes_img_size("conv2") and not takes_img_size("cifar_resnet20")


def test_state_dict_names_are_the_references():
    """Checkpoints of the reference code map key for key (names read from each source file)."""
    keys = {name: set(build(name).state_dict()) for name in
            ("lenet_300_100", "cifar_resnet20", "cifar_vgg16", "cifar_resnet18", "cifar_vgg16_bn")}
    assert keys["lenet_300_100"] == {f"{m}.{p}" for m in ("fc_layers.0", "fc_layers.1", "fc")
                                     for p in ("weight", "bias")}
    assert {"conv.weight", "bn.running_var", "blocks.3.shortcut.0.weight", "blocks.3.shortcut.1.weight",
            "blocks.8.conv2.weight", "fc.weight"} <= keys["cifar_resnet20"]
    assert not any(k.startswith("blocks.4.shortcut") for k in keys["cifar_resnet20"])
    assert {"layers.0.conv.bias", "layers.0.bn.weight", "layers.3.conv.weight", "layers.16.bn.weight",
            "fc.bias"} <= keys["cifar_vgg16"]
    assert {"conv1.weight", "layer2.0.downsample.0.weight", "layer4.1.bn2.weight", "fc.weight"} <= \
        keys["cifar_resnet18"]
    assert {"feature.0.weight", "feature.1.running_mean", "feature.41.weight", "classifier.weight"} <= \
        keys["cifar_vgg16_bn"]


@pytest.mark.parametrize("name", PRUNED)
def test_torch_pruning_exports_a_smaller_equal_network(name):
    model = build(name)
    example = torch.zeros(1, *timm.models.get_pretrained_cfg(name).input_size)
    mask = lt_plugin.create_mask(model, example, density=0.5, granularity="channel")
    assert abs(mask.density - 0.5) < 0.05
    small = lt_plugin.export(model, mask, example).eval()
    masked = mask.apply(copy.deepcopy(model)).eval()
    x = inputs(name)
    with torch.no_grad():
        torch.testing.assert_close(small(x), masked(x), atol=1e-4, rtol=0)
    assert n_params(small) < n_params(model)
    assert small.get_classifier().out_features == 10


# ---- a physically pruned network initialised at its own size (Early-Bird's --retrain reinit) ----

class _WidthNet(nn.Module):
    """A timm-style network with its own `init_weights` (kaiming normal on fan-out, as timm's ResNet), of any width."""

    def __init__(self, width):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                      nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU())
        self.fc = nn.Linear(2 * width, 10)
        self.init_weights()

    def init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))

    def get_classifier(self):
        return self.fc


def _stds(model):
    return {n: t.std().item() for n, t in model.state_dict().items() if t.ndim > 1}


def _pruned_in_half(dense, example, ignored_layers):
    """Half the channels of every Torch-Pruning group removed."""
    from lt_plugin.masks import resolve_ignored
    from lt_plugin.structure import ChannelStructure
    structure = ChannelStructure(dense, example, resolve_ignored(dense, ignored_layers), scope="layerwise")
    return lt_plugin.export(dense, structure.mask_from_plan(structure.plans_at_ratios([0.5])[0.5]), example)


@pytest.mark.parametrize("make, small_of, ignored", [
    (lambda: _WidthNet(64), lambda: _WidthNet(32), ()),  # the model's init_weights()
    (lambda: timm.create_model("conv2"), lambda: ConvN(widths=[32]),  # the papers' networks' _init_weights
     ("fc_layers.0", "fc_layers.1")),
])
def test_reinitialise_gives_a_pruned_network_the_scale_of_a_network_built_at_its_size(make, small_of, ignored):
    from lt_plugin.networks.base import reinitialise
    torch.manual_seed(0)
    dense, example = make(), torch.randn(1, 3, 32, 32)
    small = _pruned_in_half(dense, example, list(ignored))
    fresh = small_of()
    assert {n: t.shape for n, t in small.state_dict().items()} == {n: t.shape for n, t in fresh.state_dict().items()}
    sliced, expected = _stds(small), _stds(fresh)
    reinitialise(small, seed=1)
    again = reinitialise(copy.deepcopy(small), seed=1)
    assert all(torch.equal(a, b) for a, b in zip(small.state_dict().values(), again.state_dict().values()))
    got = _stds(small)
    for name, std in expected.items():  # every tensor has >= 2,560 entries: its std is within 3% of the scale
        assert got[name] == pytest.approx(std, rel=0.1), name
    # slicing the dense initialisation keeps the dense network's fan, a scale the small network would not have
    assert any(abs(sliced[n] / expected[n] - 1) > 0.25 for n in expected)
    for name, buffer in small.state_dict().items():
        if name.endswith("running_var"):
            assert torch.equal(buffer, torch.ones_like(buffer)), name
