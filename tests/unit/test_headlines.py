"""The demo's headline ranges: values read from a work folder, checked against ranges over re-runs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from qdgap.core.pipeline import headlines as hl
from tests.unit.test_report import make_workdir


def test_headline_values_and_check_against_ranges(tmp_path):
    wd = make_workdir(tmp_path / "w")
    values = hl.headline_values(wd.root)
    with open(wd.finetune_csv, newline="") as fh:
        rows = {r["model"]: float(r["rmse_mev"]) for r in csv.DictReader(fh)}
    assert values["transfer_finetuned_rmse_mev"] == pytest.approx(rows["finetuned"])
    with open(wd.fna_csv, newline="") as fh:
        assert values["fna_top"] == [r["atom_label"] for r in csv.DictReader(fh)][: hl.TOP_ATOMS]
    assert values["ensemble_rmse_mev"] > 0
    v = values["ensemble_rmse_mev"]
    runs = [{**values, "ensemble_rmse_mev": v - 1.0}, {**values, "ensemble_rmse_mev": v + 2.0}]
    ranges = hl.ranges_from_runs(runs)
    assert ranges["ensemble_rmse_mev"] == (v - 1.0, v + 2.0) and "fna_top" not in ranges
    path = tmp_path / "ranges.json"
    path.write_text(json.dumps({"data_sha256": "abc", "ranges": ranges, "runs": runs}))
    out = hl.check_headlines(wd.root, "abc", path=path)
    assert out is not None and out.all_inside and out.runs == 2
    assert {c.name for c in out.checks} == set(ranges)
    narrow = {**ranges, "ensemble_rmse_mev": (v + 0.5, v + 2.0)}  # this run below the range
    path.write_text(json.dumps({"data_sha256": "abc", "ranges": narrow, "runs": runs}))
    out = hl.check_headlines(wd.root, "abc", path=path)
    assert not out.all_inside and [c.name for c in out.checks if not c.inside] == ["ensemble_rmse_mev"]
    assert hl.check_headlines(wd.root, "other data", path=path) is None
    assert hl.check_headlines(wd.root, "abc", path=tmp_path / "missing.json") is None


def test_shipped_ranges_belong_to_the_demo_data():
    if not hl.HEADLINES_JSON.is_file():
        pytest.skip("data/demo_headlines.json not measured yet (bench/bench_headlines.py)")
    from qdgap.cli.options import DEMO_DATA
    from qdgap.core.data.trajectory import read_trajectory

    record = json.loads(hl.HEADLINES_JSON.read_text())
    assert record["data_sha256"] == read_trajectory(DEMO_DATA).sha256
    assert len(record["runs"]) >= 3
    assert set(record["ranges"]) == set(record["intervals"]) and "seed_base" not in record["ranges"]
    for name, (lo, hi) in record["ranges"].items():
        got = [r[name] for r in record["runs"]]
        assert lo == min(got) and hi == max(got) and np.isfinite([lo, hi]).all()
        plo, phi = record["intervals"][name]
        assert plo < lo and hi < phi  # the interval for a new run is wider than the observed spread


def test_prediction_interval_matches_the_t_formula():
    runs = [{"seed_base": 0, "x": 1.0}, {"seed_base": 1, "x": 2.0}, {"seed_base": 2, "x": 4.0}]
    assert list(hl.ranges_from_runs(runs)) == ["x"]
    lo, hi = hl.intervals_from_runs(runs)["x"]
    # n = 3: t(0.975, 2) = 4.3027, s = 1.5275, sqrt(1 + 1/3) = 1.1547 -> half width 7.589
    assert (lo + hi) / 2 == pytest.approx(7 / 3) and (hi - lo) / 2 == pytest.approx(7.589, abs=1e-3)
    with pytest.raises(ValueError):
        hl.intervals_from_runs(runs[:1])


def test_headline_check_is_printed_in_the_readme_words(capsys):
    from qdgap.cli.render import _print_headlines

    checks = (hl.HeadlineCheck("ensemble_rmse_mev", 15.0, 11.0, 20.1), hl.HeadlineCheck("x_mev", 9.0, 1.0, 2.0))
    _print_headlines(hl.HeadlineOutcome(checks, ("Cl7",), ("Cl7", "Cd23"), 3))
    out = capsys.readouterr().out
    assert "ensemble, unseen frames: 15.0 meV, inside 11.0-20.1" in out and "x_mev: 9.0 meV, OUTSIDE 1.0-2.0" in out
    assert "1 of them led in some re-run" in out and "more than a re-draw" in out
