"""Build a model by calling a user's factory: `pkg.module:build` or `path/to/file.py:build`."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from diagnose.errors import DiagnoseError
from diagnose.loading._messages import one_line

if TYPE_CHECKING:
    import torch

# Files imported by path are registered under this prefix plus a stable hash of their location,
# so classes they define keep a resolvable __module__ (dataclasses, pickling, deepcopy need it)
# without shadowing a real module of the same name.
FILE_MODULE_PREFIX = "_diagnose_factory_"
# Eight hex digits tell apart the handful of factory files one process ever imports.
FILE_DIGEST_CHARS = 8


@dataclass(frozen=True, slots=True, kw_only=True)
class FactoryResult:
    module: "torch.nn.Module"
    example_args: tuple | None
    example_kwargs: dict | None


def is_factory_spec(source: str) -> bool:
    """`a.b:fn` or `file.py:fn`, as opposed to a path (which never has `:` before a name on POSIX)."""
    target, sep, attribute = source.rpartition(":")
    return bool(sep and target and attribute.isidentifier())


def build_from_factory(spec: str) -> FactoryResult:
    """Import the factory named by `spec`, call it with no arguments, and validate what it returns."""
    target, _, attribute = spec.rpartition(":")
    namespace = _import_file(Path(target)) if target.endswith(".py") else _import_module(target)
    factory = getattr(namespace, attribute, None)
    if factory is None:
        raise DiagnoseError(f"{target} has no attribute {attribute!r}; check the name after the colon in {spec}.")
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


def _import_module(name: str) -> ModuleType:
    try:
        with _on_sys_path(Path.cwd()):  # like `python -m`: the current folder's packages are importable
            return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            raise DiagnoseError(f"no module named {exc.name!r}; install the package or run from the folder "
                                "that contains it (or pass a file: path/to/file.py:build).") from exc
        raise DiagnoseError(f"importing {name} failed: {one_line(exc)}; install what it needs.") from exc
    except Exception as exc:
        raise DiagnoseError(f"importing {name} failed: {one_line(exc)}; fix the module.") from exc


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise DiagnoseError(f"factory file {path} does not exist; pass path/to/file.py:build.")
    resolved = path.resolve()
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:FILE_DIGEST_CHARS]
    name = f"{FILE_MODULE_PREFIX}{resolved.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise DiagnoseError(f"{path} cannot be imported as a Python file; pass a .py file.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        with _on_sys_path(resolved.parent):  # so `import sibling` inside the file works
            spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise DiagnoseError(f"importing {path} failed: {one_line(exc)}; fix the file.") from exc
    return module


@contextmanager
def _on_sys_path(folder: Path) -> Iterator[None]:
    entry = str(folder)
    added = entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    try:
        yield
    finally:
        if added and entry in sys.path:
            sys.path.remove(entry)


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
