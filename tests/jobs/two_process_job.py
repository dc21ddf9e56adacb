"""Two forked gloo processes on the CPU (accelerate.debug_launcher), then the same MLP job on one process.

usage: python two_process_job.py OUT_DIR

Run as its own script because forking a process whose OpenMP thread pool is already running (as pytest's is,
after other tests computed) hangs the children. Assertions inside the workers fail the launch (non-zero exit);
numbers the test checks are written to OUT_DIR/two_process.json, weights to OUT_DIR/mlp_{1,2}/model.safetensors (an
MLP trained in float64 on 2 processes, then on 1).
"""

import json
import sys
from pathlib import Path

import torch
from accelerate import debug_launcher
from tiny_training import conv_bn_model, image_data, mlp, reset_accelerate

from lt_plugin.callbacks import EnforceMask
from lt_plugin.masks import magnitude_mask, prunable_weight_names
from lt_plugin.train import TrainConfig, evaluate, fit, make_accelerator, recalibrate_bn

CONFIG = TrainConfig(epochs=2, batch_size=16, eval_batch_size=8, lr=0.05, momentum=0.9, weight_decay=1e-4)
NUM_TRAIN = 160
VAL_SIZE = 37  # not a multiple of 2 processes x 8


def train_mlp(accelerator, run_dir):
    """In float64, so that 1 and 2 processes differ by float64 rounding alone (the test's tolerance)."""
    fit(mlp(dtype=torch.float64), image_data(NUM_TRAIN, dtype=torch.float64),
        image_data(VAL_SIZE, seed=1, dtype=torch.float64), CONFIG, run_dir, accelerator=accelerator)


def all_values(model):
    return torch.cat([t.detach().double().flatten() for t in model.state_dict().values()])


def worker(out_dir):
    out_dir = Path(out_dir)
    reset_accelerate()  # the fork copied the launcher's singletons
    accelerator = make_accelerator(CONFIG)
    assert accelerator.num_processes == 2

    model = conv_bn_model()
    mask = magnitude_mask(model, 0.3, prunable_weight_names(model))
    val_set = image_data(VAL_SIZE, seed=1)
    fit(model, image_data(NUM_TRAIN), val_set, CONFIG, out_dir / "masked", accelerator=accelerator,
        callbacks=[EnforceMask(mask)])
    every_rank = accelerator.gather(all_values(model)[None])
    assert torch.equal(every_rank[0], every_rank[1]), "ranks hold different weights or BatchNorm statistics"
    for name, keep in mask.tensors.items():
        assert torch.all(model.state_dict()[name][~keep] == 0), name

    accuracy, counted = evaluate(model, val_set, accelerator, batch_size=8)
    images, labels = val_set.tensors
    with torch.no_grad():
        by_hand = int((model.eval()(images).argmax(dim=1) == labels).sum()) / len(labels)

    recalibrate_bn(model, image_data(NUM_TRAIN), accelerator, num_batches=3, batch_size=16)
    every_rank = accelerator.gather(all_values(model)[None])
    assert torch.equal(every_rank[0], every_rank[1]), "ranks recalibrated BatchNorm differently"

    train_mlp(accelerator, out_dir / "mlp_2")
    if accelerator.is_main_process:
        (out_dir / "two_process.json").write_text(json.dumps({
            "num_processes": accelerator.num_processes, "counted": counted, "accuracy": accuracy,
            "by_hand": by_hand}))


def main():
    out_dir = Path(sys.argv[1])
    debug_launcher(worker, args=(str(out_dir),), num_processes=2)
    reset_accelerate()
    train_mlp(make_accelerator(CONFIG), out_dir / "mlp_1")


if __name__ == "__main__":
    main()
