"""The reproducible CPU mode (core/common/numerics.py): parsing, the CPU check, the environment it sets,
that the CLI applies and records it, byte-identical run files, and the AMD reference tensor sum."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qdgap.core.common import numerics
from qdgap.core.common.errors import QdgapError
from qdgap.core.store import runs as rf
from tests.conftest import assert_one_line_error

REPO = Path(__file__).resolve().parents[2]
DEMO_DATA = REPO / "data" / "cd28se17cl22_demo.h5"
_FLAGS = numerics.cpu_flags() or set()
HAS_AVX2 = numerics.platform.machine().lower() in ("x86_64", "amd64") and {"avx2", "fma"} <= _FLAGS
needs_avx2 = pytest.mark.skipif(
    not HAS_AVX2, reason="the reproducible mode runs AVX2 kernels; this CPU has no AVX2/FMA"
)
# Every variable the mode reads or sets: a test that applies it puts them back afterwards.
_TOUCHED = (
    numerics.REPRODUCIBLE_ENV,
    numerics.THREADS_ENV,
    "PYTHONHASHSEED",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    *numerics.REPRODUCIBLE_SETTINGS,
)


@pytest.fixture
def clean_env(monkeypatch):
    """The process environment without the mode's variables; the originals come back after the test."""
    for name in _TOUCHED:
        # set, then delete: monkeypatch records the original (possibly absent) value only when it touches a
        # variable, and the mode writes these into os.environ; a bare delenv of an absent one would let them leak.
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    return os.environ


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("yes", True), ("0", False), ("", False)])
def test_numerics_requested_reads_the_variable(value, expected):
    assert numerics.reproducible_requested({numerics.REPRODUCIBLE_ENV: value}) is expected
    assert numerics.reproducible_requested({}) is False


def test_numerics_rejects_bad_values():
    with pytest.raises(QdgapError, match="QDGAP_REPRODUCIBLE='maybe'"):
        numerics.reproducible_requested({numerics.REPRODUCIBLE_ENV: "maybe"})
    for bad in ("0", "-2", "two"):
        with pytest.raises(QdgapError, match="QDGAP_THREADS"):
            numerics.reproducible_threads({numerics.THREADS_ENV: bad})
    assert numerics.reproducible_threads({}) == 1
    assert numerics.reproducible_threads({numerics.THREADS_ENV: "3"}) == 3


def test_numerics_check_cpu_refuses_what_cannot_run_avx2():
    with pytest.raises(QdgapError, match="lacks avx2"):
        numerics.check_cpu("x86_64", {"sse2", "fma"})
    with pytest.raises(QdgapError, match="x86-64 CPU with AVX2.*aarch64"):
        numerics.check_cpu("aarch64", {"avx2", "fma"})
    numerics.check_cpu("x86_64", {"avx2", "fma", "sse2"})  # no error


def test_numerics_cpu_flags_reads_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n\nprocessor\t: 1\nflags\t: fpu\n")
    assert numerics.cpu_flags(info) == {"fpu", "sse2", "avx2", "fma"}
    assert numerics.cpu_flags(tmp_path / "missing") is None


@needs_avx2
def test_numerics_apply_sets_the_environment(clean_env):
    env = {numerics.REPRODUCIBLE_ENV: "1", numerics.THREADS_ENV: "2"}
    assert numerics.apply_reproducible_env(env) is True
    assert env["ATEN_CPU_CAPABILITY"] == "avx2" and env["MKL_CBWR"] == "COMPATIBLE" and env["MKL_DYNAMIC"] == "FALSE"
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == "2"
    assert env["OPENBLAS_CORETYPE"] == "Haswell" and env["PYTHONHASHSEED"] == "0"
    untouched = {"OMP_NUM_THREADS": "8"}
    assert numerics.apply_reproducible_env(untouched) is False and untouched == {"OMP_NUM_THREADS": "8"}


def test_numerics_mode_fixes_member_threads(clean_env, monkeypatch):
    from qdgap.core.workflow.ensemble import default_jobs, threads_per_job

    monkeypatch.setattr("qdgap.core.workflow.ensemble.usable_cores", lambda: 8)
    assert threads_per_job(1) == 8 and default_jobs(20, "cpu") == 8  # without the mode: the cores shared out
    monkeypatch.setenv(numerics.REPRODUCIBLE_ENV, "1")
    assert threads_per_job(1) == 1 and default_jobs(20, "cpu") == 8
    monkeypatch.setenv(numerics.THREADS_ENV, "2")
    assert threads_per_job(1) == 2 and threads_per_job(8) == 2 and default_jobs(20, "cpu") == 4


