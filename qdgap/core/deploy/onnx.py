"""ONNX artifacts: ``model.onnx`` exported from a GapModel, and run with ONNX Runtime behind the common call.

The only module that calls ``torch.export``, ``torch.onnx`` or ``onnxruntime``.
The ONNX graph (opset ``ONNX_OPSET``) takes ``ONNX_INPUTS``: the ``GraphBatch``
tensors, then ``graph_index`` (B,) int64 in place of the integer ``num_graphs``
(ONNX has no integer arguments: only its length is read), then the three FNA
masks, all required (the loader passes ones for a mask the caller leaves out).
Every count (graphs, atoms, bonds, angles) is a dynamic axis. The metadata is
JSON in ``metadata_props`` under ``torchscript.META_NAME``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from qdgap.core.common.errors import QdgapError
from qdgap.core.common.files import atomic_output
from qdgap.core.deploy.torchscript import META_NAME, read_checked

log = logging.getLogger(__name__)

MODEL_ONNX = "model.onnx"
ONNX_OPSET = 18  # >= 16 for ScatterND's reduction attribute
ONNX_INPUTS = (
    "z",  # (n,) int64 atomic numbers
    "edge_src",  # (e,) int64
    "edge_dst",  # (e,) int64
    "bond_len",  # (e,) float32, Å
    "lg_src",  # (t,) int64, bond index
    "lg_dst",  # (t,) int64, bond index
    "angle_cos",  # (t,) float32
    "node_graph",  # (n,) int64, graph of each atom, 0..B-1
    "graph_index",  # (B,) int64; only its length (the number of graphs) is read
    "node_mask",  # (n,) float32, 0 nullifies the atom's input features
    "edge_mask",  # (e,) float32, 0 nullifies the bond's basis features
    "angle_mask",  # (t,) float32, 0 nullifies the angle's basis features
)
ONNX_OUTPUT = "gap_ev"  # (B,) float32, eV
_AXIS_OF_INPUT = {
    "z": "atoms", "node_graph": "atoms", "node_mask": "atoms",
    "edge_src": "bonds", "edge_dst": "bonds", "bond_len": "bonds", "edge_mask": "bonds",
    "lg_src": "angles", "lg_dst": "angles", "angle_cos": "angles", "angle_mask": "angles",
    "graph_index": "graphs",
}  # fmt: skip
ONNX_EXPORTERS = ("auto", "dynamo", "torchscript")
# torch.onnx.export(dynamo=True) with dynamic_shapes and a custom translation table: stable from 2.6.
_TORCH_GE_2_6 = torch.__version__ >= "2.6"
# The TorchScript-based exporter (dynamo=False) is deprecated from 2.9 and may go; it still works on 2.13.
_TORCH_HAS_TS_ONNX = hasattr(torch.onnx, "register_custom_op_symbolic")
_EXPORT_CHECK_TOL_EV = 1e-4  # an export whose ORT output differs more from eager on the example is a bug


class _OnnxGraph(nn.Module):
    """Thin export wrapper: ``GapModel.forward`` with ``num_graphs`` read from ``graph_index``'s length.

    ONNX has tensors only; a length keeps the number of graphs a dynamic axis
    where a 0-d tensor's value would be baked in as a constant by tracing.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(
        self,
        z: Tensor,
        edge_src: Tensor,
        edge_dst: Tensor,
        bond_len: Tensor,
        lg_src: Tensor,
        lg_dst: Tensor,
        angle_cos: Tensor,
        node_graph: Tensor,
        graph_index: Tensor,
        node_mask: Tensor,
        edge_mask: Tensor,
        angle_mask: Tensor,
    ) -> Tensor:
        num_graphs = graph_index.shape[0]
        return self.model(
            z,
            edge_src,
            edge_dst,
            bond_len,
            lg_src,
            lg_dst,
            angle_cos,
            node_graph,
            num_graphs,
            node_mask,
            edge_mask,
            angle_mask,
        )


