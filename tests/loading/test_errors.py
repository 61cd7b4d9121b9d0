"""Files and factories that cannot load give one DiagnoseError line that says what to do."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from diagnose.errors import DiagnoseError
from diagnose.loading import load_model
from diagnose.loading.inputs import prepare_batch

from .conftest import FACTORIES


def _message(excinfo: pytest.ExceptionInfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text
    return text


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DiagnoseError) as raised:
        load_model(str(tmp_path / "nope.pt2"))
    assert "does not exist" in _message(raised)


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "model.pt2"
    path.write_bytes(os.urandom(256).replace(b"\x80", b"\x00").replace(b"PK", b"pk"))
    with pytest.raises(DiagnoseError) as raised:
        load_model(path)
    assert "not a PyTorch model file" in _message(raised)


def test_truncated_zip(dynamic_export: Path, tmp_path: Path) -> None:
    path = tmp_path / "cut.pt2"
    path.write_bytes(dynamic_export.read_bytes()[:1000])
    with pytest.raises(DiagnoseError) as raised:
        load_model(path)
    assert "truncated or corrupt" in _message(raised)


def test_zip_that_pytorch_did_not_write(tmp_path: Path) -> None:
    import zipfile

    path = tmp_path / "notes.pt2"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(DiagnoseError, match="not one PyTorch wrote"):
        load_model(path)


def test_folder_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(DiagnoseError, match="is a folder"):
        load_model(tmp_path)


def test_state_dict_as_model_points_to_weights(state_dict_file: Path) -> None:
    with pytest.raises(DiagnoseError) as raised:
        load_model(state_dict_file)
    assert "--weights" in _message(raised)


def test_tensor_as_model(tmp_path: Path) -> None:
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(DiagnoseError, match="Tensor, not an nn.Module"):
        load_model(path)


@pytest.mark.parametrize(("name", "expected"), [
    ("build_raises", "the factory is broken"),
    ("build_returns_int", "returned a int"),
    ("build_needs_argument", "requires arguments (width)"),
    ("NOT_CALLABLE", "not a function"),
    ("no_such_function", "has no attribute 'no_such_function'"),
])
def test_factory_errors(name: str, expected: str) -> None:
    with pytest.raises(DiagnoseError) as raised:
        load_model(f"{FACTORIES}:{name}")
    assert expected in _message(raised)


def test_factory_module_not_found() -> None:
    with pytest.raises(DiagnoseError, match="no module named 'no_such_package_xyz'"):
        load_model("no_such_package_xyz.models:build")


def test_factory_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(DiagnoseError, match="does not exist"):
        load_model(f"{tmp_path / 'missing.py'}:build")


def test_factory_file_that_fails_to_import(tmp_path: Path) -> None:
    path = tmp_path / "broken.py"
    path.write_text("import no_such_dependency_xyz\n")
    with pytest.raises(DiagnoseError, match="importing .*broken.py failed: ModuleNotFoundError"):
        load_model(f"{path}:build")


def test_weights_with_mismatched_keys(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), path)
    with pytest.raises(DiagnoseError) as raised:
        load_model(f"{FACTORIES}:build_mlp", weights=str(path))
    message = _message(raised)
    assert "missing 0.bias, 0.weight, 2.bias and 1 more" in message
    assert "unexpected bias, weight" in message


def test_weights_with_mismatched_shapes(tmp_path: Path) -> None:
    from .factories import build_mlp

    state = build_mlp().state_dict()
    state["0.weight"] = torch.zeros(16, 9)
    path = tmp_path / "wide.pt"
    torch.save(state, path)
    with pytest.raises(DiagnoseError, match="size mismatch for 0.weight"):
        load_model(f"{FACTORIES}:build_mlp", weights=str(path))


def test_missing_weights_file(tmp_path: Path) -> None:
    with pytest.raises(DiagnoseError, match="does not exist"):
        load_model(f"{FACTORIES}:build_mlp", weights=str(tmp_path / "nope.pt"))


def test_corrupt_weights_file(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    path.write_bytes(b"\x80\x04garbage")
    with pytest.raises(DiagnoseError, match="could not be read"):
        load_model(f"{FACTORIES}:build_mlp", weights=str(path))


def test_inputs_file_with_wrong_shape_for_static_export(static_export: Path, tmp_path: Path) -> None:
    path = tmp_path / "inputs.pt"
    torch.save((torch.randn(4, 3), torch.randn(4, 6)), path)
    with pytest.raises(DiagnoseError) as raised:
        prepare_batch(load_model(static_export), inputs_path=str(path))
    assert "shape 4x6" in _message(raised) and "exported for 4x5" in _message(raised)


def test_inputs_file_with_wrong_number_of_inputs(static_export: Path, tmp_path: Path) -> None:
    path = tmp_path / "inputs.pt"
    torch.save(torch.randn(4, 3), path)
    with pytest.raises(DiagnoseError, match="1 positional input.*takes 2"):
        prepare_batch(load_model(static_export), inputs_path=str(path))


def test_inputs_file_holding_something_else(tmp_path: Path) -> None:
    path = tmp_path / "inputs.pt"
    torch.save({"inputs": "not a tensor"}, path)
    with pytest.raises(DiagnoseError, match="not a tensor"):
        prepare_batch(load_model(f"{FACTORIES}:build_mlp"), inputs_path=str(path))


def test_corrupt_inputs_file(tmp_path: Path) -> None:
    path = tmp_path / "inputs.npy"
    path.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DiagnoseError, match="inputs"):
        prepare_batch(load_model(f"{FACTORIES}:build_mlp"), inputs_path=str(path))


def test_targets_with_a_different_batch(tmp_path: Path) -> None:
    path = tmp_path / "targets.pt"
    torch.save(torch.zeros(5, dtype=torch.long), path)
    with pytest.raises(DiagnoseError, match="5 rows but the inputs have a batch of 4"):
        prepare_batch(load_model(f"{FACTORIES}:build_mlp"), input_shapes=((4, 8),), targets_path=str(path))


def test_no_inputs_at_all() -> None:
    with pytest.raises(DiagnoseError, match="--input-shape"):
        prepare_batch(load_model(f"{FACTORIES}:build_mlp"))


def test_both_inputs_and_shapes(tmp_path: Path) -> None:
    with pytest.raises(DiagnoseError, match="not both"):
        prepare_batch(load_model(f"{FACTORIES}:build_mlp"), input_shapes=((4, 8),),
                      inputs_path=str(tmp_path / "x.pt"))


def test_batch_size_on_a_fixed_batch_export(static_export: Path) -> None:
    with pytest.raises(DiagnoseError, match="fixed batch of 4"):
        prepare_batch(load_model(static_export), batch_size=16)
