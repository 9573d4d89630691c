"""Does one ensemble's FNA ranking hold up when the ensemble is trained again? (issue 28, item 2)

Given the ``fna.h5`` of two or more independently trained ensembles on the same
frames (e.g. seed bases 0, 1000 and 2000), this compares what each ensemble's
bootstrap *states* about its own ranking with how well the ensembles actually
agree:

* stated: the mean ``rank_stability`` of its top k (the fraction of simulated
  re-trained ensembles, ``ranking.simulate_redraws``, that keep each top-k atom in
  the top k), and its rank intervals; beside it what the bootstrap stated before
  (the fraction of bootstrap replicates that keep the atom);
* predicted for two independent re-draws: Spearman's rho and top-k overlap between
  pairs of simulated re-drawn ensembles, and between random pairs of bootstrap
  replicates;
* split-half reliability: rho between the rankings of two random halves of its
  members, and the Spearman-Brown prediction for two whole ensembles;
* observed: rho, top-k overlap and rank-interval coverage between every pair of
  ensembles;
* pseudo-ensembles: three ensembles give three pairs, too few to tell a statistic
  off by 10 points from one that is right (the top-10 overlap of one pair has a
  spread of about 15 points). Members of ensembles on the same frames are
  exchangeable draws of training noise, so all members are pooled and dealt again,
  ``--partitions`` times, into disjoint ensembles of each size; observed is the
  mean over all their pairs, stated and predicted the mean over all of them.

Where the stated top-10 frequency exceeds the observed top-10 overlap by more
than 10 points, one ensemble's statistics are more confident than re-draws justify.

    python bench/bench_fna_redraw.py work/e0/fna.h5 work/e1000/fna.h5 work/e2000/fna.h5 \\
        --out bench/results_fna_redraw_demo   # writes .md and .json

The statistics are recomputed from each file's masked predictions (the score the
file was ranked by, its seeds), so any ``--top`` sizes can be asked for. A
benchmark, not a test: it asserts nothing; tests/unit/test_ranking.py checks its arithmetic.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python bench/bench_fna_redraw.py` from anywhere
    sys.path.insert(0, str(REPO))

from qdgap.core.analysis.importance import ImportanceStats, importance_stats  # noqa: E402
from qdgap.core.analysis.ranking import (  # noqa: E402
    rank_coverage,
    redraw_agreement,
    replicate_agreement,
    simulate_redraws,
    split_half_reliability,
    stated_top_k,
    top_k_overlap,
)
from qdgap.core.common import schema  # noqa: E402
from qdgap.core.common.metrics import spearman_rho  # noqa: E402

OVERCONFIDENT_POINTS = 10.0  # stated minus observed top-10 frequency beyond which the statistic must change


@dataclass(frozen=True)
class Ensemble:
    """One ensemble's FNA ranking and what its bootstrap says about it."""

    name: str
    labels: list[str]
    stats: ImportanceStats


def load_ensemble(path: Path, *, n_boot: int, seed: int) -> Ensemble:
    """Recompute the importance statistics of one fna.h5, by the score it was ranked by."""
    from qdgap.core.store.results import read_results

    data, attrs = read_results(path, fmt=schema.FNA_FORMAT)
    score = str(attrs.get(schema.ATTR_RANKED_BY, "rmse"))
    labels = [str(a) for a in data[schema.ATOM_LABEL]]
    baseline = np.atleast_2d(data[schema.BASELINE_EV])
    stats = importance_stats(
        np.asarray(data[schema.MASKED_EV]),
        baseline,
        np.asarray(data[schema.GAP_TRUE_EV]) if score == "rmse" else None,
        score=score,
        seeds=np.asarray(data.get(schema.SEEDS, np.arange(len(baseline)))),
        n_boot=n_boot,
        seed=seed,
    )
    return Ensemble(str(path), labels, stats)


