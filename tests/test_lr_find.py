"""`diagnose lr-find`: the sweep, the suggestion against a known edge of stability, the verifying runs,
the user's model left alone, the JSON, the text plot and the exit codes."""

from __future__ import annotations

import json
import math
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

import diagnose
from diagnose import cli, lr_curve
from diagnose import range_test
from diagnose.range_test import Candidate, LRFindResult, exponential_lrs
from diagnose.render.lr_find import render_lr_find_json, render_lr_find_text
from test_help_without_torch import _run as run_in_fresh_interpreter

N, D = 64, 8


def linear_regression(condition: float, seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor, float]:
    """A linear model on features of spread scales, and its SGD edge of stability 2/λ_max.

    In float64, so the loss has no rounding wobble: on a quadratic a gradient step with lr < 2/λ_max
    never raises the loss (the descent lemma), which the bounds below rely on.
    """
    generator = torch.Generator().manual_seed(seed)
    scales = torch.logspace(0, math.log10(condition), D, dtype=torch.float64)
    x = torch.randn(N, D, generator=generator, dtype=torch.float64) * scales
    y = x @ torch.randn(D, 1, generator=generator, dtype=torch.float64)
    y = y + 0.1 * torch.randn(N, 1, generator=generator, dtype=torch.float64)
    torch.manual_seed(0)
    model = nn.Linear(D, 1).double()
    # mse_loss(w.x + b, y) averages over N: its Hessian in (w, b) is (2/N) AᵀA with A = [x, 1].
    design = np.concatenate([x.numpy(), np.ones((N, 1))], axis=1)
    largest = np.linalg.eigvalsh(2.0 / N * design.T @ design)[-1]
    return model, x, y, 2.0 / largest


# ---------------------------------------------------------------------------------------------
# The sweep


def test_sweep_lrs_are_exponential_from_min_to_max():
    lrs = exponential_lrs(1e-6, 1.0, 61)
    ratios = np.array(lrs[1:]) / np.array(lrs[:-1])
    assert lrs[0] == 1e-6 and lrs[-1] == 1.0
    np.testing.assert_allclose(ratios, 10 ** 0.1, rtol=1e-9)


def test_the_sweep_steps_through_the_exponential_lrs_until_it_diverges():
    model, x, y, _ = linear_regression(10.0)
    result = diagnose.lr_find(model, x, targets=y, loss="mse", min_lr=1e-6, max_lr=10.0, steps=50, device="cpu")
    planned = exponential_lrs(1e-6, 10.0, 50)
    assert result.lrs == planned[: len(result.lrs)]
    assert result.stopped is not None and len(result.lrs) < 50  # lr 10 is far past this problem's edge
    assert len(result.losses) == len(result.smoothed) == len(result.lrs)


def test_the_loss_after_each_sweep_step_matches_plain_torch():
    model, x, y, _ = linear_regression(10.0)
    result = diagnose.lr_find(model, x, targets=y, loss="mse", min_lr=1e-4, max_lr=1.0, steps=12, device="cpu")
    reference = nn.Linear(D, 1).double()
    reference.load_state_dict(model.state_dict())
    optimizer = torch.optim.SGD(reference.parameters(), lr=1.0)
    expected = []
    for lr in result.lrs:
        optimizer.param_groups[0]["lr"] = lr
        optimizer.zero_grad()
        F.mse_loss(reference(x), y).backward()
        optimizer.step()
        expected.append(float(F.mse_loss(reference(x), y).detach()))
    np.testing.assert_allclose(result.losses, expected, rtol=1e-9)


def test_the_users_model_is_left_exactly_as_it_was():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))
    model.eval()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    rng = torch.get_rng_state()
    inputs = torch.randn(32, 6, generator=torch.Generator().manual_seed(1))

    diagnose.lr_find(model, inputs, steps=20, verify_steps=3, device="cpu")

    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)  # BN running stats included
    assert not model.training
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


