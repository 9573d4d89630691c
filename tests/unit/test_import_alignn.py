"""Importing models trained by upstream ALIGNN (core.upstream): parity with upstream's forward, and refusals.

The checkpoints are written by the upstream ``alignn`` package's own code, as
``alignn.train.train_dgl`` writes them: ``config.json`` is
``TrainingConfig(...)`` dumped with indent 4, ``best_model.pt`` is
``torch.save(net.state_dict(), ...)``.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from alignn.config import TrainingConfig
from alignn.models.alignn_atomwise import ALIGNNAtomWiseConfig
from alignn.models.alignn_atomwise_pure import ALIGNNAtomWisePure, ALIGNNAtomWisePureConfig

from qdgap.core.common.errors import QdgapError
from qdgap.core.deploy.torchscript import load_torchscript
from qdgap.core.graphs.build import build_graphs
from qdgap.core.interop.upstream import import_alignn
from qdgap.core.store import runs as rf
from qdgap.kernels.batch import gather_frames
from tests.unit.test_model import _boxed, _upstream_out

TOL_EV = 1e-5
SIZES = dict(  # every size differs from qdgap's presets and upstream's defaults, so a mapping slip shows
    alignn_layers=2,
    gcn_layers=1,
    atom_input_features=92,
    edge_input_features=24,
    triplet_input_features=12,
    embedding_features=16,
    hidden_features=32,
)
FRAMES = [0, 17, 63]


def write_upstream_run(
    folder: Path,
    *,
    name: str = "alignn_atomwise_pure",
    model: dict | None = None,
    top: dict | None = None,
    seed: int = 0,
) -> tuple[Path, Path, ALIGNNAtomWisePure]:
    """An upstream output folder: ``config.json`` and ``best_model.pt``, and the upstream net (eval mode) behind them.

    The net has random weights and batch-norm statistics, so parity cannot pass on initial values.
    ``energy_mult_natoms`` and ``use_penalty`` keep upstream's defaults (True): they must not change ``out``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    sizes = {**SIZES, "calculate_gradient": False, **(model or {})}
    schema = ALIGNNAtomWiseConfig if name == "alignn_atomwise" else ALIGNNAtomWisePureConfig
    config = TrainingConfig(
        dataset="user_data",
        target="target",
        atom_features="cgcnn",
        neighbor_strategy="pure_torch",
        cutoff=5.0,
        max_neighbors=12,
        three_body_cutoff=3.5,
        epochs=40,
        n_early_stopping=10,
        output_dir=str(folder),
        model=schema(name=name, **sizes),
        **(top or {}),
    )
    (folder / "config.json").write_text(json.dumps(config.model_dump(), indent=4))  # as train_dgl writes it
    pure = {**config.model_dump()["model"], "name": "alignn_atomwise_pure"}
    pure = {k: v for k, v in pure.items() if k in ALIGNNAtomWisePureConfig.model_fields}
    net = ALIGNNAtomWisePure(ALIGNNAtomWisePureConfig(**pure))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
        for mod in net.modules():
            if isinstance(mod, torch.nn.BatchNorm1d):
                mod.running_mean.add_(0.1 * torch.randn(mod.running_mean.shape, generator=gen))
                mod.running_var.copy_(0.7 + 0.6 * torch.rand(mod.running_var.shape, generator=gen))
    net.eval()
    torch.save(net.state_dict(), folder / "best_model.pt")  # as train_dgl: torch.save(_unwrap(net).state_dict(), ...)
    return folder / "best_model.pt", folder / "config.json", net


def _imported_out(run: Path, traj, frames) -> torch.Tensor:
    member = rf.load_member(run)
    model = load_torchscript(member.model_ts, sha256=member.model_sha256)
    with torch.no_grad():
        return model.module(*gather_frames(build_graphs(traj, member.config.graph), torch.tensor(frames)))


@pytest.fixture(scope="module")
def boxed(synthetic_traj):
    return _boxed(synthetic_traj)


