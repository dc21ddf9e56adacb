"""Lottery Pools on a real (tiny) IMP run: the search, its sparsity, a blend and the baselines by hand, channel
export, resume, and the accuracies under corruption (the corruptions themselves: tests/test_corruptions.py)."""

import json
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader

import lt_plugin
from lt_plugin import Mask, load_ticket
from lt_plugin.cli import main as cli_main
from lt_plugin.corruptions import CORRUPTIONS, corrupt_to_uint8
from lt_plugin.experiment import Experiment
from lt_plugin.store import load_weights
from lt_plugin.pooling import DEFAULT_ALPHAS, adjacency_order, lottery_pool, sweep_order

TINY = dict(model="test_resnet", dataset="digits", image_size=8, max_train_samples=512, batch_size=32, epochs=2,
            lr=0.05)
ALPHAS = [0.1, 0.5]
SECONDS = ("seconds", "search_seconds")


def _data():
    return Experiment(**{k: TINY[k] for k in ("model", "dataset", "image_size", "max_train_samples")}).load_data()


def _kept(mask, names=None):
    return {n: int(mask.tensors[n].sum()) for n in (names or mask.prunable)}


@pytest.fixture(scope="module")
def imp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("imp") / "run"
    lt_plugin.create_strategy("imp", levels=2, **TINY).run(out)
    return out


@pytest.fixture(scope="module")
def pools(imp_run):
    results = lt_plugin.create_branch("lottery-pools", run_dir=str(imp_run), alphas=ALPHAS).run()
    return imp_run / "pools", results


def test_candidates_come_in_adjacency_order(pools):
    assert adjacency_order(3, range(7)) == [2, 4, 1, 5, 0, 6]
    assert adjacency_order(0, range(4)) == [1, 2, 3]
    assert adjacency_order(5, range(6)) == [4, 3, 2, 1, 0]
    _, results = pools
    assert [r["candidates"] for r in results] == [[1, 2], [0, 2], [1, 0]]


def _tried(score, patience):
    """The alphas the sweep tries when alpha scores score(alpha)."""
    order, tried, accuracy = sweep_order(DEFAULT_ALPHAS, patience), [], None
    while True:
        try:
            alpha = order.send(accuracy)
        except StopIteration:
            return tried
        tried.append(alpha)
        accuracy = score(alpha)


def test_fast_sweep_walks_the_alpha_grid_from_both_ends_until_each_side_stops_improving():
    barrier = lambda alpha: abs(alpha - 0.5)  # noqa: E731  (best near either ticket, worst between them)
    assert _tried(barrier, 2) == [0.05, 0.95, 0.1, 0.9, 0.2, 0.8]
    assert _tried(barrier, 1) == [0.05, 0.95, 0.1, 0.9]
    one_peak = lambda alpha: -abs(alpha - 0.6)  # noqa: E731  (both sides climb to it: every alpha is tried)
    assert sorted(_tried(one_peak, 2)) == sorted(DEFAULT_ALPHAS)
    assert _tried(barrier, None) == list(DEFAULT_ALPHAS)  # the reference protocol


