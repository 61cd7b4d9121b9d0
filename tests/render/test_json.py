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
    # a number that is not finite is null, never a string where a number belongs ...
    assert layer["activation"]["mean"] is None
    assert layer["activation"]["std"] is None
    assert layer["gradient"]["norm"] is None
    assert data["loss"]["history"] == [2.3, None, None]
    assert data["findings"][-1]["evidence"]["value"] is None
    # ... and what it was is said once, by JSON pointer
    said = data["nonfinite_values"]
    assert said["/layers/0/activation/mean"] == "nan"
    assert said["/layers/0/activation/std"] == "inf"
    assert said["/layers/0/gradient/norm"] == "-inf"
    assert said["/loss/history/1"] == "inf" and said["/loss/history/2"] == "nan"
    assert said["/findings/3/evidence/value"] == "nan"
    assert _no_strings_where_numbers_are(data)


def _no_strings_where_numbers_are(data) -> bool:
    """Every number-bearing field of the report is a number or null (strings only in text fields)."""
    for layer in data["layers"]:
        for group in ("activation", "gradient"):
            for key, value in layer[group].items():
                assert value is None or isinstance(value, (int, float)), (group, key, value)
    assert all(v is None or isinstance(v, (int, float)) for v in data["loss"]["history"])
    return True


def test_json_is_to_dict_for_finite_reports(sick_report):
    assert _strict_loads(render_json(sick_report)) == json.loads(json.dumps(sick_report.to_dict()))


def test_contract_fields_present(sick_report):
    data = _strict_loads(render_json(sick_report))
    assert data["schema_version"] == 1
    assert data["summary"] == {"status": "error", "errors": 1, "warnings": 1, "infos": 1}
    assert [layer["name"] for layer in data["layers"]][:2] == ["net.0", "net.1"]
    fix = data["findings"][2]["fixes"][0]
    assert fix["verified"] == {"metric": "ratio_first_last", "before": 1.5e-7, "after": 0.41, "resolved": True,
                               "loss_before": 2.3021, "loss_after": 1.4693, "loss_worse": False}


def test_a_nonfinite_loss_after_a_fix_is_null(sick_report):
    from dataclasses import replace

    finding = sick_report.findings[2]
    fix = finding.fixes[0]
    diverged = replace(fix.verified, resolved=False, loss_after=math.nan, loss_worse=True)
    report = replace(sick_report, findings=(*sick_report.findings[:2],
                                            finding.with_fixes((replace(fix, verified=diverged),))))
    data = _strict_loads(render_json(report))
    verified = data["findings"][2]["fixes"][0]["verified"]
    assert verified["loss_after"] is None and verified["loss_before"] == 2.3021
    assert data["nonfinite_values"]["/findings/2/fixes/0/verified/loss_after"] == "nan"


@pytest.mark.parametrize("value, spelled", [(math.nan, "nan"), (math.inf, "inf"), (-math.inf, "-inf")])
def test_finite_json_scalars(value, spelled):
    assert finite_json({"x": (1.5, value)}) == {"x": [1.5, None], "nonfinite_values": {"/x/1": spelled}}


def test_finite_json_leaves_finite_data_alone():
    assert finite_json({"x": (1.5,), "a/b": {"c~": 2}}) == {"x": [1.5], "a/b": {"c~": 2}}
    assert finite_json({"a/b": {"c~": math.nan}})["nonfinite_values"] == {"/a~1b/c~0": "nan"}
