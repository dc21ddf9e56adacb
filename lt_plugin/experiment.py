"""What every strategy trains: a timm model on a dataset, at an image size."""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import functools
import inspect
import json
import pickle
import textwrap
from pathlib import Path
from typing import Optional

import timm
import torch
from torch import nn

from .data.streaming import SHUFFLE_BUFFER  # neither module imports `datasets`, which is slow to import
from .data.transforms import AUGMENTATIONS
from .errors import UnsupportedModelError, UserError, first_line
from .model_checks import check_forward
from .recipes import RECIPES

# An argument no timm model takes, which `takes_img_size` passes beside img_size: the call of timm's builder that
# carries it is the one the caller's arguments reach, not that of a part built first (a hybrid ViT's ResNet).
_PROBE_ARGUMENT = "lt_plugin_probe"


class _SizeMismatch(UserError):
    """A pretrained file whose tensors do not have the model's shapes."""


class _BuilderReached(BaseException):
    """Stops `takes_img_size` where timm's builder would build the model, with what it was given. A BaseException,
    so that no `except Exception` of an entrypoint catches it."""

    def __init__(self, model_cls, kwargs: dict):
        super().__init__()
        self.model_cls, self.kwargs = model_cls, kwargs


def _stopping(builder):
    """`builder` (timm's build_model_with_cfg), stopping the calls that carry the probe argument only."""
    def build(*args, **kwargs):
        if _PROBE_ARGUMENT in kwargs:
            raise _BuilderReached(args[0] if args else kwargs["model_cls"], kwargs)
        return builder(*args, **kwargs)
    return build


def _names(function, name: str) -> bool:
    """Whether `function` has a parameter `name` that a keyword argument binds to."""
    try:
        parameter = inspect.signature(function).parameters.get(name)
    except (TypeError, ValueError):  # a builtin without a signature
        return False
    return parameter is not None and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)


def _passes_kwargs_to_super(init) -> bool:
    """Whether the source of `init` calls `super().__init__(..., **kwargs)` with its own **kwargs: the one way of
    passing them on that says where they go. False without source, and for **kwargs handed to parts or kept."""
    try:
        var_keyword = [p.name for p in inspect.signature(init).parameters.values() if p.kind is p.VAR_KEYWORD]
        tree = ast.parse(textwrap.dedent(inspect.getsource(init)))
    except (OSError, TypeError, ValueError, SyntaxError):
        return False
    return any(isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "__init__"
               and isinstance(node.func.value, ast.Call) and isinstance(node.func.value.func, ast.Name)
               and node.func.value.func.id == "super"
               and any(keyword.arg is None and isinstance(keyword.value, ast.Name) and keyword.value.id in var_keyword
                       for keyword in node.keywords)
               for node in ast.walk(tree))


def _reaches_parameter(model_cls, name: str) -> bool:
    """Whether `model_cls(name=...)` gives `name` to an __init__ that names it: the class's own, or one up its MRO
    that the **kwargs of those before go on to through super(). `model_cls` may also be a function."""
    if not isinstance(model_cls, type):
        return _names(model_cls, name)
    for cls in model_cls.__mro__:
        init = vars(cls).get("__init__")
        if init is None:
            continue
        if _names(init, name):
            return True
        if not _passes_kwargs_to_super(init):
            return False
    return False


