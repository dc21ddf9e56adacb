"""Scoring tickets made by averaging, the same way for every strategy that averages (Lottery Pools, Sparse Model
Soups, instability analysis): a ticket (dense-space state, mask) as the model it is, its BatchNorm statistics
recomputed on training batches, and its accuracy on the validation and test splits and on corrupted copies of the
test split.
"""

from __future__ import annotations

import copy
from typing import Dict, List, Optional

import torch
from accelerate.utils import set_seed
from torch import nn

from .corruptions import corrupted_copies
from .masks import Mask
from .structure import export
from .train.config import TrainConfig
from .train.evaluation import evaluate, recalibrate_bn, sample_scores

BN_BATCH_SIZE = 256


class Scorer:
    """A run's data and Accelerator, and a model of the tickets' architecture (`template`, on the device) that
    states are loaded into. `bn_batches` batches of BN_BATCH_SIZE training images recompute BatchNorm statistics
    (None: a full pass, as `torch.optim.swa_utils.update_bn`), the same batches on every process and rerun (`seed`).
    """

    def __init__(self, data, accelerator, cfg: TrainConfig, example: torch.Tensor, template: nn.Module,
                 seed: int = 0, bn_batches: Optional[int] = None):
        self.data, self.accelerator, self.cfg, self.seed, self.bn_batches = data, accelerator, cfg, seed, bn_batches
        self.example = example.to(accelerator.device)
        self.template = template.to(accelerator.device)
        # LayerNorm counts zeroed channels: there a channel ticket is scored as the exported model it is.
        self.layer_norm = any(isinstance(m, (nn.LayerNorm, nn.GroupNorm)) for m in template.modules())

    def materialise(self, state: Dict[str, torch.Tensor], mask: Mask) -> nn.Module:
        """The model a (state, mask) ticket is: the masked dense model, or the exported one for a channel ticket."""
        model = copy.deepcopy(self.template)
        model.load_state_dict(state)
        mask.apply(model)
        return export(model, mask, self.example) if mask.granularity == "channel" and mask.plan else model

    def as_scored(self, model: nn.Module, mask: Mask) -> nn.Module:
        """A dense-space model as a ticket is scored: exported where LayerNorm would count its zeroed channels."""
        return export(model, mask, self.example) if self.layer_norm and mask.granularity == "channel" and mask.plan \
            else model

    def recalibrate(self, model: nn.Module, mask: Optional[Mask] = None) -> None:
        """BatchNorm statistics recomputed on training batches (the pruned entries zeroed again after)."""
        set_seed(self.seed)  # the same batches, and the same augmentation if any, on every process and rerun
        recalibrate_bn(model, self.data.train, self.accelerator, self.bn_batches, BN_BATCH_SIZE, self.cfg.num_workers)
        if mask is not None:
            mask.apply(model)

    def accuracy(self, model, dataset) -> float:
        """Top-1 accuracy of a model (or the mean softmax of a list of models) on a dataset."""
        return evaluate(model, dataset, self.accelerator, self.cfg.eval_batch_size, self.cfg.num_workers)[0]

    def sample_scores(self, model, dataset):
        """(each sample right or wrong, each sample's cross-entropy), for paired comparisons on the same samples."""
        return sample_scores(model, dataset, self.accelerator, self.cfg.eval_batch_size, self.cfg.num_workers)

    def scores(self, models: Dict[str, object], corruptions: bool = False, corruption_samples: Optional[int] = None
               ) -> dict:
        """{name}_val_accuracy, {name}_test_accuracy and, with `corruptions`, {name}_corruption_accuracy (the mean
        over CIFAR-10-C style corruptions and severities) with {name}_corruptions (per corruption, per severity),
        for models or lists of models (ensembles)."""
        out = {}
        for name, model in models.items():
            out[f"{name}_val_accuracy"] = self.accuracy(model, self.data.val)
            out[f"{name}_test_accuracy"] = self.accuracy(model, self.data.test)
        if corruptions:
            detail: Dict[str, Dict[str, List[float]]] = {name: {} for name in models}
            for corruption, _, dataset in corrupted_copies(self.data.test, self.seed, corruption_samples):
                for name, model in models.items():
                    detail[name].setdefault(corruption, []).append(self.accuracy(model, dataset))
            for name, per_corruption in detail.items():
                values = [a for accuracies in per_corruption.values() for a in accuracies]
                out[f"{name}_corruption_accuracy"] = sum(values) / len(values)
                out[f"{name}_corruptions"] = per_corruption
        return out
