"""Each fix's applier (`diagnose.fixes.apply_fix`), on eager and exported models.

The transformations are checked by direct evaluation against models rebuilt by hand (the same
weights with ReLU, a BatchNorm placed by hand...) and through the probes' records; the user's
module is compared before and after by state dict and object identity.
"""

from __future__ import annotations

import copy
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import probes
from diagnose.evidence import LossTrace
from diagnose.fixes import FixNotApplicable, apply_fix
from diagnose.fixes.optimization import ADAM_LR, DEFAULT_CLIP_NORM, measured_clip_norm
from diagnose.loading import load_model
from diagnose.loading.inputs import make_batch
from diagnose.run import Workload

IN, HIDDEN, OUT, BATCH = 8, 16, 4, 32


def _workload(x: torch.Tensor, *, steps: int = 20, optimizer: str = "sgd", lr: float = 0.01) -> Workload:
    batch = make_batch((x,), {}, targets=None, origin="given", synthetic=False, device="cpu")
    return Workload(batch=batch, loss="auto", steps=steps, optimizer=optimizer, lr=lr, seed=0,
                    device=torch.device("cpu"))


def _records(model: nn.Module, x: torch.Tensor):
    with probes.attach(model) as session:
        model(x).sum().backward()
    return session.collect()


def _snapshot(model: nn.Module) -> tuple[dict, dict]:
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            {name: id(m) for name, m in model.named_modules()})


def _assert_unchanged(model: nn.Module, snapshot: tuple[dict, dict]) -> None:
    state, ids = snapshot
    now = model.state_dict()
    assert now.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(now[key], value), key
    assert {name: id(m) for name, m in model.named_modules()} == ids


class ModuleSigmoidMLP(nn.Module):
    """Sigmoid modules between layers, and a sigmoid module on the output (kept by every swap)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(IN, HIDDEN), nn.Sigmoid(), nn.Linear(HIDDEN, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, OUT),
        )
        self.head = nn.Sigmoid()

    def forward(self, x):
        return self.head(self.net(x))


class FunctionalSigmoidMLP(nn.Module):
    """Every activation called as a function, in four spellings, and a functional output sigmoid."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(IN, HIDDEN)
        self.fc2 = nn.Linear(HIDDEN, HIDDEN)
        self.fc3 = nn.Linear(HIDDEN, HIDDEN)
        self.fc4 = nn.Linear(HIDDEN, HIDDEN)
        self.out = nn.Linear(HIDDEN, OUT)

    def forward(self, x):
        x = torch.sigmoid(self.fc1(x))
        x = F.sigmoid(self.fc2(x))
        x = self.fc3(x).tanh()
        x = self.fc4(x).sigmoid_()
        return torch.sigmoid(self.out(x))


def _relu_reference(model: FunctionalSigmoidMLP, x: torch.Tensor) -> torch.Tensor:
    """The functional model by hand, with ReLU in the hidden layers and its output sigmoid kept."""
    h = x
    for layer in (model.fc1, model.fc2, model.fc3, model.fc4):
        h = F.relu(layer(h))
    return torch.sigmoid(model.out(h))


