"""timm and Accelerate habits: models built at the image size, inputs that do not fit reported as such, --sync-bn
converted and converted back, and `lt-plugin check`."""

import copy
import dataclasses
import sys
from pathlib import Path

import pytest
import timm
import torch
from timm.layers import BatchNormAct2d
from torch import nn

import lt_plugin
from lt_plugin import train
from lt_plugin.callbacks import Lambda
from lt_plugin.cli import main as cli_main
from lt_plugin.experiment import Experiment, takes_img_size
from lt_plugin.masks import magnitude_mask, prunable_weight_names
from lt_plugin.train import (TrainConfig, convert_sync_batchnorm, fit, make_accelerator,
                             revert_sync_batchnorm)

sys.path.insert(0, str(Path(__file__).resolve().parent / "jobs"))
from tiny_training import conv_bn_model, image_data  # noqa: E402


def one_line_error(argv, capsys) -> str:
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


# ---------------------------------------------------------------- image size

def test_image_size_builds_models_that_take_one_and_channel_tickets_work_at_it():
    strict = Experiment(model="test_vit3", image_size=16)  # timm builds it for 160x160 inputs, and only those
    assert strict.timm_kwargs(10) == {"num_classes": 10, "img_size": 16}
    assert strict.create_model(10, seed=0)(strict.example_inputs()).shape == (1, 10)
    vit = Experiment(model="test_vit", image_size=16)
    model = vit.create_model(10, seed=0)
    assert tuple(model.patch_embed.img_size) == (16, 16)
    example = vit.example_inputs()
    mask = lt_plugin.create_mask(model, example, 0.5, "channel")
    assert lt_plugin.export(model, mask, example)(example).shape == (1, 10)
    assert "img_size" not in Experiment(model="test_resnet").timm_kwargs(10)  # ResNet takes no img_size
    assert Experiment(model="test_vit", model_kwargs={"img_size": 32}, image_size=32).timm_kwargs(3)["img_size"] == 32


@pytest.mark.parametrize("settings, message", [
    (dict(model="test_vit3", image_size=16, model_kwargs={"img_size": 32}),
     "test_vit3 was built for 32x32 inputs (img_size in --model-kwargs), not 16x16"),
    (dict(model="test_convnext", image_size=16), "test_convnext needs inputs of at least 32x32 pixels"),
    (dict(model="test_vit", image_size=4),
     "the 4x4 input does not fit test_vit: it breaks at layer patch_embed (PatchEmbed): AssertionError: Input height"),
])
def test_an_input_that_does_not_fit_is_reported_as_such(settings, message):
    with pytest.raises(lt_plugin.UserError) as caught:
        Experiment(**settings).create_model(10, seed=0)
    assert message in str(caught.value) and "Torch-Pruning" not in str(caught.value)


# ---------------------------------------------------------------- --sync-bn

def test_sync_bn_converts_and_converts_back_with_the_same_tensors():
    model = Experiment(model="test_efficientnet").create_model(10, seed=0).eval()
    assert any(isinstance(m, BatchNormAct2d) for m in model.modules())  # timm's norm + activation layers too
    inputs = torch.randn(2, 3, 16, 16)
    state, expected = model.state_dict(keep_vars=True), model(inputs)
    types = {name: type(m) for name, m in model.named_modules()}
    mask = magnitude_mask(model, 0.5, prunable_weight_names(model))
    originals = convert_sync_batchnorm(model)
    assert originals and all(isinstance(model.get_submodule(n), nn.SyncBatchNorm) for n in originals)
    converted = model.state_dict(keep_vars=True)
    assert converted.keys() == state.keys() and all(converted[k] is state[k] for k in state)  # shared, same names
    assert torch.equal(model(inputs), expected)
    masked = mask.apply(copy.deepcopy(model))  # masks are keyed by state-dict names: they apply unchanged
    revert_sync_batchnorm(model, originals)
    assert {n: type(m) for n, m in model.named_modules()} == types
    assert all(model.state_dict(keep_vars=True)[k] is state[k] for k in state)
    assert torch.equal(model(inputs), expected)
    assert torch.equal(masked(inputs), mask.apply(model)(inputs))


