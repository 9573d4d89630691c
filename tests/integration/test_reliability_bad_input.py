"""Bad input, table-driven: every malformed input a command can meet ends with exit code 2, one line
on stderr naming the file (or option) and the problem, no traceback, and nothing left behind.

Each case builds its input in a fresh folder and returns the command line and the fragments the
error line must hold. Around every case the whole folder is snapshotted: after the command, no file
may have appeared, changed or gone (bar hidden ``.lock`` files, which stay by design: an advisory
lock needs a stable file; and what a case declares, e.g. a member's ``FAILED`` note), and no
temporary file may remain.

Safe loading is tested here too: checkpoints that are pickles of arbitrary objects (their payload
would create a file if it ever ran), and ``model.ts`` files altered or taken from another run.

Unwritable folders and full disks are real where the machine allows: as root, ``chmod`` stops
nothing, so a read-only tmpfs and a nearly full small tmpfs are mounted (the cases are skipped where
``mount`` is not permitted); a file standing where a folder is expected needs no privilege, and an
ENOSPC injected into h5py checks the same path everywhere.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import subprocess
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from qdgap.core.data.trajectory import write_trajectory
from qdgap.core.store import runs as rf
from qdgap.testing.synthetic import small_cdse_cluster, synthetic_trajectory
from tests.conftest import assert_one_line_error


class Payload:
    """Unpickling this creates the file ``marker``: proof that a loader ran code from the file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@dataclass
class Bench:
    """One case's folder and the shared inputs."""

    root: Path
    h5: Path  # a good trajectory (synthetic, 120 frames, Cd4Se13)
    runs_src: Path  # two finished tiny members trained on ``h5``
    changed: tuple[Path, Path]  # (runs, data): the data file changed since the runs were trained on it
    mounts: list[Path] = field(default_factory=list)
    monkeypatch: pytest.MonkeyPatch | None = None
    allowed: set[str] = field(default_factory=set)  # relative paths a case may leave (e.g. a FAILED note)

    @property
    def marker(self) -> Path:
        return self.root / "PAYLOAD_RAN"

    @property
    def out(self) -> Path:
        return self.root / "out"

    # ------------------------------------------------------------ trajectories
    def traj(self, name: str, edit: Callable[[h5py.File], None]) -> Path:
        """A copy of the good trajectory, edited in place."""
        path = self.root / name
        shutil.copy(self.h5, path)
        with h5py.File(path, "r+") as h5:
            edit(h5)
        return path

    def file(self, name: str, content: bytes | str) -> Path:
        path = self.root / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    def xyz(self, name: str, *, frames: int = 5, edit: Callable[[list], None] | None = None) -> Path:
        from ase import Atoms
        from ase.io import write

        t = synthetic_trajectory(frames, seed=3)
        atoms = [Atoms(numbers=t.numbers, positions=p) for p in t.positions_ang]
        if edit:
            edit(atoms)
        write(self.root / name, atoms, format="extxyz")
        return self.root / name

    # ------------------------------------------------------------ run folders
    def runs(self, name: str = "runs") -> Path:
        """A private copy of the two finished members."""
        dst = self.root / name
        shutil.copytree(self.runs_src, dst)
        return dst

    def interrupted(self, name: str = "runs") -> Path:
        """A copy whose member 0 stopped after its checkpoint (no best.pt, model.ts, DONE)."""
        runs = self.runs(name)
        for f in (rf.DONE, rf.MODEL_TS, rf.BEST_PT, rf.TEST_METRICS_JSON):
            (rf.run_dir(runs, 0) / f).unlink()
        shutil.rmtree(rf.run_dir(runs, 1))
        return runs

    def evil_pickle(self, path: Path, *, zipped: bool) -> Path:
        """``path`` holding a pickle whose loading would create ``marker``: raw, or in torch's zip format."""
        if zipped:
            torch.save({"model": Payload(self.marker)}, path)
        else:
            path.write_bytes(pickle.dumps(Payload(self.marker)))
        return path

    def swap_model_ts(self, runs: Path, *, numbers: list[int] | None = None, hidden: int | None = None) -> None:
        """Put a model.ts of another composition or size into member 0, with a matching sha256 in DONE
        (what copying model.ts and DONE over from another run does)."""
        from dataclasses import replace

        from qdgap.core.config import RunConfig
        from qdgap.core.deploy.checkpoint import model_meta
        from qdgap.core.deploy.torchscript import export_torchscript
        from qdgap.core.model.network import GapModel

        run = rf.run_dir(runs, 0)
        record = rf.read_json(run / rf.CONFIG_JSON)
        config = RunConfig.from_json(record)
        other = json.loads(json.dumps(record))
        if numbers is not None:
            other["data"]["numbers"] = numbers
        if hidden is not None:
            config = replace(config, model=replace(config.model, hidden_features=hidden))
            other["model"] = config.to_json()["model"]
        digest = export_torchscript(GapModel(config.model), run / rf.MODEL_TS, meta=model_meta(other))
        rf.write_json(run / rf.DONE, {**rf.read_json(run / rf.DONE), "model_sha256": digest})

    # ------------------------------------------------------------ places to write
    def mount(self, name: str, options: str, *, fill_to_kib: int = 0) -> Path:
        """A small tmpfs at ``name`` (skips the case where mounting is not allowed)."""
        point = self.root / name
        point.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.decode().strip()[:80]})")
        self.mounts.append(point)
        if fill_to_kib:
            (point / "filler").write_bytes(b"\0" * fill_to_kib * 1024)
        return point


