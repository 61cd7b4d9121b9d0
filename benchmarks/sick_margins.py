"""The measured margin of each sick design in the calibration corpus, in plain torch (no diagnose).

Each sick design is put beside its healthy twin and measured with a few lines of torch: what the
design does to training, independently of the checks that are meant to name it.

    python benchmarks/sick_margins.py
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parent.parent


def _corpus():
    spec = importlib.util.spec_from_file_location("calibration", REPO / "tests" / "calibration.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["calibration"] = module
    spec.loader.exec_module(module)
    return module


cal = _corpus()
STEPS, LR = 20, 0.01


def short_run(model: nn.Module, x: torch.Tensor, classes: int = 10, steps: int = STEPS) -> list[float]:
    """Plain SGD on one fixed batch with random labels, as `diagnose check` does by default."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    logits = model(x)
    labels = torch.randint(0, logits.shape[-1], logits.shape[:-1], generator=generator)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    history = []
    for _ in range(steps):
        optimizer.zero_grad()
        out = model(x)
        loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), labels.reshape(-1))
        history.append(loss.item())
        if not math.isfinite(history[-1]):
            break
        loss.backward()
        optimizer.step()
    return history


def _image(side: int = 64) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(8, 3, side, side)


def softmax_output() -> str:
    tv = cal._tv()
    torch.manual_seed(0)
    healthy = short_run(tv.resnet18(num_classes=10), _image())
    torch.manual_seed(0)
    sick = short_run(cal.WithSoftmax(tv.resnet18(num_classes=10)), _image(), steps=100)
    return (f"resnet18 + softmax before cross-entropy: loss {sick[0]:.3f} -> {min(sick):.3f} in 100 steps, floor "
            f"{cal.softmax_loss_floor(10):.3f}; without the softmax {healthy[0]:.3f} -> {min(healthy):.4f} in {STEPS}")


def lstm_forget_bias() -> str:
    def reach(model: nn.Module) -> float:
        torch.manual_seed(0)
        x = torch.randn(8, 24, 16, requires_grad=True)
        F.cross_entropy(model(x), torch.randint(0, 10, (8,))).backward()
        norms = x.grad.norm(dim=(0, 2))
        return (norms[-11] / norms[-1]).item()

    torch.manual_seed(0)
    sick = reach(cal.SequenceClassifier("lstm", forget_bias=-5.0))
    torch.manual_seed(0)
    healthy = reach(cal.SequenceClassifier("lstm"))
    return f"LSTM forget bias -5: gradient 10 steps back / last = {sick:.1e}; default init {healthy:.1e}"


def resnet50_without_norm() -> str:
    torch.manual_seed(0)
    model = cal._resnet50_without_norm(64)
    stds = []
    hooks = [m.register_forward_hook(lambda m, i, o: stds.append(o.std().item()))
             for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(_image())
    for h in hooks:
        h.remove()
    sick = short_run(model, _image())
    torch.manual_seed(0)
    healthy = short_run(cal._tv().resnet50(num_classes=10), _image())
    nan_at = next((i for i, v in enumerate(sick) if not math.isfinite(v)), None)
    return (f"resnet50 without BN: conv output std {stds[0]:.2g} -> {max(stds[-4:]):.3g}; loss {sick[0]:.3g}, "
            f"{'NaN at step ' + str(nan_at) if nan_at is not None else 'final ' + format(sick[-1], '.3g')}; "
            f"with BN: {healthy[0]:.3g} -> {healthy[-1]:.3g}")


def gpt2_init() -> str:
    cal.declare_torchvision_ops()
    tokens = torch.randint(0, cal._SMALL_VOCAB, (4, 32), generator=torch.Generator().manual_seed(0))
    results = []
    for init in (1.0, 0.02):
        torch.manual_seed(0)
        build = cal._hf("GPT2Config", "GPT2LMHeadModel", initializer_range=init, **cal.GPT2)
        history = short_run(build(32), tokens)
        results.append(f"initializer_range={init}: loss {history[0]:.3g} -> {history[-1]:.3g}")
    return f"GPT-2 (chance {math.log(cal._SMALL_VOCAB):.3g}): " + "; ".join(results)


def sigmoid_standard_normal() -> str:
    torch.manual_seed(0)
    x = torch.randn(64, 64)
    sick = short_run(cal._sigmoid_mlp_standard_normal(64), x)
    torch.manual_seed(0)
    twin = cal._sigmoid_mlp_standard_normal(64)
    for m in twin.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
    healthy = short_run(twin, x)
    return (f"12-layer sigmoid MLP, N(0,1) weights: loss {sick[0]:.3f} -> {sick[-1]:.3f}; "
            f"Glorot twin {healthy[0]:.3f} -> {healthy[-1]:.3f}")


def eval_mode_export() -> str:
    torch.manual_seed(0)
    model = cal._mobilenet_v3(64)
    x = _image()
    results = []
    for mode in ("train", "eval"):
        getattr(model, mode)()
        program = torch.export.export(model, (x,))
        module = program.module()
        out = module(x)
        results.append(f"exported in {mode} mode: logits std {out.std().item():.3g}")
    return "mobilenet_v3_small: " + "; ".join(results)


def main() -> None:
    torch.set_num_threads(2)
    for measure in (softmax_output, lstm_forget_bias, resnet50_without_norm, gpt2_init, sigmoid_standard_normal,
                    eval_mode_export):
        print(f"- {measure()}", flush=True)


if __name__ == "__main__":
    main()