def test_pooled_tickets_keep_the_density_and_never_lose_validation_accuracy(imp_run, pools):
    out, results = pools
    assert [r["level"] for r in results] == [0, 1, 2]
    assert json.loads((out / "results.json").read_text()) == results
    assert (out / "pools.png").stat().st_size > 1000
    for r in results:
        level = r["level"]
        target = Mask.load(imp_run / f"level_{level}" / "mask.safetensors")
        pooled = Mask.load(out / f"level_{level}" / "mask.safetensors")
        assert sum(_kept(pooled).values()) == sum(_kept(target).values())  # exactly the target's density
        assert r["density"] == target.density
        # the ticket and every blend are scored with their statistics recomputed the same way
        assert r["pooled_val_accuracy"] >= r["ticket_bn_val_accuracy"]
        # confirm chose on one half: the accuracy reported is the other half's; the halves add up to the whole split
        assert r["val_accuracy"] == r["pooled_val_accuracy_confirmation"]
        held_out = r["confirmation_images"]
        assert 0 < held_out < r["val_images"]
        for name in ("pooled", "ticket_bn"):
            right = (r[f"{name}_val_accuracy_selection"] * (r["val_images"] - held_out)
                     + r[f"{name}_val_accuracy_confirmation"] * held_out)
            assert right == pytest.approx(r[f"{name}_val_accuracy"] * r["val_images"], abs=1e-6)
        imp_result = json.loads((imp_run / f"level_{level}" / "result.json").read_text())
        assert r["ticket_test_accuracy"] == pytest.approx(imp_result["test_accuracy"])  # the ticket, scored as IMP did
        assert r["macs"] == imp_result["macs"] and r["params"] == imp_result["params"]
        weights = load_weights(out / f"level_{level}" / "weights.safetensors")
        for name in pooled.prunable:
            assert not weights[name][~pooled.tensors[name]].any()  # pruned entries are zero
        assert all(candidate in r["candidates"] and alpha in ALPHAS for candidate, alpha in r["accepted"])
        assert r["recalibrations"] == r["val_passes"]  # one per scored blend, and the ticket's own
        assert 1 <= r["val_passes"] <= 1 + len(ALPHAS) * len(r["candidates"])
        if not r["accepted"]:  # nothing beat the ticket: the ticket is kept, its statistics recomputed
            assert r["mask_distance"] == 0.0
            assert r["pooled_test_accuracy"] == r["ticket_bn_test_accuracy"]
            ticket = load_weights(imp_run / f"level_{level}" / "weights.safetensors")
            statistics = ("running_mean", "running_var", "num_batches_tracked")  # BatchNorm's, recomputed
            assert all(torch.equal(weights[k], ticket[k]) for k in ticket if not k.endswith(statistics))
        for model in ("ticket", "ticket_bn", "pooled", "ensemble", "swa", "ema"):
            assert 0.0 <= r[f"{model}_test_accuracy"] <= 1.0
    assert results[0]["density"] == 1.0  # the dense target is never pruned
    stamp = (out / "level_1" / "result.json").stat().st_mtime_ns
    again = lt_plugin.create_branch("lottery-pools", run_dir=str(imp_run), targets=[1], alphas=ALPHAS).run()
    assert again == [results[1]] and (out / "level_1" / "result.json").stat().st_mtime_ns == stamp  # no work
    imp_results = json.loads((imp_run / "results.json").read_text())
    assert results[0]["ensemble_macs"] == sum(r["macs"] for r in imp_results)


def test_a_fixed_alpha_and_candidate_gives_the_blend_computed_by_hand(imp_run, tmp_path):
    alpha, target_level, candidate_level = 0.3, 2, 1
    results = lt_plugin.create_branch("lottery-pools", run_dir=str(imp_run), targets=[target_level],
                                        alphas=[alpha], max_candidates=1, protocol="reference",
                                        acceptance="paper").run(tmp_path / "p")
    (r,) = results
    assert r["candidates"] == [candidate_level]

    tickets = {level: (load_weights(imp_run / f"level_{level}" / "weights.safetensors"),
                       Mask.load(imp_run / f"level_{level}" / "mask.safetensors")) for level in range(3)}
    target_state, target_mask = tickets[target_level]

    def repruned(alpha):  # alpha * candidate + (1 - alpha) * target, global magnitude to the target's kept count
        blended = {k: alpha * tickets[candidate_level][0][k] + (1 - alpha) * v if v.is_floating_point() else v
                   for k, v in target_state.items()}
        count = sum(_kept(target_mask).values())
        magnitudes = torch.cat([blended[n].abs().reshape(-1) for n in target_mask.prunable])
        threshold = magnitudes.topk(count).values[-1]
        for name in target_mask.prunable:
            blended[name] = blended[name] * (blended[name].abs() >= threshold)
        assert sum(int(blended[n].count_nonzero()) for n in target_mask.prunable) == count
        return blended

    # BatchNorm statistics over the whole training set, as torch.optim.swa_utils.update_bn computes them, for the
    # blend and for the target it is compared with
    data = _data()

    def model_of(state, mask=None):
        model = Experiment(model="test_resnet", image_size=8).create_model(data.num_classes, seed=0)
        model.load_state_dict(state)
        if mask is not None:
            mask.apply(model)
        return model.eval()

    def recalibrated(state):
        model = model_of(state)
        update_bn(DataLoader(data.train, batch_size=256, shuffle=True, generator=torch.Generator().manual_seed(0)),
                  model)
        return model.eval()

    @torch.no_grad()
    def accuracy(models, split):  # a list of models predicts the mean of their softmaxes
        probabilities = torch.stack([m(split.images).softmax(dim=1) for m in models]).mean(dim=0)
        return (probabilities.argmax(1) == split.labels).float().mean().item()

    model, target = recalibrated(repruned(alpha)), recalibrated(target_state)
    val_accuracy, target_accuracy = accuracy([model], data.val), accuracy([target], data.val)
    assert r["ticket_bn_val_accuracy"] == pytest.approx(target_accuracy)

    pooled = load_weights(tmp_path / "p" / f"level_{target_level}" / "weights.safetensors")
    if val_accuracy > target_accuracy:
        assert r["accepted"] == [[candidate_level, alpha]]
        assert r["pooled_val_accuracy"] == pytest.approx(val_accuracy)
        expected = model.state_dict()
    else:
        assert r["accepted"] == []
        expected = target.state_dict()
    assert pooled.keys() == expected.keys()
    for name in expected:
        assert torch.allclose(pooled[name].float(), expected[name].float(), atol=1e-5), name
    # The baselines on the same candidate: SWA blends it in at 1/2, EMA at --ema-alpha (0.9), each re-pruned and
    # recalibrated; the ensemble is every level's ticket as trained.
    assert r["swa_test_accuracy"] == pytest.approx(accuracy([recalibrated(repruned(1 / 2))], data.test))
    assert r["ema_test_accuracy"] == pytest.approx(accuracy([recalibrated(repruned(0.9))], data.test))
    members = [model_of(state, mask) for state, mask in tickets.values()]
    assert r["ensemble_test_accuracy"] == pytest.approx(accuracy(members, data.test))


