"""Typed errors. A `UserError` is a mistake the user can fix; the CLI prints its message on one line and exits 2."""


class UserError(Exception):
    """A problem with what the user asked for (bad option, missing file, unsupported model...)."""


class DataError(UserError):
    """A dataset could not be found, loaded or understood."""


class UnsupportedModelError(UserError):
    """Torch-Pruning cannot trace or prune this model (the message names the layer)."""


class RunFolderError(UserError):
    """A run folder is missing, unreadable, or was made with other settings."""


class DivergedError(UserError):
    """Training produced a loss that is NaN or infinite (usually a learning rate too high for the model)."""


class LtPluginWarning(UserWarning):
    """A setting that works but is probably not what the user wants; the CLI prints it on one line."""


def first_line(exc: BaseException) -> str:
    """An exception's message cut to one line (the CLI reports errors on one line)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