def _example_inputs() -> tuple[Tensor, ...]:
    """A small two-graph batch to trace with: 5 atoms, 7 bonds, 9 angles (all counts distinct and > 1,
    so no axis is specialised to a constant or tied to another)."""
    g = torch.Generator().manual_seed(0)
    node_graph = torch.tensor([0, 0, 0, 1, 1])
    edge_src = torch.tensor([0, 1, 2, 0, 1, 3, 4])
    edge_dst = torch.tensor([1, 2, 0, 2, 0, 4, 3])
    lg_src = torch.tensor([0, 1, 2, 3, 4, 0, 1, 5, 6])
    lg_dst = torch.tensor([1, 2, 0, 4, 3, 4, 2, 6, 5])
    return (
        torch.tensor([48, 34, 17, 48, 34]),
        edge_src,
        edge_dst,
        1.5 + 2.0 * torch.rand(7, generator=g),
        lg_src,
        lg_dst,
        2.0 * torch.rand(9, generator=g) - 1.0,
        node_graph,
        torch.arange(2),
        torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0]),
        torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0]),
        torch.ones(9),
    )


def resolve_exporter(exporter: str = "auto") -> str:
    """``dynamo`` (``torch.export``-based, torch >= 2.6 with onnxscript) or ``torchscript`` (the legacy
    tracer); ``auto`` takes dynamo where it is available.

    Raises:
        QdgapError: the exporter asked for cannot run with this torch or without the ``onnx`` extra.
    """
    if exporter not in ONNX_EXPORTERS:
        raise QdgapError(f"ONNX exporter must be one of {', '.join(ONNX_EXPORTERS)}, got {exporter!r}")
    if importlib.util.find_spec("onnx") is None:
        raise QdgapError("exporting ONNX needs the onnx package; install the onnx extra: pip install 'qdgap[onnx]'")
    dynamo_ok = _TORCH_GE_2_6 and importlib.util.find_spec("onnxscript") is not None
    if exporter == "dynamo" and not dynamo_ok:
        raise QdgapError(
            f"the dynamo ONNX exporter needs torch >= 2.6 and onnxscript (torch {torch.__version__}); install the onnx extra"
        )
    if exporter == "torchscript" and not _TORCH_HAS_TS_ONNX:
        raise QdgapError(f"torch {torch.__version__} has no TorchScript-based ONNX exporter; use the dynamo one")
    if exporter == "auto":
        if dynamo_ok:
            return "dynamo"
        if not _TORCH_HAS_TS_ONNX:
            raise QdgapError(
                "exporting ONNX needs onnxscript with this torch; install the onnx extra: pip install 'qdgap[onnx]'"
            )
        return "torchscript"
    return exporter


def _export_dynamo(wrapper: nn.Module, example: tuple[Tensor, ...]) -> Any:
    """``torch.export``-based export; returns an ``onnx.ModelProto``.

    ``index_add`` is decomposed to ``index_put(accumulate=True)`` and lands as
    ``ScatterND(reduction="add")``.
    """
    from torch.export import Dim

    dims = {name: Dim(name) for name in sorted(set(_AXIS_OF_INPUT.values()))}
    # A tuple in input order: a dict keyed by input name got its axis names crossed (torch 2.13),
    # which gives ONNX Runtime contradictory shapes.
    dynamic_shapes = tuple({0: dims[_AXIS_OF_INPUT[name]]} for name in ONNX_INPUTS)
    with _quiet_exporter():
        program = torch.onnx.export(
            wrapper,
            example,
            dynamo=True,
            input_names=list(ONNX_INPUTS),
            output_names=[ONNX_OUTPUT],
            dynamic_shapes=dynamic_shapes,
            opset_version=ONNX_OPSET,
            external_data=False,
            verbose=False,
        )
    return program.model_proto


