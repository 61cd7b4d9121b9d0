"""Shared helpers for the checks tests: zoo reports (cached) and hand-built evidence."""

from __future__ import annotations

import functools
import math

from diagnose.evidence import Evidence, InputStats, LossTrace, ModelFacts, RunInfo
from diagnose.findings import Finding
from probes.records import ActivationStats, GradientStats, LayerRecord, WeightStats


@functools.cache
def zoo_report(name: str, steps: int = 0):
    """`diagnose.check` on one `tests/models.py` case (built and probed once per session)."""
    import diagnose
    import models

    case = models.CASES[name]
    model = case.build()
    # Inputs given to the API count as the user's own (real) data; synthetic cases use
    # standard-normal batches, which is what --input-shape would make.
    return diagnose.check(model, case.make_inputs(), steps=steps, **case.options)


def findings_of(report_or_list, check_id: str) -> list[Finding]:
    findings = getattr(report_or_list, "findings", report_or_list)
    return [f for f in findings if f.id == check_id]


def only(report_or_list, check_id: str) -> Finding:
    found = findings_of(report_or_list, check_id)
    assert len(found) == 1, f"expected one {check_id} finding, got {[f.id for f in getattr(report_or_list, 'findings', report_or_list)]}"
    return found[0]


def linear(
    name: str,
    index: int,
    *,
    fan_in: int = 64,
    fan_out: int = 64,
    std: float | None = None,
    expected_std: float | None = None,
    scheme: str | None = "he",
    followed_by: str = "relu",
    normalized: bool = False,
    out_std: float | None = 1.0,
    grad_out_rms: float | None = 1e-3,
    grad_rms: float | None = 1e-3,
    batch: int = 32,
    bias_mean: float | None = 0.0,
    kind: str = "linear",
    params_without_gradient: tuple[str, ...] = (),
    nonfinite: int = 0,
    update_ratio: float | None = None,
    update_ratios: tuple[float, ...] = (),
) -> LayerRecord:
    """A weighted layer record; by default a healthy He-initialised Linear feeding a ReLU."""
    expected = expected_std if expected_std is not None else math.sqrt(2.0 / fan_in)
    return LayerRecord(
        name=name, type="Linear" if kind == "linear" else "Conv2d", index=index, kind=kind,
        followed_by=followed_by, calls=1, output_shape=(batch, fan_out),
        parameters=fan_in * fan_out + fan_out, trainable_parameters=fan_in * fan_out + fan_out,
        params_without_gradient=params_without_gradient,
        activation=ActivationStats(mean=0.0, std=out_std, nonfinite=nonfinite, count=batch * fan_out, units=fan_out),
        gradient=GradientStats(norm=grad_rms, rms=grad_rms, output_rms=grad_out_rms),
        weight=WeightStats(
            std=std if std is not None else expected, mean=0.0, expected_std=expected, scheme=scheme,
            fan_in=fan_in, fan_out=fan_out, normalized=normalized, frozen=False, numel=fan_in * fan_out,
            bias_mean=bias_mean, bias_std=0.0,
        ),
        update_ratio=update_ratio, update_ratio_max=max(update_ratios, default=update_ratio),
        update_ratios=update_ratios,
    )


def activation(
    name: str,
    index: int,
    family: str = "relu",
    *,
    units: int = 64,
    batch: int = 32,
    dead: float | None = None,
    saturated: float | None = None,
    std: float | None = 0.6,
    source: str = "module",
    owner: str = "",
) -> LayerRecord:
    return LayerRecord(
        name=name, type={"relu": "ReLU", "tanh": "Tanh", "sigmoid": "Sigmoid", "selu": "SELU"}.get(family, family),
        index=index, kind="activation", source=source, owner=owner, activation_kind=family, calls=1,
        output_shape=(batch, units),
        activation=ActivationStats(mean=0.3, std=std, dead_fraction=dead, saturated_fraction=saturated,
                                   count=batch * units, units=units),
        gradient=GradientStats(output_rms=1e-3),
    )


def module_record(name: str, index: int, kind: str, type_name: str, **extra) -> LayerRecord:
    return LayerRecord(name=name, type=type_name, index=index, kind=kind, calls=1, output_shape=(32, 64), **extra)


def evidence(
    layers=(),
    *,
    run_layers=(),
    steps: int = 0,
    optimizer: str = "sgd",
    lr: float = 0.01,
    history: tuple[float, ...] = (),
    initial: float | None = 2.30,
    expected_initial: float | None = math.log(10),
    num_classes: int | None = 10,
    inputs: tuple[InputStats, ...] = (),
    nonfinite_loss_step: int | None = None,
) -> Evidence:
    return Evidence(
        model=ModelFacts(source="hand-built", format="module", parameters=1, trainable_parameters=1,
                         layers=len(layers)),
        run=RunInfo(device="cpu", seed=0, inputs="synthetic", input_shapes=((32, 64),), loss="cross-entropy",
                    steps=steps, optimizer=optimizer, lr=lr),
        layers=tuple(layers),
        run_layers=tuple(run_layers),
        loss=LossTrace(kind="cross-entropy", initial=initial, expected_initial=expected_initial,
                       num_classes=num_classes, history=history or ((initial,) if initial is not None else ()),
                       final=history[-1] if history else initial),
        inputs=inputs,
        nonfinite_loss_step=nonfinite_loss_step,
    )


def relu_stack(depth: int = 4, **overrides) -> list[LayerRecord]:
    """A healthy hand-built Linear/ReLU stack: layers net.0, net.2, ... with ReLUs between."""
    records = []
    index = 0
    for i in range(depth):
        last = i == depth - 1
        records.append(linear(f"net.{2 * i}", index, followed_by="none" if last else "relu", **overrides))
        index += 1
        if not last:
            records.append(activation(f"net.{2 * i + 1}", index))
            index += 1
    return records


def real_input(mean: float, std: float, name: str = "arg0", integer: bool = False, synthetic: bool = False) -> InputStats:
    return InputStats(name=name, shape=(32, 64), dtype="int64" if integer else "float32", synthetic=synthetic,
                      integer=integer, mean=None if integer else mean, std=None if integer else std,
                      min=None, max=None)
