"""Every bundled sample gives the findings it was built to show, and the healthy ones stay clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import diagnose

SAMPLES = Path(__file__).resolve().parent.parent / "samples"

# sample -> (check ids that must fire at error/warning, the worst severity expected)
EXPECTED = {
    "healthy_mlp": (set(), "healthy"),
    "healthy_resnet": (set(), "healthy"),
    "deep_sigmoid": ({"vanishing-gradients"}, "error"),
    "deep_relu_xavier": ({"vanishing-gradients", "activation-variance-collapse", "poor-initialization"}, "error"),
    "dead_relu": ({"dead-relu"}, "error"),
    "saturated_tanh": ({"saturated-activations", "poor-initialization"}, None),
    "bottleneck": ({"bottleneck-layer"}, "warning"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sample_findings(name):
    ids, status = EXPECTED[name]
    report = diagnose.check(str(SAMPLES / f"{name}.pt2"))
    found = {f.id for f in report.findings if f.severity.value in ("error", "warning")}
    assert ids <= found, f"{name}: expected {ids}, found {found}"
    if not ids:
        assert found == set(), f"{name} is healthy but got {found}"
    if status is not None:
        assert report.status == status


@pytest.mark.parametrize("name", ["healthy_mlp", "healthy_resnet"])
def test_healthy_samples_stay_clean_through_a_short_run(name):
    report = diagnose.check(str(SAMPLES / f"{name}.pt2"), steps=20)
    assert report.status == "healthy", [(f.id, f.message) for f in report.findings]


def test_samples_are_regenerated_deterministically(tmp_path):
    # Run the script the way the README says: class names recorded in the archive depend on it.
    script = SAMPLES / "make_samples.py"
    subprocess.run(
        [sys.executable, str(script), "dead_relu", "--out", str(tmp_path)], check=True, capture_output=True
    )
    assert (tmp_path / "dead_relu.pt2").read_bytes() == (SAMPLES / "dead_relu.pt2").read_bytes()