def test_keep_mask_keeps_the_targets_mask(imp_run, tmp_path):
    (r,) = lt_plugin.create_branch("lottery-pools", run_dir=str(imp_run), targets=[1], alphas=[0.5],
                                     keep_mask=True).run(tmp_path / "keep")
    target = Mask.load(imp_run / "level_1" / "mask.safetensors")
    pooled = Mask.load(tmp_path / "keep" / "level_1" / "mask.safetensors")
    assert all(torch.equal(pooled.tensors[n], target.tensors[n]) for n in target.prunable)
    assert r["mask_distance"] == 0.0 and r["pooled_val_accuracy"] >= r["ticket_bn_val_accuracy"]


def test_corruption_accuracies_sit_beside_every_model(imp_run, tmp_path):
    (r,) = lt_plugin.create_branch("lottery-pools", run_dir=str(imp_run), targets=[2], alphas=[0.5],
                                     max_candidates=1, corruptions=True).run(tmp_path / "c")
    for model in ("ticket", "ticket_bn", "pooled", "ensemble", "swa", "ema"):
        per_corruption = r[f"{model}_corruptions"]
        assert sorted(per_corruption) == sorted(CORRUPTIONS)
        assert all(len(severities) == 5 for severities in per_corruption.values())
        mean = sum(sum(s) for s in per_corruption.values()) / 30
        assert r[f"{model}_corruption_accuracy"] == pytest.approx(mean)
    # The ticket's accuracy under the weakest and the strongest noise, by hand: the level's weights and mask, the
    # 8-bit test pixels corrupted with the run's seed and normalised as the split is, scored in the strategy's batches.
    data = _data()
    ticket = Experiment(model="test_resnet", image_size=8).create_model(data.num_classes, seed=0)
    ticket.load_state_dict(load_weights(imp_run / "level_2" / "weights.safetensors"))
    Mask.load(imp_run / "level_2" / "mask.safetensors").apply(ticket).eval()
    pixels = data.test.pixels[:].expand(-1, len(data.test.mean), -1, -1).float() / 255
    for severity in (1, 5):
        noisy = corrupt_to_uint8(pixels, "gaussian_noise", severity, seed=0).float() / 255
        images = (noisy - data.test.mean) / data.test.std
        with torch.no_grad():
            correct = sum(int((ticket(chunk).argmax(1) == labels).sum())
                          for chunk, labels in zip(images.split(256), data.test.labels.split(256)))
        assert r["ticket_corruptions"]["gaussian_noise"][severity - 1] == pytest.approx(correct / len(data.test))


