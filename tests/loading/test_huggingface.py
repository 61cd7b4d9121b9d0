"""Hugging Face checkpoint directories as MODEL: loaded offline, weights and inputs from the directory.

Tiny configs are built at random init and saved with save_pretrained into temporary directories;
nothing is downloaded, and a test below makes any connection attempt fail to prove it.
"""

from __future__ import annotations

import json
import math
import socket
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

transformers = pytest.importorskip("transformers")

import diagnose  # noqa: E402
from diagnose import cli  # noqa: E402
from diagnose.errors import DiagnoseError  # noqa: E402
from diagnose.loading import load_model  # noqa: E402
from diagnose.loading.inputs import prepare_batch  # noqa: E402

VOCAB = 100
POSITIONS = 64
# A weight set to a recognisable pattern before saving: the loaded model must carry it, where a
# model left at random init (or re-initialised by the loader) would not.
PERTURBED = "transformer.h.0.mlp.c_fc.weight"


def _gpt2() -> torch.nn.Module:
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=POSITIONS,
                                     bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():
        weight = dict(model.named_parameters())[PERTURBED]
        weight.copy_(torch.arange(weight.numel(), dtype=torch.float32).reshape(weight.shape) / weight.numel())
    return model


def _bert_classifier() -> torch.nn.Module:
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=POSITIONS, num_labels=3)
    return transformers.BertForSequenceClassification(config)


def _t5() -> torch.nn.Module:
    config = transformers.T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return transformers.T5ForConditionalGeneration(config)


def _vit() -> torch.nn.Module:
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=64, num_labels=5)
    return transformers.ViTForImageClassification(config)


def _save(model: torch.nn.Module, directory: Path) -> Path:
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {name: _save(build(), root / name)
            for name, build in {"gpt2": _gpt2, "bert": _bert_classifier, "t5": _t5, "vit": _vit}.items()}


@pytest.fixture
def copy_of(saved: dict[str, Path], tmp_path: Path):
    """A fresh copy of a saved directory, to break."""
    import shutil

    def copy(name: str) -> Path:
        return Path(shutil.copytree(saved[name], tmp_path / name))

    return copy


def _json_report(*args: str) -> tuple[int, dict, str]:
    result = CliRunner().invoke(cli.app, ["check", *args, "--json", "-", "--quiet"])
    report = json.loads(result.stdout) if result.exit_code in (0, 1) else {}
    return result.exit_code, report, result.stderr


# --- what a good directory gives ------------------------------------------------------------------


def test_gpt2_directory_is_diagnosed_from_the_cli(saved: dict[str, Path]) -> None:
    code, report, _ = _json_report(str(saved["gpt2"]), "--steps", "0")
    assert code in (0, 1)
    assert report["model"]["format"] == "huggingface"
    assert report["model"]["source"] == str(saved["gpt2"])
    assert report["run"]["inputs"] == "synthetic"
    assert report["run"]["loss"] == "cross-entropy"
    # Cross-entropy over the 100-token vocabulary: a small-init LM starts at chance, ln 100.
    assert report["loss"]["initial"] == pytest.approx(math.log(VOCAB), abs=0.1)
    [shape] = report["run"]["input_shapes"]
    assert shape[0] == 32 and 1 < shape[1] <= POSITIONS


def test_token_ids_come_from_the_config(saved: dict[str, Path]) -> None:
    loaded = load_model(saved["gpt2"])
    batch = prepare_batch(loaded, batch_size=4)
    ids = batch.kwargs["input_ids"]
    assert batch.args == () and ids.dtype == torch.int64
    assert ids.shape[0] == 4 and ids.shape[1] <= POSITIONS
    assert 0 <= int(ids.min()) and int(ids.max()) < VOCAB
    assert int(ids.max()) > VOCAB // 2  # drawn over the whole vocabulary, not a corner of it


def test_the_saved_weights_are_loaded(saved: dict[str, Path]) -> None:
    from safetensors.torch import load_file

    on_disk = load_file(saved["gpt2"] / "model.safetensors")[PERTURBED]
    loaded = dict(load_model(saved["gpt2"]).module.named_parameters())[PERTURBED]
    assert torch.equal(loaded.detach(), on_disk)
    assert not torch.equal(on_disk, torch.zeros_like(on_disk))


def test_sharded_safetensors_load(tmp_path: Path) -> None:
    model = _gpt2()
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file() and not (tmp_path / "model.safetensors").exists()
    loaded = dict(load_model(tmp_path).module.named_parameters())
    assert torch.equal(loaded[PERTURBED].detach(), dict(model.named_parameters())[PERTURBED].detach())


def test_sequence_classifier_loss_is_over_its_classes(saved: dict[str, Path]) -> None:
    report = diagnose.check(str(saved["bert"]), batch_size=8, device="cpu").to_dict()
    assert report["model"]["format"] == "huggingface"
    assert report["run"]["loss"] == "cross-entropy"
    assert report["loss"]["initial"] == pytest.approx(math.log(3), abs=0.15)  # 3 labels at chance


