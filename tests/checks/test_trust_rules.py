"""Changed trust rules of existing checks: when a finding is an error, a warning, an info, or nothing."""

import math
from dataclasses import replace

import pytest
import torch
from torch import nn

import diagnose
from diagnose.checks import bad_initial_loss, lr_too_high, no_gradient, saturated_activations
from diagnose.checks._signal import flow_gradient_norm, gradient_flow
from diagnose.severity import Severity

from .helpers import activation, evidence, findings_of, linear, only

# --- no-gradient: a zero-initialised head is a gate, a detached encoder is a cut -----------------


class Classifier(nn.Module):
    def __init__(self, zero_head: bool = False, detach: bool = False):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.head = nn.Linear(32, 10)
        self.detach = detach
        if zero_head:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(self, x):
        features = self.encoder(x)
        return self.head(features.detach() if self.detach else features)


def _classifier(**options) -> Classifier:
    torch.manual_seed(0)
    return Classifier(**options)


def _features() -> torch.Tensor:
    return torch.randn(16, 20, generator=torch.Generator().manual_seed(0))


def test_zero_head_with_a_run_is_an_info_naming_the_head():
    finding = only(diagnose.check(_classifier(zero_head=True), _features(), steps=5), "no-gradient")
    assert finding.severity is Severity.INFO
    assert finding.evidence["zero_initialised_layers"] == "head"
    assert "zero-initialised head" in finding.message
    assert finding.layers == ("encoder.0", "encoder.2")  # the layers upstream of the gate
    assert finding.evidence["layers_gated"] == 2


def test_zero_head_without_a_run_is_an_error():
    finding = only(diagnose.check(_classifier(zero_head=True), _features(), steps=0), "no-gradient")
    assert finding.severity is Severity.ERROR
    assert finding.layers == ("encoder.0", "encoder.2")


def test_detached_encoder_is_an_error_even_with_a_run():
    report = diagnose.check(_classifier(detach=True), _features(), steps=5)
    finding = only(report, "no-gradient")
    assert finding.severity is Severity.ERROR
    assert finding.layers == ("encoder.0", "encoder.2")
    assert "over all 5 steps" in finding.message
    assert "zero_initialised_layers" not in finding.evidence


def test_connected_classifier_has_no_no_gradient_finding():
    assert findings_of(diagnose.check(_classifier(), _features(), steps=5), "no-gradient") == []


def test_a_sliver_cut_off_in_a_net_that_trains_is_info():
    # under 1 % of the trainable parameters without gradient, and the run trains: info
    layers = [linear("big", 0), linear("tiny", 1, grad_out_rms=None, params_without_gradient=("weight",))]
    run_layers = list(layers)
    ev = evidence(layers, run_layers=run_layers, steps=5, history=(2.3, 1.5, 1.0), initial=2.3)
    total = 100 * layers[1].trainable_parameters + 1
    sliver = replace(ev, model=replace(ev.model, trainable_parameters=total))
    assert only(no_gradient.check(sliver, {}), "no-gradient").severity is Severity.INFO
    # the same share in a run that does not train stays an error
    stuck = replace(sliver, loss=replace(sliver.loss, history=(2.3, 2.3, 2.3), final=2.3))
    assert only(no_gradient.check(stuck, {}), "no-gradient").severity is Severity.ERROR
    # and a large share is an error even when the run trains
    large = replace(ev, model=replace(ev.model, trainable_parameters=2 * layers[1].trainable_parameters))
    assert only(no_gradient.check(large, {}), "no-gradient").severity is Severity.ERROR


# --- exploding/vanishing gradients: a layer feeding batch norm is judged scale-free ------------


def _conv_bn(scale: float, conv_bias: bool = False, bias_values: float | None = None) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, bias=conv_bias), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, bias=conv_bias), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )
    with torch.no_grad():
        model[0].weight.mul_(scale)
        if bias_values is not None:
            model[0].bias.copy_(bias_values * torch.randn(8, generator=torch.Generator().manual_seed(5)))
    return model


def _images() -> torch.Tensor:
    return torch.randn(8, 3, 12, 12, generator=torch.Generator().manual_seed(0))


def _conv_record(report, name: str = "0"):
    return next(r for r in report.evidence.layers if r.name == name)


def test_flow_gradient_norm_is_scale_invariant_before_batch_norm():
    base = diagnose.check(_conv_bn(1.0), _images())
    scaled = diagnose.check(_conv_bn(100.0), _images())
    assert scaled.evidence.loss.initial == pytest.approx(base.evidence.loss.initial, rel=1e-5)  # same network
    before, after = _conv_record(base), _conv_record(scaled)
    assert before.weight.normalized and after.weight.normalized
    # the raw output gradient does change (1/100), which is why it needs correcting
    assert after.gradient.output_rms == pytest.approx(before.gradient.output_rms / 100, rel=1e-3)
    assert flow_gradient_norm(after) == pytest.approx(flow_gradient_norm(before), rel=1e-3)
    assert _flow(scaled) == pytest.approx(_flow(base), rel=1e-3)


