"""Pruning at initialisation and the gradual magnitude schedule, each against a computation by hand."""

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import lt_plugin  # noqa: F401  (registers lenet_300_100)
from lt_plugin.errors import UserError
from lt_plugin.masks import Mask
from lt_plugin.pai import (CRITERIA, GRASP_TEMPERATURE, gradual_density, grasp_scores, mask_from_scores,
                           prune_at_init, snip_scores, synflow_scores)


def _batches(shape, classes, n=2, size=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn((size, *shape), generator=g), torch.randint(classes, (size,), generator=g))
            for _ in range(n)]


def _mlp(*widths, bias=True, act=nn.ReLU, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers += [nn.Linear(a, b, bias=bias)] + ([act()] if i < len(widths) - 2 else [])
    return nn.Sequential(*layers).to(dtype)


# ---- SNIP ----

def test_snip_scores_are_abs_gradient_times_weight_by_hand():
    model = _mlp(4, 5, 3)
    batches = _batches((4,), 3)
    (w1, b1), (w2, b2) = (model[0].weight, model[0].bias), (model[2].weight, model[2].bias)
    g1, g2 = torch.zeros_like(w1), torch.zeros_like(w2)
    with torch.no_grad():  # back-propagation by hand, summed over the batches
        for x, y in batches:
            h = x @ w1.T + b1
            a = h.clamp(min=0)
            z = a @ w2.T + b2
            dz = (z.softmax(1) - F.one_hot(y, 3)) / len(x)
            g2 += dz.T @ a
            g1 += ((dz @ w2) * (h > 0)).T @ x
    scores = snip_scores(model, batches, ["0.weight", "2.weight"])
    torch.testing.assert_close(scores["0.weight"], (g1 * w1).abs().double(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(scores["2.weight"], (g2 * w2).abs().double(), rtol=1e-5, atol=1e-7)
    assert all(p.grad is None for p in model.parameters())


# ---- GraSP ----

def test_grasp_scores_are_minus_weight_times_hessian_gradient_product():
    model = _mlp(3, 4, 2, act=nn.Tanh, dtype=torch.float64)
    batches = [(x.double(), y) for x, y in _batches((3,), 2)]
    b1, b2 = model[0].bias.detach(), model[2].bias.detach()

    def loss(w1, w2):  # the same network, written out, summed over the batches, logits over the temperature
        return sum(F.cross_entropy(torch.tanh(x @ w1.T + b1) @ w2.T / GRASP_TEMPERATURE + b2 / GRASP_TEMPERATURE, y)
                   for x, y in batches)

    w = (model[0].weight.detach().clone(), model[2].weight.detach().clone())
    g = torch.autograd.grad(loss(*(t.requires_grad_() for t in w)), w)
    _, hg = torch.autograd.functional.hvp(loss, w, g)
    scores = grasp_scores(model, batches, ["0.weight", "2.weight"])
    torch.testing.assert_close(scores["0.weight"], -w[0].detach() * hg[0], rtol=1e-9, atol=1e-18)
    torch.testing.assert_close(scores["2.weight"], -w[1].detach() * hg[1], rtol=1e-9, atol=1e-18)
    assert scores["0.weight"].abs().max() > 0

    # GraSP removes the largest scores: prune_at_init keeps the smallest
    mask = prune_at_init(model, batches, "grasp", 0.25)
    flat = torch.cat([scores[n].flatten() for n in mask.prunable])
    kept = torch.cat([mask.tensors[n].flatten() for n in mask.prunable])
    assert flat[kept].max() < flat[~kept].min()


# ---- SynFlow ----

def test_synflow_conserves_the_score_sum_per_layer_and_needs_no_data():
    model = _mlp(5, 8, 6, 3, bias=False)
    names = ["0.weight", "2.weight", "4.weight"]
    scores = synflow_scores(model, torch.empty(7, 5), names)
    w = [model[i].weight.detach().double().abs() for i in (0, 2, 4)]
    r = (w[2] @ w[1] @ w[0]).sum()  # R = 1^T |W3| |W2| |W1| 1
    for n in names:  # the pass runs in float32
        assert scores[n].sum().item() == pytest.approx(r.item(), rel=1e-5)
    torch.testing.assert_close(scores["4.weight"], w[2] * (w[1] @ w[0]).sum(1), rtol=1e-5, atol=0)

    mask = prune_at_init(model, None, "synflow", 0.3, example_inputs=torch.empty(7, 5), iterations=4)
    assert sum(int(mask.tensors[n].sum()) for n in names) == 106 - int(0.7 * 106)  # Synaptic-Flow's count


def test_synflow_goes_to_double_precision_where_float32_overflows():
    model = _mlp(4, 4, 4, 4, 4, 4, 4, bias=False)
    names = [f"{i}.weight" for i in range(0, 12, 2)]
    with torch.no_grad():
        for n in names:
            model.get_parameter(n).fill_(1e8)  # R = 4 * (4 * 1e8)^6 = 1.6e52, past float32's 3.4e38
    scores = synflow_scores(model, torch.empty(1, 4), names)
    r = 4.0 * (4 * 1e8) ** 6
    for n in names:
        assert bool(torch.isfinite(scores[n]).all())
        assert scores[n].sum().item() == pytest.approx(r, rel=1e-9)


def _reference_synflow_loop(model, example, density, iterations, scope, names, own=None):
    """Synaptic-Flow's prune_loop with its SynFlow pruner (model.eval(); every state entry made positive, the model
    in double precision; masked weights; score |dR/dw * w|; k = int((1 - d) * n) pruned: every score <= the k-th
    smallest), written out on a copy. `own` {name: final density}: those layers thresholded on their own at
    d^(round / rounds) in each round, from the same scores (per-layer quotas inside the rounds)."""
    own = own or {}
    model = copy.deepcopy(model).double().eval()
    params = dict(model.named_parameters())
    masks = {n: torch.ones_like(params[n]) for n in names}
    signs = {n: torch.sign(t) for n, t in model.state_dict().items()}
    rest = [n for n in names if n not in own]
    for k in range(1, iterations + 1):
        with torch.no_grad():
            for t in model.state_dict().values():
                t.abs_()
            for n in names:
                params[n].mul_(masks[n])
        model.zero_grad()
        model(torch.ones((1, *example.shape[1:]), dtype=torch.float64)).sum().backward()
        scores = {n: (params[n].grad * params[n]).detach().abs() for n in names}
        with torch.no_grad():
            for n, t in model.state_dict().items():
                t.mul_(signs[n])
        groups = [(rest, density)] if scope == "global" else [([n], density) for n in rest]
        groups += [([n], d) for n, d in own.items()]
        for group, final in groups:
            flat = torch.cat([scores[n].flatten() for n in group])
            pruned = int((1.0 - final ** (k / iterations)) * flat.numel())
            if pruned < 1:
                continue
            threshold = torch.kthvalue(flat, pruned).values
            for n in group:
                masks[n] = (scores[n] > threshold).double()
    return {n: m.bool() for n, m in masks.items()}


def _synflow_network():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 20), nn.BatchNorm1d(20), nn.ReLU(), nn.Linear(20, 16), nn.ReLU(),
                          nn.Linear(16, 4))
    return model, ["0.weight", "3.weight", "5.weight"], torch.randn(3, 10)


@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_synflow_rounds_match_the_reference_loop(scope):
    model, names, example = _synflow_network()
    expected = _reference_synflow_loop(model, example, 0.1, 12, scope, names)
    mask = prune_at_init(model, None, "synflow", 0.1, prunable=names, scope=scope, iterations=12,
                         example_inputs=example)
    for n in names:
        assert torch.equal(mask.tensors[n], expected[n]), n


def test_synflow_with_a_layer_on_its_own_rate_is_one_scoring_with_per_layer_quotas():
    """A layer on its own rate takes its quota in every round from the scores of the network as masked so far: not
    from a separate loop over that layer with the rest unmasked (which moves many of the kept weights)."""
    model, names, example = _synflow_network()
    own = {"5.weight": 0.5}
    expected = _reference_synflow_loop(model, example, 0.1, 12, "global", names, own)
    mask = prune_at_init(model, None, "synflow", 0.1, prunable=names, iterations=12, example_inputs=example,
                         layer_densities=own)
    for n in names:
        assert torch.equal(mask.tensors[n], expected[n]), n
    assert int(mask.tensors["5.weight"].sum()) == 64 - int((1 - 0.5) * 64)
    assert sum(int(mask.tensors[n].sum()) for n in names[:2]) == 520 - int(0.9 * 520)
    separate = prune_at_init(model, None, "synflow", 0.1, prunable=names[:2], iterations=12, example_inputs=example)
    assert any(not torch.equal(separate.tensors[n], mask.tensors[n]) for n in names[:2])


def test_random_masks_with_a_layer_on_its_own_rate_draw_from_one_stream():
    model, names, _ = _synflow_network()
    joint = prune_at_init(model, None, "random", 0.3, prunable=names, seed=4, layer_densities={"5.weight": 0.5})
    generator = torch.Generator().manual_seed(4)  # one stream, tensor by tensor in the order of the names
    draws = {n: torch.rand(model.get_parameter(n).shape, generator=generator, dtype=torch.float64) for n in names}
    for group, d in ((names[:2], 0.3), (names[2:], 0.5)):
        flat = torch.cat([draws[n].flatten() for n in group])
        kept = flat.numel() - int((1 - d) * flat.numel())
        threshold = flat.sort(descending=True).values[kept - 1]
        for n in group:
            assert torch.equal(joint.tensors[n], draws[n] >= threshold), n


def test_synflow_default_is_one_hundred_rounds(monkeypatch):
    import lt_plugin.pai as pai
    densities = []
    real = pai.mask_from_scores
    monkeypatch.setattr(pai, "mask_from_scores", lambda s, d, *a, **k: densities.append(d) or real(s, d, *a, **k))
    model = _mlp(4, 6, 3)
    pai.prune_at_init(model, _batches((4,), 3), "synflow", 0.2)  # the input shape from the first batch
    assert len(densities) == 100
    assert densities[0] == pytest.approx(0.2 ** 0.01) and densities[-1] == 0.2


# ---- masks: exact counts, classifier untouched, model untouched ----

@pytest.mark.parametrize("criterion", CRITERIA)
def test_every_criterion_keeps_the_exact_count_and_not_the_classifier(criterion):
    model = timm.create_model("lenet_300_100", num_classes=10)
    batches = _batches((1, 28, 28), 10)
    sizes = {"fc_layers.0.weight": 784 * 300, "fc_layers.1.weight": 300 * 100}
    # Synaptic-Flow's count: int((1 - d) * n) pruned. 0.963 * 265,200 = 255,387.6 pruned -> 255,387, 9,813 kept; per
    # layer 226,497.6 -> 8,703 kept of 235,200 and 28,890 -> 1,110 kept of 30,000.
    d = 0.037
    glob = prune_at_init(model, batches, criterion, d, iterations=3 if criterion == "synflow" else None)
    assert glob.prunable == list(sizes) and "fc.weight" not in glob.tensors
    assert sum(int(glob.tensors[n].sum()) for n in sizes) == 9813
    local = prune_at_init(model, batches, criterion, d, scope="layerwise",
                          iterations=3 if criterion == "synflow" else None)
    assert [int(local.tensors[n].sum()) for n in sizes] == [8703, 1110]


@pytest.mark.parametrize("criterion", CRITERIA)
def test_prune_at_init_leaves_the_model_as_it_was(criterion):
    model = timm.create_model("test_resnet", num_classes=10)
    model.train()
    model.layer1.eval()  # a mixed mode, to be restored module by module
    model.conv1[0].weight.requires_grad_(False)  # frozen weights are scored too
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    batches = _batches((3, 32, 32), 10, n=1, size=4)
    mask = prune_at_init(model, batches, criterion, 0.2, iterations=2 if criterion == "synflow" else None)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    head = [n for n, m in model.named_modules() if m is model.get_classifier()][0]
    assert f"{head}.weight" not in mask.prunable
    assert mask.density == pytest.approx(0.2, abs=1e-5)


def test_magnitude_and_random_scores():
    model = _mlp(4, 5, 3)
    m = prune_at_init(model, None, "magnitude", 0.5, scope="layerwise")
    w = model[0].weight.detach().abs()
    assert w[m.tensors["0.weight"]].min() > w[~m.tensors["0.weight"]].max()
    a, b = (prune_at_init(model, None, "random", 0.5, seed=s) for s in (1, 1))
    c = prune_at_init(model, None, "random", 0.5, seed=2)
    assert a.distance(b) == 0 and a.distance(c) > 0


def test_mask_from_scores_breaks_ties_by_index_and_keeps_pruned_pruned():
    scores = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}
    m = mask_from_scores(scores, 0.4, "global")  # 4 of 10, the first four by index
    assert m.tensors["a"].flatten().tolist() == [True] * 4 + [False] * 2 and not m.tensors["b"].any()
    m = mask_from_scores(scores, 0.5, "layerwise")
    assert m.tensors["a"].flatten().tolist() == [True] * 3 + [False] * 3
    assert m.tensors["b"].tolist() == [True, True, False, False]

    scores = {"a": torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])}
    previous = Mask({"a": torch.tensor([False, True, True, False, True, True])}, ["a"])
    m = mask_from_scores(scores, 0.5, "global", previous=previous)  # 3 kept; 5.0 and 2.0 were pruned
    assert m.tensors["a"].tolist() == [False, True, True, False, True, False]
    with pytest.raises(ValueError):
        mask_from_scores(scores, 5 / 6, "global", previous=previous)
    with pytest.raises(UserError):
        mask_from_scores(scores, 0.5, "channel")