def test_encoder_decoder_gets_decoder_ids_too(saved: dict[str, Path]) -> None:
    batch = prepare_batch(load_model(saved["t5"]), batch_size=4)
    assert set(batch.kwargs) == {"input_ids", "decoder_input_ids"}
    for ids in batch.kwargs.values():
        assert ids.shape[0] == 4 and 0 <= int(ids.min()) and int(ids.max()) < VOCAB
    report = diagnose.check(str(saved["t5"]), batch_size=4, device="cpu").to_dict()
    assert report["run"]["loss"] == "cross-entropy" and math.isfinite(report["loss"]["initial"])
    assert len(report["run"]["input_shapes"]) == 2


def test_vision_model_gets_images_of_its_config_size(saved: dict[str, Path]) -> None:
    code, report, _ = _json_report(str(saved["vit"]), "--steps", "2", "--batch-size", "4")
    assert code in (0, 1)
    assert report["run"]["input_shapes"] == [[4, 3, 32, 32]]
    assert report["run"]["loss"] == "cross-entropy"
    assert report["loss"]["initial"] == pytest.approx(math.log(5), abs=0.2)
    assert len(report["loss"]["history"]) >= 2 and all(v is not None for v in report["loss"]["history"])


@pytest.mark.parametrize("name", ["roberta", "convnext", "resnet"])
def test_more_architectures_run(name: str, tmp_path: Path) -> None:
    builders = {
        # RoBERTa's positions start after its padding index: the sequence must leave room for that.
        "roberta": lambda: transformers.RobertaForMaskedLM(transformers.RobertaConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=POSITIONS)),
        "convnext": lambda: transformers.ConvNextForImageClassification(transformers.ConvNextConfig(
            hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=4, image_size=32)),
        # No image_size in a ResNet config: the 224x224 its image processors produce.
        "resnet": lambda: transformers.ResNetForImageClassification(transformers.ResNetConfig(
            embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=4)),
    }
    directory = _save(builders[name](), tmp_path / name)
    report = diagnose.check(str(directory), batch_size=2, device="cpu").to_dict()
    assert report["run"]["loss"] == "cross-entropy" and math.isfinite(report["loss"]["initial"])
    expected = {"roberta": [2, POSITIONS - 2], "convnext": [2, 3, 32, 32], "resnet": [2, 3, 224, 224]}[name]
    assert report["run"]["input_shapes"] == [expected]


def test_input_shape_still_gives_token_ids(saved: dict[str, Path]) -> None:
    batch = prepare_batch(load_model(saved["gpt2"]), input_shapes=((3, 10),))
    [ids] = batch.args
    assert ids.shape == (3, 10) and ids.dtype == torch.int64 and int(ids.max()) < VOCAB


def test_no_architecture_falls_back_to_the_bare_model_and_says_so(copy_of) -> None:
    directory = copy_of("gpt2")
    config = json.loads((directory / "config.json").read_text())
    del config["architectures"]
    (directory / "config.json").write_text(json.dumps(config))
    loaded = load_model(directory)
    assert type(loaded.module).__name__ == "GPT2Model"
    assert any("GPT2Model" in note and "no architecture" in note for note in loaded.limitations)
    # the backbone's weights came from the checkpoint, under its own names
    on_disk = dict(_load_safetensors(directory))[PERTURBED]
    assert torch.equal(dict(loaded.module.named_parameters())[PERTURBED.removeprefix("transformer.")].detach(),
                       on_disk)


def test_weights_missing_from_the_checkpoint_are_named(copy_of) -> None:
    from safetensors.torch import load_file, save_file

    directory = copy_of("bert")
    tensors = {k: v for k, v in load_file(directory / "model.safetensors").items() if not k.startswith("classifier.")}
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    [note] = load_model(directory).limitations
    assert "2 weight(s)" in note and "classifier.bias" in note and "classifier.weight" in note


def test_pickled_weights_load_with_trust_pickle(copy_of) -> None:
    directory = copy_of("gpt2")
    state = _load_safetensors(directory)
    (directory / "model.safetensors").unlink()
    torch.save(state, directory / "pytorch_model.bin")
    loaded = load_model(directory, trust_pickle=True)
    assert torch.equal(dict(loaded.module.named_parameters())[PERTURBED].detach(), state[PERTURBED])


