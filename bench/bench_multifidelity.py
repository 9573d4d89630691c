"""Multi-fidelity with GFN1-xTB: what a cheap gap on every frame buys where PBE labels are sparse (issue 27).

    python bench/xtb_gaps.py work/real/cl_qd.h5 --out work/mf/xtb_cl_qd --shard 0/2   # and 1/2, beside it
    python bench/xtb_gaps.py work/real/cl_qd_ext.h5 --out work/mf/xtb_cl_qd_ext --shard 0/2   # and 1/2
    python bench/bench_multifidelity.py --data work/real/cl_qd.h5 --ext work/real/cl_qd_ext.h5 \\
        --xtb work/mf/xtb_cl_qd --xtb-ext work/mf/xtb_cl_qd_ext --out bench/results_multifidelity

The premise of multi-fidelity: the cheap method is run on every frame (GFN1-xTB: about 1 s per frame on one
core, against minutes to hours of PBE), the expensive one on a sparse pool. Every estimator below sees PBE on
the pool only and xTB on every frame; all are scored on the same PBE-labelled frames outside the pool:

* baselines from the pool alone: linear interpolation in time, kriging in time, nearest label, pool mean;
* xTB, linear map: PBE = a + b xTB, least squares on the pool;
* Delta in time: xTB plus the pool's PBE - xTB interpolated in time;
* xTB as a control variate: interpolation plus b times xTB's departure from its own interpolation, b from
  the pool by leave-one-out interpolation (b = 0 is interpolation, b = 1 Delta; ``baselines.xtb_corrected``,
  the row ``qdgap predict`` prints when the trajectory has xTB gaps);
* kriging with xTB: one Gaussian process on time and xTB, what ``qdgap interpolate`` runs
  (``core/analysis/gp.py``: Matern 3/2 in time plus a linear kernel in standardised xTB, hyperparameters by
  maximum marginal likelihood), whose predictive sd gives a 95 % interval: its coverage is the fraction of
  scored frames inside it;
* the same with the 2,211 interatomic distances as a second linear-kernel block (the research GP of
  ``bench_descriptors.gp_predict``, which takes several blocks);
* ALIGNN pretrained on xTB gaps (``--pretrain-report``): members trained on the xTB-labelled trajectory
  (``bench/xtb_gaps.py --xtb-labels``), then ``qdgap finetune`` on the PBE pool; its finetune_report.csv;
* ALIGNN Delta-learning (``--delta SLOPE FOLDER DATA EXT``, repeatable): qdgap members trained on the
  PBE - SLOPE x xTB trajectory that ``bench/xtb_gaps.py --delta [--slope]`` writes, predicting SLOPE x xTB +
  correction; and the same plus its pool residuals interpolated in time. SLOPE 1 is Delta learning; a slope
  fitted on the pool is xTB as a readout input whose weight is fixed.

The extension (10-15 ps) is scored with no extension label (the 0-10 ps pool alone) and with K extension labels
(every 500/K-th) added to that pool. Seconds once the xTB gaps exist; deterministic. A benchmark: it asserts
nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench_descriptors import gp_predict, pair_distances  # noqa: E402
from bench_label_spacing import EXT_SPACING_FS, score_outside_pool  # noqa: E402
from xtb_gaps import load_shards  # noqa: E402

SPACINGS_FS = (20, 50, 100, 200)
EXT_LABELS = (0, 25, 50, 100)
BASE_STRIDE = 100  # the 0-10 ps pool behind every extension row: a label per 100 fs, issue 27's aim


def ext_pool(ext_gap_ev: np.ndarray, k: int) -> np.ndarray:
    """The K = k extension labels (every 500/K-th, as bench_label_spacing's fine-tuning pools); none for k = 0."""
    from qdgap.core.data.splits import labelled_pool

    if k == 0:
        return np.zeros(0, np.int64)
    return labelled_pool(ext_gap_ev, stride=max(1, round(int(np.isfinite(ext_gap_ev).sum()) * EXT_SPACING_FS / k)))


def estimators(
    t_pool: np.ndarray,
    y_pool: np.ndarray,
    x_pool: np.ndarray,
    t_q: np.ndarray,
    x_q: np.ndarray,
    d_pool: np.ndarray | None = None,
    d_q: np.ndarray | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict]:
    """Every estimator's PBE gap at the query frames.

    Args:
        t_pool, y_pool, x_pool: (L,) times (fs, sorted), PBE gaps (eV), xTB gaps (eV) of the pool.
        t_q, x_q: (F,) times (fs) and xTB gaps (eV) of the frames to predict.
        d_pool, d_q: (L, D), (F, D) interatomic distances, Å, or None to leave that GP out.

    Returns:
        predictions name -> (F,) eV; predictive sd name -> (F,) eV (the GPs); fitted parameters.
    """
    from qdgap.core.analysis import baselines as bl
    from qdgap.core.analysis import gp

    pred: dict[str, np.ndarray] = {}
    sd: dict[str, np.ndarray] = {}
    fit: dict = {}
    base = bl.baseline_predictions(t_q, t_pool, y_pool, corr_time_fs=0.0)
    for name in ("linear", "kriging", "nearest", "mean"):
        pred[name] = base[name]
    b, a = np.polyfit(x_pool, y_pool, 1)
    pred["xtb_linear_map"] = a + b * x_q
    fit["linear_map"] = {"a_ev": float(a), "b": float(b)}
    pred["delta_in_time"] = x_q + np.interp(t_q, t_pool, y_pool - x_pool)
    pred["control_variate"], fit["control_variate_b"] = bl.xtb_corrected(t_q, x_q, t_pool, y_pool, x_pool)
    # What `qdgap interpolate` runs (core/analysis/gp.py), so this row measures the product.
    process = gp.fit_gp(t_pool, y_pool, x_pool)
    pred["gp_time_xtb"], sd["gp_time_xtb"] = gp.gp_predict(process, t_q, t_pool, y_pool, x_q, x_pool)
    fit["gp_time_xtb"] = process.as_dict()
    mu, s = x_pool.mean(), x_pool.std() + 1e-12
    xs_pool, xs_q = ((x_pool - mu) / s)[:, None], ((x_q - mu) / s)[:, None]
    if d_pool is not None:
        dm, ds = d_pool.mean(0), d_pool.std(0) + 1e-12
        pred["gp_time_xtb_distances"], sd["gp_time_xtb_distances"], fit["gp_time_xtb_distances"] = gp_predict(
            t_pool, y_pool, t_q, [xs_pool, (d_pool - dm) / ds], [xs_q, (d_q - dm) / ds]
        )
    return pred, sd, fit


def score(pred: dict, sd: dict, y: np.ndarray) -> dict:
    """RMSE (meV) per estimator and, for those with an sd, the coverage (%) of the 95 % interval."""
    from qdgap.core.common.metrics import rmse_mev

    out = {name: rmse_mev(p - y) for name, p in pred.items()}
    for name, s in sd.items():
        out[f"{name}_coverage_pct"] = float(100.0 * np.mean(np.abs(pred[name] - y) <= 1.96 * s))
    return out


def _with_xtb(traj, folder: Path) -> np.ndarray:
    """(F,) xTB gaps (eV) on the trajectory's frames, NaN where none was computed."""
    frames, gaps = load_shards(folder)
    out = np.full(traj.num_frames, np.nan)
    out[frames] = gaps
    return out


def _covered(labelled: np.ndarray, xtb: np.ndarray) -> np.ndarray:
    """The labelled frames from the first up to the first without an xTB gap (a preview while xtb_gaps runs)."""
    ok = np.isfinite(xtb[labelled])
    stop = len(ok) if ok.all() else int(np.argmin(ok))
    return labelled[:stop]


def spacing_row(traj, xtb: np.ndarray, k: int, distances: np.ndarray | None) -> dict:
    """Every estimator at one label spacing on 0-10 ps, scored on the labelled frames outside the pool."""
    from qdgap.core.data.splits import labelled_pool

    t0 = time.perf_counter()
    labelled = _covered(np.flatnonzero(np.isfinite(traj.gap_ev)), xtb)
    pool = np.intersect1d(labelled_pool(traj.gap_ev, stride=k), labelled)
    scored = labelled[~np.isin(labelled, pool)]
    if len(labelled) < np.isfinite(traj.gap_ev).sum():  # a preview: no extrapolation past its last label
        scored = scored[scored <= pool[-1]]
    t, g = traj.time_fs.astype(np.float64), traj.gap_ev.astype(np.float64)
    d = (distances[pool], distances[scored]) if distances is not None else (None, None)
    pred, sd, fit = estimators(t[pool], g[pool], xtb[pool], t[scored], xtb[scored], *d)
    y = g[scored]
    return {"spacing_fs": k, "pool": int(len(pool)), "scored_frames": int(len(scored)), **score(pred, sd, y),
            "pearson_pbe_xtb_scored": float(np.corrcoef(y, xtb[scored])[0, 1]), "fit": fit,
            "seconds": time.perf_counter() - t0}  # fmt: skip


def phase_row(traj, xtb: np.ndarray, k: int) -> dict:
    """Linear interpolation against the xTB-corrected one for every phase of the k-fs pool (frames
    offset, offset + k, ... for each labelled offset below k), on each phase's other labelled frames: how much
    the gain depends on which frames happened to be labelled."""
    from qdgap.core.analysis import baselines as bl
    from qdgap.core.common.metrics import rmse_mev

    g, t = traj.gap_ev.astype(np.float64), traj.time_fs.astype(np.float64)
    labelled = np.flatnonzero(np.isfinite(g))
    lin, cv, slopes = [], [], []
    for offset in range(k):
        pool = np.arange(offset, traj.num_frames, k)
        pool = pool[np.isfinite(g[pool])]
        if len(pool) < 3:
            continue
        scored = labelled[~np.isin(labelled, pool)]
        lin.append(rmse_mev(np.interp(t[scored], t[pool], g[pool]) - g[scored]))
        pred, b = bl.xtb_corrected(t[scored], xtb[scored], t[pool], g[pool], xtb[pool])
        cv.append(rmse_mev(pred - g[scored]))
        slopes.append(b)
    lin, cv = np.array(lin), np.array(cv)
    d = cv - lin
    return {"spacing_fs": k, "phases": int(len(d)), "linear_mean": float(lin.mean()), "linear_sd": float(lin.std()),
            "corrected_mean": float(cv.mean()), "corrected_sd": float(cv.std()), "diff_mean": float(d.mean()),
            "diff_sd": float(d.std()), "diff_min": float(d.min()), "diff_max": float(d.max()),
            "corrected_lower": int((d < 0).sum()), "b_min": float(min(slopes)), "b_max": float(max(slopes))}  # fmt: skip


def extension_rows(traj, xtb: np.ndarray, ext, xtb_ext: np.ndarray, ks: tuple[int, ...]) -> list[dict]:
    """The 0-10 ps pool (a label per ``BASE_STRIDE`` fs) plus K extension labels, scored on the other extension
    labels; K = 0 scores the 0-10 ps pool alone."""
    from qdgap.core.analysis import baselines as bl
    from qdgap.core.common.metrics import rmse_mev
    from qdgap.core.data.splits import labelled_pool

    base = np.intersect1d(labelled_pool(traj.gap_ev, stride=BASE_STRIDE), np.flatnonzero(np.isfinite(xtb)))
    lab = np.flatnonzero(np.isfinite(ext.gap_ev) & np.isfinite(xtb_ext))
    rows = []
    for k in ks:
        pool_ext = np.intersect1d(ext_pool(ext.gap_ev, k), lab)
        scored = lab[~np.isin(lab, pool_ext)]
        t_pool = np.concatenate([traj.time_fs[base], ext.time_fs[pool_ext]]).astype(np.float64)
        y_pool = np.concatenate([traj.gap_ev[base], ext.gap_ev[pool_ext]]).astype(np.float64)
        x_pool = np.concatenate([xtb[base], xtb_ext[pool_ext]])
        y = ext.gap_ev[scored].astype(np.float64)
        pred, sd, fit = estimators(t_pool, y_pool, x_pool, ext.time_fs[scored].astype(np.float64), xtb_ext[scored])
        r = score(pred, sd, y)
        if k:  # the same K labels alone, as the sparse table's extension baselines
            own = bl.baseline_predictions(
                ext.time_fs[scored], ext.time_fs[pool_ext], ext.gap_ev[pool_ext].astype(np.float64), corr_time_fs=0.0
            )
            r.update({f"ext_only_{n}": rmse_mev(own[n] - y) for n in ("linear", "nearest", "mean")})
        r["extension_mean_oracle"] = float(y.std() * 1e3)
        rows.append({"k": k, "pool_ext": int(len(pool_ext)), "scored_frames": int(len(scored)), **r,
                     "pearson_pbe_xtb_scored": float(np.corrcoef(y, xtb_ext[scored])[0, 1]), "fit": fit})  # fmt: skip
    return rows


def delta_rows(
    folder: Path, delta_data: Path, delta_ext: Path | None, k: int, ks: tuple[int, ...], slope: float = 1.0
) -> dict:
    """The Delta-ALIGNN ensemble in ``folder`` (runs/, predictions.h5 of ``delta_data``, predictions_ext.h5 of
    ``delta_ext``) scored as PBE gaps: on 0-10 ps outside its pool of every k-th frame, and on the extension
    with each K of ``ks`` (K labels' residuals interpolated in time beside the 0-10 ps pool's)."""
    from qdgap.core.common import schema
    from qdgap.core.common.metrics import coverage, rmse_mev
    from qdgap.core.data.splits import labelled_pool
    from qdgap.core.data.trajectory import read_trajectory
    from qdgap.core.store.results import read_results

    row = score_outside_pool(folder / "predictions.h5", delta_data, folder / "runs", k)
    out = {"slope": slope,
           "spacing": {key: row[key] for key in ("pool", "scored_frames", "ensemble_rmse_mev", "member_rmse_mev",
                                                 "hybrid_rmse_mev", "coverage95", "linear_rmse_mev")}}  # fmt: skip
    if delta_ext is None or not (folder / "predictions_ext.h5").exists():
        return out
    traj, ext = read_trajectory(delta_data), read_trajectory(delta_ext)
    pred0, _ = read_results(folder / "predictions.h5", fmt=schema.PREDICTIONS_FORMAT)
    pred1, _ = read_results(folder / "predictions_ext.h5", fmt=schema.PREDICTIONS_FORMAT)
    base = labelled_pool(traj.gap_ev, stride=BASE_STRIDE)
    mean0 = np.asarray(pred0[schema.GAP_MEAN_EV], np.float64)[np.searchsorted(pred0[schema.FRAME_INDEX], base)]
    frame1 = np.asarray(pred1[schema.FRAME_INDEX])
    mean1 = np.asarray(pred1[schema.GAP_MEAN_EV], np.float64)
    lab = np.flatnonzero(np.isfinite(ext.gap_ev))
    rows = []
    for kk in ks:
        pool_ext = ext_pool(ext.gap_ev, kk)
        scored = lab[~np.isin(lab, pool_ext)]
        at = np.searchsorted(frame1, scored)
        y = ext.gap_ev[scored].astype(np.float64)  # PBE - xTB: the model's error on it is its error on PBE
        t_pool = np.concatenate([traj.time_fs[base], ext.time_fs[pool_ext]])
        resid = np.concatenate(
            [traj.gap_ev[base] - mean0, ext.gap_ev[pool_ext] - mean1[np.searchsorted(frame1, pool_ext)]]
        )
        hybrid = mean1[at] + np.interp(ext.time_fs[scored], t_pool, resid)
        r = {"k": kk, "ensemble_rmse_mev": rmse_mev(mean1[at] - y), "hybrid_rmse_mev": rmse_mev(hybrid - y),
             "bias_mev": float(1e3 * np.mean(mean1[at] - y))}  # fmt: skip
        if schema.GAP_LO_EV in pred1:
            lo, hi = (np.asarray(pred1[key], np.float64)[at] for key in (schema.GAP_LO_EV, schema.GAP_HI_EV))
            r["coverage95"] = coverage(y, lo, hi)
        rows.append(r)
    out["extension"] = rows
    return out


NAMES = {
    "linear": "linear interp.",
    "kriging": "kriging in time",
    "nearest": "nearest label",
    "mean": "pool mean",
    "xtb_linear_map": "xTB, linear map",
    "delta_in_time": "Delta in time (xTB + interp. PBE-xTB)",
    "control_variate": "xTB as control variate",
    "gp_time_xtb": "kriging with xTB (GP)",
    "gp_time_xtb_distances": "GP on time, xTB, distances",
}


def render(
    rows: list[dict],
    ext_rows: list[dict],
    command: str,
    xtb_seconds: float,
    deltas: list[dict] = (),
    phases: list[dict] = (),
    pretrain: dict | None = None,
) -> str:
    """The markdown tables."""
    lines = ["# Multi-fidelity: GFN1-xTB on every frame, PBE on a sparse pool", "", f"`{command}`", ""]
    lines += [f"xTB cost: {xtb_seconds / 3600:.1f} core-hours for the gaps used here (`bench/xtb_gaps.py`).", ""]
    lines += ["## 0-10 ps: every labelled frame outside the pool (RMSE, meV)", ""]
    names = [n for n in NAMES if n in rows[0]]
    head = ["labels every, fs", "pool", "scored", *[NAMES[n] for n in names], "GP 95 % coverage", "r(PBE, xTB)"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        best = min(r[n] for n in names if n != "mean")
        cells = [f"**{r[n]:.1f}**" if r[n] == best else f"{r[n]:.1f}" for n in names]
        lines.append(f"| {r['spacing_fs']} | {r['pool']} | {r['scored_frames']} | " + " | ".join(cells)
                     + f" | {r['gp_time_xtb_coverage_pct']:.1f} % | {r['pearson_pbe_xtb_scored']:.2f} |")  # fmt: skip
    lines += ["", "Control-variate slope b (leave-one-out on the pool): "
              + ", ".join(f"{r['spacing_fs']} fs: {r['fit']['control_variate_b']:.2f}" for r in rows) + "; linear map "
              + ", ".join(f"{r['spacing_fs']} fs: b = {r['fit']['linear_map']['b']:.2f}" for r in rows) + "."]  # fmt: skip
    if pretrain:
        lines += ["", f"## ALIGNN pretrained on xTB gaps, fine-tuned on the PBE pool of a label per {BASE_STRIDE} fs", "",
                  f"{pretrain.get('note', '')}", "", "| ensemble | RMSE, meV, on the other labelled frames | frames |",
                  "|---|---|---|"]  # fmt: skip
        for name, r in pretrain["rows"].items():
            lines.append(f"| {name} | {r['rmse_mev']:.1f} | {r['n_frames']} |")
    if phases:
        lines += ["", "## Every phase of the pool: xTB-corrected against linear interpolation (RMSE, meV)", "",
                  "Each row: the pool of frames offset, offset + k, ... for every labelled offset below k, each scored on its "
                  "own other labelled frames; mean ± sd over the phases.", "",
                  "| labels every, fs | phases | linear interp. | xTB-corrected | difference (min to max) | "
                  "corrected lower in | b |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in phases:
            lines.append(f"| {r['spacing_fs']} | {r['phases']} | {r['linear_mean']:.1f} ± {r['linear_sd']:.1f} | "
                         f"{r['corrected_mean']:.1f} ± {r['corrected_sd']:.1f} | {r['diff_mean']:+.1f} ± {r['diff_sd']:.1f} "
                         f"({r['diff_min']:+.1f} to {r['diff_max']:+.1f}) | {r['corrected_lower']} of {r['phases']} | "
                         f"{r['b_min']:.2f}-{r['b_max']:.2f} |")  # fmt: skip
    if ext_rows:
        lines += [
            "",
            f"## 10-15 ps: the 0-10 ps pool (a label per {BASE_STRIDE} fs) plus K extension labels (RMSE, meV)",
            "",
        ]
        names = [n for n in NAMES if n in ext_rows[0] and n not in ("nearest",)]
        head = [
            "K",
            "scored",
            *[NAMES[n] for n in names],
            "GP 95 % coverage",
            "K labels alone: interp. / nearest / mean",
            "stretch's own mean (oracle)",
        ]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in ext_rows:
            best = min(r[n] for n in names if n != "mean")
            cells = [f"**{r[n]:.1f}**" if r[n] == best else f"{r[n]:.1f}" for n in names]
            alone = (
                "-"
                if not r["k"]
                else f"{r['ext_only_linear']:.1f} / {r['ext_only_nearest']:.1f} / {r['ext_only_mean']:.1f}"
            )
            lines.append(f"| {r['k']} | {r['scored_frames']} | " + " | ".join(cells)
                         + f" | {r['gp_time_xtb_coverage_pct']:.1f} % | {alone} | {r['extension_mean_oracle']:.1f} |")  # fmt: skip
    if deltas:
        lines += ["", f"## ALIGNN on PBE - b xTB: `cpu` members, a label per {BASE_STRIDE} fs", "",
                  "b = 1 is Delta learning; b < 1 (the pool's least-squares slope of PBE on xTB) is xTB as a readout input "
                  "whose weight is fixed. The model predicts PBE - b xTB; b xTB is added back.", "",
                  "| b | members | stretch | scored | b xTB + ALIGNN | + pool residuals interpolated | members, meV | "
                  "calibrated 95 % coverage |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for delta in deltas:
            d = delta["spacing"]
            lines.append(f"| {delta['slope']:g} | {len(d['member_rmse_mev'])} | 0-10 ps | {d['scored_frames']} | "
                         f"{d['ensemble_rmse_mev']:.1f} | {d['hybrid_rmse_mev']:.1f} | "
                         f"{min(d['member_rmse_mev']):.1f}-{max(d['member_rmse_mev']):.1f} | "
                         + ("-" if d["coverage95"] is None else f"{100 * d['coverage95']:.1f} %") + " |")  # fmt: skip
            for r in delta.get("extension", []):
                cov = f"{100 * r['coverage95']:.1f} %" if "coverage95" in r else "-"
                lines.append(f"| {delta['slope']:g} | | 10-15 ps, K = {r['k']} | | {r['ensemble_rmse_mev']:.1f} (mean error "
                             f"{r['bias_mev']:+.1f}) | {r['hybrid_rmse_mev']:.1f} | | {cov} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from qdgap.core.common.files import write_text_atomic
    from qdgap.core.data.trajectory import read_trajectory

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="0-10 ps trajectory with PBE labels (cl_qd.h5)")
    p.add_argument("--xtb", type=Path, required=True, help="its xTB gaps (bench/xtb_gaps.py --out)")
    p.add_argument("--ext", type=Path, default=None, help="10-15 ps trajectory with PBE labels (cl_qd_ext.h5)")
    p.add_argument("--xtb-ext", type=Path, default=None, help="its xTB gaps")
    p.add_argument("--spacings", default=",".join(map(str, SPACINGS_FS)), help="fs, comma-separated")
    p.add_argument("--delta", nargs=4, action="append", default=[], metavar=("SLOPE", "FOLDER", "DATA", "EXT"),
                   help="an ALIGNN arm on PBE - SLOPE x xTB: FOLDER with runs/ and predictions(_ext).h5, its 0-10 ps "
                   "and 10-15 ps trajectories (EXT '-': none); repeatable")  # fmt: skip
    p.add_argument("--pretrain-report", type=Path, default=None, help="finetune_report.csv of the xTB-pretrained arm")
    p.add_argument("--pretrain-note", default="", help="how that arm was trained, in words")
    p.add_argument("--no-distances", action="store_true", help="leave out the GP on time, xTB and distances")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results_multifidelity", help="writes OUT.md, OUT.json")
    args = p.parse_args(argv)
    command = "python bench/bench_multifidelity.py " + " ".join(sys.argv[1:] if argv is None else argv)
    traj = read_trajectory(args.data)
    xtb = _with_xtb(traj, args.xtb)
    distances = None if args.no_distances else pair_distances(traj.positions_ang.astype(np.float64))
    rows = [spacing_row(traj, xtb, int(k), distances) for k in args.spacings.split(",")]
    ext_rows = []
    seconds = sum(float(np.load(f, allow_pickle=False)["seconds"]) for f in Path(args.xtb).glob("shard*.npz"))
    if args.ext and args.xtb_ext:
        ext = read_trajectory(args.ext)
        ext_rows = extension_rows(traj, xtb, ext, _with_xtb(ext, args.xtb_ext), EXT_LABELS)
        seconds += sum(float(np.load(f, allow_pickle=False)["seconds"]) for f in Path(args.xtb_ext).glob("shard*.npz"))
    deltas = [
        delta_rows(Path(folder), Path(data), None if ext == "-" else Path(ext), BASE_STRIDE, EXT_LABELS, float(slope))
        for slope, folder, data, ext in args.delta
    ]
    phases = [phase_row(traj, xtb, int(k)) for k in args.spacings.split(",")]
    pretrain = None
    if args.pretrain_report is not None:
        import csv

        with open(args.pretrain_report, newline="") as fh:
            pretrain = {"note": args.pretrain_note,
                        "rows": {r["model"]: {"rmse_mev": float(r["rmse_mev"]), "n_frames": int(r["n_frames"])}
                                 for r in csv.DictReader(fh)}}  # fmt: skip
    text = render(rows, ext_rows, command, seconds, deltas, phases, pretrain)
    write_text_atomic(args.out.with_suffix(".md"), text)
    report = {"command": command, "xtb_seconds": seconds, "spacing": rows, "extension": ext_rows, "delta": deltas,
              "phases": phases, "pretrain": pretrain}  # fmt: skip
    write_text_atomic(args.out.with_suffix(".json"), json.dumps(report, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
