"""Exported models against the eager one: TorchScript, and ONNX through ONNX Runtime.

The ONNX cases need the ``onnx`` extra (in ``dev``); they skip without it.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from torch import nn

from qdgap.core.common.errors import QdgapError
from qdgap.core.config import PRESETS, GraphConfig
from qdgap.core.deploy import export as ex
from qdgap.core.deploy import onnx as ox
from qdgap.core.deploy import torchscript as tsx
from qdgap.kernels.batch import gather_frames
from qdgap.kernels.fna import fna_masked_gaps

TOL_EV = 1e-5
FRAME_SETS = ([7], [3, 40, 41], list(range(0, 120, 4)))  # 1 graph, a few, 30: none the size of the export example


def _model(preset: str = "tiny") -> nn.Module:
    """A GapModel with non-trivial batch-norm statistics and target scale, so every term matters."""
    from qdgap.core.model.network import GapModel

    torch.manual_seed(3)
    model = GapModel(PRESETS[preset].model)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    model.set_target_stats(1.7, 0.15)
    return model.eval()


def _random_masks(batch, seed: int):
    g = torch.Generator().manual_seed(seed)
    n, e, t = batch.z.numel(), batch.edge_src.numel(), batch.lg_src.numel()
    return tuple((torch.rand(k, generator=g) > 0.15).float() for k in (n, e, t))


@pytest.fixture(scope="module")
def packed(synthetic_traj):
    from qdgap.core.graphs.build import build_graphs

    return build_graphs(synthetic_traj, GraphConfig())


@pytest.fixture(scope="module")
def model():
    return _model()


@pytest.fixture(scope="module", params=["dynamo", "torchscript"])
def onnx_file(request, model, tmp_path_factory):
    """(path, sha256, exporter) of the tiny model exported by each exporter this torch has."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    try:
        ox.resolve_exporter(request.param)
    except QdgapError as exc:
        pytest.skip(str(exc))
    path = tmp_path_factory.mktemp(f"onnx-{request.param}") / "model.onnx"
    sha = ox.export_onnx(model, path, meta={"seed": 3}, exporter=request.param)
    return path, sha, request.param