@pytest.fixture()
def x() -> torch.Tensor:
    return torch.randn(BATCH, IN, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def exported_path(tmp_path_factory) -> str:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("export") / "functional.pt2"
    model = _MixedModel()
    torch.export.save(torch.export.export(model, (torch.randn(BATCH, IN),)), str(path))
    return str(path)


class _MixedModel(nn.Module):
    """Module activations in a Sequential and a functional one, exported and unflattened in tests."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(IN, HIDDEN), nn.Sigmoid(), nn.Linear(HIDDEN, HIDDEN))
        self.out = nn.Linear(HIDDEN, OUT)

    def forward(self, x):
        return self.out(torch.sigmoid(self.net(x)))


# ---------------------------------------------------------------------------------------------
# Initialisation


@pytest.mark.parametrize(("fix_id", "expected_std"), [
    ("he-init", lambda fan_in, fan_out: math.sqrt(2.0 / fan_in)),
    ("glorot-init", lambda fan_in, fan_out: math.sqrt(2.0 / (fan_in + fan_out))),
    ("lecun-init", lambda fan_in, fan_out: math.sqrt(1.0 / fan_in)),
])
def test_init_schemes_redraw_every_weighted_layer_and_leave_the_original(fix_id, expected_std, x):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(IN, 256), nn.Tanh(), nn.Linear(256, 256), nn.Tanh(), nn.Linear(256, OUT))
    before = _snapshot(model)
    trial = apply_fix(fix_id, model, _workload(x), _records(model, x))
    _assert_unchanged(model, before)
    assert trial.module is not model
    for index in (0, 2, 4):
        layer = trial.module[index]
        fan_out, fan_in = layer.weight.shape
        assert layer.weight.std().item() == pytest.approx(expected_std(fan_in, fan_out), rel=0.15)
        assert torch.count_nonzero(layer.bias) == 0
    assert [type(m) for m in trial.module] == [type(m) for m in model]  # activations untouched


def test_init_is_reproducible_and_leaves_the_global_rng_alone(x):
    model = nn.Sequential(nn.Linear(IN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, OUT))
    layers = _records(model, x)
    state = torch.random.get_rng_state()
    first = apply_fix("he-init", model, _workload(x), layers).module
    second = apply_fix("he-init", model, _workload(x), layers).module
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(first[0].weight, second[0].weight)


def test_fix_bias_init_zeroes_biases_and_keeps_weights(x):
    model = nn.Sequential(nn.Linear(IN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, OUT))
    with torch.no_grad():
        model[0].bias.fill_(-3.0)
    before = _snapshot(model)
    fixed = apply_fix("fix-bias-init", model, _workload(x), _records(model, x)).module
    _assert_unchanged(model, before)
    assert torch.count_nonzero(fixed[0].bias) == 0 and torch.count_nonzero(fixed[2].bias) == 0
    assert torch.equal(fixed[0].weight, model[0].weight)


# ---------------------------------------------------------------------------------------------
# Activation swaps


def test_relu_swaps_hidden_activation_modules_but_not_the_output_one(x):
    torch.manual_seed(0)
    model = ModuleSigmoidMLP()
    before = _snapshot(model)
    trial = apply_fix("relu", model, _workload(x), _records(model, x))
    _assert_unchanged(model, before)
    fixed = trial.module
    assert isinstance(fixed.net[1], nn.ReLU) and isinstance(fixed.net[3], nn.ReLU)
    assert isinstance(fixed.head, nn.Sigmoid)
    with torch.no_grad():
        expected = torch.sigmoid(fixed.net[4](F.relu(fixed.net[2](F.relu(fixed.net[0](x))))))
        assert torch.allclose(fixed(x), expected)
    kinds = {r.name: r.activation_kind for r in _records(copy.deepcopy(fixed), x) if r.kind == "activation"}
    assert kinds == {"net.1": "relu", "net.3": "relu", "head": "sigmoid"}


def test_relu_swaps_functional_activations_in_every_spelling(x):
    torch.manual_seed(0)
    model = FunctionalSigmoidMLP()
    before = _snapshot(model)
    reference = model(x).detach()
    trial = apply_fix("relu", model, _workload(x), _records(model, x))
    _assert_unchanged(model, before)
    assert torch.equal(model(x), reference)  # the mode is only active inside the fixed copy
    fixed = trial.module
    with torch.no_grad():
        assert torch.allclose(fixed(x), _relu_reference(fixed, x))
    records = _records(fixed, x)
    hidden = [r.activation_kind for r in records if r.kind == "activation"]
    assert hidden == ["relu", "relu", "relu", "relu", "sigmoid"]
    # He init comes with the swap, for every weighted layer.
    assert fixed.fc2.weight.std().item() == pytest.approx(math.sqrt(2.0 / HIDDEN), rel=0.25)


def test_swapped_calls_are_probed_as_the_new_activation_in_nested_blocks(x):
    """The probes must see the substituted function (relu), not the one the code names (sigmoid):
    the swap mode has to sit above the probes' own mode while a block calls its activation."""

    class Block(nn.Module):
        def __init__(self, fan_in: int, fan_out: int) -> None:
            super().__init__()
            self.fc = nn.Linear(fan_in, fan_out)

        def forward(self, t):
            return torch.sigmoid(self.fc(t))

    torch.manual_seed(0)
    model = nn.Sequential(Block(IN, HIDDEN), Block(HIDDEN, HIDDEN), nn.Linear(HIDDEN, OUT))
    fixed = apply_fix("relu", model, _workload(x), _records(model, x)).module
    activations = [r for r in _records(fixed, x) if r.kind == "activation"]
    assert [(r.name, r.activation_kind) for r in activations] == [("0.relu()", "relu"), ("1.relu()", "relu")]
    assert all(r.activation.saturated_fraction is None and r.activation.dead_fraction is not None for r in activations)


def test_swap_survives_a_deep_copy(x):
    """The run deep-copies the model it is given: the copy must still run the swapped activations."""
    torch.manual_seed(0)
    model = FunctionalSigmoidMLP()
    fixed = apply_fix("relu", model, _workload(x), _records(model, x)).module
    clone = copy.deepcopy(fixed)
    with torch.no_grad():
        assert torch.equal(clone(x), fixed(x))
        assert torch.allclose(clone(x), _relu_reference(clone, x))


@pytest.mark.parametrize(("fix_id", "function", "module_type"), [
    ("leaky-relu", lambda t: F.leaky_relu(t, 0.01), nn.LeakyReLU),
    ("elu", F.elu, nn.ELU),
    ("selu", F.selu, nn.SELU),
])
def test_other_swaps_replace_relu_modules_and_calls(fix_id, function, module_type, x):
    torch.manual_seed(0)

    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(IN, HIDDEN)
            self.act = nn.ReLU()
            self.b = nn.Linear(HIDDEN, HIDDEN)
            self.c = nn.Linear(HIDDEN, OUT)

        def forward(self, t):
            return self.c(F.relu(self.b(self.act(self.a(t)))))

    model = Mixed()
    fixed = apply_fix(fix_id, model, _workload(x), _records(model, x)).module
    assert isinstance(fixed.act, module_type)
    with torch.no_grad():
        assert torch.allclose(fixed(x), fixed.c(function(fixed.b(function(fixed.a(x))))), atol=1e-6)


def test_relu_on_a_relu_model_is_not_applicable(x):
    model = nn.Sequential(nn.Linear(IN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, OUT))
    with pytest.raises(FixNotApplicable, match="no hidden"):
        apply_fix("relu", model, _workload(x), _records(model, x))


def test_relu_swap_on_an_unflattened_export(exported_path, x):
    model = load_model(exported_path).module
    assert type(model.get_submodule("net.1")).__name__ == "InterpreterModule"
    before = _snapshot(model)
    reference = model(x).detach()
    fixed = apply_fix("relu", model, _workload(x), _records(model, x)).module
    _assert_unchanged(model, before)
    assert torch.equal(model(x), reference)
    net = fixed.get_submodule
    assert isinstance(net("net.1"), nn.ReLU)  # the activation module, rebuilt by name
    with torch.no_grad():
        hidden = F.relu(net("net.2")(F.relu(net("net.0")(x))))  # aten.sigmoid in the root graph swapped too
        assert torch.allclose(fixed(x), fixed.out(hidden))
    kinds = [r.activation_kind for r in _records(copy.deepcopy(fixed), x) if r.kind == "activation"]
    assert kinds == ["relu", "relu"]


# ---------------------------------------------------------------------------------------------
# Batch normalisation


def test_batch_norm_goes_between_each_hidden_layer_and_its_activation(x):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(IN, HIDDEN), nn.Sigmoid(), nn.Linear(HIDDEN, HIDDEN), nn.Sigmoid(),
                          nn.Linear(HIDDEN, OUT))
    before = _snapshot(model)
    fixed = apply_fix("batch-norm", model, _workload(x), _records(model, x)).module
    _assert_unchanged(model, before)
    for index in (0, 2):
        assert isinstance(fixed[index], nn.Sequential)
        assert isinstance(fixed[index][1], nn.BatchNorm1d) and fixed[index][1].num_features == HIDDEN
        assert torch.equal(fixed[index][0].weight, model[index].weight)
    assert isinstance(fixed[4], nn.Linear)  # the output layer: normalising logits is not the fix
    fixed.train()
    with torch.no_grad():
        h = fixed[0](x)
        assert h.mean(0).abs().max() < 1e-5 and (h.std(0, correction=0) - 1).abs().max() < 1e-3


