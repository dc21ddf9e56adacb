"""The published pages' numbers, from the committed results: README.md's Results section and the tables and claim
sentences of benchmarks/README.md are rendered from benchmarks/results/*.json, never typed.

A page holds rendered blocks between two markers,

    <!-- rendered: NAME -->
    ...
    <!-- end: NAME -->

and `render_page` replaces what lies between them with what the block NAME writes from the results (the blocks are
in `benchmarks/sections/`). Prose outside the blocks carries no measured number. Every verdict word ("above",
"below", "within noise") comes from `lt_plugin.stats`: the paired differences of a part form one family whose
p-values are Holm-adjusted before any word is chosen. A part made before a change to its method (benchmarks/
changes.json) is said to be so beside its numbers.

    python benchmarks/render.py            # rewrite the pages (make results)
    python benchmarks/render.py --check    # exit 1 if a committed page differs from its render
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from functools import lru_cache
from pathlib import Path
from typing import Callable, Dict, List

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
RESULTS = BENCHMARKS / "results"
PAGES = (REPO / "README.md", BENCHMARKS / "README.md")
BLOCK = re.compile(r"(<!-- rendered: (?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- end: (?P=name) -->)", re.S)

Block = Callable[[], str]
BLOCKS: Dict[str, Block] = {}


def block(name: str) -> Callable[[Block], Block]:
    """Register the function that writes the rendered block `name` (Markdown, ending with a newline)."""
    def register(function: Block) -> Block:
        if name in BLOCKS:
            raise ValueError(f"block {name!r} is registered twice")
        BLOCKS[name] = function
        return function
    return register


@lru_cache(maxsize=None)
def results(name: str) -> dict:
    """benchmarks/results/NAME.json, read once."""
    return json.loads((RESULTS / f"{name}.json").read_text())


@lru_cache(maxsize=None)
def changes() -> List[dict]:
    """The method changes, in order: {"revision", "what", "parts"} (benchmarks/changes.json)."""
    return json.loads((BENCHMARKS / "changes.json").read_text())["changes"]


def provenance(name: str, part: str = "") -> dict:
    """What made a part's numbers (`part` a dotted path of keys in the file): the innermost provenance recorded on
    the way to it, else the file's."""
    node, found = results(name), results(name).get("provenance")
    for key in part.split(".") if part else []:
        node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get("provenance"):
            found = node["provenance"]
    return found or {"revision": 0}


def made_before(name: str, part: str = "") -> List[dict]:
    """The changes to a part's method made after the part was measured."""
    key, revision = f"{name}.{part}" if part else name, provenance(name, part)["revision"]
    return [c for c in changes() if c["revision"] > revision and any(key == p or key.startswith(p + ".")
                                                                      for p in c["parts"])]


def stale_note(name: str, *parts: str) -> str:
    """A line naming, once each and in order, the later changes that the numbers of some parts of a file (of the file
    itself when none is named) do not include; empty when they include all."""
    later = sorted({c["revision"]: c for part in parts or ("",) for c in made_before(name, part)}.values(),
                   key=lambda c: c["revision"])
    if not later:
        return ""
    return ("> Measured before " + "; ".join(f"{c['what']} (revision {c['revision']})" for c in later)
            + ": these numbers may differ under today's code.\n\n")


def render_page(text: str) -> str:
    """The page with every rendered block written anew."""
    def fill(match: re.Match) -> str:
        name = match.group("name")
        if name not in BLOCKS:
            raise KeyError(f"the page has a block {name!r} that no section writes")
        return match.group(1) + BLOCKS[name]() + match.group(4)
    return BLOCK.sub(fill, text)


def outside_blocks(text: str) -> str:
    """The page without its rendered blocks: the hand-written prose."""
    return BLOCK.sub("", text)


def load_sections() -> None:
    """Import every module of benchmarks/sections, each registering its blocks."""
    import importlib
    sys.path.insert(0, str(BENCHMARKS))
    sys.modules.setdefault("render", sys.modules[__name__])  # run as a script, this module is the sections' `render`
    for path in sorted((BENCHMARKS / "sections").glob("*.py")):
        if path.stem != "__init__":
            importlib.import_module(f"sections.{path.stem}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a page differs from its render")
    args = parser.parse_args()
    load_sections()
    differ = False
    for page in PAGES:
        text = page.read_text()
        rendered = render_page(text)
        if rendered == text:
            continue
        differ = True
        if args.check:
            sys.stdout.writelines(difflib.unified_diff(text.splitlines(True), rendered.splitlines(True),
                                                       str(page), f"{page} (rendered)"))
        else:
            page.write_text(rendered)
            print(f"rendered {page.relative_to(REPO)}")
    return 1 if differ and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
