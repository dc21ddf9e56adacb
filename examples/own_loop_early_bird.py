"""An Early-Bird ticket in your own PyTorch loop: `lt_plugin.EarlyBirdPruner` in Torch-Pruning's slimming words.

    python examples/own_loop_early_bird.py [--pruning-ratio 0.5] [--epochs 10] [--window 5] [--epsilon 0.1]

Train with the slimming penalty (`pruner.regularize` between backward and the optimizer step), let the pruner
draw a channel mask after each epoch (`pruner.update`), stop as soon as the Early-Bird rule holds, and retrain the
ticket physically pruned (`pruner.step()`). With the same options, `lt-plugin early-bird --ratios 0.5` finds the
ticket at the same epoch (this loop reads the batches in `fit`'s order).
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


def epochs_of_training(model, data, args, regularize=None):
    """The epochs of a cosine schedule, one at a time (yields after each)."""
    loader = DataLoader(data.train, args.batch_size, sampler=EpochShuffle(len(data.train), args.seed), drop_last=True)
    optimizer = create_optimizer_v2(model, "sgd", lr=args.lr, weight_decay=1e-4, momentum=0.9)
    scheduler, _ = create_scheduler_v2(optimizer, "cosine", num_epochs=args.epochs, updates_per_epoch=len(loader),
                                       step_on_epochs=False)
    step = 0
    for epoch in range(args.epochs):
        loader.sampler.set_epoch(epoch)
        model.train()
        for images, labels in loader:
            F.cross_entropy(model(images), labels).backward()
            if regularize is not None:
                regularize(model)
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            scheduler.step_update(num_updates=step)
        yield epoch + 1


@torch.no_grad()
def test_accuracy(model, data):
    model.eval()
    return sum(int((model(x).argmax(1) == y).sum()) for x, y in DataLoader(data.test, 256)) / len(data.test)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--pruning-ratio", type=float, default=0.5, help="fraction of channels removed")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--window", type=int, default=5)
    parser.add_argument("--epsilon", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    model = timm.create_model(args.model, num_classes=10)
    stats = timm.data.resolve_data_config({}, model=model)
    data = load_data("digits", image_size=args.image_size, mean=stats["mean"], std=stats["std"])
    example = torch.zeros(1, 3, args.image_size, args.image_size)
    pruner = lt_plugin.EarlyBirdPruner(model, example, pruning_ratio=args.pruning_ratio, window=args.window,
                                       epsilon=args.epsilon)  # draws the initialisation's mask
    for epoch in epochs_of_training(model, data, args, regularize=pruner.regularize):
        if pruner.update(epoch):
            break
    if pruner.found_at is None:
        print(f"no Early-Bird ticket within {args.epochs} epochs")
        return
    ticket = pruner.step()  # physically pruned, with the weights at emergence
    for _ in epochs_of_training(ticket, data, args):
        pass
    print(f"Early-Bird ticket at epoch {pruner.found_at}: density {pruner.mask.density:.4f}, "
          f"test accuracy {test_accuracy(ticket, data):.2%} after retraining")


if __name__ == "__main__":
    main()
