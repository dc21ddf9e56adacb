"""Training on Accelerate, in five modules as timm splits its training script:

- `config`: the training options (`TrainConfig`), their checks, the Accelerator, the optimizer and the schedule;
- `evaluation`: accuracy, loss and per-sample correctness, BatchNorm statistics recomputed (no trainer needed);
- `checkpoint`: the files of a training run (checkpoint, metrics, final weights), no pickle;
- `batches`: the order of the training batches, a function of (seed, epoch) only (`EpochShuffle`);
- `loop`: `fit`, the seeded, resumable loop every strategy trains with; what a strategy adds comes as callbacks
  (lt_plugin.callbacks).

`from lt_plugin.train import fit, TrainConfig, evaluate, ...` imports a public name from the module that holds it
when it is first used: importing `lt_plugin.train.evaluation` does not load the loop.
"""

import importlib

_OWNERS = {
    "config": ("TrainConfig", "make_accelerator", "check_train_config", "check_training_data", "train_config_of",
               "resolve_train_config", "steps_per_epoch", "total_steps", "final_lr", "create_optimizer",
               "create_scheduler", "SCHEDULES", "MIXED_PRECISIONS", "SETTINGS_WITHOUT_EFFECT", "ORDER_OF_A_STREAM"),
    "evaluation": ("evaluate", "validate", "correctness", "sample_scores", "recalibrate_bn"),
    "checkpoint": ("TrainResult",),
    "batches": ("EpochShuffle",),
    "loop": ("fit", "convert_sync_batchnorm", "revert_sync_batchnorm", "DIVERGENCE_CHECK_STEPS"),
}
_OWNER_OF = {name: module for module, names in _OWNERS.items() for name in names}

__all__ = sorted(_OWNER_OF)


def __getattr__(name: str):
    if name not in _OWNER_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_OWNER_OF[name]}"), name)


def __dir__():
    return sorted({*globals(), *__all__})