def test_batch_norm_for_a_cnn_is_2d(x):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 6 * 6, OUT))
    images = torch.randn(BATCH, 3, 6, 6)
    fixed = apply_fix("batch-norm", model, _workload(images), _records(model, images)).module
    assert isinstance(fixed[0][1], nn.BatchNorm2d) and isinstance(fixed[2][1], nn.BatchNorm2d)
    assert fixed(images).shape == (BATCH, OUT)


def test_batch_norm_on_an_export_rebuilds_eager_layers_sharing_the_weights(tmp_path, x):
    torch.manual_seed(0)

    class Conv(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.fc = nn.Linear(8 * 3 * 3, HIDDEN)
            self.out = nn.Linear(HIDDEN, OUT)

        def forward(self, t):
            h = torch.tanh(self.conv(t)).flatten(1)
            return self.out(F.relu(self.fc(h)))

    images = torch.randn(BATCH, 3, 6, 6)
    path = tmp_path / "conv.pt2"
    torch.export.save(torch.export.export(Conv(), (images,)), str(path))
    model = load_model(str(path)).module
    before = _snapshot(model)
    fixed = apply_fix("batch-norm", model, _workload(images), _records(model, images)).module
    _assert_unchanged(model, before)
    conv, norm = fixed.conv
    assert isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d)
    assert (conv.stride, conv.padding) == ((2, 2), (1, 1))
    with torch.no_grad():
        assert torch.allclose(conv(images), model.conv(images))
    assert isinstance(fixed.fc[0], nn.Linear) and isinstance(fixed.fc[1], nn.BatchNorm1d)
    assert type(fixed.out).__name__ == "InterpreterModule"  # the output layer is left alone
    records = _records(copy.deepcopy(fixed), images)
    assert [r.type for r in records if r.kind in ("linear", "conv", "norm")] == [
        "Conv2d", "BatchNorm2d", "Linear", "BatchNorm1d", "Linear"
    ]


