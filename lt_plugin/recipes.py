"""Recipes: the reference papers' training setups by name (`--recipe NAME`, `lt-plugin recipes`).

A recipe is data: values for a strategy's options, with the source they were read from. They fill the defaults;
options given explicitly (flags, a --config file, keyword arguments) win, and options a strategy does not have are
skipped (the Early-Bird penalty of `eb-cifar` means nothing to `imp`).
"""

from __future__ import annotations

import copy
import dataclasses

from .errors import UserError

# The schedule the three reference papers share for CIFAR: SGD with plain momentum 0.9 (torch.optim.SGD(momentum=0.9),
# no Nesterov: timm's "sgd" is Nesterov's, its "momentum" the plain one), the LR decayed x0.1 at 50% and 75%, and
# weight decay on every parameter (open_lth, the Early-Bird and the Lottery Pools code pass model.parameters() whole).
_CIFAR_SGD = dict(opt="momentum", lr=0.1, momentum=0.9, weight_decay=1e-4, wd_norm_bias=True, sched="multistep",
                  decay_milestones=(0.5, 0.75), decay_rate=0.1, warmup_epochs=0.0, augment="crop-flip")

# LTH's own networks and training (Frankle & Carbin, ICLR 2019, Figure 2 and Appendices): Adam at a constant rate, batch
# 60, no augmentation, no weight decay, validation every 100 iterations for the early-stopping iteration, pruned
# layer-wise (each layer at its rate per round, the output layer at half the fully connected layers'), rewound to init.
_LTH = dict(opt="adam", batch_size=60, sched="constant", weight_decay=0.0, warmup_epochs=0.0, augment="none",
            eval_every=100, scope="layerwise", rewind="init", prune_fraction=0.2)


def _lth_conv(lr: float, iterations: int, conv_rate: float, name: str) -> dict:
    epochs = round(iterations * _LTH["batch_size"] / 45_000)
    return {
        "source": f"Frankle & Carbin, ICLR 2019 (arXiv:1803.03635), Figure 2: {name} on CIFAR-10, Adam {lr:g}, "
                  f"batch {_LTH['batch_size']}, {iterations // 1000}K iterations (here {epochs} epochs of 45,000 "
                  f"images, CIFAR-10's 50,000 less 5,000 held out), conv layers pruned {conv_rate:.0%} per round, "
                  "fully connected 20%, the output layer 10%, layer-wise, rewound to init; use --model "
                  f"{name.lower().replace('-', '')}",
        "options": dict(_LTH, lr=lr, epochs=epochs, image_size=32,
                        layer_prune_fractions={"features.*": conv_rate, "fc": 0.1}),
    }


_PLAIN_SGD = "SGD lr 0.1 with plain momentum 0.9 (torch.optim.SGD, no Nesterov), weight decay 1e-4 on every parameter"