def test_import_matches_upstream_forward(tmp_path, boxed):
    ckpt, cfg, net = write_upstream_run(tmp_path / "upstream")
    result = import_alignn(ckpt, cfg, run_dir=tmp_path / "runs" / "run_3")
    run = result.run_dir
    assert result.seed == 3 and result.graph_note is None
    # The run-folder contract: DONE (with the model's sha256), no test metrics (upstream's test split is of other data).
    for name in (rf.CONFIG_JSON, rf.SPLIT_JSON, rf.BEST_PT, rf.MODEL_TS, rf.DONE):
        assert (run / name).is_file(), name
    assert not (run / rf.TEST_METRICS_JSON).exists()
    assert json.loads((run / rf.SPLIT_JSON).read_text()) == {"train": [], "val": [], "test": []}
    assert not list((tmp_path / "runs").glob(".*"))  # no temporary folder left
    member = rf.load_member(run)
    assert member.seed == 3 and member.numbers is None and member.data_sha256 is None
    assert member.model_sha256 == result.model_sha256
    mc, gc = member.config.model, member.config.graph
    assert {k: getattr(mc, k) for k in SIZES} == SIZES
    assert (gc.cutoff_ang, gc.max_neighbors, gc.three_body_cutoff_ang) == (5.0, 12, 3.5)
    assert (member.config.train.epochs, member.config.train.patience) == (40, 10)
    assert member.record["import"]["upstream_model"] == "alignn_atomwise_pure"
    # model.ts predicts what upstream's forward(g) gives on the same structures.
    ours = _imported_out(run, boxed, FRAMES)
    theirs = _upstream_out(net, boxed, FRAMES, gc)
    assert theirs.std() > 10 * TOL_EV  # the frames really differ
    torch.testing.assert_close(ours, theirs, rtol=0, atol=TOL_EV)


def test_import_dgl_era_checkpoint_dict(tmp_path, boxed):
    """A DGL-era alignn_atomwise checkpoint_<N>.pt: no species table, weights under 'model', a 'module.' prefix."""
    ckpt, cfg, net = write_upstream_run(tmp_path / "upstream", name="alignn_atomwise")
    state = {f"module.{k}": v for k, v in net.state_dict().items() if k != "_species_table"}
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    old = tmp_path / "upstream" / "checkpoint_40.pt"
    torch.save({"model": state, "optimizer": optimizer.state_dict(), "epoch": 40}, old)
    result = import_alignn(old, cfg, run_dir=tmp_path / "run_0")
    assert result.upstream_name == "alignn_atomwise"
    ours = _imported_out(result.run_dir, boxed, FRAMES)
    torch.testing.assert_close(ours, _upstream_out(net, boxed, FRAMES, result.config.graph), rtol=0, atol=TOL_EV)


def test_import_keeps_checkpoint_target_stats(tmp_path, boxed):
    ckpt, cfg, net = write_upstream_run(tmp_path / "upstream")
    state = {**net.state_dict(), "target_mean": torch.tensor(1.73), "target_std": torch.tensor(0.11)}
    torch.save(state, ckpt)
    result = import_alignn(ckpt, cfg, run_dir=tmp_path / "run_0")
    raw = _upstream_out(net, boxed, FRAMES, result.config.graph)
    torch.testing.assert_close(_imported_out(result.run_dir, boxed, FRAMES), raw * 0.11 + 1.73, rtol=0, atol=TOL_EV)


@pytest.mark.parametrize(
    ("config_sizes", "fragments"),
    [
        (
            {"hidden_features": 48},
            ["atom_embedding.layer.0.weight is (32, 92) in the checkpoint but (48, 92) by the config"],
        ),
        ({"edge_input_features": 40}, ["edge_embedding.0.centers is (24,) in the checkpoint but (40,) by the config"]),
        ({"alignn_layers": 3}, ["no weights for alignn_layers.2.", "more"]),
        ({"gcn_layers": 0}, ["unexpected gcn_layers.0."]),
    ],
)
def test_import_refuses_weights_that_do_not_fit(tmp_path, config_sizes, fragments):
    ckpt, _, _ = write_upstream_run(tmp_path / "trained")
    _, other_cfg, _ = write_upstream_run(tmp_path / "other", model=config_sizes)
    with pytest.raises(QdgapError) as exc:
        import_alignn(ckpt, other_cfg, run_dir=tmp_path / "runs" / "run_0")
    assert "does not fit" in str(exc.value) and "best_model.pt" in str(exc.value)
    for frag in fragments:
        assert frag in str(exc.value)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_import_refuses_pickled_objects(tmp_path):
    ckpt, cfg, net = write_upstream_run(tmp_path / "upstream")
    torch.save({"model": net.state_dict(), "saved_at": datetime.datetime(2025, 5, 7)}, ckpt)
    with pytest.raises(QdgapError, match=r"holds pickled Python objects \(datetime\.datetime\), not plain weights"):
        import_alignn(ckpt, cfg, run_dir=tmp_path / "run_0")
    torch.save(net, ckpt)  # the whole module: needs its class to unpickle
    with pytest.raises(QdgapError, match="holds pickled Python objects"):
        import_alignn(ckpt, cfg, run_dir=tmp_path / "run_0")
    torch.save({"weights": [1, 2, 3]}, ckpt)
    with pytest.raises(QdgapError, match="not a state dict of tensors"):
        import_alignn(ckpt, cfg, run_dir=tmp_path / "run_0")
    ckpt.write_bytes(b"not a zip")
    with pytest.raises(QdgapError, match="not a readable PyTorch checkpoint"):
        import_alignn(ckpt, cfg, run_dir=tmp_path / "run_0")
    assert not (tmp_path / "run_0").exists()


