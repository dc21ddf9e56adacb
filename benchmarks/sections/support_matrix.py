"""benchmarks/README.md's "Which models prune" (benchmarks/results/support_matrix.json)."""

from __future__ import annotations

from render import block, results

PROJECT = "(lt_plugin)"  # how the matrix names the families of the project's own networks


@block("support_matrix.claims")
def claims() -> str:
    r = results("support_matrix")
    rows = r["rows"]
    families = {row["family"] for row in rows}
    own = {f for f in families if f.endswith(PROJECT)}
    timm_models = [row for row in rows if not row["family"].endswith(PROJECT)]
    return (f"`python benchmarks/support_matrix.py` runs `lt-plugin check` over {len(timm_models)} timm models of "
            f"{len(families) - len(own)} families and the project's {len(own)} networks at {r['image_size']}x"
            f"{r['image_size']} ({len(rows)} models, {len(families)} families; {sum(row['passed'] for row in rows)} "
            f"give channel tickets, with timm {r['timm']} and Torch-Pruning {r['torch_pruning']}) and writes "
            "`results/support_matrix.json` and the page [docs/support_matrix.md](../docs/support_matrix.md), with "
            "each refusal's one-line reason.\n")
