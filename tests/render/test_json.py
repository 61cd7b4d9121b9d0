"""The JSON renderer: strict JSON even when the model produced NaN/Inf, same content as to_dict."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from diagnose.findings import Finding
from diagnose.render import render_json
from diagnose.render.json import finite_json
from diagnose.severity import Severity
from probes.records import ActivationStats, GradientStats

from conftest import build_sick_report


def _strict_loads(text: str) -> object:
    def reject(constant: str) -> object:
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=reject)


def _diverged_report():
    report = build_sick_report()
    ev = report.evidence
    first = replace(
        ev.layers[0],
        activation=ActivationStats(mean=math.nan, std=math.inf, nonfinite=12),
        gradient=GradientStats(norm=-math.inf, rms=math.nan, output_rms=math.nan, nonfinite=3),
    )
    loss = replace(ev.loss, initial=math.nan, final=math.inf, history=(2.3, math.inf, math.nan))
    evidence = replace(ev, layers=(first, *ev.layers[1:]), loss=loss)
    finding = Finding(id="non-finite", severity=Severity.ERROR, title="NaN in the loss",
                      message="the loss became NaN at step 2", evidence={"first_step": 2, "value": math.nan})
    return replace(report, evidence=evidence, findings=(*report.findings, finding))


def test_nan_and_inf_give_strict_json():
    data = _strict_loads(render_json(_diverged_report()))
    layer = data["layers"][0]
    assert layer["activation"]["mean"] == "nan"
    assert layer["activation"]["std"] == "inf"
    assert layer["gradient"]["norm"] == "-inf"
    assert data["loss"]["history"] == [2.3, "inf", "nan"]
    assert data["findings"][-1]["evidence"]["value"] == "nan"


def test_json_is_to_dict_for_finite_reports(sick_report):
    assert _strict_loads(render_json(sick_report)) == json.loads(json.dumps(sick_report.to_dict()))


def test_contract_fields_present(sick_report):
    data = _strict_loads(render_json(sick_report))
    assert data["schema_version"] == 1
    assert data["summary"] == {"status": "error", "errors": 1, "warnings": 1, "infos": 1}
    assert [layer["name"] for layer in data["layers"]][:2] == ["net.0", "net.1"]
    fix = data["findings"][2]["fixes"][0]
    assert fix["verified"] == {"metric": "ratio_first_last", "before": 1.5e-7, "after": 0.41, "resolved": True}


@pytest.mark.parametrize("value, expected", [(math.nan, "nan"), (math.inf, "inf"), (-math.inf, "-inf"), (1.5, 1.5)])
def test_finite_json_scalars(value, expected):
    assert finite_json({"x": (value,)}) == {"x": [expected]}
