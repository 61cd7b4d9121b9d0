"""`--try-fixes` end to end: `diagnose.check(..., try_fixes=True)` fills each fix's `verified`."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from torch import nn

import diagnose
from diagnose.fixes import apply_fix
from diagnose.checks import DECADES, Measure
from diagnose.verify import VERIFY_STEPS

DEPTH, WIDTH, FEATURES, CLASSES, BATCH = 8, 64, 32, 10, 64


def deep_sigmoid_mlp() -> nn.Sequential:
    """8 sigmoid layers of width 64 at PyTorch's default init: the textbook vanishing gradient."""
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for i in range(DEPTH):
        layers += [nn.Linear(FEATURES if i == 0 else WIDTH, WIDTH), nn.Sigmoid()]
    layers.append(nn.Linear(WIDTH, CLASSES))
    torch.random.set_rng_state(state)
    return nn.Sequential(*layers)


def inputs() -> torch.Tensor:
    return torch.randn(BATCH, FEATURES, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def sigmoid_case():
    model = deep_sigmoid_mlp()
    state = copy.deepcopy(model.state_dict())
    module_ids = [id(m) for m in model.modules()]
    rng = torch.random.get_rng_state()
    report = diagnose.check(model, inputs(), steps=0, try_fixes=True, select=["vanishing-gradients"])
    return model, state, module_ids, rng, report


def _finding(report, check_id):
    (finding,) = [f for f in report.findings if f.id == check_id]
    return finding


def test_vanishing_gradients_fixes_are_verified_with_before_and_after(sigmoid_case):
    *_, report = sigmoid_case
    finding = _finding(report, "vanishing-gradients")
    fixes = {fix.id: fix for fix in finding.fixes}
    assert {"relu", "batch-norm"} <= fixes.keys()
    cures = [fixes[i] for i in ("relu", "selu", "batch-norm") if i in fixes]
    for fix in cures:
        verified = fix.verified
        assert verified is not None and verified.metric == "ratio_first_last"
        assert verified.before == pytest.approx(finding.evidence["ratio_first_last"])
        assert verified.before < 1e-5
        assert verified.after > 1e4 * verified.before  # orders of magnitude more gradient at the input
        assert verified.resolved is True
        assert verified.loss_after < verified.loss_before  # training got better, not only the metric
        assert verified.note  # what was changed


def test_relu_fix_also_lowers_the_loss_after_the_short_run(sigmoid_case):
    """Measured independently: the ReLU+He copy trains further on the same batch than the original."""
    from diagnose.config import Settings
    from diagnose.loading.inputs import make_batch
    from diagnose.run import Workload, measure

    model, *_ = sigmoid_case
    batch = make_batch((inputs(),), {}, targets=None, origin="given", synthetic=False, device="cpu")
    workload = Workload(batch=batch, loss="auto", steps=VERIFY_STEPS, optimizer=Settings().optimizer,
                        lr=Settings().lr, seed=0, device=torch.device("cpu"))
    before = measure(model, workload)
    after = measure(apply_fix("relu", model, workload, before.layers).module, workload)
    assert after.loss.final < before.loss.final - 0.1


def test_fixes_are_ordered_by_verified_effect(sigmoid_case):
    *_, report = sigmoid_case
    fixes = _finding(report, "vanishing-gradients").fixes
    tried = [fix for fix in fixes if fix.verified is not None]
    resolved = [fix.verified.resolved for fix in tried]
    assert resolved == sorted(resolved, reverse=True)  # every cure before every non-cure
    assert fixes[: len(tried)] == tuple(tried)  # fixes that could not be tried come last
    assert fixes[0].verified.resolved
    unresolved = [fix.verified for fix in tried if not fix.verified.resolved]
    scale = Measure("ratio_first_last", None, DECADES)  # the vanishing-gradients measure, healthy at 1
    gains = [replace(scale, value=v.before).badness() - replace(scale, value=v.after).badness() for v in unresolved]
    assert gains == sorted(gains, reverse=True) or max(gains) - min(gains) < 0.1


def test_a_fix_that_does_not_help_is_shown_as_such(sigmoid_case):
    *_, report = sigmoid_case
    fixes = {fix.id: fix for fix in _finding(report, "vanishing-gradients").fixes}
    # Glorot keeps the sigmoids: the right scale for them, but it cannot undo sigmoid's 0.25 slope
    # compounding over eight layers.
    glorot = fixes["glorot-init"].verified
    assert glorot is not None and glorot.resolved is False
    assert glorot.after < 1e-3


def test_not_applicable_fixes_keep_verified_null(sigmoid_case):
    *_, report = sigmoid_case
    fixes = {fix.id: fix for fix in _finding(report, "vanishing-gradients").fixes}
    if "residual-connections" in fixes:
        assert fixes["residual-connections"].verified is None
    data = report.to_dict()
    for fix in data["findings"][0]["fixes"]:
        assert fix["verified"] is None or set(fix["verified"]) >= {"metric", "before", "after", "resolved"}


def test_the_users_module_and_rng_are_untouched(sigmoid_case):
    model, state, module_ids, rng, _ = sigmoid_case
    assert [id(m) for m in model.modules()] == module_ids
    assert all(type(m) in (nn.Sequential, nn.Linear, nn.Sigmoid) for m in model.modules())
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.random.get_rng_state(), rng)


