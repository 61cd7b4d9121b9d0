"""Load a torch.export `.pt2` archive, after proving that no member of it can run pickled code."""

from __future__ import annotations

import json
import posixpath
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diagnose.errors import DiagnoseError, one_line
from diagnose.loading.safety import UnsafePickle, load_tensors_only, refuse_unsafe
from diagnose.loading.sniff import LEGACY_EXPORT_MEMBER
from diagnose.loading.specs import InputSpec

if TYPE_CHECKING:
    import torch

# Members torch.export.load only reads as text or JSON, never unpickles (pt2 archive layout,
# torch/export/pt2_archive/constants.py). Everything else must prove itself weights-only.
TEXT_MEMBERS = frozenset({"archive_format", "archive_version", "byteorder", ".data/version",
                          ".data/serialization_id", "version", LEGACY_EXPORT_MEMBER})
MODELS_DIR = "models/"
EXTRA_DIR = "extra/"
WEIGHTS_DIR = "data/weights/"
CONSTANTS_DIR = "data/constants/"
WEIGHTS_CONFIG_SUFFIX = "_weights_config.json"
CONSTANTS_CONFIG_SUFFIX = "_constants_config.json"
# Constants whose file name starts with this are raw tensor bytes unless flagged use_pickle; any
# other constant (custom_obj_, opaque_obj_) goes through a pickle loader whatever its flags say.
TENSOR_CONSTANT_PREFIX = "tensor_"
# AOTInductor packages carry compiled shared libraries that torch.export.load dlopens.
NATIVE_CODE_DIRS = ("data/aotinductor/",)


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportContents:
    module: "torch.nn.Module"
    example_args: tuple | None
    example_kwargs: dict | None
    dynamic_batch: bool
    input_specs: tuple[InputSpec, ...]
    limitations: tuple[str, ...]
    frozen_norms: int = 0  # batch-norm ops recorded with training=False (exported after .eval())


def load_export(path: Path, *, trust_pickle: bool, device: str) -> ExportContents:
    """torch.export.load + unflatten, with the archive's example inputs and input declarations."""
    import torch

    if not trust_pickle:
        check_archive_payloads(path)
    try:
        # A handle, so torch does not insist on a .pt2 suffix.
        with path.open("rb") as handle, _quiet_torch_deprecations():
            program = torch.export.load(handle)
    except Exception as exc:
        raise DiagnoseError(f"{path} could not be loaded as a torch.export archive ({one_line(exc)}); "
                            "re-save it with torch.export.save from this torch version.") from exc
    module, limitations = _unflatten(program)
    module = module.to(device)
    args, kwargs = _example_inputs(program, device)
    specs = declared_inputs(program)
    return ExportContents(module=module, example_args=args, example_kwargs=kwargs,
                          dynamic_batch=any(s.shape is not None and s.shape[:1] == (None,) for s in specs),
                          input_specs=specs, limitations=limitations, frozen_norms=eval_mode_norms(program))


