"""Options are dataclass fields: the command line makes a flag of each, and their allowed values are checked here,
once, from the fields' metadata (`choices`), whether they come from flags, a config file, a recipe or Python."""

from __future__ import annotations

import dataclasses
from typing import List

from .errors import UserError

# Values that config.json files of earlier versions recorded, by option: --augment was a switch.
OLD_VALUES = {"augment": {True: "imagenet", False: "none"}}


def flags_of(field: dataclasses.Field) -> List[str]:
    """The command-line flags of an option: its metadata's "flags", else --its-name."""
    return list(field.metadata.get("flags", ["--" + field.name.replace("_", "-")]))


def flag_of(field: dataclasses.Field) -> str:
    """The command-line flag of an option (its first, when it has several)."""
    return flags_of(field)[0]


def default_of(field: dataclasses.Field):
    return field.default if field.default is not dataclasses.MISSING else field.default_factory()


def check_choices(options) -> None:
    """Every option of the dataclass instance `options` whose field names `choices` holds one of them (None is
    allowed where it is the default); a UserError naming the flag otherwise."""
    for field in dataclasses.fields(options):
        choices = field.metadata.get("choices")
        value = getattr(options, field.name)
        if choices is None or value in choices or (value is None and field.default is None):
            continue
        raise UserError(f"{flag_of(field)} must be one of {', '.join(map(str, choices))}, not {value!r}")


def upgrade(field: dataclasses.Field, value):
    """A value as this version takes it: what an earlier version recorded (OLD_VALUES), lists as tuples where the
    option holds a tuple (JSON has no tuples)."""
    if isinstance(value, bool):
        value = OLD_VALUES.get(field.name, {}).get(value, value)
    if isinstance(default_of(field), tuple) and isinstance(value, list):
        value = tuple(value)
    return value
