"""The Python API (``qdgap.Ensemble``) against the CLI: the same numbers, the same errors, lazy imports."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import assert_one_line_error

ROOT = Path(__file__).resolve().parents[2]


def _run_python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


def test_api_import_and_help_load_no_torch():
    code = (
        "import sys, qdgap\n"
        "assert set(qdgap.__all__) >= {'Ensemble', 'Prediction', 'read_trajectory', 'import_structures', 'QdgapError'}\n"
        "from qdgap import Ensemble, Prediction, QdgapError, import_structures, read_trajectory\n"
        "from qdgap.core.common.errors import QdgapError as E\n"
        "assert QdgapError is E and Ensemble.__module__ == 'qdgap.api'\n"
        "from qdgap.cli.app import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "bad = [m for m in ('torch', 'alignn', 'h5py') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    r = _run_python(code)
    assert r.returncode == 0, r.stderr


def test_api_predicts_from_model_ts_without_alignn_or_jarvis(tiny_runs, synthetic_h5):
    """Inference needs torch and the model.ts files only: upstream alignn and jarvis-tools made unimportable."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('alignn', 'jarvis', 'dgl'):\n"
        "            raise ImportError(name + ' is blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import numpy as np\n"
        "from qdgap import Ensemble, read_trajectory\n"
        f"e = Ensemble.load({str(tiny_runs)!r})\n"
        f"p = e.predict({str(synthetic_h5)!r})\n"
        f"t = read_trajectory({str(synthetic_h5)!r})\n"
        "assert p.mean_ev.shape == (t.num_frames,) and np.isfinite(p.mean_ev).all()\n"
        "print(float(p.mean_ev[0]))\n"
    )
    r = _run_python(code)
    assert r.returncode == 0, r.stderr
    from qdgap import Ensemble

    # the same number as in a process where alignn is importable (float32, same model.ts)
    assert float(r.stdout.split()[-1]) == pytest.approx(
        float(Ensemble.load(tiny_runs).predict(synthetic_h5).mean_ev[0]), abs=1e-6
    )


def test_api_unknown_attribute_is_an_attribute_error():
    import qdgap

    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        qdgap.Nope  # noqa: B018


@pytest.mark.parametrize("runs_fixture", ["tiny_runs", "calibrated_runs"])
def test_api_predict_matches_cli(runs_fixture, request, run_cli, tmp_path, synthetic_h5, synthetic_traj):
    from qdgap import Ensemble
    from qdgap.core.common import schema
    from qdgap.core.store.results import read_results

    runs = request.getfixturevalue(runs_fixture)
    out = tmp_path / "p.h5"
    r = run_cli("predict", "--runs", runs, "--data", synthetic_h5, "--frames", "all", "-o", out, "--device", "cpu")
    assert r.exit_code == 0, r.stderr
    cli, _ = read_results(out, fmt=schema.PREDICTIONS_FORMAT)

    ens = Ensemble.load(runs, device="cpu")
    p = ens.predict(synthetic_h5)
    assert len(p) == synthetic_traj.num_frames and len(ens) == 2
    pairs = {
        schema.FRAME_INDEX: p.frame_index,
        schema.TIME_FS: p.time_fs,
        schema.GAP_TRUE_EV: p.gap_true_ev,
        schema.GAP_PRED_EV: p.members_ev,
        schema.GAP_MEAN_EV: p.mean_ev,
        schema.GAP_STD_EV: p.std_ev,
        schema.SEEDS: p.seeds,
    }
    if runs_fixture == "calibrated_runs":
        pairs.update({
            schema.GAP_STD_CALIBRATED_EV: p.std_calibrated_ev, schema.GAP_LO_EV: p.lo_ev,
            schema.GAP_HI_EV: p.hi_ev, schema.EXTRAPOLATING: p.extrapolating,
        })  # fmt: skip
        assert 0 < p.extrapolating.sum() < len(p), "the threshold should split the frames"
        assert p.uncalibrated == "" and p.method == "scale"
    else:
        assert schema.GAP_STD_CALIBRATED_EV not in cli
        assert np.isnan(p.std_calibrated_ev).all() and not p.extrapolating.any() and p.uncalibrated
    for name, api_value in pairs.items():
        np.testing.assert_array_equal(api_value, cli[name], err_msg=name)  # exactly: the same core calls

    # The same frames as ase.Atoms: the same gaps (positions round-trip float32 -> float64 -> float32).
    atoms = _atoms_of(synthetic_traj)
    q = ens.predict(atoms)
    np.testing.assert_array_equal(q.members_ev, p.members_ev)
    np.testing.assert_array_equal(q.std_calibrated_ev, p.std_calibrated_ev)
    one = ens.predict(atoms[7])
    assert one.mean_ev.shape == (1,)
    np.testing.assert_allclose(one.mean_ev[0], p.mean_ev[7], atol=1e-5)

    df = p.to_dataframe()
    assert list(df.columns[:9]) == [
        "frame_index", "time_fs", "gap_true_ev", "gap_mean_ev", "gap_std_ev", "gap_std_calibrated_ev",
        "gap_lo_ev", "gap_hi_ev", "extrapolating",
    ]  # fmt: skip
    assert {"gap_seed0_ev", "gap_seed1_ev"} <= set(df.columns) and len(df) == len(p)
    csv = pd.read_csv(out.with_suffix(".csv"))
    np.testing.assert_allclose(df["gap_mean_ev"], csv["gap_mean_ev"], rtol=0, atol=1e-6)


