"""The `lt-plugin` command. Each strategy's and each branch's options (dataclass fields) become its flags.

The commands are named from `lt_plugin.commands` without importing them: `--help`, `--version`, `strategies`,
`branches` and `recipes` load no torch, timm or scipy, and a command imports only its own strategy's or branch's
module.

A strategy's options come in layers: its defaults, then a recipe's values (--recipe), then a YAML or JSON file's
(--config, which also takes a finished run's config.json), then the flags given on the command line. A training
strategy's `--control NAME --run RUN` runs the control branch NAME on RUN instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import sys
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional

import yaml

from . import __version__, commands
from .commands import CONTROLS
from .errors import LtPluginWarning, UserError, first_line
from .options import default_of, flags_of, upgrade
from .recipes import RECIPES, recipe_options

# Help for training fields that carry none of their own.
_TRAIN_HELP = {
    "epochs": "training epochs per level", "batch_size": "global batch size (split over processes)",
    "eval_batch_size": "evaluation batch size", "opt": "timm optimizer name", "lr": "peak learning rate",
    "momentum": "SGD momentum", "weight_decay": "weight decay",
    "wd_norm_bias": "weight decay on every parameter, normalisation scales and biases included (open_lth, Early-Bird "
                    "and Lottery Pools do so; --no-wd-norm-bias: timm's default, which exempts every 1-D parameter)",
    "sched": "cosine | step | multistep | constant | linear (to zero)",
    "decay_milestones": "fractions of training where the LR decays (multistep, step)",
    "decay_rate": "LR decay factor", "warmup_epochs": "linear LR warm-up epochs",
    "grad_accum_steps": "gradient accumulation steps",
    "mixed_precision": "no | fp16 | bf16 | fp8, for training, evaluation and latency alike; unset: Accelerate's choice "
                       "(accelerate launch --mixed_precision, its config file; else no)",
    "seed": "random seed (initialisation, data order)", "log_with": "Accelerate tracker, e.g. tensorboard",
    "num_workers": "DataLoader worker processes per process, for training and evaluation; unset: none on a CPU, on a "
                   "GPU up to 8 among the cores a process has (one left for it), each prefetching 2 batches",
    "channels_last": "auto | yes | no: convolutions in channels-last memory format (what tensor cores take); auto: "
                     "on GPUs",
    "deterministic": "GPUs: deterministic kernels and no cuDNN autotuning (reproducible, slower); off: cuDNN "
                     "benchmarks its kernels for the fixed input shape",
    "tf32": "GPUs: float32 matmuls and convolutions may use TF32 tensor cores (--no-tf32: full float32)",
    "eval_every": "also validate every N optimizer steps, recording the early-stopping iteration (the lowest "
                  "validation loss) and the test accuracy there; 0: at epoch ends only",
    "sync_bn": "BatchNorm statistics over the global batch on several GPU processes (torch's SyncBatchNorm); "
               "without it each process normalises with its own shard of the batch",
}


def _json_dict(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"drop_rate\": 0.1}'")
    return value


def _value_type(field: dataclasses.Field) -> type:
    """What a field holds: bool, dict, list (for lists and tuples) or the scalar type of its flag."""
    default = default_of(field)
    for kind in (bool, dict):
        if isinstance(default, kind):
            return kind
    if isinstance(default, (list, tuple)):
        return list
    return field.metadata.get("type", type(default) if default is not None else str)


def _item_type(field: dataclasses.Field) -> type:
    default = default_of(field)
    return field.metadata.get("type", type(default[0]) if default else str)


def add_dataclass_flags(parser: argparse.ArgumentParser, cls) -> None:
    """One flag per dataclass field: --field-name, typed from the default (or metadata["type"]).

    A flag not given leaves no attribute in the parsed arguments (argparse.SUPPRESS), so that a recipe or a
    config file can tell it from a flag given with the default value. Allowed values are shown, and checked once,
    by the dataclass (lt_plugin.options.check_choices), wherever the value came from.
    """
    for field in dataclasses.fields(cls):
        flags = flags_of(field)
        meta = field.metadata
        text = f"{meta.get('help', _TRAIN_HELP.get(field.name, ''))} (default: {default_of(field)})"
        kwargs = {"dest": field.name, "default": argparse.SUPPRESS, "help": text.replace("%", "%%")}
        if "choices" in meta:
            kwargs["metavar"] = "{" + ",".join(map(str, meta["choices"])) + "}"
        value_type = _value_type(field)
        if value_type is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif value_type is dict:
            kwargs["type"] = _json_dict
        elif value_type is list:
            kwargs["nargs"] = "*"
            kwargs["type"] = _item_type(field)
        else:
            kwargs["type"] = value_type
        parser.add_argument(*flags, **kwargs)


def _strategy_values(cls, args) -> dict:
    """The strategy's hyperparameters: defaults < recipe < --config file < flags given on the command line."""
    fields = dataclasses.fields(cls)
    given = {field.name: getattr(args, field.name) for field in fields if hasattr(args, field.name)}
    from_file = read_config(args.config, cls) if args.config else {}
    recipe = given.get("recipe", from_file.get("recipe"))
    layered = {**(recipe_options(recipe, cls) if recipe else {}), **from_file, **given}
    return {field.name: upgrade(field, layered.get(field.name, default_of(field))) for field in fields}


