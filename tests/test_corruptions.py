"""CIFAR-10-C's corruptions against the published procedure (Hendrycks & Dietterich 2019, make_cifar_c.py of
hendrycks/robustness): every corruption at every severity computed independently here, in float64 as NumPy
computes them there, from the published parameters; the noises by the spread their scale gives."""

import colorsys
import io

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage, stats

from lt_plugin.corruptions import CORRUPTIONS, corrupt, corrupt_to_uint8, corrupted_copies
from lt_plugin.experiment import Experiment

# make_cifar_c.py's parameter of each corruption at severities 1 to 5
PUBLISHED = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # the normal noise's standard deviation
    "shot_noise": (500, 250, 100, 75, 50),  # photons at full intensity: Poisson(x * c) / c
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),  # sigma of skimage.filters.gaussian
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # (x - channel mean) * c + channel mean
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),  # HSV value + c
    "jpeg_compression": (80, 65, 58, 50, 40),  # PIL's JPEG quality
}


def _data():
    return Experiment(model="test_resnet", dataset="digits", image_size=8, max_train_samples=512).load_data()


def _pixels(n=4, size=12, seed=0):
    return (torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 255).floor() / 255


def _contrast(x, c):
    means = x.mean(axis=(0, 1), keepdims=True)
    return (x - means) * c + means


def _brightness(x, c):
    out = np.empty_like(x)
    for i, j in np.ndindex(*x.shape[:2]):
        h, s, v = colorsys.rgb_to_hsv(*x[i, j])
        out[i, j] = colorsys.hsv_to_rgb(h, s, min(v + c, 1.0))
    return out


def _blur(x, c):  # skimage.filters.gaussian(multichannel=True): scipy's filter, edges repeated, truncate 4
    return ndimage.gaussian_filter(x, sigma=(c, c, 0), mode="nearest", truncate=4.0)


REFERENCE = {"contrast": _contrast, "brightness": _brightness, "gaussian_blur": _blur}
# Our float32 against the reference's float64: a value within this of a whole number may truncate to either side
# (brightness at severity 4 puts the brightest channel at exactly p + 51 in real numbers). float32 keeps 24 bits;
# the ~20 roundings of a 9-tap blur in two passes stay below 20 * 2**-24 * 255 < 4e-4.
NEAR_WHOLE = 1e-3


@pytest.mark.parametrize("name", list(REFERENCE))
def test_deterministic_corruptions_are_make_cifar_c_at_every_severity(name):
    images = (torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 256).floor().to(torch.uint8)
    for severity, c in enumerate(PUBLISHED[name], start=1):
        ours = corrupt_to_uint8(images.float() / 255, name, severity).permute(0, 2, 3, 1).numpy()
        for image, got in zip(images.permute(0, 2, 3, 1).numpy(), ours):
            value = np.clip(REFERENCE[name](image / 255.0, c), 0, 1) * 255  # np.uint8() of this is CIFAR-10-C's
            expected = value.astype(np.uint8)
            near = np.abs(value - np.round(value)) < NEAR_WHOLE
            assert np.array_equal(got[~near], expected[~near]), (name, severity)
            assert np.abs(got[near].astype(int) - expected[near]).max(initial=0) <= 1, (name, severity)
            assert (~near).mean() > 0.5  # most values are compared exactly


def test_jpeg_is_pils_at_the_published_quality():
    images = (torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 256).floor().to(torch.uint8)
    for severity, quality in enumerate(PUBLISHED["jpeg_compression"], start=1):
        ours = corrupt_to_uint8(images.float() / 255, "jpeg_compression", severity)
        for image, got in zip(images, ours):
            buffer = io.BytesIO()
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, "JPEG", quality=quality)
            expected = np.array(Image.open(buffer))
            assert np.array_equal(got.permute(1, 2, 0).numpy(), expected), severity


def _level_moments(levels, probabilities):
    mean = (levels * probabilities).sum()
    return mean, (((levels - mean) ** 2) * probabilities).sum() ** 0.5


def _gaussian_levels(x, c):
    """Mean and standard deviation of np.uint8(clip(x + N(0, c), 0, 1) * 255), from the normal distribution."""
    edges = np.arange(1, 256) / 255  # level l for x + n in [l / 255, (l + 1) / 255); 0 below, 255 from 1 on
    cdf = stats.norm.cdf((edges - x) / c)
    return _level_moments(np.arange(256), np.diff(np.concatenate([[0.0], cdf, [1.0]])))


