"""Early-Bird: the detection rule by hand, the penalty by hand, the search stopping where it should, tickets whose
exported widths are their masks, resumes and several processes that agree with a plain run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

import lt_plugin
from lt_plugin import EarlyBirdDetector, UserError, load_ticket
from lt_plugin.cli import main as cli_main
from lt_plugin.masks import resolve_ignored
from lt_plugin.store import load_weights, read_safetensors
from lt_plugin.callbacks import SlimmingPenalty
from lt_plugin.early_bird_rule import early_bird_importance, mask_distance, norm_scales, resolve_score
from lt_plugin.layout import RunLayout
from lt_plugin.strategies.early_bird import EarlyBird, read_checks, search_precision
from lt_plugin.structure import ChannelStructure, export

REPO = Path(__file__).resolve().parents[1]
TINY = dict(model="test_resnet", dataset="digits", image_size=16, max_train_samples=256, batch_size=32, epochs=4,
            lr=0.05, window=2, ratios=[0.3, 0.5])
TINY_FLAGS = ["--model", "test_resnet", "--dataset", "digits", "--image-size", "16", "--max-train-samples", "256",
              "--batch-size", "32", "--epochs", "4", "--lr", "0.05", "--window", "2", "--ratios", "0.3", "0.5"]


def flags(*on):
    return torch.tensor([i in on for i in range(10)])


# ---------------------------------------------------------------- the rule

def test_detector_fires_exactly_when_the_newest_mask_is_within_epsilon_of_every_older_one():
    a = flags(*range(10))
    b = flags(*range(7))          # 3 of 10 channels differ from a
    c = flags(*range(6))          # 1 differs from b, 4 from a
    d = flags(*range(6))          # equal to c, 1 from b: exactly epsilon, which counts (the reference's boundary)
    detector = EarlyBirdDetector(window=3, epsilon=0.1)
    assert [detector.update(m) for m in (a, b, c, d)] == [False, False, False, True]
    assert detector.found_at == 3 and detector.found
    assert detector.distances == [[], [0.3], [0.4, 0.1], [0.1, 0.0]]
    assert mask_distance(b, c) == 0.1
    # a mask that moves again ends the agreement, but the first emergence is kept
    assert detector.update(flags(0)) is False and detector.found_at == 3


def test_detector_needs_a_full_window_and_takes_masks():
    detector = EarlyBirdDetector(window=4, epsilon=0.5)
    same = flags(1, 2)
    assert [detector.update(same) for _ in range(4)] == [False, False, False, True]
    model = timm.create_model("test_resnet", num_classes=10)
    mask = lt_plugin.create_mask(model, torch.zeros(1, 3, 16, 16), 0.5, "channel")
    detector = EarlyBirdDetector(window=2, epsilon=0.0)
    assert detector.update(mask) is False and detector.update(mask) is True
    with pytest.raises(UserError, match="window"):
        EarlyBirdDetector(window=1)
    with pytest.raises(UserError, match="epsilon"):
        EarlyBirdDetector(epsilon=1.5)


# ---------------------------------------------------------------- the penalty and the search precision

def test_penalty_adds_exactly_s_sign_gamma_to_the_scales_gradients():
    model = timm.create_model("test_resnet", num_classes=10)
    scales = norm_scales(model)
    batch_norms = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert batch_norms and set(scales) == batch_norms
    with torch.no_grad():
        for gamma in scales.values():
            gamma.copy_(torch.randn_like(gamma))  # both signs
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    F.cross_entropy(model(x), y).backward()
    before = {n: g.grad.clone() for n, g in scales.items()}
    others = {n: p.grad.clone() for n, p in model.named_parameters() if n not in scales}
    SlimmingPenalty(scales.values(), 1e-4).add_to_gradients()
    for name, gamma in scales.items():
        assert torch.equal(gamma.grad, before[name] + 1e-4 * torch.sign(gamma.detach()))
    for name, p in model.named_parameters():
        if name not in scales:
            assert torch.equal(p.grad, others[name])


def test_models_without_batchnorm_penalise_their_layernorm_scales():
    vit = timm.create_model("test_vit", num_classes=10, img_size=16, patch_size=4)
    names = list(norm_scales(vit))
    assert names and all(isinstance(vit.get_submodule(n[: -len(".weight")]), torch.nn.LayerNorm) for n in names)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_low_precision_search_changes_the_forward_only_inside_the_block(precision):
    model = timm.create_model("test_resnet", num_classes=10).eval()
    x = torch.randn(2, 3, 16, 16)
    full = model(x)
    names = list(model.state_dict())
    with search_precision(model, precision, "cpu"):
        low = model(x)
        low.sum().backward()  # gradients reach the fp32 parameters
    assert low.dtype == torch.float32 and not torch.equal(low, full)
    assert (low - full).abs().max() < 0.1 * full.abs().max()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert list(model.state_dict()) == names
    assert torch.equal(model(x), full)


# ---------------------------------------------------------------- the channel masks of the tested families

@pytest.mark.parametrize("name,kwargs,score", [
    ("resnet18", {}, "bn-scale"), ("vgg16_bn", {}, "bn-scale"), ("mobilenetv3_small_100", {}, "bn-scale"),
    ("deit_tiny_patch16_224", {"img_size": 32}, "magnitude")])
def test_ratio_masks_grow_with_the_ratio_and_export_to_their_widths(name, kwargs, score):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10, **kwargs)
    with torch.no_grad():  # scales as after some training: distinct, so the ranking means something
        for gamma in norm_scales(model).values():
            gamma.copy_(torch.rand_like(gamma) + 0.05)
    x = torch.randn(2, 3, 32, 32)
    ignored = resolve_ignored(model)
    strategy = EarlyBird(model=name)
    assert resolve_score(strategy.score, model) == score
    structure = ChannelStructure(model, x[:1], ignored, importance=early_bird_importance(score), scope="global")
    plans = structure.plans_at_ratios([0.3, 0.5])
    masks = {r: structure.mask_from_plan(p) for r, p in plans.items()}
    removed = {r: 1 - m.channel_flags().float().mean().item() for r, m in masks.items()}
    assert 0 < removed[0.3] < removed[0.5] < 1
    small = export(model, masks[0.5], x[:1])
    assert small(x).shape == (2, 10)
    widths = {n: m.tensors[f"{n}.weight"].reshape(m.tensors[f"{n}.weight"].shape[0], -1).any(1).sum().item()
              for m in [masks[0.5]] for n, mod in model.named_modules()
              if isinstance(mod, torch.nn.Conv2d) and f"{n}.weight" in m.prunable}
    for n, kept in widths.items():
        assert small.get_submodule(n).out_channels == kept, n


def test_ratio_masks_rounded_to_8_keep_multiples_of_8_channels():
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=10)
    with torch.no_grad():
        for gamma in norm_scales(model).values():
            gamma.copy_(torch.rand_like(gamma) + 0.05)
    x = torch.zeros(1, 3, 32, 32)
    structure = ChannelStructure(model, x, resolve_ignored(model), importance=early_bird_importance("bn-scale"),
                                 scope="global", round_to=8)
    for ratio, plan in structure.plans_at_ratios([0.3, 0.5]).items():
        small = export(model, structure.mask_from_plan(plan), x)
        pruned = [m.out_channels for n, m in small.named_modules()
                  if isinstance(m, torch.nn.Conv2d) and m.out_channels != model.get_submodule(n).out_channels]
        assert pruned and all(w % 8 == 0 for w in pruned), (ratio, pruned)


# ---------------------------------------------------------------- the strategy end to end

@pytest.fixture(scope="module")
def eb_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("eb") / "run"
    results = lt_plugin.create_strategy("early-bird", baseline=True, **TINY).run(out)
    return out, results


def test_search_stops_at_the_last_emergence_and_replays_to_the_same_tickets(eb_run):
    out, results = eb_run
    assert [r["ratio"] for r in results] == [0.3, 0.5] and all(r["found"] for r in results)
    search = read_safetensors(out / "search" / "train" / "model.safetensors")[1]
    steps = json.loads(search["steps"])
    assert steps == max(r["eb_step"] for r in results)
    checks = read_checks(RunLayout(out))
    assert max(checks) == steps  # no mask drawn, no step trained after the search ended
    history = json.loads(search["history"])
    per_epoch = history[0]["step"]
    assert len(history) == -(-steps // per_epoch) and steps < 4 * per_epoch  # stopped before the budget's end
    for r in results:  # the rule, replayed by hand over the stored masks, gives the same emergence
        detector = EarlyBirdDetector(window=2, epsilon=0.1)
        ordered = sorted(checks)
        emerged = next(s for s in ordered if detector.update(checks[s][0][f"{r['ratio']:g}"]))
        assert r["eb_step"] == emerged and r["eb_epoch"] == emerged // per_epoch
    last = max(results, key=lambda r: r["eb_step"])
    assert all(torch.equal(a, b) for a, b in zip(
        load_weights(out / f"ratio_{last['ratio']:g}" / "emergence.safetensors").values(),
        load_weights(out / "search" / "train" / "model.safetensors").values()))


def test_tickets_are_trained_small_and_their_costs_add_up(eb_run):
    out, results = eb_run
    samples_per_step = 32
    for r in results:
        train = read_safetensors(out / f"ratio_{r['ratio']:g}" / "train" / "model.safetensors")[1]
        retrain_steps = json.loads(train["steps"])
        assert r["retrain_macs"] == 3 * r["macs"] * retrain_steps * samples_per_step
        assert r["train_macs"] == r["search_macs"] + r["retrain_macs"]
        assert r["search_macs"] < r["baseline_train_macs"]
        assert r["train_macs_saved"] == pytest.approx(r["baseline_train_macs"] / r["train_macs"])
        assert 0 < r["density"] < 1 and r["score"] == "bn-scale"
    assert results[0]["density"] > results[1]["density"]


def test_the_distance_compares_every_batchnorm_channel_as_the_reference(eb_run):
    out, _ = eb_run
    model = timm.create_model("test_resnet", num_classes=10)
    scales = norm_scales(model, resolve_ignored(model))
    checks = read_checks(RunLayout(out))
    step = max(checks)
    flags, plans = checks[step]
    assert flags["0.5"].numel() == sum(p.numel() for p in scales.values())  # one flag per BatchNorm channel
    # the flags are the BatchNorm entries of the plan's mask, layer after layer
    structure = ChannelStructure(model, torch.zeros(1, 3, 16, 16), resolve_ignored(model))
    mask = structure.mask_from_plan(plans["0.5"])
    by_hand = torch.cat([mask.tensors[n].reshape(-1) if n in mask.tensors else torch.ones(p.numel(), dtype=torch.bool)
                         for n, p in scales.items()])
    assert torch.equal(flags["0.5"], by_hand)


def test_continue_retrains_the_rest_of_the_schedule_from_emergence_and_the_baseline_alike(tmp_path):
    out = tmp_path / "continue"
    results = lt_plugin.create_strategy("early-bird", baseline=True, retrain_schedule="continue", retrain="reinit",
                                        **{**TINY, "ratios": [0.5]}).run(out)
    (r,) = results
    per_epoch, total = 8, 4 * 8
    assert r["found"] and r["retrain_start_step"] == r["eb_step"] > 0
    assert r["steps"] == total  # it ends where the schedule ends
    metrics = [json.loads(line) for line in (out / "ratio_0.5" / "train" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["epoch"] == r["eb_step"] // per_epoch + 1  # the first epoch trained is the one after emergence
    assert r["retrain_macs"] == 3 * r["macs"] * (total - r["eb_step"]) * 32  # only the steps it took
    baseline = json.loads((out / "baseline" / "ratio_0.5" / "result.json").read_text())
    assert baseline["retrain_start_step"] == r["eb_step"] and baseline["steps"] == total  # like for like
    assert json.loads((out / "config.json").read_text())["hparams"]["retrain_schedule"] == "continue"


def test_exported_ticket_has_the_masks_widths_and_the_trained_weights(eb_run, tmp_path):
    out, results = eb_run
    assert cli_main(["export", "--run", str(out), "--ratio", "0.5", "--out", str(tmp_path / "t.safetensors")]) == 0
    ticket = load_ticket(tmp_path / "t.safetensors")
    mask = ticket.mask
    for name, module in ticket.model.named_modules():
        if isinstance(module, torch.nn.Conv2d) and f"{name}.weight" in mask.prunable:
            keep = mask.tensors[f"{name}.weight"]
            assert module.out_channels == int(keep.reshape(keep.shape[0], -1).any(1).sum()), name
    trained = load_weights(out / "ratio_0.5" / "train" / "model.safetensors")
    assert all(torch.equal(ticket.model.state_dict()[k], v) for k, v in trained.items())
    assert cli_main(["export", "--run", str(out), "--ratio", "0.9", "--out", str(tmp_path / "u")]) == 2


def test_options_that_cannot_work_are_refused_before_any_file(tmp_path, capsys):
    for bad, match in ((dict(ratios=[1.2]), "ratios"), (dict(ratios=[]), "ratios"), (dict(window=1), "window"),
                       (dict(epsilon=-0.1), "epsilon"), (dict(search_epochs=9, epochs=3), "search-epochs"),
                       (dict(penalty=-1.0), "penalty"), (dict(check_every=-2), "check-every")):
        with pytest.raises(UserError, match=match):
            lt_plugin.create_strategy("early-bird", **bad)
    assert cli_main(["early-bird", "--ratios", "0.5", "0.5", "--out", str(tmp_path / "x")]) == 2
    assert cli_main(["early-bird", "--model", "test_vit", "--score", "bn-scale", "--out", str(tmp_path / "y")]) == 2
    assert "bn-scale needs BatchNorm" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_int8_search_still_finds_the_tickets(tmp_path):
    settings = dict(TINY, epochs=3, ratios=[0.5])
    results = lt_plugin.create_strategy("early-bird", search_precision="int8", **settings).run(tmp_path / "int8")
    assert results[0]["found"] and results[0]["search_precision"] == "int8"
    assert results[0]["test_accuracy"] > 0.3  # retrained in full precision: well above chance (0.1)


def test_a_run_killed_in_the_search_the_retraining_and_the_baseline_ends_as_an_uninterrupted_one(eb_run, tmp_path,
                                                                                                  kill_when):
    straight, _ = eb_run
    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "lt_plugin.cli", "early-bird", *TINY_FLAGS, "--baseline", "--out", str(killed)]
    second_check = sorted(read_checks(RunLayout(straight)))[1]
    for point in (RunLayout(killed).check(second_check),  # the search
                  killed / "ratio_0.3" / "train" / "checkpoint.safetensors",  # the retraining
                  killed / "baseline" / "dense" / "checkpoint.safetensors"):  # the baseline
        kill_when(command, point)
    subprocess.run(command, check=True, capture_output=True)
    for where in ("ratio_0.3", "ratio_0.5", "baseline/ratio_0.3", "baseline/ratio_0.5"):
        a, b = (load_weights(root / where / "weights.safetensors") for root in (killed, straight))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), where
    strip = lambda rs: [{k: v for k, v in r.items() if "seconds" not in k and k != "latency_ms"} for r in rs]  # noqa: E731
    assert strip(json.loads((killed / "results.json").read_text())) == \
        strip(json.loads((straight / "results.json").read_text()))


@pytest.mark.slow
def test_two_processes_find_the_same_ticket_as_one(tmp_path, two_processes):
    # A LayerNorm model: its training does not depend on how the global batch is split over processes.
    vit = ["early-bird", "--model", "test_vit", "--model-kwargs", '{"img_size": 16, "patch_size": 4}',
           "--dataset", "digits", "--image-size", "16", "--max-train-samples", "256", "--batch-size", "32",
           "--epochs", "3", "--lr", "0.01", "--opt", "adamw", "--window", "2", "--ratios", "0.5"]
    launcher, env = two_processes
    subprocess.run([*launcher, *vit, "--out", str(tmp_path / "two")], env=env, check=True, capture_output=True,
                   timeout=600)
    assert cli_main([*vit, "--out", str(tmp_path / "one")]) == 0
    assert json.loads((tmp_path / "two" / "config.json").read_text())["world_size"] == 2
    one, two = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two"))
    assert [r["eb_step"] for r in two] == [r["eb_step"] for r in one]
    assert [r["score"] for r in one] == ["magnitude"]
    checks_one, checks_two = (read_checks(RunLayout(tmp_path / d)) for d in ("one", "two"))
    step = one[0]["eb_step"]
    # The same ticket up to channels tied in the last bits: two processes sum the gradients in another order.
    assert mask_distance(checks_one[step][0]["0.5"], checks_two[step][0]["0.5"]) <= 0.02


def test_reinit_retrains_the_small_network_initialised_at_its_own_size_with_the_penalty_on(tmp_path, monkeypatch):
    """The reference's retrain_scratch.sh: main_scratch.py builds the pruned network (it initialises itself at its own
    size) and trains it with --sparsity-regularization, whole schedule; `full` is the same without the penalty."""
    import lt_plugin.pipeline as pipeline
    import lt_plugin.strategies.early_bird as early_bird
    started, penalised = [], []
    real_reinitialise, real_penalty = pipeline.reinitialise, early_bird.SlimmingPenalty
    monkeypatch.setattr(pipeline, "reinitialise", lambda model, seed: started.append(
        (sum(p.numel() for p in model.parameters()), seed)) or real_reinitialise(model, seed))
    monkeypatch.setattr(early_bird, "SlimmingPenalty", lambda scales, s: penalised.append(s) or real_penalty(scales, s))
    dense_params = sum(p.numel() for p in timm.create_model("test_resnet", num_classes=10).parameters())
    for schedule, penalties in (("scratch", 2), ("full", 1)):  # the search's penalty, then the retraining's
        started.clear(), penalised.clear()
        (r,) = lt_plugin.create_strategy("early-bird", retrain="reinit", retrain_schedule=schedule,
                                         **{**TINY, "ratios": [0.5], "seed": 3}).run(tmp_path / schedule)
        assert r["found"] and r["retrain_start_step"] == 0 and r["steps"] == 4 * 8
        assert started == [(r["params"], 4)] and r["params"] < dense_params  # the small model, the run's seed + 1
        assert penalised == [1e-4] * penalties
