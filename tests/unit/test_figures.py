"""The report's figures (core.figures): each is built from small synthetic arrays, labelled with units, and renders."""

from __future__ import annotations

import io

import numpy as np
import pytest
from matplotlib.figure import Figure

from qdgap.core.common import metrics
from qdgap.core.common.labels import atom_labels
from qdgap.core.report import figures as figs

DPI = 60
RNG = np.random.default_rng(0)


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _labels(fig: Figure) -> str:
    """Every axis label, title and suptitle of a figure, joined."""
    parts = [fig.get_suptitle()]
    for ax in fig.axes:
        parts += [ax.get_xlabel(), ax.get_ylabel(), ax.get_title()]
        if hasattr(ax, "get_zlabel"):
            parts.append(ax.get_zlabel())
    return " | ".join(parts)


def _series(num_frames: int = 80, members: int = 3):
    t = np.arange(num_frames, dtype=np.float64)
    true = 1.73 + 0.1 * np.sin(t / 7)
    pred = true[None] + RNG.normal(0, 0.02, (members, num_frames))
    return t, true, pred.mean(0), pred.std(0)


def _cluster():
    from qdgap.testing.synthetic import small_cdse_cluster

    return small_cdse_cluster()


def test_error_stats_and_coverage_values():
    true = np.array([1.0, 1.1, np.nan, 1.3])
    pred = np.array([1.01, 1.08, 1.5, 1.3])
    rmse, mae = metrics.error_stats_mev(true, pred)
    assert rmse == pytest.approx(np.sqrt((10.0**2 + 20.0**2 + 0.0) / 3), rel=1e-6)
    assert mae == pytest.approx(10.0, rel=1e-6)
    std = np.array([0.004, 0.02, 0.1, 0.001])
    assert metrics.coverage_ksigma(true, pred, std, 2.0) == pytest.approx(2 / 3)
    assert np.isnan(metrics.error_stats_mev(np.array([np.nan]), np.array([1.0]))[0])


def test_species_of_reads_the_element_of_a_label():
    assert [figs.species_of(x) for x in ("Cd12", "Se1", "Cl22", "C3")] == ["Cd", "Se", "Cl", "C"]


def test_learning_curves_one_line_per_member_and_units():
    curves = {
        seed: {
            "epoch": np.arange(1, n + 1),
            "val_mae_mev": 20 + 100 * np.exp(-np.arange(n) / 4),
            "train_loss": np.exp(-np.arange(n) / 5),
        }
        for seed, n in ((0, 12), (3, 9), (7, 15))
    }
    fig = figs.learning_curves(curves)
    ax_val, ax_train = fig.axes[:2]
    assert "meV" in ax_val.get_ylabel() and ax_val.get_xlabel() == "epoch"
    assert "loss" in ax_train.get_ylabel()
    assert len(ax_val.lines) >= 3 + 3 + 1  # a curve and a best-epoch dot per member, the median
    assert any(ax.get_label() == "<colorbar>" for ax in fig.axes)
    assert _png(fig)[:4] == b"\x89PNG"


def test_learning_curves_single_member_has_no_colorbar():
    fig = figs.learning_curves(
        {
            5: {
                "epoch": np.arange(1, 4),
                "val_mae_mev": np.array([50.0, 40.0, 45.0]),
                "train_loss": np.array([1.0, 0.5, 0.4]),
            }
        }
    )
    assert not any(ax.get_label() == "<colorbar>" for ax in fig.axes)
    _png(fig)


def test_parity_reports_rmse_mae_in_the_corner():
    _, true, mean, std = _series()
    true[::5] = np.nan  # unlabelled frames are left out
    fig = figs.parity(true, mean, std)
    ax = fig.axes[0]
    rmse, mae = metrics.error_stats_mev(true, mean)
    text = " ".join(t.get_text() for t in ax.texts)
    assert f"RMSE {rmse:.1f} meV" in text and f"MAE {mae:.1f} meV" in text
    assert "(eV)" in ax.get_xlabel() and "(eV)" in ax.get_ylabel()
    assert ax.get_xlim() == ax.get_ylim()
    _png(fig)


