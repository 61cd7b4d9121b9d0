"""Batches from --input-shape, --inputs/--targets files and example inputs: values, seeding, stats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from diagnose.config import DEFAULT_BATCH_SIZE
from diagnose.loading import load_model
from diagnose.loading.inputs import describe_input, prepare_batch

from .conftest import FACTORIES


@pytest.fixture(scope="module")
def mlp():
    return load_model(f"{FACTORIES}:build_mlp")


def test_input_shape_synthesizes_standard_normal(mlp) -> None:
    batch = prepare_batch(mlp, input_shapes=((512, 8),), seed=3)
    (x,) = batch.args
    assert batch.origin == "synthetic"
    assert batch.shapes == ((512, 8),)
    assert x.dtype == torch.float32
    assert abs(float(x.mean())) < 0.1 and abs(float(x.std()) - 1) < 0.1
    stats = batch.stats[0]
    assert stats.synthetic and not stats.integer
    assert stats.mean == pytest.approx(float(x.double().mean()))
    assert stats.std == pytest.approx(float(x.double().std(correction=0)))
    assert (stats.min, stats.max) == (float(x.min()), float(x.max()))


def test_several_input_shapes_give_several_inputs(static_export: Path) -> None:
    batch = prepare_batch(load_model(static_export), input_shapes=((4, 3), (4, 5)))
    assert [tuple(t.shape) for t in batch.args] == [(4, 3), (4, 5)]


def test_batch_size_replaces_first_dimension(mlp) -> None:
    assert prepare_batch(mlp, input_shapes=((64, 8),), batch_size=16).shapes == ((16, 8),)


def test_same_seed_same_batch_and_global_rng_untouched(mlp) -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = prepare_batch(mlp, input_shapes=((8, 8),), seed=7).args[0]
    second = prepare_batch(mlp, input_shapes=((8, 8),), seed=7).args[0]
    other = prepare_batch(mlp, input_shapes=((8, 8),), seed=8).args[0]
    assert torch.equal(first, second)
    assert not torch.equal(first, other)
    assert torch.equal(torch.get_rng_state(), state)


def test_embedding_first_model_gets_token_ids() -> None:
    loaded = load_model(f"{FACTORIES}:build_token_model")
    batch = prepare_batch(loaded, input_shapes=((64, 5),), seed=1)
    (ids,) = batch.args
    assert ids.dtype == torch.int64
    assert int(ids.min()) >= 0 and int(ids.max()) < 50
    assert batch.stats[0].integer and batch.stats[0].mean is None
    assert loaded.module(ids).shape == (64, 4)


def test_export_embedding_input_gets_token_ids(token_export: Path) -> None:
    batch = prepare_batch(load_model(token_export), input_shapes=((16, 6),))
    assert batch.args[0].dtype == torch.int64
    assert int(batch.args[0].max()) < 50


def test_examples_used_as_given_for_a_factory() -> None:
    batch = prepare_batch(load_model(f"{FACTORIES}:build_mlp_with_example"))
    assert batch.origin == "example"
    assert torch.equal(batch.args[0], torch.ones(4, 8))
    assert not batch.stats[0].synthetic


def test_tiny_dynamic_export_example_is_resized(dynamic_export: Path) -> None:
    batch = prepare_batch(load_model(dynamic_export), seed=0)
    assert batch.origin == "synthetic"
    assert batch.shapes == ((DEFAULT_BATCH_SIZE, 8),)
    assert batch.args[0].dtype == torch.float32


def test_dynamic_export_resized_to_requested_batch(dynamic_export: Path) -> None:
    assert prepare_batch(load_model(dynamic_export), batch_size=12).shapes == ((12, 8),)


def test_integer_examples_resized_within_their_range(token_export: Path) -> None:
    loaded = load_model(token_export)
    low, high = int(loaded.example_args[0].min()), int(loaded.example_args[0].max())
    batch = prepare_batch(loaded, batch_size=256)
    ids = batch.args[0]
    assert ids.shape == (256, 6) and ids.dtype == torch.int64
    assert low <= int(ids.min()) and int(ids.max()) <= high


def test_static_export_examples_kept(static_export: Path) -> None:
    batch = prepare_batch(load_model(static_export))
    assert batch.origin == "example"
    assert batch.shapes == ((4, 3), (4, 5))


def test_inputs_from_pt_tensor(mlp, tmp_path: Path) -> None:
    x = torch.randn(6, 8)
    torch.save(x, tmp_path / "x.pt")
    batch = prepare_batch(mlp, inputs_path=str(tmp_path / "x.pt"))
    assert batch.origin == "file"
    assert torch.equal(batch.args[0], x)
    assert batch.targets is None
    assert not batch.stats[0].synthetic


def test_inputs_from_pt_dict_with_targets(mlp, tmp_path: Path) -> None:
    x, y = torch.randn(6, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    torch.save({"inputs": x, "targets": y}, tmp_path / "data.pt")
    batch = prepare_batch(mlp, inputs_path=str(tmp_path / "data.pt"))
    assert torch.equal(batch.args[0], x)
    assert torch.equal(batch.targets, y)


def test_inputs_from_pt_tuple(static_export: Path, tmp_path: Path) -> None:
    torch.save((torch.randn(4, 3), torch.randn(4, 5)), tmp_path / "pair.pt")
    batch = prepare_batch(load_model(static_export), inputs_path=str(tmp_path / "pair.pt"))
    assert batch.shapes == ((4, 3), (4, 5))


def test_keyword_inputs_from_pt_dict(tmp_path: Path) -> None:
    torch.save({"input": torch.randn(3, 8)}, tmp_path / "kw.pt")
    batch = prepare_batch(load_model(f"{FACTORIES}:build_mlp"), inputs_path=str(tmp_path / "kw.pt"))
    assert batch.args == () and set(batch.kwargs) == {"input"}
    assert batch.stats[0].name == "input"


def test_inputs_from_npy_cast_to_model_dtype(mlp, tmp_path: Path) -> None:
    array = np.random.default_rng(0).normal(size=(5, 8))  # float64, numpy's default
    np.save(tmp_path / "x.npy", array)
    batch = prepare_batch(mlp, inputs_path=str(tmp_path / "x.npy"))
    assert batch.args[0].dtype == torch.float32
    assert np.allclose(batch.args[0].numpy(), array, atol=1e-6)


def test_inputs_and_targets_from_npz(mlp, tmp_path: Path) -> None:
    np.savez(tmp_path / "data.npz", inputs=np.ones((5, 8), dtype=np.float32), targets=np.arange(5) % 3)
    batch = prepare_batch(mlp, inputs_path=str(tmp_path / "data.npz"))
    assert batch.shapes == ((5, 8),)
    assert batch.targets.tolist() == [0, 1, 2, 0, 1]


def test_npz_arrays_are_positional_inputs(static_export: Path, tmp_path: Path) -> None:
    np.savez(tmp_path / "pair.npz", np.zeros((4, 3), np.float32), np.zeros((4, 5), np.float32))
    batch = prepare_batch(load_model(static_export), inputs_path=str(tmp_path / "pair.npz"))
    assert batch.shapes == ((4, 3), (4, 5))


@pytest.mark.parametrize("suffix", [".pt", ".npy", ".npz"])
def test_targets_file(mlp, tmp_path: Path, suffix: str) -> None:
    labels = np.array([2, 0, 1, 1])
    path = tmp_path / f"targets{suffix}"
    if suffix == ".pt":
        torch.save(torch.from_numpy(labels), path)
    elif suffix == ".npy":
        np.save(path, labels)
    else:
        np.savez(path, targets=labels)
    batch = prepare_batch(mlp, input_shapes=((4, 8),), targets_path=str(path))
    assert batch.targets.tolist() == [2, 0, 1, 1]


def test_describe_integer_input_has_no_moments() -> None:
    stats = describe_input("ids", torch.tensor([[1, 2], [3, 4]]), synthetic=False)
    assert stats.integer and stats.mean is None and stats.shape == (2, 2) and stats.dtype == "int64"


def test_inputs_with_no_finite_value_are_refused(tmp_path):
    import numpy as np

    from diagnose.errors import DiagnoseError
    from diagnose.loading.inputs import make_batch
    import torch

    with pytest.raises(DiagnoseError, match="no finite value"):
        make_batch((torch.full((4, 3), float("nan")),), {}, targets=None, origin="file", synthetic=False, device="cpu")
    partly = torch.randn(4, 3)
    partly[0, 0] = float("nan")
    batch = make_batch((partly,), {}, targets=None, origin="file", synthetic=False, device="cpu")
    assert batch.shapes == ((4, 3),)
