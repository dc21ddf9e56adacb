"""Deploying tickets: ONNX files that ONNX Runtime runs with the PyTorch ticket's outputs, channel counts rounded to
multiples of N, and latency measured in interleaved rounds."""

import json
import sys

import pytest
import torch
from torch import nn

from lt_plugin import UserError, export, load_ticket
from lt_plugin.cli import main as cli_main
from lt_plugin.deploy import export_onnx, interleaved_medians, latency_report, onnx_session
from lt_plugin.branches.export import load_run_ticket

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

FAST = ["--model", "test_resnet", "--dataset", "digits", "--image-size", "16", "--max-train-samples", "128",
        "--batch-size", "32", "--epochs", "1", "--levels", "1", "--target-density", "0.4"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    for granularity in ("channel", "weight"):
        assert cli_main(["imp", *FAST, "--granularity", granularity, "--out", str(root / granularity)]) == 0
    return root


def _onnx_outputs(path, inputs):
    session = onnx_session(path, torch.get_num_threads())
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: inputs.numpy()})[0])


def _conv_widths(path):
    model = onnx.load(str(path))
    initializers = {init.name: init for init in model.graph.initializer}
    return sorted(initializers[node.input[1]].dims[0] for node in model.graph.node
                  if node.op_type == "Conv" and node.input[1] in initializers)


