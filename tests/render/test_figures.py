"""Figures (--plot DIR, and the HTML page's images): files, series, highlights, labels, odd numbers."""

from __future__ import annotations

import math
import struct
import subprocess
import sys
from dataclasses import replace

import pytest

pytest.importorskip("matplotlib")

from matplotlib.image import imread  # noqa: E402

import diagnose  # noqa: E402
from diagnose.errors import DiagnoseError  # noqa: E402
from diagnose.evidence import LossTrace  # noqa: E402
from diagnose.render import figures  # noqa: E402
from probes.records import ActivationStats, GradientStats, LayerRecord  # noqa: E402

from conftest import build_healthy_report, build_sick_report  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DEPTH_FIGURES = ("gradient_flow", "activation_std", "dead_saturated", "loss")


def _png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, read independently of matplotlib."""
    assert data[:8] == PNG_MAGIC
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _series(ax, label: str) -> list[tuple[float, float]]:
    """The (x, y) points of the scatter series with this legend label."""
    for collection in ax.collections:
        if collection.get_label() == label:
            return [(float(x), float(y)) for x, y in collection.get_offsets()]
    raise AssertionError(f"no series {label!r} in {[c.get_label() for c in ax.collections]}")


def _same_points(actual: list[tuple[float, float]], expected: list[tuple[float, float]]) -> bool:
    return [x for x, _ in actual] == [x for x, _ in expected] and [y for _, y in actual] == pytest.approx(
        [y for _, y in expected], rel=1e-6)


PARAMETER = "parameter gradient (weighted layers)"
OUTPUT = "output gradient (parameter-free layers)"
FLAGGED = "layer named by an error or warning"


def test_write_figures_writes_named_pngs(tmp_path):
    target = tmp_path / "figures"  # does not exist yet: created, its parent does
    written = figures.write_figures(build_sick_report(), target)
    assert [p.name for p in written] == [f"{name}.png" for name in (*DEPTH_FIGURES, "fixes")]
    for path in written:
        data = path.read_bytes()
        width, height = _png_size(data)
        assert width == round(figures.FIGURE_WIDTH_IN * figures.PNG_DPI)
        assert 300 < height < 2000
        pixels = imread(path)
        assert pixels.shape[:2] == (height, width)
        assert pixels.std() > 0.01  # something was drawn, not a blank canvas


def test_no_fixes_figure_without_verified_fixes(tmp_path):
    written = figures.write_figures(build_healthy_report(), tmp_path)
    assert [p.stem for p in written] == list(DEPTH_FIGURES)


def test_a_fixes_figure_from_an_earlier_run_is_removed(tmp_path):
    figures.write_figures(build_sick_report(), tmp_path)
    (tmp_path / "notes.png").write_bytes(b"the user's own file")
    assert (tmp_path / "fixes.png").is_file()
    figures.write_figures(build_healthy_report(), tmp_path)  # a later run that verified no fix
    assert not (tmp_path / "fixes.png").exists()
    assert (tmp_path / "notes.png").read_bytes() == b"the user's own file"


def test_gradient_series_split_as_the_terminal_table_does():
    report = build_sick_report()
    ax = figures.gradient_flow_figure(report).axes[0]
    # conftest: Linear layers (positions 0, 2, 4, 6) have parameter RMS 3.1e-9, 2.4e-6, 1.5e-3,
    # 0.021; the Sigmoids (1, 3, 5) only an output gradient: 4.0e-9, 5.2e-6, 2.0e-3.
    assert _same_points(_series(ax, PARAMETER), [(0, 3.1e-9), (2, 2.4e-6), (4, 1.5e-3), (6, 0.021)])
    assert _same_points(_series(ax, OUTPUT), [(1, 4.0e-9), (3, 5.2e-6), (5, 2.0e-3)])
    assert ax.get_yscale() == "log"


def test_layers_named_by_errors_and_warnings_are_ringed():
    report = build_sick_report()
    ax = figures.gradient_flow_figure(report).axes[0]
    # vanishing-gradients (error) names net.0 and net.2, saturated-activations (warning) net.1 and
    # net.3; bottleneck-layer is an info and its layer (position 4) is not ringed.
    assert [x for x, _ in _series(ax, FLAGGED)] == [0, 1, 2, 3]
    std_ax = figures.activation_std_figure(report).axes[0]
    assert _same_points(_series(std_ax, FLAGGED), [(0, 11.2), (1, 0.48), (2, 6.3), (3, 0.45)])


def test_dead_and_saturated_shares():
    report = build_sick_report()
    ax = figures.dead_saturated_figure(report).axes[0]
    heights = sorted((round(bar.get_x() + bar.get_width() / 2), bar.get_height()) for bar in ax.patches)
    assert _same_points(heights, [(1, 0.93), (3, 0.81), (5, 0.12)])
    assert ax.get_ylim()[1] >= 1.0


def test_loss_curve_and_chance_level():
    report = build_sick_report()
    ax = figures.loss_figure(report).axes[0]
    (curve,) = [line for line in ax.get_lines() if line.get_label().startswith("training loss")]
    assert list(curve.get_ydata()) == pytest.approx([2.3026, 2.3024, 2.3021])
    (chance,) = [line for line in ax.get_lines() if line.get_label().startswith("chance level")]
    assert chance.get_ydata()[0] == pytest.approx(2.302585)


def test_fixes_figure_has_one_row_per_tried_fix():
    report = build_sick_report()
    fig = figures.fixes_figure(report)
    metric_ax, loss_ax = fig.axes
    assert metric_ax.get_title(loc="left") == "vanishing-gradients: ratio_first_last"
    assert [t.get_text() for t in metric_ax.get_yticklabels()] == [
        "relu: Replace sigmoid with ReLU (and He init)", "batch-norm: Add batch normalization before each act…"]
    # ratio_first_last spans 1.5e-7 .. 0.41: a log axis; the loss 2.25 .. 2.30 stays linear
    assert metric_ax.get_xscale() == "log"
    assert loss_ax.get_xscale() == "linear"
    texts = [t.get_text() for t in loss_ax.texts]
    assert "2.3 -> 1.47" in texts and "2.3 -> 2.25" in texts


def _odd_report():
    """Zero, NaN and infinite statistics, and a loss that turns NaN, where a log axis has no place."""
    report = build_sick_report()
    ev = report.evidence
    layers = list(ev.layers)
    layers[0] = replace(layers[0], gradient=GradientStats(rms=0.0, output_rms=0.0, backward_calls=1))
    layers[1] = replace(layers[1], activation=ActivationStats(std=math.nan, nonfinite=3, saturated_fraction=math.nan))
    layers[2] = replace(layers[2], gradient=GradientStats(rms=math.inf, output_rms=math.inf, nonfinite=1))
    layers[3] = replace(layers[3], activation=ActivationStats(std=0.0, saturated_fraction=0.0))
    loss = LossTrace(kind="cross-entropy", initial=2.3, expected_initial=2.302585, num_classes=10,
                     history=(2.3, 40.0, 9e5, math.inf), final=math.nan)
    evidence = replace(ev, layers=tuple(layers), loss=loss, nonfinite_loss_step=3)
    return replace(report, evidence=evidence)


def test_non_finite_and_zero_values_sit_on_the_edges(tmp_path):
    report = _odd_report()
    ax = figures.gradient_flow_figure(report).axes[0]
    assert _series(ax, "parameter gradient: exactly 0") == [(0, figures.BOTTOM_EDGE)]
    assert _series(ax, "parameter gradient: NaN or Inf") == [(2, figures.TOP_EDGE)]
    assert [x for x, _ in _series(ax, PARAMETER)] == [4, 6]
    # net.0 (zero) and net.2 (Inf) are named by the error: ringed on the edges they sit on
    assert _series(ax, "_nolegend_") == [(0, figures.BOTTOM_EDGE), (2, figures.TOP_EDGE)]
    assert [x for x, _ in _series(ax, FLAGGED)] == [1, 3]
    std_ax = figures.activation_std_figure(report).axes[0]
    assert _series(std_ax, "activation std: exactly 0") == [(3, figures.BOTTOM_EDGE)]
    assert _series(std_ax, "activation std: NaN or Inf") == [(1, figures.TOP_EDGE)]
    loss_ax = figures.loss_figure(report).axes[0]
    assert loss_ax.get_yscale() == "log"  # 2.3 .. 9e5
    assert any(line.get_label().startswith("loss became NaN/Inf at step 3") for line in loss_ax.get_lines())
    for path in figures.write_figures(report, tmp_path):
        assert _png_size(path.read_bytes())[0] > 0


def test_a_model_without_statistics_says_so():
    report = build_sick_report()
    ev = report.evidence
    bare = tuple(LayerRecord(name=r.name, type=r.type, index=r.index, kind=r.kind) for r in ev.layers)
    report = replace(report, evidence=replace(ev, layers=bare, loss=None), findings=())
    for build in (figures.gradient_flow_figure, figures.activation_std_figure, figures.dead_saturated_figure,
                  figures.loss_figure):
        ax = build(report).axes[0]
        assert len(ax.texts) == 1 and ax.texts[0].get_text().startswith("no ")


def _deep_report(depth: int = 160):
    """A real report of a 2 x depth + 1 layer model: Linear and Tanh in turn, long names."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention_output_dense_projection = nn.Linear(4, 4)
            self.activation = nn.Tanh()

        def forward(self, x):
            return self.activation(self.attention_output_dense_projection(x))

    torch.manual_seed(0)
    model = nn.Sequential(nn.Sequential(*[Block() for _ in range(depth)]), nn.Linear(4, 3))
    return diagnose.check(model, torch.randn(8, 4), steps=0)