def test_api_predict_frames_and_other_inputs(tiny_runs, synthetic_h5, synthetic_traj, tmp_path):
    from ase.io import write

    from qdgap import Ensemble, import_structures, read_trajectory

    ens = Ensemble.load(tiny_runs, device="cpu")
    traj = read_trajectory(synthetic_h5)
    assert traj.sha256 and np.array_equal(traj.numbers, ens.numbers)
    unseen = ens.predict(synthetic_h5, frames="unseen")
    pooled = {f for m in ens.members for k in ("train", "val", "test") for f in m.split[k]}
    assert pooled and not pooled & set(unseen.frame_index.tolist())
    some = ens.predict(traj, frames=[3, 1, 4])
    np.testing.assert_array_equal(some.frame_index, [3, 1, 4])

    # An extended XYZ file, through the importers, as `qdgap data import` reads it.
    xyz = tmp_path / "frames.xyz"
    write(xyz, _atoms_of(synthetic_traj)[:5], format="extxyz")
    from_file = ens.predict(xyz)
    imported = import_structures(xyz)
    assert imported.num_frames == 5 and len(from_file) == 5
    np.testing.assert_allclose(from_file.mean_ev, ens.predict(traj, frames=range(5)).mean_ev, atol=1e-5)


def test_api_importance_matches_cli(run_cli, tmp_path, tiny_runs, synthetic_h5):
    from qdgap import Ensemble
    from qdgap.core.common import schema
    from qdgap.core.store.results import read_results

    out = tmp_path / "fna.h5"
    args = ("--frames", "all", "--every", 10, "--bootstrap", 200, "--device", "cpu")
    r = run_cli("fna", "--runs", tiny_runs, "--data", synthetic_h5, *args, "-o", out)
    assert r.exit_code == 0, r.stderr
    cli_csv = pd.read_csv(tmp_path / "average_rmse_results.csv")
    cli, _ = read_results(out, fmt=schema.FNA_FORMAT)

    table = Ensemble.load(tiny_runs, device="cpu").importance(synthetic_h5, every=10, bootstrap=200)
    assert list(table.columns) == list(cli_csv.columns)
    assert table["atom_label"].tolist() == cli_csv["atom_label"].tolist()
    assert table.attrs["ranked_by"] == "rmse" and table.attrs["n_frames"] == len(cli[schema.FRAME_INDEX])
    # Exactly the fna.h5 numbers (the CSV rounds to 6 decimals).
    labels = [str(a) for a in cli[schema.ATOM_LABEL]]
    by_label = table.set_index("atom_label").loc[labels]
    np.testing.assert_array_equal(by_label["rmse_mev_mean"], cli[schema.RMSE_MEV_MEAN])
    np.testing.assert_array_equal(by_label["importance_mev"], cli[schema.IMPORTANCE_MEAN_MEV])
    np.testing.assert_array_equal(by_label["p_value_vs_zero"], cli[schema.P_VALUE_VS_ZERO])
    np.testing.assert_array_equal(by_label["stands_out"], cli[schema.STANDS_OUT])
    numeric = cli_csv.select_dtypes("number").columns
    np.testing.assert_allclose(table[numeric].to_numpy(float), cli_csv[numeric].to_numpy(float), atol=1e-6)


