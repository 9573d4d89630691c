"""bench/gpu_check.py: one line and exit 0 without CUDA; every section runs in its CPU smoke mode."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu_check.py"
RESULTS = REPO / "bench" / "results-gpu.md"


def _run(*args: str, timeout: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def _stamp(path: Path):
    return path.stat().st_mtime_ns if path.exists() else None


def test_gpu_check_without_cuda_says_so_and_writes_nothing(tmp_path):
    before = _stamp(RESULTS)
    out = tmp_path / "results-gpu.md"
    proc = _run("--out", str(out), timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1 and "no CUDA device" in lines[0], proc.stdout
    assert not out.exists()
    assert _stamp(RESULTS) == before


@pytest.mark.slow
def test_gpu_check_cpu_quick_runs_every_section(tmp_path):
    out = tmp_path / "quick.md"
    proc = _run("--device", "cpu", "--quick", "--threads", "1", "--out", str(out), timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text()
    for section in ("| train |", "| inference |", "| fna |", "| members |", "| projection |"):
        assert section in text, section
    assert "failed:" not in text, text
    assert "Not run" not in text
