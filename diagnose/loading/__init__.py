"""Load what the user passed as MODEL into an nn.Module, dispatching on the file's sniffed content.

`load_model` accepts a torch.export archive, a TorchScript archive, a torch.save'd whole module
(only with trust_pickle), a Hugging Face checkpoint directory, a factory `pkg.module:build` /
`file.py:build`, or an nn.Module object.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diagnose.errors import DiagnoseError
from diagnose.loading.specs import InputSpec

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadedModel:
    """A model ready to probe, with what its source said about its inputs."""

    module: "torch.nn.Module"  # for TorchScript: the ScriptModule
    format: str  # "export" | "factory" | "torchscript" | "pickle" | "huggingface" | "module"
    source: str  # what the user passed (path or pkg.mod:fn), or the class name for a module object
    example_args: tuple | None  # positional example inputs (archive sample inputs, or a factory's)
    example_kwargs: dict | None
    dynamic_batch: bool  # any batch size fits: an export's dynamic dim 0, a Hugging Face model
    limitations: tuple[str, ...] = ()  # plain sentences: probes that cannot run on this model
    input_specs: tuple[InputSpec, ...] = ()  # declared inputs (export, Hugging Face config), or the token input
    frozen_norms: int = 0  # batch-norm ops an export archive runs in inference mode (exported after .eval())


def load_model(source: "str | Path | torch.nn.Module", *, weights: str | None = None,
               trust_pickle: bool = False, device: str = "cpu") -> LoadedModel:
    """Load `source` onto `device`, apply `weights` if given, and describe its inputs."""
    import torch

    from diagnose.loading.weights import apply_weights

    if isinstance(source, torch.nn.Module):
        loaded = _wrap_module(source)
    elif isinstance(source, (str, Path)):
        loaded = _load_source(str(source), trust_pickle=trust_pickle, device=device, weights=weights)
    else:
        raise DiagnoseError(f"cannot load a {type(source).__name__} as a model; pass an nn.Module, "
                            "a model file, or a factory like pkg.module:build.")
    if weights is not None:
        if loaded.module is source:  # the caller's own model: the weights go into a copy of it
            from diagnose.cloning import clone_module

            loaded = replace(loaded, module=clone_module(source))
        apply_weights(loaded.module, Path(weights), trust_pickle=trust_pickle, device=device)
    return loaded


def _load_source(source: str, *, trust_pickle: bool, device: str, weights: str | None = None) -> LoadedModel:
    from diagnose.loading import sniff
    from diagnose.loading.factory import build_from_factory
    from diagnose.loading.imports import is_reference

    path = Path(source)
    if not path.exists() and is_reference(source):
        built = build_from_factory(source)
        return LoadedModel(module=built.module.to(device), format="factory", source=source,
                           example_args=_to_device(built.example_args, device),
                           example_kwargs=_to_device(built.example_kwargs, device),
                           dynamic_batch=False, input_specs=token_input_of(built.module))
    form = sniff.sniff_model_file(path)
    if form == sniff.HUGGINGFACE:
        from diagnose.loading.huggingface import FORMAT, load_huggingface

        if weights is not None:
            raise DiagnoseError(f"{source} is a Hugging Face directory, which holds its own weights; "
                                "drop --weights (or save those weights into the directory with save_pretrained).")
        contents = load_huggingface(path, trust_pickle=trust_pickle, device=device)
        return LoadedModel(module=contents.module, format=FORMAT, source=source, example_args=None,
                           example_kwargs=None, dynamic_batch=True, limitations=contents.limitations,
                           input_specs=contents.input_specs)
    if form == sniff.EXPORT:
        from diagnose.loading.export import load_export

        contents = load_export(path, trust_pickle=trust_pickle, device=device)
        return LoadedModel(module=contents.module, format="export", source=source,
                           example_args=contents.example_args, example_kwargs=contents.example_kwargs,
                           dynamic_batch=contents.dynamic_batch, limitations=contents.limitations,
                           input_specs=contents.input_specs, frozen_norms=contents.frozen_norms)
    if form == sniff.TORCHSCRIPT:
        from diagnose.loading.torchscript import HOOKS_LIMITATION, load_torchscript

        return LoadedModel(module=load_torchscript(path, device=device), format="torchscript", source=source,
                           example_args=None, example_kwargs=None, dynamic_batch=False,
                           limitations=(HOOKS_LIMITATION,))
    from diagnose.loading.pickled import load_pickled_module

    module = load_pickled_module(path, trust_pickle=trust_pickle, device=device)
    return LoadedModel(module=module.to(device), format="pickle", source=source, example_args=None,
                       example_kwargs=None, dynamic_batch=False, input_specs=token_input_of(module))


def _wrap_module(module: "torch.nn.Module") -> LoadedModel:
    # The caller's own model, left where it is: nn.Module.to would move its parameters in place
    # (check(model, device="cuda") once left a CPU model on the GPU). The probes run on a working
    # copy that diagnose/run.py moves to the device.
    return LoadedModel(module=module, format="module", source=type(module).__name__,
                       example_args=None, example_kwargs=None, dynamic_batch=False,
                       input_specs=token_input_of(module))


def token_input_of(module: "torch.nn.Module") -> tuple[InputSpec, ...]:
    """(InputSpec with vocab_size,) when the model's first layer is an embedding table, else ().

    "First layer" is the first registered leaf module that owns parameters: without running the
    model that is the best guess at execution order, and it holds for token models (GPT-2's wte,
    BERT's word_embeddings, a Sequential starting with nn.Embedding).
    """
    import torch

    for module_ in module.modules():
        if next(module_.children(), None) is not None or next(module_.parameters(False), None) is None:
            continue
        if isinstance(module_, (torch.nn.Embedding, torch.nn.EmbeddingBag)):
            return (InputSpec(name="input_ids", dtype="int64", vocab_size=module_.num_embeddings),)
        return ()
    return ()


def _to_device(value: Any, device: str) -> Any:
    import torch
    from torch.utils._pytree import tree_map

    if value is None:
        return None
    return tree_map(lambda v: v.to(device) if isinstance(v, torch.Tensor) else v, value)


__all__ = ["InputSpec", "LoadedModel", "load_model"]