def test_api_importance_without_labels_ranks_by_shift(tiny_runs, synthetic_traj):
    from qdgap import Ensemble

    atoms = _atoms_of(synthetic_traj)[:2]
    for a in atoms:
        a.info.clear()  # no gap: the shift ranks
    table = Ensemble.load(tiny_runs, device="cpu").importance(atoms, bootstrap=200)
    assert table.attrs["ranked_by"] == "shift" and len(table) == synthetic_traj.num_atoms
    assert table["rmse_mev_mean"].isna().all() and np.isfinite(table["mean_abs_shift_mev"]).all()
    assert (np.diff(table["mean_abs_shift_mev"].to_numpy()) <= 1e-12).all()  # most important first


# --------------------------------------------------------------------------
# Every error of `qdgap predict` / `qdgap fna` has its API counterpart: the same message, a QdgapError.
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_dot_h5(tmp_path_factory) -> Path:
    """A trajectory of another composition than ``tiny_runs`` was trained on."""
    from qdgap.core.data.trajectory import write_trajectory
    from qdgap.testing.synthetic import small_cdse_cluster, synthetic_trajectory

    path = tmp_path_factory.mktemp("other") / "other.h5"
    write_trajectory(synthetic_trajectory(12, base=small_cdse_cluster(radius_ang=5.5), seed=1), path)
    return path


def _api_call(command: str, runs: Path, data: Path, options: dict):
    from qdgap import Ensemble

    load = {k: options.pop(k) for k in ("device", "backend") if k in options}
    ens = Ensemble.load(runs, **{"device": "cpu", **load})
    return ens.predict(data, **options) if command == "predict" else ens.importance(data, **options)


CASES = [
    # (command, CLI options, API keyword arguments)
    ("predict", ["--frames", "seen"], {"frames": "seen"}),
    ("predict", ["--level", "1.5"], {"level": 1.5}),
    ("predict", ["--interval", "wide"], {"interval": "wide"}),
    # the CLI's --backend also takes local/slurm (where to run), which the API has no use for: its message differs
    ("predict", ["--backend", "tensorrt"], {"backend": "tensorrt"}),
    ("predict", ["--device", "tpu"], {"device": "tpu"}),
    ("fna", ["--mask", "half"], {"mask": "half"}),
    ("fna", ["--every", "0"], {"every": 0}),
    ("fna", ["--chunk", "0"], {"chunk": 0}),
    ("fna", ["--score", "gain"], {"score": "gain"}),
    ("fna", ["--correction", "none"], {"correction": "none"}),
    ("fna", ["--bootstrap", "3"], {"bootstrap": 3}),
    ("fna", ["--top-k", "0"], {"top_k": 0}),
]


@pytest.mark.parametrize(("command", "cli_args", "api_kwargs"), CASES)
def test_api_errors_match_cli_options(command, cli_args, api_kwargs, run_cli, tmp_path, tiny_runs, synthetic_h5):
    from qdgap import QdgapError

    frames = () if "--frames" in cli_args else ("--frames", "all")
    r = run_cli(command, "--runs", tiny_runs, "--data", synthetic_h5, *frames, "-o", tmp_path / "o.h5", *cli_args)
    assert_one_line_error(r)
    with pytest.raises(QdgapError) as exc:
        _api_call(command, tiny_runs, synthetic_h5, dict(api_kwargs))
    if "--backend" in cli_args:
        assert "--backend must be one of torchscript, onnxruntime" in str(exc.value) and "'tensorrt'" in r.stderr
    else:
        assert str(exc.value) in r.stderr, (str(exc.value), r.stderr)


