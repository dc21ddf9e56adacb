"""The model card of a ticket exported as a Hugging Face Hub folder: YAML front matter the Hub reads (library_name
timm, tags, datasets, base_model), and the ticket's provenance as a reader of the papers wants it: the strategy and
its papers, density, parameters and MACs against the dense network, accuracy (over seeds, with its 95% interval,
for a replicated run), the recipe and every training option, how to load it, and the versions that made it. The
card is rendered from plain facts (`TicketFacts`) that the export branch reads from the run."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
from pathlib import Path
from typing import List, Optional, Sequence

import yaml

from ._version import __version__
from .layout import HubFolder
from .recipes import RECIPES

# Each strategy's (and branch's) papers: (citation, link). A strategy without an entry gets no paper line.
_LTH = ("Frankle & Carbin, The Lottery Ticket Hypothesis: Finding Sparse, Trainable Neural Networks, ICLR 2019",
        "https://arxiv.org/abs/1803.03635")
PAPERS = {
    "imp": [_LTH, ("Frankle, Dziugaite, Roy & Carbin, Linear Mode Connectivity and the Lottery Ticket Hypothesis, "
                   "ICML 2020", "https://arxiv.org/abs/1912.05671")],
    "early-bird": [("You et al., Drawing Early-Bird Tickets: Towards More Efficient Training of Deep Networks, ICLR "
                    "2020", "https://arxiv.org/abs/1909.11957")],
    "lottery-pools": [("Yin, Liu et al., Lottery Pools: Winning More by Interpolating Tickets without Increasing "
                       "Training or Inference Cost, AAAI 2023", "https://arxiv.org/abs/2208.10842")],
    "sparse-model-soups": [("Zimmer, Spiegel & Pokutta, Sparse Model Soups: A Recipe for Improved Pruning via Model "
                            "Averaging, ICLR 2024", "https://arxiv.org/abs/2306.16788")],
    "prune-at-init": [("Lee, Ajanthan & Torr, SNIP: Single-shot Network Pruning based on Connection Sensitivity, ICLR "
                       "2019", "https://arxiv.org/abs/1810.02340"),
                      ("Wang, Zhang & Grosse, Picking Winning Tickets Before Training by Preserving Gradient Flow "
                       "(GraSP), ICLR 2020", "https://arxiv.org/abs/2002.07376"),
                      ("Tanaka, Kunin, Yamins & Ganguli, Pruning neural networks without any data by iteratively "
                       "conserving synaptic flow (SynFlow), NeurIPS 2020", "https://arxiv.org/abs/2006.05467")],
    "gradual": [("Zhu & Gupta, To prune, or not to prune: exploring the efficacy of pruning for model compression, "
                 "2017", "https://arxiv.org/abs/1710.01878")],
    "random-reinit": [_LTH],
    "random-mask": [_LTH],
}
TAGS = ["lottery-ticket", "pruning", "sparse", "image-classification", "timm", "lt-plugin"]
_HUB_CACHE_REPO = re.compile(r"models--([^/\\]+?)--([^/\\]+)")  # huggingface_hub's cache: models--OWNER--NAME


@dataclasses.dataclass
class TicketFacts:
    """What the card says, read from the run: the ticket, the run it comes from, and where it will be loaded from."""

    key: str                      # the ticket: a level, a ratio...
    made_by: str                  # the strategy or branch that made the ticket (lottery-pools, imp...)
    trainer: dict                 # the config.json of the strategy that trained the tickets (strategy, hparams...)
    result: dict                  # the ticket's result
    dense: Optional[dict]         # the run's dense ticket's result, when it has one
    over_seeds: Optional[dict]    # the ticket's row of a replicated run's aggregate (means, 95% intervals, seeds)
    costs: dict                   # {"ticket" | "dense": {"params": n, "macs": n}}
    granularity: str
    input_size: Sequence[int]
    figures: List[str]            # file names under figures/
    registered_by_lt_plugin: bool  # the architecture is one of the papers' networks, which `import lt_plugin` adds
    load_as: str                  # "hf-hub:USER/NAME" or "local-dir:FOLDER"
    hub_dataset: Optional[str]    # the dataset's Hugging Face Hub name, when it has one


def source_commit() -> Optional[str]:
    """The git commit of lt_plugin's source when it runs from a git checkout (an editable install), marked when the
    checkout has changes; None otherwise."""
    def git(*args) -> Optional[str]:
        try:
            done = subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True,
                                  timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None
    return commit + (" (with local changes)" if git("status", "--porcelain", "--untracked-files=no") else "")


def base_model(pretrained_file: Optional[str]) -> Optional[str]:
    """The Hub model a run started from: the repository of a --pretrained-file in huggingface_hub's cache."""
    found = _HUB_CACHE_REPO.search(str(pretrained_file or ""))
    return f"{found.group(1)}/{found.group(2)}" if found else None


