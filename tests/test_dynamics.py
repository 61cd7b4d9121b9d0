"""The training-dynamics checks end to end: `diagnose.check(..., steps=N)` on real and synthetic data.

Each dynamics check gets a model + optimiser setting that must trigger it and settings that must
not, on scikit-learn's bundled digits (standardised; 128 of the 1797 8x8 images, 10 classes) with
their real labels, and on synthetic standard-normal batches with the random labels `loss="auto"`
draws. The short run on one fixed batch is also the overfit-one-batch test.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import diagnose

STEPS = 20
FEATURES, CLASSES, SAMPLES = 64, 10, 128
SYNTHETIC_BATCH = 64
DYNAMICS = ("lr-too-high", "lr-too-low", "loss-not-decreasing", "adagrad-deep-network")


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    images, labels = sklearn_datasets.load_digits(return_X_y=True)
    images, labels = images[:SAMPLES], labels[:SAMPLES]
    # Standardised per pixel, as one would with StandardScaler; constant pixels stay at 0.
    images = (images - images.mean(0)) / (images.std(0) + 1e-8)
    return torch.tensor(images, dtype=torch.float32), torch.tensor(labels)


def mlp(depth: int = 3, width: int = 64, bias: float = 0.0) -> nn.Sequential:
    """A He-initialised ReLU MLP from 64 features to 10 classes: healthy at sane settings."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    fan_in = FEATURES
    for _ in range(depth):
        linear = nn.Linear(fan_in, width)
        nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
        nn.init.constant_(linear.bias, bias)
        layers += [linear, nn.ReLU()]
        fan_in = width
    layers.append(nn.Linear(fan_in, CLASSES))
    torch.random.set_rng_state(generator_state)
    return nn.Sequential(*layers)


def run(data: str, digits, model: nn.Module, **options) -> diagnose.Report:
    if data == "digits":
        images, labels = digits
        return diagnose.check(model, images, targets=labels, steps=STEPS, **options)
    return diagnose.check(model, input_shapes=[(SYNTHETIC_BATCH, FEATURES)], steps=STEPS, **options)


def ids(report) -> set[str]:
    return {finding.id for finding in report.findings}


DATA = ["digits", "synthetic"]

# (check id, model options, run options): settings that must trigger the check.
TRIGGERS = [
    pytest.param("lr-too-high", {}, {"lr": 5.0}, id="lr-too-high:sgd-5-diverges"),
    pytest.param("lr-too-high", {}, {"optimizer": "adam", "lr": 0.3}, id="lr-too-high:adam-0.3-huge-updates"),
    pytest.param("lr-too-low", {}, {"lr": 1e-5}, id="lr-too-low:sgd-1e-5"),
    pytest.param("loss-not-decreasing", {}, {"lr": 1e-5}, id="loss-not-decreasing:sgd-1e-5"),
    pytest.param("loss-not-decreasing", {"bias": -3.0}, {"lr": 0.01}, id="loss-not-decreasing:dead-units"),
    pytest.param("adagrad-deep-network", {"depth": 6}, {"optimizer": "adagrad", "lr": 0.01},
                 id="adagrad-deep-network:6-layers"),
]

# Settings under which none of the dynamics checks may fire.
HEALTHY = [
    pytest.param({}, {"lr": 0.1}, id="sgd-0.1"),
    pytest.param({}, {"optimizer": "momentum", "lr": 0.01}, id="momentum-0.01"),
    pytest.param({"depth": 6}, {"optimizer": "adam", "lr": 1e-3}, id="deep-adam-1e-3"),
    pytest.param({"depth": 2}, {"optimizer": "adagrad", "lr": 0.01}, id="shallow-adagrad"),
]


@pytest.mark.parametrize("data", DATA)
@pytest.mark.parametrize(("check_id", "model_options", "options"), TRIGGERS)
def test_dynamics_check_fires(data, digits, check_id, model_options, options):
    report = run(data, digits, mlp(**model_options), **options)
    assert check_id in ids(report)


@pytest.mark.parametrize("data", DATA)
@pytest.mark.parametrize(("model_options", "options"), HEALTHY)
def test_dynamics_checks_stay_quiet_on_sane_settings(data, digits, model_options, options):
    report = run(data, digits, mlp(**model_options), **options)
    assert not ids(report) & set(DYNAMICS)


def test_divergence_to_nan_is_an_error_with_the_step(digits):
    report = run("digits", digits, mlp(), lr=5.0)
    (finding,) = [f for f in report.findings if f.id == "lr-too-high"]
    assert finding.severity == diagnose.Severity.ERROR
    assert 0 <= finding.evidence["nonfinite_step"] < STEPS


def test_dynamics_checks_need_a_run(digits):
    images, labels = digits
    report = diagnose.check(mlp(), images, targets=labels, steps=0, lr=1e-5)
    assert not ids(report) & set(DYNAMICS)


def test_overfit_one_batch_healthy_model_drives_its_loss_down(digits):
    report = run("digits", digits, mlp(), lr=0.1)
    loss = report.evidence.loss
    assert len(loss.history) == STEPS
    assert loss.final < 0.5 * loss.initial  # a healthy net memorises one small batch quickly


def test_overfit_one_batch_broken_model_does_not(digits):
    report = run("digits", digits, mlp(bias=-3.0), lr=0.01)
    loss = report.evidence.loss
    assert loss.final > 0.95 * loss.initial


# ---------------------------------------------------------------------------------------------
# ReLU units that die during the run (alive at init, dead at the end)

# Adam at 0.3 throws the weights far enough in a few steps to silence most units of the middle
# layer; the loss stays finite, so this is dying, not divergence to NaN.
KILLING = {"optimizer": "adam", "lr": 0.3}


@pytest.mark.parametrize("data", DATA)
def test_high_lr_kills_units_that_were_alive_at_init(data, digits):
    """The premise of the next test, measured by the probes directly."""
    report = run(data, digits, mlp(), **KILLING)
    evidence = report.evidence
    assert all((r.activation.dead_fraction or 0.0) < 0.5 for r in evidence.layers)
    assert max(r.activation.dead_fraction_last or 0.0 for r in evidence.run_layers) >= 0.8
    assert all(v == v for v in evidence.loss.history)  # finite: no NaN


@pytest.mark.parametrize("data", DATA)
def test_dead_relu_reports_units_that_die_during_the_run(data, digits):
    report = run(data, digits, mlp(), **KILLING)
    (finding,) = [f for f in report.findings if f.id == "dead-relu"]
    assert finding.evidence["died_during_run"] >= 1
