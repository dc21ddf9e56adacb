"""The image transforms of `load_data`: timm's up to 8-bit pixels (normalised later, a whole batch at a time), the
training augmentations by name (`AUGMENTATIONS`, which the CLI offers), and the PIL modes and channel counts they
work in.

No `datasets` here: `experiment.py` reads AUGMENTATIONS from this module when `import lt_plugin` imports it.
"""

from __future__ import annotations

import warnings
from typing import List

import numpy as np
import torch
from timm.data import create_transform, resolve_data_config
from torchvision import transforms

from ..errors import LtPluginWarning, UserError, first_line

AUGMENTATIONS = {
    "none": "no augmentation",
    "crop-flip": "pad by 4 pixels, random crop at the image size, horizontal flip: the small-image (CIFAR) recipe "
                 "of the lottery-ticket papers",
    "crop": "crop-flip without the flip, for images that must not be mirrored (digits, text)",
    "imagenet": "timm's ImageNet recipe (random resized crop down to 8% of the area, flip, colour jitter), for "
                "large images; its options in --augment-kwargs",
}
CROP_PADDING = 4  # pixels on each side, as the references pad CIFAR's 32x32 images
SMALL_IMAGE_SIDE = 64  # source images below this lose too much to timm's random-resized crop


def _pixel_transform(image_size: int, in_chans: int, is_training: bool, **options):
    """timm's transform up to uint8 pixels [C, H, W], without ToTensor's scaling and the normalisation.

    This is how timm splits it for its prefetching loader: the normalisation is then done on whole splits at once
    (`loaders.normalise_pixels`), with the same arithmetic as ToTensor + Normalize.
    """
    return create_transform(input_size=(in_chans, image_size, image_size), is_training=is_training, crop_pct=1.0,
                            interpolation="bicubic", use_prefetcher=True, **options)


class EvalPixels:
    """timm's evaluation transform up to uint8 pixels [C, H, W] (`_pixel_transform`). It resizes an image to the
    side and crops all of it, which leaves an image of that size as it is: such an image's pixels are read straight
    from it (a fifth of the time, the same values)."""

    def __init__(self, image_size: int, in_chans: int):
        self.side = image_size
        self.transform = _pixel_transform(image_size, in_chans, is_training=False)

    def __call__(self, image) -> torch.Tensor:
        if image.size != (self.side, self.side):
            return self.transform(image)
        pixels = torch.from_numpy(np.array(image))  # [H, W] for one channel, else [H, W, C]
        return pixels.unsqueeze(0) if pixels.dim() == 2 else pixels.permute(2, 0, 1)


def _augmentation(augment: str, augment_kwargs: dict, image_size: int, in_chans: int):
    """The random training transform of an augmentation name: timm's, on PIL images, for "imagenet"; torchvision's
    shift (and flip) on uint8 pixel tensors at the image size for the small-image recipes; None for "none"."""
    if augment not in AUGMENTATIONS:
        raise UserError(f"augment must be one of {', '.join(AUGMENTATIONS)}, not {augment!r}")
    if augment_kwargs and augment != "imagenet":
        raise UserError(f"augment_kwargs (timm's create_transform options) apply to augment 'imagenet', "
                        f"not {augment!r}")
    if augment == "imagenet":
        try:
            return _pixel_transform(image_size, in_chans, is_training=True, **augment_kwargs)
        except TypeError as exc:
            raise UserError(f"augment_kwargs {augment_kwargs}: {first_line(exc)}") from None
    if augment == "none":
        return None
    shift = [transforms.RandomCrop(image_size, padding=CROP_PADDING)]
    if augment == "crop-flip":
        shift.append(transforms.RandomHorizontalFlip())
    return transforms.Compose(shift)


def _warn_if_small(image, name: str) -> None:
    width, height = image.size
    if min(width, height) < SMALL_IMAGE_SIDE:
        warnings.warn(f"augment 'imagenet' crops random areas down to 8% of an image and jitters its colours, which "
                      f"destroys small images like the {width}x{height} of {name}: use 'crop-flip', or 'crop' for "
                      "images that must not be mirrored (digits, text)", LtPluginWarning, stacklevel=4)


def _in_mode(image, in_chans: int):
    """The PIL image as 'L' for 1-channel models, else as 'RGB', except that grayscale stays 'L'.

    A grayscale image transformed once and copied into 3 channels gives the same pixels as converting it to RGB
    first, for a third of the work; `normalise_pixels` does the copying.
    """
    mode = "L" if in_chans == 1 or image.mode == "L" else "RGB"
    return image if image.mode == mode else image.convert(mode)


def _same_channels(pixels: List[torch.Tensor], channels: int) -> List[torch.Tensor]:
    """uint8 pixels [..., C or 1, H, W] as they are when all have one channel count, else all with `channels`
    (grayscale images, or batches of them, among colour ones)."""
    if len({p.shape[-3] for p in pixels}) == 1:
        return pixels
    return [p.expand(*p.shape[:-3], channels, *p.shape[-2:]) for p in pixels]


def data_config_for(model: torch.nn.Module, image_size: int) -> dict:
    """timm's data config (mean, std, interpolation, input_size...) for `model`, at `image_size` with no crop."""
    in_chans = next((m.in_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)), 3)
    return resolve_data_config({"input_size": (in_chans, image_size, image_size), "crop_pct": 1.0}, model=model)