def test_channel_ticket_keeps_its_channels_per_group_and_exports(tmp_path):
    imp_dir = tmp_path / "imp"
    imp_results = lt_plugin.create_strategy("imp", levels=1, granularity="channel", prune_fraction=0.4,
                                            **TINY).run(imp_dir)
    (r,) = lt_plugin.create_branch("lottery-pools", run_dir=str(imp_dir), targets=[1],
                                     alphas=[0.2, 0.6]).run()
    target = Mask.load(imp_dir / "level_1" / "mask.safetensors")
    pooled = Mask.load(imp_dir / "pools" / "level_1" / "mask.safetensors")
    assert pooled.density == target.density and r["density"] == target.density
    assert {root: len(idxs) for root, _, idxs in pooled.plan} == {root: len(idxs) for root, _, idxs in target.plan}
    assert r["macs"] == imp_results[1]["macs"]  # the same channels per group: the ticket's MACs
    assert r["pooled_val_accuracy"] >= r["ticket_bn_val_accuracy"]

    assert cli_main(["export", "--run", str(imp_dir / "pools"), "--level", "1", "--out", str(tmp_path / "t.st")]) == 0
    ticket = load_ticket(tmp_path / "t.st")
    assert ticket.metadata["physical"] and ticket.mask.density == pooled.density
    masked = Experiment(model="test_resnet", image_size=8).create_model(10, seed=0)
    masked.load_state_dict(load_weights(imp_dir / "pools" / "level_1" / "weights.safetensors"))
    pooled.apply(masked).eval()
    data = _data()
    with torch.no_grad():
        small, full = ticket.model(data.test.images), masked(data.test.images)
    assert torch.allclose(small, full, atol=1e-4)  # a BatchNorm net: exported == masked
    accuracy = (small.argmax(1) == data.test.labels).float().mean().item()
    assert accuracy == pytest.approx(r["pooled_test_accuracy"])
    assert sum(p.numel() for p in ticket.model.parameters()) < sum(p.numel() for p in masked.parameters())


def test_a_run_killed_at_several_points_ends_as_an_uninterrupted_one(imp_run, pools, tmp_path, kill_when):
    out, results = pools
    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "lt_plugin.cli", "lottery-pools", "--run", str(imp_run), "--targets", "0", "1",
               "--alphas", *map(str, ALPHAS), "--out", str(killed)]
    for point in (killed / "ensemble.json", killed / "level_0" / "result.json"):  # the ensemble, the first target
        kill_when(command, point)
    subprocess.run(command, check=True, capture_output=True)
    resumed = json.loads((killed / "results.json").read_text())
    strip = lambda rs: [{k: v for k, v in r.items() if k not in SECONDS} for r in rs]  # noqa: E731
    assert strip(resumed) == strip(results[:2])
    for level in (0, 1):
        a = load_weights(killed / f"level_{level}" / "weights.safetensors")
        b = load_weights(out / f"level_{level}" / "weights.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), level


def test_user_mistakes_exit_2_with_one_line_and_write_nothing(imp_run, tmp_path, capsys):
    cases = [(["--run", str(tmp_path / "missing")], "not a run folder"),
             (["--run", str(imp_run), "--targets", "7"], "--targets 7"),
             (["--run", str(imp_run), "--alphas", "0.5", "1.5"], "--alphas"),
             (["--run", str(imp_run), "--targets", "some"], "--targets"),
             (["--run", str(imp_run), "--alphas"], "--alphas"),
             (["--run", str(imp_run), "--max-candidates", "0"], "--max-candidates"),
             (["--run", str(imp_run), "--protocol", "exact"], "--protocol"),
             (["--run", str(imp_run), "--bn-batches", "0"], "--bn-batches"),
             (["--run", str(imp_run), "--patience", "0"], "--patience"),
             (["--run", str(imp_run), "--ema-alpha", "1"], "--ema-alpha"),
             (["--run", str(imp_run), "--corruptions", "--corruption-samples", "0"], "--corruption-samples"),
             (["--run", str(imp_run), "--corruption-samples", "100"], "applies with --corruptions"),
             (["--run", str(imp_run), "--seed", "x"], "--seed"),
             ([], "--run DIR is required")]
    for flags, message in cases:
        code = cli_main(["lottery-pools", *flags, "--out", str(tmp_path / "x")])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "x").exists()
    one_level = tmp_path / "one"
    one_level.mkdir()
    (one_level / "config.json").write_text(json.dumps({"strategy": "imp", "hparams": {"levels": 0}}))
    with pytest.raises(lt_plugin.RunFolderError, match="at least 2 levels"):
        lt_plugin.create_branch("lottery-pools", run_dir=str(one_level)).run(tmp_path / "y")
    (one_level / "config.json").write_text(json.dumps({"strategy": "imp", "hparams": {"levels": 2}}))
    with pytest.raises(lt_plugin.RunFolderError, match="unfinished"):
        lt_plugin.create_branch("lottery-pools", run_dir=str(one_level)).run(tmp_path / "y")
    (one_level / "config.json").write_text(json.dumps({"strategy": "early-bird", "hparams": {}}))
    with pytest.raises(lt_plugin.RunFolderError, match="works on imp or"):
        lt_plugin.create_branch("lottery-pools", run_dir=str(one_level)).run(tmp_path / "y")


