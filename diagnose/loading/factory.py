"""Build a model by calling a user's factory: `pkg.module:build` or `path/to/file.py:build`."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from diagnose.errors import DiagnoseError, one_line
from diagnose.loading.imports import import_attribute

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True, slots=True, kw_only=True)
class FactoryResult:
    module: "torch.nn.Module"
    example_args: tuple | None
    example_kwargs: dict | None


def build_from_factory(spec: str) -> FactoryResult:
    """Import the factory named by `spec`, call it with no arguments, and validate what it returns."""
    factory = import_attribute(spec)
    if not callable(factory):
        raise DiagnoseError(f"{spec} is a {type(factory).__name__}, not a function; "
                            "point at a function that builds the model.")
    _require_no_arguments(factory, spec)
    try:
        built = factory()
    except Exception as exc:
        raise DiagnoseError(f"calling {spec}() raised {one_line(exc)}; fix the factory (run it in Python "
                            "to see the traceback, or pass --debug).") from exc
    return _validate(built, spec)


def _require_no_arguments(factory: Any, spec: str) -> None:
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return  # builtins and C callables: let the call itself tell
    required = [p.name for p in signature.parameters.values()
                if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if required:
        raise DiagnoseError(f"{spec} requires arguments ({', '.join(required)}); the factory is called with "
                            "none, so give them defaults or wrap it in a function without parameters.")


def _validate(built: Any, spec: str) -> FactoryResult:
    import torch

    if isinstance(built, torch.nn.Module):
        return FactoryResult(module=built, example_args=None, example_kwargs=None)
    if isinstance(built, tuple) and len(built) == 2 and isinstance(built[0], torch.nn.Module):
        args, kwargs = _example(built[1], spec)
        return FactoryResult(module=built[0], example_args=args, example_kwargs=kwargs)
    raise DiagnoseError(f"{spec}() returned a {type(built).__name__}; it must return an nn.Module "
                        "or (module, example_inputs).")


def _example(example: Any, spec: str) -> tuple[tuple, dict]:
    import torch

    if isinstance(example, torch.Tensor):
        return (example,), {}
    if isinstance(example, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in example):
        return tuple(example), {}
    if isinstance(example, dict) and all(isinstance(k, str) for k in example):
        return (), dict(example)
    raise DiagnoseError(f"{spec}() returned example inputs of type {type(example).__name__}; "
                        "use a tensor, a tuple of tensors, or a dict of keyword arguments.")