def test_a_huge_conv_before_batch_norm_is_not_vanishing_gradients():
    # 1e4 x the weights: the raw gradient at the first conv is 1e4 x smaller, the loss identical
    report = diagnose.check(_conv_bn(1e4), _images())
    assert findings_of(report, "vanishing-gradients") == []
    assert findings_of(report, "exploding-gradients") == []


def _flow(report, name: str = "0") -> float:
    """The learning signal gradient_flow reads for `name` (paired with the norm layer it feeds)."""
    layers, norms = gradient_flow(report.evidence.layers)
    return next(n for r, n in zip(layers, norms) if r.name == name)


@pytest.mark.parametrize("bias_values", [None, 1.0], ids=["default-bias", "unit-bias"])
def test_flow_gradient_norm_is_scale_invariant_with_a_conv_bias(bias_values):
    base = diagnose.check(_conv_bn(1.0, conv_bias=True, bias_values=bias_values), _images())
    scaled = diagnose.check(_conv_bn(100.0, conv_bias=True, bias_values=bias_values), _images())
    assert scaled.evidence.loss.initial == pytest.approx(base.evidence.loss.initial, rel=1e-5)  # same network
    # the tensor-wide output std includes the per-channel bias offsets batch norm removes, so the
    # signal is read from the norm layer's side, where no bias can reach
    assert _flow(scaled) == pytest.approx(_flow(base), rel=1e-3)


# --- lr-too-high: scale-invariant and zero-initialised weights are not judged by update ratio ---


def _lr_evidence(*, normalized: bool = False, init_std: float | None = None, history=(), initial=2.3):
    layers = [linear("fc", 0, normalized=normalized, std=init_std)]
    run_layers = [linear("fc", 0, normalized=normalized, update_ratio=0.3, update_ratios=(0.3, 0.3))]
    return evidence(layers, run_layers=run_layers, steps=5, history=history, initial=initial)


def _lr(ev):
    return lr_too_high.check(ev, lr_too_high.THRESHOLDS)


def test_large_update_ratio_fires_a_warning():
    finding = only(_lr(_lr_evidence()), "lr-too-high")
    assert finding.severity is Severity.WARNING
    assert finding.layers == ("fc",)
    assert finding.evidence["max_update_ratio"] == pytest.approx(0.3)


def test_large_update_ratio_of_a_weight_feeding_a_norm_is_not_judged():
    assert _lr(_lr_evidence(normalized=True)) == []


def test_large_update_ratio_of_a_zero_initialised_weight_is_not_judged():
    assert _lr(_lr_evidence(init_std=0.0)) == []


def test_a_weight_below_its_scheme_scale_is_judged_against_that_scale():
    expected = math.sqrt(2 / 64)  # He for the helper's 64-in layer followed by ReLU
    # 0.3 against its own norm, 0.3 x 0.25 = 0.075 against the scheme's: below the 0.1 bar
    assert _lr(_lr_evidence(init_std=0.25 * expected)) == []
    # 0.3 x 0.5 = 0.15: still above it
    finding = only(_lr(_lr_evidence(init_std=0.5 * expected)), "lr-too-high")
    assert finding.evidence["max_update_ratio"] == pytest.approx(0.15)
    # at or above the scheme's scale the ratio is taken as measured
    assert only(_lr(_lr_evidence(init_std=2 * expected)), "lr-too-high").evidence["max_update_ratio"] == pytest.approx(0.3)


def test_update_ratio_bar():
    ev = _lr_evidence()
    at_bar = replace(ev, run_layers=(replace(ev.run_layers[0], update_ratio=0.1),))
    assert _lr(at_bar) == []  # strictly above 0.1 fires
    above = replace(ev, run_layers=(replace(ev.run_layers[0], update_ratio=0.11),))
    assert _lr(above)


@pytest.mark.parametrize(("history", "severity"), [
    ((2.3, 1.8, 1.2, 0.9, 0.8), Severity.INFO),  # trains normally: a fact, not a fault
    ((2.3, 2.25, 2.28, 2.27, 2.26), Severity.WARNING),  # barely moves
    ((9.0, 6.0, 4.0, 3.5, 3.0), Severity.WARNING),  # falls, but stays above chance (ln 10)
    ((2.3, 0.5, 1.9, 1.8, 1.8), Severity.WARNING),  # gives back most of its gain
])
def test_large_update_ratio_severity_follows_the_short_run(history, severity):
    finding = only(_lr(_lr_evidence(history=history, initial=history[0])), "lr-too-high")
    assert finding.severity is severity
    assert ("still trained" in finding.message) is (severity is Severity.INFO)


