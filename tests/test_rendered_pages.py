"""The published numbers are the committed results': README.md's Results section and benchmarks/README.md's tables
and claims are rendered from benchmarks/results/*.json (benchmarks/render.py, `make results`), and a page that
differs from its render fails here. Prose outside the rendered blocks carries no measured number."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import render  # noqa: E402

render.load_sections()
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK_TARGET = re.compile(r"\]\([^)]*\)")
# A measured number: a decimal, a percentage, a ratio (x2.4) or a signed difference (+0.29).
MEASURED = re.compile(r"(?<![\w.])(?:\d+\.\d+|\d+(?:\.\d+)?%|x\d+(?:\.\d+)?|[+-]\d+\.\d+)(?![\w.])")


@pytest.mark.parametrize("page", render.PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_a_committed_page_is_its_render(page):
    text = page.read_text()
    assert render.render_page(text) == text, f"{page} differs from its render: run `make results`"


@pytest.mark.parametrize("page", render.PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_prose_outside_the_rendered_blocks_carries_no_measured_number(page):
    prose = CODE_SPAN.sub("", LINK_TARGET.sub("]", FENCE.sub("", render.outside_blocks(page.read_text()))))
    found = [line.strip() for line in prose.splitlines() if MEASURED.search(line)]
    assert not found, f"numbers typed outside a rendered block of {page.name}: {found[:5]}"


def test_every_block_a_page_names_is_written_by_a_section():
    named = {m.group("name") for page in render.PAGES for m in render.BLOCK.finditer(page.read_text())}
    assert named <= set(render.BLOCKS)


def test_the_changes_name_parts_that_exist_in_order():
    changes = render.changes()
    assert [c["revision"] for c in changes] == list(range(1, len(changes) + 1))
    for change in changes:
        for part in change["parts"]:
            name, *keys = part.split(".")
            node = json.loads((render.RESULTS / f"{name}.json").read_text())
            for key in keys:
                assert isinstance(node, dict) and key in node, part
                node = node[key]


def test_a_part_made_before_a_change_to_its_method_says_so(monkeypatch):
    reports = {"x": {"provenance": {"revision": 1}, "a": {"provenance": {"revision": 2}}, "b": {}}}
    monkeypatch.setattr(render, "results", lambda name: reports[name])
    monkeypatch.setattr(render, "changes", lambda: [{"revision": 2, "what": "w2", "parts": ["x.b"]},
                                                    {"revision": 3, "what": "w3", "parts": ["x"]}])
    assert [c["what"] for c in render.made_before("x", "a")] == ["w3"]        # its own revision 2
    assert [c["what"] for c in render.made_before("x", "b")] == ["w2", "w3"]  # the file's revision 1
    assert "w2 (revision 2); w3 (revision 3)" in render.stale_note("x", "b")
    assert render.stale_note("x", "a").startswith("> Measured before w3")


def test_a_note_over_several_parts_names_each_later_change_once_in_order(monkeypatch):
    reports = {"x": {"provenance": {"revision": 1}, "a": {"provenance": {"revision": 2}}, "b": {}}}
    monkeypatch.setattr(render, "results", lambda name: reports[name])
    monkeypatch.setattr(render, "changes", lambda: [{"revision": 2, "what": "w2", "parts": ["x.b"]},
                                                    {"revision": 3, "what": "w3", "parts": ["x"]}])
    note = render.stale_note("x", "a", "b")
    assert note.startswith("> Measured before w2 (revision 2); w3 (revision 3):")
    assert note.count("w3") == 1


def test_the_script_renders_with_the_blocks_its_sections_register():
    # Run as a script, render.py is __main__: the sections' `from render import block` must register there.
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "render.py"), "--check"], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