def test_without_try_fixes_nothing_is_verified():
    report = diagnose.check(deep_sigmoid_mlp(), inputs(), select=["vanishing-gradients"])
    assert all(fix.verified is None for f in report.findings for fix in f.fixes)


def test_findings_without_a_catalog_fix_pass_through_try_fixes():
    """A softmax before cross-entropy (output-loss-mismatch: NO_FIX, so no measure) beside fixable
    findings: --try-fixes verifies the others and leaves it as it is."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(FEATURES, WIDTH), nn.ReLU(), nn.Linear(WIDTH, CLASSES), nn.Softmax(dim=-1))
    report = diagnose.check(model, inputs(), steps=VERIFY_STEPS, try_fixes=True)
    mismatch = _finding(report, "output-loss-mismatch")
    assert mismatch.fixes == ()


def test_lr_fixes_on_a_diverging_run():
    """lower-lr cures a diverging run; higher-lr is tried too and shown not to."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(FEATURES, WIDTH), nn.ReLU(), nn.Linear(WIDTH, WIDTH), nn.ReLU(),
                          nn.Linear(WIDTH, CLASSES))
    # lr 10 diverges (the loss reaches 7e5 by step 10, NaN within the 20 verification steps); at lr 3
    # the loss is erratic but ends at 0.07 after 20 steps, which no lower rate matches on one batch.
    report = diagnose.check(model, inputs(), steps=10, lr=10.0, try_fixes=True, select=["lr-too-high"])
    finding = _finding(report, "lr-too-high")
    fixes = {fix.id: fix.verified for fix in finding.fixes}
    assert fixes["lower-lr"] is not None and fixes["lower-lr"].resolved
    assert finding.fixes[0].verified.resolved
    tried_and_failed = [v for v in fixes.values() if v is not None and not v.resolved]
    for verified in tried_and_failed:
        assert verified.note  # says what was changed


def test_verification_runs_at_least_verify_steps_even_without_a_user_run(sigmoid_case):
    *_, report = sigmoid_case
    assert report.evidence.run.steps == 0  # the user's run is untouched by the verification
    verified = _finding(report, "vanishing-gradients").fixes[0].verified
    assert verified.loss_before is not None and verified.loss_after is not None
    assert report.evidence.loss.history == (report.evidence.loss.initial,)  # no run of its own


class FunctionalSigmoid(nn.Module):
    """The deep sigmoid MLP written the way most models are: activations called as functions."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(FEATURES if i == 0 else WIDTH, WIDTH) for i in range(DEPTH))
        self.head = nn.Linear(WIDTH, CLASSES)

    def forward(self, x):
        for layer in self.layers:
            x = torch.sigmoid(layer(x))
        return self.head(x)


def test_functional_activations_are_swapped_end_to_end():
    torch.manual_seed(0)
    report = diagnose.check(FunctionalSigmoid(), inputs(), try_fixes=True, select=["vanishing-gradients"])
    fixes = {fix.id: fix.verified for fix in _finding(report, "vanishing-gradients").fixes}
    assert fixes["relu"].resolved and fixes["relu"].after > 1e-2
    assert fixes["relu"].after > 1e4 * fixes["relu"].before


def test_try_fixes_on_an_exported_archive(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "deep_sigmoid.pt2"
    torch.export.save(torch.export.export(FunctionalSigmoid(), (inputs(),)), str(path))
    report = diagnose.check(str(path), inputs(), try_fixes=True, select=["vanishing-gradients"])
    fixes = {fix.id: fix.verified for fix in _finding(report, "vanishing-gradients").fixes}
    for fix_id in ("relu", "batch-norm"):
        assert fixes[fix_id].resolved, fix_id
        assert fixes[fix_id].after > 1e4 * fixes[fix_id].before


def test_a_fix_that_cannot_be_applied_automatically_says_why():
    import torch
    from torch import nn
    from torch.nn import functional as F

    import diagnose

    class SideBranch(nn.Module):
        """A bottleneck whose output a second head also reads: widening it needs the model's code."""

        def __init__(self) -> None:
            super().__init__()
            self.body, self.narrow = nn.Linear(64, 256), nn.Linear(256, 2)
            self.wide, self.head, self.side = nn.Linear(2, 256), nn.Linear(256, 10), nn.Linear(2, 10)

        def forward(self, x):
            code = F.relu(self.narrow(F.relu(self.body(x))))
            return self.head(F.relu(self.wide(code))) + self.side(code)

    torch.manual_seed(0)
    report = diagnose.check(SideBranch(), torch.randn(64, 64), try_fixes=True, select=["bottleneck-layer"])
    (finding,) = report.findings
    (widen,) = [fix for fix in finding.fixes if fix.id == "widen-layer"]
    assert widen.verified is None
    assert widen.not_verified == "side also reads the output of narrow; widen it in the model's code"
    assert report.to_dict()["findings"][0]["fixes"][0]["not_verified"] == widen.not_verified