@pytest.mark.parametrize("command", ["predict", "fna"])
def test_api_errors_match_cli_inputs(command, run_cli, tmp_path, tiny_runs, synthetic_h5, other_dot_h5):
    """Missing runs, no members, an unfinished member, an altered model.ts, a wrong composition, a bad data file."""
    from qdgap import QdgapError

    broken = tmp_path / "broken"
    shutil.copytree(tiny_runs / "run_0", broken / "run_0", ignore=shutil.ignore_patterns(".lock"))
    with open(broken / "run_0" / "model.ts", "ab") as fh:
        fh.write(b"\0")  # altered after training: its sha256 no longer matches DONE's
    unfinished = tmp_path / "unfinished"
    shutil.copytree(tiny_runs / "run_1", unfinished / "run_1", ignore=shutil.ignore_patterns(".lock"))
    (unfinished / "run_1" / "DONE").unlink()
    (tmp_path / "empty").mkdir()
    not_h5 = tmp_path / "not.h5"
    not_h5.write_text("no hdf5 here\n")
    cases = [
        (tmp_path / "absent", synthetic_h5, "no such runs folder"),
        (tmp_path / "empty", synthetic_h5, "no ensemble members"),
        (unfinished, synthetic_h5, "not finished"),
        (broken, synthetic_h5, "sha256"),
        (tiny_runs, other_dot_h5, "trained on"),
        (tiny_runs, not_h5, "not.h5"),
    ]
    for runs, data, fragment in cases:
        r = run_cli(command, "--runs", runs, "--data", data, "--frames", "all", "-o", tmp_path / "o.h5")
        assert_one_line_error(r, fragment)
        with pytest.raises(QdgapError) as exc:
            _api_call(command, runs, data, {})
        assert str(exc.value) in r.stderr, (str(exc.value), r.stderr)
    assert not (tmp_path / "o.h5").exists()


def test_api_refuses_atoms_of_another_composition(tiny_runs, other_dot_h5):
    from qdgap import Ensemble, QdgapError, read_trajectory

    ens = Ensemble.load(tiny_runs, device="cpu")
    other = _atoms_of(read_trajectory(other_dot_h5))
    with pytest.raises(QdgapError, match=r"trained on .*, the data is"):
        ens.predict(other[0])
    with pytest.raises(QdgapError, match="species order differs|atoms, the first frame has"):
        ens.predict([_atoms_of(read_trajectory(other_dot_h5))[0], *_atoms_of(_first_frames(tiny_runs))])
    with pytest.raises(QdgapError, match="empty list"):
        ens.predict([])
    with pytest.raises(QdgapError, match="cannot read structures from a dict"):
        ens.predict({"positions": []})
    with pytest.raises(QdgapError, match="outside the input's"):
        ens.predict(_first_frames(tiny_runs), frames=[99])
    with pytest.raises(QdgapError, match="rmse needs labels"):
        unlabelled = _atoms_of(_first_frames(tiny_runs))
        for a in unlabelled:
            a.info.clear()
        ens.importance(unlabelled, score="rmse")


def _first_frames(runs: Path):
    from qdgap.core.data.trajectory import read_trajectory
    from qdgap.core.store.runs import load_members

    traj = read_trajectory(load_members(runs)[0].record["data"]["path"])
    return traj.select(np.arange(3))


def _atoms_of(traj) -> list:
    """Each frame as an ``ase.Atoms`` with its gap (eV) in ``info['gap']`` where known."""
    from ase import Atoms

    cells = traj.frame_cells()
    out = []
    for i in range(traj.num_frames):
        a = Atoms(numbers=traj.numbers, positions=traj.positions_ang[i], cell=cells[i], pbc=traj.pbc)
        if np.isfinite(traj.gap_ev[i]):
            a.info["gap"] = float(traj.gap_ev[i])
        out.append(a)
    return out
