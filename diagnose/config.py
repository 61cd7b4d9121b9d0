"""Settings for one check: command-line flags merged over `[tool.diagnose]` in pyproject.toml.

The file uses the flags' names, with dashes or underscores (`fail-on = "warning"`,
`input_shape = [[64, 784]]`), plus two tables:

    [tool.diagnose.thresholds.dead-relu]      # named threshold overrides of one check
    dead_fraction = 0.6

    [tool.diagnose.per-layer-ignores]         # layer name or fnmatch glob -> check ids
    "encoder.*" = ["dead-relu"]

Flags win over the file. Paths in the file are relative to the file's directory. This module does
not import torch.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from diagnose.errors import DiagnoseError
from diagnose.severity import FAIL_ON_CHOICES

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw", "nadam")
DEVICES = ("auto", "cpu", "cuda")
# The built-in losses; anything else must be a `MODULE:FN` reference to the user's own function.
LOSSES = ("auto", "cross-entropy", "mse")
# SGD at 0.01 is the contract's default: the most common starting point, and plain SGD makes
# the update ratio a direct reading of the gradient scale.
DEFAULT_OPTIMIZER = "sgd"
DEFAULT_LR = 0.01
DEFAULT_BATCH_SIZE = 32
# The command line runs a short training run by default: 20 plain SGD steps are enough for the
# learning-rate and loss-trend checks to see divergence or a stall, and cost about as much as
# the forward passes for the small models people check first. `--steps 0` skips it. (The Python
# API keeps the contract's steps=0 default and says so in its signature.)
DEFAULT_STEPS = 20

PYPROJECT = "pyproject.toml"


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    model: str = ""
    input_shapes: tuple[tuple[int, ...], ...] = ()
    inputs_path: str | None = None
    targets_path: str | None = None
    loss: str = "auto"
    steps: int = DEFAULT_STEPS
    optimizer: str = DEFAULT_OPTIMIZER
    lr: float = DEFAULT_LR
    batch_size: int | None = None
    weights: str | None = None
    trust_pickle: bool = False
    device: str = "auto"
    seed: int = 0
    json_path: str | None = None
    markdown_path: str | None = None
    junit_path: str | None = None
    html_path: str | None = None  # a self-contained HTML report with figures (diagnose[plot])
    plot_dir: str | None = None  # the report's figures as PNG files (diagnose[plot])
    fail_on: str = "error"
    select: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    try_fixes: bool = False
    debug: bool = False
    # The terminal report: every layer and every fix's snippet (default: a summary of a large table).
    verbose: bool = False
    # No progress display on stderr (it is shown only when stderr is a terminal anyway).
    quiet: bool = False
    # {"dead-relu": {"dead_fraction": 0.6}}: overrides of the checks' named thresholds
    thresholds: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    # {"net.0": ("dead-relu",)}: findings of these ids drop these layers
    per_layer_ignores: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


# pyproject key (dashes) -> Settings field. `trust-pickle` is deliberately absent: a file in a
# repository someone cloned must not be able to switch on code execution (CONTRACT: only the
# user's own --trust-pickle flag may).
_FILE_KEYS: dict[str, str] = {
    "input-shape": "input_shapes",
    "input-shapes": "input_shapes",
    "inputs": "inputs_path",
    "targets": "targets_path",
    "loss": "loss",
    "steps": "steps",
    "optimizer": "optimizer",
    "lr": "lr",
    "batch-size": "batch_size",
    "weights": "weights",
    "device": "device",
    "seed": "seed",
    "json": "json_path",
    "markdown": "markdown_path",
    "junit": "junit_path",
    "html": "html_path",
    "plot": "plot_dir",
    "fail-on": "fail_on",
    "select": "select",
    "ignore": "ignore",
    "try-fixes": "try_fixes",
    "verbose": "verbose",
    "quiet": "quiet",
    "thresholds": "thresholds",
    "per-layer-ignores": "per_layer_ignores",
}
# Settings fields that name files: resolved against the pyproject's directory.
_PATH_FIELDS = ("inputs_path", "targets_path", "weights", "json_path", "markdown_path", "junit_path", "html_path",
                "plot_dir")
_SETTINGS_FIELDS = frozenset(f.name for f in fields(Settings))


# ---------------------------------------------------------------------------------------------
# Parsing helpers shared by the flags and the file


def parse_input_shape(text: str) -> tuple[int, ...]:
    """`"64,3,32,32"` -> `(64, 3, 32, 32)`; every dimension a positive integer."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if not shape or any(d <= 0 for d in shape):
        raise DiagnoseError(
            f"bad --input-shape {text!r}: give positive integers separated by commas, "
            "e.g. --input-shape 64,3,32,32"
        )
    return shape