@pytest.fixture(scope="module")
def deep_report():
    return _deep_report()


def test_hundreds_of_layers_stay_readable(deep_report, tmp_path):
    layers = deep_report.evidence.layers
    assert len(layers) > 300
    fig = figures.gradient_flow_figure(deep_report)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert 2 < len(labels) <= figures.MAX_TICK_LABELS
    assert labels[0].startswith("0: ") and labels[-1].startswith(f"{len(layers) - 1}: ")
    assert all(len(label.split(": ", 1)[1]) <= figures.MAX_NAME_CHARS for label in labels)

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ticks = [t for t in ax.get_xticklabels() if t.get_text()]
    # rotated labels are parallel: they cannot touch when their anchors are further apart, across
    # the text direction, than a line of text is tall
    anchors = [ax.transData.transform((tick, 0))[0] for tick in ax.get_xticks()]
    line_height = ticks[0].get_fontsize() * fig.dpi / 72
    gaps = [b - a for a, b in zip(anchors, anchors[1:])]
    assert min(gaps) * math.sin(math.radians(ticks[0].get_rotation())) > line_height
    # the axis title sits below every tick label, the legend above the axes
    lowest_label = min(t.get_window_extent(renderer).y0 for t in ticks)
    assert ax.xaxis.label.get_window_extent(renderer).y1 <= lowest_label
    (legend,) = fig.legends
    assert legend.get_window_extent(renderer).y0 >= ax.title.get_window_extent(renderer).y0
    assert not legend.get_window_extent(renderer).overlaps(ax.title.get_window_extent(renderer))
    written = figures.write_figures(deep_report, tmp_path)
    assert [p.stem for p in written] == list(DEPTH_FIGURES)