def test_fit_trains_synced_batchnorm_and_returns_plain_batchnorm(tmp_path, monkeypatch):
    for module in (train.config, train.loop):  # one CPU process: no sync needed
        monkeypatch.setattr(module, "check_sync_bn", lambda cfg, accelerator: None)
    cfg = TrainConfig(epochs=1, batch_size=16, lr=0.05, sync_bn=True)
    seen = set()
    synced = fit(conv_bn_model(), image_data(64), image_data(16, seed=1), cfg, tmp_path / "synced",
                 accelerator=make_accelerator(cfg),
                 callbacks=[Lambda(lambda state: seen.update(map(type, state.model.modules())))])
    assert nn.SyncBatchNorm in seen and nn.BatchNorm2d not in seen
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in synced.model.modules())
    plain_cfg = dataclasses.replace(cfg, sync_bn=False)
    plain = fit(conv_bn_model(), image_data(64), image_data(16, seed=1), plain_cfg, tmp_path / "plain",
                accelerator=make_accelerator(plain_cfg))
    # on one process SyncBatchNorm is BatchNorm: the same training
    assert all(torch.equal(v, plain.model.state_dict()[k]) for k, v in synced.model.state_dict().items())


def test_sync_bn_on_cpu_is_refused_before_anything_is_written(tmp_path, capsys):
    err = one_line_error(["imp", "--sync-bn", "--model", "test_resnet", "--out", str(tmp_path / "run")], capsys)
    assert "--sync-bn needs GPUs: torch's SyncBatchNorm runs on accelerators only" in err
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- lt-plugin check

def test_check_reports_masks_macs_and_differences_of_a_model_that_works(capsys):
    assert cli_main(["check", "test_resnet", "--image-size", "16"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("test_resnet at 16x16: channel tickets work (3 masks exported")
    rows = [line.split() for line in out.splitlines() if line.strip().startswith(("0.75", "0.50", "0.25"))]
    assert len(rows) == 3
    macs = [float(row[2]) for row in rows]
    assert macs[0] > macs[1] > macs[2] and all(float(row[4]) < 1e-4 for row in rows)  # BatchNorm: equal outputs
    assert "ignored: fc (the classifier is never pruned)" in out


def test_check_gives_an_unsupported_model_the_reason_a_run_would(capsys):
    err = one_line_error(["check", "mixer_s16_224", "--image-size", "32"], capsys)
    assert "Torch-Pruning cannot group the channels of MlpMixer" in err


# ---------------------------------------------------------------- which constructors are given img_size

@pytest.mark.parametrize("model, takes", [
    ("vit_tiny_patch16_224", True), ("deit_tiny_patch16_224", True), ("deit_tiny_distilled_patch16_224", True),
    ("swin_tiny_patch4_window7_224", True), ("mobilevit_xxs", True), ("levit_128s", True),
    ("vit_small_resnet26d_224", True),  # its ResNet is built first, without the caller's arguments
    ("lenet_300_100", True), ("conv2", True), ("conv4", True), ("conv6", True),
    ("poolformer_s12", False), ("caformer_s18", False),  # MetaFormer: **kwargs go to the token mixers
    ("resnet18", False), ("convnext_atto", False), ("efficientnet_b0", False), ("mobilenetv3_small_100", False),
    ("cifar_resnet20", False), ("cifar_resnet56", False), ("cifar_vgg16", False), ("cifar_resnet18", False),
    ("cifar_vgg16_bn", False),
])
def test_img_size_is_given_to_the_models_whose_constructor_uses_it(model, takes):
    assert takes_img_size(model) is takes
    module = timm.models.model_entrypoint(model).__globals__
    assert module["build_model_with_cfg"] is timm.models.build_model_with_cfg  # the probe puts timm's builder back


def test_check_of_a_constructor_passing_kwargs_on_gives_no_img_size(capsys):
    code = cli_main(["check", "poolformer_s12", "--image-size", "32"])
    captured = capsys.readouterr()
    assert "img_size" not in captured.out + captured.err
    assert code == 0 or (code == 2 and len(captured.err.strip().splitlines()) == 1), captured.err