def check_archive_payloads(path: Path) -> None:
    """Refuse the archive unless every member torch would unpickle loads with weights_only=True."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = [info for info in archive.infolist() if not info.is_dir()]
            names = [info.filename for info in members]
            if len(set(names)) != len(names):
                # Python's zipfile and torch's reader may pick different entries of a repeated
                # name, so the one checked here need not be the one torch unpickles.
                raise DiagnoseError(f"{path} repeats member names, a sign of tampering; re-save the model "
                                    "with torch.export.save, or pass --trust-pickle if you trust its source.")
            legacy = LEGACY_EXPORT_MEMBER in names  # torch <= 2.7 layout: members at the root
            relative = {name: name if legacy else _strip_root(name) for name in names}
            raw, pickled = _payload_references(archive, relative)
            for info in members:
                rel = relative[info.filename]
                if rel.startswith(NATIVE_CODE_DIRS):
                    raise DiagnoseError(f"{path} contains compiled AOTInductor code ({rel}), which loading "
                                        "would run. Pass --trust-pickle if you trust its source.")
                if (rel in raw and rel not in pickled) or _is_text(rel, pickled):
                    continue
                _check_member(path, rel, archive.read(info))
    except zipfile.BadZipFile as exc:
        raise DiagnoseError(f"{path} is a corrupt zip archive ({exc}); re-save the model.") from exc


def _check_member(path: Path, rel: str, data: bytes) -> None:
    try:
        load_tensors_only(data)
    except UnsafePickle as exc:
        raise refuse_unsafe(f"{path} (member {rel})", trust_option=True) from exc
    except Exception as exc:
        raise DiagnoseError(f"{path} member {rel} is neither a tensor payload nor a weights-only "
                            f"pickle ({one_line(exc)}); it may be corrupt or hold code. "
                            "Pass --trust-pickle if you trust its source.") from exc


def _payload_references(archive: zipfile.ZipFile, relative: dict[str, str]) -> tuple[set[str], set[str]]:
    """Members the configs name as raw tensor bytes, and members they route to a pickle loader."""
    raw: set[str] = set()
    pickled: set[str] = set()
    for name, rel in relative.items():
        for base, suffix in ((WEIGHTS_DIR, WEIGHTS_CONFIG_SUFFIX), (CONSTANTS_DIR, CONSTANTS_CONFIG_SUFFIX)):
            if not (rel.startswith(base) and rel.endswith(suffix)):
                continue
            try:
                entries = json.loads(archive.read(name))["config"]
                payloads = [(e["path_name"], bool(e.get("use_pickle"))) for e in entries.values()]
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise DiagnoseError(f"{archive.filename} has a malformed {rel} ({one_line(exc)}); "
                                    "re-save the model with torch.export.save.") from exc
            for path_name, use_pickle in payloads:
                member = posixpath.join(base, path_name)
                is_raw = not use_pickle and (base == WEIGHTS_DIR or path_name.startswith(TENSOR_CONSTANT_PREFIX))
                (raw if is_raw else pickled).add(member)
    return raw, pickled


def _is_text(rel: str, pickled: set[str]) -> bool:
    if rel in pickled:
        return False
    if rel in TEXT_MEMBERS or rel.startswith(EXTRA_DIR):
        return True
    if rel.startswith(MODELS_DIR) and rel.endswith(".json"):
        return True
    return (rel.startswith(WEIGHTS_DIR) and rel.endswith(WEIGHTS_CONFIG_SUFFIX)) or (
        rel.startswith(CONSTANTS_DIR) and rel.endswith(CONSTANTS_CONFIG_SUFFIX))


def _strip_root(name: str) -> str:
    return name.split("/", 1)[1] if "/" in name else name


# The batch-norm ops of an exported graph, and where their `training` flag sits in the arguments.
# Export records the mode the model was in: after `.eval()` the flag is False and the graph
# normalises with running statistics forever, whatever `.train()` is called on the loaded module.
_BATCH_NORM_TRAINING_ARG = {"aten.batch_norm.default": 5, "aten.native_batch_norm.default": 5,
                            "aten._native_batch_norm_legit.default": 5}
_FROZEN_BATCH_NORM = ("aten._native_batch_norm_legit_no_training.default",)


def frozen_norm_ops(program: Any) -> int:
    """How many batch-norm ops of the exported graph run in inference mode (running statistics)."""
    return batch_norm_modes(program)[0]


def eval_mode_norms(program: Any) -> int:
    """The frozen batch-norm ops of an archive exported in eval mode: all of them, or 0.

    A train-mode export in which some batch norms were deliberately frozen (fine-tuning with
    frozen statistics) keeps the others in training mode: those frozen ones are the user's
    choice, not an eval-mode export.
    """
    frozen, total = batch_norm_modes(program)
    return frozen if total and frozen == total else 0


def batch_norm_modes(program: Any) -> tuple[int, int]:
    """(batch-norm ops in inference mode, all batch-norm ops) of the exported graph."""
    frozen = total = 0
    for module in _graph_modules(program):
        for node in module.graph.nodes:
            if node.op != "call_function":
                continue
            target = str(node.target)
            if target in _FROZEN_BATCH_NORM:
                frozen += 1
                total += 1
            elif target in _BATCH_NORM_TRAINING_ARG:
                position = _BATCH_NORM_TRAINING_ARG[target]
                training = node.args[position] if len(node.args) > position else node.kwargs.get("training", True)
                frozen += training is False
                total += 1
    return frozen, total


def _graph_modules(program: Any):
    graph_module = getattr(program, "graph_module", None)
    if graph_module is None:
        return []
    modules = [graph_module]
    for _, sub in graph_module.named_modules():  # control-flow subgraphs (cond, map) carry their own
        if sub is not graph_module and hasattr(sub, "graph"):
            modules.append(sub)
    return modules


def _unflatten(program: Any) -> tuple["torch.nn.Module", tuple[str, ...]]:
    import torch

    try:
        with _quiet_torch_deprecations():
            return torch.export.unflatten(program), ()
    except Exception as exc:  # unflatten rejects some programs; the flat graph still trains
        limitation = ("torch.export.unflatten failed on this program "
                      f"({one_line(exc)}), so layers are the flat graph's, not the original modules")
        return program.module(), (limitation,)


@contextmanager
def _quiet_torch_deprecations() -> Iterator[None]:
    """torch's own pytree FutureWarnings while (de)serializing are not the user's to act on."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