# ---------------------------------------------------------------------------------------------
# Run settings and inputs


# lower-lr, higher-lr and lr-warmup take their rate from an LR range test: tests/test_lr_find.py
@pytest.mark.parametrize(("fix_id", "field", "expected"), [
    ("gradient-clipping", "clip_grad_norm", DEFAULT_CLIP_NORM),  # no run given: nothing measured
])
def test_workload_fixes_change_only_the_run(fix_id, field, expected, x):
    model = nn.Sequential(nn.Linear(IN, OUT))
    workload = _workload(x)
    trial = apply_fix(fix_id, model, workload, _records(model, x))
    assert trial.module is model  # nothing to change in the model: it is copied by the run itself
    assert getattr(trial.workload, field) == pytest.approx(expected)
    assert getattr(workload, field) != getattr(trial.workload, field)


@pytest.mark.parametrize(("before", "lr"), [("adagrad", 0.01), ("sgd", 0.05), ("adam", 1e-3), ("rmsprop", 1e-3)])
def test_change_optimizer_verifies_the_candidate_that_trains_best_and_proposes_it(before, lr, x):
    from diagnose.fixes import FIXES, FixTarget
    from diagnose.fixes.optimization import optimizer_candidates, optimizer_line
    from diagnose.run import measure

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(IN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, OUT))
    workload = _workload(x, optimizer=before, lr=lr)
    trial = apply_fix("change-optimizer", model, workload, _records(model, x))
    candidates = optimizer_candidates(before, lr)
    assert before not in [name for name, _ in candidates]
    if len(candidates) > 1:  # each measured on its own: the lowest loss after the same run wins
        finals = [measure(model, replace(workload, optimizer=name, lr=rate)).loss.final for name, rate in candidates]
        expected = candidates[finals.index(min(finals))]
    else:
        expected = candidates[0]
    assert (trial.workload.optimizer, trial.workload.lr) == expected
    assert optimizer_line(*expected) in trial.snippet.splitlines()
    # before any run, the recommender proposes the first candidate
    assert optimizer_line(*candidates[0]) in FIXES["change-optimizer"].snippet(FixTarget(optimizer=before, lr=lr))


