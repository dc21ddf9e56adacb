"""A mistake costs a second and a crash costs nothing: every bad option is one line and exit code 2 with nothing
written, a diverging loss stops cleanly, damaged files are named, a live run's folder is locked, and no file a user
hands in is unpickled."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lt_plugin.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]
FAST = ["--model", "test_resnet", "--dataset", "digits", "--image-size", "16", "--max-train-samples", "128",
        "--batch-size", "32", "--epochs", "1"]

# (command line, what the one line must say). Each runs before the run folder could get its first file.
BAD_OPTIONS = [
    *[(["imp", *FAST, *extra], said) for extra, said in [
        (["--model", "resnet_nope"], "unknown timm model"),
        (["--dataset", "/no/such/folder"], "/no/such/folder"),
        (["--image-size", "0"], "image"),
        (["--val-fraction", "1.5"], "val"),
        (["--max-train-samples", "0"], "max"),
        (["--model-kwargs", "[1, 2]"], "JSON object"),
        (["--model-kwargs", '{"no_such_arg": 1}'], "no_such_arg"),
        (["--levels", "-1"], "--levels"),
        (["--prune-fraction", "1.5"], "--prune-fraction"),
        (["--target-density", "0"], "--target-density"),
        (["--granularity", "block"], "granularity"),
        (["--scope", "tree"], "scope"),
        (["--importance", "taylorr"], "importance"),
        (["--ignore", "no.such.layer"], "no.such.layer"),
        (["--rewind", "3days"], "--rewind"),
        (["--rewind", "50ep"], "past the end of training"),
        (["--control", "shuffled"], "control"),
        (["--epochs", "0"], "--epochs"),
        (["--batch-size", "0"], "--batch-size"),
        (["--batch-size", "4096"], "--batch-size"),
        (["--eval-batch-size", "0"], "--eval-batch-size"),
        (["--lr", "-0.1"], "--lr"),
        (["--momentum", "1.5"], "--momentum"),
        (["--weight-decay", "-1"], "--weight-decay"),
        (["--opt", "sgdd"], "--opt"),
        (["--sched", "poly"], "--sched"),
        (["--decay-milestones", "0.75", "0.5"], "--decay-milestones"),
        (["--decay-rate", "0"], "--decay-rate"),
        (["--warmup-epochs", "5"], "--warmup-epochs"),
        (["--grad-accum-steps", "0"], "--grad-accum-steps"),
        (["--grad-accum-steps", "8"], "--grad-accum-steps"),
        (["--mixed-precision", "int4"], "mixed-precision"),
        (["--num-workers", "-1"], "--num-workers"),
        (["--seed", "-5"], "--seed"),
        (["--log-with", "tb"], "--log-with"),
        (["--epochs", "two"], "invalid int value"),
        (["--recipe", "cifar"], "unknown recipe"),
        (["--config", "/no/such/config.yaml"], "--config"),
        (["--pretrained-file", "/no/such/weights.pth"], "--pretrained-file"),
        (["--augment", "autoaugment"], "--augment"),
        (["--augment", "imagenet", "--augment-kwargs", "[1]"], "JSON object"),
        (["--granularity", "channel", "--round-to", "0"], "--round-to"),
        (["--round-to", "8"], "--granularity channel"),
        (["--sync-bn"], "--sync-bn"),
        (["--streaming", "--data-in-memory", "yes"], "--streaming"),
        (["--streaming", "--shuffle-buffer", "0"], "--shuffle-buffer"),
        (["--shuffle-buffer", "100"], "--shuffle-buffer applies with --streaming"),
        (["--control", "random-mask", "--levels", "x"], "invalid int value"),
    ]],
    *[(["early-bird", *FAST, *extra], said) for extra, said in [
        (["--ratios", "0.5", "1.0"], "--ratios"),
        (["--ratios"], "--ratios"),
        (["--ratios", "0.5", "0.5"], "twice"),
        (["--penalty", "-1e-4"], "--penalty"),
        (["--epsilon", "2"], "epsilon"),
        (["--window", "1"], "window"),
        (["--check-every", "-1"], "--check-every"),
        (["--search-epochs", "3"], "--search-epochs"),
        (["--score", "gamma"], "score"),
        (["--retrain", "rewind"], "retrain"),
        (["--search-precision", "int4"], "search-precision"),
        (["--model", "test_vit", "--score", "bn-scale"], "bn-scale needs BatchNorm"),
        (["--lr", "0"], "--lr"),
        (["--opt", "nope"], "--opt"),
        (["--ignore", "no.such.layer"], "no.such.layer"),
        (["--round-to", "-8"], "--round-to"),
        (["--baseline", "yes"], "unrecognized arguments"),
        (["--recipe", "eb-imagenet"], "unknown recipe"),
    ]],
]


@pytest.mark.parametrize("argv,said", BAD_OPTIONS, ids=[" ".join(a[0:1] + a[len(FAST) + 1:]) for a, _ in BAD_OPTIONS])
def test_every_bad_option_is_one_line_and_exit_2_with_nothing_written(argv, said, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lt-plugin"), err
    assert said in err, err
    assert "Traceback" not in err
    assert not out.exists()


def test_export_mistakes_are_one_line(tmp_path, capsys):
    for argv, said in ((["export", "--run", str(tmp_path / "none"), "--level", "1", "--out", "t"], "config.json"),
                       (["export", "--run", str(tmp_path), "--out", "t"], "--ticket"),
                       (["export", "--run", str(tmp_path), "--level", "1"], "config.json"),
                       (["export", "--level", "1", "--out", "t"], "--run"),
                       (["export", "--run", str(tmp_path), "--level", "1", "--format", "tflite", "--out", "t"],
                        "--format")):
        assert cli_main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and said in err, err


def test_the_real_command_prints_one_line(tmp_path):
    """The console script itself (not only main()): a bad flag and a bad value, one line each, exit 2."""
    for argv in (["imp", "--no-such-flag"], ["early-bird", "--window", "1", "--out", str(tmp_path / "x")]):
        done = subprocess.run([sys.executable, "-m", "lt_plugin.cli", *argv], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "x").exists()


def test_a_diverging_run_stops_with_one_line_and_a_new_folder_works(tmp_path, capsys):
    diverging = tmp_path / "diverging"
    assert cli_main(["imp", *FAST, "--levels", "0", "--lr", "1e30", "--out", str(diverging)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "NaN or infinite" in err and "learning rate" in err, err
    assert (diverging / "config.json").exists() and not (diverging / "level_0" / "result.json").exists()
    assert cli_main(["imp", *FAST, "--levels", "0", "--out", str(tmp_path / "fixed")]) == 0


def test_a_live_run_locks_its_folder_and_a_killed_one_does_not(tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from lt_plugin.run_folder import lock_run_folder; lock_run_folder(Path(sys.argv[1])); "
         "print('locked', flush=True); time.sleep(600)", str(out)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert holder.stdout.readline().strip() == "locked"
    argv = ["imp", *FAST, "--levels", "0", "--out", str(out)]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "being written by a live run" in err and f"pid {holder.pid}" in err, err
    assert not (out / "config.json").exists()
    assert cli_main(["imp", *FAST, "--levels", "0", "--out", str(tmp_path / "other")]) == 0  # side by side
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert cli_main(argv) == 0  # the lock died with its process


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("damaged") / "run"
    assert cli_main(["imp", *FAST, "--levels", "1", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("name", ["config.json", "level_1/result.json", "level_1/mask.safetensors",
                                  "level_1/weights.safetensors"])
def test_a_damaged_file_is_named_in_one_line(finished_run, name, tmp_path, capsys):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    path = run / name
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])  # truncated, as by a full disk
    if name.endswith(".json"):  # a rerun reads these
        argv = ["imp", *FAST, "--levels", "1", "--out", str(run)]
    else:  # a finished level's tensors are read again by export
        argv = ["export", "--run", str(run), "--level", "1", "--out", str(tmp_path / "t.safetensors")]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and "damaged" in err, err
    assert not (tmp_path / "t.safetensors").exists()


def test_a_damaged_checkpoint_is_named_in_one_line(tmp_path, capsys, kill_when):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "lt_plugin.cli", "imp", *FAST, "--epochs", "4", "--levels", "0",
               "--out", str(out)]
    checkpoint = out / "level_0" / "train" / "checkpoint.safetensors"
    kill_when(command, checkpoint, env={**os.environ, "PYTHONPATH": str(REPO)})
    checkpoint.write_bytes(b"\x00" * 20)
    assert cli_main(["imp", *FAST, "--epochs", "4", "--levels", "0", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(checkpoint) in err and "damaged" in err, err
    checkpoint.unlink()  # what the line says to do: the level restarts and finishes
    assert cli_main(["imp", *FAST, "--epochs", "4", "--levels", "0", "--out", str(out)]) == 0
    assert json.loads((out / "level_0" / "result.json").read_text())["steps"] > 0


class _Payload:
    """Unpickling this runs code: it would create the file `marker`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _pretrained_weights():
    from lt_plugin.experiment import Experiment
    model = Experiment(model="test_resnet", image_size=16).create_model(10, seed=123)
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_pretrained_file_gives_its_weights_and_a_new_classifier_when_the_classes_differ(tmp_path, suffix):
    import torch
    from safetensors.torch import save_file

    from lt_plugin.experiment import Experiment
    weights, path = _pretrained_weights(), tmp_path / f"weights{suffix}"
    torch.save(weights, path) if suffix == ".pth" else save_file(weights, path)
    experiment = Experiment(model="test_resnet", image_size=16, pretrained_file=str(path))
    same = experiment.create_model(10, seed=0).state_dict()
    assert all(torch.equal(same[name], weights[name]) for name in weights)
    other = experiment.create_model(7, seed=0).state_dict()  # 7 classes: the file's classifier cannot be used
    assert torch.equal(other["conv1.0.weight"], weights["conv1.0.weight"])
    assert other["fc.weight"].shape[0] == 7
    plain = experiment.create_model(10, seed=0, pretrained=False).state_dict()  # the random controls
    assert not torch.equal(plain["conv1.0.weight"], weights["conv1.0.weight"])


