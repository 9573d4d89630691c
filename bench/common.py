"""Shared pieces of the side-by-side benchmarks: timing, the case runner, the matmul ceiling, FLOPs, tables.

Every measurement runs as one *case* in a fresh Python process
(``python bench/bench_<thing>.py --case NAME --preset P --out result.json``),
so peak memory is that case's alone and one side's thread pools, caches or
flush-to-zero setting never leak into the other's. A case returns rows; each
row carries its throughput and the peak resident memory above the baseline
taken after imports.

These are benchmarks, not tests: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
OUT_DIR = BENCH_DIR / "_out"  # raw per-case JSON and logs (git-ignored)
DEMO_DATA = REPO / "data" / "cd28se17cl22_demo.h5"
BOX_ANG = 22.0  # cubic box the published POSCARs put the cluster in; upstream's builder needs a cell
PRESET_NAMES = ("demo", "paper")
CASE_TIMEOUT_S = 900

if str(REPO) not in sys.path:  # run as `python bench/bench_x.py` from anywhere
    sys.path.insert(0, str(REPO))


# ==========================================================================
# Machine and threads
# ==========================================================================


def usable_cores() -> int:
    """Cores this process may run on (taskset/Slurm limits included)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def setup_torch(threads: int, device: str) -> torch.device:
    """Same thread count for both sides; returns the torch device."""
    torch.set_num_threads(threads)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch sees no CUDA device")
    return dev


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_idle_fraction(seconds: float = 1.0) -> float | None:
    """Fraction of all CPUs' time spent idle over the next ``seconds`` (Linux ``/proc/stat``; None elsewhere).

    Unlike the load average, which trails by minutes and counts the benchmark's own threads,
    this says whether something else is using the cores right before a run.
    """

    def sample() -> tuple[int, int] | None:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        except (OSError, ValueError, IndexError):
            return None
        return sum(fields), fields[3] + (fields[4] if len(fields) > 4 else 0)  # total, idle + iowait

    a = sample()
    time.sleep(seconds)
    b = sample()
    if a is None or b is None or b[0] == a[0]:
        return None
    return (b[1] - a[1]) / (b[0] - a[0])


def machine_info(threads: int, device: str) -> dict[str, Any]:
    import alignn

    info: dict[str, Any] = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cores": usable_cores(),
        "threads": threads,
        "device": device,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "alignn": getattr(alignn, "__version__", "?"),
        "numpy": np.__version__,
        "load_avg_1_5_15": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "cpu_idle_start": cpu_idle_fraction(),
    }
    try:
        from qdgap import __version__ as qv

        info["qdgap"] = qv
    except Exception:  # noqa: BLE001 - informational only
        info["qdgap"] = "?"
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
        )
        info["git"] = rev.stdout.strip() + (" (+ uncommitted changes)" if dirty.stdout.strip() else "")
    except OSError:
        info["git"] = "?"
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# ==========================================================================
# Timing
# ==========================================================================


@dataclass(frozen=True)
class Timing:
    """Seconds of each timed repeat (after warm-up)."""

    seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def worst(self) -> float:
        return max(self.seconds)


