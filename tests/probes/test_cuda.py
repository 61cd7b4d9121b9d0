"""Probes on a CUDA device: the same numbers as on CPU, the user's numbers untouched, no host sync.

Skipped where no GPU is present (CI has none); run them on a machine with one:
`python -m pytest tests/probes/test_cuda.py`. Statistics stay on the device as tensors while the
model trains, so a probe that calls `.item()` (or anything else that waits for the GPU) inside
a hook would stall the stream at every layer: `torch.cuda.set_sync_debug_mode("error")` turns any
such wait into an exception, and the one fetch a `collect()` makes is counted.
"""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import diagnose
import probes

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class SmallConvNet(nn.Module):
    """Conv + batch norm + F.relu, an in-place nn.ReLU with dead units, a saturating tanh, a
    functional sigmoid: every kind of statistic, on outputs above and below the size that the
    probes hold for a batched reduction (probes/batched.py HOLD_MAX)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc1 = nn.Linear(8 * 8 * 8, 64)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(64, 32)
        self.tanh = nn.Tanh()
        self.fc3 = nn.Linear(32, 32)
        self.head = nn.Linear(32, 10)
        with torch.no_grad():
            self.fc1.bias[:5] = -1e3  # five units that never fire
            self.fc2.weight.mul_(6.0)  # part of the tanh in its flat tails

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x)))  # 32x8x16x16: reduced at once (above HOLD_MAX)
        x = F.max_pool2d(x, 2).flatten(1)
        x = self.relu(self.fc1(x))
        x = self.tanh(self.fc2(x))
        x = torch.sigmoid(self.fc3(x))
        return self.head(x)


def _data(device: str):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(32, 3, 16, 16, generator=generator)
    y = torch.randint(0, 10, (32,), generator=generator)
    return x.to(device), y.to(device)


def _train(model: nn.Module, device: str, steps: int, session=None):
    """`steps` SGD steps; the records of a collect after each one (when a session is given)."""
    x, y = _data(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    collected, outputs = [], []
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        out = model(x)
        F.cross_entropy(out, y).backward()
        outputs.append((out.detach().clone(), [p.grad.clone() for p in model.parameters()]))
        optimizer.step()
        if session is not None:
            collected.append(session.collect())
    return collected, outputs


@pytest.fixture(autouse=True)
def _exact_cuda_math():
    """No TF32 (CPU has none) and deterministic cuDNN kernels, restored afterwards."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    yield
    (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
     torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) = saved


def _close(a, b, rel: float, absolute: float = 1e-7) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=rel, abs_tol=absolute)


def test_statistics_on_cuda_match_cpu():
    torch.manual_seed(0)
    cpu_model = SmallConvNet()
    gpu_model = copy.deepcopy(cpu_model).cuda()
    with probes.attach(cpu_model) as session:
        cpu_runs, _ = _train(cpu_model, "cpu", 3, session)
    with probes.attach(gpu_model) as session:
        gpu_runs, _ = _train(gpu_model, "cuda", 3, session)

    for cpu_records, gpu_records in zip(cpu_runs, gpu_runs):
        assert [r.name for r in gpu_records] == [r.name for r in cpu_records]
        for c, g in zip(cpu_records, gpu_records):
            where = c.name
            assert (g.type, g.index, g.kind, g.calls, g.output_shape) == (c.type, c.index, c.kind, c.calls, c.output_shape), where
            ca, ga = c.activation, g.activation
            assert _close(ga.mean, ca.mean, 1e-4, 1e-6), (where, ga.mean, ca.mean)
            assert _close(ga.std, ca.std, 1e-4), (where, ga.std, ca.std)
            assert ga.dead_fraction == ca.dead_fraction, where
            assert ga.nonfinite == ca.nonfinite == 0, where
            if ca.saturated_fraction is not None:
                assert abs(ga.saturated_fraction - ca.saturated_fraction) <= 0.01, where
            cg, gg = c.gradient, g.gradient
            for field in ("norm", "rms", "output_rms", "param_norm", "param_rms"):
                assert _close(getattr(gg, field), getattr(cg, field), 1e-3, 1e-9), (where, field)
            assert gg.backward_calls == cg.backward_calls, where
            if c.weight is not None:
                assert _close(g.weight.std, c.weight.std, 1e-5), where
                assert (g.weight.scheme, g.weight.fan_in, g.weight.fan_out) == (
                    c.weight.scheme, c.weight.fan_in, c.weight.fan_out), where
            assert _close(g.update_ratio, c.update_ratio, 1e-3, 1e-9), where
    by_name = {r.name: r for r in gpu_runs[-1]}
    assert by_name["relu"].activation.dead_fraction >= 5 / 64  # the five units set dead
    assert by_name["tanh"].activation.saturated_fraction > 0.05