def _percent(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2%}"


def _count(value: Optional[int]) -> str:
    return "-" if value is None else f"{value:,}"


def _accuracy(facts: TicketFacts) -> List[str]:
    lines = [f"- test accuracy: {_percent(facts.result.get('test_accuracy'))} (this ticket; validation "
             f"{_percent(facts.result.get('val_accuracy'))})"]
    if facts.result.get("early_stop_test_accuracy") is not None:
        lines.append(f"- test accuracy at the early-stopping iteration {facts.result['early_stop_step']}: "
                     f"{_percent(facts.result['early_stop_test_accuracy'])}")
    seeds = facts.over_seeds
    if seeds and seeds.get("test_accuracy") is not None:
        low, high = seeds.get("test_accuracy_ci", [None, None])
        interval = f", 95% interval [{_percent(low)}, {_percent(high)}]" if low is not None else ""
        values = ", ".join(_percent(v) for v in seeds.get("test_accuracy_values", []))
        lines.append(f"- over the run's {seeds['n_seeds']} seeds ({', '.join(map(str, seeds['seeds']))}): mean "
                     f"{_percent(seeds['test_accuracy'])}{interval} (Student t); per seed {values}")
    if facts.dense is not None:
        lines.append(f"- the dense network of the same run: {_percent(facts.dense.get('test_accuracy'))}")
    return lines


def _costs(facts: TicketFacts) -> List[str]:
    ticket, dense = facts.costs["ticket"], facts.costs["dense"]
    side = "x".join(map(str, facts.input_size[1:]))
    macs_note = ("physically pruned: the smaller network runs in any runtime" if facts.granularity == "channel" else
                 "the pruned weights are zeros of the dense network: dense runtimes multiply them too")
    return ["| | ticket | dense |", "|---|---|---|",
            f"| density (prunable weights kept) | {facts.result['density']:.2%} | 100% |",
            f"| parameters (nonzero for a weight ticket) | {_count(ticket['params'])} | {_count(dense['params'])} |",
            f"| MACs at one {side} input | {_count(ticket['macs'])} | {_count(dense['macs'])} |",
            "", f"A {facts.granularity} ticket: {macs_note}."]