def test_a_channel_ticket_exports_physically_small_and_onnx_runtime_gives_the_pytorch_outputs(runs, tmp_path,
                                                                                               capsys):
    out = tmp_path / "ticket.onnx"
    assert cli_main(["export", "--run", str(runs / "channel"), "--level", "1", "--out", str(out)]) == 0
    assert "max |difference|" in capsys.readouterr().out
    model, mask, experiment, _ = load_run_ticket(runs / "channel", "1")
    small = export(model, mask, experiment.example_inputs()).eval()
    for batch in (1, 7):  # the batch dimension is dynamic
        inputs = torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = small(inputs)
        assert torch.allclose(_onnx_outputs(out, inputs), expected, atol=1e-4, rtol=1e-4)
    widths = sorted(m.out_channels for m in small.modules() if isinstance(m, nn.Conv2d))
    assert _conv_widths(out) == widths and sum(widths) < sum(
        m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    meta = json.loads(props["lt_plugin"])
    assert meta["model"] == "test_resnet" and meta["granularity"] == "channel" and meta["ticket"] == "1"


def test_a_weight_ticket_exports_dense_with_its_zeros(runs, tmp_path):
    out = tmp_path / "weights.onnx"
    assert cli_main(["export", "--run", str(runs / "weight"), "--level", "1", "--format", "onnx",
                     "--out", str(out)]) == 0
    model, mask, _, _ = load_run_ticket(runs / "weight", "1")
    # Every convolution's weights carry the ticket's zeros exactly where its mask prunes (BatchNorm folded in scales
    # them, which keeps zeros zero and the kept weights not zero): the same patterns, convolution for convolution.
    graph = onnx.load(str(out)).graph
    initializers = {init.name: onnx.numpy_helper.to_array(init) for init in graph.initializer}
    exported = sorted((w.shape, (w == 0).tobytes()) for w in (initializers[node.input[1]] for node in graph.node
                                                              if node.op_type == "Conv"))
    convolutions = {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert convolutions <= set(mask.prunable)
    masked = sorted((tuple(keep.shape), (~keep).numpy().tobytes()) for name, keep in mask.tensors.items()
                    if name in convolutions)
    assert exported == masked and any((~mask.tensors[name]).any() for name in convolutions)
    assert _conv_widths(out) == sorted(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))


def test_outputs_beyond_the_tolerance_are_an_error_and_no_file(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()).eval()
    out = tmp_path / "m.onnx"
    with pytest.raises(UserError, match="differ from PyTorch"):
        export_onnx(model, torch.zeros(1, 3, 8, 8), out, tolerance=-1.0)
    assert list(tmp_path.iterdir()) == []
    assert export_onnx(model, torch.zeros(1, 3, 8, 8), out) < 1e-5 and out.exists()


def test_without_the_onnx_extra_the_command_says_what_to_install(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    out = tmp_path / "t.onnx"
    assert cli_main(["export", "--run", str(runs / "channel"), "--level", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'lt-plugin[onnx]'" in err, err
    assert not out.exists()


def test_benchmark_measures_ticket_and_dense_and_stores_the_figures(runs, tmp_path, capsys):
    out = tmp_path / "t.safetensors"
    assert cli_main(["export", "--run", str(runs / "channel"), "--level", "1", "--benchmark", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "interleaved rounds" in printed and "ticket" in printed
    latency = load_ticket(out).metadata["latency"]
    assert latency["ticket_macs"] < latency["dense_macs"] and latency["ticket_params"] < latency["dense_params"]
    assert all(latency[f"torch_{m}_seconds_batch_{b}"] > 0 for m in ("ticket", "dense") for b in (1, 64))


def test_latency_report_times_onnx_files_beside_pytorch(tmp_path):
    dense = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten()).eval()
    ticket = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten()).eval()
    example = torch.zeros(1, 3, 8, 8)
    files = {"ticket": tmp_path / "t.onnx", "dense": tmp_path / "d.onnx"}
    export_onnx(ticket, example, files["ticket"])
    export_onnx(dense, example, files["dense"])
    report = latency_report(ticket, dense, example, batches=(1, 4), onnx_files=files, rounds=3, warmup=1)
    assert {f"onnx_{m}_seconds_batch_{b}" for m in files for b in (1, 4)} <= set(report)
    assert report["ticket_macs"] * 2 == report["dense_macs"]


def test_rounds_are_interleaved_and_warm_up_is_not_timed():
    calls = []
    medians = interleaved_medians({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3,
                                  warmup=2)
    assert calls == ["a", "b"] * 5 and set(medians) == {"a", "b"}


def test_round_to_reaches_channel_imp_runs_and_their_exports(tmp_path):
    out = tmp_path / "rounded"
    assert cli_main(["imp", *FAST, "--granularity", "channel", "--round-to", "8", "--out", str(out)]) == 0
    model, mask, experiment, _ = load_run_ticket(out, "1")
    small = export(model, mask, experiment.example_inputs())
    dense = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    pruned = {n: m.out_channels for n, m in small.named_modules()
              if isinstance(m, nn.Conv2d) and m.out_channels != dense[n]}
    assert pruned and all(w % 8 == 0 for w in pruned.values()), pruned


def test_round_to_is_for_channel_tickets(tmp_path, capsys):
    assert cli_main(["imp", *FAST, "--round-to", "8", "--out", str(tmp_path / "r")]) == 2
    assert "--granularity channel" in capsys.readouterr().err


def test_runs_record_a_forward_latency_where_the_model_differs_from_dense(runs):
    channel = json.loads((runs / "channel" / "results.json").read_text())
    assert all(r["latency_ms"] > 0 for r in channel), channel  # the dense level, then physically smaller tickets
    weight = json.loads((runs / "weight" / "results.json").read_text())
    # A weight ticket runs the dense model: only the dense level has a latency of its own.
    assert weight[0]["latency_ms"] > 0 and all(r["latency_ms"] is None for r in weight[1:]), weight


def test_a_registered_export_format_is_what_lt_plugin_export_writes_for_its_suffix(runs, tmp_path, monkeypatch):
    from lt_plugin.tickets import EXPORT_FORMATS, ExportFormat
    jobs = []

    def write(job, path):
        jobs.append(job)
        torch.save(job.ticket.state_dict(), path)  # a test's own format: what the writer is handed is the ticket

    monkeypatch.setitem(EXPORT_FORMATS, "state-dict", ExportFormat(".pt", write, "torch.save of the ticket's weights"))
    assert cli_main(["export", "--run", str(runs / "channel"), "--level", "1", "--out", str(tmp_path / "t.pt")]) == 0
    (job,) = jobs
    dense_params = sum(p.numel() for p in job.dense_masked.parameters())
    assert job.mask.granularity == "channel" and sum(p.numel() for p in job.ticket.parameters()) < dense_params
    assert (tmp_path / "t.pt").exists() and job.metadata["ticket"] == "1"