def test_parity_without_true_gaps_raises():
    with pytest.raises(ValueError):
        figs.parity(np.full(4, np.nan), np.ones(4), np.zeros(4))


@pytest.mark.parametrize("sparse_truth", [False, True])
def test_gap_vs_time_marks_training_frames(sparse_truth):
    t, true, mean, std = _series(200)
    if sparse_truth:
        true[np.arange(200) % 10 != 0] = np.nan
    train = np.zeros(200, bool)
    train[::10] = True
    fig = figs.gap_vs_time(t, true, mean, std, train_mask=train)
    ax, ax_err = fig.axes[:2]
    assert ax.get_ylabel() == "band gap (eV)" and ax_err.get_xlabel() == "time (fs)" and "meV" in ax_err.get_ylabel()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "true gap" in legend and "ensemble mean" in legend and "training frames (20)" in legend
    _png(fig)


def test_gap_vs_time_many_training_frames_become_a_rug():
    t, true, mean, std = _series(600)
    train = np.arange(600) % 2 == 0
    fig = figs.gap_vs_time(t, true, mean, std, train_mask=train)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any("ticks" in x for x in legend)
    _png(fig)


def test_atom_importance_sorted_bars_for_every_label():
    numbers, _ = _cluster()
    labels = atom_labels(numbers)
    mean = RNG.uniform(20, 80, len(labels))
    fig = figs.atom_importance(labels, mean, RNG.uniform(1, 5, len(labels)), baseline_rmse_mev=np.array([18.0, 21.0]))
    ax = fig.axes[0]
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks == [labels[i] for i in np.argsort(-mean)]
    from matplotlib.container import BarContainer

    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert len(bars) == 1 and len(bars[0]) == len(labels)  # one bar per atom
    assert "meV" in ax.get_ylabel()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert {"Cd", "Se"} <= set(legend) and any("baseline" in x for x in legend)
    _png(fig)


def test_quantum_dot_3d_labels_the_top_atoms():
    numbers, pos = _cluster()
    labels = atom_labels(numbers)
    imp = RNG.uniform(20, 80, len(labels))
    fig = figs.quantum_dot_3d(pos, labels, imp, numbers=numbers, top=5)
    ax = fig.axes[0]
    named = [t.get_text() for t in ax.texts]
    assert named == [f"{r}. {labels[i]}" for r, i in enumerate(np.argsort(-imp)[:5], 1)]
    assert all("(Å)" in lab for lab in (ax.get_xlabel(), ax.get_ylabel(), ax.get_zlabel()))
    assert any("meV" in a.get_ylabel() for a in fig.axes[1:])  # the colorbar
    _png(fig)


def test_quantum_dot_3d_rejects_mismatched_shapes():
    numbers, pos = _cluster()
    with pytest.raises(ValueError):
        figs.quantum_dot_3d(pos[:-1], atom_labels(numbers), np.ones(len(numbers)))


def test_transfer_comparison_with_and_without_baselines():
    rows = {
        "finetuned": {"rmse_mev": 27.5, "mae_mev": 21.0, "wall_s": 95.0, "n_frames": 50},
        "pretrained": {"rmse_mev": 61.0, "mae_mev": 49.0, "wall_s": float("nan"), "n_frames": 50},
        "scratch": {"rmse_mev": 44.0, "mae_mev": 35.0, "wall_s": 400.0, "n_frames": 50},
    }
    fig = figs.transfer_comparison(rows)
    ax = fig.axes[0]
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert (
        ticks[0].startswith("pretrained") and ticks[1].startswith("fine-tuned") and ticks[2].startswith("from scratch")
    )
    assert "95.0 s" in ticks[1] and "6.7 min" in ticks[2] and "training" not in ticks[0]
    assert all("50 frames scored" in t for t in ticks)
    assert "meV" in ax.get_ylabel()
    _png(fig)
    only = figs.transfer_comparison({"finetuned": rows["finetuned"]})
    assert len(only.axes[0].get_xticklabels()) == 1
    _png(only)