def test_numerics_mode_reaches_slurm_tasks(clean_env, monkeypatch):
    from qdgap.core.workflow.slurm import _setup_lines

    command = [["qdgap", "train", "--seed", "0"]]
    assert not any(numerics.REPRODUCIBLE_ENV in line for line in _setup_lines(command, [0], Path(".")))
    monkeypatch.setenv(numerics.REPRODUCIBLE_ENV, "1")
    monkeypatch.setenv(numerics.THREADS_ENV, "2")
    assert "export QDGAP_REPRODUCIBLE=1 QDGAP_THREADS=2" in _setup_lines(command, [0], Path("."))


def test_numerics_record_names_what_decides_the_floats(clean_env):
    record = numerics.numerics_record()
    assert record["reproducible"] is False
    assert record["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert record["torch_threads"] == torch.get_num_threads() and record["mkl_cbwr"] == ""


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() == "AVX2", reason="torch already runs the AVX2 kernels")
def test_cli_reproducible_refuses_after_torch_loaded(run_cli, clean_env):
    # In this process torch was loaded with other kernels: the mode cannot hold, and says so.
    result = run_cli("--reproducible", "data", "info", DEMO_DATA)
    assert_one_line_error(result, "QDGAP_REPRODUCIBLE=1", "before Python starts")


def test_cli_reproducible_rejects_bad_value(run_cli, clean_env):
    clean_env[numerics.REPRODUCIBLE_ENV] = "sometimes"
    assert_one_line_error(run_cli("data", "info", DEMO_DATA), "QDGAP_REPRODUCIBLE='sometimes'")


def _train(out: Path, data: Path, *, extra_env: dict[str, str], flag: bool = False) -> Path:
    """``qdgap [--reproducible] train --seed 0 --preset tiny`` in a fresh process (the mode acts before torch loads)."""
    env = {k: v for k, v in os.environ.items() if k not in _TOUCHED}
    env.update(extra_env, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "qdgap", *(["--reproducible"] if flag else [])]
    cmd += ["train", "--seed", "0", "--preset", "tiny", "--data", str(data), "-o", str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return rf.run_dir(out, 0)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@needs_avx2
def test_reproducible_train_records_the_mode_and_repeats_byte_for_byte(tmp_path, synthetic_h5):
    a = _train(tmp_path / "a", synthetic_h5, extra_env={numerics.REPRODUCIBLE_ENV: "1"})
    b = _train(tmp_path / "b", synthetic_h5, extra_env={}, flag=True)  # the flag is the same mode
    for name in (rf.BEST_PT, rf.CHECKPOINT_PT, rf.MODEL_TS):
        assert _sha(a / name) == _sha(b / name), name
    for run in (a, b):
        for record in (json.loads((run / rf.CONFIG_JSON).read_text()), json.loads((run / rf.DONE).read_text())):
            assert record["reproducible"] is True and record["cpu_capability"] == "AVX2"
            assert record["mkl_cbwr"] == "COMPATIBLE" and record["torch_threads"] == 1
            assert record["openblas_coretype"] == "Haswell"


def _tensor_sum(path: Path) -> str:
    """../shared/repro/tensorsum.py: sha256 over the state dict's keys (sorted) and raw tensor bytes, 16 hex."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# Measured on a 2-core AMD EPYC with AVX2 only (torch 2.13.0 CPU wheel, MKL), ace1746, under
# ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=COMPATIBLE with 2 threads (../shared/repro/README.md).
AMD_AVX2_REFERENCE = "06fb693d2bb991c9"


@needs_avx2
@pytest.mark.skipif(
    not torch.__version__.startswith("2.13.0") or "BLAS_INFO=mkl" not in torch.__config__.show(),
    reason="the reference sum was measured with torch 2.13.0's MKL build; another torch sums in another order",
)
@pytest.mark.skipif(not DEMO_DATA.is_file(), reason="the bundled demo trajectory is absent")
def test_reproducible_tiny_member_matches_the_amd_avx2_reference(tmp_path):
    # QDGAP_THREADS=2: the reference machine trained with its 2 cores' threads.
    run = _train(tmp_path / "r", DEMO_DATA, extra_env={numerics.REPRODUCIBLE_ENV: "1", numerics.THREADS_ENV: "2"})
    assert _tensor_sum(run / rf.BEST_PT) == AMD_AVX2_REFERENCE


@needs_avx2
def test_version_reports_the_mode_in_force():
    env = {k: v for k, v in os.environ.items() if k not in _TOUCHED}
    env["PYTHONPATH"] = str(REPO)
    for flag, expected in (
        ([], "cpu numerics: torch defaults"),
        (["--reproducible"], "cpu numerics: reproducible (AVX2"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "qdgap", *flag, "--version"], env=env, capture_output=True, text=True, check=True
        )
        assert done.stdout.splitlines()[-1].startswith(expected), done.stdout
