"""scripts/device-kit.sh and scripts/device-run.sh: what a borrowed GPU machine runs in one call.

The whole chain needs the network (wheels) and was rehearsed by hand (README, "On a GPU"); here, what
runs offline: both scripts parse, and each refuses a missing input with one line and exit 2, writing nothing.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KIT, RUN = REPO / "scripts" / "device-kit.sh", REPO / "scripts" / "device-run.sh"


def _bash(script: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(script), *args], capture_output=True, text=True, timeout=60, env={**os.environ, **env}
    )


@pytest.mark.parametrize("script", [KIT, RUN], ids=lambda p: p.name)
def test_device_script_parses(script):
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0


def test_device_run_refuses_a_missing_kit_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    r = _bash(RUN, {"OUT": str(out), "KIT": str(tmp_path / "no-kit")})
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "no-kit/wheels" in r.stderr
    assert not out.exists()


def test_device_run_needs_out(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    r = subprocess.run(["bash", str(RUN)], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 2 and "OUT must name" in r.stderr


def test_device_kit_needs_the_venv(tmp_path):
    kit = tmp_path / "kit"
    r = _bash(KIT, {"KIT": str(kit), "VENV_PY": str(tmp_path / "no-python")})
    assert r.returncode == 2 and "make install" in r.stderr
    assert not kit.exists() and not (tmp_path / "kit.tmp").exists()
