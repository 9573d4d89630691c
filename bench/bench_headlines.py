"""The demo's headline numbers as ranges over independent ensembles (the README's, and ``make demo``'s check).

    for b in 0 1000 2000; do qdgap pipeline --workdir work/redraw/base$b --seed-base $b --members 20; done
    python bench/bench_headlines.py work/redraw/base0 work/redraw/base1000 work/redraw/base2000

Reads each finished demo study (``qdgap pipeline`` on the embedded demo data, 20 members, seed base as
its folder's run seeds say), writes ``data/demo_headlines.json`` (the ranges ``qdgap pipeline`` checks a
demo run against; ``core/pipeline/headlines.py``) and ``bench/results_headlines.md`` (the table for the
README). It measures nothing itself; the pipelines did.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("workdirs", nargs="+", type=Path)
    p.add_argument("--data", type=Path, default=REPO / "data" / "cd28se17cl22_demo.h5")
    p.add_argument("--json", type=Path, default=REPO / "data" / "demo_headlines.json")
    p.add_argument("--md", type=Path, default=REPO / "bench" / "results_headlines.md")
    args = p.parse_args()
    from qdgap.core.common.buildinfo import build_provenance
    from qdgap.core.data.trajectory import read_trajectory
    from qdgap.core.pipeline.headlines import TITLES, headline_values, intervals_from_runs, ranges_from_runs
    from qdgap.core.store import runs as rf

    runs = []
    for wd in args.workdirs:
        seeds = sorted(rf.seed_of(d) for d in rf.member_dirs(wd / "runs"))
        runs.append({"workdir": str(wd), "seed_base": seeds[0], "members": len(seeds), **headline_values(wd)})
    ranges = ranges_from_runs(runs)
    intervals = intervals_from_runs(runs)
    record = {
        "format": "qdgap.demo_headlines",
        "data_sha256": read_trajectory(args.data).sha256,
        "preset": "demo",
        "members": runs[0]["members"],
        "ranges": ranges,
        "intervals": intervals,
        "runs": [{k: v for k, v in r.items() if k != "workdir"} for r in runs],
        "measured_with": build_provenance(),
    }
    args.json.write_text(json.dumps(record, indent=1) + "\n")
    names = list(ranges)
    lines = [
        "# make demo's headline numbers over independent ensembles",
        "",
        f"{len(runs)} demo studies (`qdgap pipeline`, demo preset, {runs[0]['members']} members each), seed bases "
        + ", ".join(str(r["seed_base"]) for r in runs)
        + "; RMSE in meV. The last row is the 95 % prediction interval for one more run "
        "(mean ± t · s · sqrt(1 + 1/n)); `qdgap pipeline` on the demo data checks its numbers against it.",
        "",
        "| seed base | " + " | ".join(TITLES.get(n, n) for n in names) + " | FNA top 5 |",
        "|---|" + "---|" * (len(names) + 1),
    ]
    for r in runs:
        lines.append(
            f"| {r['seed_base']} | "
            + " | ".join(f"{r[n]:.1f}" for n in names)
            + f" | {', '.join(r.get('fna_top', []))} |"
        )
    lines.append("| range | " + " | ".join(f"{lo:.1f}-{hi:.1f}" for lo, hi in ranges.values()) + " | |")
    lines.append(
        "| **95 % for one more run** | "
        + " | ".join(f"**{max(lo, 0.0):.1f}-{hi:.1f}**" for lo, hi in intervals.values())
        + " | |"
    )
    args.md.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
