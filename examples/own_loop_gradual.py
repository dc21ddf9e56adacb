"""Gradual magnitude pruning in your own PyTorch loop: `lt_plugin.GradualPruner`, in Torch-Pruning's words.

    python examples/own_loop_gradual.py [--model resnet18] [--pruning-ratio 0.8] [--frequency 10] [--schedule cubic]
                                        [--out DIR]

The loop is plain PyTorch with timm's optimizer and schedule; `pruner.step()` after every optimizer step prunes the
smallest weights of every layer on Zhu & Gupta's cubic schedule (or another `--schedule`), from 25% to 75% of the
training, and keeps the pruned ones at zero in between. With the same options, `lt-plugin gradual --levels 1
--target-density 0.2 --frequency 10` trains the same network (the same mask and weights): this loop reads the
batches in `fit`'s order (`EpochShuffle`).
The final mask and weights are written to DIR as safetensors.
"""

import argparse
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch.utils.data import DataLoader

import lt_plugin
from lt_plugin.data import load_data
from lt_plugin.train import EpochShuffle


@torch.no_grad()
def test_accuracy(model, data):
    model.eval()
    batches = DataLoader(data.test, batch_size=256)
    return sum(int((model(x).argmax(1) == y).sum()) for x, y in batches) / len(data.test)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--pruning-ratio", type=float, default=0.8, help="fraction of the weights removed at the end")
    parser.add_argument("--frequency", type=int, default=10, help="optimizer steps between two prunings")
    parser.add_argument("--schedule", default="cubic", help="cubic, one-shot, iterative, cosine or linear")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/own-loop-gradual")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    model = timm.create_model(args.model, num_classes=10)
    stats = timm.data.resolve_data_config({}, model=model)
    data = load_data("digits", image_size=args.image_size, mean=stats["mean"], std=stats["std"])
    loader = DataLoader(data.train, args.batch_size, sampler=EpochShuffle(len(data.train), args.seed), drop_last=True)
    pruner = lt_plugin.GradualPruner(model, pruning_ratio=args.pruning_ratio, schedule=args.schedule, start=0.25,
                                     end=0.75, frequency=args.frequency, total_steps=args.epochs * len(loader))
    optimizer = create_optimizer_v2(model, "sgd", lr=args.lr, weight_decay=1e-4, momentum=0.9)
    scheduler, _ = create_scheduler_v2(optimizer, "cosine", num_epochs=args.epochs, updates_per_epoch=len(loader),
                                       step_on_epochs=False)
    step = 0
    for epoch in range(args.epochs):
        loader.sampler.set_epoch(epoch)
        model.train()
        for images, labels in loader:
            F.cross_entropy(model(images), labels).backward()
            pruner.regularize(model)  # Torch-Pruning's hook: no penalty here
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            scheduler.step_update(num_updates=step)
            if pruner.step():  # prunes on schedule; keeps the pruned weights zero
                print(f"step {step}: density {pruner.mask.density:.4f}")
    accuracy = test_accuracy(model, data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pruner.mask.save(out / "mask.safetensors")
    save_file({n: t.contiguous() for n, t in model.state_dict().items()}, str(out / "weights.safetensors"))
    print(f"final: density {pruner.mask.density:.4f}  test accuracy {accuracy:.2%}  ({out})")


if __name__ == "__main__":
    main()
