"""Tiny data sets and models shared by tests/test_train.py and the job scripts beside this file."""

import torch
from accelerate.state import AcceleratorState, GradientState
from torch import nn
from torch.utils.data import TensorDataset


def image_data(n, size=8, seed=0):
    """Random images whose 4 classes depend on the mean of the first two channels (so they can be learned)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=generator)
    labels = (images[:, 0].mean(dim=(1, 2)) > 0).long() * 2 + (images[:, 1].mean(dim=(1, 2)) > 0).long()
    return TensorDataset(images, labels)


def conv_bn_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def conv_bn_dropout_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Dropout(0.2), nn.Linear(32, 4))


def mlp(seed=0):
    """No BatchNorm: its training does not depend on how a batch is split over processes."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, 4))


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