# --- saturated-activations: saturation compounds over layers ------------------------------------


def _sigmoids(*fractions: float):
    layers = []
    for i, fraction in enumerate(fractions):
        layers.append(linear(f"fc{i}", 2 * i, followed_by="sigmoid", scheme="glorot"))
        layers.append(activation(f"act{i}", 2 * i + 1, "sigmoid", saturated=fraction))
    return layers


def _saturated(layers):
    return saturated_activations.check(evidence(layers), saturated_activations.THRESHOLDS)


def test_twelve_partly_saturated_layers_compound_to_an_error():
    finding = only(_saturated(_sigmoids(*[0.35] * 12)), "saturated-activations")
    assert finding.severity is Severity.ERROR
    open_share = finding.evidence["open_gradient_share"]
    assert open_share == pytest.approx(0.65 ** 12, rel=1e-9)
    assert open_share < 0.1
    assert finding.evidence["saturated_layers"] == 12
    assert finding.layers == tuple(f"act{i}" for i in range(12))


def test_one_layer_at_35_percent_is_nothing():
    assert _saturated(_sigmoids(0.35)) == []


def test_two_layers_at_35_percent_do_not_reach_the_bar():
    assert 1 - 0.65 ** 2 < saturated_activations.SATURATED_FRACTION_ERROR
    assert _saturated(_sigmoids(0.35, 0.35)) == []


def test_one_layer_at_60_percent_is_a_warning():
    finding = only(_saturated(_sigmoids(0.6)), "saturated-activations")
    assert finding.severity is Severity.WARNING
    assert finding.evidence["open_gradient_share"] == pytest.approx(0.4)


def test_one_layer_at_90_percent_is_an_error():
    assert only(_saturated(_sigmoids(0.9)), "saturated-activations").severity is Severity.ERROR


def test_layers_under_ten_percent_do_not_compound():
    # 30 layers: at 9 % each they would leave 0.91 ** 30 = 6 % open, but 9 % is healthy noise
    assert 1 - 0.91 ** 30 >= saturated_activations.SATURATED_FRACTION_ERROR
    assert _saturated(_sigmoids(*[0.09] * 30)) == []
    assert only(_saturated(_sigmoids(*[0.10] * 30)), "saturated-activations").severity is Severity.ERROR


def test_a_saturated_layer_with_partly_saturated_ones_reports_all_of_them():
    finding = only(_saturated(_sigmoids(0.2, 0.6, 0.2)), "saturated-activations")
    assert finding.severity is Severity.WARNING  # 1 - 0.8 * 0.4 * 0.8 = 0.74 < 0.9
    assert finding.layers == ("act0", "act1", "act2")
    assert finding.evidence["max_saturated_fraction"] == pytest.approx(0.6)
    assert finding.evidence["open_gradient_share"] == pytest.approx(0.8 * 0.4 * 0.8)


def test_tanh_inside_an_activation_module_is_not_judged():
    gelu = replace(activation("gelu", 1, "gelu"), type="GELU")
    inner = activation("gelu.tanh()", 2, "tanh", saturated=0.95, source="function", owner="gelu")
    assert _saturated([linear("fc", 0, followed_by="gelu"), gelu, inner]) == []
    orphan = activation("tanh()", 2, "tanh", saturated=0.95, source="function", owner="")
    assert _saturated([linear("fc", 0), orphan])


# --- bad-initial-loss: a bad start the short run recovers from is an info -----------------------


def _bad_start(**options):
    return bad_initial_loss.check(evidence([linear("head", 0)], **options), bad_initial_loss.THRESHOLDS)


def test_bad_start_that_trains_away_is_info():
    history = tuple(10.0 * (0.001 ** (i / 19)) for i in range(20))  # 10 -> 0.01 over 20 steps
    finding = only(_bad_start(steps=20, history=history, initial=10.0), "bad-initial-loss")
    assert finding.severity is Severity.INFO
    assert finding.evidence["initial_loss"] == 10.0
    assert finding.evidence["relative_gap"] == pytest.approx((10.0 - math.log(10)) / math.log(10))
    assert "still trained" in finding.message
    assert finding.layers == ("head",)


def test_bad_start_without_a_run_is_a_warning():
    finding = only(_bad_start(initial=10.0), "bad-initial-loss")
    assert finding.severity is Severity.WARNING
    assert "still trained" not in finding.message


def test_bad_start_that_stays_above_chance_is_a_warning():
    history = (10.0, 8.0, 6.0, 5.0)
    assert only(_bad_start(steps=4, history=history, initial=10.0), "bad-initial-loss").severity is Severity.WARNING