def test_momentum_at_the_same_rate_is_stable_where_plain_sgd_was_and_nesterov_is_not():
    """Why change-optimizer keeps the rate with heavy-ball momentum, not Nesterov: plain torch on a
    quadratic with curvatures 1 and 100 at lr = 1.8 / 100 (SGD stable, near its edge of 2 / 100)."""
    curvature = torch.tensor([1.0, 100.0])
    lr = 1.8 / 100

    def final_loss(**options) -> float:
        w = torch.ones(2, requires_grad=True)
        optimizer = torch.optim.SGD([w], lr=lr, **options)
        for _ in range(100):
            optimizer.zero_grad()
            (0.5 * (curvature * w * w).sum()).backward()
            optimizer.step()
        return float(0.5 * (curvature * w * w).sum())

    plain, heavy_ball = final_loss(), final_loss(momentum=0.9)
    nesterov = final_loss(momentum=0.9, nesterov=True)
    assert heavy_ball < 1e-3 < plain  # momentum crosses the shallow direction's ravine floor, SGD crawls
    assert not nesterov < 1.0  # diverges (or blows up) at the rate SGD tolerated


def test_he_init_targets_the_layers_feeding_relu_only(x):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(IN, 128), nn.ReLU(), nn.Linear(128, 128), nn.Tanh(), nn.Linear(128, OUT))
    fixed = apply_fix("he-init", model, _workload(x), _records(model, x)).module
    assert fixed[0].weight.std().item() == pytest.approx(math.sqrt(2.0 / IN), rel=0.2)
    assert torch.equal(fixed[2].weight, model[2].weight)  # feeds tanh: Glorot's job, not He's
    assert torch.equal(fixed[4].weight, model[4].weight)  # the output layer feeds no activation


def test_normalize_inputs_standardises_each_feature_and_updates_the_stats(x):
    raw = x * torch.linspace(1, 500, IN) + 100.0
    model = nn.Sequential(nn.Linear(IN, OUT))
    workload = _workload(raw)
    trial = apply_fix("normalize-inputs", model, workload, _records(model, raw))
    (fixed,) = trial.workload.batch.args
    assert torch.allclose(fixed.mean(0), torch.zeros(IN), atol=1e-4)
    assert torch.allclose(fixed.std(0, correction=0), torch.ones(IN), atol=1e-4)
    assert torch.equal(workload.batch.args[0], raw)  # the original batch is untouched
    (stats,) = trial.workload.batch.stats
    assert abs(stats.mean) < 1e-4 and stats.std == pytest.approx(1.0, abs=1e-4)


def test_normalize_inputs_leaves_token_ids_alone():
    tokens = torch.randint(0, 10, (BATCH, 5))
    model = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(20, OUT))
    with pytest.raises(FixNotApplicable, match="floating-point"):
        apply_fix("normalize-inputs", model, _workload(tokens), _records(model, tokens))


@pytest.mark.parametrize("fix_id", ["residual-connections", "widen-layer", "lr-schedule", "no-such-fix"])
def test_fixes_that_cannot_be_automated_say_so(fix_id, x):
    model = nn.Sequential(nn.Linear(IN, OUT))
    with pytest.raises(FixNotApplicable) as raised:
        apply_fix(fix_id, model, _workload(x), _records(model, x))
    assert str(raised.value)


