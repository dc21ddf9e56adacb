"""The documentation's code runs as pasted: every Python block of the README and of docs/*.md is either
self-contained, and run here as a user would paste it (a fresh interpreter, an empty folder, offline), or marked as
a fragment by its first line, `# fragment: <what it needs>`, and then at least parses."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.M | re.S)
FRAGMENT = "# fragment:"


def python_blocks():
    """(page, its n-th Python block, the code) of every page."""
    for page in PAGES:
        for index, match in enumerate(BLOCK.finditer(page.read_text())):
            yield page, index, match.group(1)


BLOCKS = list(python_blocks())
RUNNABLE = [(page, index, code) for page, index, code in BLOCKS if not code.startswith(FRAGMENT)]


def _id(page: Path, index: int) -> str:
    return f"{page.relative_to(REPO)}#{index}"


def test_the_blocks_are_found_and_both_kinds_are_there():
    assert len(BLOCKS) >= 15 and len(RUNNABLE) >= 10 and len(BLOCKS) > len(RUNNABLE)


@pytest.mark.parametrize("page, index, code", BLOCKS, ids=[_id(p, i) for p, i, _ in BLOCKS])
def test_every_block_is_python_and_a_fragment_says_what_it_needs(page, index, code):
    compile(code, _id(page, index), "exec")
    if code.startswith(FRAGMENT):
        assert len(code.splitlines()[0]) > len(FRAGMENT) + 10, "a fragment says what it needs"


@pytest.mark.parametrize("page, index, code", RUNNABLE, ids=[_id(p, i) for p, i, _ in RUNNABLE])
def test_every_self_contained_block_runs_as_pasted(tmp_path, page, index, code):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, f"{_id(page, index)}:\n{done.stderr[-3000:]}"
