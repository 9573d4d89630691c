"""The report (core.report, cli.report): one self-contained HTML page and the PNG figures of a work folder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from qdgap.core.common import schema
from qdgap.core.common.errors import QdgapError
from qdgap.core.report.build import FIGURE_NAMES, write_report
from qdgap.core.store import runs as rf
from qdgap.core.store.layout import Workdir

TEST_DPI = 60
CAL_SCALE = 0.8  # calibrated std / raw std of the synthetic predictions
CAL_THRESHOLD_QUANTILE = 0.9  # flags the frames whose calibrated spread exceeds this quantile of the trajectory's


# ==========================================================================
# A synthetic work folder, as the pipeline leaves it
# ==========================================================================


def make_workdir(
    root: Path,
    *,
    num_frames: int = 120,
    members: int = 3,
    base: tuple[np.ndarray, np.ndarray] | None = None,
    important: list[int] | None = None,
    fna: bool = True,
    finetune: bool = True,
    scratch: bool = True,
    ext_frames: int = 60,
    stride: int = 10,
    input_path_attr: bool = True,
    calibrated: bool = True,
    selection: bool = False,
) -> Workdir:
    """Fill ``root`` with what ``qdgap pipeline`` writes, from a synthetic trajectory and fake members.

    Member predictions are the true gap plus an error shared by all members and
    one of their own (both smooth in time), so the ensemble std is meaningful.
    FNA RMSEs grow near the ``important`` atoms. With ``calibrated`` the predictions
    files carry what ``qdgap predict`` adds after calibration (a spread scaled by
    ``CAL_SCALE``, its 95 % interval and flags above ``CAL_THRESHOLD_QUANTILE``
    of the trajectory's calibrated spread); ``selection`` writes a ``selection.json``
    as ``bench/bench_selection.py`` does.
    """
    from qdgap.core.common.labels import atom_labels
    from qdgap.core.data.splits import split_frames
    from qdgap.core.data.trajectory import read_trajectory, write_trajectory
    from qdgap.core.store.results import write_results
    from qdgap.testing.synthetic import synthetic_trajectory

    wd = Workdir(Path(root))
    wd.root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    traj_path = wd.root / "traj.h5"
    write_trajectory(synthetic_trajectory(num_frames, base=base, important=important, seed=0), traj_path)
    traj = read_trajectory(traj_path)
    seeds = list(range(members))

    def smooth(n: int, scale: float, tau: float = 15.0) -> np.ndarray:
        x = np.cumsum(rng.normal(0, 1, n))
        tau = min(tau, n / 8)
        k = np.exp(-(np.arange(-3 * tau, 3 * tau + 1) ** 2) / (2 * tau**2))
        y = np.convolve(x - np.linspace(x[0], x[-1], n), k / k.sum(), mode="same")
        return scale * (y - y.mean()) / (y.std() + 1e-12)

    def fake_predictions(gap: np.ndarray) -> np.ndarray:
        common = smooth(len(gap), 0.015)
        return np.stack([gap + common + smooth(len(gap), 0.012) + rng.normal(0, 0.006, len(gap)) for _ in seeds])

    def fake_runs(runs: Path, gap: np.ndarray, path: Path) -> None:
        for s in seeds:
            run = rf.run_dir(runs, s)
            run.mkdir(parents=True, exist_ok=True)
            rf.write_json(run / rf.SPLIT_JSON, split_frames(gap, seed=s, stride=stride).to_json())
            rf.write_json(
                run / rf.CONFIG_JSON,
                {
                    "seed": s,
                    "data": {
                        "path": str(path),
                        "numbers": traj.numbers.tolist(),
                        "sha256": traj.sha256,
                    },
                },
            )
            epochs = int(rng.integers(25, 45))
            e = np.arange(1, epochs + 1)
            val = 18 + 140 * np.exp(-e / 7) * rng.uniform(0.8, 1.2) + rng.normal(0, 2, epochs).cumsum() * 0.1
            rows = [
                {
                    "epoch": int(i),
                    "train_loss": float(0.08 + 0.9 * np.exp(-i / 6) + rng.normal(0, 0.01)),
                    "val_loss": float(v / 110),
                    "val_mae_mev": float(abs(v)),
                    "lr": 1e-3,
                    "seconds": 1.5,
                }
                for i, v in zip(e, val, strict=True)
            ]
            rf.write_metrics_csv(run / rf.METRICS_CSV, rows)
            rf.write_json(run / rf.TEST_METRICS_JSON, {"rmse_mev": 25.0 + s, "mae_mev": 19.0 + s, "n": 2})
            rf.write_json(run / rf.DONE, {"model_sha256": "0" * 64})

    threshold_ev: list[float] = []  # the trajectory's, reused for the extension as predict would

    def write_predictions(path: Path, t, gap_true, pred, input_path: Path) -> None:
        attrs = {schema.ATTR_INPUT_SHA256: traj.sha256, schema.ATTR_SEEDS: np.array(seeds)}
        if input_path_attr:
            attrs["input_path"] = str(input_path)
        datasets = {
            schema.FRAME_INDEX: np.arange(len(t)),
            schema.TIME_FS: t,
            schema.GAP_TRUE_EV: gap_true.astype(np.float32),
            schema.GAP_PRED_EV: pred.astype(np.float32),
            schema.GAP_MEAN_EV: pred.mean(0).astype(np.float32),
            schema.GAP_STD_EV: pred.std(0).astype(np.float32),
            schema.SEEDS: np.array(seeds),
        }
        if calibrated:
            mean, std = pred.mean(0), pred.std(0) * CAL_SCALE
            if not threshold_ev:
                threshold_ev.append(float(np.quantile(std, CAL_THRESHOLD_QUANTILE)))
            datasets |= {
                schema.GAP_STD_CALIBRATED_EV: std.astype(np.float32),
                schema.GAP_LO_EV: (mean - 1.96 * std).astype(np.float32),
                schema.GAP_HI_EV: (mean + 1.96 * std).astype(np.float32),
                schema.EXTRAPOLATING: std > threshold_ev[0],
            }
            attrs |= {
                schema.ATTR_INTERVAL_LEVEL: 0.95,
                schema.ATTR_INTERVAL_METHOD: "scale",
                schema.ATTR_CALIBRATION_SCALE: CAL_SCALE,
                schema.ATTR_EXTRAPOLATION_THRESHOLD_EV: threshold_ev[0],
                "threshold_frames": "between",
                "calibration_frames": 40,
            }
        write_results(
            path,
            datasets,
            fmt=schema.PREDICTIONS_FORMAT,
            version=schema.PREDICTIONS_VERSION,
            attrs=attrs,
        )

    fake_runs(wd.runs, traj.gap_ev, traj_path)
    write_predictions(
        wd.predictions,
        traj.time_fs,
        traj.gap_ev,
        fake_predictions(traj.gap_ev.astype(np.float64)),
        traj_path,
    )

    if fna:
        labels = atom_labels(traj.numbers)
        pos = traj.positions_ang[0].astype(np.float64)
        hot = np.asarray(important if important else [0])
        dist = np.linalg.norm(pos[:, None] - pos[None, hot], axis=-1).min(1)
        baseline = 20.0 + rng.normal(0, 1.5, members)
        rmse = (
            baseline[:, None]
            + 60.0 * np.exp(-dist / 2.5)[None] * rng.uniform(0.7, 1.3, (members, len(labels)))
            + rng.uniform(0, 4, (members, len(labels)))
        )
        # Masked predictions whose RMSEs are ``rmse``: each member errs with that spread, atom by atom.
        from qdgap.core.analysis.fna import FnaResult, write_fna

        frames = np.arange(0, num_frames, stride)
        true = traj.gap_ev[frames].astype(np.float64)
        unit = rng.normal(0, 1, (members, len(frames), len(labels)))
        unit /= np.sqrt((unit**2).mean(axis=1, keepdims=True))
        base_unit = rng.normal(0, 1, (members, len(frames)))
        base_unit /= np.sqrt((base_unit**2).mean(axis=1, keepdims=True))
        result = FnaResult(
            frame_index=frames,
            time_fs=traj.time_fs[frames],
            gap_true_ev=true.astype(np.float32),
            atom_label=labels,
            baseline_ev=(true + baseline[:, None] / 1000 * base_unit).astype(np.float32),
            masked_ev=(true[None, :, None] + rmse[:, None, :] / 1000 * unit).astype(np.float32),
            seeds=np.arange(members),
            numbers=traj.numbers,
            positions_ang=traj.positions_ang[frames],
        )
        write_fna(result, wd.fna, wd.fna_csv, attrs={schema.ATTR_INPUT_SHA256: traj.sha256})

    if finetune:
        ext = synthetic_trajectory(ext_frames, base=base, important=important, seed=5)
        ext_path = wd.root / "ext.h5"
        write_trajectory(ext, ext_path)
        gap = ext.gap_ev.astype(np.float64)
        fake_runs(wd.runs_finetuned, ext.gap_ev, ext_path)
        t = ext.time_fs + traj.time_fs[-1] + 1.0
        write_predictions(wd.predictions_extended, t, gap, fake_predictions(gap), ext_path)
        lines = [
            "model,rmse_mev,mae_mev,wall_s,n_frames",
            f"pretrained,61.2,48.9,,{ext_frames}",
            f"finetuned,27.5,21.0,95.3,{ext_frames}",
        ]
        if scratch:
            lines.append(f"scratch,44.0,35.1,410.0,{ext_frames}")
        (wd.finetune_csv).write_text("\n".join(lines) + "\n")
    if selection:
        rows = [
            {"strategy": strategy, "k": k, "repeat": r, "rmse_mev": float(base_mev * 30 / k + rng.uniform(0, 3))}
            for strategy, base_mev in (("spread", 40.0), ("spread-diverse", 30.0), ("random", 28.0), ("grid", 33.0))
            for k in (10, 20, 40)
            for r in range(2)
        ]
        record = {"data": "ext.h5", "members": seeds, "epochs": 30, "holdout": 20, "rest": 40, "rows": rows}
        wd.selection_json.write_text(json.dumps(record | {"pretrained_rmse_mev": 83.7, "all_rmse_mev": 2.5}))
    return wd


@pytest.fixture(scope="module")
def full_workdir(tmp_path_factory) -> Workdir:
    wd = make_workdir(tmp_path_factory.mktemp("work"), selection=True)
    write_report(wd.root, dpi=TEST_DPI)
    return wd


def _assert_self_contained(text: str) -> None:
    srcs = re.findall(r'src\s*=\s*"([^"]*)"', text)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs), [s[:40] for s in srcs]
    for bad in ("<link", "<script", "http://", "https://", "url(", "@import"):
        assert bad not in text.lower(), bad


# ==========================================================================
# Tests
# ==========================================================================


def test_report_writes_every_figure_and_one_html(full_workdir):
    wd = full_workdir
    assert wd.report_html.is_file()
    for name in FIGURE_NAMES:
        png = wd.figures / name
        assert png.is_file(), name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = wd.report_html.read_text()
    assert text.count('<img src="data:image/png;base64,') == len(FIGURE_NAMES)
    assert not list(wd.root.glob(".*.tmp")) and not list(wd.figures.glob(".*.tmp"))


def test_report_html_references_only_embedded_images(full_workdir):
    _assert_self_contained(full_workdir.report_html.read_text())


def test_report_embeds_the_png_it_writes(full_workdir):
    import base64

    text = full_workdir.report_html.read_text()
    embedded = {base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)}
    on_disk = {(full_workdir.figures / n).read_bytes() for n in FIGURE_NAMES}
    assert embedded == on_disk


def test_report_summary_numbers_match_predictions(full_workdir):
    from qdgap.core.common.metrics import error_stats_mev
    from qdgap.core.store.results import read_results

    wd = full_workdir
    pred, _ = read_results(wd.predictions, fmt=schema.PREDICTIONS_FORMAT)
    pool = set()
    for run in rf.member_dirs(wd.runs):
        split = rf.read_json(run / rf.SPLIT_JSON)
        pool |= set(split["train"]) | set(split["val"]) | set(split["test"])
    unseen = ~np.isin(pred[schema.FRAME_INDEX], sorted(pool))
    rmse, mae = error_stats_mev(pred[schema.GAP_TRUE_EV][unseen], pred[schema.GAP_MEAN_EV][unseen])
    text = wd.report_html.read_text()
    assert f"{rmse:.1f} meV" in text and f"{mae:.1f} meV" in text
    assert "Top five atoms" in text and "Best member" in text and "Worst member" in text
    for row in ("pretrained", "fine-tuned", "from scratch"):
        assert row in text


def test_report_top_atoms_follow_fna(full_workdir):
    from qdgap.core.store.results import read_results

    fna, _ = read_results(full_workdir.fna, fmt=schema.FNA_FORMAT)
    top = np.asarray(fna[schema.ATOM_LABEL])[np.argsort(-fna[schema.RMSE_MEV_MEAN])[:5]]
    assert ", ".join(top) in full_workdir.report_html.read_text()


def test_report_skips_missing_optional_parts(tmp_path):
    wd = make_workdir(tmp_path / "w", fna=False, finetune=False)
    path = write_report(wd.root, dpi=TEST_DPI)
    text = path.read_text()
    _assert_self_contained(text)
    written = {p.name for p in wd.figures.glob("*.png")}
    assert written == {
        "learning_curves.png",
        "parity_unseen.png",
        "reliability_unseen.png",
        "gap_vs_time.png",
        "error_vs_label_distance.png",
    }  # the baselines need only predictions, splits and the trajectory
    assert "fna.h5 not found" in text and "finetune_report.csv not found" in text
    assert "Skipped" in text


def test_report_handles_skipped_baselines_and_missing_trajectory(tmp_path):
    wd = make_workdir(tmp_path / "w", scratch=False, input_path_attr=False)
    (wd.root / "traj.h5").unlink()  # neither the attr nor config.json's path leads to it now
    text = write_report(wd.root, dpi=TEST_DPI).read_text()
    assert "no row for: from scratch" in text
    assert "3D view of the dot is left out" in text
    assert not (wd.figures / "quantum_dot_3d.png").exists()
    assert (wd.figures / "atom_importance.png").is_file()


def test_report_removes_figures_that_no_longer_apply(tmp_path):
    wd = make_workdir(tmp_path / "w")
    write_report(wd.root, dpi=TEST_DPI)
    wd.fna.unlink()
    write_report(wd.root, dpi=TEST_DPI)
    assert not (wd.figures / "atom_importance.png").exists()
    assert not (wd.figures / "quantum_dot_3d.png").exists()


def test_report_uses_data_option_for_the_structure(tmp_path):
    wd = make_workdir(tmp_path / "w", finetune=False, input_path_attr=False)
    moved = tmp_path / "elsewhere.h5"
    (wd.root / "traj.h5").rename(moved)
    write_report(wd.root, data=moved, dpi=TEST_DPI)
    assert (wd.figures / "quantum_dot_3d.png").is_file()


@pytest.mark.parametrize("what", ["no_folder", "empty", "no_predictions", "no_runs"])
def test_report_rejects_workdir_without_ensemble(tmp_path, what):
    root = tmp_path / "w"
    if what != "no_folder":
        root.mkdir()
    if what in ("no_predictions", "no_runs"):
        wd = make_workdir(root, fna=False, finetune=False)
        if what == "no_predictions":
            wd.predictions.unlink()
        else:
            import shutil

            shutil.rmtree(wd.runs)
    with pytest.raises(QdgapError) as exc:
        write_report(root)
    assert "\n" not in str(exc.value) and str(root) in str(exc.value)
    assert not (root / "report.html").exists()


def test_report_rejects_a_predictions_file_of_another_format(tmp_path):
    wd = make_workdir(tmp_path / "w", fna=False, finetune=False)
    wd.predictions.write_bytes(b"not hdf5")
    with pytest.raises(QdgapError, match="predictions.h5"):
        write_report(wd.root)


def test_cli_report_prints_the_html_path(tmp_path, capsys):
    import typer
    from typer.testing import CliRunner

    from qdgap.cli import report as cli_report

    wd = make_workdir(tmp_path / "w", members=2, fna=False, finetune=False)
    app = typer.Typer()
    app.command("report")(cli_report.report)
    app.command("other")(lambda: None)  # two commands, so typer keeps the command name
    result = CliRunner().invoke(app, ["report", str(wd.root)])
    assert result.exit_code == 0, result.output
    assert str(wd.report_html) in result.output
    help_text = CliRunner().invoke(app, ["report", "--help"]).output
    assert "report.html" in help_text and "--data" in help_text


def test_report_shows_importance_intervals_over_time_and_groups(full_workdir):
    from qdgap.core.store.results import read_results

    fna, _ = read_results(full_workdir.fna, fmt=schema.FNA_FORMAT)
    text = full_workdir.report_html.read_text()
    for name in ("importance_over_time.png", "importance_groups.png", "atom_importance.png"):
        assert (full_workdir.figures / name).is_file(), name
    assert "Atoms that stand out (FNA)" in text and "95 % interval" in text and "Holm" in text
    assert "rank interval" in text and "stands out" in text
    for group in fna[schema.GROUP_LABEL]:
        assert f"<td>{group}</td>" in text


def test_report_computes_statistics_for_an_fna_file_that_predates_them(tmp_path):
    from qdgap.core.store.results import read_results, write_results

    wd = make_workdir(tmp_path / "w", finetune=False)
    data, attrs = read_results(wd.fna, fmt=schema.FNA_FORMAT)
    old = (schema.FRAME_INDEX, schema.TIME_FS, schema.GAP_TRUE_EV, schema.ATOM_LABEL, schema.BASELINE_EV)
    old += (schema.MASKED_EV, schema.RMSE_MEV, schema.RMSE_MEV_MEAN, schema.RMSE_MEV_STD, schema.BASELINE_RMSE_MEV)
    write_results(
        wd.fna,
        {k: (list(data[k]) if k == schema.ATOM_LABEL else data[k]) for k in old},
        fmt=schema.FNA_FORMAT,
        version=schema.FNA_VERSION,
        attrs={schema.ATTR_INPUT_SHA256: attrs[schema.ATTR_INPUT_SHA256]},
    )
    text = write_report(wd.root, dpi=TEST_DPI).read_text()
    assert "predates the importance statistics" in text
    assert (wd.figures / "importance_groups.png").is_file() and (wd.figures / "importance_over_time.png").is_file()
    top = np.asarray(data[schema.ATOM_LABEL])[np.argsort(-data[schema.IMPORTANCE_MEAN_MEV], kind="stable")[:5]]
    assert ", ".join(top) in text


def test_report_reads_an_fna_file_from_before_the_stand_out_test(tmp_path):
    """Datasets under their old names (p_value, significant) and no stand-out test: computed for the report."""
    from qdgap.core.store.results import read_results, write_results

    wd = make_workdir(tmp_path / "w", finetune=False)
    data, attrs = read_results(wd.fna, fmt=schema.FNA_FORMAT)
    renamed = {
        schema.P_VALUE_VS_ZERO: schema.LEGACY_P_VALUE,
        schema.P_ADJUSTED_VS_ZERO: schema.LEGACY_P_ADJUSTED,
        schema.NONZERO: schema.LEGACY_SIGNIFICANT,
    }
    new = {
        schema.STANDOUT_MEV, schema.STANDOUT_CI_MEV, schema.P_VALUE_VS_MEDIAN, schema.P_ADJUSTED_VS_MEDIAN,
        schema.STANDS_OUT, schema.RANK_CI, schema.SHIFT_STANDOUT_MEV, schema.SHIFT_STANDOUT_CI_MEV,
        schema.SHIFT_P_VALUE_VS_MEDIAN, schema.SHIFT_P_ADJUSTED_VS_MEDIAN, schema.SHIFT_STANDS_OUT, schema.SHIFT_RANK_CI,
    }  # fmt: skip
    old = {
        renamed.get(k, k): (list(v) if k in (schema.ATOM_LABEL, schema.GROUP_LABEL, schema.SITE_CLASS) else v)
        for k, v in data.items()
        if k not in new
    }
    write_results(wd.fna, old, fmt=schema.FNA_FORMAT, version=schema.FNA_VERSION, attrs=attrs)
    text = write_report(wd.root, dpi=TEST_DPI).read_text()
    assert "predates the stand-out test" in text and "Atoms that stand out (FNA)" in text
    assert (wd.figures / "atom_importance.png").is_file()


# ==========================================================================
# Uncertainty: calibration, extrapolation, selection
# ==========================================================================


def _unseen_scored(wd: Workdir) -> tuple[dict, np.ndarray]:
    from qdgap.core.store.results import read_results

    pred, _ = read_results(wd.predictions, fmt=schema.PREDICTIONS_FORMAT)
    pool = set()
    for run in rf.member_dirs(wd.runs):
        split = rf.read_json(run / rf.SPLIT_JSON)
        pool |= set(split["train"]) | set(split["val"]) | set(split["test"])
    unseen = ~np.isin(pred[schema.FRAME_INDEX], sorted(pool)) & np.isfinite(pred[schema.GAP_TRUE_EV])
    return pred, unseen


def test_report_shows_reliability_and_coverage_raw_against_calibrated(full_workdir):
    from qdgap.core.common import metrics

    wd = full_workdir
    text = wd.report_html.read_text()
    assert (wd.figures / "reliability_unseen.png").is_file()
    assert "Reliability on the" in text and "<h2>Uncertainty</h2>" in text
    pred, unseen = _unseen_scored(wd)
    true, mean = pred[schema.GAP_TRUE_EV][unseen], pred[schema.GAP_MEAN_EV][unseen]
    raw, cal = pred[schema.GAP_STD_EV][unseen], pred[schema.GAP_STD_CALIBRATED_EV][unseen]
    err = mean.astype(np.float64) - true
    # The table's numbers are the metrics' own, to the digits shown.
    raw95 = metrics.coverage_ksigma(true, mean, raw, 1.959964)
    cal95 = metrics.coverage_ksigma(true, mean, cal, 1.959964)
    assert (
        f"<td>coverage of mean ± 1.96 std (expected 95 %)</td><td>{100 * raw95:.1f} %</td><td>{100 * cal95:.1f} %</td>"
        in text
    )
    assert (
        f"{metrics.miscalibration_area(err, raw):.3f}" in text
        and f"{metrics.miscalibration_area(err, cal):.3f}" in text
    )
    assert f"{metrics.spearman_rho(raw, np.abs(err)):.2f}" in text
    inside = metrics.coverage(true, pred[schema.GAP_LO_EV][unseen], pred[schema.GAP_HI_EV][unseen])
    assert f"gap_lo..gap_hi (95 % scale)</td><td>–</td><td>{100 * inside:.1f} %" in text
    assert "Coverage 68 / 95 % on unseen frames, calibrated" in text


def test_report_says_how_many_frames_extrapolate(full_workdir):
    from qdgap.core.report.build import extrapolation_summary
    from qdgap.core.store.results import read_results

    wd = full_workdir
    text = wd.report_html.read_text()
    counts = {}
    for what, path in (("trajectory", wd.predictions), ("extension", wd.predictions_extended)):
        pred, _ = read_results(path, fmt=schema.PREDICTIONS_FORMAT)
        n, f = int(pred[schema.EXTRAPOLATING].sum()), len(pred[schema.FRAME_INDEX])
        counts[what] = (n, f)
        line = f"{n} of {f} frames ({100 * n / f:.1f} %) outside what the ensemble knows"
        assert f"<td>Extrapolating frames ({what})</td><td>{line}" in text
    n_ext, f_ext = counts["extension"]
    assert n_ext > 0  # the synthetic extension has flagged frames, so the band is drawn
    assert f"{n_ext} of {f_ext} frames flagged as extrapolating (shaded red)" in text  # in the extension's caption
    assert "calibrated 95 % interval (green band, scale)" in text
    lines = extrapolation_summary(wd.root)
    assert [x.split(":")[0] for x in lines] == ["trajectory", "extension"]
    assert (
        lines[1].startswith(f"extension: {n_ext} of {f_ext} frames")
        and "the largest between its pool frames" in lines[1]
    )


def test_report_of_files_written_before_calibration(tmp_path):
    from qdgap.core.report.build import extrapolation_summary

    wd = make_workdir(tmp_path / "w", calibrated=False)
    text = write_report(wd.root, dpi=TEST_DPI).read_text()
    _assert_self_contained(text)
    for name in ("reliability_unseen.png", "gap_vs_time.png", "extension_gap_vs_time.png"):
        assert (wd.figures / name).is_file(), name  # raw spread only
    assert "predictions.h5 predates calibration" in text and "predictions_ext.h5 predates calibration" in text
    assert "Extrapolating frames" not in text and "calibrated interval" not in text
    assert "Coverage 68 / 95 % on unseen frames, raw spread" in text
    assert extrapolation_summary(wd.root) == []


def test_report_draws_the_selection_curve_only_with_a_selection_record(full_workdir, tmp_path):
    text = full_workdir.report_html.read_text()
    assert (full_workdir.figures / "selection_learning_curve.png").is_file()
    assert "<h2>Choosing frames to label</h2>" in text and "<th>K = 40</th>" in text
    wd = make_workdir(tmp_path / "w", fna=False, finetune=False)
    text = write_report(wd.root, dpi=TEST_DPI).read_text()
    assert "Choosing frames to label" not in text and not (wd.figures / "selection_learning_curve.png").exists()


def test_report_rejects_an_unreadable_selection_record(tmp_path):
    wd = make_workdir(tmp_path / "w", fna=False, finetune=False)
    wd.selection_json.write_text("{not json")
    with pytest.raises(QdgapError, match="selection.json") as exc:
        write_report(wd.root, dpi=TEST_DPI)
    assert "\n" not in str(exc.value)


def test_cli_report_prints_the_extrapolation_line(tmp_path):
    import typer
    from typer.testing import CliRunner

    from qdgap.cli import report as cli_report

    wd = make_workdir(tmp_path / "w", members=2, fna=False, finetune=False)
    app = typer.Typer()
    app.command("report")(cli_report.report)
    app.command("other")(lambda: None)
    result = CliRunner().invoke(app, ["report", str(wd.root)])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1] == str(wd.report_html)  # the path stays the last line, for scripts
    assert any(x.startswith("trajectory: ") and "outside what the ensemble knows" in x for x in lines)


def test_data_info_says_how_many_frames_of_a_trajectory_extrapolate(full_workdir, run_cli, tmp_path):
    from qdgap.core.data.trajectory import write_trajectory
    from qdgap.core.store.results import read_results
    from qdgap.testing.synthetic import synthetic_trajectory

    wd = full_workdir
    traj = wd.root / "traj.h5"
    pred, _ = read_results(wd.predictions_extended, fmt=schema.PREDICTIONS_FORMAT)
    n, f = int(pred[schema.EXTRAPOLATING].sum()), len(pred[schema.FRAME_INDEX])
    result = run_cli("data", "info", traj, "--predictions", wd.predictions_extended)
    assert result.exit_code == 0, result.stderr
    line = next(x for x in result.stdout.splitlines() if x.strip().startswith("extrapolation"))
    assert f"{n} of {f} frames ({100 * n / f:.1f} %) outside what the ensemble knows" in line
    assert "the largest between its pool frames" in line
    assert "extrapolation" not in run_cli("data", "info", traj).stdout  # only when asked
    # Predictions of another trajectory, or a file that is not predictions: one line, exit 2.
    other = tmp_path / "other.h5"
    write_trajectory(synthetic_trajectory(12, seed=5), other)
    for data, predictions, words in (
        (other, wd.predictions, "predicted from another trajectory"),
        (traj, traj, "not a qdgap.predictions file"),
    ):
        bad = run_cli("data", "info", data, "--predictions", predictions)
        assert bad.exit_code == 2 and words in bad.stderr and bad.stderr.count("\n") == 1, bad.stderr


def test_report_zooms_where_asked_and_refuses_an_empty_window(tmp_path):
    wd = make_workdir(tmp_path / "w", members=2, fna=False, finetune=False)
    html = write_report(wd.root, zoom_fs=(20.0, 60.0)).read_text()
    assert "zoomed into 20-60 fs" in html
    html = write_report(wd.root).read_text()  # 120 fs read whole: no zoom by default
    assert "zoomed into" not in html
    html = write_report(wd.root, zoom_fs=(5000.0, 5500.0)).read_text()
    assert "zoomed into" not in html and "holds no predicted frame" in html
    with pytest.raises(QdgapError, match="the window is empty"):
        write_report(wd.root, zoom_fs=(60.0, 60.0))


def test_cli_report_zoom_option(tmp_path, run_cli):
    wd = make_workdir(tmp_path / "w", members=2, fna=False, finetune=False)
    r = run_cli("report", wd.root, "--zoom", "10-50")
    assert r.exit_code == 0, r.stderr
    assert "zoomed into 10-50 fs" in wd.report_html.read_text()
    r = run_cli("report", wd.root, "--zoom", "fifty")
    assert r.exit_code == 2 and "--zoom 'fifty': expected A-B" in r.stderr
