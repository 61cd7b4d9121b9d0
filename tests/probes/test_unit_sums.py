"""`unit_sums` stands in for per-unit maxima of non-negative outputs: positive exactly when a unit fired."""

from __future__ import annotations

import pytest
import torch

from probes.stats import unit_sums

LAYOUTS = [
    ((7,), 0),  # a single sample: every element is a unit
    ((16, 9), 1),  # MLP features
    ((4, 6, 11), 1),  # Conv1d channels
    ((4, 6, 11), 2),  # sequence features
    ((3, 5, 7, 7), 1),  # Conv2d channels
    ((2, 4, 3, 5, 5), 1),  # Conv3d channels
]


def _relu_output(shape, dtype=torch.float32) -> torch.Tensor:
    y = torch.relu(torch.randn(shape, generator=torch.Generator().manual_seed(len(shape)))).to(dtype)
    return y


def _reference_alive(y: torch.Tensor, dim: int) -> torch.Tensor:
    other = tuple(d for d in range(y.dim()) if d != dim)
    maxima = y.float().amax(dim=other) if other else y.float()
    return ~(maxima <= 0)  # NaN counts alive


@pytest.mark.parametrize("shape,dim", LAYOUTS)
def test_sums_are_positive_exactly_for_units_that_fired_and_add_up_to_the_total(shape, dim):
    y = _relu_output(shape)
    dead = [0, 2] if shape[dim] > 2 else [0]
    y.select(dim, dead[0]).zero_()
    if len(dead) > 1:
        y.select(dim, dead[1]).zero_()
    sums = unit_sums(y, dim)
    assert sums.shape == (shape[dim],)
    assert torch.equal(~(sums <= 0), _reference_alive(y, dim))
    assert sums.sum().item() == pytest.approx(y.double().sum().item(), rel=1e-6)


def test_non_contiguous_half_precision_and_nan_outputs():
    y = _relu_output((6, 5, 4, 4)).permute(0, 1, 3, 2)  # not contiguous
    y[:, 3] = 0
    y[1, 4, 0, 0] = float("nan")
    for data in (y, y.half()):
        sums = unit_sums(data, 1)
        assert sums.dtype == torch.float32
        assert torch.equal(~(sums <= 0), _reference_alive(data, 1))
        assert sums[4].isnan() and sums[3] == 0


def test_one_dimensional_sums_do_not_alias_the_output():
    y = _relu_output((5,))
    sums = unit_sums(y, 0)
    y.zero_()
    assert sums.sum() > 0


def test_session_dead_fraction_and_mean_of_large_relu_maps_over_several_forwards():
    """Outputs above the hold size take the per-call path (unit sums) on every call."""
    import probes
    from probes.batched import HOLD_MAX

    torch.manual_seed(5)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU())
    with torch.no_grad():
        model[0].bias[:3] = -50.0  # three channels that never fire
        model[0].bias[3] = -2.5  # one that fires only now and then
    xs = [torch.randn(6, 3, 24, 24) for _ in range(3)]
    assert 6 * 8 * 24 * 24 > HOLD_MAX
    with probes.attach(model) as session:
        for x in xs:
            model(x)
    record = {r.name: r for r in session.collect()}["1"]
    with torch.no_grad():
        outputs = torch.cat([model(x) for x in xs])
    fired = (outputs > 0).any(dim=(0, 2, 3))
    assert record.activation.dead_fraction == pytest.approx(1 - fired.double().mean().item())
    last = (model(xs[-1]) > 0).any(dim=(0, 2, 3))
    assert record.activation.dead_fraction_last == pytest.approx(1 - last.double().mean().item())
    assert record.activation.mean == pytest.approx(outputs.double().mean().item(), rel=1e-5)
