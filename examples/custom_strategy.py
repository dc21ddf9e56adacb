"""A custom strategy in a dozen lines: magnitude pruning at initialisation (no training before pruning), then
training the ticket.

Run it:            python examples/custom_strategy.py --out runs/magnitude-at-init
Ship it as a plugin: put the class in your package and declare, in your pyproject.toml,

    [project.entry-points."lt_plugin.strategies"]
    magnitude-at-init = "your_package.module:MagnitudeAtInit"

and `lt-plugin strategies` / `lt-plugin magnitude-at-init --help` pick it up without touching lt_plugin.
"""

import dataclasses
import sys

import lt_plugin
from lt_plugin.cli import main
from lt_plugin.experiment import Experiment
from lt_plugin.pipeline import train_ticket
from lt_plugin.report import plot_accuracy_vs_density
from lt_plugin.strategies.base import start_training_run
from lt_plugin.train import TrainConfig


@lt_plugin.register_strategy("magnitude-at-init")
@dataclasses.dataclass
class MagnitudeAtInit(lt_plugin.Strategy, TrainConfig, Experiment):
    description = "magnitude pruning at initialisation, then training (a baseline for lottery tickets)"

    density: float = dataclasses.field(default=0.2, metadata={"help": "kept fraction of prunable weights"})

    def run(self, out_dir):
        run = start_training_run(self, out_dir)  # options, data and processes checked; nothing written yet
        model = self.create_model(run.data.num_classes, seed=self.seed)
        mask = lt_plugin.create_mask(model, run.example, self.density, granularity="weight")
        self.check_run_folder(run.folder)
        # The pipeline every built-in strategy uses: train with the mask enforced, score, cost, finish the folder.
        result = train_ticket(run, self, run.folder.layout.level(0), mask, model.state_dict(), desc="ticket",
                              describe=lambda r: {"level": 0, **r})
        run.folder.write_results([result], plots={"accuracy.png": lambda path: plot_accuracy_vs_density(
            [result], path, dense_line=False)})
        return [result]


if __name__ == "__main__":
    # The registered strategy gets the same command line as the built-in ones.
    sys.exit(main(["magnitude-at-init", *sys.argv[1:]]))
