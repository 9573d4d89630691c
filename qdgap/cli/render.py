"""What the commands print: each core outcome rendered once, for its command and for ``qdgap pipeline``.

``hooks()`` gives core its progress bars, plain lines, this renderer and the stop flag.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import typer

from qdgap.cli import ui


def hooks():
    """The core ``Hooks`` of a command: rich bars on stderr, lines and rendered outcomes on stdout, SIGTERM and
    SIGINT as a request to stop training at its next batch."""
    from qdgap.cli.signals import stop_requested
    from qdgap.core.common.hooks import Hooks

    return Hooks(progress=ui.progress, say=typer.echo, show=show, stop_requested=stop_requested)


def show(outcome: object) -> None:
    """Print ``outcome`` (any of core's outcome types) as its command does."""
    from qdgap.core.pipeline.headlines import HeadlineOutcome
    from qdgap.core.workflow import finetune_run, inference, members

    if isinstance(outcome, inference.PredictOutcome):
        _print_summary(outcome.output, outcome.n_members, outcome.n_frames, outcome.summary)
        _print_baselines(outcome.baselines)
        _print_calibration(outcome.n_frames, outcome.calibration)
    elif isinstance(outcome, inference.FnaOutcome):
        o = outcome
        _print_fna_summary(o.output, o.csv, o.xyz, o.n_members, o.n_frames, o.n_atoms, o.mask, o.table, o.stats)
    elif isinstance(outcome, inference.SelectOutcome):
        _print_selection(outcome)
    elif isinstance(outcome, inference.PartOutcome):
        ui.stdout_console().print(
            f"wrote part {outcome.name} of {outcome.output} ({outcome.n_frames} frames): {outcome.path}"
        )
    elif isinstance(outcome, members.MembersOutcome):
        _print_outcomes(outcome.outcomes, outcome.folder)
    elif isinstance(outcome, finetune_run.MemberFinetuned):
        _print_member_finetuned(outcome.run, outcome.result)
    elif isinstance(outcome, finetune_run.TransferOutcome):
        _print_transfer(outcome)
    elif isinstance(outcome, HeadlineOutcome):
        _print_headlines(outcome)
    else:
        raise TypeError(f"no rendering for {type(outcome).__name__}")


def _print_outcomes(outcomes, output) -> None:
    """One line per member that did not train, then a summary: counts by outcome and the mean test RMSE (meV)."""
    out = ui.stdout_console()
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.outcome] = counts.get(o.outcome, 0) + 1
        if o.outcome in ("failed", "busy", "interrupted"):
            out.print(f"  seed {o.seed}: {o.outcome} — {o.message}")
    trained = [o for o in outcomes if o.outcome == "trained"]
    rmse = f", mean test RMSE {sum(o.test_rmse_mev for o in trained) / len(trained):.1f} meV" if trained else ""
    summary = ", ".join(f"{n} {k}" for k, n in counts.items())
    out.print(f"{output}: {summary}{rmse}")


def _print_selection(o) -> None:
    out = ui.stdout_console()
    sel = o.selection
    what = "calibrated spread" if o.calibrated else f"raw spread (not calibrated: {o.why_not})"
    out.print(
        f"wrote {o.output}: {len(sel.frame_index)} of {sel.num_candidates} {o.candidates} candidate frames by "
        f"{sel.strategy}, at least {sel.min_separation_fs:g} fs apart"
    )
    if sel.strategy.startswith("spread"):
        std = sel.gap_std_calibrated_ev if o.calibrated else sel.gap_std_ev
        out.print(f"  {what} of the chosen frames {1000 * np.min(std):.1f}-{1000 * np.max(std):.1f} meV")
    if o.structures:
        out.print(f"  wrote {len(o.structures)} POSCARs st<frame>.vasp to {o.structures_dir}")


def _print_member_finetuned(run: Path, result) -> None:
    ui.stdout_console().print(
        f"{run}: {result.epochs_run} epochs (best {result.best_epoch}), val MAE {result.best_val_mae_mev:.1f} meV, "
        f"test RMSE {result.test_rmse_mev:.1f} meV / MAE {result.test_mae_mev:.1f} meV on {result.n_test} frames, "
        f"{result.seconds:.1f} s; {result.frozen_params:,} frozen, {result.trainable_params:,} trainable parameters"
    )


