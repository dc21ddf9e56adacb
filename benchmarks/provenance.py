"""What made a benchmark's numbers, recorded beside them: the commit, whether the tree had changes not committed,
the lt_plugin version and the day. `benchmarks/render.py` holds each part against the method changes made after it
(`benchmarks/changes.json`) and says so beside any number a later change may have moved."""

import datetime
import subprocess
from pathlib import Path

import lt_plugin

REPO = Path(__file__).resolve().parents[1]


def provenance() -> dict:
    def git(*args) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()
    return {"commit": git("rev-parse", "HEAD") or None, "uncommitted_changes": bool(git("status", "--porcelain")),
            "lt_plugin": lt_plugin.__version__, "made": datetime.date.today().isoformat()}
