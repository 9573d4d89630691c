"""``qdgap --version`` and the build attrs of result files (core.buildinfo, core.files.provenance)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import h5py
import pytest
import torch

import qdgap
from qdgap.core.common import buildinfo

COMMIT = re.compile(r"^[0-9a-f]{40}(-dirty)?$")
TORCH_VARIANT = f"cuda {torch.version.cuda}" if torch.version.cuda else "cpu"


@pytest.fixture
def fresh_cache():
    buildinfo.qdgap_commit.cache_clear()
    yield
    buildinfo.qdgap_commit.cache_clear()


@pytest.fixture
def no_checkout(monkeypatch, tmp_path, fresh_cache):
    """The package as installed outside a checkout: no git to ask, the record in tmp_path."""
    monkeypatch.setattr(buildinfo, "git_commit", lambda source=None: None)
    monkeypatch.setattr(buildinfo, "BUILD_INFO_FILE", tmp_path / "_build_info.json")
    return tmp_path / "_build_info.json"


def test_version_prints_qdgap_commit_torch_build_and_cuda(run_cli):
    result = run_cli("--version")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"qdgap {qdgap.__version__}"
    assert lines[1].startswith("commit ")
    commit = lines[1].removeprefix("commit ")
    assert COMMIT.match(commit) or commit == buildinfo.UNKNOWN, commit
    assert lines[2] == f"torch {torch.__version__} ({TORCH_VARIANT})"
    assert lines[3] == f"cuda available: {'yes' if torch.cuda.is_available() else 'no'}"
    assert lines[4].startswith("cpu numerics: ") and torch.backends.cpu.get_cpu_capability() in lines[4]
    assert len(lines) == 5


def test_buildinfo_commit_from_the_checkout(fresh_cache):
    if not (buildinfo.PACKAGE_DIR.parent / ".git").exists():
        pytest.skip("qdgap is not imported from a git checkout")
    head = subprocess.run(
        ["git", "-C", str(buildinfo.PACKAGE_DIR.parent), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    assert buildinfo.qdgap_commit().removesuffix("-dirty") == head


def test_buildinfo_commit_without_git_reads_the_install_record(no_checkout):
    assert buildinfo.qdgap_commit() == buildinfo.UNKNOWN  # neither git nor a record: never an error
    buildinfo.qdgap_commit.cache_clear()
    no_checkout.write_text(json.dumps({"commit": "0" * 40}))
    assert buildinfo.qdgap_commit() == "0" * 40


def test_buildinfo_git_commit_of_a_plain_folder_is_none(tmp_path, monkeypatch):
    assert buildinfo.git_commit(tmp_path) is None
    (tmp_path / ".git").mkdir()  # looks like a checkout, but git refuses it
    assert buildinfo.git_commit(tmp_path) is None
    monkeypatch.setenv("PATH", str(tmp_path))  # no git at all
    assert buildinfo.git_commit(buildinfo.PACKAGE_DIR.parent) is None


def test_buildinfo_write_records_the_given_commit(no_checkout, monkeypatch, tmp_path):
    # What scripts/install.sh runs in an image build, where the sources have no .git.
    monkeypatch.setenv("QDGAP_COMMIT", "abc123")
    assert buildinfo.write_build_info(tmp_path) == {"commit": "abc123"}
    assert json.loads(no_checkout.read_text()) == {"commit": "abc123"}
    assert buildinfo.qdgap_commit() == "abc123"


def test_buildinfo_commit_in_a_process_without_git(tmp_path):
    # A fresh interpreter with no git on PATH, as in an image: the record or "unknown", never an error.
    done = subprocess.run(
        [sys.executable, "-c", "from qdgap.core.common.buildinfo import qdgap_commit; print(qdgap_commit())"],
        capture_output=True,
        text=True,
        env={"PATH": str(tmp_path), "PYTHONPATH": str(buildinfo.PACKAGE_DIR.parent)},
        check=True,
    )
    recorded = buildinfo.recorded_build_info().get("commit", buildinfo.UNKNOWN)
    assert done.stdout.strip() == recorded


def _expected_build_attrs() -> dict[str, object]:
    return {
        "qdgap_commit": buildinfo.qdgap_commit(),
        "torch_version": torch.__version__,
        "torch_variant": TORCH_VARIANT,
        "cuda_available": torch.cuda.is_available(),
    }


def test_result_file_attrs_carry_the_build(tmp_path):
    from qdgap.core.store.results import read_results, write_results

    path = tmp_path / "r.h5"
    write_results(path, {"x": [1.0, 2.0]}, fmt="qdgap.test", version=1, attrs={"seeds": [7]})
    _, attrs = read_results(path, fmt="qdgap.test")
    assert {k: attrs[k] for k in _expected_build_attrs()} == _expected_build_attrs()
    assert attrs["qdgap_version"] == qdgap.__version__ and attrs["command"] and attrs["created"]


def test_trajectory_attrs_carry_the_build(tmp_path, synthetic_traj):
    from qdgap.core.data.trajectory import read_trajectory, write_trajectory

    path = tmp_path / "t.h5"
    write_trajectory(synthetic_traj, path)
    attrs = read_trajectory(path).attrs
    assert {k: attrs[k] for k in _expected_build_attrs()} == _expected_build_attrs()
    with h5py.File(path) as h5:
        assert isinstance(h5.attrs["torch_version"], str)  # stored as text, not a numpy unicode array