def _example_inputs(program: Any, device: str) -> tuple[tuple | None, dict | None]:
    import torch
    from torch.utils._pytree import tree_map

    examples = program.example_inputs
    if examples is None:
        return None, None
    args, kwargs = examples

    def to_device(value: Any) -> Any:
        return value.to(device) if isinstance(value, torch.Tensor) else value

    return tuple(tree_map(to_device, tuple(args))), dict(tree_map(to_device, dict(kwargs)))


def declared_inputs(program: Any) -> tuple[InputSpec, ...]:
    """One InputSpec per positional input, from the program's input placeholders."""
    nodes = {node.name: node for node in program.graph.nodes if node.op == "placeholder"}
    user_inputs = list(program.graph_signature.user_inputs)
    positional = _positional_count(program, len(user_inputs))
    return tuple(_spec_of(nodes[name]) for name in user_inputs[:positional] if name in nodes)


def _positional_count(program: Any, total: int) -> int:
    """How many user inputs are positional: the leaves of in_spec's args tuple, when all are leaves."""
    try:
        in_spec = program.call_spec.in_spec
        # TreeSpec.child() replaced the children_specs list (deprecated) in recent torch.
        args_spec = in_spec.child(0) if hasattr(in_spec, "child") else in_spec.children_specs[0]
        if args_spec.num_leaves == args_spec.num_children:
            return args_spec.num_children
    except (AttributeError, IndexError):
        pass
    return total


def _spec_of(node: Any) -> InputSpec:
    value = node.meta.get("val")
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    return InputSpec(
        name=node.name,
        shape=None if shape is None else tuple(d if isinstance(d, int) else None for d in shape),
        dtype=None if dtype is None else str(dtype).removeprefix("torch."),
        vocab_size=_embedding_vocab(node),
    )


def _embedding_vocab(node: Any) -> int | None:
    """num_embeddings of the table this input indexes, when it feeds aten.embedding directly."""
    for user in node.users:
        if "embedding" not in str(user.target) or len(user.args) < 2 or user.args[1] is not node:
            continue
        weight = user.args[0]
        table = weight.meta.get("val") if hasattr(weight, "meta") else None
        rows = getattr(table, "shape", (None,))[0]
        if isinstance(rows, int):
            return rows
    return None
