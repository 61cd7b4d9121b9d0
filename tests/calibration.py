"""The calibration corpus: real architectures at random init, and known-sick real designs.

Every check is judged against these before it is called done (issue 12): a healthy model that
gets a warning or an error is a false alarm, a sick design whose cause is not named is a miss.
Models are built from constructors and configs only (torchvision, timm, transformers: the dev
extras); nothing is downloaded. `benchmarks/calibrate.py` runs `diagnose check` with its CLI
defaults (20 plain-SGD steps at lr 0.01) on each and prints the table published in
docs/calibration.md; tests/test_calibration.py runs a fast subset in the default suite and the
whole corpus behind the `corpus` marker.

Input sizes, per family (documented in docs/calibration.md): images 8x3x64x64, and 8x3x96x96 as the
second size a verdict must not flip between (ViTs are built for the size they are given, as
`image_size=`/`img_size=` lets a user do); token models 4x32 tokens; recurrent models 8x24x16.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

HEALTHY = "healthy"

IMAGE = "image"
TOKENS = "tokens"
SEQUENCE = "sequence"
VECTOR = "vector"

# The two sizes per input kind: the documented one, and the second a verdict must survive.
SIZES = {
    IMAGE: ((8, 3, 64, 64), (8, 3, 96, 96)),
    TOKENS: ((4, 32), (4, 48)),
    SEQUENCE: ((8, 24, 16), (8, 40, 16)),
    VECTOR: ((64, 64), (128, 64)),
}


@dataclass(frozen=True)
class Case:
    """One corpus entry: how to build it, what it is, and what a correct diagnosis says."""

    name: str
    family: str
    build: Callable[[int], nn.Module]  # called with the image side (or sequence length)
    inputs: str = IMAGE
    expect: str = HEALTHY  # HEALTHY, or the check id that must name the cause
    reason: str = ""  # for a sick design: the literature and the measured margin
    fast: bool = False  # part of the default test suite's subset
    steps: int | None = None  # None: the CLI default
    export_eval: bool = False  # saved as a .pt2 exported after .eval() (a user's export)
    also: tuple[str, ...] = field(default_factory=tuple)  # other ids a sick design may add

    def shape(self, alt: bool = False) -> tuple[int, ...]:
        return SIZES[self.inputs][1 if alt else 0]

    def side(self, alt: bool = False) -> int:
        shape = self.shape(alt)
        return shape[-1] if self.inputs == IMAGE else shape[1]


def declare_torchvision_ops() -> None:
    """Let the PyPI torchvision wheel import beside the CPU torch (its pure-Python models only).

    The wheel's compiled ops are built against another torch and do not load here; its import then
    fails registering fake kernels for two ops it expects its library to have defined. Declaring the
    two schemas first lets the import (and every model constructor) run; calling those ops would
    still fail, and no classification backbone calls them.
    """
    try:
        torch.ops.torchvision.nms  # noqa: B018 - defined when the compiled ops did load
        return
    except (AttributeError, RuntimeError):
        pass
    global _TORCHVISION_LIB
    if _TORCHVISION_LIB is None:
        _TORCHVISION_LIB = torch.library.Library("torchvision", "DEF")  # noqa: TOR901
        _TORCHVISION_LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _TORCHVISION_LIB.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


_TORCHVISION_LIB = None


def _tv():
    declare_torchvision_ops()
    import torchvision

    return torchvision.models


def _timm(name: str, **kwargs) -> Callable[[int], nn.Module]:
    def build(side: int) -> nn.Module:
        declare_torchvision_ops()
        import timm

        return timm.create_model(name, pretrained=False, num_classes=10, **kwargs)

    return build


def _timm_sized(name: str, **kwargs) -> Callable[[int], nn.Module]:
    def build(side: int) -> nn.Module:
        declare_torchvision_ops()
        import timm

        return timm.create_model(name, pretrained=False, num_classes=10, img_size=side, **kwargs)

    return build


def _torchvision(name: str, **kwargs) -> Callable[[int], nn.Module]:
    def build(side: int) -> nn.Module:
        return getattr(_tv(), name)(num_classes=10, **kwargs)

    return build


def _torchvision_sized(name: str, **kwargs) -> Callable[[int], nn.Module]:
    def build(side: int) -> nn.Module:
        return getattr(_tv(), name)(num_classes=10, image_size=side, **kwargs)

    return build


# --- transformers, from configs -------------------------------------------------------------------


class _Logits(nn.Module):
    """A Hugging Face model as a user calls it in a training loop: token ids in, logits out."""

    def __init__(self, model: nn.Module, decoder: bool = False) -> None:
        super().__init__()
        self.model = model
        self.decoder = decoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.decoder:
            return self.model(input_ids=input_ids, decoder_input_ids=input_ids).logits
        return self.model(input_ids=input_ids).logits


def _hf(config_name: str, model_name: str, decoder: bool = False, **config) -> Callable[[int], nn.Module]:
    def build(length: int) -> nn.Module:
        declare_torchvision_ops()  # transformers imports torchvision when it is installed
        import transformers

        cfg = getattr(transformers, config_name)(**config)
        return _Logits(getattr(transformers, model_name)(cfg), decoder=decoder)

    return build


_SMALL_VOCAB = 1000
GPT2 = dict(n_layer=6, n_embd=256, n_head=4, vocab_size=_SMALL_VOCAB, n_positions=128)


# --- recurrent nets, plain torch --------------------------------------------------------------------


class SequenceClassifier(nn.Module):
    """A recurrent encoder over (batch, time, features) and a linear head on its last state."""

    def __init__(self, cell: str = "lstm", features: int = 16, hidden: int = 64, layers: int = 1,
                 classes: int = 10, forget_bias: float | None = None) -> None:
        super().__init__()
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[cell]
        self.rnn = rnn(features, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, classes)
        if forget_bias is not None:
            with torch.no_grad():
                for name, param in self.rnn.named_parameters():
                    if name.startswith("bias_"):
                        # PyTorch's gate order is input, forget, cell, output; both biases add up.
                        param[hidden:2 * hidden].fill_(forget_bias / 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class ChaoticRNN(nn.Module):
    """A tanh RNN whose recurrent weights are `scale` x PyTorch's default: past the edge of chaos."""

    def __init__(self, scale: float = 4.0, features: int = 16, hidden: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.rnn = nn.RNN(features, hidden, batch_first=True)
        with torch.no_grad():
            self.rnn.weight_hh_l0.mul_(scale)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


# --- sick designs -------------------------------------------------------------------------------------


class WithSoftmax(nn.Module):
    """A classifier whose forward ends in softmax, fed to a cross-entropy loss (a common real bug)."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.body(x), dim=-1)


def _sigmoid_mlp_standard_normal(side: int) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    width = 64
    for _ in range(12):
        linear = nn.Linear(width, width)
        nn.init.normal_(linear.weight, 0.0, 1.0)
        layers += [linear, nn.Sigmoid()]
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers)


def _without_norm(name: str) -> Callable[[int], nn.Module]:
    def build(side: int) -> nn.Module:
        return getattr(_tv(), name)(num_classes=10, norm_layer=lambda channels: nn.Identity())

    return build


_resnet50_without_norm = _without_norm("resnet50")


class DeepSigmoidCNN(nn.Module):
    """Eight 3x3 conv + sigmoid layers at PyTorch's default init: LeCun & Glorot's vanishing regime."""

    def __init__(self, width: int = 32, depth: int = 8, classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for _ in range(depth):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.Sigmoid()]
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


class WithSigmoid(nn.Module):
    """A classifier whose forward ends in a sigmoid, fed to cross-entropy."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.body(x))


def _softmax_resnet18(side: int) -> nn.Module:
    return WithSoftmax(_tv().resnet18(num_classes=10))


def _constant_init(build: Callable[[int], nn.Module], value: float) -> Callable[[int], nn.Module]:
    """A user's init loop gone wrong: every Linear and Conv weight set to `value`, biases zeroed."""

    def constant(side: int) -> nn.Module:
        model = build(side)
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, (nn.Linear, nn.Conv2d)):
                    module.weight.fill_(value)
                    if module.bias is not None:
                        module.bias.zero_()
        return model

    return constant