def time_calls(fn: Callable[[], Any], *, warmup: int, repeats: int, device: torch.device) -> Timing:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times, each timed alone.

    Each timed call is bracketed by device synchronisation (CUDA) and read
    with ``time.perf_counter``.
    """
    for _ in range(warmup):
        fn()
    sync(device)
    seconds = []
    for _ in range(max(1, repeats)):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        seconds.append(time.perf_counter() - t0)
    return Timing(seconds)


def rate_stats(items: float, timing: Timing) -> dict[str, float]:
    """Throughput (items/s) from a timing: median, and the slowest and fastest repeat."""
    return {
        "rate": items / timing.median,
        "rate_min": items / timing.worst,
        "rate_max": items / timing.best,
        "seconds_median": timing.median,
        "repeats": len(timing.seconds),
    }


# ==========================================================================
# Peak memory
# ==========================================================================


def _maxrss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kb / 1024.0 if sys.platform != "darwin" else kb / 1024.0 / 1024.0


def _rss_mb() -> float | None:
    """Current resident memory (VmRSS), MB; None where /proc is unavailable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset this process's peak-RSS mark (Linux >= 4.0: ``clear_refs`` 5); ``ru_maxrss`` follows it."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class MemoryProbe:
    """Peak memory of each measured step, above the resident memory after imports.

    The baseline is the resident set after the script's imports. On Linux the
    peak mark is reset there and after every ``mark()``, so each reading
    (``ru_maxrss`` minus the baseline) is the peak reached during that step
    alone, whatever ran before it. Where the mark cannot be reset, ``ru_maxrss``
    is a high-water mark of the whole process, so steps must run in
    increasing-memory order (batch 1 before batch 64) for each reading to be
    their own. On CUDA the device peak (``max_memory_allocated``) is read and
    reset per step as well.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.resettable = _reset_peak()
        rss = _rss_mb() if self.resettable else None
        self.baseline_mb = rss if rss is not None else _maxrss_mb()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def reset(self) -> None:
        """Forget the peak reached so far (setup: exports, graph building), where the mark can be reset."""
        if self.resettable:
            _reset_peak()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def mark(self) -> dict[str, float]:
        out = {"peak_rss_mb": max(0.0, _maxrss_mb() - self.baseline_mb)}
        if self.device.type == "cuda":
            out["peak_cuda_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
            torch.cuda.reset_peak_memory_stats(self.device)
        if self.resettable:
            _reset_peak()
        return out


# ==========================================================================
# FLOPs and the matmul ceiling
# ==========================================================================


def count_flops(fn: Callable[[], Any]) -> int:
    """Floating-point operations ``fn`` issues, as ``torch.utils.flop_counter.FlopCounterMode`` counts them.

    FlopCounterMode counts matrix products (mm, addmm, bmm, convolutions and
    their backward), 2 FLOPs per multiply-add; element-wise work (activations,
    norms, gathers, scatters, the radial basis) is not counted. For ALIGNN the
    matrix products are the bulk of the arithmetic, so this is what a
    matmul-bound run can reach.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_gflops(
    m: int, k: int, n: int, *, device: torch.device, min_seconds: float = 0.25, repeats: int = 5
) -> dict[str, float]:
    """float32 ``(m, k) @ (k, n)`` throughput in GFLOP/s (2mkn per product), best and median of ``repeats``."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=gen).to(device)
    b = torch.randn(k, n, generator=gen).to(device)
    out = torch.empty(m, n, device=device)
    flops = 2.0 * m * k * n
    for _ in range(3):
        torch.mm(a, b, out=out)
    sync(device)
    t0 = time.perf_counter()
    torch.mm(a, b, out=out)
    sync(device)
    one = max(time.perf_counter() - t0, 1e-6)
    calls = max(1, int(min_seconds / one))
    rates = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(calls):
            torch.mm(a, b, out=out)
        sync(device)
        rates.append(flops * calls / (time.perf_counter() - t0) / 1e9)
    return {
        "gflops_best": max(rates),
        "gflops_median": statistics.median(rates),
        "calls_per_repeat": calls,
    }


# ==========================================================================
# Data, graphs and models shared by the benchmarks
# ==========================================================================


def load_demo():
    """The bundled demo trajectory (1,001 frames of Cd28Se17Cl22, an isolated cluster)."""
    from qdgap.core.data.trajectory import read_trajectory

    return read_trajectory(DEMO_DATA)


def boxed(traj, box: float = BOX_ANG):
    """The cluster centred in a cubic ``box`` Å cell with PBC, as the published POSCARs hold it.

    At 22 Å no periodic image comes within the 5 Å cutoff, so the graphs
    equal the isolated cluster's; upstream's builder needs a cell.
    """
    from qdgap.core.data.trajectory import make_trajectory

    pos = traj.positions_ang - traj.positions_ang.mean(axis=(0, 1)) + box / 2
    return make_trajectory(
        traj.numbers,
        pos,
        time_fs=traj.time_fs,
        gap_ev=traj.gap_ev,
        cell_ang=np.eye(3) * box,
        pbc=[True] * 3,
    )


def jarvis_atoms(traj, f: int):
    """Frame ``f`` as a jarvis-tools ``Atoms`` (what upstream's builders and data pipeline take)."""
    from ase.data import chemical_symbols
    from jarvis.core.atoms import Atoms as JarvisAtoms

    return JarvisAtoms(
        lattice_mat=traj.frame_cells()[f],
        coords=traj.positions_ang[f].astype(np.float64),
        elements=[chemical_symbols[int(z)] for z in traj.numbers],
        cartesian=True,
    )


def upstream_graph(atoms, graph_config):
    """Upstream's pure-torch (g, lg) for one structure, with the workflow's builder parameters."""
    from alignn.torch_graph_builder import build_pure_torch_graph

    return build_pure_torch_graph(
        atoms,
        two_body_cutoff=graph_config.cutoff_ang,
        three_body_cutoff=graph_config.three_body_cutoff_ang,
        max_neighbors=graph_config.max_neighbors,
        use_matscipy_topology=False,
    )


def run_config(preset: str):
    from qdgap.core.config import PRESETS

    return PRESETS[preset]


def gap_model(preset: str, *, seed: int = 0):
    """qdgap's ``GapModel`` of the preset's size, deterministic random weights (the same in every process), eval mode."""
    from qdgap.core.model.network import GapModel

    torch.manual_seed(seed)
    model = GapModel(run_config(preset).model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # move off the symmetric initial weights so outputs differ per frame
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    model.set_target_stats(2.0, 0.3)
    return model.eval()


def upstream_model(model, preset: str, **overrides):
    """Upstream ``ALIGNNAtomWisePure`` built from the run config's ``model`` section, holding ``model``'s weights."""
    from alignn.models.alignn_atomwise_pure import ALIGNNAtomWisePure, ALIGNNAtomWisePureConfig

    from qdgap.core.model.network import upstream_state_dict

    section = {**run_config(preset).to_json()["model"], **overrides}
    up = ALIGNNAtomWisePure(ALIGNNAtomWisePureConfig(**section))
    up.load_state_dict(upstream_state_dict(model), strict=True)
    return up.eval()


def spaced_frames(num_frames: int, count: int) -> np.ndarray:
    """``count`` frame indices spread evenly over the trajectory."""
    return np.linspace(0, num_frames - 1, count).round().astype(np.int64)


# ==========================================================================
# The case runner: one measurement per fresh process
# ==========================================================================


@dataclass(frozen=True)
class CaseArgs:
    case: str
    preset: str
    quick: bool
    device: torch.device
    threads: int
    probe: MemoryProbe
    tmp: Path


def case_main(cases: dict[str, Callable[[CaseArgs], dict[str, Any]]]) -> None:
    """Entry point of ``bench_<thing>.py --case NAME``: run one case, write its JSON to ``--out``.

    Without ``--case`` the script runs its whole plan through subprocesses and
    prints its section of the results (``plan``/``report`` in the module).
    """
    import tempfile

    parser = argparse.ArgumentParser()
    parser.add_argument("--case", choices=sorted(cases))
    parser.add_argument("--preset", default="demo", choices=PRESET_NAMES)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=usable_cores())
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.case is None:
        module = sys.modules["__main__"]
        results = run_plan(
            Path(module.__file__),
            module.plan(args.quick),
            quick=args.quick,
            device=args.device,
            threads=args.threads,
        )
        print(module.report(results, ceiling=None))
        return
    device = setup_torch(args.threads, args.device)
    probe = MemoryProbe(device)  # baseline: after the script's imports
    record: dict[str, Any] = {"case": args.case, "preset": args.preset}
    with tempfile.TemporaryDirectory(prefix="qdgap-bench-") as tmp:
        try:
            record.update(
                cases[args.case](CaseArgs(args.case, args.preset, args.quick, device, args.threads, probe, Path(tmp)))
            )
        except Exception as exc:  # noqa: BLE001 - reported in the table, the run goes on
            record["error"] = f"{type(exc).__name__}: {exc}"
            record["traceback"] = traceback.format_exc()
    text = json.dumps(record, indent=1, default=_json_default)
    if args.out:
        args.out.write_text(text)
    else:
        print(text)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    return str(obj)


def case_command(script: Path, case: str, preset: str, *, quick: bool, device: str, threads: int) -> list[str]:
    cmd = [
        sys.executable,
        str(script.relative_to(REPO)),
        "--case",
        case,
        "--preset",
        preset,
        "--device",
        device,
        "--threads",
        str(threads),
    ]
    if quick:
        cmd.append("--quick")
    return cmd


def run_case(
    script: Path,
    case: str,
    preset: str,
    *,
    quick: bool,
    device: str,
    threads: int,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run one case in a fresh interpreter and return its JSON record (``error`` set if it failed)."""
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    stem = f"{script.stem}.{case}.{preset}"
    out = OUT_DIR / f"{stem}.json"
    logfile = OUT_DIR / f"{stem}.log"
    out.unlink(missing_ok=True)
    cmd = case_command(script, case, preset, quick=quick, device=device, threads=threads)
    env = dict(
        os.environ,
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        PYTHONWARNINGS="ignore",
    )
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # upstream's train_dgl picks CUDA by itself whenever it sees one
    t0 = time.perf_counter()
    with open(logfile, "w") as fh:
        try:
            proc = subprocess.run(
                [*cmd, "--out", str(out)],
                cwd=REPO,
                env=env,
                stdout=fh,
                stderr=subprocess.STDOUT,
                timeout=CASE_TIMEOUT_S,
            )
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    wall = time.perf_counter() - t0
    if out.exists():
        record = json.loads(out.read_text())
    else:
        tail = logfile.read_text()[-800:] if logfile.exists() else ""
        record = {
            "case": case,
            "preset": preset,
            "error": f"exit {rc}; see {logfile.relative_to(REPO)}: {tail.strip().splitlines()[-1] if tail.strip() else ''}",
        }
    record["command"] = " ".join(cmd)
    record["wall_s"] = wall
    status = "error: " + record["error"].splitlines()[0][:140] if "error" in record else "ok"
    log(f"  {script.stem} {case} [{preset}] {wall:6.1f} s  {status}")
    return record


def run_plan(
    script: Path,
    plan: Iterable[tuple[str, str]],
    *,
    quick: bool,
    device: str,
    threads: int,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    return [
        run_case(script, case, preset, quick=quick, device=device, threads=threads, log=log) for case, preset in plan
    ]


@contextlib.contextmanager
def quiet():
    """Silence stdout and stderr at the file-descriptor level (upstream prints configs, figlets and tqdm bars)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
        try:
            with (
                contextlib.redirect_stdout(open(os.devnull, "w")),
                contextlib.redirect_stderr(open(os.devnull, "w")),
            ):
                yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


# ==========================================================================
# Results tables
# ==========================================================================


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if value != value:  # NaN
            return "–"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        if abs(value) >= 0.1:
            return f"{value:.2f}"
        return f"{value:.3g}"
    return str(value).replace("|", "\\|")


def fmt_rate(row: dict[str, Any]) -> str:
    """``median (min–max)`` of a row's throughput."""
    if "rate" not in row:
        return "–"
    return f"{_cell(row['rate'])} ({_cell(row['rate_min'])}–{_cell(row['rate_max'])})"


def fmt_ratio(value: float | None) -> str:
    return "–" if value is None or value != value else f"{value:.2f}x"


def fmt_pct(value: float | None) -> str:
    return "–" if value is None or value != value else f"{100 * value:.0f} %"


def fmt_mb(row: dict[str, Any]) -> str:
    if "peak_rss_mb" not in row:
        return "–"
    text = f"{row['peak_rss_mb']:.0f}"
    if "peak_cuda_mb" in row:
        text += f" (GPU {row['peak_cuda_mb']:.0f})"
    return text


def failed_cases(results: Iterable[dict[str, Any]]) -> list[str]:
    """A report section's closing lines naming its failed cases (one line each); none when all ran."""
    errs = [f"- `{r.get('case')}` [{r.get('preset')}]: {r['error'].splitlines()[0]}" for r in results if "error" in r]
    return ["", "Failed cases:", *errs] if errs else []


def find(results: Iterable[dict[str, Any]], case: str, preset: str | None = None) -> dict[str, Any] | None:
    for r in results:
        if r.get("case") == case and (preset is None or r.get("preset") == preset) and "error" not in r:
            return r
    return None


def max_abs_diff(a: Sequence[float] | None, b: Sequence[float] | None) -> float | None:
    if a is None or b is None or len(a) == 0 or len(a) != len(b):
        return None
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))
