"""Lottery tickets in your own PyTorch loop: IMP with rewinding through `lt_plugin.IMPPruner`.

    python examples/own_loop_imp.py [--granularity weight|channel] [--pruning-ratio 0.8] [--levels 3] [--out DIR]

The loop is plain PyTorch with timm's optimizer and schedule; the pruner prunes `model` in place (a channel ticket
loses its channels through Torch-Pruning's dependency graph), rewinds and keeps the mask. With
the same options, `lt-plugin imp --target-density 0.2 --levels 3` trains the same tickets (the same masks and
weights, level by level): this loop reads the batches in `fit`'s order (`EpochShuffle`). Each level is saved as
an IMP run folder level, so `lt-plugin export --run DIR --level 3` ships the ticket.
"""

import argparse

import timm
import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch.utils.data import DataLoader

import lt_plugin
from lt_plugin.data import load_data
from lt_plugin.train import EpochShuffle


def train(model, pruner, data, args):
    loader = DataLoader(data.train, args.batch_size, sampler=EpochShuffle(len(data.train), args.seed), drop_last=True)
    optimizer = create_optimizer_v2(model, "sgd", lr=args.lr, weight_decay=1e-4, momentum=0.9)
    scheduler, _ = create_scheduler_v2(optimizer, "cosine", num_epochs=args.epochs, updates_per_epoch=len(loader),
                                       step_on_epochs=False)
    hook = pruner.mask_after_steps(optimizer)  # a weight ticket's pruned entries stay zero
    step = 0
    for epoch in range(args.epochs):
        loader.sampler.set_epoch(epoch)
        model.train()
        for images, labels in loader:
            F.cross_entropy(model(images), labels).backward()
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            scheduler.step_update(num_updates=step)
    hook.remove()


@torch.no_grad()
def test_accuracy(model, data):
    model.eval()
    batches = DataLoader(data.test, batch_size=256)
    return sum(int((model(x).argmax(1) == y).sum()) for x, y in batches) / len(data.test)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--granularity", choices=("weight", "channel"), default="weight")
    parser.add_argument("--pruning-ratio", type=float, default=0.8, help="fraction of weights removed at the end")
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/own-loop-imp")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    model = timm.create_model(args.model, num_classes=10)
    stats = timm.data.resolve_data_config({}, model=model)
    data = load_data("digits", image_size=args.image_size, mean=stats["mean"], std=stats["std"])
    example = torch.zeros(1, 3, args.image_size, args.image_size)
    pruner = lt_plugin.IMPPruner(model, example, pruning_ratio=args.pruning_ratio, iterative_steps=args.levels,
                                 granularity=args.granularity)  # the rewind point: these initial weights
    for level in range(args.levels + 1):
        if level:
            pruner.step()  # prune the trained weights and rewind the survivors, in `model` (Torch-Pruning's way)
        train(model, pruner, data, args)  # a fresh optimizer per level: a channel ticket's parameters are new
        accuracy = test_accuracy(model, data)
        pruner.save_level(args.out, model, metrics={"test_accuracy": accuracy}, model_name=args.model)
        print(f"level {level}: density {pruner.mask.density:.4f}  test accuracy {accuracy:.2%}")


if __name__ == "__main__":
    main()