# ==========================================================================
# The cases: name -> bench -> (argv, fragments the error line must hold)
# ==========================================================================

Case = Callable[[Bench], tuple[list[object], tuple[str, ...]]]
CASES: dict[str, Case] = {}


def case(name: str):
    def register(fn: Case) -> Case:
        assert name not in CASES
        CASES[name] = fn
        return fn

    return register


def _predict(b: Bench, data: Path, runs: Path | None = None, *extra: object) -> list[object]:
    return ["predict", "--runs", runs or b.runs_src, "--data", data, "-o", b.out / "pred.h5", "--device", "cpu", *extra]


def _fna(b: Bench, data: Path, runs: Path | None = None, *extra: object) -> list[object]:
    return ["fna", "--runs", runs or b.runs_src, "--data", data, "--frames", "all", "--every", 20, "-o", b.out / "fna.h5",
            "--device", "cpu", *extra]  # fmt: skip


def _train(b: Bench, data: Path, *extra: object) -> list[object]:
    return ["train", "--seed", 0, "--data", data, "--preset", "tiny", "-o", b.out / "runs", "--device", "cpu", *extra]


def _ensemble(b: Bench, data: Path, *extra: object, out: Path | None = None) -> list[object]:
    return ["ensemble", "train", "--members", 1, "--data", data, "--preset", "tiny", "-o", out or b.out / "runs",
            "--jobs", 1, "--device", "cpu", *extra]  # fmt: skip


def _finetune(b: Bench, data: Path | None = None, runs: Path | None = None, *extra: object) -> list[object]:
    """``finetune`` onto ``data``, by default a good extension (same composition, other frames)."""
    if data is None:
        data = b.root / "ext.h5"
        write_trajectory(synthetic_trajectory(80, seed=2), data)
    return ["finetune", "--runs", runs or b.runs_src, "--data", data, "-o", b.out / "runs_ft", "--epochs", 1, "--jobs", 1,
            "--device", "cpu", *extra]  # fmt: skip


# --------------------------------------------------------------- trajectory files


