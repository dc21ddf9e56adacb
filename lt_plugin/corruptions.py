"""Corrupted copies of a test split, as CIFAR-10-C makes them (Hendrycks & Dietterich 2019), on torch.

Six of CIFAR-10-C's corruptions at its five severities, with its constants (`make_cifar_c.py`): Gaussian noise, shot
noise, Gaussian blur, contrast, brightness and JPEG. Each works on pixels in [0, 1] and its result is stored as whole
8-bit pixel values, as CIFAR-10-C stores them; the noise comes from a seeded generator, so the same seed gives the same
images on every run and every process.

Why not a package: `imagecorruptions` 1.1.2 fails to import without `pkg_resources` and its Gaussian blur calls
scikit-image with an argument scikit-image removed (`multichannel`); `corrupt-tta` installs OpenCV and scikit-image
(about 250 MB); both use ImageNet-C's constants, made for 224-pixel images, and NumPy's global random state.
"""

from __future__ import annotations

import io
from typing import Callable, Dict, Iterator, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .data import PreparedImages

SEVERITIES = (1, 2, 3, 4, 5)


def gaussian_noise(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    scale = (0.04, 0.06, 0.08, 0.09, 0.10)[severity - 1]
    return (x + scale * torch.randn(x.shape, generator=generator)).clamp(0, 1)


def shot_noise(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    photons = (500, 250, 100, 75, 50)[severity - 1]
    return (torch.poisson(x * photons, generator=generator) / photons).clamp(0, 1)


def gaussian_blur(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    sigma = (0.4, 0.6, 0.7, 0.8, 1.0)[severity - 1]
    radius = int(4 * sigma + 0.5)  # scikit-image's gaussian: truncate=4, edges repeated (mode "nearest")
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    out = F.pad(x, (radius,) * 4, mode="replicate")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    out = F.conv2d(out, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    return out.clamp(0, 1)


def contrast(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    factor = (0.75, 0.5, 0.4, 0.3, 0.15)[severity - 1]
    means = x.mean(dim=(2, 3), keepdim=True)
    return ((x - means) * factor + means).clamp(0, 1)


def brightness(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """HSV value + c, clipped. With hue and saturation fixed, RGB is proportional to the value (a black pixel has
    saturation 0 and becomes grey), so this equals scikit-image's rgb2hsv -> shift -> hsv2rgb without the round trip."""
    shift = (0.05, 0.1, 0.15, 0.2, 0.3)[severity - 1]
    value = x.amax(dim=1, keepdim=True)
    new_value = (value + shift).clamp(max=1)
    scaled = x * (new_value / value.clamp(min=1e-12))
    return torch.where(value > 0, scaled, new_value.expand_as(x)).clamp(0, 1)


def jpeg_compression(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    quality = (80, 65, 58, 50, 40)[severity - 1]
    mode = "L" if x.shape[1] == 1 else "RGB"  # grayscale images (MNIST-like) are compressed as grayscale
    out = torch.empty_like(x)
    for i, image in enumerate(_to_uint8(x)):
        buffer = io.BytesIO()
        array = image.permute(1, 2, 0).numpy()
        Image.fromarray(array[:, :, 0] if mode == "L" else array).save(buffer, "JPEG", quality=quality)  # as -C
        buffer.seek(0)
        decoded = torch.from_numpy(np.array(Image.open(buffer).convert(mode))).reshape(*image.shape[1:], -1)
        out[i] = decoded.permute(2, 0, 1).to(x.dtype) / 255
    return out


CORRUPTIONS: Dict[str, Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]] = {
    "gaussian_noise": gaussian_noise, "shot_noise": shot_noise, "gaussian_blur": gaussian_blur,
    "contrast": contrast, "brightness": brightness, "jpeg_compression": jpeg_compression,
}


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] as 8-bit values, truncated like CIFAR-10-C's np.uint8(...)."""
    return (x * 255).clamp(0, 255).to(torch.uint8)


def corrupt(pixels: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """Corruption `name` at `severity` (1-5) of pixels [N, C, H, W] in [0, 1] (C: 1 or 3); returns pixels in [0, 1]
    that are whole multiples of 1/255. The same (pixels, name, severity, seed) always gives the same result."""
    return corrupt_to_uint8(pixels, name, severity, seed).float() / 255


def corrupt_to_uint8(pixels: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """`corrupt`, as the 8-bit values [N, 3, H, W] that CIFAR-10-C stores."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; choose from {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be 1 to 5, not {severity}")
    index = list(CORRUPTIONS).index(name)
    generator = torch.Generator().manual_seed(seed * 1_000 + index * 10 + severity)
    return _to_uint8(CORRUPTIONS[name](pixels.float(), severity, generator))


def corrupted_copies(dataset: PreparedImages, seed: int = 0, samples: Optional[int] = None
                     ) -> Iterator[Tuple[str, int, PreparedImages]]:
    """(corruption, severity, corrupted copy of `dataset`) for every corruption and severity, one at a time; each
    copy holds 8-bit pixels normalised as `dataset`'s are. `samples`: corrupt only that many images, drawn with
    `seed` (kept in their order), instead of all."""
    labels = dataset.labels
    if samples is not None and samples < len(dataset):
        chosen = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:samples].sort().values
        pixels, labels = dataset.pixels[chosen.tolist()], labels[chosen]
    else:
        pixels = dataset.pixels[:]
    pixels = pixels.expand(-1, len(dataset.mean), -1, -1).float() / 255
    for name in CORRUPTIONS:
        for severity in SEVERITIES:
            corrupted = corrupt_to_uint8(pixels, name, severity, seed)
            yield name, severity, PreparedImages(corrupted, labels, dataset.mean, dataset.std)
