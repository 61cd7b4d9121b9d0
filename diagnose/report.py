"""The report of one `diagnose check`: status, findings, and the schema-v1 JSON (`to_dict`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from diagnose.errors import UnhealthyModel
from diagnose.evidence import Evidence
from diagnose.findings import Finding
from diagnose.severity import Severity, fails
from diagnose.version import __version__

SCHEMA_VERSION = 1
TOOL_NAME = "diagnose"


def _tool_version() -> str:
    return __version__


@dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    evidence: Evidence
    findings: tuple[Finding, ...]
    checks_run: tuple[str, ...] = ()
    # (check id, why it had nothing to judge): selected, but its evidence could not be measured
    checks_not_judged: tuple[tuple[str, str], ...] = ()
    elapsed_s: float | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)  # e.g. what the short run did

    @property
    def errors(self) -> int:
        return sum(1 for f in self.findings if f.severity is Severity.ERROR)

    @property
    def warnings(self) -> int:
        return sum(1 for f in self.findings if f.severity is Severity.WARNING)

    @property
    def infos(self) -> int:
        return sum(1 for f in self.findings if f.severity is Severity.INFO)

    @property
    def status(self) -> str:
        """`error`, `warning`, or `healthy` (no warnings or errors; infos do not count)."""
        if self.errors:
            return "error"
        if self.warnings:
            return "warning"
        return "healthy"

    def failing(self, fail_on: str = "error") -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if fails(f.severity, fail_on))

    def exit_code(self, fail_on: str = "error") -> int:
        return 1 if self.failing(fail_on) else 0

    def raise_for_status(self, fail_on: str = "error") -> None:
        """Raise `UnhealthyModel` when any finding is at or above `fail_on`."""
        failing = self.failing(fail_on)
        if failing:
            ids = ", ".join(sorted({f.id for f in failing}))
            raise UnhealthyModel(f"{len(failing)} finding(s) at or above {fail_on}: {ids}", failing)

    def to_dict(self) -> dict[str, object]:
        ev = self.evidence
        loss = ev.loss
        return {
            "schema_version": SCHEMA_VERSION,
            "tool": {"name": TOOL_NAME, "version": _tool_version()},
            "model": {
                "source": ev.model.source,
                "format": ev.model.format,
                "parameters": ev.model.parameters,
                "trainable_parameters": ev.model.trainable_parameters,
                "layers": ev.model.layers,
                "limitations": list(ev.model.limitations),
                "frozen_norms": ev.model.frozen_norms,
            },
            "run": {
                "device": ev.run.device,
                "seed": ev.run.seed,
                "inputs": ev.run.inputs,
                "input_shapes": [list(s) for s in ev.run.input_shapes],
                "loss": ev.run.loss,
                "steps": ev.run.steps,
                "optimizer": ev.run.optimizer,
                "lr": ev.run.lr,
                "batch_size": ev.run.batch_size,
                "fixed_batch": ev.run.fixed_batch,
                "checks": list(self.checks_run),
                "checks_not_judged": [{"id": check_id, "reason": reason} for check_id, reason in self.checks_not_judged],
                "notes": list(self.notes),
            },
            "layers": [_layer_dict(r, run) for r, run in _pair_run_records(ev)],
            "loss": None
            if loss is None
            else {
                "initial": loss.initial,
                "expected_initial": loss.expected_initial,
                "final": loss.final,
                "history": list(loss.history),
                "kind": loss.kind,
                "num_classes": loss.num_classes,
                "gradient_norms": list(loss.gradient_norms),
            },
            "output": None if ev.output is None else {
                "shape": list(ev.output.shape),
                "min": ev.output.min,
                "max": ev.output.max,
                "row_sum_error": ev.output.row_sum_error,
                "zero_fraction": ev.output.zero_fraction,
            },
            "recurrent": [
                {"name": flow.name, "type": flow.type, "steps": flow.steps, "forget_bias": flow.forget_bias,
                 "step_gradient_norms": list(flow.step_gradient_norms)}
                for flow in ev.recurrent
            ],
            "findings": [f.to_dict() for f in self.findings],
            "summary": {
                "status": self.status,
                "errors": self.errors,
                "warnings": self.warnings,
                "infos": self.infos,
            },
        }


def _pair_run_records(ev: Evidence):
    by_name = {r.name: r for r in ev.run_layers}
    return [(r, by_name.get(r.name)) for r in ev.layers]


def _layer_dict(record, run_record) -> dict[str, object]:
    """One `layers[]` entry: the contract's fields first, the extras after them."""
    act = record.activation
    grad = record.gradient
    weight = record.weight
    update_source = run_record if run_record is not None else record
    return {
        "name": record.name,
        "type": record.type,
        "index": record.index,
        "activation": {
            "mean": act.mean,
            "std": act.std,
            "dead_fraction": act.dead_fraction,
            "saturated_fraction": act.saturated_fraction,
            "nonfinite": act.nonfinite,
            "dead_fraction_run": run_record.activation.dead_fraction if run_record else None,
            # the share dead in the run's last step: the number dead-relu quotes for units that died
            "dead_fraction_last_step": run_record.activation.dead_fraction_last if run_record else None,
        },
        "gradient": {
            "norm": grad.norm,
            "rms": grad.rms,
            "output_rms": grad.output_rms,
            "nonfinite": grad.nonfinite,
        },
        "weight": None
        if weight is None
        else {
            "std": weight.std,
            "expected_std": weight.expected_std,
            "scheme": weight.scheme,
            "fan_in": weight.fan_in,
            "fan_out": weight.fan_out,
            "normalized": weight.normalized,
            "frozen": weight.frozen,
            "bias_mean": weight.bias_mean,
            "bias_std": weight.bias_std,
        },
        "update_ratio": update_source.update_ratio,
        "kind": record.kind,
        "source": record.source,
        "activation_kind": record.activation_kind,
        "followed_by": record.followed_by,
        "calls": record.calls,
        "output_shape": list(record.output_shape) if record.output_shape else None,
    }