RECIPES = {
    "demo": {
        "source": "lt_plugin's short job on the built-in digits (README, `make demo`): 3 levels of 5 epochs, a few "
                  "minutes on 2 CPU cores, 40% of the training images held out so that Lottery Pools' validation "
                  "split can resolve a gain of a few images, SGD lr 0.1 with plain momentum 0.9 as the papers' CIFAR "
                  "recipes; not a paper's setup",
        "options": dict(epochs=5, batch_size=128, opt="momentum", lr=0.1, momentum=0.9, weight_decay=1e-4,
                        sched="cosine", warmup_epochs=0.0, augment="none", levels=3, val_fraction=0.4),
    },
    "lth-lenet": {
        "source": "Frankle & Carbin, ICLR 2019 (arXiv:1803.03635), Figure 2 and Section 2: LeNet-300-100 on MNIST, "
                  "Adam 1.2e-3, batch 60, 50K iterations (here 55 epochs of 55,000 images: MNIST's 60,000 less 5,000 "
                  "held out), 20% of each fully connected layer per round, the output layer 10%, layer-wise, rewound "
                  "to init, the early-stopping iteration at the lowest validation loss; use --model lenet_300_100 "
                  "(28x28 grayscale)",
        "options": dict(_LTH, lr=1.2e-3, epochs=55, image_size=28, layer_prune_fractions={"fc": 0.1}),
    },
    "lth-conv2": _lth_conv(2e-4, 20_000, 0.1, "Conv-2"),
    "lth-conv4": _lth_conv(3e-4, 25_000, 0.1, "Conv-4"),
    "lth-conv6": _lth_conv(3e-4, 30_000, 0.15, "Conv-6"),
    "lth-cifar": {
        "source": "Frankle & Carbin, ICLR 2019 (arXiv:1803.03635), ResNet-20 on CIFAR-10 as open_lth trains it "
                  "(github.com/facebookresearch/open_lth: models/cifar_resnet.py default_hparams, "
                  f"datasets/cifar10.py): {_PLAIN_SGD}, batch 128, 160 epochs, x0.1 at epochs 80 and 120, pad-4 crop "
                  "and flip, 20% of the remaining weights per level by global magnitude, rewinding to init",
        "options": dict(_CIFAR_SGD, epochs=160, batch_size=128, prune_fraction=0.2, scope="global", rewind="init"),
    },
    "lth-vgg-cifar": {
        "source": "Frankle & Carbin, ICLR 2019 (arXiv:1803.03635), section 4: a deeper network (VGG) gives tickets "
                  "rewound to init only with linear LR warm-up (theirs: 10,000 iterations of batch 64 for VGG-19, "
                  "12.8 epochs); the training is open_lth's VGG-16 on CIFAR-10 (models/cifar_vgg.py "
                  f"default_hparams): {_PLAIN_SGD}, batch 128, 160 epochs, x0.1 at epochs 80 and 120, pad-4 crop and "
                  "flip, 20% per level by global magnitude",
        "options": dict(_CIFAR_SGD, epochs=160, batch_size=128, warmup_epochs=12.8, prune_fraction=0.2,
                        scope="global", rewind="init"),
    },
    "eb-cifar": {
        "source": "You et al., ICLR 2020 (arXiv:1909.11957), VGG/PreResNet on CIFAR as the reference code trains "
                  "them (github.com/GATECH-EIC/Early-Bird-Tickets: main.py, scripts/standard-train/search.sh): "
                  f"{_PLAIN_SGD}, batch 256, 160 epochs, x0.1 at epochs 80 and 120, pad-4 crop and flip, "
                  "BatchNorm-scale L1 penalty 1e-4, prune ratios 0.3/0.5/0.7, mask distance 0.1 over the last 5 "
                  "masks of BatchNorm channels; the ticket trains the rest of the schedule from its emergence epoch "
                  "(scripts/retrain_continue, main_c.py), the cost the paper's savings count",
        "options": dict(_CIFAR_SGD, epochs=160, batch_size=256, penalty=1e-4, ratios=[0.3, 0.5, 0.7], epsilon=0.1,
                        window=5, distance="norm", retrain_schedule="continue"),
    },
    "lottery-pools-cifar": {
        "source": "Yin, Liu et al., AAAI 2023 (arXiv:2208.10842), the IMP runs whose tickets are pooled "
                  "(github.com/luuyin/Lottery-pools: CIFAR/main_imp.py defaults, CIFAR/dataset.py, the README's "
                  f"command): {_PLAIN_SGD}, batch 128, 182 epochs, x0.1 at epochs 91 and 136, pad-4 crop and flip, "
                  "5,000 of the 50,000 training images held out, 20% per level for 18 levels, rewinding to epoch 9",
        "options": dict(_CIFAR_SGD, epochs=182, batch_size=128, decay_milestones=(0.5, 136 / 182), val_fraction=0.1,
                        prune_fraction=0.2, levels=18, rewind="9ep"),
    },
}


def recipe_options(name: str, strategy_class) -> dict:
    """The values recipe `name` gives to the options `strategy_class` has."""
    if name not in RECIPES:
        raise UserError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)} (see lt-plugin recipes)")
    fields = {field.name for field in dataclasses.fields(strategy_class)}
    return {key: copy.deepcopy(value) for key, value in RECIPES[name]["options"].items() if key in fields}
