"""A streamed split over two forked gloo processes on the CPU (accelerate.debug_launcher).

usage: python two_process_stream_job.py OUT_DIR

Each process reads its own share of the stream. Assertions inside the workers fail the launch (non-zero exit);
the numbers the test checks are written to OUT_DIR/two_process_stream.json by the main process.
"""

import json
import sys
from pathlib import Path

import torch
from accelerate import debug_launcher
from tiny_training import reset_accelerate
from torch import nn

from lt_plugin.data import load_data
from lt_plugin.train import TrainConfig, evaluate, fit, make_accelerator, recalibrate_bn, steps_per_epoch

CONFIG = TrainConfig(epochs=2, batch_size=32, eval_batch_size=50, lr=0.05, momentum=0.9, grad_accum_steps=5)


def model_with_batchnorm():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 10))


def all_values(model):
    return torch.cat([t.detach().double().flatten() for t in model.state_dict().values()])


def worker(out_dir):
    out_dir = Path(out_dir)
    reset_accelerate()  # the fork copied the launcher's singletons
    accelerator = make_accelerator(CONFIG)
    assert accelerator.num_processes == 2
    streamed = load_data("digits", image_size=8, streaming=True, max_train_samples=400)
    in_memory = load_data("digits", image_size=8, in_memory="yes", max_train_samples=400)

    model = model_with_batchnorm()
    result = fit(model, streamed.train, streamed.val, CONFIG, out_dir / "run", accelerator=accelerator)
    every_rank = accelerator.gather(all_values(model)[None])
    assert torch.equal(every_rank[0], every_rank[1]), "ranks hold different weights or BatchNorm statistics"

    accuracy, counted = evaluate(model, streamed.test, accelerator, batch_size=50)
    with torch.no_grad():
        by_hand = int((model.eval()(in_memory.test.images).argmax(dim=1) == in_memory.test.labels).sum())

    recalibrate_bn(model, streamed.train, accelerator, num_batches=3, batch_size=32)
    every_rank = accelerator.gather(all_values(model)[None])
    assert torch.equal(every_rank[0], every_rank[1]), "ranks recalibrated BatchNorm differently"
    if accelerator.is_main_process:
        (out_dir / "two_process_stream.json").write_text(json.dumps({
            "counted": counted, "test_size": len(in_memory.test), "accuracy": accuracy,
            "by_hand": by_hand / len(in_memory.test), "steps": result.steps,
            "schedule_steps": CONFIG.epochs * steps_per_epoch(CONFIG, len(streamed.train))}))


if __name__ == "__main__":
    debug_launcher(worker, args=(sys.argv[1],), num_processes=2)
