"""`python -m lt_plugin ...` is the `lt-plugin` command (also what `accelerate launch -m lt_plugin ...` runs)."""

import sys

from lt_plugin.cli import main

if __name__ == "__main__":
    sys.exit(main())