@pytest.mark.parametrize(("initial", "fires"), [(4.5, False), (4.7, True)])
def test_bad_initial_loss_bar_is_twice_chance(initial, fires):
    # |L0 - ln 10| >= ln 10: from 4.61 up
    assert bool(_bad_start(initial=initial)) is fires


# --- poor-initialization: transformer weights far too large for their normalised inputs ----------

D_MODEL, VOCAB = 32, 100


class TinyBlock(nn.Module):
    """A pre-norm GPT block: LayerNorm before attention (q, k, v, o) and before the MLP."""

    def __init__(self):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(D_MODEL), nn.LayerNorm(D_MODEL)
        self.q, self.k, self.v, self.o = (nn.Linear(D_MODEL, D_MODEL) for _ in range(4))
        self.fc1, self.act, self.fc2 = nn.Linear(D_MODEL, 4 * D_MODEL), nn.GELU(), nn.Linear(4 * D_MODEL, D_MODEL)

    def forward(self, x):
        h = self.ln1(x)
        batch, length, _ = h.shape
        q, k, v = (f(h).view(batch, length, 2, D_MODEL // 2).transpose(1, 2) for f in (self.q, self.k, self.v))
        mask = torch.full((length, length), float("-inf")).triu(1)
        attended = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D_MODEL // 2) + mask, -1) @ v
        x = x + self.o(attended.transpose(1, 2).reshape(batch, length, D_MODEL))
        return x + self.fc2(self.act(self.fc1(self.ln2(x))))


class TinyGPT(nn.Module):
    """Two pre-norm blocks, every Linear/Embedding weight from N(0, initializer_range)."""

    def __init__(self, initializer_range: float = 0.02):
        super().__init__()
        self.tok, self.pos = nn.Embedding(VOCAB, D_MODEL), nn.Embedding(32, D_MODEL)
        self.blocks = nn.ModuleList([TinyBlock() for _ in range(2)])
        self.ln = nn.LayerNorm(D_MODEL)
        self.head = nn.Linear(D_MODEL, VOCAB, bias=False)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=initializer_range)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, ids):
        x = self.tok(ids) + self.pos(torch.arange(ids.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


def _tiny_gpt(initializer_range: float) -> TinyGPT:
    torch.manual_seed(0)
    return TinyGPT(initializer_range)


def test_transformer_with_huge_init_is_poor_initialization():
    report = diagnose.check(_tiny_gpt(1.0), input_shapes=[(4, 16)], steps=5)
    finding = only(report, "poor-initialization")
    assert finding.severity is Severity.ERROR  # the short run does not train
    assert finding.evidence["direction"] == "large"
    # q, k, v and fc1 of both blocks, and the head: every layer reading a LayerNorm
    assert finding.evidence["layers_judged"] == 9
    assert finding.evidence["layers_off"] == 9
    # gain of N(0, 1) weights on unit-scale features of width 32: ~sqrt(32)
    assert finding.evidence["median_gain"] == pytest.approx(math.sqrt(D_MODEL), rel=0.25)
    assert report.evidence.loss.initial >= 2 * math.log(VOCAB)


def test_transformer_with_the_gpt2_init_is_quiet():
    report = diagnose.check(_tiny_gpt(0.02), input_shapes=[(4, 16)], steps=5)
    assert findings_of(report, "poor-initialization") == []


def test_transformer_gain_just_below_the_bar_is_quiet():
    # N(0, 0.5): gain ~2.8, under the 4x bar, though the loss starts above chance
    report = diagnose.check(_tiny_gpt(0.5), input_shapes=[(4, 16)], steps=5)
    assert findings_of(report, "poor-initialization") == []


class _Logits(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model(input_ids=input_ids).logits


@pytest.fixture(scope="module")
def gpt2():
    """GPT-2 from a config (no weights), wrapped to return logits; transformers imported once."""
    transformers = pytest.importorskip("transformers")

    def build(**config) -> nn.Module:
        torch.manual_seed(0)
        cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=32,
                                      bos_token_id=0, eos_token_id=0,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **config)
        model = transformers.GPT2LMHeadModel(cfg)
        model.config.use_cache = False
        return _Logits(model)

    build()  # the first build pays for transformers' lazy imports
    return build


def test_gpt2_with_initializer_range_one_is_poor_initialization(gpt2):
    report = diagnose.check(gpt2(initializer_range=1.0), input_shapes=[(4, 16)], steps=5)
    finding = only(report, "poor-initialization")
    assert finding.evidence["direction"] == "large"
    assert finding.evidence["median_gain"] >= 4.0


def test_gpt2_with_the_default_initializer_range_is_quiet(gpt2):
    report = diagnose.check(gpt2(), input_shapes=[(4, 16)], steps=5)
    assert findings_of(report, "poor-initialization") == []
