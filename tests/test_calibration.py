"""The calibration corpus: healthy real architectures stay clean, sick real designs are named.

The default suite runs the fast subset (`Case.fast`) at the documented input size; `pytest -m
corpus` runs every entry at both input sizes, and checks that no verdict flips between them.
`benchmarks/calibrate.py` prints the same sweep as a table (docs/calibration.md).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

import calibration

pytest.importorskip("torchvision")
pytest.importorskip("timm")
pytest.importorskip("transformers")

_SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "calibrate.py"


def _runner():
    spec = importlib.util.spec_from_file_location("calibrate_script", _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["calibrate_script"] = module
    spec.loader.exec_module(module)
    return module


RUNNER = _runner()
FAST = [c for c in calibration.CASES if c.fast]


def _verdict_ok(outcome) -> None:
    assert outcome.verdict in ("ok", "caught"), (
        f"{outcome.case.name} at {outcome.case.shape(outcome.alt)}: {outcome.verdict}; "
        f"findings {outcome.raised or outcome.error}"
    )


def test_the_corpus_spans_the_families_the_trust_issue_names():
    healthy = [c for c in calibration.CASES if c.expect == calibration.HEALTHY]
    sick = [c for c in calibration.CASES if c.expect != calibration.HEALTHY]
    assert len(healthy) >= 40
    families = {c.family for c in healthy}
    for needed in ("plain CNN", "BN CNN", "residual BN", "residual zero-init", "normalizer-free",
                   "inverted residual SE", "layer scale", "MLP-Mixer", "ViT", "hierarchical ViT", "hybrid",
                   "encoder", "decoder", "encoder-decoder", "RNN"):
        assert needed in families, needed
    assert {c.expect for c in sick} >= {
        "output-loss-mismatch", "recurrent-gradient-flow", "residual-stream-growth", "poor-initialization",
        "saturated-activations", "eval-mode-export",
    }
    assert len({c.name for c in calibration.CASES}) == len(calibration.CASES)


@pytest.mark.parametrize("case", FAST, ids=lambda c: c.name)
def test_fast_subset(case):
    _verdict_ok(RUNNER.run_case(case))


def test_softmax_floor_matches_its_closed_form():
    # log(1 + (C-1)/e): the right class at 1, the rest at 0, through cross-entropy's log-softmax
    import math

    import torch
    import torch.nn.functional as F

    logits = torch.zeros(1, 10)
    logits[0, 3] = 1.0
    assert F.cross_entropy(logits, torch.tensor([3])).item() == pytest.approx(calibration.softmax_loss_floor(10))
    assert calibration.softmax_loss_floor(10) == pytest.approx(math.log(1 + 9 / math.e))


@pytest.mark.corpus
@pytest.mark.parametrize("case", calibration.CASES, ids=lambda c: c.name)
def test_whole_corpus_at_both_sizes(case):
    first, second = RUNNER.run_case(case), RUNNER.run_case(case, alt=True)
    _verdict_ok(first)
    _verdict_ok(second)
    assert first.verdict == second.verdict
