"""Real third-party architectures built from a config load through a factory and come out healthy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from diagnose.cli import app

FACTORIES = Path(__file__).resolve().parent / "loading" / "factories.py"


@pytest.mark.parametrize("factory", ["build_gpt2", "build_bert"])
def test_transformers_model_from_a_config_is_healthy(factory, tmp_path):
    pytest.importorskip("transformers")
    out = tmp_path / "report.json"
    result = CliRunner().invoke(
        app, ["check", f"{FACTORIES}:{factory}", "--input-shape", "16,16", "--steps", "10", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["summary"]["status"] == "healthy", [f["id"] for f in report["findings"]]
    kinds = {layer["kind"] for layer in report["layers"]}
    assert {"embedding", "linear", "norm", "activation"} <= kinds