# ---------------------------------------------------------------------------------------------
# The suggestion, where the right LR is known


@pytest.mark.parametrize("condition", [3.0, 10.0, 100.0])
def test_the_suggestion_lands_below_the_edge_of_stability_on_linear_regression(condition):
    model, x, y, edge = linear_regression(condition)
    result = diagnose.lr_find(model, x, targets=y, loss="mse", optimizer="sgd", device="cpu")
    ratio = 10 ** (8 / 99)  # the default sweep's step: 1e-7 to 10 in 100 steps
    # Below: the sweep's minimum lies past the edge (the smoothed minimum)...
    assert result.suggested_lr < edge
    # ...and no lower than the edge / (EDGE_OVERSHOOT x one sweep step): below the edge every step
    # lowers the loss (descent lemma), so the raw loss cannot turn up, nor the smoothed one bottom
    # out, before the step that crosses it.
    assert result.suggested_lr >= edge / (lr_curve.EDGE_OVERSHOOT * ratio)
    # The verified LR: above 1.5x the edge the sharpest direction doubles every step (|1 - 2c| >= 2),
    # 2^20 over a 20-step run, so no run there can be the best.
    assert result.verified.lr < 1.5 * edge


def test_a_verifying_run_is_the_checks_short_run_in_plain_torch():
    model, x, y, _ = linear_regression(10.0)
    result = diagnose.lr_find(model, x, targets=y, loss="mse", optimizer="momentum", device="cpu")
    reference = nn.Linear(D, 1).double()
    for candidate in result.candidates:
        reference.load_state_dict(model.state_dict())
        optimizer = torch.optim.SGD(reference.parameters(), lr=candidate.lr, momentum=0.9)
        for _ in range(result.verify_steps):
            optimizer.zero_grad()
            F.mse_loss(reference(x), y).backward()
            optimizer.step()
        expected = float(F.mse_loss(reference(x), y).detach())
        if math.isfinite(expected):
            assert candidate.loss_after == pytest.approx(expected, rel=1e-9)
    assert result.verified.loss_after == min(c.loss_after for c in result.candidates if math.isfinite(c.loss_after))


def test_the_bracket_follows_the_runs_past_its_edge(monkeypatch):
    # Training improves up to lr 0.5 and gets worse above it: a suggestion of 0.01 is 50x low.
    monkeypatch.setattr(range_test, "short_run_loss",
                        lambda module, workload, lr, spec=None: abs(math.log10(lr / 0.5)))
    workload = range_test.Workload(batch=None, loss="mse", steps=20, optimizer="sgd", lr=0.001, seed=0,
                                   device=torch.device("cpu"))
    runs = range_test._verify(nn.Linear(1, 1), workload, None, range_test._bracket(0.01, 0.001), extend=0.01)
    tried = sorted(round(c.lr, 6) for c in runs)
    assert tried == [0.001, 0.003333, 0.01, 0.03, 0.09, 0.27]  # ×9 and ×27: the cap of two extensions
    best = min(runs, key=range_test._rank)
    assert best.lr == pytest.approx(0.27) and best.role == "suggested x 27"


def test_the_bracket_stops_following_once_a_run_is_worse(monkeypatch):
    monkeypatch.setattr(range_test, "short_run_loss",
                        lambda module, workload, lr, spec=None: abs(math.log10(lr / 0.002)))
    workload = range_test.Workload(batch=None, loss="mse", steps=20, optimizer="sgd", lr=0.01, seed=0,
                                   device=torch.device("cpu"))
    runs = range_test._verify(nn.Linear(1, 1), workload, None, range_test._bracket(0.1, 0.01), extend=0.1)
    # 0.1/3 won the bracket; 0.1/9 = 0.011 was better still; 0.1/27 = 0.0037 better again (the cap)
    assert sorted(round(c.lr, 5) for c in runs) == [0.0037, 0.01, 0.01111, 0.03333, 0.1, 0.3]
    runs = range_test._verify(nn.Linear(1, 1), workload, None, range_test._bracket(0.01, 0.5), extend=0.01)
    # 0.01/3 won; 0.01/9 = 0.0011 is worse than it: no further run
    assert sorted(round(c.lr, 5) for c in runs) == [0.00111, 0.00333, 0.01, 0.03, 0.5]


