"""Early-Bird against one-shot pruning on the built-in digits: the example of docs/early-bird.md.

Runs `lt-plugin early-bird --model resnet18 --dataset digits --epochs 10 --baseline` (every ratio of its default)
into `--work` and writes its results with their provenance to benchmarks/results/early_bird_digits.json
({"provenance", "command", "results"}) and its mask-distance figure to early_bird_digits_mask_distance.png. A few
minutes on 2 CPU cores; a finished run folder is read back, not trained again.

    python benchmarks/early_bird_digits.py
"""

import argparse
import json
import shutil
from pathlib import Path

from lt_plugin.cli import main as cli_main
from provenance import provenance

COMMAND = ["early-bird", "--model", "resnet18", "--dataset", "digits", "--epochs", "10", "--baseline"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/bench-early-bird-digits")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    work, out = Path(args.work), Path(args.out)
    assert cli_main([*COMMAND, "--out", str(work)]) == 0
    out.mkdir(parents=True, exist_ok=True)
    report = {"provenance": provenance(), "command": COMMAND,
              "results": json.loads((work / "results.json").read_text())}
    (out / "early_bird_digits.json").write_text(json.dumps(report, indent=2) + "\n")
    shutil.copyfile(work / "mask_distance.png", out / "early_bird_digits_mask_distance.png")
    print(f"wrote {out / 'early_bird_digits.json'} and {out / 'early_bird_digits_mask_distance.png'}")


if __name__ == "__main__":
    main()
