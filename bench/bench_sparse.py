"""The sparse-label scorecard (issue 27): every recipe tried with one label per 100 fs on the real Cl dot,
scored on the same frames beside interpolation in time, the nearest label and the mean, with the calibrated
95 % interval's coverage; and the 10-15 ps rows measured by ``bench/bench_label_spacing.py``.

    python bench/bench_sparse.py --data work/real/cl_qd.h5 --stride 100 \\
        --arm "cpu preset=work/spacing/s100/runs" --arm "12-nearest graph=work/sparse_graph/knn12/runs" ... \\
        --spacing-json bench/results_label_spacing.json --multitask-json bench/results_multitask.json \\
        --out bench/results_sparse

Each arm is an ensemble folder trained with ``--stride`` (its members' pool is every k-th labelled frame;
the script checks that its members were trained on that pool only). Its every-frame predictions are made
once (``predictions.h5`` beside the folder) and scored by ``bench_label_spacing.score_outside_pool``, the
function the label-spacing curve uses. A benchmark: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from bench_label_spacing import score_outside_pool  # noqa: E402

AIMS = {"0-10 ps, 100 labels": 15.0, "10-15 ps, 25 labels": 20.0, "10-15 ps, no label": 40.0}


def _arm(text: str) -> tuple[str, Path]:
    name, _, path = text.partition("=")
    if not name or not path:
        raise argparse.ArgumentTypeError(f"--arm wants NAME=RUNS, got {text!r}")
    return name, Path(path)


def score_arm(name: str, runs: Path, data: Path, stride: int) -> dict:
    """Predict every frame with the ensemble in ``runs`` (kept in ``runs/../predictions.h5``) and score it."""
    from qdgap.core.data.splits import labelled_pool
    from qdgap.core.data.trajectory import read_trajectory
    from qdgap.core.store import runs as rf
    from qdgap.core.workflow.inference import predict_to_file

    members = rf.load_members(runs)
    pool = set(labelled_pool(read_trajectory(data).gap_ev, stride=stride).tolist())
    for m in members:
        used = set(np.asarray(m.split["train"]).tolist()) | set(np.asarray(m.split.get("val", [])).tolist())
        if not used <= pool:
            raise SystemExit(f"{runs}: member {m.seed} was trained on frames outside every {stride}th label")
    pred = runs.parent / "predictions.h5"
    if not pred.exists():
        predict_to_file(runs, data, pred, frames="all", device="cpu")
    row = {"arm": name, "runs": str(runs), "members": len(members), **score_outside_pool(pred, data, runs, stride)}
    row["seeds"] = [m.seed for m in members]  # member_rmse_mev's order
    row.pop("bins", None)
    return row


def paired_difference(a: dict, b: dict) -> dict:
    """Arm ``b``'s member RMSE minus arm ``a``'s, paired by seed over the seeds both have (meV): mean, sd,
    95 % t interval of the mean, how many seeds are lower, and the Wilcoxon signed-rank p (two-sided)."""
    from scipy import stats

    rmse_a = dict(zip(a["seeds"], a["member_rmse_mev"], strict=True))
    rmse_b = dict(zip(b["seeds"], b["member_rmse_mev"], strict=True))
    seeds = sorted(set(rmse_a) & set(rmse_b))
    d = np.array([rmse_b[s] - rmse_a[s] for s in seeds])
    n = len(d)
    half = stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / np.sqrt(n) if n > 1 else float("nan")
    return {
        "a": a["arm"], "b": b["arm"], "n": n, "mean_mev": float(d.mean()), "sd_mev": float(d.std(ddof=1)) if n > 1 else float("nan"),
        "ci95_mev": [float(d.mean() - half), float(d.mean() + half)], "lower": int((d < 0).sum()),
        "wilcoxon_p": float(stats.wilcoxon(d).pvalue) if n > 5 else float("nan"),
    }  # fmt: skip


MULTITASK_TITLES = {"a": "gap only (qdgap's recipe)", "b": "gap, HOMO, LUMO heads; gap from its head",
                    "c": "gap, HOMO, LUMO heads; gap = LUMO - HOMO"}  # fmt: skip


def _multitask_arms(multitask: dict | None):
    """(seed set, arm key, arm record) for every ensemble in bench_multitask's JSON, replicates included."""
    if not multitask:
        return
    sets = {"seeds 0-3": multitask.get("arms", {})}
    sets.update({k: v.get("arms", {}) for k, v in multitask.get("replicates", {}).items()})
    for label, arms in sets.items():
        for key, arm in arms.items():
            yield label, key, arm


