"""A tiny training job writing into a run folder: what the kill-and-resume test interrupts and reruns.

usage: python train_job.py RUN_DIR [--pause-at-step N]

Every optimizer step appends a line to RUN_DIR/steps.log (from a callback before the optimizer step, which leaves
the gradients alone); --pause-at-step N stops the job before its N-th optimizer step (after logging it), saying so
on stderr as lt_plugin's own pause does, so that the test kills it mid-epoch at exactly that step.
The model has BatchNorm and dropout, so an exact resume also needs the buffers and the per-epoch RNG seeding.
"""

import argparse
import sys
import time
from pathlib import Path

from tiny_training import conv_bn_dropout_model, image_data

from lt_plugin.callbacks import Lambda
from lt_plugin.store import PAUSED
from lt_plugin.train import TrainConfig, fit, make_accelerator

CONFIG = TrainConfig(epochs=4, batch_size=16, eval_batch_size=32, lr=0.05, momentum=0.9, weight_decay=1e-4,
                     sched="cosine", seed=3)
NUM_TRAIN = 160  # 10 optimizer steps per epoch


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--pause-at-step", type=int, default=None)
    args = parser.parse_args()
    args.run_dir.mkdir(parents=True, exist_ok=True)
    step_log = args.run_dir / "steps.log"

    def log_step(_state):
        with open(step_log, "a") as f:
            f.write("step\n")
        if args.pause_at_step is not None and len(step_log.read_text().splitlines()) == args.pause_at_step:
            print(f"{PAUSED} before optimizer step {args.pause_at_step}", file=sys.stderr, flush=True)
            while True:
                time.sleep(60)

    fit(conv_bn_dropout_model(), image_data(NUM_TRAIN), image_data(40, seed=1), CONFIG, args.run_dir,
        accelerator=make_accelerator(CONFIG), callbacks=[Lambda(before_optimizer_step=log_step)], desc="job")


if __name__ == "__main__":
    main()
