"""``qdgap interpolate`` on the study's two dots: the Gaussian process in time (and xTB) against linear
interpolation of the same labels, at label spacings from 10 to 200 fs, and on the later 10-15 ps stretch.

* Cl dot, with GFN1-xTB (``--cl``, ``--cl-ext``: trajectory files with ``xtb_gap_ev`` on the labelled frames,
  from ``bench/xtb_gaps.py --with-xtb``): the command itself (``core/workflow/interpolate.interpolate_to_file``, ``--frames
  held-out``), its held-out score and the baselines it prints;
* both dots, time alone, from the label CSVs (``--labels NAME=CSV[,EXT_CSV]``): ``core/analysis/gp.py`` on the
  gap series, as ``qdgap interpolate --xtb no`` runs it. The OH dot (Cd28Se17(OH)22) was never used to choose
  anything in qdgap: it tests whether the estimator and its interval hold on a dot they were not tuned on.

Every row scores all labels outside the pool of the same stretch. Seconds on one core; numpy and scipy only::

    python bench/bench_interpolate.py --cl work/mf/cl_qd_xtb.h5 --cl-ext work/mf/cl_qd_ext_xtb.h5 \\
        --labels Cl=../shared/seed-data/cl_qd/Cl_QD_elec_1-10k.csv,../shared/seed-data/cl_qd/Cl_QD_elec_10k-15k_step_10.csv \\
        --labels OH=../shared/seed-data/oh_qd/OH_QD_elec_1-10k.csv,../shared/seed-data/oh_qd/OH_QD_elec_10k-15k_step_6.csv \\
        --out bench/results_interpolate
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

SPACINGS_FS = (10, 20, 50, 100, 200)
EXT_KS = (25, 50, 100)
EARLIER_SPACING_FS = 100  # the earlier stretch's labels that ``--earlier`` adds: one per 100 fs, as the sparse study
LEVEL = 0.95


def _rmse(p: np.ndarray, y: np.ndarray) -> float:
    return float(1e3 * np.sqrt(np.mean((p - y) ** 2)))


def series_row(t_pool, y_pool, t_q, y_q) -> dict:
    """The time-only process and linear interpolation from one pool, on the other labels."""
    from qdgap.core.analysis import gp

    fit = gp.fit_gp(t_pool, y_pool)
    mean, sd = gp.gp_predict(fit, t_q, t_pool, y_pool)
    linear = np.interp(t_q, t_pool, y_pool)
    return {
        "pool": int(len(t_pool)),
        "scored": int(len(t_q)),
        "gp_time": _rmse(mean, y_q),
        "gp_time_coverage_pct": float(100 * np.mean(np.abs(mean - y_q) <= 1.959964 * sd)),
        "linear": _rmse(linear, y_q),
        "mean": _rmse(np.full_like(y_q, y_pool.mean()), y_q),
        "length_fs": fit.length_fs,
    }


def csv_rows(name: str, main_csv: Path, ext_csv: Path | None) -> list[dict]:
    """Time-only rows of one dot from its label CSVs (frame st<N> at N fs)."""
    from qdgap.core.data.importers import read_labels_csv

    ids, gaps = read_labels_csv(main_csv)
    t, y = np.asarray(ids, np.float64), gaps
    rows = []
    for s in SPACINGS_FS:
        in_pool = (t - t[0]) % s == 0
        rows.append(
            {
                "dot": name,
                "stretch": "0-10 ps",
                "spacing_fs": s,
                **series_row(t[in_pool], y[in_pool], t[~in_pool], y[~in_pool]),
            }
        )
    if ext_csv is None:
        return rows
    ids_e, gaps_e = read_labels_csv(ext_csv)
    te, ye = np.asarray(ids_e, np.float64), gaps_e
    earlier = (t - t[0]) % EARLIER_SPACING_FS == 0
    for k in EXT_KS:
        pick = np.zeros(len(te), bool)
        pick[np.round(np.linspace(0, len(te) - 1, k)).astype(int)] = True
        alone = series_row(te[pick], ye[pick], te[~pick], ye[~pick])
        both = series_row(np.r_[t[earlier], te[pick]], np.r_[y[earlier], ye[pick]], te[~pick], ye[~pick])
        rows.append({"dot": name, "stretch": "10-15 ps", "k": k, **alone,
                     "earlier_gp_time": both["gp_time"], "earlier_gp_time_coverage_pct": both["gp_time_coverage_pct"]})  # fmt: skip
    return rows


def command_rows(cl: Path, cl_ext: Path | None) -> list[dict]:
    """The command itself on the Cl trajectories with xTB gaps, as the how-to's table."""
    from qdgap.core.workflow.interpolate import interpolate_to_file

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "g.h5"
        runs = [("0-10 ps", s, s, cl, None) for s in SPACINGS_FS]  # frames are 1 fs apart: stride = spacing
        if cl_ext is not None:
            for k in EXT_KS:  # the extension's 500 labels are 10 fs apart: K of them, every 5000/K frames
                runs += [("10-15 ps", k, 5000 // k, cl_ext, None), ("10-15 ps", k, 5000 // k, cl_ext, cl)]
        for stretch, s, stride, data, earlier in runs:
            earlier_stride = EARLIER_SPACING_FS
            o, _ = interpolate_to_file(data, out, stride=stride, frames="held-out", earlier=earlier,
                                    earlier_stride=earlier_stride, level=LEVEL, force=True)  # fmt: skip
            scores = {sc.name: sc.rmse_mev for sc in o.heldout.scores}
            rows.append({
                "stretch": stretch, ("spacing_fs" if stretch == "0-10 ps" else "k"): s, "earlier": earlier is not None,
                "pool": o.pool, "earlier_labels": o.earlier_labels, "scored": o.heldout.scores[0].frames,
                "estimator": o.estimator, "gp": scores["model"], "coverage_pct": 100 * o.heldout_coverage,
                "linear": scores["linear"], "kriging": scores["kriging"], "xtb_corrected": scores.get("xtb_corrected"),
                "loo_rmse_mev": o.loo.rmse_mev, "loo_linear_rmse_mev": o.loo.linear_rmse_mev, "fit": o.fit.as_dict(),
            })  # fmt: skip
    return rows


def render(record: dict) -> str:
    lines = ["# `qdgap interpolate`: a Gaussian process on time (and xTB) against interpolation of the same labels", "",
             f"`{record['command']}`", "",
             "The Cl trajectories are the study's with the GFN1-xTB gaps of their labelled frames as `xtb_gap_ev` "
             "(`python bench/xtb_gaps.py work/real/cl_qd.h5 --out work/mf/xtb_cl_qd --with-xtb work/mf/cl_qd_xtb.h5`, "
             "and the same for 10-15 ps).", ""]  # fmt: skip
    if record["command_rows"]:
        lines += ["## Cl dot, with GFN1-xTB: the command (`--frames held-out`; RMSE, meV, on every labelled frame outside the pool)", "",
                  "| stretch | labels | pool | scored | `qdgap interpolate` | 95 % interval covers | linear interp. | kriging in time | xTB-corrected interp. |",
                  "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in record["command_rows"]:
            what = (
                f"every {r['spacing_fs']} fs"
                if "spacing_fs" in r
                else f"{r['k']}" + (" + earlier" if r["earlier"] else " alone")
            )
            pool = f"{r['pool']} + {r['earlier_labels']}" if r["earlier"] else str(r["pool"])
            best = min(r["gp"], r["linear"], r["kriging"], r["xtb_corrected"] or np.inf)
            cells = [
                f"**{v:.1f}**" if v == best else f"{v:.1f}"
                for v in (r["gp"], r["linear"], r["kriging"], r["xtb_corrected"])
            ]
            lines.append(f"| {r['stretch']} | {what} | {pool} | {r['scored']} | {cells[0]} | {r['coverage_pct']:.1f} % | "
                         f"{cells[1]} | {cells[2]} | {cells[3]} |")  # fmt: skip
        lines.append("")
    lines += ["## Time alone, both dots (the label CSVs; RMSE, meV)", "",
              "The OH dot was never used to choose anything in qdgap. 0-10 ps: a pool of one label per spacing, scored on the other labels; "
              f"10-15 ps: K labels evenly spread, scored on the other labels of the stretch, alone and with the 0-10 ps labels every {EARLIER_SPACING_FS} fs (`--earlier`).", "",
              "| dot | stretch | labels | pool | scored | GP in time | 95 % interval covers | with earlier stretch (covers) | linear interp. | labels' mean | fitted length, fs |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in record["series_rows"]:
        what = f"every {r['spacing_fs']} fs" if "spacing_fs" in r else f"K = {r['k']}"
        earlier = (
            f"{r['earlier_gp_time']:.1f} ({r['earlier_gp_time_coverage_pct']:.1f} %)" if "earlier_gp_time" in r else "-"
        )
        lines.append(f"| {r['dot']} | {r['stretch']} | {what} | {r['pool']} | {r['scored']} | {r['gp_time']:.1f} | "
                     f"{r['gp_time_coverage_pct']:.1f} % | {earlier} | {r['linear']:.1f} | {r['mean']:.1f} | {r['length_fs']:.0f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cl", type=Path, help="Cl trajectory (0-10 ps) with xtb_gap_ev on its labelled frames")
    ap.add_argument("--cl-ext", type=Path, help="Cl 10-15 ps trajectory with xtb_gap_ev")
    ap.add_argument("--labels", action="append", default=[], help="NAME=MAIN_CSV[,EXT_CSV] (repeatable)")
    ap.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    args = ap.parse_args(argv)
    series = []
    for spec in args.labels:
        name, files = spec.split("=", 1)
        main_csv, *ext = files.split(",")
        series += csv_rows(name, Path(main_csv), Path(ext[0]) if ext else None)
    record = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]),
        "command_rows": command_rows(args.cl, args.cl_ext) if args.cl else [],
        "series_rows": series,
    }
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(render(record))
    print(render(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