def multitask_rows(multitask: dict | None) -> list[dict]:
    """The multi-task ensembles of bench_multitask's JSON as scorecard candidates (name, members, RMSE)."""
    return [{"arm": f"multi-task band edges ({key}), {label}", "members": len(arm.get("seeds", [])),
             "ensemble_rmse_mev": arm["gap"]["ensemble_rmse_mev"]}
            for label, key, arm in _multitask_arms(multitask) if key != "a"]  # fmt: skip


XTB_ESTIMATORS = {  # bench/results_multifidelity.json's estimators that use the xTB gap, and their names here
    "xtb_linear_map": "xTB, linear map",
    "delta_in_time": "xTB + interpolated PBE - xTB",
    "control_variate": "xTB-corrected interpolation",
    "gp_time_xtb": "GP on time and xTB (`qdgap interpolate`)",
    "gp_time_xtb_distances": "GP on time, xTB and distances",
}


def multifidelity_aims(mf: dict | None) -> list[str]:
    """The aims' rows reached with a GFN1-xTB gap of every frame (``bench/bench_multifidelity.py``), meV."""
    if not mf:
        return []

    def best(row: dict, extra: dict | None = None) -> tuple[float, str]:
        cands = {XTB_ESTIMATORS[k]: row[k] for k in XTB_ESTIMATORS if k in row}
        cands.update(extra or {})
        name = min(cands, key=cands.get)
        return cands[name], name

    def arm(d: dict) -> str:
        return "ALIGNN on PBE - " + ("" if d["slope"] == 1 else f"{d['slope']:g} ") + "xTB"

    def delta_extra(k: int) -> dict:
        """The Delta arms on the extension with k of its labels: the ensemble, and with pool residuals interpolated."""
        out = {}
        for d in mf.get("delta") or []:
            for r in d.get("extension", []):
                if r["k"] == k:
                    out[arm(d)] = r["ensemble_rmse_mev"]
                    if k:  # with no extension label the residuals are the 0-10 ps pool's, carried 5 ps
                        out[arm(d) + " + interpolated residuals"] = r["hybrid_rmse_mev"]
        return out

    lines = []
    r100 = next((r for r in mf.get("spacing", []) if r["spacing_fs"] == 100), None)
    if r100:
        extra = {}
        for d in mf.get("delta") or []:
            extra[arm(d)] = d["spacing"]["ensemble_rmse_mev"]
            extra[arm(d) + " + interpolated residuals"] = d["spacing"]["hybrid_rmse_mev"]
        v, name = best(r100, extra)
        lines.append(f"| 0-10 ps, 100 labels, xTB on every frame | {AIMS['0-10 ps, 100 labels']:.0f} | {v:.1f} | {name} "
                     f"| {r100['linear']:.1f} | {r100['nearest']:.1f} | {r100['mean']:.1f} |")  # fmt: skip
        lines.append(f"| its 95 % interval covers (GP on time and xTB) | 90-98 % | {r100['gp_time_xtb_coverage_pct']:.1f} % "
                     "| | | | |")  # fmt: skip
    ext = {r["k"]: r for r in mf.get("extension", [])}
    if 25 in ext:
        r = ext[25]
        v, name = best(r, delta_extra(25))
        lines.append(f"| 10-15 ps, 25 labels, xTB on every frame | {AIMS['10-15 ps, 25 labels']:.0f} | {v:.1f} | {name} "
                     f"| {r['ext_only_linear']:.1f} | {r['ext_only_nearest']:.1f} | {r['ext_only_mean']:.1f} |")  # fmt: skip
    if 0 in ext:
        r = ext[0]
        v, name = best(r, delta_extra(0))
        lines.append(f"| 10-15 ps, no label, xTB on every frame | {AIMS['10-15 ps, no label']:.0f} | {v:.1f} | {name} "
                     f"| | | 0-10 ps pool mean {r['mean']:.1f} |")  # fmt: skip
    return lines