def _edit_config(cfg: Path, *, model: dict | None = None, **top) -> None:
    record = json.loads(cfg.read_text())
    record["model"].update(model or {})
    record.update(top)
    cfg.write_text(json.dumps(record, indent=4))


@pytest.mark.parametrize(
    ("model", "top", "fragment"),
    [
        ({"name": "alignn"}, {}, "model type 'alignn' is not supported"),
        ({"name": "ealignn_atomwise"}, {}, "model type 'ealignn_atomwise' is not supported"),
        ({"conv_type": "t_alignn"}, {}, "conv_type 't_alignn' is not supported"),
        (
            {"calculate_gradient": True, "gradwise_weight": 1.0},
            {},
            "a force field (calculate_gradient with gradwise_weight=1.0): it predicts energies",
        ),
        ({"link": "log"}, {}, "link='log'"),
        ({"classification": True}, {}, "a classifier"),
        ({}, {"classification_threshold": 1.5}, "a classifier"),
        ({"use_cutoff_function": True}, {}, "use_cutoff_function"),
        ({"atomwise_output_features": 3}, {}, "an atom-wise output head"),
        ({}, {"atom_features": "basic"}, "atom_features='basic' is not supported"),
        ({"atom_input_features": 11}, {}, "atom_input_features=11, but CGCNN features have 92"),
        ({}, {"target_multiplication_factor": 27.2}, "target_multiplication_factor=27.2"),
        ({}, {"standard_scalar_and_pca": True}, "standard_scalar_and_pca"),
        ({}, {"neighbor_strategy": "radius_graph"}, "neighbor_strategy='radius_graph'"),
        ({}, {"max_neighbors": None}, "no 'max_neighbors' setting"),
        ({}, {"three_body_cutoff": 6.0}, "three_body_cutoff=6 exceeds cutoff=5"),
    ],
)
def test_import_refuses_unsupported_config(tmp_path, model, top, fragment):
    ckpt, cfg, _ = write_upstream_run(tmp_path / "upstream")
    _edit_config(cfg, model=model, **top)
    with pytest.raises(QdgapError) as exc:
        import_alignn(ckpt, cfg, run_dir=tmp_path / "run_0")
    assert fragment in str(exc.value) and "config.json" in str(exc.value)
    assert not (tmp_path / "run_0").exists()


def test_import_other_graphs_only_when_allowed(tmp_path):
    ckpt, cfg, _ = write_upstream_run(tmp_path / "upstream")
    _edit_config(cfg, neighbor_strategy="radius_graph", cutoff=8.0)
    result = import_alignn(ckpt, cfg, run_dir=tmp_path / "run_0", allow_other_graphs=True)
    assert "radius_graph" in result.graph_note
    gc = result.config.graph
    assert (gc.neighbor_strategy, gc.cutoff_ang) == ("pure_torch", 8.0)
    assert rf.load_member(result.run_dir).record["import"]["graph_note"] == result.graph_note


@pytest.mark.parametrize("top", [{}, {"use_canonize": True}])
def test_import_canonised_k_nearest_is_the_paper_graph(tmp_path, top):
    """train_alignn.py's default (use_canonize left out, or true): the graph of the paper preset, no flag needed."""
    from qdgap.core.config import PRESETS

    ckpt, cfg, _ = write_upstream_run(tmp_path / "upstream")
    _edit_config(cfg, neighbor_strategy="k-nearest", cutoff=5.0, max_neighbors=12, **top)
    result = import_alignn(ckpt, cfg, run_dir=tmp_path / "run_0")
    assert result.graph_note is None
    gc = result.config.graph
    assert (gc.neighbor_strategy, gc.use_canonize, gc.max_neighbors) == ("k-nearest", True, 12)
    assert gc == replace(PRESETS["paper"].graph, three_body_cutoff_ang=gc.three_body_cutoff_ang)


def test_import_dgl_era_k_nearest_needs_no_permission(tmp_path, boxed):
    """The original study's graphs (k-nearest, use_canonize=False): qdgap builds them, so the model imports
    as it is, and model.ts predicts what qdgap's forward gives on those graphs."""
    ckpt, cfg, net = write_upstream_run(tmp_path / "upstream", name="alignn_atomwise")
    _edit_config(cfg, neighbor_strategy="k-nearest", use_canonize=False, cutoff=5.0, max_neighbors=12)
    result = import_alignn(ckpt, cfg, run_dir=tmp_path / "run_0")
    assert result.graph_note is None
    gc = result.config.graph
    assert (gc.neighbor_strategy, gc.cutoff_ang, gc.max_neighbors) == ("k-nearest", 5.0, 12)
    assert rf.load_member(result.run_dir).config.graph == gc
    from qdgap.core.model.network import GapModel

    ours = GapModel(result.config.model).eval()
    ours.load_state_dict({**ours.state_dict(), **{k: v for k, v in net.state_dict().items() if k != "_species_table"}})
    with torch.no_grad():
        want = ours.predict_batch(gather_frames(build_graphs(boxed, gc), torch.tensor(FRAMES)))
    torch.testing.assert_close(_imported_out(result.run_dir, boxed, FRAMES), want, rtol=0, atol=TOL_EV)