# ---------------------------------------------------------------- "verified" means training got better


@pytest.mark.parametrize("initial, before, after, worse", [
    (2.3, 0.0045, 4.14, True),  # the ResNet-50 report: clipping "resolved" a finding while the loss went 0.0045 -> 4.14
    (2.3, 0.0045, 0.01, False),  # noise on an already-low loss: 0.0055 more, against a drop of 2.3
    (2.0, 1.0, 1.3, True),  # gives back 0.3 of a 1.0 drop: more than a quarter
    (2.0, 1.0, 1.2, False),  # 0.2 of it: within a quarter
    (2.33, 2.2855, 2.33, False),  # a run that barely moved: within 5 % of the starting loss (re-init noise)
    (2.33, 2.2855, 2.5, True),  # ... and beyond it
    (2.3, 2.2, float("nan"), True),  # a NaN after the run is always worse
    (2.3, float("nan"), 50.0, False),  # from a diverged run, any finite loss is progress
    (2.3, 2.2, None, False),  # nothing to judge by
])
def test_training_worse(initial, before, after, worse):
    from diagnose.verify import training_worse

    assert training_worse(initial, before, after) is worse


def test_a_fix_that_clears_the_check_but_wrecks_training_is_not_resolved():
    """The issue's ResNet-50 case in miniature: a check silenced, the loss clearly worse."""
    from diagnose.verify import _judge, _Outcome
    from diagnose.config import Settings
    from diagnose.evidence import LossTrace
    from diagnose.findings import Finding, FixSuggestion
    from diagnose.severity import Severity

    baseline = diagnose.check(deep_sigmoid_mlp(), inputs(), steps=VERIFY_STEPS).evidence
    fixed = replace(baseline, loss=replace(baseline.loss, final=baseline.loss.initial + 2.0))
    finding = Finding(id="bad-initial-loss", severity=Severity.WARNING, title="t", message="m")
    fix = FixSuggestion(id="gradient-clipping", title="t", rationale="r", snippet="s")
    verified = _judge(finding, fix, baseline, _Outcome(fixed, change="clipped"), Settings()).verified
    assert verified.loss_worse and not verified.resolved
    assert verified.loss_before == baseline.loss.final and verified.loss_after == baseline.loss.initial + 2.0
    same = _judge(finding, fix, baseline, _Outcome(baseline, change="nothing"), Settings()).verified
    assert not same.loss_worse


def test_ranking_is_by_what_the_fix_does_to_training():
    from diagnose.findings import FixSuggestion, Verification
    from diagnose.verify import _ranked

    def fix(name, **verified):
        data = dict(metric="ratio_first_last", before=1e-7, loss_before=2.0)
        data.update(verified)
        return FixSuggestion(id=name, title=name, rationale="", snippet="", verified=Verification(**data))

    untried = FixSuggestion(id="untried", title="", rationale="", snippet="", not_verified="cannot")
    results = [
        untried,
        fix("worse-but-silenced", after=1.0, resolved=False, loss_after=4.0, loss_worse=True),
        fix("cure-slow", after=0.5, resolved=True, loss_after=1.5),
        fix("partial", after=1e-4, resolved=False, loss_after=1.9),  # 3 decades better
        fix("cure-fast", after=0.5, resolved=True, loss_after=0.8),
        fix("useless", after=1e-7, resolved=False, loss_after=1.95),
        fix("broke", after=None, resolved=False),
    ]
    order = [f.id for f in _ranked(results, Measure("ratio_first_last", None, DECADES))]
    assert order == ["cure-fast", "cure-slow", "partial", "useless", "worse-but-silenced", "broke", "untried"]


@pytest.mark.parametrize(("case", "check_id", "top"), [
    ("deep-sigmoid-standard", "vanishing-gradients", "selu"),
    ("deep-sigmoid-standard", "poor-initialization", "relu"),
    ("relu-exploding", "bad-initial-loss", "he-init"),
    ("nan-inputs", "non-finite", "normalize-inputs"),
    ("bottleneck-mlp", "bottleneck-layer", "widen-layer"),
])
def test_the_default_top_fix_is_verified_and_trains_better(case, check_id, top):
    """The recommender's first choice (without --try-fixes) is the one --try-fixes verifies first,
    with a lower loss after the short run than the unchanged copy's (docs/fix-efficacy.md has the table)."""
    import models

    zoo = models.CASES[case]
    plain = diagnose.check(zoo.build(), zoo.make_inputs(), steps=VERIFY_STEPS)
    tried = diagnose.check(zoo.build(), zoo.make_inputs(), steps=VERIFY_STEPS, try_fixes=True)
    assert _finding(plain, check_id).fixes[0].id == top
    first = _finding(tried, check_id).fixes[0]
    assert first.id == top and first.verified.resolved
    before, after = first.verified.loss_before, first.verified.loss_after
    assert after < before or (before != before and after == after)  # lower, or finite where it was NaN