# ---------------------------------------------------------------------------------------------
# The curve reader, against independent computations


def test_smoothing_is_a_bias_corrected_ema():
    losses = [3.0, 2.0, 2.5, 1.0]
    beta = 0.7
    average, expected = 0.0, []
    for i, loss in enumerate(losses, start=1):
        average = beta * average + (1 - beta) * loss
        expected.append(average / (1 - beta**i))
    assert lr_curve.smooth(losses, beta) == pytest.approx(expected)
    assert lr_curve.smooth([2.0] * 5, 0.98) == pytest.approx([2.0] * 5)  # no pull toward zero


def test_the_smoother_calls_divergence_past_four_times_its_best():
    smoother = lr_curve.Smoother(0.0)
    for loss in (2.0, 1.0, 3.9):
        assert not smoother.diverged(smoother.add(loss))
    assert smoother.diverged(smoother.add(4.1))
    assert smoother.diverged(smoother.add(math.nan))


def test_suggest_divides_the_smoothed_minimum_and_needs_a_decrease():
    lrs = exponential_lrs(1e-4, 1.0, 9)
    smoothed = [2.0, 1.9, 1.5, 0.8, 0.3, 0.2, 0.5, 1.5, 9.0]
    suggestion = lr_curve.suggest(lrs, smoothed, initial=2.0)
    assert suggestion.minimum_lr == lrs[5]
    assert suggestion.lr == pytest.approx(lrs[5] / lr_curve.EDGE_OVERSHOOT)
    assert not suggestion.still_falling
    assert lr_curve.suggest(lrs, [2.0] * 9, initial=2.0) is None
    assert lr_curve.suggest(lrs, [1.995] * 9, initial=2.0) is None  # within 1%: not a decrease


def test_the_reference_steepest_slope_rule_is_torch_lr_finders():
    lrs = exponential_lrs(1e-6, 1.0, 40)
    losses = [2.0 - 1.5 / (1 + math.exp(-(i - 25) / 2.0)) for i in range(40)]
    # torch-lr-finder: smoothed = 0.05 * loss + 0.95 * previous; argmin of np.gradient over [10:-5]
    smoothed = [losses[0]]
    for loss in losses[1:]:
        smoothed.append(0.05 * loss + 0.95 * smoothed[-1])
    expected = lrs[10:-5][int(np.gradient(np.array(smoothed[10:-5])).argmin())]
    assert lr_curve.steepest_slope(lrs, losses) == expected


def test_the_reference_valley_rule_is_fastais():
    # a falling run from index 4 to 13 of the points fastai keeps: valley picks a point near its middle
    lrs = exponential_lrs(1e-6, 1.0, 30)
    losses = [2.0, 2.1, 2.0, 2.1] + [2.0 - 0.2 * i for i in range(10)] + [0.3 + 0.5 * i for i in range(16)]
    kept = list(zip(lrs, lr_curve.smooth(losses, lr_curve.FASTAI_BETA)))[3:-5]
    values = [v for _, v in kept]
    # fastai's `valley`: longest strictly decreasing subsequence, then start + len/3 + len/6
    n = len(values)
    longest = [1] * n
    start = end = 0
    for i in range(1, n):
        for j in range(i):
            if values[i] < values[j] and longest[i] < longest[j] + 1:
                longest[i] = longest[j] + 1
            if longest[end] < longest[i]:
                end, start = i, i - longest[i]
    sections = (end - start) / 3
    assert lr_curve.valley(lrs, losses) == kept[start + int(sections) + int(sections / 2)][0]


# ---------------------------------------------------------------------------------------------
# Results, JSON, the text report


def _result(**changes) -> LRFindResult:
    lrs = exponential_lrs(1e-7, 10.0, 100)[:80]
    losses = tuple(2.3 - 2.2 / (1 + math.exp(-(i - 60) / 4.0)) for i in range(79)) + (math.nan,)
    fields = dict(
        source="tiny.py:build", optimizer="sgd", loss="cross-entropy", seed=0, device="cpu",
        input_shapes=((32, 64),), inputs="synthetic", min_lr=1e-7, max_lr=10.0, sweep_steps=100, lrs=lrs,
        losses=losses, smoothed=lr_curve.smooth(losses[:-1], 0.68) + [math.nan], initial_loss=2.3,
        stopped="the loss became nan at lr 0.2", suggested_lr=0.005, rule="the rule",
        candidates=(
            Candidate(lr=0.001667, loss_after=1.9, role="suggested / 3"),
            Candidate(lr=0.005, loss_after=0.7, role="suggested"),
            Candidate(lr=0.01, loss_after=0.9, role="baseline"),
            Candidate(lr=0.015, loss_after=math.nan, role="suggested x 3"),
        ),
        verify_steps=20, baseline_lr=0.01,
    )
    fields.update(changes)
    fields["smoothed"] = tuple(fields["smoothed"])
    return LRFindResult(**fields)


