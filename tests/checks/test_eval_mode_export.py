"""eval-mode-export: export archives whose batch norm runs on frozen statistics, and what they withdraw."""

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import diagnose
from diagnose.checks import eval_mode_export as check_module
from diagnose.checks import run_checks
from diagnose.loading.export import frozen_norm_ops
from diagnose.severity import Severity

from .helpers import activation, evidence, findings_of, linear, only

ID = "eval-mode-export"
GRADIENT_FLOW_IDS = ("vanishing-gradients", "no-gradient", "dead-relu")


def _cnn(conv_bias: float | None = None, second_block: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()]
    if second_block:
        layers += [nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8), nn.ReLU()]
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    if conv_bias is not None:
        with torch.no_grad():
            model[0].bias.fill_(conv_bias)
    return model


def _example() -> torch.Tensor:
    return torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def _export(model: nn.Module, mode: str):
    getattr(model, mode)()
    return torch.export.export(model, (_example(),))


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    """The test CNNs exported and saved once per module (the first export pays torch's start-up)."""
    folder = tmp_path_factory.mktemp("exports")
    paths = {}
    for name, model in [("plain", _cnn()), ("dead", _cnn(conv_bias=-10.0))]:
        for mode in ("eval", "train"):
            path = folder / f"{name}-{mode}.pt2"
            torch.export.save(_export(model, mode), path)
            paths[name, mode] = str(path)
    return paths


# --- through real archives --------------------------------------------------------------------


def test_eval_mode_archive_is_an_error(archives):
    report = diagnose.check(archives["plain", "eval"], steps=0)
    assert report.evidence.run.inputs == "example"  # the archive's own example batch
    assert report.evidence.run.input_shapes == ((4, 3, 16, 16),)
    assert report.evidence.model.frozen_norms == 1
    finding = only(report, ID)
    assert finding.severity is Severity.ERROR
    assert finding.evidence["frozen_batch_norm_ops"] == 1
    assert "model.train()" in finding.message
    for check_id in GRADIENT_FLOW_IDS:
        assert findings_of(report, check_id) == []


def test_train_mode_archive_does_not_fire(archives):
    report = diagnose.check(archives["plain", "train"], steps=0)
    assert report.evidence.model.format == "export"
    assert report.evidence.model.frozen_norms == 0
    assert findings_of(report, ID) == []
    assert ID in report.checks_run


def test_findings_on_the_frozen_graph_are_withdrawn_and_named(archives):
    # Conv bias -10: batch norm in training mode re-centres it; frozen (mean 0, var 1) it does not,
    # so every ReLU is dead in the eval-mode graph only.
    path = archives["dead", "eval"]
    unfiltered = diagnose.check(path, steps=0, select=["dead-relu"])
    assert only(unfiltered, "dead-relu").severity is Severity.ERROR  # what would have been reported
    report = diagnose.check(path, steps=0)
    assert [f.id for f in report.findings] == [ID]
    finding = report.findings[0]
    assert finding.evidence["withdrawn"] == "dead-relu"
    assert "withdrawn as unreliable here: dead-relu" in finding.message


def test_the_same_model_exported_in_train_mode_is_healthy(archives):
    report = diagnose.check(archives["dead", "train"], steps=0)
    assert findings_of(report, ID) == []
    assert findings_of(report, "dead-relu") == []


def test_nothing_withdrawn_means_the_message_says_nothing_about_it(archives):
    finding = only(diagnose.check(archives["plain", "eval"], steps=0), ID)
    assert "withdrawn" not in finding.message
    assert "withdrawn" not in finding.evidence


# --- frozen_norm_ops on exported programs -----------------------------------------------------


def test_frozen_norm_ops_counts_each_batch_norm_of_an_eval_export():
    program = _export(_cnn(second_block=True), "eval")
    assert frozen_norm_ops(program) == 2
    assert frozen_norm_ops(_export(_cnn(second_block=True), "train")) == 0


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch's own pytree deprecation
def test_frozen_norm_ops_reads_decomposed_graphs_too():
    # decomposition turns batch_norm(training=False) into _native_batch_norm_legit_no_training
    decomposed = _export(_cnn(), "eval").run_decompositions()
    targets = {str(n.target) for n in decomposed.graph_module.graph.nodes if n.op == "call_function"}
    assert "aten._native_batch_norm_legit_no_training.default" in targets
    assert frozen_norm_ops(decomposed) == 1


def test_batch_norm_without_running_stats_is_not_frozen_in_eval_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8, track_running_stats=False), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    assert frozen_norm_ops(_export(model, "eval")) == 0  # it always uses batch statistics


def test_frozen_norm_ops_without_a_graph_is_zero():
    assert frozen_norm_ops(SimpleNamespace()) == 0


# --- hand-built evidence ----------------------------------------------------------------------


def _with_frozen(ev, frozen: int):
    return replace(ev, model=replace(ev.model, frozen_norms=frozen))


def test_no_frozen_norms_no_finding():
    assert check_module.check(_with_frozen(evidence(), 0), {}) == []


def test_frozen_norms_fire_with_the_count():
    finding = only(check_module.check(_with_frozen(evidence(), 3), {}), ID)
    assert finding.severity is Severity.ERROR
    assert finding.evidence == {"frozen_batch_norm_ops": 3}
    assert finding.message.startswith("3 batch-norm ops")


def _dead_relu_evidence(frozen: int, **options):
    layers = [linear("fc", 0), activation("act", 1, dead=1.0)]
    return _with_frozen(evidence(layers, **options), frozen)


def test_run_checks_withdraws_superseded_findings():
    kept, _ = run_checks(_dead_relu_evidence(0))
    assert "dead-relu" in [f.id for f in kept]
    findings, _ = run_checks(_dead_relu_evidence(3))
    ids = [f.id for f in findings]
    assert ID in ids
    assert not set(ids) & set(check_module.SUPERSEDES)
    assert "dead-relu" in only(findings, ID).evidence["withdrawn"].split(", ")


def test_checks_independent_of_the_norm_mode_still_report():
    # a non-finite loss and an eval-mode export: both stand
    ev = _dead_relu_evidence(3, initial=float("nan"), nonfinite_loss_step=0)
    ids = [f.id for f in run_checks(ev)[0]]
    assert ID in ids and "non-finite" in ids
    assert "non-finite" not in check_module.SUPERSEDES
    assert "output-loss-mismatch" not in check_module.SUPERSEDES


def test_ignoring_the_eval_mode_check_withdraws_nothing():
    findings, _ = run_checks(_dead_relu_evidence(3), ignore=[ID])
    assert "dead-relu" in [f.id for f in findings]


def test_batch_norms_frozen_on_purpose_in_a_train_mode_export_are_left_alone(tmp_path):
    # fine-tuning with the first block's statistics frozen: a deliberate choice, not an eval export
    model = _cnn(second_block=True)
    model.train()
    first_norm = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    first_norm.eval()
    program = torch.export.export(model, (torch.randn(4, 3, 16, 16),))
    assert frozen_norm_ops(program) == 1
    path = tmp_path / "partly_frozen.pt2"
    torch.export.save(program, path)
    report = diagnose.check(str(path), steps=0)
    assert report.evidence.model.frozen_norms == 0
    assert findings_of(report, "eval-mode-export") == []
