"""The HTML report (--html): well formed, self-contained, escaped, with the findings, fixes and figures."""

from __future__ import annotations

import base64
import io
import json
import re
import sys
import xml.etree.ElementTree as ET
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from matplotlib.image import imread  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from diagnose import cli  # noqa: E402
from diagnose.errors import DiagnoseError  # noqa: E402
from diagnose.findings import Finding  # noqa: E402
from diagnose.render import render_html  # noqa: E402
from diagnose.severity import Severity  # noqa: E402

from conftest import build_healthy_report, build_sick_report  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
VOID = {"meta", "img", "br", "hr", "link", "input", "col", "area", "base", "wbr", "source"}
HINT = 'pip install "diagnose[plot]"'


class _TagBalance(HTMLParser):
    """Records every tag that closes the wrong element or is never closed."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.attributes: list[tuple[str, str, str | None]] = []

    def handle_starttag(self, tag, attrs):
        self.attributes += [(tag, name, value) for name, value in attrs]
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.attributes += [(tag, name, value) for name, value in attrs]

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
        else:
            self.stack.pop()


def _parse(page: str) -> _TagBalance:
    parser = _TagBalance()
    parser.feed(page)
    parser.close()
    return parser


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def _hostile_report():
    """Layer names and messages that would be markup if they were not escaped."""
    report = build_sick_report()
    ev = report.evidence
    hostile = 'blocks|0<script>alert("x")</script>&amp'
    layers = (replace(ev.layers[0], name=hostile), *ev.layers[1:])
    finding = Finding(id="dead-relu", severity=Severity.ERROR, title="ReLU units <b>are</b> dead",
                      message=f"units in {hostile} never fire", layers=(hostile, "net.2"))
    return replace(report, evidence=replace(ev, layers=layers), findings=(finding, *report.findings)), hostile


def test_page_is_well_formed_and_parses_as_xml():
    page = render_html(build_sick_report())
    parser = _parse(page)
    assert parser.errors == [] and parser.stack == []
    root = ET.fromstring(page.split("\n", 1)[1])  # an XML parser too, after the doctype line
    assert root.tag == "html"
    assert page.startswith("<!DOCTYPE html>")


def test_page_references_nothing_outside_itself():
    report, _ = _hostile_report()
    page = render_html(report)
    parser = _parse(page)
    links = [(tag, name, value) for tag, name, value in parser.attributes if name in ("src", "href", "srcset", "action")]
    assert links, "the page should at least embed its figures"
    for tag, name, value in links:
        assert value.startswith(("data:image/png;base64,", "#")), (tag, name, value[:60])
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page and "<link" not in page and "@import" not in page and "url(" not in page


def test_findings_fixes_and_escaped_names():
    report, hostile = _hostile_report()
    page = render_html(report)
    for finding in report.findings:
        assert f'id="finding-{finding.id}"' in page
    escaped = "blocks|0&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;amp"
    assert escaped in page and hostile not in page
    assert "ReLU units &lt;b&gt;are&lt;/b&gt; dead" in page
    # errors first, then warnings, then infos
    order = [page.index(f'id="finding-{fid}"') for fid in
             ("dead-relu", "vanishing-gradients", "saturated-activations", "bottleneck-layer")]
    assert order == sorted(order)
    # the verified fix: metric before -> after and the short-run loss (fmt.number: 3 and 4 digits)
    assert "ratio_first_last 1.5e-07 -&gt; 0.41 (resolved)" in page
    assert "short-run loss 2.302 -&gt; 1.469" in page
    assert "ratio_first_last 1.5e-07 -&gt; 2.0e-06 (did not help: the check still fires); still below" in page
    # the best fix's snippet is shown; the others are folded but present, all inside <pre>
    assert "<pre><code>for i in (1, 3, 5):\n    model.net[i] = nn.ReLU()</code></pre>" in page
    assert "<details><summary>snippet</summary><pre><code>nn.BatchNorm1d(256)</code></pre></details>" in page


def test_header_verdict_and_layer_table():
    report = build_sick_report()
    page = render_html(report)
    assert "<code>samples/deep_sigmoid.pt2</code>" in page
    assert "FAILING" in page and "1 error, 1 warning, 1 info, 5 checks ran" in page
    assert "functional activations inside torch.export graphs are probed as modules" in page
    rows = re.findall(r"<tr( class=\"flagged\")?><td>(\d+)</td>", page)
    assert [int(index) for _, index in rows] == list(range(len(report.evidence.layers)))
    assert [int(index) for flag, index in rows if flag] == [0, 1, 2, 3]  # named by the error and the warning


def test_figures_are_embedded_pngs():
    images = _images(render_html(build_sick_report()))
    assert len(images) == 5  # four depth/loss figures and the fixes
    for data in images:
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        pixels = imread(io.BytesIO(data), format="png")
        assert pixels.ndim == 3 and pixels.shape[1] > 1000 and pixels.shape[0] > 300
    healthy = render_html(build_healthy_report())
    assert len(_images(healthy)) == 4 and "No findings." in healthy


def test_render_html_without_matplotlib(monkeypatch):
    _block_matplotlib(monkeypatch)
    with pytest.raises(DiagnoseError, match=re.escape(HINT)):
        render_html(build_healthy_report())


def _block_matplotlib(monkeypatch) -> None:
    for name in {"matplotlib", *(m for m in sys.modules if m.startswith("matplotlib."))}:
        monkeypatch.setitem(sys.modules, name, None)


# --- the command line ---------------------------------------------------------------------------


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.mark.parametrize("option", ["--html", "--plot"])
def test_cli_without_matplotlib_exits_2_before_the_run(runner, monkeypatch, tmp_path, option):
    import diagnose.api

    def run_check(settings):
        raise AssertionError("the run started although the report could not be drawn")

    monkeypatch.setattr(diagnose.api, "run_check", run_check)
    _block_matplotlib(monkeypatch)
    result = runner.invoke(cli.app, ["check", str(SAMPLES / "healthy_mlp.pt2"), option, str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and HINT in result.stderr and option in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--plot", "missing/figures"], "directory missing does not exist"),
        (["--plot", "a_file"], "it is a file"),
        (["--html", "missing/report.html"], "directory missing does not exist"),
    ],
)
def test_cli_unwritable_targets_exit_2_before_the_run(runner, monkeypatch, tmp_path, args, message):
    import diagnose.api

    monkeypatch.setattr(diagnose.api, "run_check", lambda settings: pytest.fail("the run started"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("x")
    result = runner.invoke(cli.app, ["check", str(SAMPLES / "healthy_mlp.pt2"), *args])
    assert result.exit_code == 2
    assert message in result.stderr and result.stderr.count("\n") == 1


def test_cli_html_and_plot_add_files_and_nothing_else(runner, tmp_path, monkeypatch):
    """A healthy model: the same stdout and JSON with or without --html/--plot."""
    monkeypatch.chdir(tmp_path)
    model = str(SAMPLES / "healthy_mlp.pt2")
    plain = runner.invoke(cli.app, ["check", model, "--steps", "3", "--json", "plain.json"])
    drawn = runner.invoke(cli.app, ["check", model, "--steps", "3", "--json", "drawn.json",
                                    "--html", "report.html", "--plot", "figures"])
    assert plain.exit_code == drawn.exit_code == 0, drawn.output
    timeless = re.compile(r"\d+(\.\d+)? s\b")  # the report says how long the run took
    assert timeless.sub("", drawn.stdout) == timeless.sub("", plain.stdout)
    reports = [json.loads((tmp_path / name).read_text()) for name in ("plain.json", "drawn.json")]
    for data in reports:
        data["run"].pop("elapsed_s", None)
    assert reports[0] == reports[1]
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == [
        "activation_std.png", "dead_saturated.png", "gradient_flow.png", "loss.png"]
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "HEALTHY" in page and len(_images(page)) == 4


def test_cli_try_fixes_on_the_sick_sample(runner, tmp_path, monkeypatch):
    """The one --try-fixes run: the fixes figure exists and the page says what each fix did."""
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(cli.app, ["check", str(SAMPLES / "deep_sigmoid.pt2"), "--try-fixes",
                                     "--html", "report.html", "--plot", "figures"])
    assert result.exit_code == 1, result.output  # vanishing gradients: an error
    assert (tmp_path / "figures" / "fixes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert 'id="finding-vanishing-gradients"' in page
    assert page.count('class="resolved">Verified:') >= 1
    assert "short-run loss" in page
    assert len(_images(page)) == 5
    parser = _parse(page)
    assert parser.errors == [] and parser.stack == []


def test_pyproject_can_set_html_and_plot(tmp_path):
    from diagnose.config import build_settings

    (tmp_path / "pyproject.toml").write_text('[tool.diagnose]\nhtml = "out/report.html"\nplot = "out/figures"\n')
    settings = build_settings({}, search_from=tmp_path)
    assert settings.html_path == str(tmp_path / "out" / "report.html")
    assert settings.plot_dir == str(tmp_path / "out" / "figures")
    flags = build_settings({"html_path": "mine.html"}, search_from=tmp_path)
    assert flags.html_path == "mine.html"
