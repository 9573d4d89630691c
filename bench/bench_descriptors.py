"""What a structure descriptor and a time series model do with sparse labels, beside ALIGNN (issue 27).

    python bench/bench_descriptors.py --data work/real/cl_qd.h5 --ext work/real/cl_qd_ext.h5 \\
        --out bench/results_descriptors

On the real Cl trajectory, for each label spacing k (the pool: every k-th labelled frame, as
``--stride k``), scored on every other labelled frame:

* linear and PCHIP interpolation in time (``core.analysis.baselines``);
* kriging in time: a Gaussian process in time alone (``core.analysis.baselines.kriging_in_time``, the
  baseline qdgap prints beside every accuracy);
* ridge on pair distances: a linear model of the gap in the 2,211 interatomic distances (standardised;
  the penalty by ridge's leave-one-out error over a log grid), the first-order (linear vibronic) picture
  of how the gap follows the nuclei; and the same plus its pool residuals interpolated in time;
* structure + time: one Gaussian process whose kernel is the sum of a linear kernel on the standardised
  pair distances and the Matern 3/2 kernel in time, hyperparameters by maximum marginal likelihood;
* and, for the extension, ridge trained on the 0-10 ps pool predicting the 10-15 ps labels.

Seconds on a CPU; deterministic (no random draws). A benchmark: it asserts nothing. The ALIGNN rows
are in ``bench/results_label_spacing.json`` (same pools, same frames) and are printed beside.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SPACINGS_FS = (10, 20, 50, 100, 200)
RIDGE_ALPHAS = np.logspace(-2, 6, 40)


def pair_distances(positions: np.ndarray) -> np.ndarray:
    """(F, N, 3) Å -> (F, N (N - 1) / 2) Å, every interatomic distance (invariant to rotation, translation)."""
    i, j = np.triu_indices(positions.shape[1], 1)
    return np.linalg.norm(positions[:, i] - positions[:, j], axis=-1)


def gp_predict(
    t_train: np.ndarray,
    y_train: np.ndarray,
    t_test: np.ndarray,
    x_train: np.ndarray | Sequence[np.ndarray],
    x_test: np.ndarray | Sequence[np.ndarray],
) -> tuple[np.ndarray, np.ndarray, dict]:
    """One Gaussian process on structure and time: a linear kernel on each block of standardised features
    (its own variance per block) plus the Matern 3/2 kernel in time (kriging's, ``core.analysis.baselines``)
    and noise; its hyperparameters (variances, length in fs, noise) by maximum marginal likelihood from
    three starts.

    Args:
        t_train, t_test: (L,), (F,) times, fs.
        y_train: (L,) gaps, eV.
        x_train, x_test: (L, D), (F, D) standardised features, or a sequence of such blocks.

    Returns:
        (F,) posterior mean, eV; (F,) predictive sd of a new frame's gap (noise included), eV; the fitted
        hyperparameters.
    """
    from scipy.linalg import cho_factor, cho_solve, solve_triangular
    from scipy.optimize import minimize

    from qdgap.core.analysis.gp import matern32

    blocks_train = [x_train] if isinstance(x_train, np.ndarray) else list(x_train)
    blocks_test = [x_test] if isinstance(x_test, np.ndarray) else list(x_test)
    nb = len(blocks_train)
    mean = y_train.mean()
    yc = y_train - mean
    n = len(yc)
    lins = [x @ x.T / x.shape[1] for x in blocks_train]

    def kernel(theta: np.ndarray) -> np.ndarray:
        *s_lin, s_time, length, noise = np.exp(theta)
        k = s_time * matern32(t_train, t_train, length) + noise * np.eye(n)
        return k + sum(s * lin for s, lin in zip(s_lin, lins, strict=True))

    def nll(theta: np.ndarray) -> float:
        try:
            c = cho_factor(kernel(theta), lower=True)
        except np.linalg.LinAlgError:
            return 1e10
        return float(0.5 * yc @ cho_solve(c, yc) + np.log(np.diag(c[0])).sum())

    bounds = [(-20, 2)] * nb + [(-20, 2), (np.log(5.0), np.log(3000.0)), (-16, 0)]
    starts = ([-6] * nb + [-6, np.log(50), -8], [-4] * nb + [-5, np.log(100), -7], [-8] * nb + [-4, np.log(30), -9])
    best = min((minimize(nll, s, method="L-BFGS-B", bounds=bounds) for s in starts), key=lambda r: r.fun)
    *s_lin, s_time, length, noise = np.exp(best.x)
    chol = cho_factor(kernel(best.x), lower=True)
    alpha = cho_solve(chol, yc)
    k_star = s_time * matern32(t_test, t_train, length)
    k_star = k_star + sum(
        s * (xt @ x.T / x.shape[1]) for s, xt, x in zip(s_lin, blocks_test, blocks_train, strict=True)
    )
    prior = s_time + noise + sum(s * (xt**2).sum(1) / xt.shape[1] for s, xt in zip(s_lin, blocks_test, strict=True))
    v = solve_triangular(np.tril(chol[0]), k_star.T, lower=True)  # (L, F)
    sd = np.sqrt(np.maximum(prior - (v**2).sum(0), 0.0))
    hp = {"length_fs": float(length), "noise_mev": float(np.sqrt(noise) * 1e3),
          "feature_sd_mev": [float(np.sqrt(s) * 1e3) for s in s_lin]}  # fmt: skip
    return mean + k_star @ alpha, sd, hp


def ridge(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Ridge on standardised features: (test predictions, train predictions, the chosen penalty)."""
    from sklearn.linear_model import RidgeCV

    mu, sd = x_train.mean(0), x_train.std(0) + 1e-12
    model = RidgeCV(alphas=RIDGE_ALPHAS).fit((x_train - mu) / sd, y_train)
    return model.predict((x_test - mu) / sd), model.predict((x_train - mu) / sd), float(model.alpha_)


def _rmse(pred: np.ndarray, truth: np.ndarray) -> float:
    from qdgap.core.common.metrics import rmse_mev

    return rmse_mev(pred - truth)


def spacing_row(traj, k: int) -> dict:
    """Every predictor at one label spacing, on the labelled frames outside the pool."""
    from qdgap.core.analysis import baselines as bl
    from qdgap.core.data.splits import labelled_pool
    from qdgap.core.data.timeseries import correlation_time_fs

    t0 = time.perf_counter()
    labelled = np.flatnonzero(np.isfinite(traj.gap_ev))
    pool = labelled_pool(traj.gap_ev, stride=k)
    scored = labelled[~np.isin(labelled, pool)]
    t, g = traj.time_fs.astype(np.float64), traj.gap_ev.astype(np.float64)
    x = pair_distances(traj.positions_ang.astype(np.float64))
    base = bl.baseline_predictions(t[scored], t[pool], g[pool], corr_time_fs=correlation_time_fs(t[pool], g[pool]))
    y = g[scored]
    r_test, r_train, alpha = ridge(x[pool], g[pool], x[scored])
    hybrid = r_test + np.interp(t[scored], t[pool], g[pool] - r_train)
    mu, sd = x[pool].mean(0), x[pool].std(0) + 1e-12
    both, _, both_hp = gp_predict(t[pool], g[pool], t[scored], (x[pool] - mu) / sd, (x[scored] - mu) / sd)
    return {
        "spacing_fs": k,
        "pool": int(len(pool)),
        "scored_frames": int(len(scored)),
        "linear": _rmse(base["linear"], y),
        "pchip": _rmse(base["pchip"], y),
        "mean": _rmse(base["mean"], y),
        "kriging_time": _rmse(base["kriging"], y),
        "ridge_pairs": _rmse(r_test, y),
        "ridge_alpha": alpha,
        "ridge_plus_interpolated_residuals": _rmse(hybrid, y),
        "structure_plus_time": _rmse(both, y),
        "structure_plus_time_length_fs": both_hp["length_fs"],
        "seconds": time.perf_counter() - t0,
    }


def extension_rows(traj, ext, spacings: tuple[int, ...]) -> list[dict]:
    """Ridge trained on the 0-10 ps pool, on every labelled 10-15 ps frame, beside the pool's mean."""
    from qdgap.core.data.splits import labelled_pool

    lab = np.flatnonzero(np.isfinite(ext.gap_ev))
    y = ext.gap_ev[lab].astype(np.float64)
    x_ext = pair_distances(ext.positions_ang[lab].astype(np.float64))
    x = pair_distances(traj.positions_ang.astype(np.float64))
    rows = []
    for k in spacings:
        pool = labelled_pool(traj.gap_ev, stride=k)
        g = traj.gap_ev[pool].astype(np.float64)
        pred, _, alpha = ridge(x[pool], g, x_ext)
        rows.append({"spacing_fs": k, "frames": int(len(lab)), "ridge_pairs": _rmse(pred, y),
                     "bias_mev": float((pred - y).mean() * 1e3), "pool_mean": _rmse(np.full_like(y, g.mean()), y),
                     "ridge_alpha": alpha})  # fmt: skip
    return rows


def render(rows: list[dict], ext_rows: list[dict], alignn: dict, command: str) -> str:
    """The markdown tables."""
    lines = ["# Sparse labels: a structure descriptor and a time series model beside ALIGNN", "", f"`{command}`", ""]
    lines += ["## 0-10 ps: every labelled frame outside the pool (RMSE, meV)", ""]
    head = ["labels every, fs", "pool", "ALIGNN ensemble (4 `cpu` members)", "linear interp.", "PCHIP",
            "kriging in time", "ridge on pair distances", "ridge + interpolated residuals", "structure + time (GP)",
            "pool mean"]  # fmt: skip
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        a = alignn.get(r["spacing_fs"])
        cells = [r["linear"], r["pchip"], r["kriging_time"], r["ridge_pairs"], r["ridge_plus_interpolated_residuals"],
                 r["structure_plus_time"]]  # fmt: skip
        best = min(cells)
        shown = [f"**{c:.1f}**" if c == best else f"{c:.1f}" for c in cells]
        lines.append(f"| {r['spacing_fs']} | {r['pool']} | {'-' if a is None else f'{a:.1f}'} | "
                     + " | ".join(shown) + f" | {r['mean']:.1f} |")  # fmt: skip
    lines += ["", "The GP's fitted length in time (fs): "
              + ", ".join(f"{r['spacing_fs']} fs: {r['structure_plus_time_length_fs']:.0f}" for r in rows) + "."]  # fmt: skip
    if ext_rows:
        lines += ["", "## 10-15 ps: ridge trained on the 0-10 ps pool (no extension label)", ""]
        lines += ["| 0-10 ps labels every, fs | extension frames | ridge, meV | its mean error, meV | pool mean, meV |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for r in ext_rows:
            lines.append(f"| {r['spacing_fs']} | {r['frames']} | {r['ridge_pairs']:.1f} | {r['bias_mev']:+.1f} | "
                         f"{r['pool_mean']:.1f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from qdgap.core.common.files import write_text_atomic
    from qdgap.core.data.trajectory import read_trajectory

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="0-10 ps trajectory with labels (cl_qd.h5)")
    p.add_argument("--ext", type=Path, default=None, help="10-15 ps trajectory with labels (cl_qd_ext.h5)")
    p.add_argument("--spacings", default=",".join(map(str, SPACINGS_FS)), help="fs, comma-separated")
    p.add_argument("--spacing-json", type=Path, default=REPO / "bench" / "results_label_spacing.json")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results_descriptors", help="writes OUT.md, OUT.json")
    args = p.parse_args(argv)
    command = "python bench/bench_descriptors.py " + " ".join(sys.argv[1:] if argv is None else argv)
    spacings = tuple(int(s) for s in args.spacings.split(","))
    traj = read_trajectory(args.data)
    rows = [spacing_row(traj, k) for k in spacings]
    ext_rows = extension_rows(traj, read_trajectory(args.ext), spacings) if args.ext else []
    alignn = {}
    if args.spacing_json.exists():
        for r in json.loads(args.spacing_json.read_text()).get("spacing", {}).values():
            alignn[int(r["spacing_fs"])] = float(r["ensemble_rmse_mev"])
    text = render(rows, ext_rows, alignn, command)
    write_text_atomic(args.out.with_suffix(".md"), text)
    report = {"command": command, "spacing": rows, "extension": ext_rows, "alignn_ensemble_rmse_mev": alignn}
    write_text_atomic(args.out.with_suffix(".json"), json.dumps(report, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