@case("truncated-h5")
def _(b):
    p = b.file("trunc.h5", b.h5.read_bytes()[: b.h5.stat().st_size // 2])
    return ["data", "info", p], ("trunc.h5", "not a readable HDF5 file")


@case("truncated-h5-predict")
def _(b):
    p = b.file("trunc.h5", b.h5.read_bytes()[:4096])
    return _predict(b, p), ("trunc.h5", "not a readable HDF5 file")


@case("corrupt-h5-bytes")
def _(b):
    raw = bytearray(b.h5.read_bytes())
    raw[:64] = os.urandom(64)  # superblock gone
    return _train(b, b.file("corrupt.h5", bytes(raw))), ("corrupt.h5", "not a readable HDF5 file")


@case("text-file-as-h5")
def _(b):
    return _fna(b, b.file("notes.h5", "frame,gap\n1,2.0\n")), ("notes.h5", "not a readable HDF5 file")


@case("wrong-format-attr")
def _(b):
    p = b.traj("fmt.h5", lambda h: h.attrs.__setitem__("format", "ase.trajectory"))
    return _ensemble(b, p), ("fmt.h5", "not a qdgap trajectory", "'ase.trajectory'")


@case("no-format-attr")
def _(b):
    p = b.traj("nofmt.h5", lambda h: h.attrs.__delitem__("format"))
    return ["data", "info", p], ("nofmt.h5", "not a qdgap trajectory")


@case("wrong-version-attr")
def _(b):
    p = b.traj("ver.h5", lambda h: h.attrs.__setitem__("version", 99))
    return _train(b, p), ("ver.h5", "trajectory version 99 is not supported")


@case("unfinished-trajectory")
def _(b):
    p = b.traj("partial.h5", lambda h: h.attrs.__setitem__("format", "qdgap.trajectory.partial"))
    return _predict(b, p), ("partial.h5", "an unfinished trajectory")


@case("missing-dataset-gap")
def _(b):
    p = b.traj("nogap.h5", lambda h: h.__delitem__("gap_ev"))
    return _predict(b, p), ("nogap.h5", "missing dataset(s) gap_ev")


@case("missing-dataset-positions")
def _(b):
    p = b.traj("nopos.h5", lambda h: h.__delitem__("positions"))
    return _ensemble(b, p), ("nopos.h5", "missing dataset(s) positions")


def _set(name: str, index, value):
    def edit(h5):
        arr = h5[name][()]
        arr[index] = value
        h5[name][...] = arr

    return edit


@case("nan-positions")
def _(b):
    p = b.traj("nan.h5", _set("positions", (5, 2, 0), np.nan))
    return _train(b, p), ("nan.h5", "frame 5 has NaN or infinite coordinates")


@case("inf-positions")
def _(b):
    p = b.traj("inf.h5", _set("positions", (7, 0, 1), np.inf))
    return _fna(b, p), ("inf.h5", "frame 7 has NaN or infinite coordinates")


@case("inf-gap")
def _(b):
    p = b.traj("infgap.h5", _set("gap_ev", 3, np.inf))
    return _ensemble(b, p), ("infgap.h5", "frame 3 has an infinite band gap")


@case("time-not-increasing")
def _(b):
    p = b.traj("time.h5", _set("time_fs", 6, 0.0))
    return _predict(b, p), ("time.h5", "time is not strictly increasing at frame 6")


@case("atoms-on-top-of-each-other")
def _(b):
    def edit(h5):
        pos = h5["positions"][()]
        pos[9, 1] = pos[9, 0]
        h5["positions"][...] = pos

    return ["data", "info", b.traj("clash.h5", edit)], ("clash.h5", "frame 9 has two atoms 0.000 Å apart")


@case("empty-trajectory")
def _(b):
    def edit(h5):
        n = h5["numbers"].shape[0]
        for name, shape in (("positions", (0, n, 3)), ("time_fs", (0,)), ("gap_ev", (0,))):
            dtype = h5[name].dtype
            del h5[name]
            h5.create_dataset(name, shape=shape, dtype=dtype)

    return _train(b, b.traj("empty.h5", edit)), ("empty.h5", "no frames (empty trajectory)")


@case("no-labelled-frames")
def _(b):
    p = b.traj("nolabels.h5", lambda h: h["gap_ev"].__setitem__(Ellipsis, np.nan))
    return _ensemble(b, p), ("nolabels.h5", "only 0 labelled frame(s) in the pool")


@case("too-few-labelled-frames")
def _(b):
    def edit(h5):
        gaps = np.full(h5["gap_ev"].shape, np.nan, np.float32)
        gaps[[0, 10]] = 2.0
        h5["gap_ev"][...] = gaps

    return _train(b, b.traj("few.h5", edit)), ("few.h5", "only 2 labelled frame(s) in the pool", "needs at least")


@case("pipeline-no-labelled-frames")
def _(b):
    p = b.traj("nolabels.h5", lambda h: h["gap_ev"].__setitem__(Ellipsis, np.nan))
    return ["pipeline", "--data", p, "--workdir", b.out / "work", "--preset", "tiny"], (
        "nolabels.h5",
        "no labelled frames",
    )


@case("pipeline-extension-other-composition")
def _(b):
    numbers, pos = small_cdse_cluster(radius_ang=5.1)
    write_trajectory(synthetic_trajectory(30, base=(numbers, pos)), b.root / "other.h5")
    args = [
        "pipeline",
        "--data",
        b.h5,
        "--extended",
        b.root / "other.h5",
        "--workdir",
        b.out / "work",
        "--preset",
        "tiny",
    ]
    return args, ("other.h5", "does not continue")


@case("data-info-on-a-folder")
def _(b):
    (b.root / "adir.h5").mkdir()
    return ["data", "info", b.root / "adir.h5"], ("adir.h5", "is a folder")


# --------------------------------------------------------------- importers and labels


@case("import-composition-changes-mid-trajectory")
def _(b):
    p = b.xyz("shrinks.xyz", edit=lambda atoms: atoms.__setitem__(3, atoms[3][:-1]))
    return ["data", "import", p, "-o", b.out / "t.h5"], ("shrinks.xyz frame 4", "has 16 atoms, the first frame has 17")


@case("import-species-order-changes")
def _(b):
    def swap(atoms):
        z = atoms[2].numbers.copy()
        z[[0, -1]] = z[[-1, 0]]
        atoms[2].numbers = z

    p = b.xyz("swapped.xyz", edit=swap)
    return ["data", "import", p, "-o", b.out / "t.h5"], ("swapped.xyz frame 3", "species order differs")


@case("import-empty-file")
def _(b):
    return ["data", "import", b.file("empty.xyz", ""), "-o", b.out / "t.h5"], ("empty.xyz", "the file is empty")


@case("import-unknown-format")
def _(b):
    p = b.file("frames.qqq", "these are not structures\n")
    return ["data", "import", p, "-o", b.out / "t.h5"], ("frames.qqq", "unknown file format")


@case("labels-csv-row-count")
def _(b):
    p = b.xyz("five.xyz")
    csv = b.file("gaps.csv", "2.1\n2.2\n2.3\n")
    return ["data", "import", p, "--gaps", csv, "-o", b.out / "t.h5"], ("gaps.csv", "3 label rows for 5 frames")


@case("labels-csv-names-no-frame")
def _(b):
    p = b.xyz("five.xyz")
    csv = b.file("gaps.csv", "st100,2.1\nst101,2.2\n")
    return ["data", "import", p, "--gaps", csv, "-o", b.out / "t.h5"], ("gaps.csv", "no label row matches a frame")


@case("labels-csv-not-a-number")
def _(b):
    p = b.xyz("five.xyz")
    csv = b.file("gaps.csv", "st1,2.1\nst2,n/a eV\n")
    return ["data", "import", p, "--gaps", csv, "-o", b.out / "t.h5"], ("gaps.csv", "row 2", "is not a number")


@case("labels-csv-frame-twice")
def _(b):
    p = b.xyz("five.xyz")
    csv = b.file("gaps.csv", "st1,2.1\nst1,2.2\n")
    return ["data", "import", p, "--gaps", csv, "-o", b.out / "t.h5"], (
        "gaps.csv",
        "frame 1 is labelled more than once",
    )


# --------------------------------------------------------------- run folders and models


@case("runs-folder-missing")
def _(b):
    return _fna(b, b.h5, b.root / "nowhere"), ("nowhere", "no such runs folder")


@case("runs-folder-without-members")
def _(b):
    (b.root / "empty_runs").mkdir()
    return _predict(b, b.h5, b.root / "empty_runs"), ("empty_runs", "no ensemble members")


@case("member-without-DONE")
def _(b):
    runs = b.runs()
    (rf.run_dir(runs, 1) / rf.DONE).unlink()
    return _predict(b, b.h5, runs), ("runs", "not finished", "run_1")


@case("export-member-without-DONE")
def _(b):
    runs = b.runs()
    (rf.run_dir(runs, 0) / rf.DONE).unlink()
    return ["export", rf.run_dir(runs, 0), "--format", "torchscript"], ("run_0", "member not finished (no DONE marker)")


@case("DONE-without-model-sha256")
def _(b):
    runs = b.runs()
    done = rf.read_json(rf.run_dir(runs, 0) / rf.DONE)
    rf.write_json(rf.run_dir(runs, 0) / rf.DONE, {k: v for k, v in done.items() if k != "model_sha256"})
    return _fna(b, b.h5, runs), ("run_0/DONE", "records no model_sha256")


@case("config-json-corrupt")
def _(b):
    runs = b.runs()
    (rf.run_dir(runs, 1) / rf.CONFIG_JSON).write_text('{"seed": 1, "model": ')
    return _predict(b, b.h5, runs), ("run_1/config.json", "not readable JSON")


@case("model-ts-tampered")
def _(b):
    runs = b.runs()
    ts = rf.run_dir(runs, 1) / rf.MODEL_TS
    raw = bytearray(ts.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    ts.write_bytes(bytes(raw))
    return _predict(b, b.h5, runs), ("run_1/model.ts", "changed since it was written (sha256 differs)")


@case("model-ts-from-another-composition")
def _(b):
    runs = b.runs()
    numbers, _ = small_cdse_cluster(radius_ang=5.1)
    b.swap_model_ts(runs, numbers=[int(z) for z in numbers])
    return _predict(b, b.h5, runs), ("run_0/model.ts", "made for Cd16Se13 (29 atoms)", "records Cd4Se13 (17 atoms)")


@case("model-ts-of-another-feature-size")
def _(b):
    runs = b.runs()
    b.swap_model_ts(runs, hidden=8)
    return _fna(b, b.h5, runs), ("run_0/model.ts", "model settings (feature sizes, layers) differ", "config.json")


@case("runs-trained-on-another-composition")
def _(b):
    numbers, pos = small_cdse_cluster(radius_ang=5.1)
    write_trajectory(synthetic_trajectory(30, base=(numbers, pos)), b.root / "other.h5")
    return _predict(b, b.root / "other.h5"), ("run_0", "trained on Cd4Se13 (17 atoms)", "Cd16Se13")


@case("data-changed-since-training-predict")
def _(b):
    runs, data = b.changed
    return _predict(b, data, runs), (
        data.name,
        "changed since run_0 was trained on it (sha256 differs)",
        "--allow-data-change",
    )


@case("data-changed-since-training-fna")
def _(b):
    runs, data = b.changed
    return _fna(b, data, runs), (data.name, "changed since run_0 was trained on it", "--allow-data-change")


@case("export-best-pt-of-another-size")
def _(b):
    from qdgap.core.model.network import GapModel

    runs = b.runs()
    config = rf.load_member(rf.run_dir(runs, 0)).config
    from dataclasses import replace

    small = GapModel(replace(config.model, hidden_features=8))
    torch.save(small.state_dict(), rf.run_dir(runs, 0) / rf.BEST_PT)
    return ["export", rf.run_dir(runs, 0), "--format", "torchscript", "-o", b.out / "m.ts"], (
        "best.pt",
        "weights do not fit the model",
    )


# --------------------------------------------------------------- checkpoints: safe loading


@case("checkpoint-pickle-payload-train-resume")
def _(b):
    runs = b.interrupted()
    b.allowed.add("runs/run_0/FAILED")  # the member's note of why it stopped (`ensemble status` reads it)
    b.evil_pickle(rf.run_dir(runs, 0) / rf.CHECKPOINT_PT, zipped=True)
    args = ["train", "--seed", 0, "--data", b.h5, "--preset", "tiny", "-o", runs, "--device", "cpu"]
    return args, ("checkpoint.pt", "unsafe checkpoint: holds pickled Python objects (", "io.open)")


@case("checkpoint-raw-pickle-ensemble-resume")
def _(b):
    runs = b.interrupted()
    b.evil_pickle(rf.run_dir(runs, 0) / rf.CHECKPOINT_PT, zipped=False)
    b.allowed.add("runs/run_0/FAILED")  # the member's note of why it stopped
    return _ensemble(b, b.h5, out=runs), ("member(s) failed (seeds 0)", "checkpoint.pt", "unsafe checkpoint")


@case("checkpoint-not-a-qdgap-checkpoint")
def _(b):
    runs = b.interrupted()
    b.allowed.add("runs/run_0/FAILED")  # the member's note of why it stopped (`ensemble status` reads it)
    torch.save({"weights": torch.zeros(3)}, rf.run_dir(runs, 0) / rf.CHECKPOINT_PT)
    args = ["train", "--seed", 0, "--data", b.h5, "--preset", "tiny", "-o", runs, "--device", "cpu"]
    return args, ("checkpoint.pt", "not a checkpoint of this member")


@case("checkpoint-truncated")
def _(b):
    runs = b.interrupted()
    b.allowed.add("runs/run_0/FAILED")  # the member's note of why it stopped (`ensemble status` reads it)
    ck = rf.run_dir(runs, 0) / rf.CHECKPOINT_PT
    ck.write_bytes(ck.read_bytes()[:1000])
    args = ["train", "--seed", 0, "--data", b.h5, "--preset", "tiny", "-o", runs, "--device", "cpu"]
    return args, ("checkpoint.pt", "unreadable checkpoint")


@case("best-pt-pickle-payload-export")
def _(b):
    runs = b.runs()
    b.evil_pickle(rf.run_dir(runs, 0) / rf.BEST_PT, zipped=True)
    return ["export", rf.run_dir(runs, 0), "--format", "torchscript", "-o", b.out / "m.ts"], (
        "best.pt",
        "unsafe checkpoint",
    )


@case("import-alignn-pickle-payload")
def _(b):
    from tests.unit.test_import_alignn import write_upstream_run

    _, cfg, _ = write_upstream_run(b.root / "upstream")
    ckpt = b.evil_pickle(b.root / "upstream" / "evil.pt", zipped=True)
    return ["import-alignn", ckpt, cfg, "-o", b.out / "run_0"], (
        "evil.pt",
        "holds pickled Python objects (",
        "io.open)",
    )


# --------------------------------------------------------------- options


@case("members-0")
def _(b):
    return ["ensemble", "train", "--members", 0, "--data", b.h5, "-o", b.out / "runs"], (
        "--members must be at least 1",
    )


@case("jobs-0")
def _(b):
    return _ensemble(b, b.h5, "--jobs", 0), ("--jobs must be at least 1",)


@case("negative-epochs-train")
def _(b):
    return _train(b, b.h5, "--epochs", -1), ("--epochs must be >= 0", "-1")


@case("negative-epochs-finetune")
def _(b):
    return _finetune(b, None, None, "--epochs", -2), ("--epochs must be >= 0", "-2")


@case("freeze-blocks-larger-than-model")
def _(b):
    return _finetune(b, None, None, "--freeze-blocks", 5), ("--freeze-blocks 5", "has only 1 ALIGNN block(s)")


@case("unknown-preset")
def _(b):
    return _train(b, b.h5, "--preset", "huge"), ("unknown preset 'huge'",)


@case("unknown-backend")
def _(b):
    return _predict(b, b.h5, None, "--backend", "tensorrt"), ("--backend must be one of",)


@case("export-unknown-format")
def _(b):
    return ["export", rf.run_dir(b.runs_src, 0), "--format", "tflite"], ("--format must be one of",)


@case("ensemble-status-missing-folder")
def _(b):
    return ["ensemble", "status", b.root / "nowhere"], ("nowhere", "no such runs folder")


@case("finetune-on-another-composition")
def _(b):
    numbers, pos = small_cdse_cluster(radius_ang=5.1)
    write_trajectory(synthetic_trajectory(60, base=(numbers, pos)), b.root / "other.h5")
    return _finetune(b, b.root / "other.h5"), ("run_0", "trained on Cd4Se13 (17 atoms)", "Cd16Se13")


@case("finetune-best-pt-pickle-payload")
def _(b):
    runs = b.runs()
    b.evil_pickle(rf.run_dir(runs, 1) / rf.BEST_PT, zipped=False)
    return _finetune(b, None, runs), ("run_1/best.pt", "unsafe checkpoint")


# --------------------------------------------------------------- places to write


@case("output-folder-is-a-file")
def _(b):
    b.file("afile", "not a folder")
    return _predict(b, b.h5)[:-4] + ["-o", b.root / "afile" / "pred.h5", "--device", "cpu"], (
        "afile",
        "cannot create the output folder",
    )


@case("runs-folder-under-a-file")
def _(b):
    b.file("afile", "not a folder")
    return _ensemble(b, b.h5, out=b.root / "afile" / "runs"), ("afile/runs", "cannot create the output folder")


@case("finetune-output-under-a-file")
def _(b):
    b.file("afile", "not a folder")
    args = _finetune(b)
    args[args.index("-o") + 1] = b.root / "afile" / "runs_ft"
    return args, ("afile/runs_ft", "cannot create the output folder")


@case("train-output-read-only-mount")
def _(b):
    ro = b.mount("ro", "ro,size=64k")
    return _train(b, b.h5)[:-4] + ["-o", ro / "runs", "--device", "cpu"], (
        "ro/runs",
        "cannot create the output folder",
        "Read-only",
    )


@case("output-file-is-a-folder")
def _(b):
    (b.root / "pred.h5").mkdir()
    return _predict(b, b.h5)[:-4] + ["-o", b.root / "pred.h5", "--device", "cpu"], (
        "pred.h5",
        "is a folder, expected a file name",
    )


@case("interpolate-truncated-h5")
def _(b):
    p = b.file("trunc.h5", b.h5.read_bytes()[:4096])
    return ["interpolate", "--data", p, "-o", b.out / "gaps.h5"], ("trunc.h5", "not a readable HDF5 file")


@case("interpolate-output-read-only-mount")
def _(b):
    ro = b.mount("ro", "ro,size=64k")
    return ["interpolate", "--data", b.h5, "-o", ro / "gaps.h5"], ("ro", "the output folder is not writable")


@case("interpolate-disk-full")
def _(b):
    full = b.mount("full", "size=64k", fill_to_kib=60)
    return ["interpolate", "--data", b.h5, "-o", full / "gaps.h5"], ("no space left on the device",)


@case("output-folder-read-only-mount")
def _(b):
    ro = b.mount("ro", "ro,size=64k")
    return _fna(b, b.h5)[:-4] + ["-o", ro / "fna.h5", "--device", "cpu"], ("ro", "the output folder is not writable")


@case("disk-full-predict")
def _(b):
    full = b.mount("full", "size=64k", fill_to_kib=56)
    return _predict(b, b.h5)[:-4] + ["-o", full / "pred.h5", "--device", "cpu"], (
        "pred.h5",
        "no space left on the device",
    )


@case("disk-full-train-checkpoint")
def _(b):
    full = b.mount("full", "size=64k", fill_to_kib=56)
    b.allowed.update(
        {"full/runs/run_0/config.json", "full/runs/run_0/split.json", "full/runs/run_0/FAILED"}
    )  # whole; the member resumes later
    return _train(b, b.h5)[:-4] + ["-o", full / "runs", "--device", "cpu"], ("no space left on the device",)


@case("disk-full-import")
def _(b):
    full = b.mount("full", "size=64k", fill_to_kib=60)
    return ["data", "import", b.xyz("five.xyz", frames=40), "-o", full / "t.h5"], (
        "t.h5",
        "no space left on the device",
    )


@case("disk-full-injected-enospc")
def _(b):
    real = h5py.File

    def full_disk(name, mode="r", *args, **kwargs):
        if mode == "w":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(name, mode, *args, **kwargs)

    b.monkeypatch.setattr(h5py, "File", full_disk)
    return _predict(b, b.h5), ("pred.h5", "no space left on the device")


# ==========================================================================
# The test
# ==========================================================================


@pytest.fixture(scope="module")
def changed(tmp_path_factory, synthetic_h5) -> tuple[Path, Path]:
    """A member trained on a data file that has changed since (one label edited)."""
    from qdgap.core.config import PRESETS
    from qdgap.core.data.trajectory import read_trajectory
    from qdgap.core.train.loop import train_member

    root = tmp_path_factory.mktemp("changed")
    data = root / "data.h5"
    shutil.copy(synthetic_h5, data)
    runs = root / "runs"
    train_member(read_trajectory(data), PRESETS["tiny"], seed=0, run_dir=rf.run_dir(runs, 0), device="cpu",
                 cache_dir=runs / rf.CACHE_DIR, data_path=str(data))  # fmt: skip
    with h5py.File(data, "r+") as h5:
        gaps = h5["gap_ev"][()]
        gaps[0] += 0.01
        h5["gap_ev"][...] = gaps
    return runs, data


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file() and not p.name.endswith(".lock")
    }


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_exits_2_with_one_line_and_leaves_nothing(
    name, run_cli, tmp_path, synthetic_h5, tiny_runs, changed, monkeypatch
):
    b = Bench(root=tmp_path / "case", h5=synthetic_h5, runs_src=tiny_runs, changed=changed, monkeypatch=monkeypatch)
    b.root.mkdir()
    try:
        args, fragments = CASES[name](b)
        before = _snapshot(b.root)
        watched = [b.root, tiny_runs, changed[0]]
        shared_before = [_snapshot(p) for p in watched[1:]]
        with warnings.catch_warnings(record=True) as caught:  # pytest would hide what a user sees on stderr
            warnings.simplefilter("always")
            r = run_cli(*args)
        assert_one_line_error(r, *fragments)
        shown = [w for w in caught if not issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning))]
        assert not shown, [str(w.message)[:200] for w in shown]
        after = _snapshot(b.root)
        changed_files = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)} - b.allowed
        assert not changed_files, f"left behind or altered: {sorted(changed_files)}"
        assert [_snapshot(p) for p in watched[1:]] == shared_before
        assert not b.marker.exists(), "a pickle's payload ran"
    finally:
        for point in reversed(b.mounts):
            subprocess.run(["umount", "-l", str(point)], check=False)