@functools.lru_cache(maxsize=None)
def takes_img_size(model_name: str) -> bool:
    """Whether the constructor of a timm model uses `img_size` (ViT, DeiT, Swin, MobileViT...), without building it.

    Asking the constructor is not enough: one that takes **kwargs accepts img_size, then may hand it to parts that
    refuse it (MetaFormer's token mixers, in poolformer and caformer). So the question goes to the class the arguments
    reach. Entrypoints, timm's and lt_plugin's, end in timm's build_model_with_cfg: while the probe runs, the
    entrypoint's module calls a copy that stops the call carrying the probe argument before anything is built (a few
    ms), with the class and the arguments left by then. img_size is used when it is among them and the class's
    __init__ names it, or a parent's __init__ that the **kwargs reach through super() (DeiT's and LeViT's distilled
    models): a hop followed only where the source shows it. On timm 1.0.31 the answer is False exactly for the 692 of
    its 1,371 models that refuse img_size when built with it (on the meta device). An entrypoint that builds without
    timm's builder is built: then the model's class answers, or a constructor's refusal that names the probe first."""
    namespace = timm.models.model_entrypoint(model_name).__globals__  # the entrypoint's module
    builder = timm.models.build_model_with_cfg
    keys = [key for key, value in namespace.items() if value is builder]  # its name there, and any alias
    namespace.update(dict.fromkeys(keys, _stopping(builder)))
    try:
        model = timm.create_model(model_name, pretrained=False, img_size=224, **{_PROBE_ARGUMENT: True})
    except _BuilderReached as reached:
        return "img_size" in reached.kwargs and _reaches_parameter(reached.model_cls, "img_size")
    except TypeError as exc:  # a constructor binding its arguments names the first it does not take
        return _PROBE_ARGUMENT in str(exc)
    except Exception:  # a constructor that took both and failed on something else: leave img_size out
        return False
    finally:
        namespace.update(dict.fromkeys(keys, builder))
    return _reaches_parameter(type(model), "img_size")


_shared_data: Optional[dict] = None  # data loaded inside data_loaded_once(), by its options


@contextlib.contextmanager
def data_loaded_once():
    """Inside the block, `Experiment.load_data` loads the data of the same options once: a replicated run's seeds
    pay for it once, not once per seed."""
    global _shared_data
    outer, _shared_data = _shared_data, ({} if _shared_data is None else _shared_data)
    try:
        yield
    finally:
        _shared_data = outer