def per_ensemble(e: Ensemble, ks: tuple[int, ...], *, seed: int) -> dict:
    """What one ensemble states and predicts about its own ranking."""
    s = e.stats
    agree = replicate_agreement(s.replicates_mev, ks=ks, seed=seed)
    # Re-training changes the members but not the FNA frames: replicates that resample the members only.
    rng = np.random.default_rng(seed)
    u = len(s.unit_mev)
    weights = rng.multinomial(u, np.full(u, 1.0 / u), size=s.n_boot) / u  # (B, U)
    members_only = replicate_agreement(weights @ s.unit_mev, ks=ks, seed=seed)
    halves = split_half_reliability(s.unit_mev, seed=seed) if s.n_members >= 2 else None
    sims = simulate_redraws(s.unit_mev, draws=s.n_boot, seed=seed)
    redrawn = redraw_agreement(sims, ks=ks)
    order = np.argsort(-s.mean_mev, kind="stable")
    return {
        "file": e.name,
        "score": s.score,
        "members": s.n_members,
        "frames": s.n_frames,
        "stated_top": {k: stated_top_k(s.mean_mev, sims, k) for k in ks},
        "bootstrap_stated_top": {k: stated_top_k(s.mean_mev, s.replicates_mev, k) for k in ks},
        "redraw_rho": redrawn.rho,
        "redraw_top": redrawn.overlap,
        "predicted_rho": agree.rho,
        "predicted_top": agree.overlap,
        "predicted_rho_members": members_only.rho,
        "predicted_top_members": members_only.overlap,
        "split_half_rho": halves.rho if halves else float("nan"),
        "split_half_full_rho": halves.full_rho if halves else float("nan"),
        "stand_out": [e.labels[i] for i in order if s.stands_out[i]],
        "top": [e.labels[i] for i in order[: max(ks)]],
    }


def between(a: Ensemble, b: Ensemble, ks: tuple[int, ...]) -> dict:
    """How two ensembles' rankings actually agree."""
    if a.labels != b.labels:
        raise SystemExit(f"{a.name} and {b.name} rank different atoms")
    x, y = a.stats.mean_mev, b.stats.mean_mev
    return {
        "pair": [a.name, b.name],
        "rho": spearman_rho(x, y),
        "top": {k: top_k_overlap(x, y, k) for k in ks},
        "coverage_ab": rank_coverage(a.stats.rank_ci, y),  # b's ranks inside a's intervals
        "coverage_ba": rank_coverage(b.stats.rank_ci, x),
    }


def pseudo_ensembles(
    loaded: list[Ensemble], ks: tuple[int, ...], *, sizes: tuple[int, ...], partitions: int, draws: int, seed: int
) -> list[dict]:
    """All members pooled and dealt again into disjoint ensembles of each size, ``partitions`` times: the mean
    observed top-k overlap over every pair of them beside the mean of what each of them stated and predicted.
    Frames are the files' (the same in every file), so the bootstrap here resamples members only."""
    first = loaded[0]
    for e in loaded[1:]:
        if e.labels != first.labels or e.stats.n_frames != first.stats.n_frames or e.stats.score != first.stats.score:
            raise SystemExit(f"{e.name} and {first.name} are not scored on the same atoms and frames")
    pool = np.concatenate([e.stats.unit_mev for e in loaded])  # (M, N) meV
    rng = np.random.default_rng(seed)
    rows = []
    for size in sizes:
        groups = len(pool) // size
        if size < 2 or groups < 2:
            continue
        observed = {k: [] for k in ks}
        stated = {k: [] for k in ks}
        predicted = {k: [] for k in ks}
        boot = {k: [] for k in ks}
        boot_pairs = {k: [] for k in ks}
        for _ in range(partitions):
            perm = rng.permutation(len(pool))
            members = [pool[perm[g * size : (g + 1) * size]] for g in range(groups)]
            means = [x.mean(axis=0) for x in members]
            for k in ks:
                observed[k] += [
                    top_k_overlap(means[a], means[b], k) for a, b in itertools.combinations(range(groups), 2)
                ]
            for x, mu in zip(members, means, strict=True):
                sims = simulate_redraws(x, draws=draws, seed=int(rng.integers(2**31)))
                weights = rng.multinomial(size, np.full(size, 1.0 / size), size=draws) / size
                reps = weights @ x
                pairs = redraw_agreement(sims, ks=ks).overlap
                rep_pairs = replicate_agreement(reps, ks=ks, pairs=draws, seed=int(rng.integers(2**31))).overlap
                for k in ks:
                    stated[k].append(stated_top_k(mu, sims, k))
                    predicted[k].append(pairs[k])
                    boot[k].append(stated_top_k(mu, reps, k))
                    boot_pairs[k].append(rep_pairs[k])
        for k in ks:
            obs = np.asarray(observed[k])
            rows.append(
                {
                    "size": size,
                    "k": k,
                    "pairs": len(obs),
                    "observed": float(obs.mean()),
                    "observed_pair_sd": float(obs.std(ddof=1)) if len(obs) > 1 else float("nan"),
                    "stated": float(np.mean(stated[k])),
                    "predicted": float(np.mean(predicted[k])),
                    "bootstrap_stated": float(np.mean(boot[k])),
                    "bootstrap_pairs": float(np.mean(boot_pairs[k])),
                }
            )
    return rows