def test_bad_input_table_is_large_enough():
    assert len(CASES) >= 30


# ==========================================================================
# Safe loading, by reading the source
# ==========================================================================

PACKAGE = Path(__file__).resolve().parents[2] / "qdgap"
# The one unpickling that stays: submitit's own result files, which qdgap's Slurm tasks write under
# runs/.slurm/ (the task's outcome); nothing a user hands qdgap as input is read that way.
UNPICKLING_ALLOWED = {("core/workflow/slurm_states.py", "pickle_load(")}


def _calls(pattern: str) -> list[tuple[str, int, str]]:
    import re

    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for i, line in enumerate(path.read_text().splitlines(), start=1):
            code = line.split("#", 1)[0]
            if re.search(pattern, code):
                found.append((str(path.relative_to(PACKAGE)), i, code.strip()))
    return found


def test_safe_loading_every_torch_load_is_weights_only():
    loads = _calls(r"\btorch\.load\(")
    assert loads, "no torch.load found: has the loader moved?"
    for where, line, code in loads:
        assert "weights_only=True" in code, f"{where}:{line}: {code}"


def test_safe_loading_nothing_else_unpickles():
    for pattern in (
        r"\bpickle\.loads?\(",
        r"\bpickle_load\(",
        r"allow_pickle\s*=\s*True",
        r"\bjoblib\.load\(",
        r"\bdill\.",
    ):
        for where, line, code in _calls(pattern):
            assert any(where == w and frag in code for w, frag in UNPICKLING_ALLOWED), f"{where}:{line}: {code}"
    for where, line, code in _calls(r"\bnp\.load\("):
        assert "allow_pickle=False" in code, f"{where}:{line}: {code}"


def test_safe_loading_model_ts_only_through_the_checked_loader():
    """``torch.jit.load`` appears once, in ``torchscript.load_torchscript``, which checks the sha256 first;
    ``predict``, ``fna``, ``finetune`` and the Python API (``Ensemble.load``) reach it only through ``export.load_model``."""
    assert [w for w, _, _ in _calls(r"\btorch\.jit\.load\(")] == ["core/deploy/torchscript.py"]
    assert [w for w, _, _ in _calls(r"\bload_torchscript\(")] == [
        "core/deploy/export.py",
        "core/deploy/torchscript.py",
    ]  # load_model + def
    users = {w for w, _, _ in _calls(r"\bload_model\(")}
    assert users <= {"core/deploy/export.py", "core/analysis/predict.py", "core/analysis/fna.py", "api.py"}, users