def aims_table(rows: list[dict], ext: dict | None, extra: list[dict] = (), mf: dict | None = None) -> list[str]:
    """Issue 27's aims beside the best measured row and the baselines of the same frames (meV); with ``mf``
    (``bench/results_multifidelity.json``) also what a GFN1-xTB gap of every frame reaches."""
    lines = ["## The aims", "", "| aim | target | best measured | recipe | interpolation | nearest | mean |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    if rows:
        best = min([*rows, *extra], key=lambda r: r["ensemble_rmse_mev"])
        best = {**rows[0], **best}  # the baselines are the same frames' for every row
        lines.append(
            f"| 0-10 ps, 100 labels | {AIMS['0-10 ps, 100 labels']:.0f} | {best['ensemble_rmse_mev']:.1f} | "
            f"{best['arm']} ({best['members']} member{'s' if best['members'] != 1 else ''}) | {best['linear_rmse_mev']:.1f} | "
            f"{best['nearest_rmse_mev']:.1f} | {best['mean_rmse_mev']:.1f} |"
        )
        covered = [r for r in rows if r.get("coverage95") is not None]
        if covered:
            c = max(covered, key=lambda r: r["coverage95"])
            lines.append(
                f"| its calibrated 95 % interval covers | 90-98 % | {100 * c['coverage95']:.1f} % | {c['arm']} | | | |"
            )
    if ext:
        k25 = next((r for r in ext["rows"] if r["k"] == 25), None)
        if k25:
            lines.append(
                f"| 10-15 ps, 25 labels | {AIMS['10-15 ps, 25 labels']:.0f} | {k25['finetuned']:.1f} | fine-tuned "
                f"| {k25['interpolation']:.1f} | {k25['nearest']:.1f} | {k25['labels_mean']:.1f} |"
            )
        lines.append(
            f"| 10-15 ps, no label | {AIMS['10-15 ps, no label']:.0f} | {ext['pretrained_rmse_mev']:.1f} | "
            f"pretrained | | persistence {ext['persistence_rmse_mev']:.1f} | 0-10 ps mean "
            f"{ext['train_mean_rmse_mev']:.1f} |"
        )
    return lines + multifidelity_aims(mf) + [""]


def render(
    rows: list[dict],
    ext: dict | None,
    multitask: dict | None,
    command: str,
    paired: list[dict] = (),
    mf: dict | None = None,
) -> str:
    """The markdown scorecard."""

    def f(x) -> str:
        return "-" if x is None or not np.isfinite(x) else f"{x:.1f}"

    lines = ["# Sparse labels: what each recipe buys where interpolation fails", "", f"`{command}`", ""]
    lines += aims_table(rows, ext, multitask_rows(multitask), mf)
    lines += ["## 0-10 ps, one label per 100 fs (100 labels, 1 % of the frames)", ""]
    if rows:
        r0 = rows[0]
        lines += [
            f"Scored on the {r0['scored_frames']} labelled frames outside the pool of {r0['pool']}; "
            f"aim {AIMS['0-10 ps, 100 labels']:.0f} meV. Baselines from the same pool, the same frames for every "
            f"row: linear interpolation {f(r0['linear_rmse_mev'])}, PCHIP {f(r0['pchip_rmse_mev'])}, kriging in "
            f"time {f(r0.get('kriging_rmse_mev'))}, nearest "
            f"label {f(r0['nearest_rmse_mev'])}, pool mean {f(r0['mean_rmse_mev'])} meV.",
            "",
        ]
    head = ["recipe", "members", "ensemble RMSE, meV", "members, meV", "skill vs linear interp.", "95 % coverage",
            "ensemble + interpolated residuals"]  # fmt: skip
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        skill = 1.0 - r["ensemble_rmse_mev"] / r["linear_rmse_mev"]
        cov = "-" if r.get("coverage95") is None else f"{100 * r['coverage95']:.1f} %"
        lines.append(
            f"| {r['arm']} | {r['members']} | **{f(r['ensemble_rmse_mev'])}** | "
            f"{min(r['member_rmse_mev']):.1f}-{max(r['member_rmse_mev']):.1f} | {skill:+.2f} | {cov} | "
            f"{f(r['hybrid_rmse_mev'])} |"
        )
    for d in paired:
        lines.append(
            f"\n{d['b']} minus {d['a']}, member RMSE paired by seed over {d['n']} seeds: {d['mean_mev']:+.1f} meV "
            f"(95 % interval {d['ci95_mev'][0]:+.1f} to {d['ci95_mev'][1]:+.1f}; sd {d['sd_mev']:.1f}; lower in "
            f"{d['lower']} of {d['n']}; "
            + (
                f"Wilcoxon p {d['wilcoxon_p']:.2f})."
                if np.isfinite(d["wilcoxon_p"])
                else "too few seeds for Wilcoxon)."
            )
        )
    if multitask:
        lines += ["", "Multi-task band edges (`bench/bench_multitask.py`, its own loop, the same pool and member "
                  "splits; `bench/results_multitask.md`):", ""]  # fmt: skip
        for label, key, arm in _multitask_arms(multitask):
            rmse = arm.get("gap", {}).get("ensemble_rmse_mev")
            lines.append(f"- {MULTITASK_TITLES.get(key, key)}, {label}: ensemble {f(rmse)} meV")
        for key, d in multitask.get("pooled", {}).items():
            lines.append(
                f"- {MULTITASK_TITLES.get(key, key)} minus gap only, paired by seed over {d['n']} seeds: "
                f"{d['mean_mev']:+.1f} meV (sd {d['sd_mev']:.1f}; lower in {d['negative']} of {d['n']})"
            )
    if ext:
        lines += ["", "## 10-15 ps (from `bench/results_label_spacing.json`)", ""]
        lines += [
            f"No extension label: pretrained ensemble {f(ext['pretrained_rmse_mev'])} meV (aim "
            f"{AIMS['10-15 ps, no label']:.0f}); 0-10 ps mean {f(ext['train_mean_rmse_mev'])}, persistence "
            f"{f(ext['persistence_rmse_mev'])}, the stretch's own mean (an oracle) {f(ext['oracle_mean_rmse_mev'])}.",
            "",
            "| K labels | fine-tuned | scratch | pretrained + offset | pretrained + affine | interpolation | nearest "
            "| labels mean |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in ext["rows"]:
            lines.append(
                f"| {r['k']} | **{f(r.get('finetuned'))}** | {f(r.get('scratch'))} | {f(r.get('pretrained_offset'))} | "
                f"{f(r.get('pretrained_affine'))} | {f(r.get('interpolation'))} | {f(r.get('nearest'))} | "
                f"{f(r.get('labels_mean'))} |"
            )
        lines += ["", f"Aim at K = 25: {AIMS['10-15 ps, 25 labels']:.0f} meV."]
    return "\n".join(lines) + "\n"


def _extension(path: Path | None) -> dict | None:
    """The 10-15 ps rows of results_label_spacing.json, in the scorecard's terms."""
    if path is None or not path.exists():
        return None
    ext = json.loads(path.read_text()).get("extension") or {}
    if "0" not in ext:
        return None
    none = ext["0"]
    return {
        "pretrained_rmse_mev": none["pretrained"],
        "train_mean_rmse_mev": none["training_mean"],
        "persistence_rmse_mev": none["persistence"],
        "oracle_mean_rmse_mev": none["extension_mean_oracle"],
        "rows": [ext[k] for k in sorted(ext, key=int) if k != "0"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="0-10 ps trajectory with labels (cl_qd.h5)")
    p.add_argument("--stride", type=int, default=100, help="the pool: every k-th labelled frame")
    p.add_argument("--arm", type=_arm, action="append", default=[], help="NAME=RUNS, an ensemble trained on the pool")
    p.add_argument("--paired", action="append", default=[], metavar="A=B",
                   help="also B's member RMSE minus A's, paired by seed (arm names)")  # fmt: skip
    p.add_argument("--spacing-json", type=Path, default=REPO / "bench" / "results_label_spacing.json")
    p.add_argument("--multitask-json", type=Path, default=REPO / "bench" / "results_multitask.json")
    p.add_argument("--multifidelity-json", type=Path, default=REPO / "bench" / "results_multifidelity.json")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results_sparse", help="writes OUT.md and OUT.json")
    args = p.parse_args(argv)
    command = "python bench/bench_sparse.py " + " ".join(sys.argv[1:] if argv is None else argv)
    rows = [score_arm(name, runs, args.data, args.stride) for name, runs in args.arm]
    by_name = {r["arm"]: r for r in rows}
    pairs = [tuple(text.split("=", 1)) for text in args.paired]
    missing = [n for pair in pairs for n in pair if n not in by_name]
    if missing or any(len(pair) != 2 for pair in pairs):
        raise SystemExit(f"--paired wants A=B, two --arm names; unknown: {', '.join(missing)}")
    paired = [paired_difference(by_name[a], by_name[b]) for a, b in pairs]
    ext = _extension(args.spacing_json)
    multitask = json.loads(args.multitask_json.read_text()) if args.multitask_json.exists() else None
    from qdgap.core.common.files import write_text_atomic

    mf = json.loads(args.multifidelity_json.read_text()) if args.multifidelity_json.exists() else None
    text = render(rows, ext, multitask, command, paired, mf)
    write_text_atomic(args.out.with_suffix(".md"), text)
    report = {
        "command": command,
        "stride": args.stride,
        "arms": rows,
        "paired": paired,
        "extension": ext,
        "aims_mev": AIMS,
    }
    write_text_atomic(args.out.with_suffix(".json"), json.dumps(report, indent=1, default=float) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