# ---- gradual magnitude pruning ----

def test_gradual_density_is_the_cubic_of_zhu_and_gupta():
    kw = dict(start_step=100, end_step=1000, frequency=100, final_density=0.1)
    assert gradual_density(0, **kw) == 1.0 and gradual_density(100, **kw) == 1.0 and gradual_density(199, **kw) == 1.0
    # step 250 -> last pruning step 200: s = 0.9 + (0 - 0.9) * (1 - 100/900)^3 = 0.9 - 0.9 * 512/729
    assert gradual_density(250, **kw) == pytest.approx(1 - (0.9 - 0.9 * 512 / 729), abs=1e-15)
    assert gradual_density(999, **kw) == pytest.approx(0.1 + 0.9 / 729, abs=1e-15)  # step 900: (1/9)^3
    assert gradual_density(1000, **kw) == 0.1 and gradual_density(5000, **kw) == 0.1
    assert gradual_density(550, initial_density=0.8, **kw) == pytest.approx(0.1 + 0.7 * (5 / 9) ** 3, abs=1e-15)
    densities = [gradual_density(t, **kw) for t in range(0, 1200, 7)]
    assert all(a >= b for a, b in zip(densities, densities[1:]))
    with pytest.raises(UserError):
        gradual_density(0, 100, 950, 100, 0.1)  # 850 is no multiple of 100