def test_extension_gap_vs_time_names_the_finetuned_ensemble():
    t, true, mean, std = _series(60)
    fig = figs.extension_gap_vs_time(t + 1000.0, true, mean, std, train_mask=np.arange(60) % 10 == 0)
    legend = [x.get_text() for x in fig.axes[0].get_legend().get_texts()]
    assert "fine-tuned ensemble mean" in legend
    assert "fine-tuned" in _labels(fig)
    _png(fig)


def test_figures_do_not_touch_pyplot():
    import sys

    # Building figures must not register them with pyplot (no global state, no GUI backend).
    if "matplotlib.pyplot" in sys.modules:
        import matplotlib.pyplot as plt

        before = plt.get_fignums()
        figs.parity(*_series()[1:])
        assert plt.get_fignums() == before
    else:
        figs.parity(*_series()[1:])
        assert "matplotlib.pyplot" not in sys.modules


# ==========================================================================
# Uncertainty: calibrated band, extrapolation flags, reliability, selection
# ==========================================================================


def test_flagged_spans_cover_runs_of_flagged_frames():
    t = np.arange(10, dtype=np.float64) * 2.0  # 2 fs apart
    flags = np.zeros(10, bool)
    flags[[0, 1, 5, 9]] = True
    assert figs.flagged_spans(t, flags) == [(-1.0, 3.0), (9.0, 11.0), (17.0, 19.0)]
    assert figs.flagged_spans(t, np.zeros(10, bool)) == []


def test_gap_vs_time_draws_the_calibrated_band_and_shades_extrapolating_frames():
    from matplotlib.patches import Rectangle

    t, true, mean, std = _series(120)
    lo, hi = mean - 1.96 * 0.8 * std, mean + 1.96 * 0.8 * std
    flags = np.zeros(120, bool)
    flags[30:40] = flags[100:103] = True  # two runs
    fig = figs.extension_gap_vs_time(
        t,
        true,
        mean,
        std,
        train_mask=np.arange(120) % 10 == 0,
        gap_lo_ev=lo,
        gap_hi_ev=hi,
        level=0.95,
        extrapolating=flags,
    )
    ax, ax_err = fig.axes[:2]
    legend = [x.get_text() for x in ax.get_legend().get_texts()]
    assert "calibrated 95 % interval" in legend and "extrapolating (13 frames)" in legend
    assert "mean ± 2 std (raw)" in legend
    for a in (ax, ax_err):  # one shaded span per run of flagged frames, in both panels
        spans = [p for p in a.patches if isinstance(p, Rectangle)]
        assert len(spans) == 2
    (cal,) = [c for c in ax.collections if c.get_label() == "calibrated 95 % interval"]
    edges = cal.get_paths()[0].vertices  # the band, drawn where the file puts it: lo forward, hi back
    assert np.isclose(edges[:, 1].min(), lo.min()) and np.isclose(edges[:, 1].max(), hi.max())
    assert not [ln for ln in ax.lines if ln.get_linestyle() == "--"]  # no dashed edges: a wall of them at 10,001 frames
    _png(fig)


def test_worst_window_finds_the_worst_predicted_stretch():
    t = np.arange(4000, dtype=np.float64)
    true = np.full(4000, 1.7)
    mean = true + 0.002
    mean[2300:2700] += 0.05  # a 400 fs stretch predicted 50 meV off
    a, b = figs.worst_window(t, true, mean, window_fs=500.0)
    assert b - a == 500.0 and a <= 2300 and b >= 2699
    assert figs.default_zoom(t, true, mean) == [(0.0, 500.0), (a, b)]
    assert figs.default_zoom(t[:1001], true[:1001], mean[:1001]) == []  # 1 ps reads whole: no zoom
    true[::2] = np.nan  # labels on every other frame only: the same stretch
    assert figs.worst_window(t, true, mean, window_fs=500.0)[0] <= 2300


