"""Torch-Pruning's own training loop, with `lt_plugin.IMPPruner` dropped in where its pruner was.

    python examples/own_loop_torch_pruning.py [--model resnet18] [--pruning-ratio 0.8] [--steps 3] [--out DIR]

The loop is the one Torch-Pruning's README writes (build a pruner, then `pruner.step()` and fine-tune, with
`pruner.regularize(model)` between `backward()` and the optimizer step). The lines that differ are marked LTH: the
pruner is an IMPPruner (its `pruning_ratio` is a fraction of the weights, reached over `iterative_steps`), the
dense network trains before the first step, the mask is kept after every optimizer step, and each level trains
with a fresh optimizer, as IMP does. `step()` prunes the trained weights and rewinds the survivors to the weights
the pruner was built with (theta_0). Each level is saved as a level of an IMP run folder (`lt-plugin export`,
`lt-plugin lottery-pools` read it).
"""

import argparse

import timm
import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch.utils.data import DataLoader

import lt_plugin
from lt_plugin.data import load_data


def finetune(model, pruner, data, args):
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)  # LTH: fresh
    hook = pruner.mask_after_steps(optimizer)  # LTH: the ticket's pruned weights stay zero
    loader = DataLoader(data.train, batch_size=args.batch_size, shuffle=True, drop_last=True)
    model.train()
    for _ in range(args.epochs):
        for images, labels in loader:
            loss = F.cross_entropy(model(images), labels)
            loss.backward()
            pruner.regularize(model)  # Torch-Pruning's sparse-training hook: IMP adds no penalty
            optimizer.step()
            optimizer.zero_grad()
    hook.remove()


@torch.no_grad()
def accuracy(model, data):
    model.eval()
    return sum(int((model(x).argmax(1) == y).sum()) for x, y in DataLoader(data.test, 256)) / len(data.test)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--pruning-ratio", type=float, default=0.8, help="fraction of the weights removed at the end")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--out", default="runs/own-loop-torch-pruning")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = timm.create_model(args.model, num_classes=10)
    stats = timm.data.resolve_data_config({}, model=model)
    data = load_data("digits", image_size=args.image_size, mean=stats["mean"], std=stats["std"])
    example_inputs = torch.randn(1, 3, args.image_size, args.image_size)

    # Torch-Pruning: pruner = tp.pruner.MetaPruner(model, example_inputs, importance=imp, pruning_ratio=0.5,
    #                                              ignored_layers=[model.fc], iterative_steps=5)
    pruner = lt_plugin.IMPPruner(model, example_inputs, pruning_ratio=args.pruning_ratio,  # LTH: rewinds to theta_0
                                 iterative_steps=args.steps, ignored_layers=[model.get_classifier()])
    finetune(model, pruner, data, args)  # LTH: the dense network trains first; IMP prunes its trained weights
    for step in range(pruner.iterative_steps):
        pruner.step()
        macs, nparams = tp.utils.count_ops_and_params(model, example_inputs)
        finetune(model, pruner, data, args)
        test_accuracy = accuracy(model, data)
        pruner.save_level(args.out, model, metrics={"test_accuracy": test_accuracy}, model_name=args.model)
        print(f"step {step + 1}: density {pruner.mask.density:.4f}  test accuracy {test_accuracy:.2%}  (Torch-Pruning "
              f"counts {nparams:,} parameters and {macs:,.0f} MACs: zeroed weights included)")


if __name__ == "__main__":
    main()