def test_every_fix_has_its_applier_or_says_why_it_has_none():
    from diagnose.fixes import FIXES, Fix

    for fix in FIXES.values():
        assert callable(fix.apply) != bool(fix.not_applicable and fix.not_applicable.strip()), fix.id
    # the choice is made where the fix is declared: neither (or both) is refused there
    declared = {"id": "x", "title": "x", "summary": "x", "rationale": "x", "doc": "x", "snippet": str}
    with pytest.raises(TypeError, match="exactly one"):
        Fix(**declared)
    with pytest.raises(TypeError, match="exactly one"):
        Fix(**declared, apply=apply_fix, not_applicable="why")


def test_a_fix_declared_not_applicable_gives_its_own_reason(x):
    from diagnose.fixes import FIXES

    model = nn.Sequential(nn.Linear(IN, OUT))
    with pytest.raises(FixNotApplicable) as raised:
        apply_fix("lr-schedule", model, _workload(x), _records(model, x))
    assert str(raised.value) == FIXES["lr-schedule"].not_applicable


def test_the_catalog_and_the_activation_families_import_without_torch():
    code = "import sys, diagnose.fixes, probes.activations; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "False", proc.stderr


# ---------------------------------------------------------------------------------------------
# Gradient clipping at a measured threshold


def _trace(history, norms) -> LossTrace:
    return LossTrace(kind="mse", initial=history[0], expected_initial=None, num_classes=None, final=history[-1],
                     history=tuple(history), gradient_norms=tuple(norms))


def test_the_clip_threshold_is_the_90th_percentile_of_the_measured_norms():
    norms = [3.0, 1.0, 7.0, 2.0, 5.0, 4.0, 10.0, 6.0, 8.0, 9.0, 0.5]
    losses = [2.0 - 0.1 * i for i in range(len(norms))]  # a run that trains: every step counts
    expected = float(torch.quantile(torch.tensor(norms, dtype=torch.float64), 0.9))  # linear interpolation
    assert measured_clip_norm(losses, norms) == (pytest.approx(expected), len(norms))


def test_the_clip_threshold_ignores_the_steps_after_a_divergence():
    losses = [2.3, 2.1, 1.9, 2.6, 9.0, float("nan")]
    norms = [1.0, 2.0, 1.5, 40.0, 900.0]  # the loss rises above its start at step 3
    threshold, steps = measured_clip_norm(losses, norms)
    assert steps == 3
    assert threshold == pytest.approx(float(torch.quantile(torch.tensor([1.0, 2.0, 1.5]), 0.9)))
    assert measured_clip_norm([2.3, float("nan")], [float("inf")]) is None  # nothing finite to read
    assert measured_clip_norm([2.3], []) is None


def test_gradient_clipping_is_verified_at_the_measured_threshold_and_the_snippet_says_it(x):
    model = nn.Sequential(nn.Linear(IN, OUT))
    norms = [0.2, 0.4, 0.3, 0.8, 0.5]
    trial = apply_fix("gradient-clipping", model, _workload(x), _records(model, x),
                      run=_trace([1.0, 0.9, 0.8, 0.7, 0.6], norms))
    threshold = float(torch.quantile(torch.tensor(norms), 0.9))
    assert trial.workload.clip_grad_norm == pytest.approx(threshold)
    assert f"max_norm={threshold:.3g}" in trial.snippet
    assert "90th percentile" in trial.change


def test_try_fixes_clips_at_the_percentile_of_the_unchanged_run():
    """End to end: the threshold comes from the baseline run's own gradient norms."""
    import diagnose

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(1))
    report = diagnose.check(model, x, steps=20, lr=10.0, try_fixes=True, select=["lr-too-high"])
    (finding,) = report.findings
    (clip,) = [fix for fix in finding.fixes if fix.id == "gradient-clipping"]
    expected, _ = measured_clip_norm(report.evidence.loss.history, report.evidence.loss.gradient_norms)
    assert f"max_norm={expected:.3g}" in clip.snippet
    assert f"global norm {expected:.3g}" in clip.verified.note


# ---------------------------------------------------------------------------------------------
# widen-layer


def _bottleneck_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 2), nn.ReLU(), nn.Linear(2, 256), nn.ReLU(),
                          nn.Linear(256, 10))
    for layer in model:
        if isinstance(layer, nn.Linear):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.uniform_(layer.bias, -0.1, 0.1)
    return model


