"""The `lt-plugin` command. Each strategy's hyperparameters (dataclass fields) become its flags."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import List, Optional

from . import __version__
from .errors import UserError, first_line
from .strategies import get_strategy_class, list_strategies
from .tickets import export_run_ticket

# Help for training fields that carry none of their own.
_TRAIN_HELP = {
    "epochs": "training epochs per level", "batch_size": "global batch size (split over processes)",
    "eval_batch_size": "evaluation batch size", "opt": "timm optimizer name", "lr": "peak learning rate",
    "momentum": "SGD momentum", "weight_decay": "weight decay", "sched": "cosine | step | multistep | constant",
    "decay_milestones": "fractions of training where the LR decays (multistep, step)",
    "decay_rate": "LR decay factor", "warmup_epochs": "linear LR warm-up epochs",
    "grad_accum_steps": "gradient accumulation steps", "mixed_precision": "no | fp16 | bf16 (Accelerate)",
    "seed": "random seed (initialisation, data order)", "log_with": "Accelerate tracker, e.g. tensorboard",
    "num_workers": "data loader worker processes",
}


def _json_dict(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"drop_rate\": 0.1}'")
    return value


def _default(field: dataclasses.Field):
    return field.default if field.default is not dataclasses.MISSING else field.default_factory()


def add_dataclass_flags(parser: argparse.ArgumentParser, cls) -> None:
    """One flag per dataclass field: --field-name, typed from the default (or metadata["type"])."""
    for field in dataclasses.fields(cls):
        flag = "--" + field.name.replace("_", "-")
        default = _default(field)
        meta = field.metadata
        kwargs = {"dest": field.name, "default": default,
                  "help": f"{meta.get('help', _TRAIN_HELP.get(field.name, ''))} (default: {default})"}
        if "choices" in meta:
            kwargs["choices"] = meta["choices"]
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif isinstance(default, dict):
            kwargs["type"] = _json_dict
        elif isinstance(default, (list, tuple)):
            kwargs["nargs"] = "*"
            kwargs["type"] = type(default[0]) if default else str
        else:
            kwargs["type"] = meta.get("type", type(default) if default is not None else str)
        parser.add_argument(flag, **kwargs)


def _strategy_values(cls, args) -> dict:
    values = {}
    for field in dataclasses.fields(cls):
        value = getattr(args, field.name)
        values[field.name] = tuple(value) if isinstance(_default(field), tuple) else value
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lt-plugin", description="Lottery tickets for timm models, on Torch-Pruning.")
    parser.add_argument("--version", action="version", version=f"lt-plugin {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.add_parser("strategies", help="list the registered strategies")
    for name in list_strategies():
        cls = get_strategy_class(name)
        strategy_parser = sub.add_parser(name, help=cls.description, description=cls.description)
        strategy_parser.add_argument("--out", required=cls.out_required, default=None,
                                     help="run folder (rerun to resume)")
        add_dataclass_flags(strategy_parser, cls)
        strategy_parser.set_defaults(strategy_class=cls)
    export_parser = sub.add_parser("export", help="write one ticket of a run as a loadable file")
    export_parser.add_argument("--run", required=True, help="the run folder")
    which = export_parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--ticket", help="the ticket: a level (imp, lottery-pools) or a ratio (early-bird)")
    which.add_argument("--level", dest="ticket", help="the same as --ticket")
    which.add_argument("--ratio", dest="ticket", help="the same as --ticket")
    export_parser.add_argument("--out", required=True, help="the ticket file to write (.safetensors)")
    return parser


def _print_strategies() -> None:
    names = list_strategies()
    width = max(map(len, names), default=0)
    for name in names:
        print(f"{name.ljust(width)}  {get_strategy_class(name).description}")


def _export(args) -> None:
    path = export_run_ticket(args.run, args.ticket, args.out)
    print(f"wrote {path}")


def main(argv: Optional[List[str]] = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command == "strategies":
            _print_strategies()
        elif args.command == "export":
            _export(args)
        else:
            cls = args.strategy_class
            cls(**_strategy_values(cls, args)).run(args.out)
    except UserError as exc:
        print(f"lt-plugin: error: {first_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lt-plugin: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
