"""Load a Hugging Face checkpoint directory (config.json + weights) with transformers, offline.

The class is the one config.json names in `architectures` (the bare AutoModel for its model_type
when it names none), built by transformers' own `from_pretrained` from the local files only: no
hub call, no code from the checkpoint (`auto_map` is refused, never `trust_remote_code`), weights
from safetensors (a pickled `pytorch_model.bin` only when the user trusts it). The inputs the model
takes are declared from the config: token ids within its vocabulary, or images of its size.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diagnose.errors import DiagnoseError, one_line
from diagnose.loading.sniff import HUGGINGFACE, HUGGINGFACE_CONFIG
from diagnose.loading.specs import InputSpec
from diagnose.loading.weights import _some as some_keys  # one way to name a few of many keys

if TYPE_CHECKING:
    import torch

FORMAT = HUGGINGFACE
CONFIG_FILE = HUGGINGFACE_CONFIG
SAFETENSORS_FILES = ("model.safetensors", "model.safetensors.index.json")  # one file, or the index of shards
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
# A PEFT adapter directory: transformers would go and load the base model it names, from the hub.
ADAPTER_FILE = "adapter_config.json"
# Token ids per synthesized sequence: enough positions for attention and position embeddings to
# matter, and batch x 64 tokens per statistic, while a small model still runs in seconds on a CPU.
SEQUENCE_LENGTH = 64
# RoBERTa-style position ids start after the padding index (padding_idx + 1 + position), so a
# sequence must stay this many positions under max_position_embeddings to fit the table.
POSITION_OFFSET = 2
# A vision config without image_size (ResNet) is fed the 224x224 its image processors resize to.
DEFAULT_IMAGE_SIZE = 224
DEFAULT_CHANNELS = 3
TOKEN_INPUT = "input_ids"
DECODER_TOKEN_INPUT = "decoder_input_ids"
IMAGE_INPUT = "pixel_values"


@dataclass(frozen=True, slots=True, kw_only=True)
class HuggingFaceContents:
    module: "torch.nn.Module"
    input_specs: tuple[InputSpec, ...]  # keyword inputs synthesized from the config; () when it cannot tell
    limitations: tuple[str, ...]


def load_huggingface(path: Path, *, trust_pickle: bool, device: str) -> HuggingFaceContents:
    """The model in `path` on `device` in float32, with its weights, and the inputs its config declares."""
    import torch

    raw_config = _read_config(path)
    if "auto_map" in raw_config:
        raise DiagnoseError(f"{path} ships its own model code (auto_map in config.json), and diagnose never runs "
                            "code from a checkpoint; build the model in Python and pass a factory "
                            "(pkg.module:build) instead.")
    if (path / ADAPTER_FILE).is_file():
        raise DiagnoseError(f"{path} holds a PEFT adapter ({ADAPTER_FILE}), not a whole model; merge it "
                            "(model.merge_and_unload().save_pretrained(dir)) or pass the base model's directory.")
    use_safetensors = _weights_format(path, trust_pickle)
    transformers = _import_transformers()
    with _offline_and_quiet(transformers):
        config = _parse_config(transformers, path)
        model_class, notes = _model_class(transformers, config, path)
        if getattr(config, "use_cache", None):
            config.use_cache = False  # training never reads the key/value cache; it only costs memory
        try:
            module, info = model_class.from_pretrained(
                str(path), config=config, local_files_only=True, trust_remote_code=False,
                use_safetensors=use_safetensors, output_loading_info=True,
                # a size mismatch then comes back in the loading info, to be named below, instead of
                # an error that points at a report the silenced logger never printed
                ignore_mismatched_sizes=True,
            )
        except Exception as exc:  # noqa: BLE001 - whatever transformers raises, the user gets one line
            raise DiagnoseError(f"transformers could not load {path} as {model_class.__name__} "
                                f"({one_line(exc)}); re-save it with save_pretrained.") from exc
    _refuse_mismatched_sizes(path, info)
    # Half-precision checkpoints are trained with float32 master weights: the probe run does the same.
    module = module.to(device=device, dtype=torch.float32)
    if model_class.__name__.startswith("Auto"):
        notes = (f"config.json names no architecture, so the bare {type(module).__name__} for model_type "
                 f"{config.model_type!r} was loaded (no task head): the loss is computed on its hidden states; "
                 "add architectures to config.json or pass --loss.",)
    return HuggingFaceContents(module=module, input_specs=declared_inputs(module, config),
                               limitations=notes + _fresh_weights_note(info))


def declared_inputs(module: "torch.nn.Module", config: Any) -> tuple[InputSpec, ...]:
    """Token ids (and decoder ids) within the vocabulary, or images of the config's size, batch dynamic.

    The model says which input it reads first (`main_input_name`); an input diagnose cannot make up
    (audio features, an encoder-decoder whose encoder is not fed token ids) gets no shape, so the
    user is asked for --input-shape or --inputs.
    """
    main_input = getattr(module, "main_input_name", TOKEN_INPUT)
    encoder_decoder = getattr(config, "is_encoder_decoder", False) is True
    if main_input == TOKEN_INPUT:
        vocab_size = _vocab_size(config)
        if vocab_size is None:
            return (InputSpec(name=TOKEN_INPUT, dtype="int64", keyword=True),)
        shape = (None, _sequence_length(config))
        specs = [InputSpec(name=TOKEN_INPUT, shape=shape, dtype="int64", vocab_size=vocab_size, keyword=True)]
        if encoder_decoder:
            specs.append(InputSpec(name=DECODER_TOKEN_INPUT, shape=shape, dtype="int64", vocab_size=vocab_size,
                                   keyword=True))
        return tuple(specs)
    if main_input == IMAGE_INPUT and not encoder_decoder:
        height, width = _image_size(config)
        channels = getattr(config, "num_channels", None) or DEFAULT_CHANNELS
        return (InputSpec(name=IMAGE_INPUT, shape=(None, channels, height, width), keyword=True),)
    return (InputSpec(name=main_input, keyword=True),)


def _read_config(path: Path) -> dict:
    try:
        config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DiagnoseError(f"{path / CONFIG_FILE} does not parse as JSON ({one_line(exc)}); "
                            "re-save the model with save_pretrained.") from exc
    if not isinstance(config, dict):
        raise DiagnoseError(f"{path / CONFIG_FILE} holds a JSON {type(config).__name__}, not a model config; "
                            "re-save the model with save_pretrained.")
    return config


def _weights_format(path: Path, trust_pickle: bool) -> bool:
    """True to load safetensors, False for the pickled .bin (trusted only); else a DiagnoseError."""
    if any((path / name).is_file() for name in SAFETENSORS_FILES):
        return True
    if any((path / name).is_file() for name in PICKLE_FILES):
        if not trust_pickle:
            raise DiagnoseError(f"{path} has only pickled weights (pytorch_model.bin), and unpickling can run "
                                "arbitrary code; pass --trust-pickle if you trust its source, or re-save it with "
                                "save_pretrained (safetensors).")
        return False
    raise DiagnoseError(f"{path} has a config.json but no weights file ({', '.join(SAFETENSORS_FILES)}); "
                        "save the model with save_pretrained into the same directory.")


def _import_transformers() -> Any:
    _let_a_mismatched_torchvision_import()
    try:
        import transformers
    except ImportError as exc:
        raise DiagnoseError("a Hugging Face directory is loaded with transformers, which is not installed; "
                            "pip install transformers.") from exc
    return transformers


def _let_a_mismatched_torchvision_import() -> None:
    """transformers imports torchvision when it is installed. A torchvision wheel built for another
    torch (PyPI's beside a CPU torch, as in this project's dev install) fails at import, registering
    fake kernels for two ops its compiled library did not define, and every model class then fails
    to import. Declaring those two op schemas first lets its pure-Python part import; only when that
    exact failure happens, so a working torchvision is never touched."""
    import importlib.util
    import sys

    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is None:
        return
    try:
        import torchvision  # noqa: F401
        return
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            return  # another failure: transformers' own import will report it
    import torch

    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]  # the half-imported package, so the import below starts clean
    global _TORCHVISION_SCHEMAS
    if _TORCHVISION_SCHEMAS is None:
        _TORCHVISION_SCHEMAS = torch.library.Library("torchvision", "DEF")  # noqa: TOR901
        _TORCHVISION_SCHEMAS.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _TORCHVISION_SCHEMAS.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    try:
        import torchvision  # noqa: F401,F811
    except Exception:  # noqa: BLE001 - still broken: transformers' own import will say how
        pass


_TORCHVISION_SCHEMAS = None


@contextmanager
def _offline_and_quiet(transformers: Any) -> Iterator[None]:
    """The hub switched offline, transformers' warnings and progress bars off; all restored after.

    `local_files_only=True` on every call is what keeps a load off the network; offline mode makes
    any request a code path still attempts fail at once rather than wait on a connection.
    """
    from transformers.utils import logging as hf_logging

    constants = _hub_constants()
    offline = getattr(constants, "HF_HUB_OFFLINE", None)
    verbosity = hf_logging.get_verbosity()
    progress_bars = hf_logging.is_progress_bar_enabled()
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if constants is not None:
            constants.HF_HUB_OFFLINE = offline
        hf_logging.set_verbosity(verbosity)
        if progress_bars:
            hf_logging.enable_progress_bar()


def _hub_constants() -> Any:
    try:
        from huggingface_hub import constants
    except ImportError:
        return None
    return constants


def _parse_config(transformers: Any, path: Path) -> Any:
    try:
        return transformers.AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - an unknown model_type, a bad value: one line either way
        raise DiagnoseError(f"transformers {transformers.__version__} cannot read {path / CONFIG_FILE} "
                            f"({one_line(exc)}); fix config.json or upgrade transformers.") from exc


def _model_class(transformers: Any, config: Any, path: Path) -> tuple[Any, tuple[str, ...]]:
    """The class config.json names (transformers.<architectures[0]>), or AutoModel when it names none."""
    import torch

    architectures = getattr(config, "architectures", None) or ()
    if not architectures:
        return transformers.AutoModel, ()
    name = architectures[0]
    notes = ()
    if len(architectures) > 1:
        notes = (f"config.json names {len(architectures)} architectures; loaded the first, {name}.",)
    if not isinstance(name, str) or name not in dir(transformers):
        raise DiagnoseError(f"{path / CONFIG_FILE} names the architecture {name!r}, which transformers "
                            f"{transformers.__version__} does not have; fix architectures in config.json "
                            "or upgrade transformers.")
    try:
        model_class = getattr(transformers, name)
    except Exception as exc:  # noqa: BLE001 - transformers imports a model's module lazily, here
        raise DiagnoseError(f"transformers could not import {name} ({one_line(exc)}); "
                            "check the transformers installation.") from exc
    if not (isinstance(model_class, type) and issubclass(model_class, torch.nn.Module)
            and hasattr(model_class, "from_pretrained")):
        raise DiagnoseError(f"{path / CONFIG_FILE} names {name} as its architecture, which is not a model "
                            "class; fix architectures in config.json.")
    return model_class, notes


def _refuse_mismatched_sizes(path: Path, info: dict) -> None:
    """A checkpoint whose tensors do not fit the config's sizes is not the model the config describes."""
    mismatched = sorted(info.get("mismatched_keys") or (), key=str)
    if mismatched:
        raise DiagnoseError(f"the weights in {path} do not fit its config.json "
                            f"({some_keys([_describe_mismatch(m) for m in mismatched])}); "
                            "save the config and weights of one model together with save_pretrained.")