@pytest.mark.parametrize(
    ("name", "short"),
    [
        ("net.0", "net.0"),
        ("features.denseblock4.denselayer16.conv2", "…denselayer16.conv2"),
        ("encoder.blocks.11.attention.output.dense_projection", "…output.dense_projection"),
        ("a_single_name_far_longer_than_the_limit_allows", "…onger_than_the_limit_allows"),
    ],
)
def test_short_name(name, short):
    assert figures.short_name(name) == short
    assert len(short) <= figures.MAX_NAME_CHARS


def test_write_figures_errors(tmp_path):
    with pytest.raises(DiagnoseError, match="does not exist; create it first"):
        figures.write_figures(build_healthy_report(), tmp_path / "missing" / "figures")
    a_file = tmp_path / "report.txt"
    a_file.write_text("x")
    with pytest.raises(DiagnoseError, match="it is a file"):
        figures.write_figures(build_healthy_report(), a_file)


def test_pyplot_and_the_backend_are_left_alone():
    import matplotlib

    backend_before = matplotlib.rcParams._get_backend_or_none()
    pyplot_before = "matplotlib.pyplot" in sys.modules
    figures.build_figures(build_sick_report())
    assert matplotlib.rcParams._get_backend_or_none() == backend_before
    assert ("matplotlib.pyplot" in sys.modules) == pyplot_before


def test_importing_the_renderers_does_not_import_matplotlib():
    code = ("import sys, diagnose.render, diagnose.render.figures, diagnose.render.html; "
            "print('matplotlib' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_missing_matplotlib_is_one_clear_error(monkeypatch):
    _block_matplotlib(monkeypatch)
    with pytest.raises(DiagnoseError, match=r'pip install "diagnose\[plot\]"'):
        figures.build_figures(build_sick_report())


def _block_matplotlib(monkeypatch) -> None:
    """Make `import matplotlib` fail as it does where the extra is not installed."""
    for name in {"matplotlib", *(m for m in sys.modules if m.startswith("matplotlib."))}:
        monkeypatch.setitem(sys.modules, name, None)


def _visible_y_labels(fig) -> list[str]:
    fig.canvas.draw()
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    ticks = [*ax.yaxis.get_major_ticks(), *ax.yaxis.get_minor_ticks()]
    return [t.label1.get_text() for t in ticks if t.label1.get_text() and low <= t.get_loc() <= high]


def test_log_axes_within_two_decades_get_plain_labels():
    # the healthy report's stds 0.58 .. 0.98 sit inside one decade: plain numbers, not 6x10^-1
    labels = _visible_y_labels(figures.activation_std_figure(build_healthy_report()))
    assert len(labels) >= 3 and all(not label.startswith("$") for label in labels), labels
    # parameter gradients 3e-9 .. 0.02, output gradients 1e-3 .. 3e-3: the axis spans seven
    # decades, however narrow one series is on its own, so it keeps decade labels
    report = build_sick_report()
    ev = report.evidence
    layers = tuple(replace(r, gradient=GradientStats(output_rms=1e-3 * (i + 1))) if r.parameters == 0 else r
                   for i, r in enumerate(ev.layers))
    report = replace(report, evidence=replace(ev, layers=layers))
    labels = _visible_y_labels(figures.gradient_flow_figure(report))
    assert labels and all(label.startswith("$") for label in labels), labels
