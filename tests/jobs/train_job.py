"""A tiny training job writing into a run folder: what the kill-and-resume test interrupts and reruns.

usage: python train_job.py RUN_DIR [--step-delay SECONDS]

Every optimizer step appends a line to RUN_DIR/steps.log (from a callback before the optimizer step, which leaves
the gradients alone), so the test can see that an epoch is in progress; --step-delay slows the steps so it can kill
one mid-epoch.
The model has BatchNorm and dropout, so an exact resume also needs the buffers and the per-epoch RNG seeding.
"""

import argparse
import time
from pathlib import Path

from tiny_training import conv_bn_dropout_model, image_data

from lt_plugin.callbacks import Lambda
from lt_plugin.train import TrainConfig, fit, make_accelerator

CONFIG = TrainConfig(epochs=4, batch_size=16, eval_batch_size=32, lr=0.05, momentum=0.9, weight_decay=1e-4,
                     sched="cosine", seed=3)
NUM_TRAIN = 160  # 10 optimizer steps per epoch


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--step-delay", type=float, default=0.0)
    args = parser.parse_args()
    args.run_dir.mkdir(parents=True, exist_ok=True)
    step_log = args.run_dir / "steps.log"

    def log_step(_state):
        with open(step_log, "a") as f:
            f.write("step\n")
        time.sleep(args.step_delay)

    fit(conv_bn_dropout_model(), image_data(NUM_TRAIN), image_data(40, seed=1), CONFIG, args.run_dir,
        accelerator=make_accelerator(CONFIG), callbacks=[Lambda(before_optimizer_step=log_step)], desc="job")


if __name__ == "__main__":
    main()