def _export_torchscript_onnx(wrapper: nn.Module, example: tuple[Tensor, ...], tmp: Path) -> Any:
    """The legacy tracer (``dynamo=False``) with ``dynamic_axes``; returns an ``onnx.ModelProto``.

    Its own ``index_add`` symbolic emits ``ScatterElements`` without a reduction
    (duplicate indices overwrite instead of adding: wrong for a scatter-sum),
    so a ``ScatterND(reduction="add")`` symbolic replaces it for the export.
    """
    import onnx
    from torch.onnx import symbolic_helper

    @symbolic_helper.parse_args("v", "i", "v", "v", "v")
    def index_add(g, self, dim, index, source, alpha):  # noqa: ANN001 - torch.onnx's symbolic signature
        if dim != 0:
            raise RuntimeError(f"index_add over dim {dim}: qdgap's ONNX export supports dim 0 only")
        rows = g.op("Unsqueeze", index, g.op("Constant", value_t=torch.tensor([1])))  # (e, 1)
        return g.op("ScatterND", self, rows, source, reduction_s="add")

    dynamic_axes = {name: {0: axis} for name, axis in _AXIS_OF_INPUT.items()}
    dynamic_axes[ONNX_OUTPUT] = {0: "graphs"}
    torch.onnx.register_custom_op_symbolic("aten::index_add", index_add, ONNX_OPSET)
    try:
        with _quiet_exporter():  # its deprecation notice and notes on in-place ops
            torch.onnx.export(
                wrapper,
                example,
                str(tmp),
                dynamo=False,
                input_names=list(ONNX_INPUTS),
                output_names=[ONNX_OUTPUT],
                dynamic_axes=dynamic_axes,
                opset_version=ONNX_OPSET,
            )
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::index_add", ONNX_OPSET)
    return onnx.load(str(tmp))


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Keep the exporters' progress notes and warnings (torchvision absent, axis names shared by
    several inputs, deprecation) off the user's terminal; errors still raise."""
    import warnings

    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for lg in loggers:
                lg.setLevel(logging.ERROR)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def export_onnx(
    model: torch.nn.Module, path: str | Path, *, meta: dict[str, Any] | None = None, exporter: str = "auto"
) -> str:
    """Export ``model`` (a ``GapModel``) to ONNX at ``path`` atomically; return the file's sha256.

    The graph is checked with ``onnx.checker`` and, where onnxruntime is
    installed, run once on a small batch against the eager model before it is
    written. ``meta`` goes into ``metadata_props`` under ``META_NAME``.

    Args:
        model: the model; exported from the CPU in eval mode.
        path: output file.
        meta: what the artifact carries (``train.model_meta``).
        exporter: ``auto``, ``dynamo`` or ``torchscript`` (``resolve_exporter``).

    Raises:
        QdgapError: the onnx extra is missing or the exporter cannot run here.
    """
    which = resolve_exporter(exporter)
    import onnx

    model = model.cpu().eval()
    wrapper = _OnnxGraph(model).eval()
    example = _example_inputs()
    with atomic_output(path, force=True) as tmp:
        with torch.no_grad():
            proto = (
                _export_dynamo(wrapper, example)
                if which == "dynamo"
                else _export_torchscript_onnx(wrapper, example, tmp)
            )
        info = dict(meta or {})
        info.update(
            onnx_opset=ONNX_OPSET, onnx_exporter=which, torch_version=str(torch.__version__), inputs=list(ONNX_INPUTS)
        )
        del proto.metadata_props[:]
        entry = proto.metadata_props.add()
        entry.key, entry.value = META_NAME, json.dumps(info, sort_keys=True)
        proto.producer_name = "qdgap"
        onnx.checker.check_model(proto, full_check=True)
        onnx.save_model(proto, str(tmp))
        _check_against_eager(wrapper, example, tmp, which)
        digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    return digest


def _check_against_eager(wrapper: nn.Module, example: tuple[Tensor, ...], path: Path, which: str) -> None:
    """Run the exported file once (where onnxruntime is installed) and compare with eager."""
    if importlib.util.find_spec("onnxruntime") is None:
        return
    session = _session(path, torch.device("cpu"))
    got = session.run(None, {n: t.numpy() for n, t in zip(ONNX_INPUTS, example, strict=True)})[0]
    with torch.no_grad():
        want = wrapper(*example).numpy()
    err = float(np.abs(got - want).max())
    if not err <= _EXPORT_CHECK_TOL_EV:
        raise RuntimeError(f"{which} ONNX export disagrees with the eager model by {err:.3g} eV on the export example")