def test_a_reference_run_folder_takes_other_values_of_the_fast_protocols_options(imp_run, tmp_path, capsys):
    flags = ["lottery-pools", "--run", str(imp_run), "--targets", "1", "--max-candidates", "1", "--alphas", "0.5",
             "--protocol", "reference", "--out", str(tmp_path / "reference")]
    assert cli_main(flags) == 0
    assert cli_main([*flags, "--patience", "3", "--bn-batches", "5"]) == 0  # options the reference does not read
    assert cli_main([*flags, "--ema-alpha", "0.5"]) == 2  # an option it reads
    assert "ema_alpha" in capsys.readouterr().err


def test_the_paired_test_is_mcnemars_exact_one_sided_test():
    from scipy.stats import binomtest

    from lt_plugin.acceptance import smallest_gain
    from lt_plugin.stats import mcnemar_exact
    for gained, lost in [(0, 0), (3, 0), (8, 0), (12, 5), (30, 18), (5, 9)]:
        expected = binomtest(gained, gained + lost, 0.5, alternative="greater").pvalue if gained + lost else 1.0
        assert mcnemar_exact(gained, lost) == pytest.approx(expected, rel=1e-9)
    assert smallest_gain(11) == 8  # 0.5**8 < 0.05 / 11 < 0.5**7: 8 images gained, none lost
    assert mcnemar_exact(8, 0) < 0.05 / 11 < mcnemar_exact(7, 0)


def test_the_paired_rule_rejects_a_blend_whose_gain_the_validation_split_cannot_resolve():
    """Tickets as constant state dicts, scored by hand-made correctness vectors: the second candidate's best blend
    gains 3 images and loses 1 of 400, which the paper's rule accepts and the paired rule does not; the third gains
    40 and loses 5, which both accept."""
    from lt_plugin.pooling import lottery_pool
    from torch import nn
    model = nn.Linear(2, 2, bias=False)
    mask = Mask({"weight": torch.ones(2, 2, dtype=torch.bool)}, ["weight"])  # dense: never re-pruned
    tickets = {level: ({"weight": torch.full((2, 2), float(level))}, mask) for level in range(3)}
    base = torch.zeros(400, dtype=torch.bool)
    base[:200] = True
    small = base.clone()
    small[200:203], small[0] = True, False        # +3, -1
    large = base.clone()
    large[200:240], large[:5] = True, False       # +40, -5

    def evaluate(m, _mask):  # the blend of target 0 with candidate c at alpha a has weight a * c
        value = float(m.weight.detach()[0, 0])
        return small if 0.9 < value < 1.0 else large if 1.8 < value < 2.0 else base

    for acceptance, accepted in (("paper", [[1, 0.95], [2, 0.95]]), ("paired", [[2, 0.95]])):
        pooled = lottery_pool(model, tickets, 0, evaluate=evaluate, candidates=[1, 2], alphas=[0.5, 0.95],
                              acceptance=acceptance)
        assert pooled.accepted == accepted, acceptance
    assert pooled.sweeps[0] == {"candidate": 1, "scores": [[0.5, 0.5], [0.95, 0.505]], "gained": 3, "lost": 1,
                                "p_value": pytest.approx(5 / 16)}


