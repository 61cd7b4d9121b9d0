"""The Python API: one-line sanity check, never touches the user's model or RNG, deterministic."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import diagnose


def _mlp(depth: int = 3, width: int = 32) -> nn.Module:
    layers: list[nn.Module] = []
    for i in range(depth):
        linear = nn.Linear(16 if i == 0 else width, width)
        nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
        nn.init.zeros_(linear.bias)
        layers += [linear, nn.ReLU()]
    layers.append(nn.Linear(width, 4))
    return nn.Sequential(*layers)


def test_check_returns_a_report_with_the_contract_fields():
    torch.manual_seed(0)
    report = diagnose.check(_mlp(), torch.randn(64, 16))
    data = report.to_dict()
    assert data["schema_version"] == 1
    assert data["tool"]["name"] == "diagnose"
    assert data["summary"]["status"] == report.status
    assert [layer["index"] for layer in data["layers"]] == sorted(layer["index"] for layer in data["layers"])
    first = data["layers"][0]
    assert set(first) >= {"name", "type", "index", "activation", "gradient", "weight", "update_ratio"}
    assert set(first["activation"]) >= {"mean", "std", "dead_fraction", "saturated_fraction", "nonfinite"}
    assert set(first["gradient"]) >= {"norm", "rms"}
    assert set(first["weight"]) >= {"std", "expected_std", "scheme"}


def test_user_model_rng_and_flags_are_left_as_found():
    torch.manual_seed(0)
    model = _mlp()
    model.eval()
    x = torch.randn(32, 16)
    before = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    diagnose.check(model, x, steps=3, optimizer="adam", lr=1e-3)
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(rng, torch.get_rng_state())
    assert not model._forward_hooks and not model._forward_pre_hooks


def test_same_seed_gives_the_same_report():
    torch.manual_seed(0)
    model, x = _mlp(), torch.randn(32, 16)
    first = diagnose.check(model, x, steps=3, seed=7).to_dict()
    second = diagnose.check(model, x, steps=3, seed=7).to_dict()
    assert first == second


def test_raise_for_status_raises_unhealthy_model_on_a_dead_network():
    torch.manual_seed(0)
    model = _mlp(depth=4)
    for module in model:
        if isinstance(module, nn.Linear):
            nn.init.constant_(module.bias, -10.0)
    report = diagnose.check(model, torch.randn(64, 16))
    assert report.status == "error"
    with pytest.raises(diagnose.UnhealthyModel):
        report.raise_for_status(fail_on="error")
    report.raise_for_status(fail_on="never")


def test_a_forward_that_raises_is_a_diagnose_error():
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            raise ValueError("shape mismatch somewhere")

    with pytest.raises(diagnose.DiagnoseError, match="forward failed"):
        diagnose.check(Broken(), torch.randn(2, 4))


def test_wrong_input_shape_is_a_diagnose_error():
    with pytest.raises(diagnose.DiagnoseError):
        diagnose.check(_mlp(), torch.randn(8, 3))


def test_torchscript_models_get_weight_and_gradient_checks_and_say_what_did_not_run():
    torch.manual_seed(0)
    scripted = torch.jit.script(_mlp())
    report = diagnose.check(scripted, torch.randn(32, 16), steps=3)
    data = report.to_dict()
    assert any("TorchScript" in note for note in data["model"]["limitations"])
    weighted = [layer for layer in data["layers"] if layer["weight"] is not None]
    assert len(weighted) == 4
    assert all(layer["gradient"]["norm"] for layer in weighted)
    assert all(layer["activation"]["std"] is None for layer in data["layers"])
    # the checks that read activations had nothing to judge: said, and not counted as passed
    not_judged = {item["id"] for item in data["run"]["checks_not_judged"]}
    assert {"dead-relu", "saturated-activations", "activation-variance-collapse"} <= not_judged
    assert not not_judged & set(data["run"]["checks"])
    assert {"vanishing-gradients", "poor-initialization", "lr-too-high"} <= set(data["run"]["checks"])


def test_checks_of_the_run_are_not_judged_without_steps():
    report = diagnose.check(_mlp(), torch.randn(32, 16), steps=0)
    not_judged = dict(report.checks_not_judged)
    assert set(not_judged) == {"lr-too-high", "lr-too-low", "loss-not-decreasing", "adagrad-deep-network"}
    assert "--steps" in not_judged["lr-too-high"]
    assert "dead-relu" in report.checks_run


def test_a_lazy_model_is_checked_and_left_uninitialised():
    """LazyLinear has sizes only after a forward: the probed copy gets them, the user's model not."""
    model = nn.Sequential(nn.LazyLinear(16), nn.ReLU(), nn.LazyLinear(3))
    report = diagnose.check(model, torch.randn(32, 8))
    facts = report.to_dict()["model"]
    assert facts["parameters"] == facts["trainable_parameters"] == 8 * 16 + 16 + 16 * 3 + 3
    assert isinstance(model[0].weight, nn.parameter.UninitializedParameter)


