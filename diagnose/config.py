"""Settings for one check: command-line flags merged over `[tool.diagnose]` in pyproject.toml.

Every option is declared once, as a field of `Settings` (see `diagnose.options`): its help text,
flag, whether the file and the Python API take it, its conversion and its validation. The command
line, `diagnose.check(**options)` and the file reader are built from those declarations.

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
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from diagnose.errors import DiagnoseError
from diagnose.options import Option, declared_options, option
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


# ---------------------------------------------------------------------------------------------
# Conversions shared by the flags, the file and the Python keywords


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


def _is_sequence(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str)


def _is_int_list(value: Any) -> bool:
    return _is_sequence(value) and all(isinstance(d, int) and not isinstance(d, bool) for d in value)


def _shapes_value(value: Any, where: str) -> tuple[tuple[int, ...], ...]:
    """Accepts "64,784", [64, 784], ["64,784", "64,10"] (a repeated flag's strings) or
    [[64, 784], [64, 10]]; an empty list is no shape."""
    if isinstance(value, str):
        return (parse_input_shape(value),)
    if _is_sequence(value) and not value:
        return ()
    if _is_int_list(value):
        return (parse_input_shape(",".join(str(d) for d in value)),)
    if _is_sequence(value):
        shapes = []
        for item in value:
            if isinstance(item, str):
                shapes.append(parse_input_shape(item))
            elif _is_int_list(item):
                shapes.append(parse_input_shape(",".join(str(d) for d in item)))
            else:
                raise DiagnoseError(f"{where}: each shape must be a list of integers, not {item!r}")
        return tuple(shapes)
    raise DiagnoseError(f"{where} must be a shape like [64, 784] or a list of shapes")


def _ids_value(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, str) and not _is_sequence(value):
        raise DiagnoseError(f"{where} must be a list of check ids or a comma-separated string")
    return split_ids(value)


def _thresholds_value(value: Any, where: str) -> dict[str, dict[str, float]]:
    if not isinstance(value, Mapping):
        raise DiagnoseError(f"{where} must be a table of [thresholds.<check-id>] tables")
    thresholds: dict[str, dict[str, float]] = {}
    for check_id, table in value.items():
        if not isinstance(table, Mapping):
            raise DiagnoseError(f"{where}.{check_id} must be a table of name = number")
        numbers: dict[str, float] = {}
        for name, number in table.items():
            if isinstance(number, bool) or not isinstance(number, (int, float)):
                raise DiagnoseError(f"{where}.{check_id}.{name} must be a number, not {number!r}")
            numbers[name] = float(number)
        thresholds[check_id] = numbers
    return thresholds


def _per_layer_ignores_value(value: Any, where: str) -> dict[str, tuple[str, ...]]:
    if not isinstance(value, Mapping):
        raise DiagnoseError(f'{where} must be a table of "layer-or-glob" = ["check-id", ...]')
    ignores: dict[str, tuple[str, ...]] = {}
    for pattern, ids in value.items():
        if not isinstance(ids, str) and not _is_sequence(ids):
            raise DiagnoseError(f"{where}.{pattern!r} must be a list of check ids")
        ignores[pattern] = split_ids(ids)
    return ignores


def _loss_value(value: Any, where: str) -> str | Callable[..., Any]:
    # a function object only comes from Python (`diagnose.check(model, x, loss=my_loss)`)
    if isinstance(value, str) or callable(value):
        return value
    raise DiagnoseError(
        f"{where} must be {', '.join(LOSSES)} or MODULE:FN (or, from Python, a loss function), not {value!r}"
    )


# ---------------------------------------------------------------------------------------------
# Checks of one value (`label` is how the caller spelled the option: --steps, or steps)


def _one_of(choices: Collection[str]) -> Callable[[Any, str], None]:
    def validate(value: Any, label: str) -> None:
        if value not in choices:
            raise DiagnoseError(f"unknown {label} {value!r}; use one of: {', '.join(choices)}")

    return validate


def _at_least(minimum: int, words: str) -> Callable[[Any, str], None]:
    def validate(value: Any, label: str) -> None:
        if value is not None and value < minimum:
            raise DiagnoseError(f"{label} must be {words}, not {value}")

    return validate


def _valid_loss(loss: Any, label: str) -> None:
    if callable(loss) or loss in LOSSES or _is_function_reference(loss):
        return
    raise DiagnoseError(
        f"unknown {label} {loss!r}; use one of {', '.join(LOSSES)} or MODULE:FN naming your own loss function"
    )


def _is_function_reference(loss: str) -> bool:
    module, sep, function = loss.rpartition(":")
    return bool(sep and module and function.isidentifier())


def _valid_lr(lr: float, label: str) -> None:
    if not math.isfinite(lr) or lr <= 0:
        raise DiagnoseError(f"{label} must be a positive number, not {lr}")


def _valid_shapes(shapes: tuple[tuple[int, ...], ...], label: str) -> None:
    for shape in shapes:
        if not shape or any(d <= 0 for d in shape):
            raise DiagnoseError(f"bad {label} {shape}: every dimension must be positive")


# ---------------------------------------------------------------------------------------------
# The options, each declared once (field order is the command line's --help order)


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    model: str = option(
        "", argument=True, metavar="MODEL", file=False,
        help="model.pt2, model.ts.pt, model.pt, pkg.module:build, path/to/file.py:build, or a Hugging Face "
             "directory (config.json + model.safetensors)",
    )
    input_shapes: tuple[tuple[int, ...], ...] = option(
        (), flag="--input-shape", metavar="SHAPE", repeatable=True, file_aliases=("input-shapes",), api=True,
        convert=_shapes_value, validate=_valid_shapes,
        help="Synthesize a batch of this shape, e.g. 64,3,32,32 (repeat for several positional inputs): "
             "standard-normal floats, or token ids in range when the model starts with an embedding "
             "(e.g. 8,128 for GPT-2).",
    )
    # The Python API takes its inputs and targets as objects, not files.
    inputs_path: str | None = option(
        None, flag="--inputs", metavar="FILE", path=True,
        help="Real inputs: .pt / .npy / .npz holding a tensor, a tuple (positional inputs), a dict of keyword "
             "inputs (e.g. input_ids and decoder_input_ids for an encoder-decoder), or "
             "{'inputs': ..., 'targets': ...}.",
    )
    targets_path: str | None = option(
        None, flag="--targets", metavar="FILE", path=True, help="Real targets: .pt / .npy / .npz.",
    )
    loss: str | Callable[..., Any] = option(
        "auto", flag="--loss", metavar="LOSS", api=True, convert=_loss_value, validate=_valid_loss,
        help=f"{' | '.join(LOSSES)} | MODULE:FN.",
    )
    # The Python API keeps the contract's one forward+backward (steps=0) by default.
    steps: int = option(
        DEFAULT_STEPS, flag="--steps", metavar="N", api=True, api_default=0, validate=_at_least(0, "0 or more"),
        help=f"Optimizer steps of the short training run on a copy (default {DEFAULT_STEPS}; "
             "0 = one forward+backward only).",
    )
    optimizer: str = option(
        DEFAULT_OPTIMIZER, flag="--optimizer", metavar="NAME", api=True, validate=_one_of(OPTIMIZERS),
        help=f"{' | '.join(OPTIMIZERS)}.",
    )
    lr: float = option(
        DEFAULT_LR, flag="--lr", metavar="X", api=True, validate=_valid_lr, help="Learning rate of the short run.",
    )
    batch_size: int | None = option(
        None, flag="--batch-size", metavar="N", api=True, validate=_at_least(1, "a positive integer"),
        help="Batch size for synthesized inputs.",
    )
    weights: str | None = option(
        None, flag="--weights", metavar="FILE", path=True, api=True,
        help="A state dict (.pt or .safetensors) for a factory model.",
    )
    # A file in a repository someone cloned must not be able to switch on code execution
    # (CONTRACT: only the user's own --trust-pickle flag may).
    trust_pickle: bool = option(
        False, flag="--trust-pickle", api=True, file=False,
        file_refusal="trust-pickle cannot be set in a config file (it allows running code from data files); "
                     "pass --trust-pickle on the command line instead",
        help="Allow loading a whole pickled module (runs the code inside it).",
    )
    device: str = option(
        "auto", flag="--device", metavar="DEVICE", api=True, validate=_one_of(DEVICES),
        help=f"{' | '.join(DEVICES)}.",
    )
    seed: int = option(
        0, flag="--seed", metavar="N", api=True, validate=_at_least(0, "0 or more"),
        help="Seed for all randomness (default 0).",
    )
    json_path: str | None = option(
        None, flag="--json", metavar="PATH", path=True,
        help="Write the JSON report here ('-' = stdout; the human report then goes to stderr).",
    )
    markdown_path: str | None = option(
        None, flag="--markdown", metavar="PATH", path=True, help="Write a Markdown report here.",
    )
    junit_path: str | None = option(
        None, flag="--junit", metavar="PATH", path=True, help="Write a JUnit XML report here.",
    )
    html_path: str | None = option(
        None, flag="--html", metavar="PATH", path=True,
        help='Write a self-contained HTML report with figures here (needs pip install "diagnose[plot]").',
    )
    plot_dir: str | None = option(
        None, flag="--plot", metavar="DIR", path=True,
        help="Write the report's figures as PNG files into DIR (created if missing; needs pip install "
             '"diagnose[plot]").',
    )
    fail_on: str = option(
        "error", flag="--fail-on", metavar="LEVEL", validate=_one_of(FAIL_ON_CHOICES),
        help=f"Exit 1 on findings at/above: {' | '.join(FAIL_ON_CHOICES)} (default error).",
    )
    select: tuple[str, ...] = option(
        (), flag="--select", metavar="IDS", repeatable=True, api=True, convert=_ids_value,
        help="Run only these checks (comma-separated ids).",
    )
    ignore: tuple[str, ...] = option(
        (), flag="--ignore", metavar="IDS", repeatable=True, api=True, convert=_ids_value,
        help="Skip these checks (comma-separated ids).",
    )
    try_fixes: bool = option(
        False, flag="--try-fixes", negatable=True, api=True,
        help="Apply each recommended fix to a copy of the model and report before/after.",
    )
    # The file the other settings were read from (None: there was none).
    config_path: str | None = option(
        None, flag="--config", metavar="PATH", file=False,
        help="The pyproject.toml to read [tool.diagnose] from (default: the nearest one upward).",
    )
    verbose: bool = option(
        False, flag="--verbose", short="-v",
        help="Every layer in the table and every fix's snippet (default: a summary of large tables, "
             "the first fix's snippet).",
    )
    quiet: bool = option(
        False, flag="--quiet", short="-q", help="No progress display (shown on stderr only when it is a terminal).",
    )
    debug: bool = option(False, flag="--debug", file=False, help="Show tracebacks.")
    # {"dead-relu": {"dead_fraction": 0.6}}: overrides of the checks' named thresholds
    thresholds: Mapping[str, Mapping[str, float]] = option(
        default_factory=dict, api=True, convert=_thresholds_value,
        help="Overrides of the checks' named thresholds: {check id: {name: number}}.",
    )
    # {"net.0": ("dead-relu",)}: findings of these ids drop these layers
    per_layer_ignores: Mapping[str, tuple[str, ...]] = option(
        default_factory=dict, api=True, convert=_per_layer_ignores_value,
        help='Layer name or fnmatch glob -> check ids whose findings drop those layers ("*": every check).',
    )


OPTIONS: tuple[Option, ...] = declared_options(Settings)
_BY_NAME = {o.name: o for o in OPTIONS}
# [tool.diagnose] key -> its option; a refused key is listed so that the file is told why
_BY_FILE_KEY = {key: o for o in OPTIONS if o.file or o.file_refusal for key in (o.file_key, *o.file_aliases)}
_SETTINGS_FIELDS = frozenset(f.name for f in fields(Settings))


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
        declared = _BY_FILE_KEY.get(raw_key.replace("_", "-"))
        if declared is not None and declared.file_refusal:
            raise DiagnoseError(f"{where}: {declared.file_refusal}")
        if declared is None:
            valid = ", ".join(sorted(o.file_key for o in OPTIONS if o.file))
            raise DiagnoseError(f"{where}: unknown key {raw_key!r}; valid keys: {valid}")
        values[declared.name] = declared.value(raw_value, f"{where}: {raw_key}")
    for declared in OPTIONS:
        path = values.get(declared.name)
        if declared.path and path and path != "-":
            values[declared.name] = str(base_dir / path)
    return values


# ---------------------------------------------------------------------------------------------
# Merge and validate


def build_settings(
    flags: Mapping[str, Any],
    config_path: Path | None = None,
    *,
    search_from: Path | None = None,
) -> Settings:
    """Settings from the flags the user gave (None = not given) over the pyproject's table.

    `config_path` (or the flags' `config_path`) is an explicit `--config`; without it the nearest
    pyproject.toml from `search_from` (default: the current directory) upward is read, if there
    is one. A flag's value is converted as declared (a repeated `--input-shape`'s strings become
    shapes).
    """
    unknown = set(flags) - _SETTINGS_FIELDS
    if unknown:
        raise TypeError(f"not Settings fields: {', '.join(sorted(unknown))}")
    given = {name: _BY_NAME[name].value(value, _BY_NAME[name].label)
             for name, value in flags.items() if value is not None}
    explicit = config_path if config_path is not None else given.get("config_path")
    if explicit is not None:
        path: Path | None = Path(explicit)
        if not path.is_file():
            raise DiagnoseError(f"config file {path} does not exist; check the --config path")
    else:
        path = find_pyproject(search_from)
    values: dict[str, Any] = {}
    if path is not None:
        values = settings_from_table(read_tool_table(path), path.parent, f"{path} [tool.diagnose]")
    values.update(given)
    values["config_path"] = None if path is None else str(path)
    return Settings(**values)


def settings_from_keywords(keywords: Mapping[str, Any], **fixed: Any) -> Settings:
    """Settings from `diagnose.check`'s keyword options, with the declared names, defaults and checks.

    A keyword that is not an option is a TypeError, as for any Python function; None means the
    default; a value that cannot work is a DiagnoseError naming the keyword. `fixed` are fields
    the caller sets itself (the model's name).
    """
    values = {o.name: o.keyword_default for o in OPTIONS if o.api and o.keyword_default is not o.default}
    for name, given in keywords.items():
        declared = _BY_NAME.get(name)
        if declared is None or not declared.api:
            raise TypeError(f"diagnose.check() got an unexpected keyword argument {name!r}")
        if given is None:
            continue
        value = declared.value(given, name)
        declared.check(value, name)
        values[name] = value
    return Settings(**fixed, **values)


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
    for declared in OPTIONS:
        declared.check(getattr(settings, declared.name), declared.label)
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


def _require_known_ids(where: str, ids: Iterable[str], known: Collection[str]) -> None:
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise DiagnoseError(
            f"unknown check id(s) in {where}: {', '.join(unknown)}; "
            f"valid ids: {', '.join(sorted(known))}"
        )
