"""What made a benchmark's numbers, recorded beside them: the revision of the methods (the last change of
benchmarks/changes.json), the commit, whether the tree had changes not committed, the lt_plugin version and the day.
`benchmarks/render.py` says beside a part's numbers every later change to its method."""

import datetime
import json
import subprocess
from pathlib import Path

import lt_plugin

BENCHMARKS = Path(__file__).resolve().parent


def provenance() -> dict:
    def git(*args) -> str:
        return subprocess.run(["git", *args], cwd=BENCHMARKS, capture_output=True, text=True).stdout.strip()
    changes = json.loads((BENCHMARKS / "changes.json").read_text())["changes"]
    return {"revision": max(c["revision"] for c in changes), "commit": git("rev-parse", "HEAD") or None,
            "uncommitted_changes": bool(git("status", "--porcelain")), "lt_plugin": lt_plugin.__version__,
            "made": datetime.date.today().isoformat()}
