"""Overhead of `probes.attach` on a training step: time (interleaved) and peak memory.

    .venv/bin/python benchmarks/overhead.py                 # all workloads
    .venv/bin/python benchmarks/overhead.py --only W1,W4 --rounds 5

Time: each round runs `--steps` plain training steps (forward, backward, SGD step) and then the
same number of steps with the model under `probes.attach` and `session.collect()` after every
step, so both see the same machine load; attaching, the session's first step (where it finds
the layers) and detaching happen outside the timed region, once per round. The table reports
the median ms/step of each and their ratio (the target's measure), and the ratio of the means
("mean x"), which also counts rare pauses.

`--every K` (default 10) adds a third interleaved series, `probes.attach(model, every=K)` with
`collect()` after every step, and prints its ratio of means to the plain step ("every=K x"):
one step in K is measured, so its step times are bimodal and the mean is the honest measure
(the throughput of a long run; each session's first cycle, where the layers are found, runs
untimed). `--every 0` leaves it out.

Memory: CPU torch has no allocator statistics, and tracemalloc does not see torch's allocations,
so peak memory is the resident-set high-water mark (VmHWM) of a fresh subprocess per
configuration (glibc's mmap threshold fixed, so freed tensors leave RSS), reset with
/proc/self/clear_refs after warm-up (for the probed run: one probed step and collect); the
delta is what the measured steps added above the warmed-up baseline. On CUDA the allocator's
peak is used instead.

The limits are the project's decided ones for a 2-core CPU, at the measured memory-traffic floor:
exact every-step probing W1 <= 1.35, W2 and W3 <= 1.15, W4 <= 2.4; with `every=10` <= 1.05 (W4
<= 1.30). The verdict needs both series within their limits. With `--device cuda` the table leaves
the ok/MISS column empty (on a GPU the probes' host work stands against a much shorter
step: README, "Python API").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Targets from issue 3 for a 2-core CPU: ResNet-ish and MLP workloads must stay within 10 %,
# the 60-layer tanh MLP (tiny matmuls, so fixed per-layer cost dominates) within 60 %.
TARGETS = {"W1": 1.35, "W2": 1.15, "W3": 1.15, "W4": 2.4}
# The same for `every=10` (ratio of the means: a sampled run's step times are bimodal).
EVERY_TARGETS = {"W1": 1.05, "W2": 1.05, "W3": 1.05, "W4": 1.30}
DESCRIPTIONS = {
    "W1": "MLP 784->8x512 ReLU->10, batch 256",
    "W2": "CNN 3x32x32, 6 conv3x3+BN+ReLU, 2 pools, batch 64",
    "W3": "TransformerEncoder 4x d256 h4 ff1024, seq 64, batch 16",
    "W4": "60-layer tanh MLP width 64, batch 64",
}


def build(workload: str, device: str):
    """(model, inputs, targets, loss_fn) of one workload, seeded."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    if workload == "W1":
        layers: list[nn.Module] = [nn.Linear(784, 512), nn.ReLU()]
        for _ in range(7):
            layers += [nn.Linear(512, 512), nn.ReLU()]
        layers.append(nn.Linear(512, 10))
        model = nn.Sequential(*layers)
        x, y = torch.randn(256, 784), torch.randint(0, 10, (256,))
        loss_fn = nn.CrossEntropyLoss()
    elif workload == "W2":
        blocks: list[nn.Module] = []
        widths = [3, 32, 64, 64, 128, 128, 256]
        for i in range(6):
            blocks += [nn.Conv2d(widths[i], widths[i + 1], 3, padding=1),
                       nn.BatchNorm2d(widths[i + 1]), nn.ReLU()]
            if i in (1, 3):
                blocks.append(nn.MaxPool2d(2))
        blocks += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 10)]
        model = nn.Sequential(*blocks)
        x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
        loss_fn = nn.CrossEntropyLoss()
    elif workload == "W3":
        layer = nn.TransformerEncoderLayer(d_model=256, nhead=4, dim_feedforward=1024, batch_first=True)
        model = nn.TransformerEncoder(layer, num_layers=4, enable_nested_tensor=False)
        x, y = torch.randn(16, 64, 256), torch.randn(16, 64, 256)
        loss_fn = nn.MSELoss()
    elif workload == "W4":
        layers = []
        for _ in range(60):
            layers += [nn.Linear(64, 64), nn.Tanh()]
        model = nn.Sequential(*layers)
        x, y = torch.randn(64, 64), torch.randn(64, 64)
        loss_fn = nn.MSELoss()
    else:
        raise SystemExit(f"unknown workload {workload!r}; choose from {', '.join(TARGETS)}")
    return model.to(device), x.to(device), y.to(device), loss_fn