@pytest.mark.parametrize("every", [1, 2])
def test_outputs_and_gradients_are_bit_identical_on_cuda(every):
    torch.manual_seed(0)
    original = SmallConvNet().cuda()
    plain_a, plain_b, probed = (copy.deepcopy(original) for _ in range(3))
    _, reference = _train(plain_a, "cuda", 3)
    _, again = _train(plain_b, "cuda", 3)
    if not all(torch.equal(a[0], b[0]) for a, b in zip(reference, again)):
        pytest.skip("this GPU's kernels are not run-to-run deterministic; nothing to compare")
    with probes.attach(probed, every=every) as session:
        _, observed = _train(probed, "cuda", 3, session)
    for (out, grads), (out_p, grads_p) in zip(reference, observed):
        assert torch.equal(out, out_p)
        assert all(torch.equal(g, gp) for g, gp in zip(grads, grads_p))
    assert all(torch.equal(a, b) for a, b in zip(plain_a.parameters(), probed.parameters()))
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in probed.modules())


def test_no_host_sync_while_training_and_one_per_collect():
    torch.manual_seed(0)
    model = SmallConvNet().cuda()
    x, y = _data("cuda")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    step()  # lazy CUDA initialisation (cuBLAS handles, momentum buffers) is not ours to judge
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()  # the plain step itself must not sync, or the check below would prove nothing
    finally:
        torch.cuda.set_sync_debug_mode(0)

    with probes.attach(model) as session:
        for _ in range(3):
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                step()  # forward and backward hooks, parameter-gradient read, update ratios
            finally:
                torch.cuda.set_sync_debug_mode(0)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    records = session.collect()
                finally:
                    torch.cuda.set_sync_debug_mode(0)
            syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
            assert len(syncs) == 1, syncs
    # functional activations are named after the module whose forward called them: the model
    assert {r.name for r in records} >= {"conv", "bn", "relu()", "fc1", "relu", "tanh", "sigmoid()"}


def test_every_k_and_bf16_autocast_on_cuda():
    torch.manual_seed(0)
    model = SmallConvNet().cuda()
    x, y = _data("cuda")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    with probes.attach(model, every=3) as session:
        for _ in range(6):
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
        records = session.collect()
    by_name = {r.name: r for r in records}
    assert by_name["fc1"].calls == 2  # forwards 1 and 4 of 6 were measured
    for record in records:
        assert record.activation.nonfinite == 0, record.name
        assert record.activation.std is not None and math.isfinite(record.activation.std), record.name
    assert by_name["relu"].activation.dead_fraction >= 5 / 64
    assert by_name["fc1"].update_ratio is not None and by_name["fc1"].update_ratio > 0


def test_check_on_cuda_finds_what_it_finds_on_cpu():
    torch.manual_seed(0)
    model = SmallConvNet()
    x, y = _data("cpu")
    on_cpu = diagnose.check(model, x, targets=y, steps=3, device="cpu").to_dict()
    on_gpu = diagnose.check(model, x, targets=y, steps=3, device="cuda").to_dict()
    assert on_gpu["run"]["device"].startswith("cuda")
    assert next(model.parameters()).device.type == "cpu"  # the user's model is not moved

    def found(report):
        return sorted((f["id"], f["severity"], tuple(f["layers"])) for f in report["findings"])

    assert found(on_gpu) == found(on_cpu)
    assert on_gpu["summary"]["status"] == on_cpu["summary"]["status"]
