"""benchmarks/README.md's "The machine, and how to reproduce": the machine as the results record it."""

from __future__ import annotations

from render import block, results
from sections.common import minutes


@block("machine")
def machine() -> str:
    accuracy, matrix, speed = results("accuracy"), results("support_matrix"), results("speed")
    return (f"Machine, as the results record it: {accuracy['cpus']} CPU cores ({accuracy['machine']}), torch "
            f"{accuracy['torch']} on {accuracy['torch_threads']} threads, no GPU; timm {matrix['timm']}, "
            f"Torch-Pruning {matrix['torch_pruning']}, Python {matrix['python']}. The accuracy suite took "
            f"{minutes(accuracy['wall_seconds'])} here and `speed.py` {minutes(speed['wall_seconds'])}.\n")
