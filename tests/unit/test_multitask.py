"""Multi-task members (``--targets gap,homo,lumo``): band edges in the trajectory, the loss, the gap-only model."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.io import write

from qdgap.core.common.errors import QdgapError
from qdgap.core.config import PRESETS, RunConfig, parse_targets, resolve_config
from qdgap.core.data.importers import import_trajectory
from qdgap.core.data.trajectory import read_trajectory, trajectory_info, write_trajectory
from qdgap.core.deploy.checkpoint import load_weights
from qdgap.core.graphs.build import build_graphs
from qdgap.core.model.network import GapModel, gap_only_state
from qdgap.core.store import runs as rf
from qdgap.core.train.loop import accumulate_gradient, target_matrix, train_member
from qdgap.core.workflow.finetune import FinetuneSettings, finetune_config
from qdgap.kernels.batch import gather_frames
from qdgap.testing.synthetic import synthetic_trajectory
from tests.conftest import assert_one_line_error
from tests.unit.test_slurm import fake_slurm  # noqa: F401  (fixture: stand-in sbatch/squeue)

TINY = PRESETS["tiny"]
MULTI = replace(TINY, train=replace(TINY.train, targets=("gap", "homo", "lumo")))


def _with_edges(traj, *, missing_every: int = 0):
    """``traj`` with band edges around its gaps: HOMO moves against the gap, LUMO = HOMO + gap."""
    gap = traj.gap_ev.astype(np.float64)
    homo = -5.0 - 0.4 * (gap - np.nanmean(gap)) + 0.01 * np.sin(np.arange(len(gap)))
    lumo = homo + gap
    if missing_every:
        homo[::missing_every] = np.nan
    return replace(traj, homo_ev=homo.astype(np.float32), lumo_ev=lumo.astype(np.float32))


def test_labels_csv_with_homo_and_lumo_columns_is_imported_with_them(tmp_path, synthetic_traj):
    folder = tmp_path / "poscars"
    folder.mkdir()
    for i in range(4):
        frame = Atoms(synthetic_traj.numbers, synthetic_traj.positions_ang[i] + 15.0, cell=[30.0] * 3, pbc=True)
        write(folder / f"st{i + 1}.vasp", frame, format="vasp")
    rows = ["Files,HOMO (eV),LUMO (eV),LUMO+1 (eV),Bandgap (eV)"]
    rows += [f"st{i},{-5 - i / 10},{-3.3 - i / 100},-2.9,{1.7 + i * 0.09}" for i in (1, 2, 4)]  # st3: no row
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    traj = import_trajectory([folder], gaps_csv=tmp_path / "labels.csv")
    np.testing.assert_allclose(traj.homo_ev, [-5.1, -5.2, np.nan, -5.4], rtol=1e-6)
    np.testing.assert_allclose(traj.lumo_ev, [-3.31, -3.32, np.nan, -3.34], rtol=1e-6)
    np.testing.assert_allclose(traj.gap_ev, [1.79, 1.88, np.nan, 2.06], rtol=1e-6)
    assert trajectory_info(traj)["band_edge_frames"] == 3
    write_trajectory(traj, tmp_path / "t.h5")
    back = read_trajectory(tmp_path / "t.h5")
    np.testing.assert_array_equal(back.homo_ev, traj.homo_ev)
    np.testing.assert_array_equal(back.select([3, 0]).lumo_ev, traj.lumo_ev[[3, 0]])
    # A plain gap table brings no band edges, and the file then has none.
    (tmp_path / "gaps.csv").write_text("".join(f"st{i},{1.7 + i / 100}\n" for i in range(1, 5)))
    plain = import_trajectory([folder], gaps_csv=tmp_path / "gaps.csv")
    assert plain.homo_ev is None and plain.lumo_ev is None
    write_trajectory(plain, tmp_path / "p.h5", force=True)
    assert read_trajectory(tmp_path / "p.h5").homo_ev is None


def test_targets_parse_and_round_trip_through_config_json():
    assert parse_targets("gap") == ("gap",)
    assert parse_targets(" GAP, homo ,lumo") == ("gap", "homo", "lumo")
    for bad in ("homo,gap", "gap,gap", "gap,lumo+1", ""):
        with pytest.raises(QdgapError, match="--targets"):
            parse_targets(bad)
    # The default stays out of config.json (older members still match); another list is kept.
    assert "targets" not in resolve_config("tiny").to_json()["train"]
    config = resolve_config("tiny", targets="gap,homo,lumo")
    record = config.to_json()
    assert record["train"]["targets"] == ["gap", "homo", "lumo"] and record["model"]["output_features"] == 1
    assert RunConfig.from_json(json.loads(json.dumps(record))) == config


def test_nan_band_edges_add_nothing_to_the_loss(synthetic_traj):
    """With every band edge unknown, the K = 3 loss and gradient are the gap-only ones / 3 (float64, 1e-12)."""
    torch.manual_seed(0)
    multi = GapModel(replace(TINY.model, output_features=3)).double()
    multi.set_target_stats([1.7, -5.0, -3.3], [0.1, 0.05, 0.08])
    single = GapModel(TINY.model).double()
    single.load_state_dict(gap_only_state(multi.state_dict()))
    graphs = build_graphs(synthetic_traj, TINY.graph)
    graphs = graphs._replace(bond_len=graphs.bond_len.double(), angle_cos=graphs.angle_cos.double())
    gaps = torch.from_numpy(synthetic_traj.gap_ev.astype(np.float64))
    labels = torch.stack([gaps, torch.full_like(gaps, torch.nan), torch.full_like(gaps, torch.nan)], dim=1)
    frames = torch.tensor([4, 0, 9, 13, 2])
    loss_multi = accumulate_gradient(multi, graphs, frames, labels, target_std=multi.target_std, micro_batch=2)
    loss_single = accumulate_gradient(single, graphs, frames, gaps, target_std=0.1, micro_batch=2)
    assert torch.allclose(loss_multi * 3, loss_single, rtol=1e-12)
    grads = {n: p.grad for n, p in multi.named_parameters() if p.grad is not None}
    single_grads = {n: p.grad for n, p in single.named_parameters() if p.grad is not None}
    assert single_grads.keys() == grads.keys() and len(grads) > 10
    for name, want in single_grads.items():
        g = grads[name][:1] if name.startswith("fc.") else grads[name]
        assert torch.allclose(g * 3, want, rtol=1e-9, atol=1e-14), name
    assert not grads["fc.weight"][1:].abs().any()  # no band-edge label: its head learns nothing
    # With the edges known, the loss is the mean of the three standardised L1 losses, each checked by hand.
    multi.zero_grad(set_to_none=True)
    edges = _with_edges(synthetic_traj)
    labels = torch.from_numpy(target_matrix(edges, ("gap", "homo", "lumo")).astype(np.float64))
    loss = accumulate_gradient(multi, graphs, frames, labels, target_std=multi.target_std, micro_batch=3)
    with torch.no_grad():
        pred = multi(*gather_frames(graphs, frames))
    expected = ((pred - labels[frames]).abs() / multi.target_std).mean(dim=0).mean()
    assert torch.allclose(loss, expected, rtol=1e-12)


def test_gap_only_state_predicts_the_gap_column(synthetic_traj):
    torch.manual_seed(1)
    multi = GapModel(replace(TINY.model, output_features=3))
    multi.set_target_stats([1.7, -5.0, -3.3], [0.1, 0.05, 0.08])
    single = GapModel(TINY.model)
    single.load_state_dict(gap_only_state(multi.state_dict()))
    batch = gather_frames(build_graphs(synthetic_traj, TINY.graph), torch.arange(6))
    multi.eval(), single.eval()
    with torch.no_grad():
        # Equal to float32 rounding: a 1-wide and a 3-wide output layer are different matrix products.
        assert torch.allclose(single(*batch), multi(*batch)[:, 0], rtol=0, atol=2e-6)


def test_multitask_member_keeps_a_one_output_gap_model(tmp_path, synthetic_traj):
    traj = _with_edges(synthetic_traj, missing_every=3)  # some frames without a HOMO: trained on the rest
    result = train_member(traj, MULTI, seed=0, run_dir=tmp_path / "m", device="cpu")
    assert result.epochs_run == MULTI.train.epochs
    record = json.loads((tmp_path / "m" / rf.CONFIG_JSON).read_text())
    assert record["train"]["targets"] == ["gap", "homo", "lumo"] and record["model"]["output_features"] == 1
    weights = load_weights(tmp_path / "m" / rf.BEST_PT)
    model = GapModel(TINY.model)
    model.load_state_dict(weights)  # strict: the one-output layout
    assert weights["fc.weight"].shape[0] == 1
    ts = torch.jit.load(str(tmp_path / "m" / rf.MODEL_TS))
    batch = gather_frames(build_graphs(traj, TINY.graph), torch.arange(4))
    model.eval()
    with torch.no_grad():
        assert ts(*batch).shape == (4,)
        assert torch.allclose(ts(*batch), model(*batch), atol=1e-6)
    # The band edges changed what was learned: the gap-only member of the same seed differs.
    train_member(traj, TINY, seed=0, run_dir=tmp_path / "g", device="cpu")
    assert not torch.equal(load_weights(tmp_path / "g" / rf.BEST_PT)["fc.weight"], weights["fc.weight"])
    # Same seed, same weights (CPU), and a fine-tune of it learns the gap alone.
    train_member(traj, MULTI, seed=0, run_dir=tmp_path / "m2", device="cpu")
    assert (tmp_path / "m" / rf.BEST_PT).read_bytes() == (tmp_path / "m2" / rf.BEST_PT).read_bytes()
    assert finetune_config(MULTI, FinetuneSettings(epochs=3)).train.targets == ("gap",)


def test_targets_without_band_edges_is_a_one_line_error(run_cli, synthetic_h5, tmp_path):
    result = run_cli(
        "train", "--data", synthetic_h5, "--preset", "tiny", "--targets", "gap,homo,lumo", "-o", tmp_path / "r"
    )
    assert_one_line_error(result, str(synthetic_h5), "no HOMO energies", "HOMO and LUMO columns")
    assert not (tmp_path / "r").exists()
    result = run_cli("ensemble", "train", "--data", synthetic_h5, "--preset", "tiny", "--targets", "gap,vbm")
    assert_one_line_error(result, "--targets", "'vbm'")


def test_slurm_tasks_repeat_the_targets(run_cli, tmp_path, fake_slurm):  # noqa: F811
    edges = tmp_path / "edges.h5"
    write_trajectory(_with_edges(synthetic_trajectory(60, seed=2)), edges)
    r = run_cli(
        "ensemble", "train", "--members", "2", "--data", edges, "--preset", "tiny", "--targets", "gap,homo,lumo",
        "-o", tmp_path / "runs", "--backend", "slurm", "--dry-run",
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr
    tasks = [line for line in r.stdout.splitlines() if line.startswith("# task ")]
    assert len(tasks) == 2 and all(t.endswith("--targets gap,homo,lumo") for t in tasks), tasks
