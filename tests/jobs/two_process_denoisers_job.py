"""One round of three Instant Soup denoisers shared between two forked gloo processes (accelerate.debug_launcher),
then the same round on one process.

usage: python two_process_denoisers_job.py OUT_DIR

Run as its own script, never inside pytest: forking a process whose OpenMP pool or helper threads are already
running (pytest's, after other tests) can hang the children. Each process writes the masks it reads to
OUT_DIR/seen_by_{rank}_{j}.safetensors and the optimizer steps it trained to OUT_DIR/trained_by_{rank}.json; the
one-process round writes the same files with `alone` for the rank.
"""

import json
import sys
from pathlib import Path

from accelerate import Accelerator, debug_launcher
from tiny_training import image_data, mlp, reset_accelerate

from lt_plugin import Mask
from lt_plugin.denoisers import Denoisers
from lt_plugin.train import TrainConfig


def one_round(accelerator, run_dir):
    """Three denoisers of one round on a tiny MLP: their masks as this process reads them, and the optimizer steps
    this process trained."""
    model = mlp(seed=0)
    cfg = TrainConfig(batch_size=8, epochs=1, lr=0.05, weight_decay=0.0, num_workers=0)
    denoisers = Denoisers(mlp(seed=1), image_data(64), cfg, 8, accelerator, run_dir, 3, 4, 0.25, [1.0, 0.5, 2.0],
                          [0.0, 1e-4, 1e-3], seed=7, scope="global")
    masks = denoisers.masks(model, Mask.ones(model, ["1.weight", "3.weight"]), 4, (0.8, {}))
    return masks, denoisers.trained_steps


def write(out_dir, masks, trained, who):
    for j, mask in enumerate(masks):
        mask.save(out_dir / f"seen_by_{who}_{j}.safetensors")
    (out_dir / f"trained_by_{who}.json").write_text(json.dumps(trained))


def worker(out_dir):
    out_dir = Path(out_dir)
    reset_accelerate()  # the fork copied the launcher's singletons
    accelerator = Accelerator(cpu=True)
    assert accelerator.num_processes == 2
    masks, trained = one_round(accelerator, out_dir / "run")
    write(out_dir, masks, trained, accelerator.process_index)


def main():
    out_dir = Path(sys.argv[1])
    debug_launcher(worker, args=(str(out_dir),), num_processes=2)
    reset_accelerate()
    masks, trained = one_round(Accelerator(cpu=True), out_dir / "alone")
    write(out_dir, masks, trained, "alone")


if __name__ == "__main__":
    main()
