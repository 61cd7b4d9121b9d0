"""Model files for the loading tests, built once per session (exporting takes about a second)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from .factories import build_mlp

FACTORIES = Path(__file__).parent / "factories.py"


class TokenClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids).mean(dim=1))


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 2)
        self.b = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.a(x) + self.b(y)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def dynamic_export(models_dir: Path) -> Path:
    """An MLP exported with a dynamic batch dimension and a batch-2 example."""
    batch = torch.export.Dim("batch")
    program = torch.export.export(build_mlp(), (torch.randn(2, 8),), dynamic_shapes=({0: batch},))
    path = models_dir / "mlp_dynamic.pt2"
    torch.export.save(program, path)
    return path


@pytest.fixture(scope="session")
def static_export(models_dir: Path) -> Path:
    """Two inputs, exported with a fixed batch of 4 and saved under a misleading extension."""
    program = torch.export.export(TwoInputs(), (torch.randn(4, 3), torch.randn(4, 5)))
    path = models_dir / "two_inputs_static.pt2"
    torch.export.save(program, path)
    renamed = models_dir / "two_inputs_static.bin"
    renamed.write_bytes(path.read_bytes())
    return renamed


@pytest.fixture(scope="session")
def token_export(models_dir: Path) -> Path:
    ids = torch.randint(0, 50, (2, 6))
    program = torch.export.export(TokenClassifier(), (ids,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    path = models_dir / "tokens.pt2"
    torch.export.save(program, path)
    return path


@pytest.fixture(scope="session")
def torchscript_file(models_dir: Path) -> Path:
    path = models_dir / "mlp.ts.pt"
    torch.jit.script(build_mlp()).save(str(path))
    return path


@pytest.fixture(scope="session")
def whole_pickle(models_dir: Path) -> Path:
    path = models_dir / "whole.pt"
    torch.save(build_mlp(), path)
    return path


@pytest.fixture(scope="session")
def state_dict_file(models_dir: Path) -> Path:
    path = models_dir / "mlp_weights.pt"
    torch.save(build_mlp().state_dict(), path)
    return path