def test_layer_shuffles_tell_methods_apart_only_where_they_choose_their_layer_counts():
    """Frankle et al. 2021's layer-shuffle test compares a mask with its layer counts at random positions. With one
    global ranking each criterion chooses its own counts, so two criteria's shuffles differ; layer-wise, every
    criterion keeps the same count per layer and their shuffles are the same random mask: a test that cannot fail."""
    from lt_plugin.branches.controls import shuffled_like
    model, batches = _mlp(20, 30, 20, 5), _batches((20,), 5)

    def counts(mask):
        return [int(mask.tensors[n].sum()) for n in mask.prunable]

    for scope in ("global", "layerwise"):
        snip = prune_at_init(model, batches, "snip", 0.3, scope=scope)
        magnitude = prune_at_init(model, None, "magnitude", 0.3, scope=scope)
        a, b = shuffled_like(snip, 7), shuffled_like(magnitude, 7)
        assert counts(a) == counts(snip) and counts(b) == counts(magnitude)
        if scope == "global":
            assert counts(snip) != counts(magnitude)
            assert all(not torch.equal(a.tensors[n], b.tensors[n])
                       for n, p, q in zip(snip.prunable, counts(snip), counts(magnitude)) if p != q)
        else:
            assert all(torch.equal(a.tensors[n], b.tensors[n]) for n in snip.prunable)