@dataclasses.dataclass
class Experiment:
    """The model and data half of a strategy's hyperparameters."""

    recipe: Optional[str] = dataclasses.field(default=None, metadata={
        "type": str, "help": f"a published training setup ({', '.join(RECIPES)}; lt-plugin recipes shows their "
                             "sources and values) filling the defaults of the other options; options given win"})
    model: str = dataclasses.field(default="resnet18", metadata={"help": "timm model name"})
    model_kwargs: dict = dataclasses.field(default_factory=dict,
                                           metadata={"help": "extra timm.create_model arguments, as JSON"})
    pretrained_file: Optional[str] = dataclasses.field(default=None, metadata={
        "type": str, "help": "start from the weights in this local file (.safetensors, or .pth/.bin read with "
                             "torch.load(weights_only=True): nothing is unpickled) through timm's pretrained config; "
                             "a classifier of another class count is left new; rewinding to init goes back to them"})
    dataset: str = dataclasses.field(default="digits", metadata={
        "help": "digits | fashion-mnist | an image folder | a saved dataset folder | a Hugging Face hub name"})
    image_size: int = dataclasses.field(default=32, metadata={
        "help": "side of the square input images; timm models that take an img_size (ViT, DeiT, Swin...) are built "
                "for it"})
    val_fraction: float = dataclasses.field(default=0.1, metadata={"help": "share of train held out for validation"})
    augment: str = dataclasses.field(default="none", metadata={
        "choices": tuple(AUGMENTATIONS),
        "help": "training augmentation: crop-flip for small images, crop for small images that must not be "
                "mirrored (digits), imagenet for large images (see docs/data.md)"})
    augment_kwargs: dict = dataclasses.field(default_factory=dict, metadata={
        "help": "options of timm's create_transform for --augment imagenet, as JSON, e.g. '{\"scale\": [0.35, 1], "
                "\"hflip\": 0}'"})
    data_in_memory: str = dataclasses.field(default="auto", metadata={
        "choices": ("auto", "yes", "no"),
        "help": "yes: transform every image once and keep its 8-bit pixels in memory; no: decode and transform "
                "images as they are read, in --num-workers processes (for data larger than memory); auto: in memory "
                "when the pixels take at most a quarter of the memory available (results are the same either way)"})
    streaming: bool = dataclasses.field(default=False, metadata={
        "help": "read the dataset as a stream (datasets' IterableDataset): a hub dataset is then not downloaded "
                "first; each process reads its own shards, shuffled among --shuffle-buffer images; a hub dataset needs "
                "its own validation or test split, and the order depends on --num-workers and the number of "
                "processes (see docs/data.md)"})
    shuffle_buffer: Optional[int] = dataclasses.field(default=None, metadata={
        "type": int, "help": f"with --streaming: images each DataLoader worker shuffles among (default "
                             f"{SHUFFLE_BUFFER:,}; held encoded, e.g. ~110 kB each for ImageNet's JPEGs)"})
    max_train_samples: Optional[int] = dataclasses.field(default=None, metadata={
        "type": int, "help": "use at most this many training images"})

    def load_data(self):
        """The experiment's splits; inside `data_loaded_once()`, loaded once for every experiment with the same data
        options (the seeds of a replicated run share them)."""
        from .data import load_data  # `datasets` is slow to import; masks and export do without it
        mean, std = self._norm_stats()
        options = dict(image_size=self.image_size, in_chans=self.in_chans, mean=mean, std=std,
                       val_fraction=self.val_fraction, split_seed=0, augment=self.augment,
                       augment_kwargs=self.augment_kwargs, max_train_samples=self.max_train_samples,
                       in_memory=self.data_in_memory, streaming=self.streaming, shuffle_buffer=self.shuffle_buffer)
        key = json.dumps([self.dataset, options], sort_keys=True, default=str)
        if _shared_data is not None and key in _shared_data:
            return _shared_data[key]
        data = load_data(self.dataset, **options)
        if _shared_data is not None:
            _shared_data[key] = data
        return data

    def _norm_stats(self):
        self._check_model_name()
        cfg = timm.models.get_pretrained_cfg(self.model)
        if cfg is None:
            return None, None
        return cfg.mean, cfg.std

    @property
    def in_chans(self) -> int:
        """The model's input channels: `in_chans` in --model-kwargs, else its pretrained config's (1 for
        LeNet-300-100 on MNIST), else 3. The data are read with as many channels."""
        if "in_chans" in self.model_kwargs:
            return int(self.model_kwargs["in_chans"])
        self._check_model_name()
        cfg = timm.models.get_pretrained_cfg(self.model)
        return int(cfg.input_size[0]) if cfg is not None and cfg.input_size else 3

    def _check_model_name(self):
        if not timm.is_model(self.model):
            raise UserError(f"unknown timm model {self.model!r} (see timm.list_models())")

    def timm_kwargs(self, num_classes: int) -> dict:
        """The timm.create_model arguments of the model: `model_kwargs`, the number of classes, and `img_size` for
        a model whose constructor takes one (unless `model_kwargs` set it), so that it is built for `image_size`."""
        self._check_model_name()
        kwargs = {"num_classes": num_classes, **self.model_kwargs}
        if "img_size" not in kwargs and takes_img_size(self.model):
            kwargs["img_size"] = self.image_size
        return kwargs

    def create_model(self, num_classes: int, seed: int, pretrained: bool = True) -> nn.Module:
        """A timm model that takes `example_inputs()`: initialised from `seed` (the same seed, the same weights), then
        given the weights of `pretrained_file` when there is one and `pretrained` (random controls pass False).

        The file's classifier is kept when it has `num_classes` outputs; otherwise timm leaves the classifier new."""
        kwargs = self.timm_kwargs(num_classes)
        if not (pretrained and self.pretrained_file is not None):
            return self._build(kwargs, seed)
        self.check_pretrained_file()
        file = str(Path(self.pretrained_file).resolve())
        try:
            model = self._build({**kwargs, "pretrained_cfg_overlay": {"file": file, "num_classes": num_classes}},
                                seed, pretrained=True)
        except _SizeMismatch:  # a classifier for other classes (e.g. ImageNet's 1000)
            model = self._build({**kwargs, "pretrained_cfg_overlay": {"file": file}}, seed, pretrained=True)
        return model

    def _build(self, kwargs: dict, seed: int, pretrained: bool = False) -> nn.Module:
        torch.manual_seed(seed)
        refused = (f"--pretrained-file {self.pretrained_file} is refused: it is a pickle that would run code to load; "
                   "give weights only (safetensors, or torch.save of a state dict)")
        try:
            model = timm.create_model(self.model, pretrained=pretrained, **kwargs)
        except pickle.UnpicklingError:
            raise UserError(refused) from None
        except RuntimeError as exc:
            if pretrained and "weights_only" in str(exc):  # timm's wording of torch.load(weights_only=True) refusing
                raise UserError(refused) from None
            if pretrained and "size mismatch" in str(exc):
                raise _SizeMismatch(str(exc)) from None
            if pretrained:
                raise UserError(f"--pretrained-file {self.pretrained_file} does not fit {self.model}: "
                                f"{first_line(exc)}") from None
            raise UserError(f"timm cannot build {self.model} with {kwargs}: {first_line(exc)}") from None
        except TypeError as exc:
            raise UserError(f"timm.create_model({self.model!r}) rejected the model kwargs {kwargs}: {exc}") from None
        except Exception as exc:  # timm's constructors raise many types for arguments they cannot build
            raise UserError(f"timm cannot build {self.model} with {kwargs}: {type(exc).__name__}: "
                            f"{first_line(exc)}") from None
        self._check_input_fits(model, kwargs)
        return model

    def _check_input_fits(self, model: nn.Module, kwargs: dict) -> None:
        """An input the model cannot take is the user's mistake: say so now, before a tracer or trainer fails on it."""
        size = self.image_size
        try:
            check_forward(model, self.example_inputs(), "it")
        except UnsupportedModelError as exc:
            built_for = kwargs.get("img_size")
            if built_for is not None and _square(built_for) != (size, size):
                height, width = _square(built_for)
                raise UserError(f"{self.model} was built for {height}x{width} inputs (img_size in --model-kwargs), "
                                f"not {size}x{size}: drop img_size or use --image-size {height}") from None
            smallest = _smallest_input(model, size, _default_side(self.model), self.in_chans)
            if smallest is not None:
                raise UserError(f"{self.model} needs inputs of at least {smallest}x{smallest} pixels; "
                                f"--image-size is {size}") from None
            raise UserError(f"the {size}x{size} input does not fit {self.model}: {exc}") from None

    def check_pretrained_file(self) -> None:
        if self.pretrained_file is not None and not Path(self.pretrained_file).is_file():
            raise UserError(f"--pretrained-file {self.pretrained_file}: no such file")

    def example_inputs(self) -> torch.Tensor:
        return torch.zeros(1, self.in_chans, self.image_size, self.image_size)


def _square(img_size):
    return (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)


def _default_side(model_name: str) -> int:
    cfg = timm.models.get_pretrained_cfg(model_name)
    return cfg.input_size[-1] if cfg is not None else 224


def _fits(model: nn.Module, side: int, in_chans: int) -> bool:
    try:
        check_forward(model, torch.zeros(1, in_chans, side, side), "")
    except UnsupportedModelError:
        return False
    return True


def _smallest_input(model: nn.Module, failing: int, limit: int, in_chans: int = 3) -> Optional[int]:
    """The smallest square side above `failing` that `model` takes, or None if none up to `limit` does.

    Sides double until one fits, then bisection: small inputs first, as large ones cost the most."""
    if failing >= limit:
        return None
    fitting = min(2 * failing, limit)
    while not _fits(model, fitting, in_chans):
        if fitting >= limit:
            return None
        failing, fitting = fitting, min(2 * fitting, limit)
    while fitting - failing > 1:
        middle = (failing + fitting) // 2
        failing, fitting = (failing, middle) if _fits(model, middle, in_chans) else (middle, fitting)
    return fitting
