"""No data file runs code unless --trust-pickle: each payload would create a marker file if unpickled."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from diagnose.errors import DiagnoseError
from diagnose.loading import load_model
from diagnose.loading.inputs import prepare_batch

from .conftest import FACTORIES
from .payloads import (
    CreatesMarker,
    archive_with_malicious_sample_inputs,
    archive_with_pickled_weight,
    rewrite_archive,
    write_malicious_torch_save,
)


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "PWNED"


def test_payload_is_live_when_trusted(dynamic_export: Path, tmp_path: Path, marker: Path) -> None:
    """The crafted archive really runs code through torch.export.load: the refusals below matter."""
    crafted = archive_with_malicious_sample_inputs(dynamic_export, tmp_path / "crafted.pt2", marker)
    try:
        load_model(crafted, trust_pickle=True)
    except DiagnoseError:
        pass  # the payload is not valid sample inputs; what matters is that it ran
    assert marker.exists()


def test_export_with_malicious_sample_inputs_is_refused(dynamic_export: Path, tmp_path: Path,
                                                         marker: Path) -> None:
    crafted = archive_with_malicious_sample_inputs(dynamic_export, tmp_path / "crafted.pt2", marker)
    with pytest.raises(DiagnoseError, match="--trust-pickle") as raised:
        load_model(crafted)
    assert "sample_inputs" in str(raised.value)
    assert not marker.exists()


def test_export_with_pickled_weight_is_refused(dynamic_export: Path, tmp_path: Path, marker: Path) -> None:
    crafted = archive_with_pickled_weight(dynamic_export, tmp_path / "crafted.pt2", marker)
    with pytest.raises(DiagnoseError, match="--trust-pickle"):
        load_model(crafted)
    assert not marker.exists()


def test_export_with_native_code_is_refused(dynamic_export: Path, tmp_path: Path) -> None:
    crafted = tmp_path / "aoti.pt2"
    rewrite_archive(dynamic_export, crafted, {})
    with zipfile.ZipFile(crafted, "a") as archive:
        archive.writestr("mlp_dynamic/data/aotinductor/model/model.so", b"\x7fELF not really")
    with pytest.raises(DiagnoseError, match="AOTInductor.*--trust-pickle"):
        load_model(crafted)


def test_malicious_weights_file_is_refused(tmp_path: Path, marker: Path) -> None:
    weights = write_malicious_torch_save(tmp_path / "weights.pt", marker)
    with pytest.raises(DiagnoseError, match="--trust-pickle"):
        load_model(f"{FACTORIES}:build_mlp", weights=str(weights))
    assert not marker.exists()


def test_malicious_inputs_file_is_refused(tmp_path: Path, marker: Path) -> None:
    inputs = write_malicious_torch_save(tmp_path / "inputs.pt", marker)
    loaded = load_model(f"{FACTORIES}:build_mlp")
    with pytest.raises(DiagnoseError, match="runs arbitrary code"):
        prepare_batch(loaded, inputs_path=str(inputs))
    assert not marker.exists()


def test_malicious_targets_file_is_refused(tmp_path: Path, marker: Path) -> None:
    targets = write_malicious_torch_save(tmp_path / "targets.pt", marker)
    loaded = load_model(f"{FACTORIES}:build_mlp")
    with pytest.raises(DiagnoseError, match="runs arbitrary code"):
        prepare_batch(loaded, input_shapes=((4, 8),), targets_path=str(targets))
    assert not marker.exists()


@pytest.mark.parametrize("option", ["inputs_path", "targets_path"])
def test_npy_object_array_is_refused(tmp_path: Path, marker: Path, option: str) -> None:
    path = tmp_path / "objects.npy"
    np.save(path, np.array([CreatesMarker(marker)], dtype=object), allow_pickle=True)
    assert not marker.exists()
    loaded = load_model(f"{FACTORIES}:build_mlp")
    shapes = ((4, 8),) if option == "targets_path" else ()
    with pytest.raises(DiagnoseError, match="object array"):
        prepare_batch(loaded, input_shapes=shapes, **{option: str(path)})
    assert not marker.exists()


def test_npz_with_object_array_is_refused(tmp_path: Path, marker: Path) -> None:
    path = tmp_path / "objects.npz"
    np.savez(path, inputs=np.array([CreatesMarker(marker)], dtype=object))
    with pytest.raises(DiagnoseError, match="object array"):
        prepare_batch(load_model(f"{FACTORIES}:build_mlp"), inputs_path=str(path))
    assert not marker.exists()


def test_whole_pickle_model_is_refused_without_trust(tmp_path: Path, marker: Path) -> None:
    model = write_malicious_torch_save(tmp_path / "model.pt", marker)
    with pytest.raises(DiagnoseError, match="pickled module.*--trust-pickle"):
        load_model(model)
    assert not marker.exists()


def test_legacy_pickle_model_is_refused_without_trust(tmp_path: Path, marker: Path) -> None:
    path = tmp_path / "legacy.pt"
    torch.save(CreatesMarker(marker), path, _use_new_zipfile_serialization=False)
    with pytest.raises(DiagnoseError, match="--trust-pickle"):
        load_model(path)
    assert not marker.exists()


def test_export_with_repeated_member_names_is_refused(dynamic_export: Path, tmp_path: Path,
                                                      marker: Path) -> None:
    """A malicious first copy and a clean last copy: readers may disagree on which one counts."""
    crafted = archive_with_malicious_sample_inputs(dynamic_export, tmp_path / "repeated.pt2", marker)
    with zipfile.ZipFile(dynamic_export) as original:
        name = next(n for n in original.namelist() if n.endswith("data/sample_inputs/model.pt"))
        clean = original.read(name)
    with zipfile.ZipFile(crafted, "a") as archive:
        archive.writestr(name, clean)
    with pytest.raises(DiagnoseError, match="repeats member names"):
        load_model(crafted)
    assert not marker.exists()