# =====================================================================
# ONNX: load and run
# =====================================================================


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise QdgapError(
            f"--backend onnxruntime needs onnxruntime ({exc}); install the onnx extra: pip install 'qdgap[onnx]'"
        ) from None
    return onnxruntime


def _session(path: Path, device: torch.device) -> Any:
    """An ONNX Runtime session on ``device``: CUDA EP for a CUDA device where it is available, else the CPU EP.

    On the CPU the session runs single-threaded: ORT parallelises
    ``ScatterND(reduction="add")`` over index rows without guarding duplicate
    indices (onnxruntime issue 18048), so two threads adding into the same atom
    race and lose updates. ``OnnxModel`` uses the cores by running sub-batches
    concurrently instead.
    """
    ort = _import_ort()
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers = [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
        else:
            log.warning("onnxruntime has no CUDA execution provider here (install onnxruntime-gpu); running on the CPU")
    # Also with the CUDA EP: a node it lacks falls back to the CPU, and must not race there either.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    # Subnormals to zero, as fast_cpu_math does for torch: values below 1e-38 only.
    options.add_session_config_entry("session.set_denormal_as_zero", "1")
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types for a bad file
        raise QdgapError(f"{path}: not an ONNX model onnxruntime can load ({str(exc).splitlines()[0][:120]})") from exc


class OnnxModel:
    """``model.onnx`` in ONNX Runtime behind the common call signature (see ``load_model``).

    On the CPU a batch of B graphs is cut into up to ``workers`` contiguous runs
    of graphs that go through single-threaded sessions at once (ORT releases
    the GIL), which keeps every core busy without ScatterND's race.
    """

    backend = "onnxruntime"

    def __init__(self, session: Any, meta: dict[str, Any], path: Path, device: torch.device, workers: int):
        self.session = session
        self.meta = meta
        self.path = path
        self.device = device
        self.on_cpu = "CUDAExecutionProvider" not in session.get_providers()
        self.workers = max(1, int(workers)) if self.on_cpu else 1
        self._pool = None

    def __call__(
        self,
        z: Tensor,
        edge_src: Tensor,
        edge_dst: Tensor,
        bond_len: Tensor,
        lg_src: Tensor,
        lg_dst: Tensor,
        angle_cos: Tensor,
        node_graph: Tensor,
        num_graphs: int,
        node_mask: Tensor | None = None,
        edge_mask: Tensor | None = None,
        angle_mask: Tensor | None = None,
    ) -> Tensor:
        """(B,) float32 gaps, eV, on the inputs' device."""
        device = z.device

        def arr(t: Tensor, dtype: Any) -> np.ndarray:
            return np.ascontiguousarray(t.detach().cpu().numpy(), dtype=dtype)

        n, e, t = z.shape[0], edge_src.shape[0], lg_src.shape[0]
        feed = {
            "z": arr(z, np.int64),
            "edge_src": arr(edge_src, np.int64),
            "edge_dst": arr(edge_dst, np.int64),
            "bond_len": arr(bond_len, np.float32),
            "lg_src": arr(lg_src, np.int64),
            "lg_dst": arr(lg_dst, np.int64),
            "angle_cos": arr(angle_cos, np.float32),
            "node_graph": arr(node_graph, np.int64),
            "graph_index": np.arange(int(num_graphs), dtype=np.int64),
            "node_mask": np.ones(n, np.float32) if node_mask is None else arr(node_mask, np.float32),
            "edge_mask": np.ones(e, np.float32) if edge_mask is None else arr(edge_mask, np.float32),
            "angle_mask": np.ones(t, np.float32) if angle_mask is None else arr(angle_mask, np.float32),
        }
        parts = _split_by_graph(feed, int(num_graphs), self.workers) if self.workers > 1 else [feed]
        if len(parts) == 1:
            out = self.session.run(None, parts[0])[0]
        else:
            out = np.concatenate(list(self._executor().map(lambda f: self.session.run(None, f)[0], parts)))
        return torch.from_numpy(out).to(device)

    def _executor(self) -> Any:
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="qdgap-ort")
        return self._pool

    def __del__(self) -> None:
        if getattr(self, "_pool", None) is not None:
            self._pool.shutdown(wait=False)


