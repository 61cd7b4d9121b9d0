"""Options declared once: what each option of `diagnose check` is, read by every surface that takes it.

An option is a field of `diagnose.config.Settings` declared with `option(...)`: the field gives its
name, type and default; the declaration gives its help text, its command-line spelling, whether
`[tool.diagnose]` and the Python API take it, how a given value is converted and what makes it
invalid. The command line (`diagnose.cli`), `diagnose.check(**options)` and the pyproject reader
(`diagnose.config`) are built from these records, so adding an option is one field. This module
imports neither torch nor typer.
"""

from __future__ import annotations

import dataclasses
import inspect
import numbers
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from diagnose.errors import DiagnoseError

# "no separate API default": the Python API uses the field's default
SAME_DEFAULT: Any = object()


@dataclass(frozen=True, slots=True, kw_only=True)
class Option:
    """One option: a `Settings` field and how each surface spells, converts and checks it."""

    help: str
    name: str = ""  # the Settings field and the Python keyword (filled in from the field)
    kind: type | None = None  # str, int, float or bool when the field is one of those (filled in)
    default: Any = None  # the field's default (filled in)
    flag: str | None = None  # the command line's spelling ("--input-shape"); None: not a flag
    short: str | None = None  # a one-letter alias ("-v")
    metavar: str | None = None
    argument: bool = False  # a positional argument of the command line (MODEL)
    negatable: bool = False  # also `--no-FLAG`, to switch off what [tool.diagnose] switched on
    repeatable: bool = False  # the flag may be given several times; each value is a string
    file: bool = True  # [tool.diagnose] accepts it
    file_aliases: tuple[str, ...] = ()  # further keys the file accepts for it
    file_refusal: str | None = None  # why [tool.diagnose] may not set it (said when it tries)
    path: bool = False  # a file name: read relative to the pyproject's directory
    api: bool = False  # a keyword of `diagnose.check`
    api_default: Any = SAME_DEFAULT  # the Python API's default where it is not the field's
    # a given value (a flag's, the file's or a Python keyword's) -> the field's value; raises
    # DiagnoseError naming `where`. None: the value must already be of `kind`.
    convert: Callable[[Any, str], Any] | None = None
    # raises DiagnoseError naming `label` when the value cannot work
    validate: Callable[[Any, str], None] | None = None

    @property
    def file_key(self) -> str:
        """The [tool.diagnose] key: the flag without its dashes, else the name with dashes."""
        return self.flag.removeprefix("--") if self.flag else self.name.replace("_", "-")

    @property
    def label(self) -> str:
        """How the command line and the file's messages name it: the flag, else the file key."""
        return self.flag or self.file_key

    @property
    def keyword_default(self) -> Any:
        return self.default if self.api_default is SAME_DEFAULT else self.api_default

    def value(self, given: Any, where: str) -> Any:
        """`given` as the field's value (DiagnoseError naming `where` when it cannot be)."""
        if self.convert is not None:
            return self.convert(given, where)
        return typed_value(self.kind, given, where)

    def check(self, value: Any, label: str) -> None:
        if self.validate is not None:
            self.validate(value, label)


def option(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING, **declaration: Any) -> Any:
    """A `Settings` field declared as an option (the keywords are `Option`'s)."""
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={"option": Option(**declaration)})


def declared_options(settings_class: type) -> tuple[Option, ...]:
    """The options of a dataclass's `option(...)` fields, in field order, with name, kind and default."""
    hints = typing.get_type_hints(settings_class)
    options = []
    for field in dataclasses.fields(settings_class):
        declaration = field.metadata.get("option")
        if declaration is None:
            continue
        default = field.default_factory() if field.default is dataclasses.MISSING else field.default
        kind = _scalar_kind(hints[field.name])
        if kind is None and declaration.convert is None:
            raise TypeError(f"option {field.name}: a {hints[field.name]} field needs a convert")
        options.append(dataclasses.replace(declaration, name=field.name, kind=kind, default=default))
    return tuple(options)


def _scalar_kind(hint: Any) -> type | None:
    """str / int / float / bool for a field of that type (or that type or None), else None."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        members = [m for m in typing.get_args(hint) if m is not type(None)]
        hint = members[0] if len(members) == 1 else None
    return hint if hint in (str, int, float, bool) else None


_KIND_WORDS = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def typed_value(kind: type | None, value: Any, where: str) -> Any:
    """`value` as `kind`: numbers of any numeric type (NumPy's too), never a bool as a number."""
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise DiagnoseError(f"{where} must be {_KIND_WORDS.get(kind, 'a string')}, not {value!r}")
    return kind(value) if kind in (int, float) else value


def keyword_signature(function: Callable, options: Iterable[Option]) -> inspect.Signature:
    """`function`'s signature with its `**options` replaced by the API's declared keywords."""
    own = [p for p in inspect.signature(function).parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    keywords = [
        inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=_shown_default(o.keyword_default))
        for o in options if o.api
    ]
    return inspect.Signature(own + keywords, return_annotation=inspect.signature(function).return_annotation)


def _shown_default(default: Any) -> Any:
    # an empty table reads as "none given": the signature shows None, not a mutable object a
    # caller might think is shared
    return None if isinstance(default, dict) else default
