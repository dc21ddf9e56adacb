"""examples/own_loop_imp.py on Accelerate: the same loop on one CPU, one GPU or many processes.

    python examples/own_loop_accelerate.py [--granularity weight|channel] [--levels 3] [--out DIR]
    accelerate launch --multi_gpu --num_processes 2 examples/own_loop_accelerate.py
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 examples/own_loop_accelerate.py

The pruner works on the unwrapped model, the same on every process (DDP keeps their weights equal); a channel
ticket's model is pruned in place and prepared anew (its parameters are new). Batches are global and split over
the processes (`split_batches`), read in `fit`'s order: `lt-plugin imp` launched the same way trains the same
tickets.
"""

import argparse

import timm
import torch
import torch.nn.functional as F
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import broadcast
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch.utils.data import DataLoader

import lt_plugin
from lt_plugin.data import load_data
from lt_plugin.train import EpochShuffle


def train(prepared, model, pruner, data, args, accelerator):
    loader = DataLoader(data.train, args.batch_size, sampler=EpochShuffle(len(data.train), args.seed), drop_last=True)
    optimizer = create_optimizer_v2(model, "sgd", lr=args.lr, weight_decay=1e-4, momentum=0.9)
    scheduler, _ = create_scheduler_v2(optimizer, "cosine", num_epochs=args.epochs, updates_per_epoch=len(loader),
                                       step_on_epochs=False)
    hook = pruner.mask_after_steps(optimizer)  # a weight ticket's pruned entries stay zero
    optimizer, loader = accelerator.prepare(optimizer, loader)
    step = 0
    for epoch in range(args.epochs):
        loader.set_epoch(epoch)
        prepared.train()
        for images, labels in loader:
            accelerator.backward(F.cross_entropy(prepared(images), labels))
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            scheduler.step_update(num_updates=step)
    broadcast(list(model.buffers()))  # each rank's BatchNorm statistics moved on its shard: take rank 0's
    hook.remove()


@torch.no_grad()
def test_accuracy(model, data, device):
    model.eval()
    batches = DataLoader(data.test, batch_size=256)
    return sum(int((model(x.to(device)).argmax(1) == y.to(device)).sum()) for x, y in batches) / len(data.test)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--granularity", choices=("weight", "channel"), default="weight")
    parser.add_argument("--pruning-ratio", type=float, default=0.8, help="fraction of weights removed at the end")
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128, help="global: split over the processes")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/own-loop-accelerate")
    args = parser.parse_args()

    accelerator = Accelerator(dataloader_config=DataLoaderConfiguration(split_batches=True))
    torch.manual_seed(args.seed)
    model = timm.create_model(args.model, num_classes=10)
    stats = timm.data.resolve_data_config({}, model=model)
    data = load_data("digits", image_size=args.image_size, mean=stats["mean"], std=stats["std"])
    example = torch.zeros(1, 3, args.image_size, args.image_size)
    pruner = lt_plugin.IMPPruner(model, example, pruning_ratio=args.pruning_ratio, iterative_steps=args.levels,
                                 granularity=args.granularity)
    prepared = accelerator.prepare(model)
    for level in range(args.levels + 1):
        if level:
            pruner.step()  # prunes `model` in place
            if args.granularity == "channel":  # its parameters are new: wrap it anew (DDP) for its training
                prepared = accelerator.prepare(model)
        train(prepared, model, pruner, data, args, accelerator)
        accuracy = test_accuracy(model, data, accelerator.device)
        if accelerator.is_main_process:
            pruner.save_level(args.out, model, metrics={"test_accuracy": accuracy}, model_name=args.model)
        accelerator.wait_for_everyone()
        accelerator.print(f"level {level}: density {pruner.mask.density:.4f}  test accuracy {accuracy:.2%}")


if __name__ == "__main__":
    main()
