"""`--help`, `--version`, `list` and `explain` must not import torch (it costs seconds at start-up).

Each command runs in a fresh interpreter, so what this test process has imported does not matter.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Runs `python -m diagnose ARGS...` in-process (so sys.modules can be inspected afterwards) and
# prints the exit code and whether torch got imported.
PROBE = """
import runpy, sys
sys.argv = ["diagnose", *sys.argv[1:]]
code = 0
try:
    runpy.run_module("diagnose", run_name="__main__", alter_sys=True)
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
print(f"\\nEXIT={code} TORCH={'torch' in sys.modules}")
"""


def _run(*args: str) -> tuple[int, bool, str]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    last = proc.stdout.strip().splitlines()[-1]
    exit_part, torch_part = last.split()
    return int(exit_part.split("=")[1]), torch_part == "TORCH=True", proc.stdout + proc.stderr


@pytest.mark.parametrize("args", [("--help",), ("--version",), ("check", "--help"), ("explain", "--help")])
def test_help_and_version_do_not_import_torch(args):
    code, torch_imported, output = _run(*args)
    assert code == 0, output
    assert not torch_imported, f"`diagnose {' '.join(args)}` imported torch"


def test_import_diagnose_does_not_import_torch():
    proc = subprocess.run(
        [sys.executable, "-c", "import sys, diagnose, diagnose.cli, diagnose.config; "
         "print('torch' in sys.modules)"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.stdout.strip() == "False", proc.stderr


def _registry_ready() -> bool:
    proc = subprocess.run(
        [sys.executable, "-c", "import diagnose.checks as c, diagnose.fixes as f, diagnose.explain as e; "
         "c.CHECKS; f.FIXES; e.render"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    return proc.returncode == 0


@pytest.mark.parametrize("args", [("list",), ("explain", "dead-relu"), ("explain", "he-init")])
def test_list_and_explain_do_not_import_torch(args):
    if not _registry_ready():
        pytest.skip("diagnose.checks / diagnose.fixes / diagnose.explain not importable yet")
    code, torch_imported, output = _run(*args)
    assert code == 0, output
    assert not torch_imported, f"`diagnose {' '.join(args)}` imported torch"
