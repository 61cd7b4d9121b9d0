"""Resolve `pkg.module:name` or `path/to/file.py:name` to the Python object it names."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from diagnose.errors import DiagnoseError, one_line

# Files imported by path are registered under this prefix plus a hash of their location, so
# classes they define keep a resolvable __module__ (dataclasses, pickling and deepcopy look it
# up) without shadowing a real module of the same name.
FILE_MODULE_PREFIX = "_diagnose_file_"
# Eight hex digits tell apart the handful of files one process ever imports.
FILE_DIGEST_CHARS = 8


def is_reference(source: str) -> bool:
    """`a.b:fn` or `file.py:fn`, as opposed to a path (which never has `:` before a name on POSIX)."""
    target, sep, attribute = source.rpartition(":")
    return bool(sep and target and attribute.isidentifier())


def import_attribute(reference: str) -> Any:
    """The object `reference` names; DiagnoseError when the module or the attribute is missing."""
    target, sep, attribute = reference.rpartition(":")
    if not (sep and target and attribute.isidentifier()):
        raise DiagnoseError(f"{reference!r} is not MODULE:NAME or path/to/file.py:NAME.")
    namespace = import_file(Path(target)) if target.endswith(".py") else _import_module(target)
    if not hasattr(namespace, attribute):
        raise DiagnoseError(f"{target} has no attribute {attribute!r}; check the name after the colon in {reference}.")
    return getattr(namespace, attribute)


def _import_module(name: str) -> ModuleType:
    try:
        with _on_sys_path(Path.cwd()):  # like `python -m`: the current folder's packages are importable
            return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            raise DiagnoseError(f"no module named {exc.name!r}; install the package or run from the folder "
                                "that contains it (or name a file: path/to/file.py:NAME).") from exc
        raise DiagnoseError(f"importing {name} failed: {one_line(exc)}; install what it needs.") from exc
    except Exception as exc:
        raise DiagnoseError(f"importing {name} failed: {one_line(exc)}; fix the module.") from exc


def import_file(path: Path) -> ModuleType:
    """Execute a .py file as a module; its folder is on sys.path only while it imports."""
    if not path.is_file():
        raise DiagnoseError(f"{path} does not exist; pass path/to/file.py:NAME.")
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