def test_widen_layer_widens_the_bottleneck_and_the_next_layers_inputs_keeping_old_weights():
    model = _bottleneck_mlp()
    x = torch.randn(64, 64)
    snapshot = _snapshot(model)
    trial = apply_fix("widen-layer", model, _workload(x), _records(model, x))
    _assert_unchanged(model, snapshot)
    fixed = trial.module
    narrow, following = fixed[2], fixed[4]
    assert tuple(narrow.weight.shape) == (256, 256) and tuple(following.weight.shape) == (256, 256)
    assert torch.equal(narrow.weight[:2], model[2].weight) and torch.equal(narrow.bias[:2], model[2].bias)
    assert torch.equal(following.weight[:, :2], model[4].weight) and torch.equal(following.bias, model[4].bias)
    assert torch.count_nonzero(narrow.bias[2:]) == 0
    # the new units by the scheme ReLU needs: He, std sqrt(2 / fan_in) for both layers' new weights
    assert narrow.weight[2:].std().item() == pytest.approx(math.sqrt(2 / 256), rel=0.05)
    assert following.weight[:, 2:].std().item() == pytest.approx(math.sqrt(2 / 256), rel=0.05)
    # the old units compute exactly what they did
    assert torch.allclose(fixed[:3](x)[:, :2], model[:3](x), atol=1e-5)
    assert fixed(x).shape == (64, 10)
    assert "2 -> 256 units" in trial.change