def test_gap_vs_time_zooms_into_a_long_trajectory():
    t, true, mean, std = _series(10001)
    mean[6000:6400] += 0.08
    lo, hi = mean - 2 * std, mean + 2 * std
    fig = figs.gap_vs_time(t, true, mean, std, gap_lo_ev=lo, gap_hi_ev=hi, level=0.95)
    ax, ax_err, first, worst = fig.axes
    assert first.get_xlim() == (0.0, 500.0) and "RMSE" in first.get_title()
    a, b = worst.get_xlim()
    assert b - a == 500.0 and a <= t[6000] and b >= t[6399]
    assert len(first.collections) == 2  # raw and calibrated bands, zoomed
    assert ax.get_xlim() == (t[0], t[-1])
    chosen = figs.gap_vs_time(t, true, mean, std, zoom_fs=[(100.0, 300.0)])
    assert len(chosen.axes) == 3 and chosen.axes[2].get_xlim() == (100.0, 300.0)
    assert len(figs.gap_vs_time(t, true, mean, std, zoom_fs=[]).axes) == 2
    _png(fig)


def test_gap_vs_time_without_calibration_is_unchanged():
    t, true, mean, std = _series(60)
    fig = figs.gap_vs_time(t, true, mean, std)
    legend = [x.get_text() for x in fig.axes[0].get_legend().get_texts()]
    assert legend == ["true gap", "mean ± 2 std", "ensemble mean"]
    assert not fig.axes[0].patches


def test_reliability_diagram_follows_the_diagonal_when_calibrated():
    rng = np.random.default_rng(3)
    std = rng.uniform(0.005, 0.03, 4000)
    err = rng.normal(0.0, std)  # errors drawn with exactly the stated spread
    fig = figs.reliability_diagram(err, 2.0 * std, std_calibrated_ev=std)
    ax, ax_sp = fig.axes[:2]
    raw, cal = [ln for ln in ax.lines if "miscalibration" in ln.get_label()]
    assert "raw" in raw.get_label() and "calibrated" in cal.get_label()
    np.testing.assert_allclose(cal.get_xdata(), figs.RELIABILITY_LEVELS)
    assert np.max(np.abs(cal.get_ydata() - figs.RELIABILITY_LEVELS)) < 0.04  # calibrated: on the diagonal
    assert np.all(raw.get_ydata() >= figs.RELIABILITY_LEVELS)  # twice too wide: above it
    assert "expected coverage" in ax.get_xlabel() and "observed coverage" in ax.get_ylabel()
    assert "meV" in ax_sp.get_xlabel() and "meV" in ax_sp.get_ylabel() and "Spearman" in ax_sp.get_title()
    _png(fig)


def test_reliability_diagram_raw_only_for_files_without_calibration():
    _, true, mean, std = _series(80)
    fig = figs.reliability_diagram(mean - true, std)
    curves = [ln for ln in fig.axes[0].lines if "miscalibration" in ln.get_label()]
    assert len(curves) == 1 and "raw" in curves[0].get_label()
    assert "raw spread" in fig.axes[1].get_xlabel()
    _png(fig)
    with pytest.raises(ValueError):
        figs.reliability_diagram(np.full(3, np.nan), np.ones(3))


def test_selection_curve_one_line_per_strategy_and_references():
    stats = {
        "random": {25: (30.0, 2.0, 2), 50: (15.0, 0.1, 2)},
        "spread": {25: (45.0, 0.6, 2), 50: (36.0, 1.2, 2)},
    }
    fig = figs.selection_curve(stats, pretrained_rmse_mev=83.7, all_rmse_mev=2.5, all_frames=351)
    ax = fig.axes[0]
    legend = [x.get_text() for x in ax.get_legend().get_texts()]
    assert legend[:2] == ["spread", "random"]  # the strategies in select's order
    assert "all 351 frames (2.5 meV)" in legend and "pretrained (83.7 meV)" in legend
    assert [x.get_text() for x in ax.get_xticklabels()] == ["25", "50"]
    assert "meV" in ax.get_ylabel()
    _png(fig)
