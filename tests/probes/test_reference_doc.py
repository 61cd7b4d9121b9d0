"""docs/probes.md is written by hand: these tests fail when the code it describes moves on."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from probes import activations, batched, targets, updates, weights
from probes.records import ActivationStats, GradientStats, LayerRecord, WeightStats

DOC = (Path(__file__).resolve().parents[2] / "docs" / "probes.md").read_text(encoding="utf-8")


def _documented_names() -> set[str]:
    """Every `name` in backticks in the first column of a table row (`a`, `b` counts both)."""
    names = set()
    for line in DOC.splitlines():
        if line.startswith("| `"):
            first_cell = line.split("|")[1]
            names.update(re.findall(r"`([a-z_]+)`", first_cell))
    return names


@pytest.mark.parametrize("record", [LayerRecord, ActivationStats, GradientStats, WeightStats],
                         ids=lambda c: c.__name__)
def test_every_record_field_is_documented(record):
    missing = {f.name for f in dataclasses.fields(record)} - _documented_names()
    assert missing == set(), f"document {sorted(missing)} of {record.__name__} in docs/probes.md"


def test_saturation_bands_are_the_documented_ones():
    # (low, high, inclusive) as in probes/targets.py, and the band as the doc's table writes it
    documented = {
        "sigmoid": ((0.01, 0.99, False), "y < 0.01 or y > 0.99"),
        "tanh": ((-0.99, 0.99, False), "\\|y\\| > 0.99"),
        "softsign": ((-0.99, 0.99, False), "\\|y\\| > 0.99"),
        "hardtanh": ((-1.0, 1.0, True), "y <= -1 or y >= 1"),
        "hardsigmoid": ((0.0, 1.0, True), "y <= 0 or y >= 1"),
    }
    assert targets.SATURATION_BOUNDS == {family: bounds for family, (bounds, _) in documented.items()}
    for family, (_, band) in documented.items():
        assert f"| `{family}` | {band}" in DOC, family


def test_dead_capable_families_are_the_documented_ones():
    assert activations.DYING_FAMILIES == {"relu", "relu6"}
    assert "ReLU and ReLU6 outputs only" in DOC


def test_sampling_constants_are_the_documented_ones():
    weight_row = f"| weight `std`, `mean` (probes/weights.py) | {weights.SAMPLE_ABOVE} elements | " \
                 f"{weights.SAMPLE_BLOCKS} runs of {weights.SAMPLE_BLOCK} (k = {weights.SAMPLE_BLOCKS * weights.SAMPLE_BLOCK})"
    update_row = f"| update ratios (probes/updates.py) | {updates.SUBSAMPLE_ABOVE} elements | " \
                 f"{updates.SAMPLE_BLOCKS} runs of {updates.SAMPLE_BLOCK} (k = {updates.SAMPLE_BLOCKS * updates.SAMPLE_BLOCK})"
    assert weight_row in DOC
    assert update_row in DOC
    assert f"outputs of at most {batched.HOLD_MAX} elements" in DOC
    assert f"at most {batched.HOLD_CAP_ITEMS} at a time" in DOC


def test_every_torch_activation_module_is_listed():
    from torch import nn

    listed = [name for name in activations.ACTIVATION_MODULES if hasattr(nn, name)]
    assert len(listed) == 19
    assert [name for name in listed if f"`{name}`" not in DOC] == []