def _shot_levels(x, c):
    """Mean and standard deviation of np.uint8(clip(Poisson(x * c) / c, 0, 1) * 255), from the Poisson law."""
    photons = np.arange(int(x * c + 20 * (x * c) ** 0.5 + 50))
    return _level_moments(np.floor(np.minimum(photons / c, 1) * 255), stats.poisson.pmf(photons, x * c))


@pytest.mark.parametrize("name,levels", [("gaussian_noise", _gaussian_levels), ("shot_noise", _shot_levels)],
                         ids=["gaussian_noise", "shot_noise"])
def test_the_noises_have_the_spread_of_their_published_scale(name, levels):
    """On a grey image of N = 49,152 values, their mean and standard deviation against those the published scale
    gives the stored 8-bit levels (the noise's law, clipped and truncated). A standard deviation estimated from N
    values is off by about s / sqrt(2N) (0.3%): 3% is ten such errors, while the scales of two severities differ
    by 10% or more and ImageNet-C's are 1.5 to 4 times CIFAR-10-C's. The mean is allowed six standard errors."""
    x = 128 / 255
    grey = torch.full((4, 3, 64, 64), x)
    for severity, c in enumerate(PUBLISHED[name], start=1):
        stored = corrupt_to_uint8(grey, name, severity, seed=0).double()
        mean, spread = levels(x, c)
        assert float(stored.std()) == pytest.approx(spread, rel=0.03), severity
        assert float(stored.mean()) == pytest.approx(mean, abs=6 * spread / stored.numel() ** 0.5), severity


def test_corruptions_are_seeded_and_stay_8_bit():
    x = _pixels()
    for name in CORRUPTIONS:
        a, b = corrupt(x, name, 3, seed=1), corrupt(x, name, 3, seed=1)
        assert torch.equal(a, b), name
        assert torch.equal(a * 255, (a * 255).round()) and a.min() >= 0 and a.max() <= 1, name
        assert not torch.equal(corrupt(x, name, 1), corrupt(x, name, 5)), name
    assert not torch.equal(corrupt(x, "gaussian_noise", 3, seed=1), corrupt(x, "gaussian_noise", 3, seed=2))


def test_corrupted_copies_corrupt_the_8_bit_pixels_and_normalise_them_as_the_split_is():
    data = _data()  # test_resnet's normalisation: mean 0.5, std 0.5
    copies = list(corrupted_copies(data.test))
    assert len(copies) == len(CORRUPTIONS) * 5
    name, severity, contrast_1 = next(c for c in copies if c[0] == "contrast" and c[1] == 1)
    pixels = ((data.test.images * 0.5 + 0.5) * 255).round() / 255  # the 8-bit pixels the images were made from
    assert torch.allclose(contrast_1.images * 0.5 + 0.5, corrupt(pixels, "contrast", 1), atol=1e-5)
    assert torch.equal(contrast_1.labels, data.test.labels)


def test_corrupted_copies_of_a_sample_corrupt_the_drawn_images_with_their_labels():
    data = _data()
    copies = list(corrupted_copies(data.test, seed=3, samples=5))
    assert len(copies) == len(CORRUPTIONS) * 5
    first = copies[0][2]
    assert len(first) == 5 and all(len(c[2]) == 5 for c in copies)
    # The drawn images are test images, each with its own label, in the split's order.
    test_pixels = data.test.pixels[:].expand(-1, len(data.test.mean), -1, -1)
    name, severity, contrast_1 = next(c for c in copies if c[0] == "contrast" and c[1] == 1)
    matches = [[i for i in range(len(data.test))
                if torch.equal(corrupt_to_uint8(test_pixels[i:i + 1].float() / 255, "contrast", 1)[0],
                               contrast_1.pixels[k])] for k in range(5)]
    rows = [m[0] for m in matches]
    assert all(matches) and rows == sorted(rows) and len(set(rows)) == 5
    assert contrast_1.labels.tolist() == [int(data.test.labels[r]) for r in rows]
    again = list(corrupted_copies(data.test, seed=3, samples=5))
    assert all(torch.equal(a[2].pixels, b[2].pixels) for a, b in zip(copies, again))
    assert len(list(corrupted_copies(data.test, samples=10 ** 6))[0][2]) == len(data.test)


def test_grayscale_images_are_corrupted_as_grayscale():
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    for name in CORRUPTIONS:
        assert corrupt(x, name, 3).shape == x.shape, name
    gray = corrupt(x, "jpeg_compression", 2)
    rgb = corrupt(x.expand(-1, 3, -1, -1), "jpeg_compression", 2)
    assert (gray - rgb.mean(dim=1, keepdim=True)).abs().max() < 0.05  # a gray image's JPEG, one channel or three
