"""Tell which kind of model a MODEL path is from its content, not its extension."""

from __future__ import annotations

import zipfile
from pathlib import Path

from diagnose.errors import DiagnoseError

EXPORT = "export"
TORCHSCRIPT = "torchscript"
TORCH_SAVE = "torch-save"  # a torch.save zip: a whole pickled module, or a state dict
HUGGINGFACE = "huggingface"  # a directory saved with save_pretrained: config.json beside the weights
HUGGINGFACE_CONFIG = "config.json"

# torch.save's pre-1.6 format is a bare pickle stream, which opens with the PROTO opcode.
PICKLE_PROTO_OPCODE = b"\x80"
# Every zip file opens with a local file header; without an end record it was cut short.
ZIP_LOCAL_HEADER = b"PK\x03\x04"
# torch.export 2.7 and older wrote this member at the zip root instead of archive_format.
LEGACY_EXPORT_MEMBER = "serialized_exported_program.json"


def archive_relative_names(names: list[str]) -> set[str]:
    """Member names without the single top-level folder that torch writers put everything under."""
    return {name.split("/", 1)[1] if "/" in name else name for name in names}


def sniff_model_file(path: Path) -> str:
    """Return EXPORT, TORCHSCRIPT, TORCH_SAVE or HUGGINGFACE for `path`, or raise a DiagnoseError saying
    what it is not."""
    if not path.exists():
        raise DiagnoseError(f"{path} does not exist; pass a .pt2 archive, a TorchScript file, a torch.save "
                            "file, a Hugging Face directory or a factory like pkg.module:build.")
    if path.is_dir():
        if (path / HUGGINGFACE_CONFIG).is_file():
            return HUGGINGFACE
        raise DiagnoseError(f"{path} is a folder without a {HUGGINGFACE_CONFIG}, so neither a model file nor a "
                            "Hugging Face directory; pass the model file inside it, a directory saved with "
                            "save_pretrained, or a factory like pkg.module:build.")
    if zipfile.is_zipfile(path):
        return _sniff_zip(path)
    with path.open("rb") as handle:
        head = handle.read(len(ZIP_LOCAL_HEADER))
    if head.startswith(PICKLE_PROTO_OPCODE):
        return TORCH_SAVE
    if head == ZIP_LOCAL_HEADER:
        raise DiagnoseError(f"{path} is a truncated or corrupt zip archive (no end-of-archive record); "
                            "copy or re-save the file again.")
    raise DiagnoseError(f"{path} is not a PyTorch model file (neither a zip archive nor a pickle); "
                        "it may be truncated or corrupt. Re-save it with torch.export.save.")


def _sniff_zip(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise DiagnoseError(f"{path} is a corrupt zip archive ({exc}); re-save the model.") from exc
    relative = archive_relative_names(names)
    if "archive_format" in relative or LEGACY_EXPORT_MEMBER in names:
        return EXPORT
    if "constants.pkl" in relative and any(name.startswith("code/") for name in relative):
        return TORCHSCRIPT
    if "data.pkl" in relative:
        return TORCH_SAVE
    raise DiagnoseError(f"{path} is a zip archive but not one PyTorch wrote (no archive_format, "
                        "code/ or data.pkl member); pass a torch.export, TorchScript or torch.save file.")