def read_config(path, cls) -> dict:
    """A strategy's options from a YAML or JSON file of option names and values, or from a finished run's
    config.json (its "hparams"), checked and typed as the command line would have them."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"--config {path}: {exc.strerror}") from None
    try:
        content = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise UserError(f"--config {path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                        f"{first_line(exc)}") from None
    content = {} if content is None else content
    if not isinstance(content, dict):
        raise UserError(f"--config {path} must hold option names and their values")
    if isinstance(content.get("hparams"), dict):  # a run's config.json
        if content.get("strategy") != cls.name:
            raise UserError(f"--config {path} is the config of a {content.get('strategy')!r} run, not {cls.name!r}")
        content = content["hparams"]
    fields = {field.name: field for field in dataclasses.fields(cls)}
    values = {}
    for key, value in content.items():
        name = str(key).replace("-", "_")
        if name not in fields:
            raise UserError(f"--config {path}: {cls.name} has no option {key!r}")
        values[name] = _config_value(fields[name], value, f"--config {path}: {key}")
    return values


def _config_value(field: dataclasses.Field, value, where: str):
    value = upgrade(field, value)
    value_type = _value_type(field)
    if value is None and default_of(field) is None:
        return None
    if value_type is list:
        value = list(value) if isinstance(value, tuple) else value
        if not isinstance(value, list):
            raise UserError(f"{where} must be a list, not {value!r}")
        return [_scalar(_item_type(field), item, where) for item in value]
    if value_type in (bool, dict):
        if not isinstance(value, value_type):
            raise UserError(f"{where} must be a {value_type.__name__}, not {value!r}")
        return value
    return _scalar(value_type, value, where)


def _scalar(value_type: type, value, where: str):
    """A number, or a string, as the command line would read it (YAML reads 1e-4 as a string: so would argparse)."""
    if isinstance(value, str) and value_type is not str:
        try:
            return value_type(value)
        except ValueError:
            pass
    elif value_type is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif isinstance(value, value_type) and not isinstance(value, bool):
        return value
    raise UserError(f"{where} must be {value_type.__name__}, not {value!r}")


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line (a UserError), not the whole usage text."""

    def error(self, message):
        raise UserError(f"{message} (see {self.prog} --help)")


def _add_command(sub, name: str, cls, out_help: str) -> argparse.ArgumentParser:
    """A subcommand whose flags are the options of the strategy or branch `cls` (--out is checked in `main`: a
    control does without it)."""
    command = sub.add_parser(name, help=cls.description, description=cls.description)
    command.add_argument("--out", default=None, help=out_help)
    command.add_argument("--config", metavar="FILE", help="options from a YAML or JSON file, or a finished run's "
                         "config.json; flags given here win over it, it wins over --recipe")
    add_dataclass_flags(command, cls)
    command.set_defaults(command_class=cls)
    return command


