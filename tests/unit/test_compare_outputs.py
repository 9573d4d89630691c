"""scripts/compare_outputs.py: tensors compared bit for bit or within --rtol/--atol, run folders or single files."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from qdgap.core.deploy.checkpoint import write_torch_file

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "compare_outputs.py"


@pytest.fixture(scope="module")
def compare_outputs():
    spec = importlib.util.spec_from_file_location("compare_outputs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _state(scale: float = 0.0) -> dict[str, torch.Tensor]:
    """A small state dict; ``scale`` perturbs ``w`` by that relative amount."""
    w = torch.linspace(-1.0, 1.0, 12, dtype=torch.float32).reshape(3, 4) + 0.5
    return {"w": w * (1.0 + scale), "b": torch.arange(3, dtype=torch.float32), "n": torch.tensor(7)}


def _run(folder: Path, scale: float = 0.0, *, created: str = "2026-01-01T00:00:00+00:00") -> Path:
    folder.mkdir(parents=True)
    write_torch_file(folder / "best.pt", _state(scale))
    (folder / "config.json").write_text(json.dumps({"seed": 0, "created": created, "lr": 0.005}))
    return folder


def test_compare_outputs_equal_folders_pass_bitwise(compare_outputs, tmp_path, capsys):
    a = _run(tmp_path / "a")
    b = _run(tmp_path / "b", created="2026-02-02T00:00:00+00:00")  # a time differs: not a difference
    assert compare_outputs.main([str(a), str(b), "--bitwise"]) == 0
    assert "compared 2 files (bitwise)" in capsys.readouterr().out
    # Written twice, the weights file is the same bytes (no temporary name inside the archive).
    assert (a / "best.pt").read_bytes() == (b / "best.pt").read_bytes()


def test_compare_outputs_tolerance_decides(compare_outputs, tmp_path, capsys):
    a, b = _run(tmp_path / "a"), _run(tmp_path / "b", scale=2e-6)
    assert compare_outputs.main([str(a), str(b), "--bitwise"]) == 1
    assert "best.pt.w: arrays differ (bitwise)" in capsys.readouterr().out
    assert compare_outputs.main([str(a), str(b)]) == 0  # within the default float32 rounding (rtol 1e-5)
    assert compare_outputs.main([str(a), str(b), "--rtol", "1e-7", "--atol", "0"]) == 1
    line = [ln for ln in capsys.readouterr().out.splitlines() if "best.pt.w" in ln]
    assert line and "differ by up to" in line[0] and "relative" in line[0]
    # an absolute tolerance alone admits it too: |w| <= 1.5, so the gap is under 3e-6
    assert compare_outputs.main([str(a), str(b), "--rtol", "0", "--atol", "5e-6"]) == 0


def test_compare_outputs_compares_two_files(compare_outputs, tmp_path, capsys):
    a, b = _run(tmp_path / "a"), _run(tmp_path / "b", scale=1e-3)
    assert compare_outputs.main([str(a / "best.pt"), str(a / "best.pt"), "--bitwise"]) == 0
    assert compare_outputs.main([str(a / "best.pt"), str(b / "best.pt"), "--rtol", "1e-2"]) == 0
    assert compare_outputs.main([str(a / "best.pt"), str(b / "best.pt")]) == 1
    assert "compared 2 files" in capsys.readouterr().out
    assert compare_outputs.main([str(a / "best.pt"), str(b)]) == 1  # a file against a folder


@pytest.mark.parametrize(
    "args",
    [["--rtol", "-1"], ["--bitwise", "--atol", "1e-3"], ["--rtol", "abc"]],
)
def test_compare_outputs_rejects_bad_options(compare_outputs, tmp_path, args):
    a = _run(tmp_path / "a")
    with pytest.raises(SystemExit) as exc:
        compare_outputs.main([str(a), str(a), *args])
    assert exc.value.code == 2


def test_compare_outputs_rejects_missing_input(compare_outputs, tmp_path, capsys):
    a = _run(tmp_path / "a")
    with pytest.raises(SystemExit) as exc:
        compare_outputs.main([str(a), str(tmp_path / "nowhere")])
    assert exc.value.code == 2 and "nowhere: no such file or folder" in capsys.readouterr().err
