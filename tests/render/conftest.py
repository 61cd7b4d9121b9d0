"""Hand-made reports (no torch, fully deterministic) and the golden-file helper for renderer tests.

`pytest --update-golden` (or DIAGNOSE_UPDATE_GOLDEN=1) rewrites the golden files
instead of comparing against them; review the diff before committing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from diagnose.evidence import Evidence, LossTrace, ModelFacts, RunInfo
from diagnose.findings import Finding, FixSuggestion, Verification
from diagnose.report import Report
from diagnose.severity import Severity
from probes.records import ActivationStats, GradientStats, LayerRecord, WeightStats

GOLDEN_DIR = Path(__file__).resolve().parent.parent / "golden"


@pytest.fixture
def golden(request: pytest.FixtureRequest) -> Callable[[str, str], None]:
    """`golden(name, text)`: compare `text` with tests/golden/<name>, or rewrite it when updating."""
    updating = request.config.getoption("--update-golden", default=False) or os.environ.get(
        "DIAGNOSE_UPDATE_GOLDEN"
    ) == "1"

    def check(name: str, text: str) -> None:
        path = GOLDEN_DIR / name
        if updating:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            return
        if not path.exists():
            pytest.fail(f"missing golden file {path}; run pytest tests/render --update-golden")
        expected = path.read_text(encoding="utf-8")
        assert text == expected, f"{name} differs from its golden file; if intended, rerun with --update-golden"

    return check


def _linear(name: str, index: int, *, fan_in: int, fan_out: int, std: float, expected: float,
            act_std: float, grad_rms: float, update: float | None = None) -> LayerRecord:
    return LayerRecord(
        name=name, type="Linear", index=index, kind="linear", followed_by="sigmoid",
        calls=1, output_shape=(64, fan_out), parameters=fan_in * fan_out + fan_out,
        trainable_parameters=fan_in * fan_out + fan_out,
        activation=ActivationStats(mean=0.0, std=act_std, count=64, units=fan_out),
        gradient=GradientStats(norm=grad_rms * 30.0, rms=grad_rms, output_rms=grad_rms * 2, backward_calls=1),
        weight=WeightStats(std=std, mean=0.0, expected_std=expected, scheme="glorot", fan_in=fan_in,
                           fan_out=fan_out, normalized=False, frozen=False, numel=fan_in * fan_out),
        update_ratio=update,
    )


def _sigmoid(name: str, index: int, *, width: int, act_std: float, saturated: float, out_grad: float) -> LayerRecord:
    return LayerRecord(
        name=name, type="Sigmoid", index=index, kind="activation", activation_kind="sigmoid",
        calls=1, output_shape=(64, width),
        activation=ActivationStats(mean=0.5, std=act_std, saturated_fraction=saturated, count=64, units=width),
        gradient=GradientStats(output_rms=out_grad, backward_calls=1),
    )


def build_sick_report(*, steps: int = 20) -> Report:
    """A deep sigmoid MLP whose gradients vanish toward the input: one finding of each severity."""
    layers = (
        _linear("net.0", 0, fan_in=784, fan_out=256, std=0.5, expected=0.0431, act_std=11.2, grad_rms=3.1e-9, update=2.0e-8),
        _sigmoid("net.1", 1, width=256, act_std=0.48, saturated=0.93, out_grad=4.0e-9),
        _linear("net.2", 2, fan_in=256, fan_out=256, std=0.5, expected=0.0625, act_std=6.3, grad_rms=2.4e-6, update=1.1e-6),
        _sigmoid("net.3", 3, width=256, act_std=0.45, saturated=0.81, out_grad=5.2e-6),
        _linear("encoder.blocks.11.attention.output.dense_projection", 4, fan_in=256, fan_out=8,
                std=0.5, expected=0.0857, act_std=4.0, grad_rms=1.5e-3, update=9.0e-5),
        _sigmoid("net.5", 5, width=8, act_std=0.3, saturated=0.12, out_grad=2.0e-3),
        _linear("net.6", 6, fan_in=8, fan_out=10, std=0.5, expected=0.4714, act_std=1.1, grad_rms=0.021, update=3.0e-3),
    )
    evidence = Evidence(
        model=ModelFacts(source="samples/deep_sigmoid.pt2", format="export", parameters=269_146,
                         trainable_parameters=269_146, layers=len(layers),
                         limitations=("functional activations inside torch.export graphs are probed as modules",)),
        run=RunInfo(device="cpu", seed=0, inputs="synthetic", input_shapes=((64, 784),), loss="cross-entropy",
                    steps=steps, optimizer="sgd", lr=0.01, batch_size=64),
        layers=layers,
        loss=LossTrace(kind="cross-entropy", initial=2.3026, expected_initial=2.302585, num_classes=10,
                       final=2.3021 if steps else None, history=(2.3026, 2.3024, 2.3021) if steps else (2.3026,)),
    )
    findings = (
        Finding(
            id="saturated-activations", severity=Severity.WARNING, title="Sigmoid outputs are saturated",
            message="93% of net.1's outputs sit within 0.01 of 0 or 1, where the sigmoid's slope is ~0",
            layers=("net.1", "net.3"), evidence={"max_saturated_fraction": 0.93},
            fixes=(FixSuggestion(id="glorot-init", title="Use Glorot initialization",
                                 rationale="Keeps pre-activations in the sigmoid's linear range.",
                                 snippet="nn.init.xavier_uniform_(model.net[0].weight)"),),
        ),
        Finding(
            id="bottleneck-layer", severity=Severity.INFO, title="A hidden layer is much narrower than its neighbours",
            message="encoder.blocks.11.attention.output.dense_projection has 8 units between layers of 256 and 10",
            layers=("encoder.blocks.11.attention.output.dense_projection",), evidence={"width": 8, "neighbour_width": 256},
        ),
        Finding(
            id="vanishing-gradients", severity=Severity.ERROR, title="Gradients vanish toward the input",
            message="gradient RMS falls 6.8e+06x from net.6 to net.0",
            layers=("net.0", "net.2"), evidence={"ratio_first_last": 1.5e-7, "first_rms": 3.1e-9},
            fixes=(
                FixSuggestion(id="relu", title="Replace sigmoid with ReLU (and He init)",
                              rationale="ReLU's slope is 1 for positive inputs, so gradients do not shrink layer by layer.",
                              snippet="for i in (1, 3, 5):\n    model.net[i] = nn.ReLU()",
                              verified=Verification(metric="ratio_first_last", before=1.5e-7, after=0.41, resolved=True,
                                                    loss_before=2.3021, loss_after=1.4693)),
                FixSuggestion(id="batch-norm", title="Add batch normalization before each activation",
                              rationale="Re-centres and re-scales each layer's inputs.",
                              snippet="nn.BatchNorm1d(256)",
                              verified=Verification(metric="ratio_first_last", before=1.5e-7, after=2.0e-6, resolved=False,
                                                    note="still below the 1e-3 threshold",
                                                    loss_before=2.3021, loss_after=2.2517)),
            ),
        ),
    )
    checks = ("vanishing-gradients", "exploding-gradients", "saturated-activations", "bottleneck-layer", "non-finite")
    return Report(evidence=evidence, findings=findings, checks_run=checks,
                  notes=("the short run reused one batch of 64 synthetic inputs",))


def build_healthy_report() -> Report:
    """A small ReLU MLP at init, no findings, no training steps."""
    layers = (
        LayerRecord(name="fc1", type="Linear", index=0, kind="linear", followed_by="relu", parameters=330,
                    trainable_parameters=330,
                    activation=ActivationStats(mean=0.01, std=0.98), gradient=GradientStats(rms=0.02, output_rms=0.01),
                    weight=WeightStats(std=0.44, mean=0.0, expected_std=0.447, scheme="he", fan_in=10, fan_out=30,
                                       normalized=False, frozen=False, numel=300)),
        LayerRecord(name="act", type="ReLU", index=1, kind="activation", activation_kind="relu",
                    activation=ActivationStats(mean=0.4, std=0.58, dead_fraction=0.0),
                    gradient=GradientStats(output_rms=0.012)),
        LayerRecord(name="fc2", type="Linear", index=2, kind="linear", followed_by="none", parameters=62,
                    trainable_parameters=62,
                    activation=ActivationStats(mean=0.0, std=0.61), gradient=GradientStats(rms=0.03, output_rms=0.05),
                    weight=WeightStats(std=0.18, mean=0.0, expected_std=0.18, scheme="glorot", fan_in=30, fan_out=2,
                                       normalized=False, frozen=False, numel=60)),
    )
    evidence = Evidence(
        model=ModelFacts(source="tests.models:healthy_mlp", format="factory", parameters=392,
                         trainable_parameters=392, layers=3),
        run=RunInfo(device="cpu", seed=0, inputs="synthetic", input_shapes=((32, 10),), loss="cross-entropy",
                    steps=0, optimizer="sgd", lr=0.01, batch_size=32),
        layers=layers,
        loss=LossTrace(kind="cross-entropy", initial=0.70, expected_initial=0.693, num_classes=2, history=(0.70,)),
    )
    return Report(evidence=evidence, findings=(), checks_run=("dead-relu", "vanishing-gradients"))


@pytest.fixture
def sick_report() -> Report:
    return build_sick_report()


@pytest.fixture
def healthy_report() -> Report:
    return build_healthy_report()
