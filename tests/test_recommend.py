"""The recommender: fix order per context, snippets that name the user's layers, docs per fix."""

from __future__ import annotations

import ast

import pytest

from diagnose.checks import run_checks
from diagnose.findings import Finding
from diagnose.fixes import FIX_IDS, FIXES, FixTarget
from diagnose.recommend import recommend
from diagnose.severity import Severity

from checks.helpers import activation, evidence, linear, module_record, relu_stack, zoo_report

CONTRACT_FIX_IDS = {
    "he-init", "glorot-init", "lecun-init", "relu", "leaky-relu", "elu", "selu", "batch-norm",
    "gradient-clipping", "lower-lr", "higher-lr", "lr-warmup", "lr-schedule", "normalize-inputs",
    "fix-bias-init", "residual-connections", "widen-layer", "change-optimizer",
}


def _fix_ids(finding: Finding) -> list[str]:
    return [f.id for f in finding.fixes]


def _finding(report, check_id):
    return next(f for f in report.findings if f.id == check_id)


def test_catalog_matches_the_contract():
    assert set(FIXES) == CONTRACT_FIX_IDS == set(FIX_IDS)
    for fix in FIXES.values():
        assert fix.title and fix.rationale and "\n" not in fix.summary


@pytest.mark.parametrize("fix_id", sorted(CONTRACT_FIX_IDS))
def test_every_snippet_is_valid_python(fix_id):
    for target in (FixTarget(), FixTarget(layers=("net.0", "net.2"), activation="relu", widths=(("net.2", 4),))):
        ast.parse(FIXES[fix_id].snippet(target))


def test_sigmoid_dense_stack_vanishing_order():
    """By cause: the sigmoid's slope; SELU (for a plain dense stack), ReLU and a norm layer change it,
    the Glorot scale does not (measured in test_verify: it leaves the gradient vanishing)."""
    fixes = _fix_ids(_finding(zoo_report("deep-sigmoid-standard"), "vanishing-gradients"))
    assert fixes == ["selu", "relu", "batch-norm", "glorot-init"]


def test_sigmoid_conv_stack_gets_relu_first_and_no_selu():
    layers = []
    for i in range(6):
        layers += [linear(f"c{i}", 2 * i, kind="conv", followed_by="sigmoid", scheme="glorot"),
                   activation(f"s{i}", 2 * i + 1, "sigmoid")]
    layers.append(linear("head", 12, followed_by="none", scheme="glorot"))
    finding = Finding(id="vanishing-gradients", severity=Severity.ERROR, title="t", message="m")
    fixes = _fix_ids(recommend([finding], evidence(layers))[0])
    assert fixes[0] == "relu" and "selu" not in fixes


def test_relu30_vanishing_offers_he_first_and_residual_for_depth():
    fixes = _fix_ids(_finding(zoo_report("relu30-xavier"), "vanishing-gradients"))
    assert fixes[0] == "he-init"
    assert "residual-connections" in fixes and "selu" not in fixes and "relu" not in fixes


def test_he_snippet_reinitialises_exactly_the_layers_feeding_relu():
    finding = _finding(zoo_report("relu30-xavier"), "poor-initialization")
    snippet = finding.fixes[0].snippet
    assert "nonlinearity='relu'" in snippet
    listed = ast.literal_eval(snippet.split("for name in ", 1)[1].split(":\n", 1)[0])
    assert listed == [str(2 * i) for i in range(30)]  # the 30 hidden layers, not the head "60"


def test_recurrent_exploding_clips_first_and_never_batch_norms():
    layers = [
        module_record("embed", 0, "embedding", "Embedding", trainable_parameters=10),
        linear("rnn", 1, kind="linear", followed_by="none"),
        module_record("lstm", 2, "recurrent", "LSTM", trainable_parameters=10),
        linear("head", 3, followed_by="none"),
    ]
    finding = Finding(id="exploding-gradients", severity=Severity.ERROR, title="t", message="m", layers=("rnn", "head"))
    fixes = _fix_ids(recommend([finding], evidence(layers))[0])
    assert fixes[0] == "gradient-clipping" and "batch-norm" not in fixes


def test_exploding_from_oversized_init_puts_init_first():
    fixes = _fix_ids(_finding(zoo_report("relu-exploding"), "exploding-gradients"))
    # the init is the cause: re-scale it or reset the scale with a norm layer; clipping and a lower
    # rate only bound the steps of a network that still explodes at init (measured: neither cures it)
    assert fixes == ["he-init", "batch-norm", "gradient-clipping", "lower-lr"]