def _split_by_graph(feed: dict[str, np.ndarray], num_graphs: int, parts: int) -> list[dict[str, np.ndarray]]:
    """Cut a batch into up to ``parts`` batches of contiguous graphs, indices renumbered.

    Needs atoms ordered by graph, bonds by their atoms' graph and angles by
    their bonds' graph (as ``gather_frames`` and the FNA kernel build them);
    a batch not so ordered is returned whole.
    """
    parts = min(parts, num_graphs)
    if parts <= 1:
        return [feed]
    node_graph = feed["node_graph"]
    edge_graph = node_graph[feed["edge_src"]] if feed["edge_src"].size else feed["edge_src"]
    angle_graph = edge_graph[feed["lg_src"]] if feed["lg_src"].size else feed["lg_src"]
    if any(a.size > 1 and bool((np.diff(a) < 0).any()) for a in (node_graph, edge_graph, angle_graph)):
        return [feed]
    cuts = np.linspace(0, num_graphs, parts + 1).round().astype(np.int64)  # (parts + 1,) graph boundaries
    node_cut = np.searchsorted(node_graph, cuts)
    edge_cut = np.searchsorted(edge_graph, cuts)
    angle_cut = np.searchsorted(angle_graph, cuts)
    out = []
    for i in range(parts):
        (g0, g1), (n0, n1), (e0, e1), (t0, t1) = (
            cuts[i : i + 2],
            node_cut[i : i + 2],
            edge_cut[i : i + 2],
            angle_cut[i : i + 2],
        )
        out.append(
            {
                "z": feed["z"][n0:n1],
                "edge_src": feed["edge_src"][e0:e1] - n0,
                "edge_dst": feed["edge_dst"][e0:e1] - n0,
                "bond_len": feed["bond_len"][e0:e1],
                "lg_src": feed["lg_src"][t0:t1] - e0,
                "lg_dst": feed["lg_dst"][t0:t1] - e0,
                "angle_cos": feed["angle_cos"][t0:t1],
                "node_graph": node_graph[n0:n1] - g0,
                "graph_index": np.arange(g1 - g0, dtype=np.int64),
                "node_mask": feed["node_mask"][n0:n1],
                "edge_mask": feed["edge_mask"][e0:e1],
                "angle_mask": feed["angle_mask"][t0:t1],
            }
        )
    return out


def load_onnx(
    path: str | Path, *, device: str | torch.device = "cpu", sha256: str | None = None, workers: int | None = None
) -> OnnxModel:
    """Load a ``model.onnx`` into ONNX Runtime, checking its sha256 first when one is given.

    Args:
        path: the file.
        device: where results go, and the CUDA execution provider where it is a CUDA device.
        sha256: the recorded digest; the file is refused if it differs.
        workers: concurrent single-threaded runs on the CPU (default: torch's thread count).

    Raises:
        QdgapError: onnxruntime is missing; the file is missing, altered, or not a qdgap ONNX model.
    """
    path = Path(path)
    _import_ort()
    read_checked(path, sha256)
    dev = torch.device(device)
    session = _session(path, dev)
    names = tuple(i.name for i in session.get_inputs())
    try:
        meta = json.loads(session.get_modelmeta().custom_metadata_map.get(META_NAME, ""))
    except json.JSONDecodeError:
        meta = None
    if names != ONNX_INPUTS or not isinstance(meta, dict):
        raise QdgapError(
            f"{path}: not a qdgap ONNX model (inputs or metadata differ); export it with `qdgap export --format onnx`"
        )
    return OnnxModel(session, meta, path, dev, workers or torch.get_num_threads())
