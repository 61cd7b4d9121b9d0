"""Each MODEL form loads into a module that runs, with the right format, examples and limitations."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from diagnose.errors import DiagnoseError
from diagnose.loading import load_model
from diagnose.loading.torchscript import HOOKS_LIMITATION

from .conftest import FACTORIES
from .factories import build_mlp


def test_export_with_dynamic_batch(dynamic_export: Path) -> None:
    loaded = load_model(str(dynamic_export))
    assert loaded.format == "export"
    assert loaded.source == str(dynamic_export)
    assert loaded.dynamic_batch is True
    assert [tuple(t.shape) for t in loaded.example_args] == [(2, 8)]
    assert loaded.module(torch.randn(17, 8)).shape == (17, 3)
    assert loaded.input_specs[0].shape == (None, 8)


def test_export_static_is_sniffed_by_content_not_extension(static_export: Path) -> None:
    loaded = load_model(static_export)
    assert loaded.format == "export"
    assert loaded.dynamic_batch is False
    assert [tuple(t.shape) for t in loaded.example_args] == [(4, 3), (4, 5)]
    assert [s.shape for s in loaded.input_specs] == [(4, 3), (4, 5)]


def test_exported_module_trains(dynamic_export: Path) -> None:
    module = load_model(dynamic_export).module
    module(torch.randn(5, 8)).sum().backward()
    assert all(p.grad is not None for p in module.parameters())
    assert {name for name, _ in module.named_parameters()} == {"0.weight", "0.bias", "2.weight", "2.bias"}


def test_export_embedding_input_declares_vocabulary(token_export: Path) -> None:
    spec = load_model(token_export).input_specs[0]
    assert spec.vocab_size == 50
    assert spec.integer


def test_factory_by_file_path() -> None:
    loaded = load_model(f"{FACTORIES}:build_mlp")
    assert loaded.format == "factory"
    assert isinstance(loaded.module, nn.Sequential)
    assert loaded.example_args is None


def test_factory_by_module_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "userpkg_loading"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helpers.py").write_text("WIDTH = 6\n")
    (package / "nets.py").write_text(
        "from torch import nn\nfrom userpkg_loading.helpers import WIDTH\n"
        "def build():\n    return nn.Linear(WIDTH, 2)\n")
    monkeypatch.chdir(tmp_path)  # the folder a user runs `diagnose check userpkg_loading.nets:build` from
    try:
        loaded = load_model("userpkg_loading.nets:build")
    finally:
        for name in [n for n in sys.modules if n.startswith("userpkg_loading")]:
            del sys.modules[name]
    assert loaded.format == "factory"
    assert loaded.module.in_features == 6
    assert str(tmp_path) not in sys.path


def test_factory_file_can_import_its_siblings(tmp_path: Path) -> None:
    (tmp_path / "sibling_widths_for_loading.py").write_text("WIDTH = 7\n")
    (tmp_path / "build_net.py").write_text(
        "from torch import nn\nfrom sibling_widths_for_loading import WIDTH\n"
        "def build():\n    return nn.Linear(WIDTH, 1)\n")
    assert load_model(f"{tmp_path / 'build_net.py'}:build").module.in_features == 7


def test_factory_returning_module_and_example() -> None:
    loaded = load_model(f"{FACTORIES}:build_mlp_with_example")
    assert len(loaded.example_args) == 1
    assert torch.equal(loaded.example_args[0], torch.ones(4, 8))
    assert loaded.example_kwargs == {}


def test_factory_returning_keyword_example() -> None:
    loaded = load_model(f"{FACTORIES}:build_with_kwargs_example")
    assert loaded.example_args == ()
    assert set(loaded.example_kwargs) == {"input"}


def test_factory_with_token_embedding_declares_vocabulary() -> None:
    spec = load_model(f"{FACTORIES}:build_token_model").input_specs[0]
    assert spec.vocab_size == 50


def test_torchscript_loads_with_hook_limitation(torchscript_file: Path) -> None:
    loaded = load_model(torchscript_file)
    assert loaded.format == "torchscript"
    assert loaded.limitations == (HOOKS_LIMITATION,)
    assert isinstance(loaded.module, torch.jit.ScriptModule)
    assert loaded.module(torch.randn(2, 8)).shape == (2, 3)


def test_pickled_module_refused_without_trust(whole_pickle: Path) -> None:
    with pytest.raises(DiagnoseError, match="--trust-pickle"):
        load_model(whole_pickle)


def test_pickled_module_loads_with_trust(whole_pickle: Path) -> None:
    loaded = load_model(whole_pickle, trust_pickle=True)
    assert loaded.format == "pickle"
    assert torch.equal(loaded.module[0].weight, build_mlp()[0].weight)


def test_module_object_is_wrapped_without_copy() -> None:
    model = build_mlp()
    loaded = load_model(model)
    assert loaded.module is model
    assert loaded.format == "module"
    assert loaded.source == "Sequential"


def test_weights_from_torch_save(tmp_path: Path) -> None:
    trained = build_mlp()
    with torch.no_grad():
        trained[0].weight.fill_(0.5)
    path = tmp_path / "weights.pt"
    torch.save(trained.state_dict(), path)
    loaded = load_model(f"{FACTORIES}:build_mlp", weights=str(path))
    assert torch.all(loaded.module[0].weight == 0.5)


def test_weights_inside_a_checkpoint_dict(tmp_path: Path) -> None:
    trained = build_mlp()
    with torch.no_grad():
        trained[2].bias.fill_(3.0)
    path = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 3, "state_dict": trained.state_dict(), "optimizer": {"lr": 0.1}}, path)
    loaded = load_model(f"{FACTORIES}:build_mlp", weights=str(path))
    assert torch.all(loaded.module[2].bias == 3.0)


def test_weights_from_safetensors(tmp_path: Path) -> None:
    safetensors_torch = pytest.importorskip("safetensors.torch")
    trained = build_mlp()
    with torch.no_grad():
        trained[0].bias.fill_(-1.0)
    path = tmp_path / "weights.safetensors"
    safetensors_torch.save_file(trained.state_dict(), str(path))
    loaded = load_model(f"{FACTORIES}:build_mlp", weights=str(path))
    assert torch.all(loaded.module[0].bias == -1.0)
