"""SWAMP: the particle average and SWA under a mask against hand computations, an end-to-end run read back against
its particles, resume after kill -9 inside a particle, the branches that read it, two processes training particles
in parallel, and the user's mistakes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from lt_plugin import Mask, MaskedSWA, average_under_mask
from lt_plugin.cli import main as cli_main
from lt_plugin.layout import RunLayout
from lt_plugin.store import load_weights, read_safetensors

JOBS = Path(__file__).resolve().parent / "jobs"
TINY = ["--model", "test_resnet", "--dataset", "digits", "--image-size", "8", "--max-train-samples", "256",
        "--batch-size", "32", "--epochs", "2"]  # 8 optimizer steps per epoch, 16 in all
# Level 0 one particle (SWAMP+ from level 1), level 1 two; theta_k at step 2; SWA from step 4, an update every 2 steps.
SWAMP = ["swamp", *TINY, "--levels", "1", "--particles", "2", "--swamp-plus", "1", "--rewind", "2it",
         "--swa-start", "0.25", "--swa-every", "2it"]
SECONDS = ("seconds", "train_seconds", "latency_ms")


def _strip(results):
    return [{k: (_strip(v) if k == "particle_results" else v) for k, v in r.items() if k not in SECONDS}
            for r in results]


def _is_statistic(name: str) -> bool:
    return "running_" in name or name.endswith("num_batches_tracked")  # recomputed, not averaged


def test_the_particle_average_is_the_mean_of_the_particles_under_the_mask():
    keep = torch.tensor([[True, False], [False, True]])
    particles = [{"w": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "b": torch.tensor([3.0, 0.0]), "n": torch.tensor(7)},
                 {"w": torch.tensor([[2.0, -5.0], [0.0, 8.0]]), "b": torch.tensor([0.0, 3.0]), "n": torch.tensor(9)},
                 {"w": torch.tensor([[6.0, 1.0], [1.0, -3.0]]), "b": torch.tensor([0.0, 0.0]), "n": torch.tensor(2)}]
    averaged = average_under_mask((p for p in particles), Mask({"w": keep}, ["w"]))  # read one at a time
    assert torch.equal(averaged["w"], torch.tensor([[3.0, 0.0], [0.0, 3.0]]))  # (1+2+6)/3, pruned, pruned, (4+8-3)/3
    assert torch.equal(averaged["b"], torch.tensor([1.0, 1.0]))  # not masked: the plain mean
    assert int(averaged["n"]) == 7  # a counter stays the first's


def _train_swa(steps, batches, split_at=None):
    """A linear model trained with SGD (momentum, weight decay: its pruned weights move) and MaskedSWA; with
    `split_at`, everything is rebuilt at that step from the state dicts, as a resumed loop would."""
    def build():
        torch.manual_seed(0)
        model = nn.Linear(4, 3)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
        keep = torch.Generator().manual_seed(1)
        mask = Mask({"weight": torch.rand(3, 4, generator=keep) > 0.5}, ["weight"])
        return model, optimizer, mask, MaskedSWA(model, optimizer, swa_lr=0.02, start_step=3, every=2, mask=mask,
                                                 anneal_steps=2)
    model, optimizer, mask, swa = build()
    samples, rates = [], []
    for step in range(1, steps + 1):
        if step - 1 == split_at:
            saved = (model.state_dict(), optimizer.state_dict(), swa.state_dict())
            model, optimizer, mask, swa = build()
            model.load_state_dict(saved[0])
            optimizer.load_state_dict(saved[1])
            swa.load_state_dict(saved[2])
        optimizer.zero_grad()
        model(batches[step - 1]).pow(2).mean().backward()
        optimizer.step()
        if swa.step():
            samples.append(model.weight.detach().clone())
        rates.append(optimizer.param_groups[0]["lr"])
    return model, mask, swa, samples, rates


def test_swa_under_a_mask_averages_the_update_steps_and_keeps_the_pruned_weights_zero():
    batches = [torch.randn(5, 4, generator=torch.Generator().manual_seed(i)) for i in range(9)]
    model, mask, swa, samples, rates = _train_swa(9, batches)
    keep = mask.tensors["weight"]
    assert len(samples) == 3 and swa.updated_at == 9  # after steps 5, 7 and 9: start 3 + k * 2
    torch.testing.assert_close(swa.module.weight, torch.stack(samples).mean(dim=0) * keep)
    assert torch.all(swa.module.weight[~keep] == 0)
    assert bool((model.weight[~keep] != 0).any())  # the model's own pruned weights moved; the average's did not
    # 0.1 until SWA starts after step 3, then SWALR's cosine to 0.02 over 2 steps: 0.1 + (0.02 - 0.1) * 0.5 halfway
    assert rates == pytest.approx([0.1, 0.1, 0.1, 0.06, 0.02, 0.02, 0.02, 0.02, 0.02])


def test_masked_swa_resumes_from_its_state_dict_to_the_same_average():
    batches = [torch.randn(5, 4, generator=torch.Generator().manual_seed(i)) for i in range(9)]
    _, _, whole, _, whole_rates = _train_swa(9, batches)
    _, _, resumed, _, resumed_rates = _train_swa(9, batches, split_at=6)  # after the update of step 5, in the anneal
    assert torch.equal(whole.module.weight, resumed.module.weight) and whole_rates == resumed_rates
    assert int(resumed.state_dict()["n_averaged"]) == 3


@pytest.fixture(scope="module")
def swamp(tmp_path_factory):
    out = tmp_path_factory.mktemp("swamp") / "run"
    assert cli_main([*SWAMP, "--out", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text())


def test_a_swamp_level_is_the_masked_mean_of_its_particles(swamp):
    out, results = swamp
    layout = RunLayout(out)
    assert [r["particles"] for r in results] == [1, 2]  # SWAMP+: one particle before level 1
    for r in results:
        level = layout.level(r["level"])
        mask = Mask.load(level.mask)
        particles = [load_weights(level.particle(p).weights) for p in range(r["particles"])]
        averaged = load_weights(level.weights)
        for name, value in averaged.items():
            if not _is_statistic(name):
                expected = sum(p[name] for p in particles) / len(particles)
                if name in mask.tensors:
                    expected = expected * mask.tensors[name]
                torch.testing.assert_close(value, expected)
        for state in [averaged, *particles, *(read_safetensors(level.particle(p).train.swa_average)[0]
                                              for p in range(r["particles"]))]:
            assert all(torch.all(state[n][~mask.tensors[n]] == 0) for n in mask.prunable)
        scores = r["particle_results"]
        assert r["best_particle"] == max(range(len(scores)), key=lambda p: scores[p]["val_accuracy"])
        assert r["particles_mean_test_accuracy"] == pytest.approx(sum(s["test_accuracy"] for s in scores)
                                                                  / len(scores))
        assert all(s["swa_updates"] == 6 for s in scores)  # steps 6, 8, ..., 16
        assert r["steps"] == 16 and r["rewind_step"] == 2


def test_the_particles_start_from_the_rewound_ticket_and_the_next_mask_prunes_the_average(swamp):
    out, results = swamp
    layout = RunLayout(out)
    theta_k = load_weights(layout.level(0).train.step(2))
    for level in (0, 1):
        start, metadata = read_safetensors(layout.level(level).start)
        assert json.loads(metadata["step"]) == 2 and all(torch.equal(start[k], theta_k[k]) for k in theta_k)
    assert [s["seed"] for s in results[1]["particle_results"]] == [0, 100_004]  # their own data orders
    # level 1's mask: the largest |w| of level 0's average over every prunable weight (global), as many as it keeps
    mask, average = Mask.load(layout.level(1).mask), load_weights(layout.level(0).weights)
    scores = torch.cat([average[n].abs().reshape(-1) for n in mask.prunable])
    kept = torch.zeros_like(scores, dtype=torch.bool)
    kept[scores.topk(int(torch.cat([mask.tensors[n].reshape(-1) for n in mask.prunable]).sum())).indices] = True
    assert torch.equal(torch.cat([mask.tensors[n].reshape(-1) for n in mask.prunable]), kept)
    assert results[1]["density"] == pytest.approx(0.8, abs=1e-4)


def test_a_swamp_run_killed_inside_a_particle_ends_as_an_uninterrupted_one(swamp, tmp_path):
    out, results = swamp
    killed = tmp_path / "killed"
    # Killed right after particle 1 of level 1 wrote its average of step 10: its checkpoint (step 8) names an older
    # one, which the resumed run reads back before it replays steps 9 and 10.
    written = "level_1/particle_1/train/swa_step_10.safetensors"
    done = subprocess.run([sys.executable, str(JOBS / "kill_after_write.py"), written, *SWAMP, "--out", str(killed)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == -9, done.stderr[-2000:]
    particle = RunLayout(killed).level(1).particle(1)
    assert particle.train.checkpoint.exists() and not particle.finished
    assert cli_main([*SWAMP, "--out", str(killed)]) == 0
    assert _strip(json.loads((killed / "results.json").read_text())) == _strip(results)
    for path in ("level_1/weights.safetensors", "level_1/particle_1/weights.safetensors"):
        a, b = load_weights(killed / path), load_weights(out / path)
        assert all(torch.equal(a[k], b[k]) for k in b)
    assert cli_main(["compare", str(out), str(killed), "--out", str(tmp_path / "compare")]) == 0
    rows = json.loads((tmp_path / "compare" / "compare.json").read_text())["rows"]
    assert [len(row["runs"]) for row in rows] == [2, 2]


def test_lottery_pools_and_the_controls_take_a_swamp_run(swamp, tmp_path):
    out, results = swamp
    assert cli_main(["lottery-pools", "--run", str(out), "--out", str(tmp_path / "pools")]) == 0
    pooled = json.loads((tmp_path / "pools" / "results.json").read_text())
    assert [r["level"] for r in pooled] == [0, 1]
    assert cli_main(["random-mask", "--run", str(out), "--targets", "1", "--out", str(tmp_path / "control")]) == 0
    control = json.loads((tmp_path / "control" / "results.json").read_text())
    assert [(r["level"], r["particles"], r["control"]) for r in control] == [(1, 2, "random-mask")]  # as SWAMP trains
    ticket, shuffled = Mask.load(out / "level_1" / "mask.safetensors"), Mask.load(
        tmp_path / "control" / "level_1" / "mask.safetensors")
    assert all(int(ticket.tensors[n].sum()) == int(shuffled.tensors[n].sum()) for n in ticket.prunable)
    assert ticket.distance(shuffled) > 0


def test_swamp_options_are_checked_before_anything_is_written(tmp_path, capsys):
    for flags, message in ((["--particles", "0"], "--particles must be 1 or more"),
                           (["--swa-start", "1.0"], "past the end of training"),
                           (["--swa-start", "0.9", "--swa-every", "1ep"], "past the end of training"),
                           (["--swa-start", "1it", "--rewind", "2it"], "before the rewind point"),
                           (["--swa-every", "often"], "--swa-every is <N>it, <N>ep or a fraction"),
                           (["--rewind", "lr"], "swamp rewinds to init or theta_k"),
                           (["--swamp-plus", "3"], "--swamp-plus is the first level"),
                           (["--bn-fraction", "0"], "--bn-fraction must be in (0, 1]")):
        assert cli_main(["swamp", *TINY, "--levels", "1", "--swa-every", "2it", *flags,
                         "--out", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (flags, err)
    assert not (tmp_path / "r" / "config.json").exists()


@pytest.mark.slow
def test_two_processes_train_the_particles_in_parallel_to_the_sequential_result(tmp_path, two_processes):
    launcher, env = two_processes  # accelerate launch gives each process one thread (OMP_NUM_THREADS=1)
    command = ["swamp", *TINY, "--levels", "1", "--particles", "2", "--swa-start", "0.5", "--swa-every", "4it"]
    sequential = subprocess.run([sys.executable, "-m", "lt_plugin", *command, "--out", str(tmp_path / "one")],
                                env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=900)
    assert sequential.returncode == 0, sequential.stderr[-3000:]
    parallel = subprocess.run([*launcher, *command, "--out", str(tmp_path / "two")], env=env, capture_output=True,
                              text=True, timeout=900)
    assert parallel.returncode == 0, parallel.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "config.json").read_text())["world_size"] == 2
    for level in (0, 1):  # each particle trained by one process alone: the sequential run's tensors, bit for bit
        for path in (f"level_{level}/particle_0/weights.safetensors", f"level_{level}/particle_1/weights.safetensors",
                     f"level_{level}/weights.safetensors"):
            a, b = load_weights(tmp_path / "two" / path), load_weights(tmp_path / "one" / path)
            assert all(torch.equal(a[k], b[k]) for k in b), path
    assert _strip(json.loads((tmp_path / "two" / "results.json").read_text())) == _strip(
        json.loads((tmp_path / "one" / "results.json").read_text()))