def test_imp_from_a_pretrained_file_rewinds_to_it(tmp_path, capsys):
    import torch
    from safetensors.torch import load_file, save_file

    weights, path = _pretrained_weights(), tmp_path / "weights.safetensors"
    save_file(weights, path)
    out = tmp_path / "run"
    assert cli_main(["imp", *FAST, "--levels", "1", "--pretrained-file", str(path), "--out", str(out)]) == 0
    init = load_file(out / "init.safetensors")
    assert all(torch.equal(init[name], weights[name]) for name in weights)
    assert json.loads((out / "config.json").read_text())["hparams"]["pretrained_file"] == str(path)


@pytest.mark.parametrize("name", ["weights.pth", "pytorch_model.bin", "checkpoint.pth.tar"])
def test_a_malicious_pickle_is_refused_and_its_payload_never_runs(tmp_path, capsys, name):
    import torch
    marker, path = tmp_path / "payload_ran", tmp_path / name
    torch.save({"conv1.0.weight": _Payload(marker)}, path)
    out = tmp_path / "run"
    assert cli_main(["imp", *FAST, "--pretrained-file", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refused" in err[0] and name in err[0], err
    assert not marker.exists() and not out.exists()
    torch.load(path, weights_only=False)  # the payload is live: an unsafe load runs it
    assert marker.exists()


def test_a_missing_pretrained_file_is_one_line(tmp_path, capsys):
    assert cli_main(["imp", *FAST, "--pretrained-file", str(tmp_path / "nope.pth"), "--out", str(tmp_path / "r")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def _error_table_rows():
    """The rows of the error table in docs/command-line.md ("Mistakes and faults"): (command, the line it prints)."""
    rows = []
    for line in (REPO / "docs" / "command-line.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("`lt-plugin ") and cells[1].startswith("`lt-plugin: error:"):
            rows.append((cells[0].split("`")[1], cells[1].strip("`")))
    return rows


@pytest.mark.parametrize("command, line", _error_table_rows())
def test_the_documented_error_table_is_what_the_command_prints(command, line, tmp_path, capsys, monkeypatch):
    import shlex
    monkeypatch.chdir(tmp_path)
    argv = shlex.split(command)[1:]
    if argv[0] != "export":
        argv += ["--out", "run"]
    assert cli_main(argv) == 2
    assert capsys.readouterr().err.strip() == line
    assert not (tmp_path / "run").exists()


def test_the_documented_error_table_is_there():
    assert len(_error_table_rows()) >= 15


@pytest.mark.slow
def test_a_diverging_two_process_run_ends_every_rank_with_the_same_line(tmp_path, two_processes):
    """The NaN check is collective: both ranks stop at the same step with the same line, and nothing hangs."""
    launcher, env = two_processes
    done = subprocess.run([*launcher, "imp", *FAST, "--levels", "0", "--lr", "1e30", "--out", str(tmp_path / "run")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.startswith("lt-plugin: error:")]
    assert len(lines) == 2 and lines[0] == lines[1] and "NaN or infinite" in lines[0], done.stderr
    assert "/lt_plugin/" not in done.stderr  # no traceback through the project's code (the launcher may print its own)


@pytest.mark.slow
def test_a_two_process_run_killed_mid_level_resumes_to_the_uninterrupted_result(tmp_path, kill_when, two_processes):
    """kill -9 of the launcher and both ranks in the middle of a level, rerun: the same weights as a 2-process run
    that was never interrupted."""
    launcher, env = two_processes
    flags = ["imp", *FAST, "--epochs", "3", "--levels", "1"]
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    kill_when([*launcher, *flags, "--out", str(killed)], killed / "level_1" / "train" / "checkpoint.safetensors",
              env=env)
    for out in (killed, straight):
        subprocess.run([*launcher, *flags, "--out", str(out)], env=env, check=True, capture_output=True, timeout=600)
    from lt_plugin.store import load_weights
    for level in (0, 1):
        a, b = (load_weights(out / f"level_{level}" / "weights.safetensors") for out in (killed, straight))
        assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a), level