def test_an_internal_probe_error_in_the_training_run_is_reported_not_raised(monkeypatch):
    from probes import updates

    monkeypatch.delenv("PROBES_STRICT", raising=False)

    def boom(*args, **kwargs):
        raise ValueError("simulated probe bug")

    monkeypatch.setattr(updates.UpdateTracker, "_after_step", boom)
    with pytest.warns(RuntimeWarning):
        report = diagnose.check(_mlp(), torch.randn(64, 16), steps=3)
    limitations = report.to_dict()["model"]["limitations"]
    assert any("simulated probe bug" in note for note in limitations)


def test_weights_for_a_module_object_go_into_a_copy(tmp_path):
    torch.manual_seed(0)
    model, x = _mlp(), torch.randn(32, 16)
    other = _mlp()
    path = tmp_path / "other.pt"
    torch.save(other.state_dict(), path)
    before = copy.deepcopy(model.state_dict())
    report = diagnose.check(model, x, weights=str(path))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # ...and the report describes the loaded weights, not the module's own
    first = other.state_dict()["0.weight"]
    assert report.to_dict()["layers"][0]["weight"]["std"] == pytest.approx(first.std(unbiased=False).item(), rel=1e-3)


def test_an_unknown_check_id_fails_before_the_model_is_built(monkeypatch):
    # a typo in select= costs no probe run: the loader is never reached
    import diagnose.api

    def fail(*args, **kwargs):
        raise AssertionError("the model was loaded before the check ids were validated")

    monkeypatch.setattr(diagnose.api, "load_model", fail)
    with pytest.raises(diagnose.DiagnoseError, match="dead-relu"):
        diagnose.check(torch.nn.Linear(2, 2), torch.zeros(1, 2), select=["dead-reul"])
    with pytest.raises(diagnose.DiagnoseError, match="unknown check id in thresholds"):
        diagnose.check(torch.nn.Linear(2, 2), torch.zeros(1, 2), thresholds={"nope": {}})


class _CountingForward(nn.Module):
    """Counts its forward calls: a check id typo must cost none."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 2)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.fc(x)


@pytest.mark.parametrize("options, words", [
    ({"select": ["dead-reul"]}, "dead-reul"),
    ({"ignore": "nope"}, "nope"),
    ({"thresholds": {"nope": {"x": 1.0}}}, "unknown check id in thresholds"),
    ({"thresholds": {"dead-relu": {"dead_fraktion": 0.6}}}, "valid names: dead_fraction"),
    ({"per_layer_ignores": {"fc": ["nope"]}}, "per-layer ignores"),
])
def test_a_bad_check_id_or_threshold_name_raises_before_the_model_runs(options, words):
    model = _CountingForward()
    with pytest.raises(diagnose.DiagnoseError, match=words):
        diagnose.check(model, torch.zeros(4, 2), **options)
    assert model.calls == 0


def test_the_device_is_resolved_once(monkeypatch):
    import diagnose.api
    import diagnose.run

    calls = []
    real = diagnose.run.resolve_device

    def counting(requested):
        calls.append(requested)
        return real(requested)

    monkeypatch.setattr(diagnose.api, "resolve_device", counting)
    monkeypatch.setattr(diagnose.run, "resolve_device", counting)
    diagnose.check(_mlp(), torch.randn(8, 16), device="cpu")
    assert calls == ["cpu"]
