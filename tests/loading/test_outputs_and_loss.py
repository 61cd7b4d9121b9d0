"""Prediction extraction from any output structure, and the loss `auto` and named losses choose."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from diagnose.errors import DiagnoseError
from diagnose.loading import load_model
from diagnose.loading.inputs import prepare_batch
from diagnose.loading.loss import resolve_loss
from diagnose.loading.outputs import extract_output

from .conftest import FACTORIES

LOGITS = torch.randn(4, 3)


@dataclass
class HeadOutput:
    hidden: int
    logits: torch.Tensor


@dataclass
class PlainOutput:
    note: str
    scores: torch.Tensor


@pytest.mark.parametrize("output", [
    LOGITS,
    (LOGITS, torch.zeros(1)),
    [("not a tensor", LOGITS)],
    {"features": torch.zeros(2), "logits": LOGITS},
    {"note": "x", "scores": LOGITS},
    HeadOutput(hidden=3, logits=LOGITS),
    PlainOutput(note="x", scores=LOGITS),
])
def test_prediction_found(output) -> None:
    prediction, model_loss = extract_output(output)
    assert prediction is LOGITS
    assert model_loss is None


def test_model_loss_is_returned_but_never_taken_as_prediction() -> None:
    loss = torch.tensor(1.5)
    prediction, model_loss = extract_output({"loss": loss, "scores": LOGITS})
    assert prediction is LOGITS and model_loss is loss


def test_no_tensor_anywhere() -> None:
    with pytest.raises(DiagnoseError, match="no tensor"):
        extract_output({"a": 1, "b": ("x", None)})


def test_auto_cross_entropy_for_class_logits() -> None:
    spec = resolve_loss("auto", torch.randn(64, 10), None, seed=0)
    assert spec.kind == "cross-entropy" and spec.num_classes == 10
    assert spec.expected_initial == pytest.approx(math.log(10))
    assert spec.targets.shape == (64,) and spec.targets.dtype == torch.int64
    assert int(spec.targets.min()) >= 0 and int(spec.targets.max()) < 10
    assert spec.fn(torch.zeros(64, 10), spec.targets).item() == pytest.approx(math.log(10))


def test_auto_cross_entropy_for_sequence_logits() -> None:
    prediction = torch.zeros(2, 7, 100)
    spec = resolve_loss("auto", prediction, None, seed=0)
    assert spec.kind == "cross-entropy" and spec.num_classes == 100
    assert spec.targets.shape == (2, 7)
    assert spec.fn(prediction, spec.targets).item() == pytest.approx(math.log(100))


def test_auto_mse_for_regression() -> None:
    prediction = torch.zeros(32, 1)
    spec = resolve_loss("auto", prediction, None, seed=0)
    assert spec.kind == "mse" and spec.num_classes is None and spec.expected_initial is None
    assert spec.targets.shape == (32, 1) and spec.targets.is_floating_point()
    assert spec.fn(prediction, spec.targets).item() == pytest.approx(float((spec.targets ** 2).mean()))


def test_random_labels_are_seeded() -> None:
    first = resolve_loss("auto", torch.zeros(50, 5), None, seed=4).targets
    assert torch.equal(first, resolve_loss("auto", torch.zeros(50, 5), None, seed=4).targets)
    assert not torch.equal(first, resolve_loss("auto", torch.zeros(50, 5), None, seed=5).targets)


def test_real_integer_targets_choose_cross_entropy() -> None:
    labels = torch.tensor([0, 2, 1, 1])
    spec = resolve_loss("auto", torch.zeros(4, 3), labels)
    assert spec.kind == "cross-entropy" and torch.equal(spec.targets, labels)


def test_label_out_of_range() -> None:
    with pytest.raises(DiagnoseError, match="3 classes"):
        resolve_loss("auto", torch.zeros(4, 3), torch.tensor([0, 1, 2, 3]))


def test_labels_with_wrong_shape() -> None:
    with pytest.raises(DiagnoseError, match="needs labels of shape"):
        resolve_loss("cross-entropy", torch.zeros(4, 3), torch.tensor([[0], [1]]))


def test_real_float_targets_choose_mse() -> None:
    targets = torch.randn(4, 2)
    spec = resolve_loss("auto", torch.zeros(4, 2), targets)
    assert spec.kind == "mse" and torch.equal(spec.targets, targets)


def test_flat_targets_for_a_single_output_column_are_reshaped() -> None:
    spec = resolve_loss("mse", torch.zeros(5, 1), torch.arange(5.0))
    assert spec.targets.shape == (5, 1)


def test_float_targets_of_another_shape() -> None:
    with pytest.raises(DiagnoseError, match="MSE needs them equal"):
        resolve_loss("mse", torch.zeros(4, 2), torch.zeros(4, 3))


def test_cross_entropy_on_regression_output() -> None:
    with pytest.raises(DiagnoseError, match="--loss mse"):
        resolve_loss("cross-entropy", torch.zeros(4, 1), None)


def test_named_mse_on_class_logits() -> None:
    assert resolve_loss("mse", torch.zeros(4, 3), None).targets.shape == (4, 3)


def test_module_function_loss(tmp_path) -> None:
    path = tmp_path / "my_losses.py"
    path.write_text("def l1(prediction, targets):\n    return (prediction - targets.float()).abs().mean()\n")
    spec = resolve_loss(f"{path}:l1", torch.zeros(4, 3), None, seed=0)
    assert spec.kind == f"{path}:l1"
    assert spec.targets.shape == (4,)  # the labels auto would draw
    assert spec.expected_initial is None


def test_callable_loss() -> None:
    def half_mse(prediction, targets):
        return 0.5 * ((prediction - targets) ** 2).mean()

    spec = resolve_loss(half_mse, torch.zeros(3, 1), torch.ones(3, 1))
    assert spec.kind == "half_mse"
    assert spec.fn(torch.zeros(3, 1), spec.targets).item() == pytest.approx(0.5)


def test_unknown_loss_name() -> None:
    with pytest.raises(DiagnoseError, match="unknown loss 'hinge'"):
        resolve_loss("hinge", torch.zeros(2, 2), None)


def test_gpt2_factory_end_to_end() -> None:
    pytest.importorskip("transformers")
    loaded = load_model(f"{FACTORIES}:build_gpt2")
    assert loaded.input_specs[0].vocab_size == 100
    batch = prepare_batch(loaded, input_shapes=((2, 16),), seed=0)
    assert batch.args[0].dtype == torch.int64 and int(batch.args[0].max()) < 100
    prediction, model_loss = extract_output(loaded.module(*batch.args))
    assert prediction.shape == (2, 16, 100) and model_loss is None
    spec = resolve_loss("auto", prediction, None, seed=0)
    assert spec.kind == "cross-entropy" and spec.expected_initial == pytest.approx(math.log(100))
    spec.fn(prediction, spec.targets).backward()


def test_gpt2_model_loss_is_extracted() -> None:
    pytest.importorskip("transformers")
    module = load_model(f"{FACTORIES}:build_gpt2").module
    ids = torch.randint(0, 100, (2, 8))
    output = module(ids, labels=ids)
    prediction, model_loss = extract_output(output)
    assert prediction is output.logits
    assert model_loss is output.loss