def _mobilenet_v3(side: int) -> nn.Module:
    return _tv().mobilenet_v3_small(num_classes=10)


CASES: tuple[Case, ...] = (
    # plain and batch-norm CNNs
    Case("alexnet", "plain CNN", _torchvision("alexnet")),
    Case("vgg11", "plain CNN", _torchvision("vgg11")),
    Case("vgg11_bn", "BN CNN", _torchvision("vgg11_bn"), fast=True),
    Case("squeezenet1_0", "plain CNN", _torchvision("squeezenet1_0")),
    Case("googlenet", "BN CNN", _torchvision("googlenet", aux_logits=False, init_weights=True)),
    Case("densenet121", "BN CNN", _torchvision("densenet121")),
    # residual nets, with and without zero-initialised branches
    Case("resnet18", "residual BN", _torchvision("resnet18"), fast=True),
    Case("resnet50", "residual BN", _torchvision("resnet50")),
    Case("resnet50_zero_init", "residual zero-init", _torchvision("resnet50", zero_init_residual=True)),
    Case("timm_resnet26d", "residual zero-init", _timm("resnet26d")),
    Case("timm_regnetx_002", "residual BN", _timm("regnetx_002")),
    Case("regnet_y_400mf", "SE residual", _torchvision("regnet_y_400mf")),
    # normalizer-free
    Case("timm_nf_resnet26", "normalizer-free", _timm("nf_resnet26")),
    Case("timm_nfnet_l0", "normalizer-free", _timm("eca_nfnet_l0")),
    # depthwise / SE / inverted residual
    Case("mobilenet_v2", "inverted residual", _torchvision("mobilenet_v2")),
    Case("mobilenet_v3_small", "inverted residual SE", _torchvision("mobilenet_v3_small")),
    Case("efficientnet_b0", "inverted residual SE", _torchvision("efficientnet_b0")),
    Case("shufflenet_v2", "depthwise", _torchvision("shufflenet_v2_x1_0")),
    Case("mnasnet0_5", "inverted residual", _torchvision("mnasnet0_5")),
    Case("timm_ghostnet", "depthwise SE", _timm("ghostnet_100")),
    Case("timm_convmixer", "MLP-Mixer-like", _timm("convmixer_768_32")),
    # ConvNeXt / layer scale
    Case("convnext_tiny", "layer scale", _torchvision("convnext_tiny")),
    Case("timm_convnext_atto", "layer scale", _timm("convnext_atto"), fast=True),
    Case("timm_poolformer_s12", "layer scale", _timm("poolformer_s12")),
    # MLP-Mixer-likes
    Case("timm_mixer_s16", "MLP-Mixer", _timm_sized("mixer_s16_224")),
    Case("timm_resmlp_12", "MLP-Mixer", _timm_sized("resmlp_12_224")),
    # ViTs and hierarchical ViTs
    Case("vit_b_16", "ViT", _torchvision_sized("vit_b_16")),
    Case("timm_deit_tiny", "ViT", _timm_sized("deit_tiny_patch16_224"), fast=True),
    Case("swin_t", "hierarchical ViT", _torchvision("swin_t")),
    Case("timm_pvt_v2_b0", "hierarchical ViT", _timm("pvt_v2_b0")),
    # hybrid conv-attention
    Case("timm_levit_128s", "hybrid", _timm_sized("levit_128s")),
    Case("timm_mobilevit_xxs", "hybrid", _timm("mobilevit_xxs")),
    Case("timm_coatnet_nano", "hybrid", _timm_sized("coatnet_nano_rw_224")),
    # transformers: encoder, decoder, encoder-decoder
    Case("gpt2", "decoder", _hf("GPT2Config", "GPT2LMHeadModel", **GPT2), TOKENS, fast=True),
    Case("llama", "decoder", _hf("LlamaConfig", "LlamaForCausalLM", vocab_size=_SMALL_VOCAB, hidden_size=256,
                                 intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
                                 num_key_value_heads=2), TOKENS),
    Case("bert", "encoder", _hf("BertConfig", "BertForMaskedLM", vocab_size=_SMALL_VOCAB, hidden_size=256,
                                num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024), TOKENS),
    Case("roberta_classifier", "encoder", _hf("RobertaConfig", "RobertaForSequenceClassification",
                                             vocab_size=_SMALL_VOCAB, hidden_size=256, num_hidden_layers=4,
                                             num_attention_heads=4, intermediate_size=1024, num_labels=10),
         TOKENS),
    Case("t5", "encoder-decoder", _hf("T5Config", "T5ForConditionalGeneration", decoder=True,
                                      vocab_size=_SMALL_VOCAB, d_model=256, d_kv=32, d_ff=1024, num_layers=3,
                                      num_heads=4), TOKENS),
    Case("bart", "encoder-decoder", _hf("BartConfig", "BartForConditionalGeneration", decoder=True,
                                        vocab_size=_SMALL_VOCAB, d_model=256, encoder_layers=3, decoder_layers=3,
                                        encoder_attention_heads=4, decoder_attention_heads=4,
                                        encoder_ffn_dim=1024, decoder_ffn_dim=1024), TOKENS),
    # recurrent
    Case("lstm", "RNN", lambda n: SequenceClassifier("lstm"), SEQUENCE, fast=True),
    Case("lstm_2layer", "RNN", lambda n: SequenceClassifier("lstm", layers=2), SEQUENCE),
    Case("gru", "RNN", lambda n: SequenceClassifier("gru"), SEQUENCE),
    # --- known-sick real designs: the check that must name the cause ---
    Case("lstm_forget_bias_-5", "sick: RNN", lambda n: SequenceClassifier("lstm", forget_bias=-5.0), SEQUENCE,
         expect="recurrent-gradient-flow", fast=True,
         reason="forget gate ~sigmoid(-5)=0.007 wipes the cell each step (Gers et al. 2000; Jozefowicz et al. "
                "2015 set it to +1)"),
    Case("resnet50_no_bn", "sick: residual", _resnet50_without_norm, expect="residual-stream-growth",
         also=("exploding-gradients", "activation-variance-explosion", "lr-too-high", "non-finite"),
         reason="every un-normalised residual branch adds its variance to the stream (Zhang et al. 2019, Fixup; "
                "De & Smith 2020, SkipInit)"),
    Case("gpt2_init_range_1", "sick: decoder", _hf("GPT2Config", "GPT2LMHeadModel", initializer_range=1.0, **GPT2),
         TOKENS, expect="poor-initialization", also=("exploding-gradients", "saturated-activations"),
         reason="weights 50x the 0.02 std of the GPT-2 recipe (Radford et al. 2019)"),
    Case("sigmoid_mlp_12_standard_normal", "sick: MLP", _sigmoid_mlp_standard_normal, VECTOR,
         expect="saturated-activations", also=("poor-initialization", "vanishing-gradients"), fast=True,
         reason="N(0,1) weights with fan-in 64 put pre-activations at std ~8 (Glorot & Bengio 2010)"),
    Case("resnet18_softmax_output", "sick: CNN", _softmax_resnet18, expect="output-loss-mismatch",
         reason="cross-entropy applies its own log-softmax; probabilities as logits floor the loss at "
                "log(1+(C-1)/e)"),
    Case("mobilenet_v3_eval_export", "sick: export", _mobilenet_v3, expect="eval-mode-export", export_eval=True,
         reason="a graph exported after .eval() has batch norm frozen to its running statistics"),
    Case("rnn_recurrent_weights_x4", "sick: RNN", lambda n: ChaoticRNN(4.0), SEQUENCE,
         expect="recurrent-gradient-flow",
         reason="recurrent spectral radius above 1: the gradient grows ~125x back over 24 steps (Pascanu et al. 2013)"),
    Case("resnet34_no_bn", "sick: residual", _without_norm("resnet34"), expect="residual-stream-growth",
         also=("lr-too-high", "bad-initial-loss", "non-finite"),
         reason="16 un-normalised basic blocks: the stream grows ~40x and the loss is NaN by step 2"),
    Case("resnet18_constant_init", "sick: init", _constant_init(_torchvision("resnet18"), 0.01),
         expect="symmetric-weights", also=("poor-initialization", "vanishing-gradients", "loss-not-decreasing"),
         reason="every conv weight 0.01: identical channels in and out, so they stay identical (Goodfellow et al. "
                "2016, 8.4); batch norm treats identical channels alike"),
)

