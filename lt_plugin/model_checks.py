"""Checks of a model before it is traced, masked or trained: its example input on its device, a forward pass that
names the layer where it breaks, a channel rounding that can work. Each failure is one line for the user."""

from __future__ import annotations

from typing import Callable, List, Optional

import torch
from torch import nn

from .errors import UnsupportedModelError, UserError, first_line


def check_same_device(model: nn.Module, example_inputs: torch.Tensor) -> None:
    """A UserError naming both devices when `example_inputs` are not where the model's parameters are (a model
    moved to a GPU with its example left on the CPU cannot be traced)."""
    device = next((p.device for p in model.parameters()), None)
    found = getattr(example_inputs, "device", None)
    if device is None or found is None:
        return
    if found.type != device.type or (found.index is not None and device.index is not None
                                     and found.index != device.index):
        raise UserError(f"example_inputs are on {found} and the model on {device}: put them on the model's device "
                        f"(example_inputs.to({str(device)!r}))")


def device_of(model: nn.Module) -> torch.device:
    """Where the model's parameters are (the first one's device)."""
    return next(model.parameters()).device


def inputs_on(example_inputs, device: torch.device):
    """`example_inputs` (a tensor, or lists, tuples and dicts of them) on `device`: a model moved after its example
    was made is traced with its example moved along."""
    if isinstance(example_inputs, torch.Tensor):
        return example_inputs.to(device)
    if isinstance(example_inputs, dict):
        return {k: inputs_on(v, device) for k, v in example_inputs.items()}
    if isinstance(example_inputs, (list, tuple)):
        return type(example_inputs)(inputs_on(v, device) for v in example_inputs)
    return example_inputs


def check_forward(model: nn.Module, example_inputs: torch.Tensor, what: str,
                  forward_fn: Optional[Callable] = None) -> None:
    """Run `model` once (`forward_fn(model, example_inputs)`, Torch-Pruning's, when given); a failure becomes an
    UnsupportedModelError naming the layer where it happened."""
    entered: List[str] = []
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: entered.append(name))
             for name, m in model.named_modules() if name]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()
            forward_fn(model, example_inputs) if forward_fn is not None else model(example_inputs)
    except Exception as exc:
        layer = entered[-1] if entered else "(model input)"
        layer_type = type(dict(model.named_modules()).get(layer, model)).__name__
        raise UnsupportedModelError(
            f"{what} breaks at layer {layer} ({layer_type}): {type(exc).__name__}: {first_line(exc)}") from None
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)


def check_round_to(round_to: Optional[int]) -> None:
    if round_to is not None and not (isinstance(round_to, int) and round_to >= 1):
        raise UserError(f"--round-to must be a whole number of channels, 1 or more, not {round_to!r}")
