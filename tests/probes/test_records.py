"""The record classes: plain frozen data, whichever constructor built them."""

from __future__ import annotations

import dataclasses

import pytest

from probes.records import ActivationStats, GradientStats, LayerRecord, WeightStats

CLASSES = [ActivationStats, GradientStats, WeightStats, LayerRecord]


def _distinct_values(cls) -> dict:
    """A value per field that differs from its default, so a field set in the wrong slot shows."""
    values = {}
    for i, f in enumerate(dataclasses.fields(cls)):
        if f.name in ("activation", "gradient", "weight"):
            values[f.name] = {
                "activation": ActivationStats(mean=float(i)),
                "gradient": GradientStats(norm=float(i)),
                "weight": WeightStats(
                    std=1.0, mean=0.0, expected_std=None, scheme=None, fan_in=i, fan_out=1,
                    normalized=False, frozen=False, numel=4,
                ),
            }[f.name]
        elif f.name in ("output_shape", "params_without_gradient", "update_ratios"):
            values[f.name] = (i,)
        elif f.name in ("normalized", "frozen"):
            values[f.name] = True
        else:
            values[f.name] = f"v{i}" if f.type in ("str", "str | None") else i + 0.5
    return values


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_positional_construction_equals_keyword_construction(cls):
    values = _distinct_values(cls)
    by_keyword = cls(**values)
    by_position = cls._positional(*values.values())
    assert by_position == by_keyword
    for name, value in values.items():
        assert getattr(by_position, name) == value
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(by_position, next(iter(values)), None)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_keyword_constructor_keeps_defaults_and_rejects_positionals(cls):
    required = {f.name: _distinct_values(cls)[f.name] for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    record = cls(**required)
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            assert getattr(record, f.name) == f.default
        elif f.default_factory is not dataclasses.MISSING:
            assert getattr(record, f.name) == f.default_factory()
    with pytest.raises(TypeError):
        cls(*required.values()) if required else cls(1.0)


def test_step_values_is_a_fixed_snapshot_of_a_growing_list():
    from probes.records import StepValues

    values = [0.1, 0.2, 0.3]
    view = StepValues(values)
    values.append(0.4)  # later steps do not show in an earlier snapshot
    assert len(view) == 3 and list(view) == [0.1, 0.2, 0.3]
    assert view == (0.1, 0.2, 0.3) and view == [0.1, 0.2, 0.3] and view != (0.1, 0.2)
    assert view[-1] == 0.3 and view[1:] == (0.2, 0.3)
    with pytest.raises(IndexError):
        view[3]
    with pytest.raises(TypeError):
        view[0] = 1.0
    assert hash(view) == hash((0.1, 0.2, 0.3)) and repr(view) == "(0.1, 0.2, 0.3)"


def test_records_with_step_values_round_trip_as_plain_data():
    from probes.records import StepValues

    record = LayerRecord(name="fc", type="Linear", index=0, kind="linear", update_ratios=StepValues([0.5, 0.25]))
    assert dataclasses.asdict(record)["update_ratios"] == (0.5, 0.25)
    assert record.to_dict()["update_ratios"] == [0.5, 0.25]
    assert LayerRecord.from_dict(record.to_dict()) == record