def split_ids(values: Iterable[str] | str | None) -> tuple[str, ...]:
    """Comma lists, possibly repeated (`--select a,b --select c`), -> ('a', 'b', 'c'), in order."""
    if values is None:
        return ()
    if isinstance(values, str):
        values = [values]
    ids: list[str] = []
    for value in values:
        if not isinstance(value, str):
            raise DiagnoseError(f"check ids must be strings, not {value!r}")
        for item in value.split(","):
            item = item.strip()
            if item and item not in ids:
                ids.append(item)
    return tuple(ids)


# ---------------------------------------------------------------------------------------------
# pyproject.toml


def find_pyproject(start: Path | None = None) -> Path | None:
    """The nearest pyproject.toml from `start` (default: the current directory) upward."""
    directory = (start or Path.cwd()).resolve()
    for candidate in (directory, *directory.parents):
        path = candidate / PYPROJECT
        if path.is_file():
            return path
    return None


def _toml_loads(text: str, path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised only on Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            warnings.warn(
                f"ignoring {path}: reading it needs Python 3.11 or `pip install tomli`",
                stacklevel=3,
            )
            return {}
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DiagnoseError(f"{path} is not valid TOML ({exc}); fix the file or pass --config") from exc


def read_tool_table(path: Path) -> dict[str, Any]:
    """The `[tool.diagnose]` table of a pyproject.toml (empty when it has none)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DiagnoseError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    table = _toml_loads(text, path).get("tool", {}).get("diagnose", {})
    if not isinstance(table, dict):
        raise DiagnoseError(f"{path}: [tool.diagnose] must be a table")
    return table


def settings_from_table(table: Mapping[str, Any], base_dir: Path, where: str) -> dict[str, Any]:
    """`[tool.diagnose]` -> keyword arguments for `Settings` (only the keys the file sets)."""
    values: dict[str, Any] = {}
    for raw_key, raw_value in table.items():
        key = raw_key.replace("_", "-")
        if key == "trust-pickle":
            raise DiagnoseError(
                f"{where}: trust-pickle cannot be set in a config file (it allows running code "
                "from data files); pass --trust-pickle on the command line instead"
            )
        name = _FILE_KEYS.get(key)
        if name is None:
            valid = ", ".join(sorted(k for k in _FILE_KEYS if k != "input-shapes"))
            raise DiagnoseError(f"{where}: unknown key {raw_key!r}; valid keys: {valid}")
        values[name] = _convert_file_value(name, raw_value, f"{where}: {raw_key}")
    for name in _PATH_FIELDS:
        if values.get(name) and values[name] != "-":
            values[name] = str(base_dir / values[name])
    return values


def _convert_file_value(name: str, value: Any, where: str) -> Any:
    if name == "input_shapes":
        return _file_input_shapes(value, where)
    if name in ("select", "ignore"):
        if not isinstance(value, (str, list)):
            raise DiagnoseError(f"{where} must be a list of check ids or a comma-separated string")
        return split_ids(value)
    if name == "thresholds":
        return _file_thresholds(value, where)
    if name == "per_layer_ignores":
        return _file_per_layer_ignores(value, where)
    expected = _FILE_TYPES[name]
    # bool is an int in Python; `steps = true` is a mistake, not 1.
    if isinstance(value, bool) and bool not in expected:
        raise DiagnoseError(f"{where} must be {_type_words(expected)}, not {value!r}")
    if not isinstance(value, expected):
        raise DiagnoseError(f"{where} must be {_type_words(expected)}, not {value!r}")
    return float(value) if name == "lr" else value


_FILE_TYPES: dict[str, tuple[type, ...]] = {
    "inputs_path": (str,),
    "targets_path": (str,),
    "loss": (str,),
    "steps": (int,),
    "optimizer": (str,),
    "lr": (int, float),
    "batch_size": (int,),
    "weights": (str,),
    "device": (str,),
    "seed": (int,),
    "json_path": (str,),
    "markdown_path": (str,),
    "junit_path": (str,),
    "html_path": (str,),
    "plot_dir": (str,),
    "fail_on": (str,),
    "try_fixes": (bool,),
    "verbose": (bool,),
    "quiet": (bool,),
}


def _type_words(types: tuple[type, ...]) -> str:
    words = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    return " or ".join(words[t] for t in types)


def _file_input_shapes(value: Any, where: str) -> tuple[tuple[int, ...], ...]:
    """Accepts "64,784", [64, 784], ["64,784", "64,10"] or [[64, 784], [64, 10]]."""
    if isinstance(value, str):
        return (parse_input_shape(value),)
    if isinstance(value, list) and value and all(isinstance(d, int) for d in value):
        return (parse_input_shape(",".join(str(d) for d in value)),)
    if isinstance(value, list) and value:
        shapes = []
        for item in value:
            if isinstance(item, str):
                shapes.append(parse_input_shape(item))
            elif isinstance(item, list) and all(isinstance(d, int) for d in item):
                shapes.append(parse_input_shape(",".join(str(d) for d in item)))
            else:
                raise DiagnoseError(f"{where}: each shape must be a list of integers, not {item!r}")
        return tuple(shapes)
    raise DiagnoseError(f"{where} must be a shape like [64, 784] or a list of shapes")


def _file_thresholds(value: Any, where: str) -> dict[str, dict[str, float]]:
    if not isinstance(value, dict):
        raise DiagnoseError(f"{where} must be a table of [thresholds.<check-id>] tables")
    thresholds: dict[str, dict[str, float]] = {}
    for check_id, table in value.items():
        if not isinstance(table, dict):
            raise DiagnoseError(f"{where}.{check_id} must be a table of name = number")
        numbers: dict[str, float] = {}
        for name, number in table.items():
            if isinstance(number, bool) or not isinstance(number, (int, float)):
                raise DiagnoseError(f"{where}.{check_id}.{name} must be a number, not {number!r}")
            numbers[name] = float(number)
        thresholds[check_id] = numbers
    return thresholds


def _file_per_layer_ignores(value: Any, where: str) -> dict[str, tuple[str, ...]]:
    if not isinstance(value, dict):
        raise DiagnoseError(f'{where} must be a table of "layer-or-glob" = ["check-id", ...]')
    ignores: dict[str, tuple[str, ...]] = {}
    for pattern, ids in value.items():
        if not isinstance(ids, (str, list)):
            raise DiagnoseError(f"{where}.{pattern!r} must be a list of check ids")
        ignores[pattern] = split_ids(ids)
    return ignores


# ---------------------------------------------------------------------------------------------
# Merge and validate


def build_settings(
    flags: Mapping[str, Any],
    config_path: Path | None = None,
    *,
    search_from: Path | None = None,
) -> Settings:
    """Settings from the flags the user gave (None = not given) over the pyproject's table.

    `config_path` is an explicit `--config`; without it the nearest pyproject.toml from
    `search_from` (default: the current directory) upward is read, if there is one.
    """
    unknown = set(flags) - _SETTINGS_FIELDS
    if unknown:
        raise TypeError(f"not Settings fields: {', '.join(sorted(unknown))}")
    if config_path is not None:
        if not config_path.is_file():
            raise DiagnoseError(f"config file {config_path} does not exist; check the --config path")
        path: Path | None = config_path
    else:
        path = find_pyproject(search_from)
    values: dict[str, Any] = {}
    if path is not None:
        values = settings_from_table(read_tool_table(path), path.parent, f"{path} [tool.diagnose]")
    values.update({name: value for name, value in flags.items() if value is not None})
    return Settings(**values)


def validate_settings(
    settings: Settings,
    check_ids: Collection[str] | None = None,
    threshold_names: Mapping[str, Collection[str]] | None = None,
) -> Settings:
    """Raise `DiagnoseError` for the first option that cannot work; return the settings unchanged.

    `check_ids` are the known check ids; when given, ids in select/ignore/thresholds/per-layer
    ignores are checked against them. `threshold_names` (check id -> its threshold names), when
    given, checks the names in `thresholds`. Both come from the checks registry; passing them lets
    a typo fail before the model is loaded and run.
    """
    _require_choice("--optimizer", settings.optimizer, OPTIMIZERS)
    _require_choice("--device", settings.device, DEVICES)
    _require_choice("--fail-on", settings.fail_on, FAIL_ON_CHOICES)
    if settings.loss not in LOSSES and not _is_function_reference(settings.loss):
        raise DiagnoseError(
            f"unknown --loss {settings.loss!r}; use one of {', '.join(LOSSES)} "
            "or MODULE:FN naming your own loss function"
        )
    if settings.steps < 0:
        raise DiagnoseError(f"--steps must be 0 or more, not {settings.steps}")
    if not math.isfinite(settings.lr) or settings.lr <= 0:
        raise DiagnoseError(f"--lr must be a positive number, not {settings.lr}")
    if settings.batch_size is not None and settings.batch_size <= 0:
        raise DiagnoseError(f"--batch-size must be a positive integer, not {settings.batch_size}")
    if settings.seed < 0:
        raise DiagnoseError(f"--seed must be 0 or more, not {settings.seed}")
    for shape in settings.input_shapes:
        if not shape or any(d <= 0 for d in shape):
            raise DiagnoseError(f"bad --input-shape {shape}: every dimension must be positive")
    if check_ids is not None:
        _require_known_ids("--select", settings.select, check_ids)
        _require_known_ids("--ignore", settings.ignore, check_ids)
        _require_known_ids("thresholds", tuple(settings.thresholds), check_ids)
        for pattern, ids in settings.per_layer_ignores.items():
            # "*" means every check for that layer
            _require_known_ids(f"per-layer-ignores[{pattern!r}]", [i for i in ids if i != "*"], check_ids)
    if threshold_names is not None:
        for check_id, overrides in settings.thresholds.items():
            valid = threshold_names.get(check_id)
            if valid is None:
                continue
            unknown = [name for name in overrides if name.replace("-", "_") not in valid]
            if unknown:
                raise DiagnoseError(
                    f"unknown threshold(s) {', '.join(unknown)} for check {check_id}; "
                    f"valid names: {', '.join(valid) or 'none'} (see `diagnose explain {check_id}`)"
                )
    return settings


def _require_choice(flag: str, value: str, choices: Collection[str]) -> None:
    if value not in choices:
        raise DiagnoseError(f"unknown {flag} {value!r}; use one of: {', '.join(choices)}")


def _require_known_ids(where: str, ids: Iterable[str], known: Collection[str]) -> None:
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise DiagnoseError(
            f"unknown check id(s) in {where}: {', '.join(unknown)}; "
            f"valid ids: {', '.join(sorted(known))}"
        )


def _is_function_reference(loss: str) -> bool:
    module, sep, function = loss.rpartition(":")
    return bool(sep and module and function.isidentifier())