def test_import_qdgap_best_pt_round_trip(tmp_path, tiny_runs):
    """A qdgap best.pt (statistics folded into fc) imports with an upstream config of its sizes and gives
    back the same weights and statistics, to float32 rounding."""
    from qdgap.core.deploy.checkpoint import load_weights

    run = rf.run_dir(tiny_runs, 1)
    sizes = json.loads((run / rf.CONFIG_JSON).read_text())["model"]
    _, cfg, _ = write_upstream_run(tmp_path / "upstream", model={k: sizes[k] for k in SIZES})
    result = import_alignn(run / rf.BEST_PT, cfg, run_dir=tmp_path / "run_1")
    before, after = load_weights(run / rf.BEST_PT), load_weights(result.run_dir / rf.BEST_PT)
    assert before.keys() == after.keys() and abs(float(after["target_std"]) - 1.0) > 0.5
    for k in before:
        torch.testing.assert_close(after[k], before[k], rtol=1e-6, atol=1e-7)


def test_import_output_rules(tmp_path):
    ckpt, cfg, _ = write_upstream_run(tmp_path / "upstream")
    run = tmp_path / "runs" / "run_2"
    first = import_alignn(ckpt, cfg, run_dir=run)
    with pytest.raises(QdgapError, match="exists; choose another folder or pass --force"):
        import_alignn(ckpt, cfg, run_dir=run)
    with pytest.raises(QdgapError, match="named for seed 2 but --seed is 5"):
        import_alignn(ckpt, cfg, run_dir=run, seed=5, force=True)
    (run / "stale.txt").write_text("from before")
    again = import_alignn(ckpt, cfg, run_dir=run, force=True)
    assert again.run_dir == first.run_dir and not (run / "stale.txt").exists()
    assert rf.load_member(run).model_sha256 == again.model_sha256
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["run_2"]
    assert import_alignn(ckpt, cfg, run_dir=tmp_path / "solo", seed=9).seed == 9
    assert import_alignn(ckpt, cfg, run_dir=tmp_path / "solo2").seed == 0


def test_imported_member_fits_any_composition_with_features(tmp_path, synthetic_traj):
    """predict's fit check: no composition to compare, but every element needs input features."""
    from qdgap.core.analysis.predict import check_members_fit, select_frames
    from qdgap.core.data.trajectory import make_trajectory

    ckpt, cfg, _ = write_upstream_run(tmp_path / "upstream")
    member = rf.load_member(import_alignn(ckpt, cfg, run_dir=tmp_path / "run_0").run_dir)
    check_members_fit([member], synthetic_traj, data_path=None, allow_data_change=False)
    assert np.array_equal(select_frames([member], synthetic_traj, "unseen"), np.arange(synthetic_traj.num_frames))
    numbers = synthetic_traj.numbers.copy()
    numbers[0] = 103  # Lr: jarvis-tools has no CGCNN features for it
    odd = make_trajectory(numbers, synthetic_traj.positions_ang[:2], time_fs=synthetic_traj.time_fs[:2])
    with pytest.raises(QdgapError, match="features per atom, which Lr of the data do not have"):
        check_members_fit([member], odd, data_path=None, allow_data_change=False)


def test_import_paper_size_matches_upstream_on_published_frames(tmp_path, seed_data):
    """Upstream ALIGNN's default sizes with 4 + 4 layers and hidden 256, on the published Cd28Se17Cl22 POSCARs."""
    from qdgap.core.data.importers import import_trajectory

    traj = import_trajectory([seed_data / "cl_qd" / "structures"], gaps_csv=None)
    paper = {"alignn_layers": 4, "gcn_layers": 4, "edge_input_features": 80, "triplet_input_features": 40}
    paper |= {"embedding_features": 64, "hidden_features": 256}
    ckpt, cfg, net = write_upstream_run(tmp_path / "upstream", model=paper, seed=1)
    result = import_alignn(ckpt, cfg, run_dir=tmp_path / "run_0")
    frames = [0, 24, 49]
    theirs = _upstream_out(net, traj, frames, result.config.graph)
    assert theirs.std() > 10 * TOL_EV
    torch.testing.assert_close(_imported_out(result.run_dir, traj, frames), theirs, rtol=0, atol=TOL_EV)
