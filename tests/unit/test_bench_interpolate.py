"""bench/bench_interpolate.py's pools and scores and bench/bench_fna_graph.py's per-element means, on fixed
inputs whose answers are known."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(monkeypatch, name: str):
    monkeypatch.syspath_prepend(str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_interpolate_bench_pools_by_spacing_and_scores_the_other_labels(monkeypatch, tmp_path):
    bi = _load(monkeypatch, "bench_interpolate")
    frames = np.arange(1, 2001, 2)  # st1, st3, ...: a label every 2 fs, as the study's CSVs
    gaps = 1.7 + 0.05 * np.sin(frames / 40.0)
    main = tmp_path / "main.csv"
    main.write_text(
        "Files,Bandgap (eV)\n" + "".join(f"st{f},{float(g)!r}\n" for f, g in zip(frames, gaps, strict=True))
    )
    rows = bi.csv_rows("X", main, None)
    assert [r["spacing_fs"] for r in rows] == list(bi.SPACINGS_FS)
    for r in rows:
        assert r["pool"] == len(range(1, 2000, r["spacing_fs"]))  # frames 1, 1 + s, ... all carry a label
        assert r["pool"] + r["scored"] == len(frames)
    # A straight line: linear interpolation is exact, and the mean is off by the line's spread.
    t = np.arange(0.0, 460.0, 10.0)  # the last frame a pool label: nothing past it to extrapolate
    row = bi.series_row(t[::5], 1.0 + 1e-4 * t[::5], t, 1.0 + 1e-4 * t)
    assert row["linear"] == pytest.approx(0.0, abs=1e-9)
    y = 1.0 + 1e-4 * t
    assert row["mean"] == pytest.approx(1e3 * np.sqrt(np.mean((y - y[::5].mean()) ** 2)), rel=1e-12)


def test_fna_graph_bench_averages_importance_by_element(monkeypatch):
    bg = _load(monkeypatch, "bench_fna_graph")
    from qdgap.core.common import schema

    data = {
        schema.ATOM_LABEL: ["Cd1", "Cd2", "Se1", "Cl1", "Cl12"],
        schema.IMPORTANCE_MEAN_MEV: np.array([1.0, 3.0, 5.0, 2.0, 4.0]),
    }
    assert bg._by_element(data) == {"Cd": 2.0, "Se": 5.0, "Cl": 3.0}