def _numbers_are_never_strings(value, path="") -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if key not in ("rule", "stopped", "role", "source", "name", "version", "device", "inputs", "loss",
                           "optimizer", "notes", "nonfinite_values", "model", "tool", "fixed_batch"):
                _numbers_are_never_strings(item, f"{path}/{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _numbers_are_never_strings(item, f"{path}/{i}")
    else:
        assert value is None or isinstance(value, (int, float)) and not isinstance(value, bool), path


def test_json_has_the_contracts_keys_and_null_for_non_finite_numbers():
    data = json.loads(render_lr_find_json(_result()))
    assert data["schema_version"] == 1
    assert {"suggested_lr", "rule", "curve", "verified"} <= data.keys()
    assert {"lr", "loss"} <= data["curve"].keys()
    assert data["verified"] == {"lr": 0.005, "loss_after": 0.7, "baseline_lr": 0.01, "baseline_loss_after": 0.9,
                                "steps": 20}
    assert data["curve"]["loss"][-1] is None and data["candidates"][-1]["loss_after"] is None
    assert data["nonfinite_values"]["/curve/loss/79"] == "nan"
    _numbers_are_never_strings(data)


def test_without_a_suggestion_the_json_says_null_and_the_exit_code_is_1():
    result = _result(suggested_lr=None, rule="no suggestion: flat",
                     candidates=(Candidate(lr=0.01, loss_after=2.3, role="baseline"),))
    data = json.loads(render_lr_find_json(result))
    assert data["suggested_lr"] is None and data["verified"]["lr"] is None
    assert data["verified"]["baseline_loss_after"] == 2.3
    assert result.exit_code == 1 and _result().exit_code == 0


@pytest.mark.parametrize("ascii_only", [False, True])
def test_the_text_report_fits_80_columns_and_marks_the_lrs(ascii_only):
    text = render_lr_find_text(_result(), width=200, ascii_only=ascii_only)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    if ascii_only:
        assert text.isascii()
    axis = next(i for i, line in enumerate(lines) if "1e-7" in line and "10" in line)
    markers = lines[axis + 1]
    # S at 0.005 and B at 0.01: log-positions on the same axis as the decade labels
    decade = lines[axis].index("1e-3") + 2, lines[axis].index("1e-2") + 2
    assert decade[0] < markers.index("V") < decade[1]  # the verified (= suggested) 0.005
    assert markers.index("B") in range(decade[1] - 1, decade[1] + 2)
    table = text[text.index("Short runs"):]
    assert "0.005" in table and "<- verified" in table and "diverged" in table and "baseline" in table


# ---------------------------------------------------------------------------------------------
# The figure (--plot; extra diagnose[plot])


def _scatter(ax, label: str) -> list[tuple[float, float]]:
    for collection in ax.collections:
        if collection.get_label() == label:
            return [(float(x), float(y)) for x, y in collection.get_offsets()]
    raise AssertionError(f"no series {label!r} in {[c.get_label() for c in ax.collections]}")


def test_the_figure_draws_the_sweep_the_runs_and_the_three_lrs():
    pytest.importorskip("matplotlib")
    from diagnose.render.figures import lr_find_figure

    result = _result()
    ax = lr_find_figure(result).axes[0]
    assert ax.get_xscale() == "log"
    # the raw sweep without its non-finite last point, and the finite runs at their LRs
    sweep = _scatter(ax, "sweep: loss after one step at this lr")
    assert [lr for lr, _ in sweep] == pytest.approx(list(result.lrs[:-1]))
    assert [loss for _, loss in sweep] == pytest.approx(list(result.losses[:-1]))
    runs = _scatter(ax, "short run: loss after 20 steps at this lr")
    assert [value for point in runs for value in point] == pytest.approx([0.001667, 1.9, 0.005, 0.7, 0.01, 0.9])
    # vertical lines at the current, suggested and verified LRs, named in the legend
    lines = {line.get_label(): line.get_xdata()[0] for line in ax.lines if line.get_label().startswith(
        ("your --lr", "suggested", "verified"))}
    assert lines == {"your --lr: lr 0.01": 0.01, "suggested: lr 0.005": 0.005, "verified: lr 0.005": 0.005}
    # the diverged run (×3) is marked on the top edge, not dropped
    legend = [text.get_text() for text in ax.figure.legends[0].get_texts()]
    assert "short run diverged (top edge)" in legend


def test_the_figure_without_a_suggestion_marks_only_the_current_lr():
    pytest.importorskip("matplotlib")
    from diagnose.render.figures import lr_find_figure

    result = _result(suggested_lr=None, rule="no suggestion: flat",
                     candidates=(Candidate(lr=0.01, loss_after=2.3, role="baseline"),))
    ax = lr_find_figure(result).axes[0]
    assert [line.get_label() for line in ax.lines if line.get_label().startswith(("your", "sugg", "verif"))] == [
        "your --lr: lr 0.01"]


# ---------------------------------------------------------------------------------------------
# The command line


FACTORY = """
import torch
from torch import nn


class {name}(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(10, 32)
        self.out = nn.Linear(32, 4)

    def forward(self, x):
        return {output}


def build():
    torch.manual_seed(0)
    return {name}(), (torch.randn(16, 10),)
"""


def _factory(tmp_path, name: str, output: str, frozen: bool = False) -> str:
    path = tmp_path / f"{name.lower()}.py"
    source = FACTORY.format(name=name, output=output)
    if frozen:
        source += "\n\n_build = build\n\ndef build():\n    model, inputs = _build()\n" \
                  "    model.requires_grad_(False)\n    return model, inputs\n"
    path.write_text(textwrap.dedent(source))
    return f"{path}:build"


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_cli_writes_the_report_and_json_and_exits_0(runner, tmp_path):
    model = _factory(tmp_path, "Tiny", "self.out(torch.relu(self.hidden(x)))")
    out = tmp_path / "lr.json"
    result = runner.invoke(cli.app, ["lr-find", model, "--steps", "40", "--verify-steps", "5", "--json", str(out),
                                     "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "Suggested lr" in result.output and "Verified lr" in result.output
    data = json.loads(out.read_text())
    assert data["verified"]["steps"] == 5 and len(data["curve"]["lr"]) == len(data["curve"]["loss"])
    assert data["suggested_lr"] > 0
    _numbers_are_never_strings(data)


def test_cli_plot_writes_the_figure(runner, tmp_path):
    pytest.importorskip("matplotlib")
    model = _factory(tmp_path, "Tiny", "self.out(torch.relu(self.hidden(x)))")
    figures = tmp_path / "figures"  # created: its parent exists
    result = runner.invoke(cli.app, ["lr-find", model, "--steps", "20", "--verify-steps", "2", "--plot",
                                     str(figures), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert [p.name for p in figures.iterdir()] == ["lr_find.png"]
    assert (figures / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_plot_fails_before_the_sweep_without_matplotlib_or_a_parent(runner, tmp_path, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the sweep ran")

    monkeypatch.setattr(range_test, "run_lr_find", never)
    model = _factory(tmp_path, "Tiny", "self.out(torch.relu(self.hidden(x)))")
    result = runner.invoke(cli.app, ["lr-find", model, "--plot", str(tmp_path / "no" / "such")])
    assert result.exit_code == 2 and "does not exist" in result.stderr
    for name in {"matplotlib", *(m for m in sys.modules if m.startswith("matplotlib."))}:
        monkeypatch.setitem(sys.modules, name, None)  # as where the extra is not installed
    result = runner.invoke(cli.app, ["lr-find", model, "--plot", str(tmp_path)])
    assert result.exit_code == 2 and 'pip install "diagnose[plot]"' in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_json_to_stdout_keeps_the_human_report_on_stderr(runner, tmp_path):
    model = _factory(tmp_path, "Tiny", "self.out(torch.relu(self.hidden(x)))")
    result = runner.invoke(cli.app, ["lr-find", model, "--steps", "20", "--verify-steps", "2", "--json", "-",
                                     "--device", "cpu"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["schema_version"] == 1
    assert "Suggested lr" in result.stderr


def test_cli_exits_1_when_the_loss_cannot_decrease(runner, tmp_path):
    # The output is multiplied by zero: a constant whatever the weights, so no LR lowers the loss.
    model = _factory(tmp_path, "Constant", "self.out(self.hidden(x)) * 0.0")
    result = runner.invoke(cli.app, ["lr-find", model, "--steps", "20", "--verify-steps", "2", "--json", "-",
                                     "--device", "cpu"])
    assert result.exit_code == 1, result.output
    data = json.loads(result.stdout)
    assert data["suggested_lr"] is None and data["verified"]["lr"] is None
    assert "No suggestion" in result.stderr


@pytest.mark.parametrize("args, words", [
    (["--min", "0"], "--min must be a positive number"),
    (["--min", "1e-3", "--max", "1e-4"], "--max must be a number above --min"),
    (["--steps", "3"], "--steps must be at least 10"),
    (["--optimizer", "lion"], "unknown --optimizer"),
    (["--verify-steps", "0"], "--verify-steps must be 1 or more"),
])
def test_cli_bad_options_exit_2_with_one_line(runner, tmp_path, args, words):
    model = _factory(tmp_path, "Tiny", "self.out(torch.relu(self.hidden(x)))")
    result = runner.invoke(cli.app, ["lr-find", model, "--device", "cpu", *args])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], result.stderr


def test_cli_a_missing_model_or_a_frozen_one_exits_2(runner, tmp_path):
    result = runner.invoke(cli.app, ["lr-find", str(tmp_path / "nope.pt2")])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    # every parameter frozen: as for check, nothing to train is a setup error, said in one line
    model = _factory(tmp_path, "Frozen", "self.out(torch.relu(self.hidden(x)))", frozen=True)
    result = runner.invoke(cli.app, ["lr-find", model, "--device", "cpu"])
    assert result.exit_code == 2 and "no trainable parameters" in result.stderr


def test_help_lists_lr_find_without_importing_torch():
    code, torch_imported, output = run_in_fresh_interpreter("--help")
    assert code == 0 and not torch_imported and "lr-find" in output
    code, torch_imported, output = run_in_fresh_interpreter("lr-find", "--help")
    assert code == 0 and not torch_imported and "--max" in output and "--verify-steps" in output


# ---------------------------------------------------------------------------------------------
# The LR fixes under --try-fixes take their rate from the range test


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def _fix_workload(lr: float):
    from diagnose.loading.inputs import make_batch
    from diagnose.run import Workload

    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(1))
    batch = make_batch((x,), {}, targets=None, origin="given", synthetic=False, device="cpu")
    return Workload(batch=batch, loss="auto", steps=20, optimizer="sgd", lr=lr, seed=0, device=torch.device("cpu"))


@pytest.fixture
def counted_range_tests(monkeypatch):
    from diagnose.fixes import learning_rate

    monkeypatch.setattr(learning_rate, "_cache", [])
    calls = []
    real = range_test.range_test

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(range_test, "range_test", counting)
    return calls


def test_the_lr_fixes_name_the_range_tests_rates_and_share_one_test(counted_range_tests):
    from diagnose.fixes import apply_fix

    model, workload = _mlp(), _fix_workload(10.0)  # lr 10 diverges on this MLP
    lower = apply_fix("lower-lr", model, workload, [])
    warmup = apply_fix("lr-warmup", model, workload, [])
    assert len(counted_range_tests) == 1  # one range test for the report, whichever fixes ask
    found = range_test.range_test(model, workload, **counted_range_tests[0])  # (counted: the second call)
    # the lowest rate the runs found to train not clearly worse than the best (--try-fixes' standard)
    from diagnose.verify import training_worse

    best = found.verified.loss_after
    safe = min(c.lr for c in found.candidates
               if math.isfinite(c.loss_after) and not training_worse(found.initial_loss, best, c.loss_after))
    assert safe <= found.verified.lr
    assert lower.workload.lr == safe < 10.0
    assert f"lr={lower.workload.lr:g}" in lower.snippet and "range test" in lower.snippet
    assert "range test" in lower.change
    # the ramp's first step (lr / steps) is no larger than that rate, and one step fewer would be
    steps = warmup.workload.warmup_steps
    assert 10.0 / steps <= safe < 10.0 / (steps - 1)
    assert f"warmup_steps = {steps}" in warmup.snippet and warmup.workload.lr == 10.0
    assert "cannot make this rate stable" in warmup.change  # the sweep itself turned up below lr 10


def test_the_range_test_is_run_again_once_the_weights_change(counted_range_tests):
    from diagnose.fixes import apply_fix

    model, workload = _mlp(), _fix_workload(1e-4)
    apply_fix("higher-lr", model, workload, [])
    apply_fix("higher-lr", model, workload, [])
    assert len(counted_range_tests) == 1
    with torch.no_grad():
        model[0].weight.mul_(0.5)  # trained (or edited) in place between two reports
    apply_fix("higher-lr", model, workload, [])
    assert len(counted_range_tests) == 2
    apply_fix("higher-lr", _mlp(), workload, [])  # another model, same shapes
    assert len(counted_range_tests) == 3


def test_higher_lr_is_verified_at_the_rate_the_range_test_found():
    # lr 1e-4 on SGD: updates of ~1e-6 of the weights, the loss does not move
    report = diagnose.check(_mlp(), torch.randn(64, 32, generator=torch.Generator().manual_seed(1)), steps=20,
                            lr=1e-4, try_fixes=True, select=["lr-too-low"], device="cpu")
    finding = next(f for f in report.findings if f.id == "lr-too-low")
    fix = next(f for f in finding.fixes if f.id == "higher-lr")
    proposed = float(fix.snippet.split("lr=")[-1].rstrip(")"))
    assert proposed > 1e-3  # well above the decade the old fix would have tried
    assert fix.verified.resolved and fix.verified.loss_after < fix.verified.loss_before
    assert f"-> {proposed:.3g}" in fix.verified.note
