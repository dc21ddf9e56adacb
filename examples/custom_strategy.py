"""A custom strategy in a dozen lines: prune at initialisation (no training before pruning), then train the ticket.

Run it:            python examples/custom_strategy.py --out runs/prune-at-init
Ship it as a plugin: put the class in your package and declare, in your pyproject.toml,

    [project.entry-points."lt_plugin.strategies"]
    prune-at-init = "your_package.module:PruneAtInit"

and `lt-plugin strategies` / `lt-plugin prune-at-init --help` pick it up without touching lt_plugin.
"""

import dataclasses
import sys

import lt_plugin
from lt_plugin.callbacks import EnforceMask
from lt_plugin.cli import main
from lt_plugin.experiment import Experiment
from lt_plugin.run_folder import RunFolder
from lt_plugin.train import TrainConfig, evaluate, fit, make_accelerator, train_config_of


@lt_plugin.register_strategy("prune-at-init")
@dataclasses.dataclass
class PruneAtInit(lt_plugin.Strategy, TrainConfig, Experiment):
    description = "magnitude pruning at initialisation, then training (a baseline for lottery tickets)"

    density: float = dataclasses.field(default=0.2, metadata={"help": "kept fraction of prunable weights"})

    def run(self, out_dir):
        train_cfg = train_config_of(self)
        accelerator = make_accelerator(train_cfg, project_dir=out_dir)
        folder = RunFolder(out_dir, accelerator)
        folder.check_config(self.name, self.hparams())
        data = self.load_data()
        model = self.create_model(data.num_classes, seed=self.seed)
        mask = lt_plugin.create_mask(model, self.example_inputs(), self.density, granularity="weight")
        trained = fit(model, data.train, data.val, train_cfg, folder.path / "train", accelerator=accelerator,
                      callbacks=[EnforceMask(mask)])
        test_accuracy, _ = evaluate(trained.model, data.test, accelerator)
        result = {"level": 0, "density": mask.density, "val_accuracy": trained.val_accuracy,
                  "test_accuracy": test_accuracy, "train_seconds": trained.train_seconds}
        folder.write_results([result], dense_line=False)
        return [result]


if __name__ == "__main__":
    # The registered strategy gets the same command line as the built-in ones.
    sys.exit(main(["prune-at-init", *sys.argv[1:]]))
