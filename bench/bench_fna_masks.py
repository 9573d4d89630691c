"""Why ``--mask seed`` and ``--mask full`` rank the atoms alike on the real data (issue 28, item 4).

For each member of an ensemble, on unseen labelled frames of a trajectory:

* the masked predictions under both masks and under each ingredient alone (atom features, bonds at 0 Å,
  bonds with a zeroed basis, angles zeroed), so the gap between the masks splits into its bond part
  (``seed`` against ``full`` without its angle mask) and its angle part (``full`` without against with it);
* how much the member reads angles at all: every triplet given a random cosine;
* why the two nullified bond rows are alike: the basis functions a 0 Å bond lights up, whether any real bond
  lights them, their first-layer weights against the trained ones, and the distance between the two rows;
* Spearman's rho between the two masks' masked-RMSE rankings, per member and for the ensemble mean.

    python bench/bench_fna_masks.py --runs work/reproduce/runs --data work/reproduce/cl_qd.h5 --frames 40 \\
        --out bench/results_fna_masks     # writes .md and .json

A benchmark, not a test: it asserts nothing (tests/integration/test_fna_masks_real.py checks where the masks act).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python bench/bench_fna_masks.py` from anywhere
    sys.path.insert(0, str(REPO))

from qdgap.core.common.metrics import MEV_PER_EV, spearman_rho  # noqa: E402

LIT = 1e-3  # a basis function counts as lit above this value


def member_report(member, traj, frames: np.ndarray, *, seed: int) -> tuple[dict, dict[str, np.ndarray]]:
    """One member's numbers, and its masked predictions per variant ((F, N + 1) eV)."""
    from qdgap.core.deploy.checkpoint import load_weights
    from qdgap.core.graphs.build import build_graphs
    from qdgap.core.model.network import GapModel
    from qdgap.kernels.batch import gather_frames
    from qdgap.kernels.fna import tile_masked

    config = member.config
    model = GapModel(config.model)
    model.load_state_dict(load_weights(member.path / "best.pt"))
    model.eval()
    graphs = build_graphs(traj, config.graph)
    n = traj.num_atoms
    copies, atoms = torch.zeros(n + 1, dtype=torch.long), torch.arange(-1, n)
    out: dict[str, list[np.ndarray]] = {}
    with torch.inference_mode():
        for f in frames:
            base = gather_frames(graphs, torch.tensor([int(f)]))
            full, seed_mask = tile_masked(base, copies, atoms, n, "full"), tile_masked(base, copies, atoms, n, "seed")
            g = full.batch
            variants = {
                "full": model(*g, full.node_mask, full.edge_mask, full.angle_mask),
                "seed": model(*seed_mask.batch, seed_mask.node_mask, None, None),
                "full_without_angles": model(*g, full.node_mask, full.edge_mask, None),
                "atom_only": model(*g, full.node_mask, None, None),
                "bonds_at_0A_only": model(*seed_mask.batch, None, None, None),
                "bonds_zeroed_only": model(*g, None, full.edge_mask, None),
                "angles_only": model(*g, None, None, full.angle_mask),
            }
            for k, v in variants.items():
                out.setdefault(k, []).append(v.double().numpy())
        pred = {k: np.stack(v) for k, v in out.items()}  # (F, N + 1)
        # Angles at all: every triplet of the frames given a random cosine.
        g = gather_frames(graphs, torch.as_tensor(frames, dtype=torch.long))
        rng = torch.Generator().manual_seed(seed)
        random_cos = torch.rand(g.angle_cos.shape, generator=rng, dtype=g.angle_cos.dtype) * 2 - 1
        angle_sensitivity = (model(*g._replace(angle_cos=random_cos)) - model(*g)).abs().max().item()
        # The bond rows.
        basis, first, second = model.edge_embedding
        lit = basis(torch.zeros(1))[0] > LIT
        real_max = float(basis(g.bond_len)[:, lit].max())
        weight, bias = first.layer[0].weight.detach(), first.layer[0].bias.detach()
        v0 = basis(torch.zeros(1))[0]
        row_seed = second(first(v0[None]))[0]
        row_full = second(first(torch.zeros_like(v0)[None]))[0]
        typical = second(first(basis(torch.tensor([2.6]))))[0]
        trained = (basis(g.bond_len) > LIT).any(dim=0) & ~lit
    y = traj.gap_ev[frames].astype(np.float64)
    shift = {k: np.abs(v[:, 1:] - v[:, :1]).mean() * MEV_PER_EV for k, v in pred.items()}
    rmse = {k: np.sqrt(((v[:, 1:] - y[:, None]) ** 2).mean(axis=0)) * MEV_PER_EV for k, v in pred.items()}
    report = {
        "seed": member.seed,
        "unmasked_rmse_mev": float(np.sqrt(((pred["full"][:, 0] - y) ** 2).mean()) * MEV_PER_EV),
        "mean_abs_shift_mev": {k: float(v) for k, v in shift.items()},
        "seed_minus_full_mev": float(np.abs(pred["seed"] - pred["full"])[:, 1:].mean() * MEV_PER_EV),
        "bond_part_mev": float(np.abs(pred["seed"] - pred["full_without_angles"])[:, 1:].mean() * MEV_PER_EV),
        "angle_part_mev": float(np.abs(pred["full_without_angles"] - pred["full"])[:, 1:].mean() * MEV_PER_EV),
        "random_angles_max_mev": angle_sensitivity * MEV_PER_EV,
        "rho_seed_full": spearman_rho(rmse["seed"], rmse["full"]),
        "basis_lit_at_0A": int(lit.sum()),
        "lit_at_0A_by_real_bonds_max": real_max,
        "shortest_bond_ang": float(g.bond_len.min()),
        "weight_norm_lit_at_0A": float(weight[:, lit].norm(dim=0).mean()),
        "weight_norm_trained": float(weight[:, trained].norm(dim=0).mean()),
        "bias_norm": float(bias.norm()),
        "basis_0A_term_norm": float((weight @ v0).norm()),
        "rows_seed_full_distance": float((row_seed - row_full).norm()),
        "rows_seed_full_cosine": float(torch.nn.functional.cosine_similarity(row_seed, row_full, dim=0)),
        "rows_to_2p6A_bond": [float((row_seed - typical).norm()), float((row_full - typical).norm())],
    }
    return report, rmse


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=Path, required=True, help="ensemble folder (run_<seed>/ inside)")
    p.add_argument("--data", type=Path, required=True, help="trajectory HDF5 with true gaps")
    p.add_argument("--frames", type=int, default=40, help="unseen labelled frames, spread evenly")
    p.add_argument("--seed", type=int, default=0, help="seed of the random angles")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results_fna_masks", help="writes OUT.md and OUT.json")
    args = p.parse_args(argv)
    from qdgap.core.analysis.predict import select_frames
    from qdgap.core.common.files import write_text_atomic
    from qdgap.core.data.trajectory import read_trajectory
    from qdgap.core.store.runs import load_members

    torch.set_num_threads(1)
    members = load_members(args.runs)
    traj = read_trajectory(args.data)
    unseen = select_frames(members, traj, "unseen")
    unseen = unseen[np.isfinite(traj.gap_ev[unseen])]
    frames = unseen[np.linspace(0, len(unseen) - 1, min(args.frames, len(unseen))).astype(int)]
    reports, rmse = [], []
    for m in members:
        r, x = member_report(m, traj, frames, seed=args.seed)
        reports.append(r)
        rmse.append(x)
    ensemble_rho = spearman_rho(np.mean([x["seed"] for x in rmse], 0), np.mean([x["full"] for x in rmse], 0))
    command = "python bench/bench_fna_masks.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = ["# `--mask seed` against `--mask full`: where they differ and how much the model cares", ""]
    lines += [f"`{command}` ({len(frames)} unseen labelled frames, {len(members)} members)", ""]
    head = [
        "member", "unmasked RMSE", "mean shift seed / full / atom only / bonds 0 Å only / bonds zeroed only / angles only",
        "mean abs. seed - full (bonds part, angles part)", "random angles, max", "rho seed vs full",
        "basis lit at 0 Å (max on real bonds)", "first-layer weight norm: lit at 0 Å / trained", "bias / 0 Å term",
        "bond rows seed-full: distance, cosine; to a 2.6 Å bond",
    ]  # fmt: skip
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in reports:
        s = r["mean_abs_shift_mev"]
        lines.append(
            f"| {r['seed']} | {r['unmasked_rmse_mev']:.1f} meV | {s['seed']:.2f} / {s['full']:.2f} / {s['atom_only']:.2f} / "
            f"{s['bonds_at_0A_only']:.2f} / {s['bonds_zeroed_only']:.2f} / {s['angles_only']:.4f} meV "
            f"| {r['seed_minus_full_mev']:.2f} ({r['bond_part_mev']:.2f}, {r['angle_part_mev']:.4f}) meV "
            f"| {r['random_angles_max_mev']:.3f} meV | {r['rho_seed_full']:.2f} "
            f"| {r['basis_lit_at_0A']} ({r['lit_at_0A_by_real_bonds_max']:.1e}; shortest bond {r['shortest_bond_ang']:.2f} Å) "
            f"| {r['weight_norm_lit_at_0A']:.2f} / {r['weight_norm_trained']:.2f} "
            f"| {r['bias_norm']:.2f} / {r['basis_0A_term_norm']:.2f} "
            f"| {r['rows_seed_full_distance']:.2f}, {r['rows_seed_full_cosine']:.2f}; "
            f"{r['rows_to_2p6A_bond'][0]:.2f} / {r['rows_to_2p6A_bond'][1]:.2f} |"
        )
    lines += [
        "",
        f"Spearman's rho between the seed and full masked-RMSE rankings of the ensemble mean: {ensemble_rho:.2f}.",
    ]
    report = {"command": command, "frames": frames.tolist(), "members": reports, "ensemble_rho_seed_full": ensemble_rho}
    write_text_atomic(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    write_text_atomic(args.out.with_suffix(".json"), json.dumps(report, indent=1) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