def _describe_mismatch(entry: Any) -> str:
    # transformers reports (name, checkpoint shape, model shape)
    if isinstance(entry, tuple) and len(entry) == 3:
        name, saved, built = entry
        return f"{name} is {'x'.join(map(str, saved))} in the file but {'x'.join(map(str, built))} by the config"
    return str(entry)


def _fresh_weights_note(info: dict) -> tuple[str, ...]:
    """A sentence when some weights were not in the checkpoint: the model then starts partly at random."""
    missing = sorted(info.get("missing_keys") or ())
    if not missing:
        return ()
    return (f"{len(missing)} weight(s) were not in the checkpoint and start at random initialisation "
            f"({some_keys(missing)}).",)


def _vocab_size(config: Any) -> int | None:
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    vocab_size = getattr(text_config, "vocab_size", None)
    return vocab_size if isinstance(vocab_size, int) and vocab_size > 0 else None


def _sequence_length(config: Any) -> int:
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > POSITION_OFFSET:
        return min(SEQUENCE_LENGTH, positions - POSITION_OFFSET)
    return SEQUENCE_LENGTH


def _image_size(config: Any) -> tuple[int, int]:
    size = getattr(config, "image_size", None)
    if isinstance(size, int) and size > 0:
        return size, size
    if isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(d, int) and d > 0 for d in size):
        return size[0], size[1]
    return DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE
