"""End-to-end time of `diagnose check <sample> --steps 0`, against the cost of `import torch` alone.

Most of a one-pass check is interpreter start-up plus importing torch; the difference column is
what diagnose itself adds (loading, probes, checks, rendering). The two commands are run
interleaved, several times each, and medians are reported, so a noisy machine affects both alike.

    python benchmarks/cli.py                 # every samples/*.pt2, 5 repetitions
    python benchmarks/cli.py --repeat 9 samples/deep_sigmoid.pt2
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_REPEAT = 5


def timed(command: list[str]) -> float:
    """Wall-clock seconds of one run; a failed run (exit 2: could not run) aborts the benchmark."""
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode not in (0, 1):  # 1 = findings, a successful run
        raise SystemExit(f"{' '.join(command)} exited {proc.returncode}:\n{proc.stderr.strip()}")
    return elapsed


def benchmark(samples: list[Path], repeat: int) -> list[tuple[str, float, float]]:
    torch_import = [sys.executable, "-c", "import torch"]
    rows = []
    for sample in samples:
        check = [sys.executable, "-m", "diagnose", "check", str(sample), "--steps", "0", "--fail-on", "never"]
        timed(check)  # warm the file cache and any compiled bytecode: the first run is not typical
        check_times, import_times = [], []
        for _ in range(repeat):
            check_times.append(timed(check))
            import_times.append(timed(torch_import))
        rows.append((str(sample.relative_to(REPO) if sample.is_relative_to(REPO) else sample),
                     statistics.median(check_times), statistics.median(import_times)))
    return rows


def print_table(rows: list[tuple[str, float, float]], repeat: int) -> None:
    name_width = max([len("sample")] + [len(name) for name, _, _ in rows])
    print(f"median of {repeat} runs each, `diagnose check SAMPLE --steps 0` vs `python -c 'import torch'`")
    print(f"{'sample':<{name_width}}  {'check s':>8}  {'torch import s':>14}  {'difference s':>12}")
    for name, check_s, import_s in rows:
        print(f"{name:<{name_width}}  {check_s:>8.2f}  {import_s:>14.2f}  {check_s - import_s:>12.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("samples", nargs="*", type=Path, help="model files (default: samples/*.pt2)")
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT, help="runs of each command per sample")
    args = parser.parse_args()
    samples = [p.resolve() for p in args.samples] or sorted((REPO / "samples").glob("*.pt2"))
    if not samples:
        raise SystemExit("no samples: pass model files, or create samples/*.pt2 (samples/make_samples.py)")
    if args.repeat < 1:
        raise SystemExit("--repeat must be at least 1")
    print_table(benchmark(samples, args.repeat), args.repeat)


if __name__ == "__main__":
    main()