def _strategy_class(name: str):
    from .strategies.registry import get_strategy_class  # the strategy's module, and torch, load for it alone
    return get_strategy_class(name)


def _branch_class(name: str):
    from .branches.base import get_branch_class  # the branch's module, and torch, load for it alone
    return get_branch_class(name)


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The command line, with the flags of the strategy or branch `command` (its module imported); the others are
    named with their one line (lt_plugin.commands), which imports none of them."""
    parser = _Parser(prog="lt-plugin", description="Lottery tickets for timm models, on Torch-Pruning.")
    parser.add_argument("--version", action="version", version=f"lt-plugin {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.add_parser("strategies", help="list the registered strategies")
    sub.add_parser("branches", help="list the registered branches (work on a finished run: lt-plugin NAME --run RUN)")
    for name, description in commands.strategies.descriptions().items():
        if name != command:
            sub.add_parser(name, help=description)
            continue
        cls = _strategy_class(name)
        parsed = _add_command(sub, name, cls, "run folder (rerun to resume)")
        if "run_dir" not in {field.name for field in dataclasses.fields(cls)}:
            parsed.add_argument("--control", metavar="{" + ",".join(CONTROLS) + "}", choices=CONTROLS, default=None,
                                help="train a control of a finished run's tickets instead (with --run; see "
                                     "lt-plugin NAME --help)")
            parsed.add_argument("--run", dest="control_run", default=None,
                                help="with --control: the finished run whose tickets to control")
    for name, description in commands.branches.descriptions().items():
        if name != command:
            sub.add_parser(name, help=description)
            continue
        _add_command(sub, name, _branch_class(name), "where to write (default: a folder of the --run; rerun to resume)")
    compare_parser = sub.add_parser("compare", help="finished runs side by side: accuracy by density with 95%% "
                                    "intervals over seeds, and paired differences over shared seeds",
                                    description="Match the runs' tickets by density (the first run's), give each "
                                                "run's mean accuracy with its interval and, for runs made with the "
                                                "first run's seeds, the paired difference; writes compare.json and "
                                                "compare.png.")
    compare_parser.add_argument("runs", nargs="+", metavar="RUN", help="run folders (any strategy or branch)")
    compare_parser.add_argument("--out", default=None, help="where to write (default: the first run's compare/)")
    compare_parser.add_argument("--tolerance", type=float, default=0.02,
                                help="largest relative density difference of matched tickets (default: 0.02)")
    compare_parser.add_argument("--allow-different", action="store_true",
                                help="compare runs of other models or data too")
    compare_parser.add_argument("--metric", default="test_accuracy",
                                help="what is compared: test_accuracy (default), early_stop_test_accuracy (LTH's "
                                     "measure), val_accuracy or early_stop_step")
    compare_parser.add_argument("--adjust", default="holm",
                                help="how the p-values of the differences (every density, every run against the "
                                     "first: one family) are adjusted for their number: holm (default), bonferroni "
                                     "(simultaneous intervals) or none")
    compare_parser.add_argument("--alpha", type=float, default=0.05,
                                help="the level below which an adjusted p-value says above or below (default: 0.05)")
    sub.add_parser("recipes", help="list the recipes (--recipe NAME) with their sources and values")
    check_parser = sub.add_parser("check", help="whether a timm model can give tickets, in seconds",
                                  description="Build MODEL as a run would, trace it with Torch-Pruning, draw masks at "
                                              "a few densities, export them and run them; exit code 2 if it "
                                              "cannot be pruned.")
    check_parser.add_argument("model", help="timm model name")
    check_parser.add_argument("--image-size", type=int, default=32, help="side of the square inputs (default: 32)")
    check_parser.add_argument("--granularity", choices=("channel", "weight"), default="channel",
                              help="channel (structured, exported) or weight (unstructured) tickets (default: channel)")
    check_parser.add_argument("--model-kwargs", type=_json_dict, default={},
                              help="extra timm.create_model arguments, as JSON")
    check_parser.add_argument("--round-to", type=int, default=None,
                              help="channel tickets: every pruned layer keeps a multiple of N channels")
    return parser


def _print_registered(descriptions: Dict[str, str]) -> None:
    width = max(map(len, descriptions), default=0)
    for name, description in descriptions.items():
        print(f"{name.ljust(width)}  {description}")


def _print_recipes() -> None:
    for name, recipe in RECIPES.items():
        options = " ".join(f"{key}={value}" for key, value in recipe["options"].items())
        print(f"{name}\n  source: {recipe['source']}\n  options: {options}")


def _check(args) -> None:
    from .check import check_model, format_check  # Torch-Pruning and timm load only for this command
    print(format_check(check_model(args.model, args.image_size, args.granularity, args.model_kwargs,
                                   round_to=args.round_to)))


def _show_warning(message, category, filename, lineno, file=None, line=None, _show=warnings.showwarning) -> None:
    if issubclass(category, LtPluginWarning):
        print(f"lt-plugin: warning: {message}", file=sys.stderr)
    else:
        _show(message, category, filename, lineno, file, line)


def _control_values(args) -> dict:
    """`lt-plugin STRATEGY --control NAME --run RUN`: the control branch's options; a training option given with it
    is a mistake (the control trains with the run's)."""
    if args.control_run is None:
        raise UserError(f"--control {args.control} needs --run: the finished run whose tickets to control")
    branch = _branch_class(args.control)
    own = {field.name for field in dataclasses.fields(branch)}
    stray = sorted(field.name for field in dataclasses.fields(args.command_class)
                   if hasattr(args, field.name) and field.name not in own)
    if stray:
        flags = ", ".join(flags_of(next(f for f in dataclasses.fields(args.command_class) if f.name == name))[0]
                          for name in stray)
        raise UserError(f"--control trains with the --run's options: drop {flags}")
    return {"run_dir": args.control_run, **{name: getattr(args, name) for name in own if hasattr(args, name)}}


def guarded(work: Callable[[], None]) -> int:
    """Run `work` as the command runs: a user's mistake is one line on stderr and exit code 2, a warning of
    lt_plugin's one line, an interruption says how to resume."""
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            work()
    except UserError as exc:
        print(f"lt-plugin: error: {first_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lt-plugin: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


def _run(argv: Optional[List[str]]) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((arg for arg in argv if not arg.startswith("-")), None)  # the top level has only --help, --version
    # Importing the command's module (torch, timm...) makes about a million objects that live as long as the
    # process: collecting garbage among them as they come, and at every full collection after, costs ~10% of a
    # small run's start. They are made with the collector paused, then frozen out of its sight (gc.freeze), by the
    # process's first command only (one that calls main again would freeze the garbage of the ones before).
    collecting = gc.isenabled()
    gc.disable()
    try:
        args = build_parser(command).parse_args(argv)
    finally:
        if not gc.get_freeze_count():
            gc.freeze()
        if collecting:
            gc.enable()
    if args.command == "strategies":
        _print_registered(commands.strategies.descriptions())
    elif args.command == "branches":
        _print_registered(commands.branches.descriptions())
    elif args.command == "recipes":
        _print_recipes()
    elif args.command == "check":
        _check(args)
    elif args.command == "compare":
        from .compare import compare  # reads runs of every strategy and branch
        compare(args.runs, args.out, args.tolerance, args.allow_different, args.metric, args.adjust, args.alpha)
    elif getattr(args, "control", None):
        _branch_class(args.control)(**_control_values(args)).run(args.out)
    else:
        cls = args.command_class
        if cls.out_required and args.out is None:
            raise UserError(f"the following arguments are required: --out (see lt-plugin {args.command} --help)")
        cls(**_strategy_values(cls, args)).run(args.out)


def main(argv: Optional[List[str]] = None) -> int:
    return guarded(lambda: _run(argv))


if __name__ == "__main__":
    sys.exit(main())
