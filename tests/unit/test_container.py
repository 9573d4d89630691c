"""apptainer.def and the Containerfile install the same thing, and the image targets fail in one line.

The images themselves are built and run by ``make image-test`` (scripts/image-test.sh), which
compares a study run inside the image with the host install's. What is left to check here is
that the SIF built from apptainer.def holds what that tested image holds: the same files and the
same call of scripts/install.sh, with the same defaults.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEF_TEXT = (REPO / "apptainer.def").read_text()
CONTAINERFILE_TEXT = (REPO / "Containerfile").read_text()
ENGINES = ("apptainer", "singularity", "podman", "docker", "buildah")

_BUILD_ARG = re.compile(r"\{\{\s*(\w+)\s*\}\}|\$\{(\w+)\}")  # apptainer's {{ X }}, the Containerfile's ${X}


def _section(text: str, name: str) -> list[str]:
    """The non-comment lines of an apptainer.def section."""
    body = text.split(f"\n%{name}\n", 1)[1].split("\n%", 1)[0]
    return [ln.strip() for ln in body.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def _install_steps(text: str) -> list[str]:
    """The lines that pick the torch wheel and call scripts/install.sh, build arguments written alike, in order
    (a line repeated, as the Containerfile repeats the torch choice in each of its two layers, counts once)."""
    steps = []
    for line in text.splitlines():
        if "torch_spec=" in line or "scripts/install.sh /opt" in line:
            line = _BUILD_ARG.sub(lambda m: f"<{m[1] or m[2]}>", line)
            steps.append(line.strip().rstrip("\\").strip().rstrip(";").strip())
    return list(dict.fromkeys(steps))


def test_images_install_through_the_same_script_call():
    steps = _install_steps(DEF_TEXT)
    assert any("bash /opt/qdgap/scripts/install.sh /opt/qdgap/venv" in s for s in steps), steps
    # dependencies first (the Containerfile's cached layer), then qdgap itself
    assert ["QDGAP_DEPS_ONLY=1" in s for s in steps if "install.sh" in s] == [True, False], steps
    assert steps == _install_steps(CONTAINERFILE_TEXT)
    # ... with the same defaults for the build arguments those lines use.
    defaults = dict(ln.split("=", 1) for ln in _section(DEF_TEXT, "arguments"))
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", CONTAINERFILE_TEXT, re.M))
    assert {k: args.get(k) for k in defaults} == defaults
    install_sh = (REPO / "scripts" / "install.sh").read_text()
    assert f"torch=={defaults['TORCH_VERSION']}" in install_sh


def test_images_copy_the_same_files():
    # apptainer.def copies each %files source to /opt/qdgap/<source>; the Containerfile copies its
    # build context, which .dockerignore cuts down to the sources it lets through.
    files = [ln.split() for ln in _section(DEF_TEXT, "files")]
    assert all(dst == f"/opt/qdgap/{src}" for src, dst in files), files
    allowed = [ln[1:] for ln in (REPO / ".dockerignore").read_text().splitlines() if ln.startswith("!")]
    assert sorted(src for src, _ in files) == sorted(allowed)
    assert "COPY . /opt/qdgap/" in CONTAINERFILE_TEXT
    assert {"qdgap", "data", "scripts", "pyproject.toml"} <= set(allowed)  # the package, its demo data, install.sh


# ----------------------------------------------------------------------------------------
# make sif / image / sif-from-image / image-test without their tools
# ----------------------------------------------------------------------------------------


def _stub(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def _run(argv: list[str], bin_dir: Path, **env_extra: str) -> subprocess.CompletedProcess:
    """Run with a PATH of bin_dir alone: its stubs, and links to every other program but the container tools."""
    bin_dir.mkdir(exist_ok=True)
    for folder in os.environ["PATH"].split(os.pathsep):
        for tool in Path(folder).glob("*") if folder and Path(folder).is_dir() else []:
            link = bin_dir / tool.name
            if tool.name not in ENGINES and not os.path.lexists(link) and os.access(tool, os.X_OK):
                link.symlink_to(tool)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}
    env.update(PATH=str(bin_dir), **env_extra)
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


def _make(target: str, bin_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return _run(["make", "-s", "-C", str(REPO), target, *extra], bin_dir)


def _one_line(result: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in (result.stdout + result.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1, result.stdout + result.stderr
    return lines[0]


needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


@needs_make
@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("sif", "make sif: apptainer not found on PATH"),
        ("image", "make image: neither podman nor docker on PATH"),
        ("sif-from-image", "make sif-from-image: neither podman nor docker on PATH"),
    ],
)
def test_make_image_targets_without_their_tool_fail_with_one_line(tmp_path, target, message):
    result = _make(target, tmp_path / "bin")
    assert result.returncode != 0
    assert message in _one_line(result)


@needs_make
def test_make_image_and_sif_pass_the_build_arguments(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls"
    for tool in ("podman", "apptainer"):
        _stub(bin_dir, tool, f'[ "$1" = info ] && exit 0\necho {tool} "$@" >> {log}\n')
    assert _make("image", bin_dir, "TORCH_VARIANT=cpu", "QDGAP_COMMIT=abc").returncode == 0
    assert _make("sif", bin_dir, "QDGAP_COMMIT=abc").returncode == 0
    podman, apptainer = log.read_text().splitlines()
    import qdgap

    assert podman == (
        "podman build -t qdgap -f Containerfile --build-arg TORCH_VARIANT=cpu "
        f"--build-arg QDGAP_VERSION={qdgap.__version__} --build-arg QDGAP_COMMIT=abc ."
    )
    assert apptainer == (
        "apptainer build --force --build-arg TORCH_VARIANT=cuda --build-arg QDGAP_COMMIT=abc qdgap.sif apptainer.def"
    )


@needs_make
def test_make_sif_from_image_saves_the_tested_image(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls"
    _stub(bin_dir, "podman", f'[ "$1" = info ] && exit 0\necho podman "$@" >> {log}\n')
    archive = tmp_path / "qdgap.oci.tar"
    result = _make("sif-from-image", bin_dir, f"OCI_ARCHIVE={archive}")
    assert result.returncode == 0, result.stderr
    assert f"podman save --format oci-archive -o {archive} localhost/qdgap:test" in log.read_text()
    assert result.stdout.strip().splitlines()[-1] == f"apptainer build qdgap.sif oci-archive://{archive}"


def test_image_test_without_engine_exits_2_with_one_line(tmp_path):
    result = _run(["bash", "scripts/image-test.sh"], tmp_path / "bin")
    assert result.returncode == 2
    assert "neither podman nor docker can run here; install podman" in _one_line(result)


def test_image_test_with_a_missing_base_image_exits_2_with_one_line(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # An engine that answers but has no such image and cannot pull it.
    _stub(bin_dir, "podman", '[ "$1" = info ] && exit 0\nexit 125\n')
    result = _run(["bash", "scripts/image-test.sh"], bin_dir, BASE_IMAGE="localhost/nope:1", WORK=str(tmp_path / "w"))
    assert result.returncode == 2
    line = _one_line(result)
    assert "BASE_IMAGE 'localhost/nope:1' is neither a local image nor pullable" in line
    assert "unset BASE_IMAGE" in line


def test_image_test_with_an_unwritable_bound_folder_exits_2_with_one_line(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # Builds and starts containers, but the user inside cannot write to the bound folder.
    _stub(
        bin_dir,
        "podman",
        'case "$1 $2" in\n'
        '  "image inspect") case "$*" in *--format*) echo 1000000 ;; esac ;;\n'
        '  "run --rm") case "$*" in *--entrypoint*) echo 0 ;; esac ;;\n'
        "esac\nexit 0\n",
    )
    result = _run(
        ["bash", "scripts/image-test.sh"],
        bin_dir,
        BASE_IMAGE="localhost/base:1",
        WORK=str(tmp_path / "w"),
        TORCH_CPU_INDEX="file:///nowhere",
        RUN_USER="4321:4321",
    )
    assert result.returncode == 2, result.stderr
    err = result.stderr.splitlines()[-1]
    assert "is not writable by uid 4321 inside the image; chown 4321:4321" in err
