"""What every strategy trains: a timm model on a dataset, at an image size."""

from __future__ import annotations

import dataclasses
from typing import Optional

import timm
import torch
from torch import nn

from .errors import UserError


@dataclasses.dataclass
class Experiment:
    """The model and data half of a strategy's hyperparameters."""

    model: str = dataclasses.field(default="resnet18", metadata={"help": "timm model name"})
    model_kwargs: dict = dataclasses.field(default_factory=dict,
                                           metadata={"help": "extra timm.create_model arguments, as JSON"})
    dataset: str = dataclasses.field(default="digits", metadata={
        "help": "digits | fashion-mnist | an image folder | a saved dataset folder | a Hugging Face hub name"})
    image_size: int = dataclasses.field(default=32, metadata={"help": "side of the square input images"})
    val_fraction: float = dataclasses.field(default=0.1, metadata={"help": "share of train held out for validation"})
    augment: bool = dataclasses.field(default=False, metadata={"help": "timm's training augmentation"})
    max_train_samples: Optional[int] = dataclasses.field(default=None,
                                                         metadata={"type": int, "help": "use at most this many training images"})

    def load_data(self):
        from .data import load_data  # `datasets` is slow to import; masks and export do without it
        mean, std = self._norm_stats()
        return load_data(self.dataset, image_size=self.image_size, mean=mean, std=std,
                         val_fraction=self.val_fraction, split_seed=0, augment=self.augment,
                         max_train_samples=self.max_train_samples)

    def _norm_stats(self):
        self._check_model_name()
        cfg = timm.models.get_pretrained_cfg(self.model)
        if cfg is None:
            return None, None
        return cfg.mean, cfg.std

    def _check_model_name(self):
        if not timm.is_model(self.model):
            raise UserError(f"unknown timm model {self.model!r} (see timm.list_models())")

    def create_model(self, num_classes: int, seed: int) -> nn.Module:
        """A freshly initialised timm model; the same seed gives the same weights."""
        self._check_model_name()
        kwargs = dict(self.model_kwargs)
        kwargs.setdefault("num_classes", num_classes)
        torch.manual_seed(seed)
        try:
            return timm.create_model(self.model, pretrained=False, **kwargs)
        except TypeError as exc:
            raise UserError(f"timm.create_model({self.model!r}) rejected the model kwargs {kwargs}: {exc}") from None

    def example_inputs(self) -> torch.Tensor:
        return torch.zeros(1, 3, self.image_size, self.image_size)
