"""The report's figures (core.figures): each is built from small synthetic arrays, labelled with units, and renders."""

from __future__ import annotations

import io

import numpy as np
import pytest
from matplotlib.figure import Figure

from qdgap.core import figures as figs
from qdgap.core import metrics
from qdgap.core.labels import atom_labels

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
    from qdgap.core.synthetic import small_cdse_cluster

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