def test_dead_relu_without_negative_bias_offers_leaky_first_and_lower_lr_when_dying_in_run():
    layers = [linear("fc", 0), activation("act", 1, dead=0.0), linear("head", 2, followed_by="none")]
    run_layers = [linear("fc", 0), activation("act", 1, dead=0.9)]
    ev = evidence(layers, run_layers=run_layers, steps=10, history=(2.3, 2.2, 2.1))
    findings, _ = run_checks(ev, select=["dead-relu"])
    fixes = _fix_ids(recommend(findings, ev)[0])
    assert fixes[0] == "lower-lr" and "fix-bias-init" not in fixes and "leaky-relu" in fixes


def test_batch_norm_not_offered_when_the_model_already_normalises():
    layers = relu_stack(4) + [module_record("norm", 99, "norm", "BatchNorm1d")]
    finding = Finding(id="activation-variance-collapse", severity=Severity.WARNING, title="t", message="m",
                      layers=("net.0", "net.2", "net.4"))
    assert "batch-norm" not in _fix_ids(recommend([finding], evidence(layers))[0])


def test_lr_fixes_use_the_users_optimizer_and_lr():
    ev = evidence(relu_stack(3), steps=10, optimizer="adam", lr=0.5, history=(2.3, 9.0, 50.0, 80.0))
    findings, _ = run_checks(ev, select=["lr-too-high"])
    finding = recommend(findings, ev)[0]
    assert _fix_ids(finding)[0] == "lower-lr"
    assert "torch.optim.Adam(model.parameters(), lr=0.05)" in finding.fixes[0].snippet


def test_adagrad_gets_change_optimizer_to_adam():
    ev = evidence(relu_stack(6), steps=3, optimizer="adagrad", history=(2.3, 2.2, 2.1))
    findings, _ = run_checks(ev, select=["adagrad-deep-network"])
    finding = recommend(findings, ev)[0]
    assert _fix_ids(finding)[0] == "change-optimizer" and "Adam" in finding.fixes[0].snippet


def test_bottleneck_snippet_names_the_layer_and_width():
    finding = _finding(zoo_report("bottleneck-mlp"), "bottleneck-layer")
    snippet = finding.fixes[0].snippet
    assert "nn.Linear(512, 4)  ->  nn.Linear(512, 512)   # 2" in snippet
    assert "nn.Linear(4, 512)  ->  nn.Linear(512, 512)   # 4" in snippet


def test_recommend_keeps_order_and_is_pure():
    ev = evidence(relu_stack(3))
    findings = [Finding(id="no-gradient", severity=Severity.ERROR, title="t", message="m"),
                Finding(id="unnormalized-inputs", severity=Severity.WARNING, title="t", message="m")]
    first, second = recommend(findings, ev), recommend(findings, ev)
    assert first == second and [f.id for f in first] == ["no-gradient", "unnormalized-inputs"]
    assert findings[1].fixes == ()  # inputs untouched
    assert _fix_ids(first[1]) == ["normalize-inputs", "batch-norm"]


def test_a_stalled_loss_in_a_dead_network_points_at_the_dead_units():
    import torch
    from torch import nn

    import diagnose

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    for layer in model:
        if isinstance(layer, nn.Linear):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.constant_(layer.bias, -10.0)
    report = diagnose.check(model, torch.randn(64, 16), steps=20)
    by_id = {f.id: f for f in report.findings}
    assert "dead-relu" in by_id
    assert by_id["loss-not-decreasing"].evidence["likely_cause"] == "dead-relu"
    # the weights already have the He scale: re-initialising them is not offered as a cure
    assert "he-init" not in [fix.id for fix in by_id["dead-relu"].fixes]


# ---------------------------------------------------------------- snippets that act on the user's model


def _exec_snippet(snippet: str, model) -> None:
    import torch
    from torch import nn
    from torch.nn import functional as F

    exec(snippet, {"model": model, "nn": nn, "torch": torch, "F": F})  # noqa: S102 - our own snippet


def _swap_snippet(model, inputs, fix_id="relu", check_id="vanishing-gradients"):
    import diagnose

    report = diagnose.check(model, inputs)
    return next(f for f in _finding(report, check_id).fixes if f.id == fix_id).snippet


class _FunctionalSigmoidMLP:
    """Built lazily (torch imports inside tests): 8 sigmoid calls in the model's own forward."""

    @staticmethod
    def build():
        import torch
        from torch import nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.layers = nn.ModuleList(nn.Linear(32 if i == 0 else 64, 64) for i in range(8))
                self.head = nn.Linear(64, 10)

            def forward(self, x):
                for layer in self.layers:
                    x = torch.sigmoid(layer(x))
                return self.head(x)

        torch.manual_seed(0)
        return Net()