# A second set, never used to set a threshold: real architectures and sick designs the checks were
# not tuned on, run with `benchmarks/calibrate.py --unseen` to see that the rules generalise. Their
# results are published beside the corpus's in docs/calibration.md.
UNSEEN: tuple[Case, ...] = (
    Case("vgg16", "plain CNN", _torchvision("vgg16")),
    Case("resnext50", "residual BN", _torchvision("resnext50_32x4d")),
    Case("wide_resnet50_2", "residual BN", _torchvision("wide_resnet50_2")),
    Case("mobilenet_v3_large", "inverted residual SE", _torchvision("mobilenet_v3_large")),
    Case("efficientnet_v2_s", "inverted residual SE", _torchvision("efficientnet_v2_s")),
    Case("regnet_y_1_6gf", "SE residual", _torchvision("regnet_y_1_6gf")),
    Case("squeezenet1_1", "plain CNN", _torchvision("squeezenet1_1")),
    Case("convnext_small", "layer scale", _torchvision("convnext_small")),
    Case("swin_v2_t", "hierarchical ViT", _torchvision("swin_v2_t")),
    Case("vit_b_32", "ViT", _torchvision_sized("vit_b_32")),
    Case("timm_cspresnet50", "residual BN", _timm("cspresnet50")),
    Case("timm_dla34", "BN CNN", _timm("dla34")),
    Case("timm_rexnet_100", "inverted residual SE", _timm("rexnet_100")),
    Case("timm_xcit_nano", "ViT", _timm_sized("xcit_nano_12_p16_224")),
    Case("timm_cait_xxs24", "ViT", _timm_sized("cait_xxs24_224")),
    Case("timm_fastvit_t8", "hybrid", _timm("fastvit_t8")),
    Case("timm_repvit_m1", "hybrid", _timm("repvit_m1")),
    Case("timm_nfnet_f0", "normalizer-free", _timm("dm_nfnet_f0")),
    Case("timm_res2net50", "residual BN", _timm("res2net50_14w_8s")),
    Case("timm_gmlp_s16", "MLP-Mixer", _timm_sized("gmlp_s16_224")),
    Case("timm_beit_base", "ViT", _timm_sized("beit_base_patch16_224")),
    Case("timm_edgenext", "hybrid", _timm("edgenext_xx_small")),
    Case("distilbert", "encoder", _hf("DistilBertConfig", "DistilBertForMaskedLM", vocab_size=_SMALL_VOCAB, dim=256,
                                      n_layers=3, n_heads=4, hidden_dim=1024), TOKENS),
    Case("albert", "encoder", _hf("AlbertConfig", "AlbertForMaskedLM", vocab_size=_SMALL_VOCAB, hidden_size=256,
                                  num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
                                  embedding_size=128), TOKENS),
    Case("opt", "decoder", _hf("OPTConfig", "OPTForCausalLM", vocab_size=_SMALL_VOCAB, hidden_size=256,
                               num_hidden_layers=4, ffn_dim=1024, num_attention_heads=4, word_embed_proj_dim=256),
         TOKENS),
    Case("mistral", "decoder", _hf("MistralConfig", "MistralForCausalLM", vocab_size=_SMALL_VOCAB, hidden_size=256,
                                   intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
                                   num_key_value_heads=2), TOKENS),
    Case("gpt_neo", "decoder", _hf("GPTNeoConfig", "GPTNeoForCausalLM", vocab_size=_SMALL_VOCAB, hidden_size=256,
                                   num_layers=4, num_heads=4, attention_types=[[["global", "local"], 2]]), TOKENS),
    Case("mbart", "encoder-decoder", _hf("MBartConfig", "MBartForConditionalGeneration", decoder=True,
                                         vocab_size=_SMALL_VOCAB, d_model=256, encoder_layers=2, decoder_layers=2,
                                         encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=1024,
                                         decoder_ffn_dim=1024), TOKENS),
    Case("gru_2layer", "RNN", lambda n: SequenceClassifier("gru", layers=2), SEQUENCE),
    Case("lstm_h256", "RNN", lambda n: SequenceClassifier("lstm", hidden=256), SEQUENCE),
    Case("resnet18_no_bn", "residual, trains", _without_norm("resnet18"),
         reason="8 basic blocks without batch norm: the stream grows ~2x and the short run trains (2.3 -> 0.5)"),
    Case("resnet101_no_bn", "sick: residual", _without_norm("resnet101"), expect="residual-stream-growth"),
    Case("lstm_forget_bias_-3", "sick: RNN", lambda n: SequenceClassifier("lstm", forget_bias=-3.0), SEQUENCE,
         expect="recurrent-gradient-flow"),
    Case("lstm_2layer_forget_bias_-4", "sick: RNN", lambda n: SequenceClassifier("lstm", layers=2, forget_bias=-4.0),
         SEQUENCE, expect="recurrent-gradient-flow"),
    Case("mobilenet_v2_sigmoid_output", "sick: CNN", lambda n: WithSigmoid(_tv().mobilenet_v2(num_classes=10)),
         expect="output-loss-mismatch"),
    Case("deit_softmax_output", "sick: ViT", lambda n: WithSoftmax(_timm_sized("deit_tiny_patch16_224")(n)),
         expect="output-loss-mismatch"),
    Case("deep_sigmoid_cnn", "sick: CNN", lambda n: DeepSigmoidCNN(), expect="vanishing-gradients"),
    Case("bert_init_range_1", "sick: encoder", _hf("BertConfig", "BertForMaskedLM", vocab_size=_SMALL_VOCAB,
                                                   hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                                                   intermediate_size=1024, initializer_range=1.0), TOKENS,
         expect="poor-initialization"),
    Case("resnet18_eval_export", "sick: export", _torchvision("resnet18"), expect="eval-mode-export", export_eval=True),
    Case("deit_zero_linear", "sick: init", _constant_init(_timm_sized("deit_tiny_patch16_224"), 0.0),
         expect="symmetric-weights"),
)


def by_name(name: str) -> Case:
    for case in CASES + UNSEEN:
        if case.name == name:
            return case
    raise KeyError(name)


def softmax_loss_floor(classes: int) -> float:
    """The lowest cross-entropy reachable with logits confined to [0, 1]: log(1 + (C-1)/e)."""
    return math.log(1 + (classes - 1) / math.e)
