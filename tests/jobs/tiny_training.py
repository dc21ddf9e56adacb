"""Tiny data sets and models shared by tests/test_train.py and the job scripts beside this file."""

import torch
from accelerate.state import AcceleratorState, GradientState
from torch import nn
from torch.utils.data import TensorDataset


def image_data(n, size=8, seed=0, dtype=torch.float32):
    """Random images whose 4 classes depend on the mean of the first two channels (so they can be learned)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=generator)
    labels = (images[:, 0].mean(dim=(1, 2)) > 0).long() * 2 + (images[:, 1].mean(dim=(1, 2)) > 0).long()
    return TensorDataset(images.to(dtype), labels)


def conv_bn_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def conv_bn_dropout_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Dropout(0.2), nn.Linear(32, 4))


def mlp(seed=0, dtype=torch.float32):
    """No BatchNorm: its training does not depend on how a batch is split over processes."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, 4)).to(dtype)


def reset_accelerate():
    """Forget Accelerate's process-wide singletons (a forked worker copies its launcher's; tests start afresh)."""
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def crash_at(step):
    """A callback that interrupts training (KeyboardInterrupt) before the `step`-th optimizer step (1-based), as a
    kill would: the run folder keeps what was written before."""
    from lt_plugin.callbacks import Lambda
    calls = []

    def crash(_state):
        calls.append(1)
        if len(calls) == step:
            raise KeyboardInterrupt
    return Lambda(before_optimizer_step=crash)


# Two trainings that sum the same gradients in other orders (1 and 2 processes) differ by float32 rounding: about
# 2**-24 (6e-8) of a weight per step, over the tens of optimizer steps of a tiny run ~1e-6 of each tensor's scale
# (measured, LeNet-300-100 in ~30 steps: 3.5e-7). 1e-5 leaves room for training to amplify it; a wrong shard, batch,
# data order or learning rate moves the weights by ~1e-2 of their scale.
FLOAT32_ROUNDING = 1e-5


def assert_same_weights_up_to_rounding(a, b):
    """Two state dicts equal within FLOAT32_ROUNDING of each tensor's largest magnitude (counters exactly)."""
    assert a.keys() == b.keys()
    for name, value in a.items():
        if not value.is_floating_point():
            assert torch.equal(value, b[name]), name
            continue
        scale = float(value.abs().max())
        assert float((value - b[name]).abs().max()) <= FLOAT32_ROUNDING * max(scale, 1e-12), name


def assert_same_results_up_to_one_image(a, b, val_images, test_images):
    """Results of two runs whose weights differ by rounding: every value equal (timings aside), but an accuracy may
    differ by one image of its split (a prediction on a near-tie of two logits may flip)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key, value in a.items():
            if "seconds" in key or "latency" in key:
                continue
            if "accuracy" in key and isinstance(value, float):
                images = val_images if "val" in key else test_images
                assert abs(value - b[key]) <= 1 / images + 1e-12, key
            else:
                assert_same_results_up_to_one_image(value, b[key], val_images, test_images)
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_results_up_to_one_image(x, y, val_images, test_images)
    else:
        assert a == b