def _print_transfer(o) -> None:
    out = ui.stdout_console()
    out.print(
        f"wrote {o.paths.report_csv} and {o.paths.report_json.name}: {o.n_members} members, "
        f"{o.n_frames} held-out extension frames"
    )
    for r in o.rows:
        wall = "" if math.isnan(r.wall_s) else f", training {r.wall_s:.0f} s"
        skill = (
            ""
            if r.model == "finetuned" or math.isnan(r.finetuned_skill)
            else f", fine-tuned's skill {r.finetuned_skill:+.2f}"
        )
        out.print(f"  {r.model:<17} RMSE {r.rmse_mev:7.1f} meV, MAE {r.mae_mev:7.1f} meV{wall}{skill}")
    rest = [r for r in o.rows if r.model != "finetuned" and not math.isnan(r.rmse_mev)]
    ft = next((r for r in o.rows if r.model == "finetuned"), None)
    if rest and ft is not None:
        best = min(rest, key=lambda r: r.rmse_mev)
        if best.rmse_mev <= ft.rmse_mev:
            out.print(
                f"  verdict: {best.model} ({best.rmse_mev:.1f} meV) predicts these frames better than the fine-tuned "
                f"ensemble ({ft.rmse_mev:.1f} meV): with these labels, fine-tuning does not pay"
            )
        else:
            out.print(
                f"  verdict: the fine-tuned ensemble beats every other row; the nearest is {best.model} ({best.rmse_mev:.1f} meV)"
            )


def _percent(fraction: float) -> str:
    return "–" if math.isnan(fraction) else f"{100 * fraction:.1f}"


def _unbounded(s: dict) -> str:
    # A split-conformal interval at level p is unbounded below p / (1 - p) calibration frames.
    if math.isnan(s["coverage95_conformal"]) or math.isnan(s["coverage68_conformal"]):
        return f" (unbounded: {s['calibration_frames']} calibration frames, 19 needed at 95 %)"
    return ""


def _print_calibration(n_frames: int, s: dict) -> None:
    out = ui.stdout_console()
    if "uncalibrated" in s:
        out.print(f"  spread not calibrated ({s['uncalibrated']}); no interval or extrapolation flags written")
        return
    if "coverage95_cal" in s:
        out.print(
            f"  coverage on {s['n_scored']} labelled unseen frames, 68 / 95 %: raw spread "
            f"{100 * s['coverage68_raw']:.1f} / {100 * s['coverage95_raw']:.1f} %, calibrated (x{s['calibration_scale']:.2f}) "
            f"{100 * s['coverage68_cal']:.1f} / {100 * s['coverage95_cal']:.1f} %, conformal "
            f"{_percent(s['coverage68_conformal'])} / {_percent(s['coverage95_conformal'])} %{_unbounded(s)}; miscalibration area "
            f"{s['miscal_area_raw']:.3f} -> {s['miscal_area_cal']:.3f}; Spearman(spread, |error|) {s['spearman_std_abs_err']:.2f}"
        )
    out.print(
        f"  {s['n_extrapolating']} of {n_frames} frames ({100 * s['n_extrapolating'] / max(1, n_frames):.1f} %) outside "
        f"what the ensemble knows (calibrated std above {s['extrapolation_threshold_mev']:.1f} meV, the largest "
        + ("between its pool frames on the training trajectory)" if s["threshold_frames"] == "between"
           else f"on its {s['calibration_frames']} calibration frames)")
    )  # fmt: skip


def _print_summary(output: Path, n_members: int, n_frames: int, s: dict) -> None:
    out = ui.stdout_console()
    out.print(f"wrote {output} and {output.with_suffix('.csv').name}: {n_members} members x {n_frames} frames")
    if "ensemble_rmse_mev" in s:
        out.print(
            f"  on {s['n_labelled']} labelled frames: ensemble RMSE {s['ensemble_rmse_mev']:.1f} meV, "
            f"MAE {s['ensemble_mae_mev']:.1f} meV; members RMSE {s['best_member_rmse_mev']:.1f}-"
            f"{s['worst_member_rmse_mev']:.1f} meV; true gap within mean ± 2 std on {100 * s['coverage_2std']:.0f} % of frames"
        )
    else:
        out.print("  no labelled frames among them: nothing to compare against")


def _print_headlines(o) -> None:
    """This demo run against the ranges over independent re-runs (data/demo_headlines.json, the README's)."""
    from qdgap.core.pipeline.headlines import TITLES

    out = ui.stdout_console()
    out.print(
        f"against {o.runs} independent demo ensembles (seed bases 0, 1000, 2000; 95 % prediction interval "
        "for one more run, as in the README):"
    )
    for c in o.checks:
        where = "inside" if c.inside else "OUTSIDE"
        out.print(f"  {TITLES.get(c.name, c.name)}: {c.value:.1f} meV, {where} {max(c.low, 0.0):.1f}-{c.high:.1f}")
    if o.top_atoms:
        known = [a for a in o.top_atoms if a in o.known_leaders]
        out.print(
            f"  FNA top {len(o.top_atoms)}: {', '.join(o.top_atoms)}; {len(known)} of them led in some re-run "
            f"({', '.join(o.known_leaders)})"
        )
    if o.all_inside:
        out.print("  every number lands inside its range: a normal re-draw of training noise")
    else:
        out.print("  a number lies outside its range: more than a re-draw; check the install (`qdgap --version`)")