class _ConvBottleneck(nn.Module):
    """Conv -> BN -> ReLU -> Conv, called in turn from forward (not a Sequential)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2)
        self.conv3 = nn.Conv2d(2, 16, 3, padding=1)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.conv3(x))
        return self.head(x.mean((2, 3)))


def test_widen_layer_rebuilds_conv_bn_act_conv_keeping_the_norms_statistics():
    from diagnose.fixes._widen import widen_layer

    torch.manual_seed(0)
    model = _ConvBottleneck()
    x = torch.randn(8, 3, 8, 8)
    records = _records(model, x)  # a training-mode forward: bn2 has running statistics of its own now
    running_mean = model.bn2.running_mean.clone()
    original = copy.deepcopy(model)
    widen_layer(model, "conv2", "conv3", 16, records)
    assert model.conv2.out_channels == 16 and model.conv3.in_channels == 16 and model.bn2.num_features == 16
    assert torch.equal(model.conv2.weight[:2], original.conv2.weight)
    assert torch.equal(model.conv3.weight[:, :2], original.conv3.weight)
    assert torch.equal(model.bn2.running_mean[:2], running_mean)
    assert torch.count_nonzero(model.bn2.running_mean[2:]) == 0 and torch.all(model.bn2.running_var[2:] == 1)
    model.eval(), original.eval()
    with torch.no_grad():  # the old channels are unchanged through conv -> bn
        assert torch.allclose(model.bn2(model.conv2(F.relu(model.bn1(model.conv1(x)))))[:, :2],
                              original.bn2(original.conv2(F.relu(original.bn1(original.conv1(x))))), atol=1e-6)
    assert model(x).shape == (8, 4)


def test_widen_layer_is_not_applied_where_a_second_branch_reads_the_narrow_layer():
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(64, 256)
            self.narrow = nn.Linear(256, 2)
            self.wide = nn.Linear(2, 256)
            self.side = nn.Linear(2, 3)
            self.head = nn.Linear(256, 10)

        def forward(self, x):
            code = F.relu(self.narrow(F.relu(self.body(x))))
            return self.head(F.relu(self.wide(code))) + self.side(code).sum(-1, keepdim=True)

    torch.manual_seed(0)
    model = TwoHeads()
    x = torch.randn(32, 64)
    with pytest.raises(FixNotApplicable, match="side also reads the output of narrow"):
        apply_fix("widen-layer", model, _workload(x), _records(model, x))


def test_widen_layer_on_the_exported_bottleneck_sample_trains_better():
    from pathlib import Path

    import diagnose

    path = Path(__file__).resolve().parent.parent / "samples" / "bottleneck.pt2"
    report = diagnose.check(str(path), steps=20, try_fixes=True, select=["bottleneck-layer"])
    (finding,) = report.findings
    widen = finding.fixes[0]
    assert widen.id == "widen-layer" and widen.verified.resolved
    assert widen.verified.metric == "narrowing" and widen.verified.before == 128.0 and widen.verified.after == 1.0
    assert widen.verified.loss_after < 0.5 * widen.verified.loss_before
    assert "nn.Linear(512, 4)  ->  nn.Linear(512, 512)" in widen.snippet


def test_normalize_inputs_imputes_non_finite_entries_from_the_finite_statistics():
    x = torch.randn(32, IN, generator=torch.Generator().manual_seed(5)) * 3.0 + 7.0
    x[3, 1], x[10, 1], x[4, 6] = float("nan"), float("inf"), float("nan")
    model = nn.Sequential(nn.Linear(IN, OUT))
    trial = apply_fix("normalize-inputs", model, _workload(x), _records(model, torch.nan_to_num(x)))
    (out,) = trial.workload.batch.args
    assert torch.isfinite(out).all()
    for column in range(IN):
        values = x[:, column]
        finite = values[torch.isfinite(values)]
        mean, std = finite.mean(), finite.std(correction=0)
        expected = torch.where(torch.isfinite(values), (values - mean) / std, torch.zeros(()))
        assert torch.allclose(out[:, column], expected, atol=1e-5)
    assert "3 NaN/Inf entries imputed" in trial.change


def test_selu_fix_makes_a_plain_self_normalizing_stack():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(IN, 64), nn.BatchNorm1d(64), nn.SELU(), nn.Dropout(0.1), nn.Linear(64, 64),
                          nn.Tanh(), nn.Linear(64, OUT))
    x = torch.randn(BATCH, IN)
    fixed = apply_fix("selu", model, _workload(x), _records(model, x)).module
    kinds = [type(m).__name__ for m in fixed]
    assert kinds[1] == "Identity" and kinds[3] == "AlphaDropout" and kinds[5] == "SELU"
    for index in (0, 4):  # LeCun normal: std 1/sqrt(fan_in)
        assert fixed[index].weight.std().item() == pytest.approx(1 / math.sqrt(fixed[index].in_features), rel=0.15)
    assert type(model[1]).__name__ == "BatchNorm1d"  # the user's model keeps its own


def test_selu_fix_is_not_applied_to_a_convolutional_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Tanh(), nn.Flatten(), nn.Linear(8 * 6 * 6, OUT))
    x = torch.randn(4, 3, 8, 8)
    with pytest.raises(FixNotApplicable, match="plain dense stacks; this model has Conv2d layers"):
        apply_fix("selu", model, _workload(x), _records(model, x))


def test_glorot_init_gives_recurrent_layers_orthogonal_recurrent_weights():
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.LSTM(IN, 16, batch_first=True)
            self.head = nn.Linear(16, OUT)

        def forward(self, x):
            out, _ = self.rnn(x)
            return self.head(out[:, -1])

    model = Net()
    with torch.no_grad():
        model.rnn.weight_hh_l0.mul_(4.0)
    x = torch.randn(4, 7, IN)
    fixed = apply_fix("glorot-init", model, _workload(x), _records(model, x)).module
    for gate in fixed.rnn.weight_hh_l0.detach().split(16):  # each gate's recurrent block is orthogonal
        assert torch.allclose(gate @ gate.T, torch.eye(16), atol=1e-5)
    bias = fixed.rnn.bias_ih_l0.detach()
    assert torch.all(bias[16:32] == 1.0) and torch.count_nonzero(bias[:16]) == 0  # forget gate +1
    assert fixed.rnn.weight_ih_l0.abs().max().item() <= math.sqrt(6 / (IN + 16)) + 1e-6  # Glorot-uniform bound
    assert torch.equal(model.rnn.weight_hh_l0, model.rnn.weight_hh_l0)  # (the user's stays 4x: untouched)
