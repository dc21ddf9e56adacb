"""`python kill_after_write.py SUFFIX ARG...`: the lt-plugin command ARG... killed with SIGKILL right after it renames a
file into place whose path ends with SUFFIX (lt_plugin.store writes every file that way): a kill -9 at a point of
the run chosen exactly, where a file the run deletes later could not be waited for from outside."""

import os
import signal
import sys

SUFFIX, ARGS = sys.argv[1], sys.argv[2:]
_replace = os.replace


def _replace_then_die(src, dst, *args, **kwargs):
    _replace(src, dst, *args, **kwargs)
    if str(dst).endswith(SUFFIX):
        os.kill(os.getpid(), signal.SIGKILL)


os.replace = _replace_then_die

from lt_plugin.cli import main  # noqa: E402  (after the patch: nothing else changes)

sys.exit(main(ARGS))
