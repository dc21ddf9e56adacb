"""The random-reinit and random-mask controls as branches of a finished run: the ticket's own masks (or its exact
per-layer, per-group counts), trained again with one thing changed."""

import json

import pytest
import torch

import lt_plugin
from lt_plugin import Mask
from lt_plugin.cli import main as cli_main
from lt_plugin.layout import RunLayout
from lt_plugin.store import load_weights

TINY = dict(model="test_resnet", dataset="digits", image_size=16, max_train_samples=256, batch_size=32, epochs=1,
            lr=0.05)


@pytest.fixture(scope="module", params=["weight", "channel"])
def ticket_run(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"imp_{request.param}") / "run"
    lt_plugin.create_strategy("imp", levels=2, prune_fraction=0.4, rewind="2it", granularity=request.param,
                              **TINY).run(out)
    return out


def _control(run, name, out=None, **options):
    results = lt_plugin.create_branch(name, run_dir=str(run), **options).run(out)
    return results, out or RunLayout(run).branch(name)


def test_random_reinit_keeps_the_tickets_masks_and_draws_a_fresh_start(ticket_run):
    results, out = _control(ticket_run, "random-reinit", seed=7)
    run = RunLayout(ticket_run)
    assert [r["level"] for r in results] == [1, 2]  # the pruned levels
    for level in (1, 2):
        ticket, control = Mask.load(run.level(level).mask), Mask.load(RunLayout(out).level(level).mask)
        assert ticket.tensors.keys() == control.tensors.keys() and ticket.plan == control.plan
        assert all(torch.equal(ticket.tensors[n], control.tensors[n]) for n in ticket.tensors)
    # The start: a fresh initialisation under the mask, at the run's rewind step (2), not the run's theta_2.
    start = load_weights(RunLayout(out).level(1).train.step(2))
    theirs = load_weights(run.level(1).train.step(2))
    differ = [n for n in theirs if theirs[n].is_floating_point() and theirs[n].abs().sum() > 0
              and not torch.equal(theirs[n], start[n])]
    assert len(differ) > len(theirs) // 3
    assert results[0]["control_seed"] == 8 * 100_003 + 0  # --seed and the run's seed (0) together
    assert json.loads(RunLayout(out).config.read_text())["hparams"]["seed"] == 7


def test_random_mask_keeps_every_layers_count_at_every_level(ticket_run):
    results, out = _control(ticket_run, "random-mask")
    run = RunLayout(ticket_run)
    for level in (1, 2):
        ticket, control = Mask.load(run.level(level).mask), Mask.load(RunLayout(out).level(level).mask)
        assert ticket.layer_densities() == control.layer_densities()
        assert {n: int(t.sum()) for n, t in ticket.tensors.items()} == \
            {n: int(t.sum()) for n, t in control.tensors.items()}
        assert control.distance(ticket) > 0.05  # the positions are drawn, not the ticket's
        if ticket.granularity == "channel":  # the same count in every Torch-Pruning group
            assert [(r, o, len(i)) for r, o, i in ticket.plan] == [(r, o, len(i)) for r, o, i in control.plan]
    # The start: the run's own rewind point (theta_2 of its dense training) under the control's mask.
    theta_2 = load_weights(run.level(0).train.step(2))
    start = load_weights(RunLayout(out).level(1).train.step(2))
    mask = Mask.load(RunLayout(out).level(1).mask)
    name = mask.prunable[0]
    if mask.granularity == "weight":
        assert torch.equal(start[name], theta_2[name] * mask.tensors[name])


def test_a_control_is_read_by_export_and_lottery_pools_and_resumes_for_free(ticket_run, tmp_path):
    results, out = _control(ticket_run, "random-reinit", tmp_path / "reinit", seed=3)
    again, _ = _control(ticket_run, "random-reinit", tmp_path / "reinit", seed=3)
    assert again == results  # finished levels are read back
    assert cli_main(["export", "--run", str(out), "--level", "2", "--out", str(tmp_path / "t.safetensors")]) == 0
    assert lt_plugin.load_ticket(tmp_path / "t.safetensors").metadata["density"] == pytest.approx(
        results[1]["density"])
    pooled = lt_plugin.create_branch("lottery-pools", run_dir=str(out), alphas=[0.5]).run(tmp_path / "pools")
    assert [r["level"] for r in pooled] == [1, 2]


def test_the_strategy_command_runs_a_control_and_refuses_mistakes(ticket_run, tmp_path, capsys):
    assert cli_main(["imp", "--control", "random-mask", "--run", str(ticket_run), "--seed", "5",
                     "--out", str(tmp_path / "masked")]) == 0
    assert json.loads((tmp_path / "masked" / "config.json").read_text())["strategy"] == "random-mask"
    capsys.readouterr()
    for argv, said in ((["imp", "--control", "random-mask"], "needs --run"),
                       (["imp", "--control", "random-reinit", "--run", str(ticket_run), "--epochs", "2"],
                        "drop --epochs"),
                       (["random-mask", "--run", str(ticket_run), "--targets", "9"], "--targets 9")):
        assert cli_main(argv) == 2
        err = capsys.readouterr().err
        assert said in err and len(err.strip().splitlines()) == 1, err


def test_an_old_control_run_folder_is_refused_with_how_to_rerun(tmp_path, capsys):
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.json").write_text(json.dumps({"strategy": "imp", "hparams": {"control": "random-reinit"}}))
    assert cli_main(["lottery-pools", "--run", str(old)]) == 2
    err = capsys.readouterr().err
    assert "lt-plugin imp --control random-reinit --run IMP_RUN" in err and len(err.strip().splitlines()) == 1