def summarise(ensembles: list[dict], pairs: list[dict], ks: tuple[int, ...]) -> dict:
    """Means over ensembles (stated, predicted) and over pairs (observed); the overconfidence in points."""

    def mean(values) -> float:
        v = np.asarray(list(values), np.float64)
        return float(np.nanmean(v)) if v.size and np.isfinite(v).any() else float("nan")

    out = {
        "stated_top": {k: mean(e["stated_top"][k] for e in ensembles) for k in ks},
        "bootstrap_stated_top": {k: mean(e["bootstrap_stated_top"][k] for e in ensembles) for k in ks},
        "redraw_top": {k: mean(e["redraw_top"][k] for e in ensembles) for k in ks},
        "redraw_rho": mean(e["redraw_rho"] for e in ensembles),
        "predicted_top": {k: mean(e["predicted_top"][k] for e in ensembles) for k in ks},
        "predicted_rho": mean(e["predicted_rho"] for e in ensembles),
        "predicted_top_members": {k: mean(e["predicted_top_members"][k] for e in ensembles) for k in ks},
        "predicted_rho_members": mean(e["predicted_rho_members"] for e in ensembles),
        "split_half_rho": mean(e["split_half_rho"] for e in ensembles),
        "split_half_full_rho": mean(e["split_half_full_rho"] for e in ensembles),
        "observed_rho": mean(p["rho"] for p in pairs),
        "observed_top": {k: mean(p["top"][k] for p in pairs) for k in ks},
        "observed_coverage": mean(c for p in pairs for c in (p["coverage_ab"], p["coverage_ba"])),
    }
    out["overconfidence_points"] = {k: 100.0 * (out["stated_top"][k] - out["observed_top"][k]) for k in ks}
    return out