def test_relu_snippet_for_functional_sigmoid_names_the_forward_and_reinitialises_the_feeders():
    import torch

    model = _FunctionalSigmoidMLP.build()
    snippet = _swap_snippet(model, torch.randn(64, 32))
    assert "isinstance(module, nn.Sigmoid)" not in snippet  # a loop that would change nothing
    assert "in the model's own forward(), 8 times per" in snippet
    assert "torch.sigmoid(x) / F.sigmoid(x) / x.sigmoid()  ->  torch.relu(x)" in snippet
    assert all(len(line) <= 80 for line in snippet.splitlines())
    _exec_snippet(snippet, model)  # the executable part does something: He init on the 8 feeding layers
    for layer in model.layers:
        assert layer.weight.std().item() == pytest.approx((2 / layer.in_features) ** 0.5, rel=0.1)
        assert torch.count_nonzero(layer.bias) == 0
    assert model.head.weight.std().item() < 0.5 * (2 / 64) ** 0.5  # the output layer is left alone


def test_relu_snippet_for_sigmoid_modules_swaps_the_hidden_ones_only():
    import torch
    from torch import nn

    torch.manual_seed(0)
    layers = []
    for i in range(8):
        layers += [nn.Linear(32 if i == 0 else 64, 64), nn.Sigmoid()]
    model = nn.Sequential(*layers, nn.Linear(64, 1), nn.Sigmoid())  # a probability output stays a sigmoid
    snippet = _swap_snippet(model, torch.randn(64, 32))
    _exec_snippet(snippet, model)
    kinds = [type(m).__name__ for m in model]
    assert kinds[:16:2] == ["Linear"] * 8 and kinds[1:16:2] == ["ReLU"] * 8
    assert kinds[-1] == "Sigmoid"


def test_functional_activation_in_a_submodule_names_its_caller():
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(32, 32)

        def forward(self, x):
            return torch.tanh(self.fc(x))

    torch.manual_seed(0)
    model = nn.Sequential(*[Block() for _ in range(6)], nn.Linear(32, 10))
    for block in list(model)[:6]:
        nn.init.normal_(block.fc.weight, 0.0, 1.0)  # saturates every tanh
    report = __import__("diagnose").check(model, torch.randn(64, 32))
    relu = next(f for f in _finding(report, "saturated-activations").fixes if f.id == "relu")
    assert "forward() of '0', '1', '2', ... '5'" in relu.snippet
    assert "on the outputs of 0.fc, 1.fc, 2.fc, ... 5.fc" in relu.snippet
    assert "torch.tanh(x) / F.tanh(x) / x.tanh()  ->  torch.relu(x)" in relu.snippet


@pytest.mark.parametrize(("optimizer", "update", "first"), [
    ("sgd", 5e-3, "change-optimizer"),  # healthy steps, flat loss: a ravine, momentum's case
    ("sgd", 1e-5, "higher-lr"),  # the steps are too small: the rate first
    ("sgd", 0.5, "lower-lr"),  # the steps are too large
])
def test_a_flat_loss_is_advised_by_the_size_of_the_steps(optimizer, update, first):
    layers = relu_stack(3)
    run_layers = [linear(r.name, r.index, update_ratio=update) if r.kind == "linear" else r for r in layers]
    ev = evidence(layers, run_layers=run_layers, steps=20, optimizer=optimizer,
                  history=tuple(2.3 - 0.0001 * i for i in range(20)))
    findings, _ = run_checks(ev, select=["loss-not-decreasing"])
    finding = recommend(findings, ev)[0]
    assert _fix_ids(finding)[0] == first
    if first == "change-optimizer":
        assert "ravine" in finding.fixes[0].rationale
        assert "torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)" in finding.fixes[0].snippet


def test_an_oversized_init_is_named_first_for_the_findings_it_causes():
    """relu-exploding (3x He): the init is the cause of the dead units, the huge initial loss and the
    divergence; a lower rate or a bias reset measurably do not cure them (tests/test_verify.py)."""
    by_id = {f.id: f for f in zoo_report("relu-exploding", steps=20).findings}
    assert _fix_ids(by_id["dead-relu"])[0] == "he-init"
    assert _fix_ids(by_id["bad-initial-loss"])[0] == "he-init"
    assert by_id["lr-too-high"].evidence["likely_cause"] == "exploding-gradients"


def test_a_gradient_growing_back_in_time_gets_orthogonal_recurrent_weights_first():
    import torch

    import calibration

    torch.manual_seed(0)
    model = calibration.ChaoticRNN(4.0)
    report = __import__("diagnose").check(model, torch.randn(8, 24, 16))
    finding = _finding(report, "recurrent-gradient-flow")
    assert _fix_ids(finding)[:2] == ["glorot-init", "gradient-clipping"]
    _exec_snippet(finding.fixes[0].snippet, model)  # the snippet does it on the user's model
    for gate in model.rnn.weight_hh_l0.detach().split(64):
        assert torch.allclose(gate @ gate.T, torch.eye(64), atol=1e-5)