def test_nothing_goes_to_the_network(saved: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub
    from huggingface_hub import constants

    def refuse(*args, **kwargs):
        raise AssertionError("diagnose tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    for name in ("hf_hub_download", "snapshot_download", "model_info"):
        monkeypatch.setattr(huggingface_hub, name, refuse)
    offline_before = constants.HF_HUB_OFFLINE
    for name in ("t5", "vit"):
        assert load_model(saved[name]).format == "huggingface"
    assert constants.HF_HUB_OFFLINE == offline_before  # offline only while loading


def _load_safetensors(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(directory / "model.safetensors")


# --- bad directories: exit 2, one line, no traceback ---------------------------------------------


def _one_line_error(*args: str) -> str:
    result = CliRunner().invoke(cli.app, ["check", *args, "--quiet"])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.output
    return result.stderr


def _edit_config(directory: Path, **changes) -> Path:
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def test_folder_without_config(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert "config.json" in _one_line_error(str(tmp_path))


def test_config_without_weights(copy_of) -> None:
    directory = copy_of("gpt2")
    (directory / "model.safetensors").unlink()
    assert "no weights file" in _one_line_error(str(directory))


def test_pickled_weights_need_trust_pickle(copy_of) -> None:
    directory = copy_of("gpt2")
    torch.save(_load_safetensors(directory), directory / "pytorch_model.bin")
    (directory / "model.safetensors").unlink()
    assert "--trust-pickle" in _one_line_error(str(directory))


def test_unknown_architecture(copy_of) -> None:
    directory = _edit_config(copy_of("gpt2"), architectures=["GPT9000ForEverything"])
    assert "GPT9000ForEverything" in _one_line_error(str(directory))


def test_architecture_that_is_not_a_model_class(copy_of) -> None:
    directory = _edit_config(copy_of("gpt2"), architectures=["GPT2Config"])
    assert "not a model class" in _one_line_error(str(directory))


def test_weights_of_other_sizes_than_the_config(copy_of) -> None:
    directory = _edit_config(copy_of("gpt2"), n_embd=64)
    message = _one_line_error(str(directory))
    assert "do not fit its config.json" in message and "c_attn.weight is 32x96 in the file but 64x192 by the config" in message


def test_unknown_model_type(copy_of) -> None:
    directory = _edit_config(copy_of("gpt2"), model_type="no-such-model")
    assert "config.json" in _one_line_error(str(directory))


def test_config_that_does_not_parse(copy_of) -> None:
    directory = copy_of("gpt2")
    (directory / "config.json").write_text('{"model_type": "gpt2",')
    assert "does not parse" in _one_line_error(str(directory))


def test_custom_code_is_never_run(copy_of) -> None:
    directory = _edit_config(copy_of("gpt2"), auto_map={"AutoModelForCausalLM": "modeling_evil.EvilModel"})
    (directory / "modeling_evil.py").write_text("raise SystemExit('custom code ran')\n")
    message = _one_line_error(str(directory))
    assert "auto_map" in message and "never runs" in message


def test_peft_adapter_is_refused(copy_of) -> None:
    directory = copy_of("gpt2")
    (directory / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "gpt2"}))
    assert "PEFT adapter" in _one_line_error(str(directory))


def test_weights_flag_is_refused(saved: dict[str, Path], tmp_path: Path) -> None:
    weights = tmp_path / "w.pt"
    torch.save({}, weights)
    assert "drop --weights" in _one_line_error(str(saved["gpt2"]), "--weights", str(weights))


def test_transformers_missing(saved: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    assert "pip install transformers" in _one_line_error(str(saved["gpt2"]))


# --- an encoder-decoder fed --input-shape ---------------------------------------------------------


def test_encoder_decoder_with_input_shape_points_at_keyword_inputs(saved: dict[str, Path]) -> None:
    with pytest.raises(DiagnoseError, match="decoder_input_ids") as raised:
        prepare_batch(load_model(_t5()), input_shapes=((4, 16),))
    message = str(raised.value)
    assert "--inputs" in message and "Hugging Face directory" in message
    assert "drop --input-shape" in _one_line_error(str(saved["t5"]), "--input-shape", "4,16")


def test_encoder_decoder_runs_on_keyword_inputs_from_a_file(tmp_path: Path) -> None:
    ids = torch.randint(0, VOCAB, (4, 16))
    torch.save({"input_ids": ids, "decoder_input_ids": ids}, tmp_path / "batch.pt")
    batch = prepare_batch(load_model(_t5()), inputs_path=str(tmp_path / "batch.pt"))
    assert set(batch.kwargs) == {"input_ids", "decoder_input_ids"}


def test_a_fresh_process_loads_a_directory(saved: dict[str, Path]) -> None:
    """The command as a user runs it: no test fixture has prepared torchvision or transformers
    (in this project's dev install, PyPI's torchvision cannot import beside the CPU torch unless
    the loader handles it)."""
    import subprocess

    result = subprocess.run(
        [sys.executable, "-m", "diagnose", "check", str(saved["gpt2"]), "--steps", "2", "--json", "-"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode in (0, 1), result.stderr
    data = json.loads(result.stdout)
    assert data["model"]["format"] == "huggingface"
    assert math.isfinite(data["loss"]["initial"])