def render(
    ensembles: list[dict], pairs: list[dict], summary: dict, ks: tuple[int, ...], command: str, pseudo: list[dict]
) -> str:
    """The markdown table."""

    def pct(x: float) -> str:
        return f"{100 * x:.0f} %" if np.isfinite(x) else "n/a"

    def num(x: float) -> str:
        return f"{x:.2f}" if np.isfinite(x) else "n/a"

    lines = ["# FNA ranking re-drawn: one ensemble's stated stability against independent ensembles", ""]
    lines += [f"`{command}`", ""]
    lines += ["## Each ensemble", ""]
    head = ["ensemble", "members", "frames", "score"]
    head += [f"stated top-{k}" for k in ks] + ["predicted rho"] + [f"predicted top-{k}" for k in ks]
    head += ["split-half rho (Spearman-Brown)", "atoms that stand out"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in ensembles:
        row = [e["file"], str(e["members"]), str(e["frames"]), e["score"]]
        row += [pct(e["stated_top"][k]) for k in ks] + [num(e["predicted_rho"])]
        row += [pct(e["predicted_top"][k]) for k in ks]
        row += [f"{num(e['split_half_rho'])} ({num(e['split_half_full_rho'])})", ", ".join(e["stand_out"]) or "none"]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## Each pair of ensembles (observed)", ""]
    head = ["pair", "Spearman's rho"] + [f"top-{k} overlap" for k in ks] + ["rank-interval coverage (a -> b, b -> a)"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in pairs:
        row = [f"{p['pair'][0]} vs {p['pair'][1]}", num(p["rho"])] + [pct(p["top"][k]) for k in ks]
        row.append(f"{pct(p['coverage_ab'])}, {pct(p['coverage_ba'])}")
        lines.append("| " + " | ".join(row) + " |")
    s = summary
    lines += ["", "## Stated against observed", ""]
    lines += [
        "| | stated by one ensemble (simulated re-draws) | bootstrap: stated (before); replicate pairs (members and "
        "frames; members only) | simulated re-draw pairs | split-half (Spearman-Brown) | observed |"
    ]
    lines += ["|---|---|---|---|---|---|"]
    lines.append(
        f"| Spearman's rho | | {num(s['predicted_rho'])}; {num(s['predicted_rho_members'])} | {num(s['redraw_rho'])} "
        f"| {num(s['split_half_full_rho'])} | {num(s['observed_rho'])} |"
    )
    for k in ks:
        lines.append(
            f"| top-{k} overlap | {pct(s['stated_top'][k])} | {pct(s['bootstrap_stated_top'][k])}; "
            f"{pct(s['predicted_top'][k])}; {pct(s['predicted_top_members'][k])} | {pct(s['redraw_top'][k])} | "
            f"| {pct(s['observed_top'][k])} |"
        )
    lines.append(f"| rank-interval coverage | 95 % (nominal) | | | | {pct(s['observed_coverage'])} |")
    lines.append("")

    def verdict(points: float) -> str:
        if abs(points) <= OVERCONFIDENT_POINTS:
            return "within 10 points"
        return "overconfident" if points > 0 else "underconfident"

    for k in ks:
        over = s["overconfidence_points"][k]
        pair = 100.0 * (s["redraw_top"][k] - s["observed_top"][k])
        lines.append(
            f"- top-{k}: the expected share printed (simulated re-draw pairs) minus observed {pair:+.0f} points "
            f"({verdict(pair)}); each atom's top-{k} % averaged over the top {k} minus observed {over:+.0f} points "
            f"({verdict(over)})."
        )
    if pseudo:
        lines += ["", "## Pseudo-ensembles: all members pooled and dealt again", ""]
        lines += [
            "| members per ensemble | top k | pairs | observed (sd over pairs) | stated (simulated re-draws) "
            "| simulated re-draw pairs | bootstrap stated (before) | bootstrap replicate pairs | stated minus observed "
            "| re-draw pairs minus observed |"
        ]
        lines += ["|---|---|---|---|---|---|---|---|---|---|"]
        for r in pseudo:
            lines.append(
                f"| {r['size']} | {r['k']} | {r['pairs']} | {pct(r['observed'])} ({100 * r['observed_pair_sd']:.0f}) "
                f"| {pct(r['stated'])} | {pct(r['predicted'])} | {pct(r['bootstrap_stated'])} "
                f"| {pct(r['bootstrap_pairs'])} | {100 * (r['stated'] - r['observed']):+.0f} points "
                f"| {100 * (r['predicted'] - r['observed']):+.0f} points |"
            )
        lines.append("")
    lines += [
        "",
        "Stated top-k: mean over an ensemble's top k atoms of the fraction of simulated re-trained ensembles "
        "(`ranking.simulate_redraws`: true scores drawn from their empirical-Bayes posterior, then the members' "
        "noise resampled around them) that keep the atom in the top k; this is what `qdgap fna` prints as each "
        "atom's top-k %. Bootstrap stated (before): the same with bootstrap replicates (members and blocks of frames "
        "resampled), what it printed before. Replicate pairs: agreement between random pairs of replicates, with "
        "members and frames resampled, and with members only (a re-trained ensemble is scored on the same frames). "
        "Simulated re-draw pairs: between two simulated ensembles around the same true scores. Split-half: Spearman's rho between the rankings of two random halves of the members "
        "(mean over 200 splits), then 2 rho / (1 + rho) for two whole ensembles. Observed: between the ensembles' "
        "ensemble-mean scores. Rank-interval coverage: the fraction of atoms whose rank in the other ensemble lies "
        "inside this ensemble's 95 % rank interval.",
    ]
    return "\n".join(lines) + "\n"


def run(
    files: list[Path], *, ks: tuple[int, ...], n_boot: int, seed: int, command: str, partitions: int = 40
) -> tuple[str, dict]:
    """The markdown and the JSON of the comparison of ``files``."""
    loaded = [load_ensemble(f, n_boot=n_boot, seed=seed) for f in files]
    ensembles = [per_ensemble(e, ks, seed=seed) for e in loaded]
    pairs = [between(a, b, ks) for a, b in itertools.combinations(loaded, 2)]
    summary = summarise(ensembles, pairs, ks)
    size = min(e.stats.n_members for e in loaded)
    pseudo = (
        pseudo_ensembles(loaded, ks, sizes=(size, size // 2), partitions=partitions, draws=n_boot, seed=seed)
        if partitions > 0
        else []
    )
    report = {
        "command": command,
        "ks": list(ks),
        "ensembles": ensembles,
        "pairs": pairs,
        "summary": summary,
        "pseudo_ensembles": pseudo,
    }
    return render(ensembles, pairs, summary, ks, command, pseudo), report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("fna", nargs="+", type=Path, help="fna.h5 of each independently trained ensemble (two or more)")
    p.add_argument("--top", default="5,10", help="top-k sizes, comma-separated")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap replicates per ensemble")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and of the splits")
    p.add_argument("--partitions", type=int, default=40, help="pooled members dealt again this many times (0: off)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results_fna_redraw", help="writes OUT.md and OUT.json")
    args = p.parse_args(argv)
    if len(args.fna) < 2:
        p.error("give at least two fna.h5 files")
    missing = [str(f) for f in args.fna if not f.is_file()]
    if missing:
        p.error(f"not found: {', '.join(missing)}")
    ks = tuple(int(k) for k in args.top.split(","))
    command = "python bench/bench_fna_redraw.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text, report = run(
        args.fna, ks=ks, n_boot=args.bootstrap, seed=args.seed, command=command, partitions=args.partitions
    )
    from qdgap.core.common.files import write_text_atomic

    write_text_atomic(args.out.with_suffix(".md"), text)
    write_text_atomic(args.out.with_suffix(".json"), json.dumps(report, indent=1, default=float) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