def _loading(facts: TicketFacts) -> List[str]:
    if facts.granularity == "weight":
        register = ["import lt_plugin  # registers this architecture, one of the papers' networks, with timm"] \
            if facts.registered_by_lt_plugin else []
        return ["timm loads it as it is:", "", "```python", "import timm", *register,
                f'model = timm.create_model("{facts.load_as}", pretrained=True).eval()',
                "config = timm.data.resolve_data_config(model=model)  # the run's input size and normalisation",
                "transform = timm.data.create_transform(**config)", "```"]
    files = HubFolder("FOLDER")
    return ["A channel ticket is physically smaller than the architecture timm knows: lt_plugin rebuilds it (timm's "
            "dense network, then Torch-Pruning's pruning history) and loads its weights. Plain `timm.create_model` "
            "refuses the folder with a message that names `lt_plugin.load_ticket`.", "", "```python",
            "import lt_plugin", "", f'ticket = lt_plugin.load_ticket("{facts.load_as}")',
            "model = ticket.model  # a timm model, physically pruned, in eval mode", "```", "",
            "Without lt_plugin, timm and Torch-Pruning rebuild it from this folder's files (a fragment: `FOLDER` is "
            "where they are):", "", "```python", "import json, timm, torch, torch_pruning as tp",
            "from safetensors.torch import load_file", "",
            f'config = json.load(open("{files.config}"))["lt_plugin"]',
            'model = timm.create_model(config["model"], **config["model_kwargs"])',
            'graph = tp.DependencyGraph().build_dependency(model, torch.zeros(1, *config["input_size"]))',
            f'graph.load_pruning_history(json.load(open("{files.pruning_history}")))',
            f'model.load_state_dict(load_file("{files.weights}"))', "```"]


def _training(facts: TicketFacts) -> List[str]:
    hparams = facts.trainer.get("hparams", {})
    recipe = hparams.get("recipe")
    lines = [f"Recipe `{recipe}`: {RECIPES[recipe]['source']}.", ""] if recipe in RECIPES else []
    return lines + [f"Every option of the `{facts.trainer.get('strategy')}` run (its config.json):", "", "```yaml",
                    yaml.safe_dump(json.loads(json.dumps(hparams)), sort_keys=True).rstrip(), "```"]


def render(facts: TicketFacts) -> str:
    """The card, README.md of the Hub folder."""
    hparams = facts.trainer.get("hparams", {})
    front = {"library_name": "timm", "pipeline_tag": "image-classification", "tags": TAGS, "metrics": ["accuracy"]}
    if facts.hub_dataset:
        front["datasets"] = [facts.hub_dataset]
    if base_model(hparams.get("pretrained_file")):
        front["base_model"] = base_model(hparams.get("pretrained_file"))
    model, dataset = hparams.get("model"), hparams.get("dataset")
    papers = PAPERS.get(facts.made_by, []) + [p for p in PAPERS.get(facts.trainer.get("strategy"), [])
                                              if p not in PAPERS.get(facts.made_by, [])]
    trained_with = facts.trainer.get("versions", {})
    commit = source_commit()
    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "",
             f"# {model}: a {facts.granularity} lottery ticket at {facts.result['density']:.2%} density ({dataset})"
             if facts.result["density"] < 1 else f"# {model}: the dense network of a lottery-ticket run ({dataset})",
             "", f"Ticket `{facts.key}` of an `lt-plugin {facts.made_by}` run on `{dataset}` at "
                 f"{'x'.join(map(str, facts.input_size[1:]))} pixels, made with lt_plugin (lottery tickets for "
                 "timm models, on Torch-Pruning).", ""]
    if papers:
        lines += ["## Strategy", ""] + [f"- [{citation}]({link})" for citation, link in papers] + [""]
    lines += ["## Size", ""] + _costs(facts) + ["", "## Accuracy", ""] + _accuracy(facts) + [""]
    lines += ["## How to load it", ""] + _loading(facts) + [""]
    lines += ["## Training", ""] + _training(facts) + [""]
    if facts.figures:
        lines += ["## Figures", ""] + [f"![{Path(name).stem}]({HubFolder('').figure(name).as_posix()})"
                                       for name in facts.figures] + [""]
    lines += ["## Provenance", "",
              f"- trained with lt-plugin {trained_with.get('lt-plugin', 'unknown')}, timm "
              f"{trained_with.get('timm', 'unknown')}, torch {trained_with.get('torch', 'unknown')}, torch-pruning "
              f"{trained_with.get('torch-pruning', 'unknown')}",
              f"- exported with lt-plugin {__version__}" + (f", commit {commit}" if commit else ""), ""]
    return "\n".join(lines)
