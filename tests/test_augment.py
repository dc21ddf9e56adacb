"""Augmentation by name: the small-image recipes shift (and flip) the images, learn on the built-in digits, and an
augmented run resumed after a crash ends with the uninterrupted run's weights; imagenet on small images warns."""

import pytest
import torch

from lt_plugin.callbacks import Lambda
from lt_plugin.data import CROP_PADDING, AugmentedImages, PreparedImages, load_data
from lt_plugin.errors import LtPluginWarning, UserError
from lt_plugin.experiment import Experiment
from lt_plugin.train import TrainConfig, fit, make_accelerator, steps_per_epoch

SIZE = 16


@pytest.fixture(scope="module")
def plain():
    return load_data("digits", image_size=SIZE)


def placements(image: torch.Tensor, fill: torch.Tensor) -> list:
    """Every shift of `image` by up to CROP_PADDING pixels, padded with `fill` (per channel)."""
    padded = fill.expand(-1, SIZE + 2 * CROP_PADDING, SIZE + 2 * CROP_PADDING).clone()
    padded[:, CROP_PADDING:-CROP_PADDING, CROP_PADDING:-CROP_PADDING] = image
    return [padded[:, y:y + SIZE, x:x + SIZE] for y in range(2 * CROP_PADDING + 1) for x in range(2 * CROP_PADDING + 1)]


def matches(drawn: torch.Tensor, candidates: list) -> bool:
    return any(torch.allclose(drawn, c, atol=1e-6) for c in candidates)


@pytest.mark.parametrize("augment", ["crop", "crop-flip"])
def test_small_image_recipes_shift_by_up_to_4_pixels_and_only_crop_flip_mirrors(plain, augment):
    data = load_data("digits", image_size=SIZE, augment=augment)
    assert isinstance(data.train, AugmentedImages) and data.train.images.dtype == torch.uint8  # prepared once
    assert isinstance(data.val, PreparedImages)
    assert torch.equal(data.val.images, plain.val.images)
    black = (0 - data.train.mean) / data.train.std  # the padding is black pixels, as in the references
    mirrored = 0
    for index in range(20):
        image, label = data.train[index]
        assert label == plain.train[index][1]
        original = plain.train.images[index]
        shifted = matches(image, placements(original, black))
        flipped = matches(image, placements(original.flip(-1), black))
        assert shifted or flipped
        mirrored += flipped and not shifted
    assert (mirrored > 0) == (augment == "crop-flip")
    torch.manual_seed(3)
    first = torch.stack([data.train[i][0] for i in range(8)])
    torch.manual_seed(3)
    assert torch.equal(first, torch.stack([data.train[i][0] for i in range(8)]))  # draws follow torch's seed


def test_imagenet_on_small_images_warns_and_names_the_small_image_recipes():
    with pytest.warns(LtPluginWarning, match="8x8 of digits: use 'crop-flip', or 'crop'"):
        data = load_data("digits", image_size=SIZE, augment="imagenet", augment_kwargs={"hflip": 0.0})
    assert data.train[0][0].shape == (3, SIZE, SIZE)


@pytest.mark.parametrize("settings, message", [
    (dict(augment="sideways"), "augment must be one of none, crop-flip, crop, imagenet"),
    (dict(augment="crop", augment_kwargs={"hflip": 0.0}), "apply to augment 'imagenet', not 'crop'"),
    (dict(augment="imagenet", augment_kwargs={"bogus": 1}), "augment_kwargs {'bogus': 1}"),
])
def test_augmentation_mistakes_are_user_errors(settings, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("{", r"\{").replace("}", r"\}")):
        load_data("digits", image_size=SIZE, **settings)


@pytest.mark.parametrize("augment", ["crop", "crop-flip"])
def test_small_image_recipes_learn_on_the_built_in_digits(tmp_path, augment):
    cfg = TrainConfig(epochs=3, batch_size=32, lr=0.05)
    experiment = Experiment(model="test_resnet", image_size=SIZE, max_train_samples=256, augment=augment)
    data = experiment.load_data()
    result = fit(experiment.create_model(data.num_classes, seed=0), data.train, data.val, cfg, tmp_path,
                 accelerator=make_accelerator(cfg))
    chance = 1 / data.num_classes
    assert result.history[-1]["train_accuracy"] > 2.5 * chance, result.history


def test_an_augmented_run_resumed_after_a_crash_ends_with_the_uninterrupted_weights(tmp_path):
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.05)
    experiment = Experiment(model="test_resnet", image_size=SIZE, max_train_samples=128, augment="crop-flip")
    data = experiment.load_data()
    steps = []

    def crash(_state):
        steps.append(1)
        if len(steps) == steps_per_epoch(cfg, len(data.train)) + 2:  # mid-epoch 2, after the epoch-1 checkpoint
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(experiment.create_model(data.num_classes, seed=0), data.train, data.val, cfg, tmp_path / "crashed",
            accelerator=make_accelerator(cfg), callbacks=[Lambda(before_optimizer_step=crash)])
    resumed = fit(experiment.create_model(data.num_classes, seed=5), data.train, data.val, cfg, tmp_path / "crashed",
                  accelerator=make_accelerator(cfg))
    straight = fit(experiment.create_model(data.num_classes, seed=0), data.train, data.val, cfg, tmp_path / "straight",
                   accelerator=make_accelerator(cfg))
    reference = straight.model.state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in resumed.model.state_dict().items())
    assert resumed.history == [{**h, "seconds": r["seconds"]} for h, r in zip(straight.history, resumed.history)]
