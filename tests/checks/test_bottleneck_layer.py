from diagnose.checks import bottleneck_layer as check_module

from .helpers import evidence, linear, only, zoo_report

ID = "bottleneck-layer"


def test_784_512_4_512_10_fires_on_the_4_unit_layer():
    finding = only(zoo_report("bottleneck-mlp"), ID)
    assert finding.layers == ("2",)
    assert finding.evidence["width"] == 4
    assert finding.fixes[0].id == "widen-layer"


def test_classifier_head_and_ffn_are_not_bottlenecks():
    for name in ("relu-mlp-default", "transformer-encoder-relu", "gpt-block"):
        assert not [f for f in zoo_report(name).findings if f.id == ID], name


def test_unchained_layers_are_not_compared():
    layers = [linear("a", 0, fan_in=512, fan_out=4), linear("b", 1, fan_in=8, fan_out=512)]
    assert check_module.check(evidence(layers), check_module.THRESHOLDS) == []