def test_export_onnx_passes_checker_with_dynamic_axes(onnx_file):
    import onnx

    path, _, exporter = onnx_file
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    dims = {i.name: [d.dim_param for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
    assert tuple(dims) == ox.ONNX_INPUTS
    assert dims["z"] == dims["node_graph"] == dims["node_mask"] == ["atoms"]
    assert dims["edge_src"] == dims["bond_len"] == dims["edge_mask"] == ["bonds"]
    assert dims["lg_src"] == dims["angle_cos"] == dims["angle_mask"] == ["angles"]
    assert dims["graph_index"] == ["graphs"]
    assert [d.dim_param for d in proto.graph.output[0].type.tensor_type.shape.dim] == ["graphs"]
    meta = ox.load_onnx(path).meta
    assert meta["seed"] == 3 and meta["onnx_exporter"] == exporter and meta["onnx_opset"] == ox.ONNX_OPSET


@pytest.mark.parametrize("workers", [1, 3])
def test_export_onnx_matches_eager(onnx_file, model, packed, workers):
    path, sha, _ = onnx_file
    ort_model = ox.load_onnx(path, sha256=sha, workers=workers)
    for i, frames in enumerate(FRAME_SETS):
        batch = gather_frames(packed, torch.tensor(frames))
        masks = _random_masks(batch, i)
        with torch.inference_mode():
            want = model(*batch)
            want_masked = model(*batch, *masks)
        got = ort_model(*batch)
        got_masked = ort_model(*batch, node_mask=masks[0], edge_mask=masks[1], angle_mask=masks[2])
        assert got.shape == (len(frames),) and got.dtype == torch.float32
        torch.testing.assert_close(got, want, atol=TOL_EV, rtol=0)
        torch.testing.assert_close(got_masked, want_masked, atol=TOL_EV, rtol=0)
        assert (want_masked - want).abs().max() > 1e-4  # the masks do change the answer


def test_export_torchscript_matches_eager(model, packed, tmp_path):
    sha = tsx.export_torchscript(model, tmp_path / "model.ts", meta={"seed": 3})
    ts = tsx.TorchScriptModel(tsx.load_torchscript(tmp_path / "model.ts", sha256=sha))
    for i, frames in enumerate(FRAME_SETS):
        batch = gather_frames(packed, torch.tensor(frames))
        masks = _random_masks(batch, i)
        with torch.inference_mode():
            torch.testing.assert_close(ts(*batch), model(*batch), atol=TOL_EV, rtol=0)
            torch.testing.assert_close(ts(*batch, *masks), model(*batch, *masks), atol=TOL_EV, rtol=0)


@pytest.mark.parametrize("mode", ["full", "seed"])
def test_fna_kernel_onnx_matches_torchscript(onnx_file, model, packed, synthetic_traj, tmp_path, mode):
    path, sha, _ = onnx_file
    tsx.export_torchscript(model, tmp_path / "model.ts", meta={})
    ts = tsx.TorchScriptModel(tsx.load_torchscript(tmp_path / "model.ts"))
    ort_model = ox.load_onnx(path, sha256=sha, workers=2)
    # model.ts takes the kernel's shared-embedding path, ONNX Runtime the masked-input path.
    assert hasattr(ts, "embed") and not hasattr(ort_model, "embed")
    base = gather_frames(packed, torch.tensor([0, 33, 90]))
    n = synthetic_traj.num_atoms
    want = fna_masked_gaps(ts, base, num_atoms=n, mode=mode, chunk_size=10)
    got = fna_masked_gaps(ort_model, base, num_atoms=n, mode=mode, chunk_size=10)
    assert got.shape == (3, n + 1)
    torch.testing.assert_close(got, want, atol=TOL_EV, rtol=0)
    assert (want[:, 1:] - want[:, :1]).abs().max() > 1e-4


def test_split_by_graph_renumbers_and_keeps_order(packed):
    batch = gather_frames(packed, torch.tensor([5, 6, 7, 8, 9]))
    feed = {
        "z": batch.z.numpy(), "edge_src": batch.edge_src.numpy(), "edge_dst": batch.edge_dst.numpy(),
        "bond_len": batch.bond_len.numpy(), "lg_src": batch.lg_src.numpy(), "lg_dst": batch.lg_dst.numpy(),
        "angle_cos": batch.angle_cos.numpy(), "node_graph": batch.node_graph.numpy(), "graph_index": np.arange(5),
        "node_mask": np.ones(batch.z.numel(), np.float32), "edge_mask": np.ones(batch.edge_src.numel(), np.float32),
        "angle_mask": np.ones(batch.lg_src.numel(), np.float32),
    }  # fmt: skip
    parts = ox._split_by_graph(feed, 5, 2)
    assert [len(p["graph_index"]) for p in parts] == [2, 3]
    for frames, part in zip(([5, 6], [7, 8, 9]), parts, strict=True):
        alone = gather_frames(packed, torch.tensor(frames))
        for name, value in zip(ox.ONNX_INPUTS[:8], alone[:8], strict=True):
            np.testing.assert_array_equal(part[name], value.numpy(), err_msg=name)
    shuffled = dict(feed, node_graph=feed["node_graph"][::-1].copy())
    assert len(ox._split_by_graph(shuffled, 5, 2)) == 1  # not ordered by graph: run whole


def test_load_onnx_refuses_altered_file(onnx_file, tmp_path):
    path, sha, _ = onnx_file
    copy = tmp_path / "model.onnx"
    shutil.copy(path, copy)
    with copy.open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(QdgapError, match="sha256 differs"):
        ox.load_onnx(copy, sha256=sha)


def test_load_model_exports_onnx_on_demand_and_when_stale(tiny_runs, tmp_path):
    pytest.importorskip("onnxruntime")
    from qdgap.core.store import runs as rf

    runs = tmp_path / "runs"
    shutil.copytree(tiny_runs, runs)
    member = rf.load_member(runs / "run_0")
    model = ex.load_model(member, backend="onnxruntime")
    record = rf.read_json(runs / "run_0" / ex.ONNX_RECORD)
    assert record["source_model_sha256"] == member.model_sha256
    assert model.backend == "onnxruntime" and model.meta["seed"] == 0
    mtime = (runs / "run_0" / ox.MODEL_ONNX).stat().st_mtime_ns
    ex.load_model(member, backend="onnxruntime")  # cached: not exported again
    assert (runs / "run_0" / ox.MODEL_ONNX).stat().st_mtime_ns == mtime
    # model.ts re-exported with other bytes: model.onnx is stale and is exported again
    rf.write_json(runs / "run_0" / ex.ONNX_RECORD, {**record, "source_model_sha256": "0" * 64})
    ex.load_model(member, backend="onnxruntime")
    record = rf.read_json(runs / "run_0" / ex.ONNX_RECORD)
    assert record["source_model_sha256"] == member.model_sha256


def test_check_backend_without_onnxruntime_says_install_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name == "onnxruntime" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(QdgapError, match=r"install the onnx extra"):
        ex.check_backend("onnxruntime")
    with pytest.raises(QdgapError, match="--backend must be one of torchscript, onnxruntime"):
        ex.check_backend("tensorrt")
    assert ex.check_backend(None) == ex.DEFAULT_BACKEND