def _print_baselines(report) -> None:
    """The ensemble beside what its training labels predict without a model, on the same frames."""
    if report is None:
        return
    from qdgap.core.analysis.baselines import BASELINE_TITLES

    out = ui.stdout_console()
    model = report.scores[0]
    out.print(
        f"  beside baselines from {report.label_source} (gap correlation time {report.corr_time_fs:.0f} fs), "
        f"on the same {model.frames} frames:"
    )
    for s in report.scores[1:]:
        title = BASELINE_TITLES.get(s.name, s.name).split(" (")[0]
        out.print(f"    {title}: RMSE {s.rmse_mev:.1f} meV (model's skill {s.skill:+.2f})")
    out.print(f"  verdict: {report.verdict}")


def _print_fna_summary(output, csv_path, xyz, n_members, n_frames, n_atoms, mask, table, stats) -> None:
    out = ui.stdout_console()
    also = f", {xyz}" if xyz is not None else ""
    out.print(
        f"wrote {output}, {csv_path} and {csv_path.with_name('importance_groups.csv').name}{also}: "
        f"{n_members} members x {n_frames} frames x {n_atoms} atoms ({mask} mask)"
    )
    r = stats.ranking
    ci = f"{100 * r.confidence:.0f} %"
    if stats.ranked_by == "rmse":
        out.print(
            f"  unmasked ensemble RMSE {table['baseline_rmse_mev'][0]:.1f} meV; ranked by importance = masked minus "
            f"unmasked RMSE per member (meV, {ci} interval); * = stands out (importance above the median atom's, "
            f"{r.correction}, alpha {r.alpha:g})"
        )
        value, lo, hi = "importance_mev", "importance_ci_lo_mev", "importance_ci_hi_mev"
        out_col, p_col, stab, pre = "stands_out", "p_adjusted_vs_median", "rank_stability", ""
    else:
        out.print(
            f"  no true gaps: ranked by shift = mean |masked - unmasked| (meV, {ci} interval); * = stands out "
            f"(shift above the median atom's, {r.correction}, alpha {r.alpha:g})"
        )
        value, lo, hi = "mean_abs_shift_mev", "shift_ci_lo_mev", "shift_ci_hi_mev"
        out_col, p_col, stab, pre = "shift_stands_out", "shift_p_adjusted_vs_median", "shift_rank_stability", "shift_"
    out.print(
        f"  bootstrap: {r.n_boot} replicates, blocks of {r.block_frames} frames (from the {r.block_source}'s "
        f"autocorrelation), {r.n_members} members, seed {r.seed}; most important atoms:"
    )
    for i in range(min(10, len(table["atom_label"]))):
        extra = ""
        if stats.ranked_by == "rmse":
            extra = f"  RMSE {table['rmse_mev_mean'][i]:6.1f} ± {table['rmse_mev_std'][i]:.1f} meV"
        rank_range = f"rank {table[pre + 'rank_lo'][i]:.0f}-{table[pre + 'rank_hi'][i]:.0f}"
        out.print(
            f"  {table['rank'][i]:>3}. {table['atom_label'][i]:<6}{'*' if table[out_col][i] else ' '} "
            f"{table[value][i]:+7.1f} [{table[lo][i]:+.1f}, {table[hi][i]:+.1f}] meV  "
            f"p {table[p_col][i]:.2g}  {rank_range:<11} top-{r.top_k} in {100 * table[stab][i]:.0f} %{extra}"
        )
    n_out = int(np.count_nonzero(r.stands_out))
    median = float(np.median(r.mean_mev))
    against = "> 0" if stats.ranked_by == "rmse" else f"> the ensemble spread {r.null_mev:.1f} meV"
    out.print(
        f"  two re-trained ensembles are expected to share {100 * r.redraw_overlap:.0f} % of their top {r.top_k}; "
        f"each atom's top-{r.top_k} % above: how often a re-trained ensemble puts it there (simulated re-draws)"
    )
    out.print(
        f"  {n_out} of {n_atoms} atoms stand out (above the median atom, {median:+.1f} meV); "
        f"{int(np.count_nonzero(r.significant))} of {n_atoms} {against}"
    )
