"""Malicious pickles for the security tests: unpickling one creates a marker file.

They are built in each test's tmp_path; nothing malicious is checked in.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import torch


class CreatesMarker:
    """Unpickling this calls builtins.open(marker, "w"): code from the file runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def malicious_torch_save(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save({"weight": torch.zeros(2), "payload": CreatesMarker(marker)}, buffer)
    return buffer.getvalue()


def write_malicious_torch_save(path: Path, marker: Path) -> Path:
    path.write_bytes(malicious_torch_save(marker))
    return path


def rewrite_archive(source: Path, target: Path, replace: dict[str, bytes]) -> Path:
    """Copy a zip archive, replacing members whose name ends with a key of `replace`."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as copy:
        for info in original.infolist():
            data = original.read(info.filename)
            for suffix, new in replace.items():
                if info.filename.endswith(suffix):
                    data = new
            copy.writestr(info.filename, data)
    return target


def archive_with_malicious_sample_inputs(source: Path, target: Path, marker: Path) -> Path:
    return rewrite_archive(source, target, {"data/sample_inputs/model.pt": malicious_torch_save(marker)})


def archive_with_pickled_weight(source: Path, target: Path, marker: Path) -> Path:
    """Flip weight_0 to use_pickle and make it a malicious pickle (torch loads it weights_only=False)."""
    with zipfile.ZipFile(source) as original:
        config_name = next(n for n in original.namelist() if n.endswith("model_weights_config.json"))
        config = json.loads(original.read(config_name))
    for entry in config["config"].values():
        if entry["path_name"] == "weight_0":
            entry["use_pickle"] = True
    return rewrite_archive(source, target, {
        "model_weights_config.json": json.dumps(config).encode(),
        "data/weights/weight_0": malicious_torch_save(marker),
    })