def test_the_paired_rules_bar_counts_every_blend_of_the_search():
    """Bonferroni over alphas x candidates: a blend gaining 6 images and losing none (p = 1/64) passes a search of 2
    alphas and one candidate (bar 0.05 / 2) and fails one of 2 alphas and two candidates (bar 0.05 / 4), though the
    second candidate gains nothing: with a bar per candidate, more candidates would mean more chances to accept
    noise."""
    from lt_plugin.acceptance import smallest_gain
    from lt_plugin.pooling import lottery_pool
    model = nn.Linear(2, 2, bias=False)
    mask = Mask({"weight": torch.ones(2, 2, dtype=torch.bool)}, ["weight"])
    tickets = {level: ({"weight": torch.full((2, 2), float(level))}, mask) for level in range(3)}
    base = torch.zeros(400, dtype=torch.bool)
    base[:200] = True
    better = base.clone()
    better[200:206] = True  # +6, -0

    def evaluate(m, _mask):
        return better if 0.9 < float(m.weight.detach()[0, 0]) < 1.0 else base

    one = lottery_pool(model, tickets, 0, evaluate=evaluate, candidates=[1], alphas=[0.5, 0.95], acceptance="paired")
    two = lottery_pool(model, tickets, 0, evaluate=evaluate, candidates=[1, 2], alphas=[0.5, 0.95],
                       acceptance="paired")
    assert one.accepted == [[1, 0.95]] and two.accepted == []
    assert two.sweeps[0]["p_value"] == pytest.approx(1 / 64)
    assert smallest_gain(2) == 6 and smallest_gain(4) == 7  # 2**-6 < 0.05 / 2; 2**-6 > 0.05 / 4 > 2**-7


def test_the_bar_a_run_records_counts_its_alphas_and_candidates(imp_run, pools, tmp_path, capsys):
    from lt_plugin.acceptance import smallest_gain
    _, results = pools  # the default rule, confirm: one test on the confirmation half, no correction
    n = results[0]["val_images"]
    held_out = results[0]["confirmation"]["images"] if results[0].get("confirmation") else None
    assert {r["acceptance"] for r in results} == {"confirm"}
    if held_out is not None:
        assert {r["smallest_gain"] for r in results} == {smallest_gain(1) / held_out}
    assert all(abs(r["smallest_gain"] * n / 2 - smallest_gain(1)) < 1 for r in results)  # half the split
    capsys.readouterr()
    for max_candidates, tries in ((None, len(ALPHAS) * 2), (1, len(ALPHAS))):  # 3 levels: 2 candidates a target
        one = lt_plugin.create_branch("lottery-pools", run_dir=str(imp_run), alphas=ALPHAS, acceptance="paired",
                                      max_candidates=max_candidates, targets=[1]).run(tmp_path / f"{tries}")
        assert one[0]["smallest_gain"] == smallest_gain(tries) / n
        assert f"kept only if it gains {smallest_gain(tries)} of {n} images" in capsys.readouterr().out


def test_the_target_and_every_blend_are_scored_after_the_same_recalibration():
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    prunable = ["0.weight"]
    tickets = {}
    for key in (0, 1, 2):
        torch.manual_seed(key)
        state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in model.state_dict().items()}
        tickets[key] = (state, Mask({"0.weight": torch.ones(3, 3, dtype=torch.bool)}, prunable))
    seen = []

    def recalibrate(m, mask):
        m[1].running_mean.fill_(5.0)  # what a recalibration leaves, whatever the state had

    def evaluate(m, mask):
        seen.append(float(m[1].running_mean[0]))
        return 0.5

    found = lottery_pool(model, tickets, 1, evaluate=evaluate, recalibrate=recalibrate, alphas=[0.3, 0.6])
    assert seen == [5.0] * (1 + 2 * 2)  # the target, then two alphas of two candidates
    assert found.recalibrations == len(seen)
    assert float(found.state["1.running_mean"][0]) == 5.0  # nothing beat the target: it comes back recalibrated
    assert torch.equal(found.state["0.weight"], tickets[1][0]["0.weight"])
