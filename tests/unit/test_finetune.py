"""Fine-tuning (core.finetune): frozen means frozen, parameter counts, resume, refusals, the report."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from qdgap.core.common.errors import Interrupted, QdgapError
from qdgap.core.config import PRESETS
from qdgap.core.data.splits import split_frames
from qdgap.core.deploy.checkpoint import load_weights
from qdgap.core.model.network import GapModel
from qdgap.core.store import runs as rf
from qdgap.core.store.runs import Member
from qdgap.core.workflow import finetune as ft
from qdgap.core.workflow import transfer as tr

EXT_FRAMES = 60
EXT_SEED = 7  # another stretch of motion of the same cluster as ``synthetic_h5`` (seed 0)


@pytest.fixture(scope="module")
def ext_traj():
    from qdgap.testing.synthetic import synthetic_trajectory

    return synthetic_trajectory(EXT_FRAMES, seed=EXT_SEED)


@pytest.fixture(scope="module")
def ext_h5(tmp_path_factory, ext_traj) -> Path:
    from qdgap.core.data.trajectory import write_trajectory

    path = tmp_path_factory.mktemp("ext") / "ext.h5"
    write_trajectory(ext_traj, path)
    return path


@pytest.fixture(scope="module")
def ext(ext_h5):
    from qdgap.core.data.trajectory import read_trajectory

    return read_trajectory(ext_h5)  # with its file's sha256, as the CLI reads it


def _member(tiny_runs, seed=0) -> Member:
    return rf.load_member(rf.run_dir(tiny_runs, seed))


def _fake_member(config, numbers, path=Path("nowhere")) -> Member:
    record = {"data": {"numbers": np.asarray(numbers).tolist(), "sha256": "0" * 64, "path": ""}}
    return Member(seed=0, path=path, config=config, record=record, split={}, model_sha256="")


# --------------------------------------------------------------------------
# Frozen means frozen
# --------------------------------------------------------------------------


def test_finetune_frozen_parameters_bitwise_equal(tmp_path, tiny_runs, ext):
    """Embeddings and block 1 (LayerNorms included) stay bit for bit, even under AdamW weight decay;
    frozen parameters are not in the optimiser at all; the rest trains."""
    member = _member(tiny_runs)
    # A strong weight decay: if frozen tensors reached AdamW it would shrink them.
    member = replace(member, config=replace(member.config, train=replace(member.config.train, weight_decay=0.5)))
    settings = ft.FinetuneSettings(freeze_blocks=1, epochs=3, learning_rate=1e-2, stride=2)
    before = load_weights(member.path / rf.BEST_PT)
    result = ft.finetune_member(ext, member, settings, runs=tiny_runs, output=tmp_path / "ft", device="cpu")
    run = rf.run_dir(tmp_path / "ft", 0)
    after_best = load_weights(run / rf.BEST_PT)
    after_last = torch.load(run / rf.CHECKPOINT_PT, weights_only=True)

    model = GapModel(member.config.model)
    frozen = set(model.freeze(blocks=1, embeddings=True))
    norms = {n for n in frozen if ".bn_" in n or ".layer.1." in n}  # LayerNorms of blocks and embedding MLPs
    assert {"alignn_layers.0.node_update.bn_nodes.weight", "alignn_layers.0.edge_update.bn_edges.bias"} <= norms
    assert any(n.startswith("atom_embedding.") for n in norms)
    buffers = {n for n, _ in model.named_buffers()}
    for state in (after_best, after_last["model"]):
        for name in frozen | buffers:
            assert torch.equal(state[name], before[name]), name
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(
        not n.startswith(("alignn_layers.0.", "atom_embedding.", "edge_embedding.", "angle_embedding."))
        for n in trainable
    )
    assert any(not torch.equal(after_last["model"][n], before[n]) for n in trainable)
    assert not torch.equal(after_last["model"]["fc.weight"], before["fc.weight"])
    # The optimiser holds exactly the trainable tensors.
    groups = after_last["optimizer"]["param_groups"]
    assert sum(len(g["params"]) for g in groups) == len(trainable)
    assert len(after_last["optimizer"]["state"]) <= len(trainable)  # (the last layer's bond outputs feed nothing)
    done = json.loads((run / rf.DONE).read_text())
    n_frozen = sum(p.numel() for n, p in model.named_parameters() if n in frozen)
    assert (done["frozen_params"], done["trainable_params"]) == (n_frozen, result.trainable_params)
    assert done["trainable_params"] + done["frozen_params"] == sum(p.numel() for p in model.parameters())
    record = json.loads((run / rf.CONFIG_JSON).read_text())
    assert record["finetune"] == {"from": str(member.path.resolve()), "freeze_blocks": 1, "freeze_embeddings": True}
    assert record["train"]["learning_rate"] == 1e-2 and record["train"]["epochs"] == 3
    assert record["data"]["sha256"] == ext.sha256
    # The target scaling is the pretrained member's, not re-fitted to the extension.
    assert torch.equal(after_best["target_mean"], before["target_mean"])


def test_finetune_splits_extension_with_member_seed(tmp_path, tiny_runs, ext):
    settings = ft.FinetuneSettings(freeze_blocks=1, epochs=1, stride=3)
    ft.finetune_member(ext, _member(tiny_runs, 1), settings, runs=tiny_runs, output=tmp_path, device="cpu")
    split = json.loads((rf.run_dir(tmp_path, 1) / rf.SPLIT_JSON).read_text())
    assert split == split_frames(ext.gap_ev, seed=1, stride=3).to_json()


def test_finetune_without_frozen_embeddings_trains_them(tmp_path, tiny_runs, ext):
    member = _member(tiny_runs)
    settings = ft.FinetuneSettings(freeze_blocks=0, freeze_embeddings=False, epochs=2, learning_rate=1e-2, stride=2)
    result = ft.finetune_member(ext, member, settings, runs=tiny_runs, output=tmp_path, device="cpu")
    assert result.frozen_params == 0
    after = torch.load(rf.run_dir(tmp_path, 0) / rf.CHECKPOINT_PT, weights_only=True)["model"]
    before = load_weights(member.path / rf.BEST_PT)
    assert not torch.equal(after["atom_embedding.layer.0.weight"], before["atom_embedding.layer.0.weight"])


# --------------------------------------------------------------------------
# Parameter counts and K
# --------------------------------------------------------------------------


def test_finetune_trainable_counts_paper_model_k0_to_k4():
    config = PRESETS["paper"]
    model = GapModel(config.model)
    total = sum(p.numel() for p in model.parameters())
    emb = sum(
        p.numel()
        for n, p in model.named_parameters()
        if n.split(".")[0] in ("atom_embedding", "edge_embedding", "angle_embedding")
    )
    block = sum(p.numel() for p in model.alignn_layers[0].parameters())
    assert config.model.alignn_layers == 4
    counts = [ft.parameter_counts(config, ft.FinetuneSettings(freeze_blocks=k)) for k in range(5)]
    for k, c in enumerate(counts):
        assert c.frozen == emb + k * block, k
        assert c.trainable == total - emb - k * block, k
    assert (
        ft.parameter_counts(config, ft.FinetuneSettings(freeze_blocks=2, freeze_embeddings=False)).frozen == 2 * block
    )
    assert ft.parameter_counts(config, ft.FinetuneSettings()) == counts[3]  # default K = 3 on the paper model


def test_finetune_default_k_leaves_last_block_training():
    assert [ft.default_freeze_blocks(n) for n in (1, 2, 3, 4, 6)] == [0, 1, 2, 3, 3]


def test_finetune_refuses_k_above_blocks(ext):
    paper = _fake_member(PRESETS["paper"], ext.numbers)
    ft.check_members([paper], ext, ft.FinetuneSettings(freeze_blocks=4))
    with pytest.raises(QdgapError, match="--freeze-blocks 5: the model of .* has only 4 ALIGNN block"):
        ft.check_members([paper], ext, ft.FinetuneSettings(freeze_blocks=5))


# --------------------------------------------------------------------------
# Resume
# --------------------------------------------------------------------------


def test_finetune_resume_after_interruption_gives_same_weights(tmp_path, tiny_runs, ext):
    member = _member(tiny_runs)
    settings = ft.FinetuneSettings(freeze_blocks=1, epochs=3, learning_rate=1e-2, stride=2)
    ft.finetune_member(ext, member, settings, runs=tiny_runs, output=tmp_path / "straight", device="cpu")
    n_train = len(split_frames(ext.gap_ev, seed=0, stride=2).train)
    per_epoch = -(-n_train // member.config.train.batch_size)
    assert per_epoch >= 2
    calls = {"n": 0}

    def stop_mid_second_epoch():
        calls["n"] += 1
        return calls["n"] == per_epoch + 2  # polled after each batch and once after each epoch

    with pytest.raises(Interrupted, match="stopped during epoch 2"):
        ft.finetune_member(
            ext,
            member,
            settings,
            runs=tiny_runs,
            output=tmp_path / "resumed",
            device="cpu",
            should_stop=stop_mid_second_epoch,
        )
    run = rf.run_dir(tmp_path / "resumed", 0)
    assert rf.member_state(run) == "interrupted"
    result = ft.finetune_member(ext, member, settings, runs=tiny_runs, output=tmp_path / "resumed", device="cpu")
    assert result.resumed_from_epoch == 1 and result.epochs_run == 3
    wa, wb = load_weights(rf.run_dir(tmp_path / "straight", 0) / rf.BEST_PT), load_weights(run / rf.BEST_PT)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # An interrupted member is resumed only with the same freezing.
    with pytest.raises(Interrupted):
        ft.finetune_member(
            ext, member, settings, runs=tiny_runs, output=tmp_path / "x", device="cpu", should_stop=lambda: True
        )
    with pytest.raises(QdgapError, match="another finetune setting"):
        ft.finetune_member(
            ext, member, replace(settings, freeze_blocks=0), runs=tiny_runs, output=tmp_path / "x", device="cpu"
        )


# --------------------------------------------------------------------------
# Refusals
# --------------------------------------------------------------------------


def test_finetune_refuses_other_composition(tiny_runs):
    from qdgap.testing.synthetic import small_cdse_cluster, synthetic_trajectory

    other = synthetic_trajectory(20, base=small_cdse_cluster(radius_ang=5.5), seed=1)
    with pytest.raises(QdgapError, match="trained on Cd4Se13 .*, the data is"):
        ft.check_members(ft.finished_members(tiny_runs), other, ft.FinetuneSettings(freeze_blocks=1))


def test_finetune_refuses_other_feature_size(tmp_path, tiny_runs, ext):
    run = tmp_path / "run_0"
    shutil.copytree(rf.run_dir(tiny_runs, 0), run)
    record = json.loads((run / rf.CONFIG_JSON).read_text())
    record["model"]["atom_input_features"] = 93
    (run / rf.CONFIG_JSON).write_text(json.dumps(record))
    member = rf.load_member(run)
    with pytest.raises(QdgapError, match="93 cgcnn features per atom.*feature size mismatch"):
        ft.check_members([member], ext, ft.FinetuneSettings(freeze_blocks=1))
    with pytest.raises(
        QdgapError,
        match=r"best.pt: weights do not fit .*atom_embedding.layer.0.weight is \(16, 92\), the config says \(16, 93\)",
    ):
        ft.load_pretrained(member)


def test_finetune_refuses_runs_without_finished_members(tmp_path, tiny_runs):
    with pytest.raises(QdgapError, match="no such runs folder"):
        ft.finished_members(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(QdgapError, match="no ensemble members"):
        ft.finished_members(tmp_path / "empty")
    (tmp_path / "started" / "run_3").mkdir(parents=True)
    (tmp_path / "started" / "run_3" / rf.CONFIG_JSON).write_text("{}")
    with pytest.raises(QdgapError, match="1 member\\(s\\), none finished"):
        ft.finished_members(tmp_path / "started")
    with pytest.raises(QdgapError, match="no finished member with seed 5 \\(finished: 0, 1\\)"):
        ft.finished_members(tiny_runs, seeds=[5])
    assert [m.seed for m in ft.finished_members(tiny_runs, seeds=[1])] == [1]


def test_finetune_settings_refuse_bad_values():
    for kwargs, message in [
        ({"epochs": -1}, "--epochs must be >= 0"),
        ({"freeze_blocks": -1}, "--freeze-blocks must be >= 0"),
        ({"learning_rate": 0.0}, "--lr must be positive"),
        ({"learning_rate": float("nan")}, "--lr must be positive"),
        ({"patience": 0}, "--patience must be positive"),
        ({"stride": 0}, "--stride must be positive"),
        ({"batch_size": 0}, "--batch-size must be positive"),
    ]:
        with pytest.raises(QdgapError, match=message):
            ft.FinetuneSettings(**kwargs)


def test_finetune_refuses_stride_leaving_nothing_to_score(tiny_runs, ext):
    with pytest.raises(QdgapError, match="--stride 1: every labelled frame"):
        tr.check_scorable(ext, ft.FinetuneSettings(stride=1), ft.finished_members(tiny_runs))


# --------------------------------------------------------------------------
# Configs, paths and the Slurm task
# --------------------------------------------------------------------------


def test_finetune_configs_and_paths():
    demo = PRESETS["demo"]
    s = ft.FinetuneSettings(epochs=7, learning_rate=2e-4, stride=5)
    f, sc = ft.finetune_config(demo, s), ft.scratch_config(demo, s)
    assert (f.train.epochs, f.train.learning_rate, f.train.stride, f.train.patience) == (
        7,
        2e-4,
        5,
        demo.train.patience,
    )
    assert (sc.train.epochs, sc.train.learning_rate, sc.train.stride) == (7, demo.train.learning_rate, 5)
    assert f.model == demo.model and sc.model == demo.model and f.train.batch_size == demo.train.batch_size
    assert (
        ft.finetune_config(demo, ft.FinetuneSettings()).train.learning_rate == demo.train.learning_rate
    )  # the default
    p = ft.output_paths(Path("work/runs_ft"))
    assert (p.scratch, p.report_csv, p.report_json) == (
        Path("work/runs_scratch"),
        Path("work/finetune_report.csv"),
        Path("work/finetune_report.json"),
    )
    assert ft.output_paths(Path("work/runs_ft"), report=Path("k2.csv")).report_json == Path("k2.json")
    with pytest.raises(QdgapError, match="expected a .csv"):
        ft.output_paths(Path("runs_ft"), report=Path("report.txt"))


def test_finetune_argv_round_trips_through_the_cli():
    """The argv an array task runs parses back to the same settings."""
    import typer

    from qdgap.cli.app import app

    s = ft.FinetuneSettings(
        freeze_blocks=2, freeze_embeddings=False, epochs=9, learning_rate=3e-4, patience=4, stride=6
    )
    argv = ft.finetune_argv(3, runs=Path("runs"), data=Path("ext.h5"), output=Path("runs_ft"), settings=s, device="cpu")
    assert argv[:4] == ["--quiet", "finetune", "--seed", "3"]
    ctx = typer.main.get_command(app).make_context("qdgap", list(argv), resilient_parsing=True)
    sub = ctx.command.get_command(ctx, "finetune")
    params = sub.make_context("finetune", argv[2:]).params
    assert (params["seed"], params["freeze_blocks"], params["freeze_embeddings"], params["epochs"]) == (3, 2, False, 9)
    assert (params["lr"], params["patience"], params["stride"], params["batch_size"]) == (3e-4, 4, 6, None)
    assert Path(params["runs"]).is_absolute() and Path(params["output"]).is_absolute()
    plain = ft.finetune_argv(
        0, runs=Path("r"), data=Path("d.h5"), output=Path("o"), settings=ft.FinetuneSettings(), device="auto"
    )
    assert "--lr" not in plain and "--freeze-blocks" not in plain  # defaults resolve the same way in the task


def test_scratch_overrides_rebuild_scratch_config(tiny_runs):
    from qdgap.core.config import resolve_config

    member = _member(tiny_runs)
    s = ft.FinetuneSettings(epochs=5, stride=4)
    preset, overrides = ft.scratch_train_overrides(member, s)
    assert preset == "tiny"
    renamed = {("learning_rate" if k == "lr" else k): v for k, v in overrides.items()}
    assert resolve_config(preset, **renamed) == ft.scratch_config(member.config, s)
    custom = replace(member, config=replace(member.config, model=replace(member.config.model, hidden_features=12)))
    with pytest.raises(QdgapError, match="not those of a preset.*--no-baselines"):
        ft.scratch_train_overrides(custom, s)
    # a member trained with --graph knn12: the task trains the baseline on the same graphs
    from qdgap.core.config import GRAPHS

    knn = replace(member, config=replace(member.config, graph=GRAPHS["knn12"]))
    preset, overrides = ft.scratch_train_overrides(knn, s)
    assert overrides["graph"] == "knn12"
    renamed = {("learning_rate" if k == "lr" else k): v for k, v in overrides.items()}
    assert resolve_config(preset, **renamed) == ft.scratch_config(knn.config, s)
    # a sparse-preset member (gap + band edges): its baseline, like its fine-tune, learns the gap alone
    from qdgap.core.config import PRESETS

    sparse = replace(member, config=replace(PRESETS["sparse"], train=replace(PRESETS["sparse"].train, stride=2)))
    preset, overrides = ft.scratch_train_overrides(sparse, s)
    assert (preset, overrides["targets"]) == ("sparse", "gap")
    renamed = {("learning_rate" if k == "lr" else k): v for k, v in overrides.items()}
    assert resolve_config(preset, **renamed) == ft.scratch_config(sparse.config, s)
    assert ft.scratch_config(sparse.config, s).train.targets == ("gap",)


# --------------------------------------------------------------------------
# The comparison
# --------------------------------------------------------------------------


def test_finetune_report_rows(tmp_path, tiny_runs, ext, ext_h5):
    settings = ft.FinetuneSettings(freeze_blocks=1, epochs=2, stride=3)
    members = ft.finished_members(tiny_runs)
    paths = ft.output_paths(tmp_path / "runs_ft")
    ft.finetune_local(ext_h5, members, settings, runs=tiny_runs, output=paths.finetuned, jobs=1, device="cpu")
    ft.scratch_local(ext_h5, members, settings, output=paths.scratch, jobs=1, device="cpu")
    finetuned = [rf.load_member(rf.run_dir(paths.finetuned, s)) for s in (0, 1)]
    scratch = [rf.load_member(rf.run_dir(paths.scratch, s)) for s in (0, 1)]
    assert all(m.record.get("finetune") is None and m.config.train.epochs == 2 for m in scratch)
    assert scratch[0].config.train.learning_rate == members[0].config.train.learning_rate
    rows = tr.compare(
        ext,
        finetuned=finetuned,
        pretrained=members,
        scratch=scratch,
        paths=paths,
        pretrained_runs=tiny_runs,
        device="cpu",
    )
    pool = np.arange(0, EXT_FRAMES, 3)
    assert [r.model for r in rows] == list(tr.REPORT_MODELS) + list(tr.BASELINE_ROWS)
    for r in rows:
        assert r.n_frames == EXT_FRAMES - len(pool)
        assert r.rmse_mev >= r.mae_mev > 0
    for r in rows[:3]:
        assert r.seeds == [0, 1] and len(r.member_rmse_mev) == 2
    # the baseline rows, recomputed here from the union of the fine-tuned members' train splits
    from qdgap.core.common.metrics import rmse_mev

    train = np.unique(np.concatenate([m.split["train"] for m in finetuned]))
    scored = np.setdiff1d(np.arange(EXT_FRAMES), pool)
    y = ext.gap_ev[scored].astype(np.float64)
    interp = np.interp(ext.time_fs[scored], ext.time_fs[train], ext.gap_ev[train].astype(np.float64))
    by_name = {r.model: r for r in rows}
    assert by_name["interpolation"].rmse_mev == pytest.approx(rmse_mev(interp - y), rel=1e-9)
    assert by_name["labels_mean"].rmse_mev == pytest.approx(rmse_mev(ext.gap_ev[train].mean() - y), rel=1e-5)
    assert by_name["finetuned"].finetuned_skill == 0.0
    assert np.isnan(rows[0].wall_s) and rows[1].wall_s > 0 and rows[2].wall_s > 0
    assert rows[1].member_epochs == [2, 2]
    tr.write_report(
        rows,
        paths,
        traj=ext,
        data_path=ext_h5,
        settings=settings,
        counts=ft.parameter_counts(members[0].config, settings),
    )
    lines = paths.report_csv.read_text().splitlines()
    assert lines[0] == ",".join(tr.REPORT_COLUMNS)
    assert lines[1].startswith("pretrained,") and lines[1].split(",")[3] == ""  # no training: blank wall time
    record = json.loads(paths.report_json.read_text())
    assert [r["model"] for r in record["rows"]] == list(tr.REPORT_MODELS) + list(tr.BASELINE_ROWS)
    assert record["rows"][0]["wall_s"] is None and record["parameters"]["frozen"] > 0
    assert record["data"]["sha256"] == ext.sha256