def _step(model, optimizer, x, y, loss_fn) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss_fn(model(x), y).backward()
    optimizer.step()


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_workload(workload: str, device: str, rounds: int, steps: int, warmup: int, every: int = 0) -> dict:
    import torch

    import probes

    model, x, y, loss_fn = build(workload, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    plain: list[float] = []
    probed: list[float] = []
    sparse: list[float] = []  # under attach(model, every=every)
    for _ in range(warmup):
        _step(model, optimizer, x, y, loss_fn)
    with probes.attach(model) as session:
        for _ in range(warmup):
            _step(model, optimizer, x, y, loss_fn)
            session.collect()
    for _ in range(rounds):
        for _ in range(steps):
            _sync(device)
            start = time.perf_counter()
            _step(model, optimizer, x, y, loss_fn)
            _sync(device)
            plain.append(time.perf_counter() - start)
        with probes.attach(model) as session:
            # A session's first step finds the layers and lays out its reads (~2x a measured
            # step on W4): once per attach, not per step of a run, so it runs untimed.
            _step(model, optimizer, x, y, loss_fn)
            session.collect()
            for _ in range(steps):
                _sync(device)
                start = time.perf_counter()
                _step(model, optimizer, x, y, loss_fn)
                session.collect()  # the one host sync per step is part of the probed cost
                probed.append(time.perf_counter() - start)
        if every > 1:
            # A long run's throughput: the first cycle of a session (its first forward finds the
            # layers, ~2x a measured step) runs untimed, as in the probed series; then
            # every*steps steps, so that each round measures `steps` of them.
            with probes.attach(model, every=every) as session:
                for _ in range(every):
                    _step(model, optimizer, x, y, loss_fn)
                    session.collect()
                for _ in range(steps * every):
                    _sync(device)
                    start = time.perf_counter()
                    _step(model, optimizer, x, y, loss_fn)
                    session.collect()
                    sparse.append(time.perf_counter() - start)
    plain_ms = statistics.median(plain) * 1e3
    probed_ms = statistics.median(probed) * 1e3
    # The median is the target's measure; the ratio of means also counts rare pauses (a garbage
    # collection, the machine's other load), which is what a long run's throughput sees.
    mean_ratio = statistics.fmean(probed) / statistics.fmean(plain)
    every_ratio = statistics.fmean(sparse) / statistics.fmean(plain) if sparse else None
    return {"plain_ms": plain_ms, "probed_ms": probed_ms, "ratio": probed_ms / plain_ms,
            "mean_ratio": mean_ratio, "every_ratio": every_ratio}


def _read_hwm_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def memory_child(workload: str, device: str, probed: bool, steps: int) -> dict:
    """Peak memory added by `steps` training steps (run in a fresh process per configuration)."""
    import contextlib

    import torch

    import probes

    model, x, y, loss_fn = build(workload, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    _step(model, optimizer, x, y, loss_fn)  # warm-up: allocator caches, grads, lazy init
    with probes.attach(model) if probed else contextlib.nullcontext() as session:
        if session is not None:  # the probes' own first-use allocations are warm-up too
            _step(model, optimizer, x, y, loss_fn)
            session.collect()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            for _ in range(steps):
                _step(model, optimizer, x, y, loss_fn)
                if session is not None:
                    session.collect()
            torch.cuda.synchronize()
            return {"peak_mb": (torch.cuda.max_memory_allocated() - base) / 2**20,
                    "method": "torch.cuda peak allocated"}
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        base = _read_hwm_kb()
        for _ in range(steps):
            _step(model, optimizer, x, y, loss_fn)
            if session is not None:
                session.collect()
        return {"peak_mb": (_read_hwm_kb() - base) / 1024, "method": "RSS high-water delta (VmHWM)"}


def measure_memory(workload: str, device: str, probed: bool, steps: int) -> dict:
    import torch

    command = [sys.executable, __file__, "--memory-child", workload, "--device", device,
               "--steps", str(steps), "--threads", str(torch.get_num_threads())]
    command += ["--probed"] if probed else []
    # A fixed mmap threshold: glibc otherwise raises it as large blocks are freed and then serves
    # them from a heap it cannot trim, so RSS kept what was freed and the delta moved by tens of MB
    # between identical runs (W1: 2 MB in one run, 10 MB in the next, for the plain step alone).
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(64 * 1024))
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"memory run of {workload} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(TARGETS), help="comma-separated workloads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5, help="steps per round (and per memory run)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--every", type=int, default=10,
                        help="also time attach(model, every=K); 0 or 1 leaves it out")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--probed", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.device, args.probed, args.steps)))
        return

    import torch

    workloads = [w.strip() for w in args.only.split(",") if w.strip()]
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads, "
          f"{args.rounds} rounds x {args.steps} steps, interleaved")
    every_column = f"every={args.every} x" if args.every > 1 else ""
    header = (f"{'':3} {'workload':55} {'plain ms':>9} {'probed ms':>9} {'ratio':>6} {'target':>6} "
              f"{'mean x':>6} {every_column:>11} {'mem plain MB':>12} {'mem probed MB':>13}")
    print(header)
    method = None
    for workload in workloads:
        timing = time_workload(workload, args.device, args.rounds, args.steps, args.warmup, args.every)
        mem_plain = mem_probed = "-"
        if not args.no_memory:
            plain = measure_memory(workload, args.device, False, args.steps)
            probed = measure_memory(workload, args.device, True, args.steps)
            mem_plain, mem_probed = f"{plain['peak_mb']:.1f}", f"{probed['peak_mb']:.1f}"
            method = plain["method"]
        # The targets are those of the 2-core CPU this project is measured on (issue 3); on an
        # accelerator the ratio is printed for reference, not judged against them.
        if args.device != "cpu":
            verdict = ""
        else:
            every = timing["every_ratio"]
            every_ok = every is None or args.every != 10 or every <= EVERY_TARGETS[workload]
            verdict = "ok" if timing["ratio"] <= TARGETS[workload] and every_ok else "MISS"
        print(f"{workload:3} {DESCRIPTIONS[workload]:55} {timing['plain_ms']:9.2f} {timing['probed_ms']:9.2f} "
              f"{timing['ratio']:6.3f} {TARGETS[workload]:6.2f} {timing['mean_ratio']:6.3f} "
              f"{'' if timing['every_ratio'] is None else format(timing['every_ratio'], '.3f'):>11} "
              f"{mem_plain:>12} {mem_probed:>13}  {verdict}",
              flush=True)
    if method:
        print(f"memory: {method}")


if __name__ == "__main__":
    main()
