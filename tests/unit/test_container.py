"""The image definitions (apptainer.def, Containerfile) and ``make sif``/``make image``.

No container engine runs on the development machines, so these tests hold the files to
what they promise instead of building them: both parse (with small parsers that follow
Apptainer's and the Containerfile's rules), both install through ``scripts/install.sh``
with the same steps, both copy the same files (demo data included), the run script and
the entry point pass every argument through unchanged, the labels carry the package
version, and the make targets fail with one line when their tool is missing. The slow
tests run the definition's own %post, %environment and %test outside a container, into
a temporary prefix that stands in for /opt/qdgap.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import qdgap

REPO = Path(__file__).resolve().parents[2]
DEF_FILE = REPO / "apptainer.def"
CONTAINERFILE = REPO / "Containerfile"
DOCKERIGNORE = REPO / ".dockerignore"
INSTALL_SH = REPO / "scripts" / "install.sh"
DEMO_NAME = "cd28se17cl22_demo.h5"
PREFIX = "/opt/qdgap"  # where both images keep the source, the data and the venv
ENGINES = ("apptainer", "singularity", "podman", "docker")

# Arguments a shell could mangle: spaces, quotes, globs, variables, empty, dashes.
TRICKY_ARGS = [
    "train",
    "--seed",
    "7",
    "a b",
    "it's",
    '"quoted"',
    "",
    "--data=x y.h5",
    "$HOME",
    "*",
    "-",
    "\\n",
]


# ----------------------------------------------------------------------------------------
# Parsers
# ----------------------------------------------------------------------------------------

# Apptainer's standard sections (pkg/build/types/parser/deffile.go: validSections).
APPTAINER_SECTIONS = {
    "help",
    "setup",
    "files",
    "labels",
    "environment",
    "pre",
    "post",
    "runscript",
    "test",
    "startscript",
    "arguments",
}
_BUILD_VAR = re.compile(r"{{\s*(\w+)\s*}}")  # the pattern apptainer substitutes --build-arg with


@dataclass
class DefFile:
    header: dict[str, str]
    sections: dict[str, str] = field(default_factory=dict)  # name -> body; repeats are appended


def parse_def(text: str) -> DefFile:
    """Split a definition file as Apptainer does: a line whose first word starts with
    ``%`` opens a section; everything before the first one is the ``Key: value`` header."""
    header_lines: list[str] = []
    sections: dict[str, str] = {}
    current: str | None = None
    for line in text.splitlines():
        words = line.split()
        if words and words[0].startswith("%"):
            current = words[0][1:].lower()
            sections.setdefault(current, "")
            continue
        if current is None:
            header_lines.append(line)
        else:
            sections[current] += line + "\n"
    header: dict[str, str] = {}
    for line in header_lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.split("#")[0].partition(":")
        assert sep, f"header line without a colon: {line!r}"
        header[key.strip().lower()] = value.strip()
    return DefFile(header, sections)


def def_arguments(d: DefFile) -> dict[str, str]:
    """The %arguments defaults; Apptainer skips (with a warning) lines without a value."""
    out = {}
    for line in d.sections.get("arguments", "").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep and key.strip() and value.strip(), f"%arguments line is not KEY=value: {line!r}"
            out[key.strip()] = value.strip()
    return out


def render_def(text: str, **build_args: str) -> str:
    """Substitute ``{{ VAR }}`` as ``apptainer build --build-arg`` does (the whole file,
    comments included); an undefined variable is an error there too."""
    defaults = def_arguments(parse_def(text))

    def value(match: re.Match) -> str:
        name = match.group(1)
        if name in build_args:
            return build_args[name]
        if name in defaults:
            return defaults[name]
        raise AssertionError(f"build var {name} is in neither --build-arg nor %arguments")

    return _BUILD_VAR.sub(value, text)


def def_files(d: DefFile) -> list[tuple[str, str]]:
    """(source, destination) pairs of %files, in order."""
    pairs = []
    for line in d.sections.get("files", "").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            src, _, dst = line.partition(" ")
            pairs.append((src, dst.strip() or src))
    return pairs


def def_labels(d: DefFile) -> dict[str, str]:
    """%labels as Apptainer reads them: the key, then the value after the first space."""
    out = {}
    for line in d.sections.get("labels", "").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            out[key] = value.strip()
    return out


CONTAINERFILE_INSTRUCTIONS = {
    "FROM",
    "ARG",
    "ENV",
    "LABEL",
    "COPY",
    "ADD",
    "RUN",
    "WORKDIR",
    "USER",
    "ENTRYPOINT",
    "CMD",
    "EXPOSE",
    "VOLUME",
    "SHELL",
    "STOPSIGNAL",
    "HEALTHCHECK",
    "ONBUILD",
}


def parse_containerfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs; continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not buf and not line):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        keyword, _, rest = buf.strip().partition(" ")
        out.append((keyword.upper(), rest.strip()))
        buf = ""
    assert not buf, "Containerfile ends inside a continued line"
    return out


def cf_values(instructions: list[tuple[str, str]], keyword: str) -> list[str]:
    return [rest for kw, rest in instructions if kw == keyword]


def cf_key_values(rest: str) -> dict[str, str]:
    """``KEY=value KEY2="v 2"`` (ARG, ENV, LABEL) as a dict."""
    out = {}
    for token in shlex.split(rest):
        key, _, value = token.partition("=")
        out[key] = value
    return out


def cf_args(instructions: list[tuple[str, str]]) -> dict[str, str]:
    out = {}
    for rest in cf_values(instructions, "ARG"):
        out.update(cf_key_values(rest))
    return out


def cf_substitute(value: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m.group(1) or m.group(2), m.group(0)), value)


def dockerignore_rules(text: str) -> list[tuple[bool, re.Pattern]]:
    """(excluded?, pattern) in file order; the last rule that matches a path decides."""
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                regex += ".*"
                i += 2
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        rules.append((not negate, re.compile(regex + r"\Z")))
    return rules


def _ignored(rel: str, rules: list[tuple[bool, re.Pattern]]) -> bool:
    """Docker's rule: a path is excluded when it, or one of its parent folders, is."""
    parts = rel.split("/")
    excluded = False
    for n in range(1, len(parts) + 1):
        prefix = "/".join(parts[:n])
        for exclude, rx in rules:
            if rx.match(prefix):
                excluded = exclude
    return excluded


def docker_context(root: Path, rules) -> set[str]:
    """Files that `COPY . /opt/qdgap/` would see, relative to the repository root."""
    reinclude = [rx.pattern for exclude, rx in rules if not exclude]
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        # Prune what is excluded and that no '!' rule could bring back (.git, .venv...).
        dirnames[:] = [
            d
            for d in dirnames
            if not _ignored(rel_dir + d, rules) or any(p.startswith(re.escape(rel_dir + d)) for p in reinclude)
        ]
        out.update(rel_dir + f for f in filenames if not _ignored(rel_dir + f, rules))
    return out


def commands(script: str) -> list[str]:
    """Shell commands of a script, one per line or ';', whitespace normalised (enough for
    the flat scripts in the image files: no ';' inside quotes)."""
    out = []
    for line in script.splitlines():
        if line.strip().startswith("#"):
            continue
        out += [" ".join(part.split()) for part in line.split(";") if part.strip()]
    return out


def torch_specs(script: str) -> dict[str, str]:
    """The `case` arms that map TORCH_VARIANT to the torch requirement."""
    return dict(re.findall(r'(\w+)\)\s*torch_spec="([^"]*)"', script))


def package_version_pyproject() -> str:
    text = (REPO / "pyproject.toml").read_text()
    project = text.split("[project]", 1)[1].split("\n[", 1)[0]
    return re.search(r'^version\s*=\s*"([^"]+)"', project, re.M).group(1)


# ----------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deffile_text() -> str:
    return DEF_FILE.read_text()


@pytest.fixture(scope="module")
def deffile(deffile_text) -> DefFile:
    return parse_def(render_def(deffile_text))


@pytest.fixture(scope="module")
def containerfile() -> list[tuple[str, str]]:
    return parse_containerfile(CONTAINERFILE.read_text())


@pytest.fixture
def argv_stub(tmp_path):
    """A fake ``qdgap``: prints its arguments as JSON, its parent's pid on stderr, and
    exits with $STUB_EXIT."""

    def make(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        stub = folder / "qdgap"
        stub.write_text(
            f"#!{sys.executable}\nimport json, os, sys\n"
            "print(json.dumps(sys.argv[1:]))\nprint(os.getppid(), file=sys.stderr)\n"
            "sys.exit(int(os.environ.get('STUB_EXIT', '0')))\n"
        )
        stub.chmod(0o755)
        return stub

    return make


# ----------------------------------------------------------------------------------------
# apptainer.def
# ----------------------------------------------------------------------------------------


def test_def_parses_into_header_and_sections(deffile):
    assert deffile.header["bootstrap"] == "docker"
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", deffile.header["from"]), deffile.header
    assert set(deffile.sections) <= APPTAINER_SECTIONS, set(deffile.sections) - APPTAINER_SECTIONS
    for name in (
        "arguments",
        "files",
        "post",
        "environment",
        "runscript",
        "test",
        "labels",
        "help",
    ):
        assert deffile.sections.get(name, "").strip(), f"%{name} is missing or empty"


def test_def_build_args_have_defaults_and_select_torch(deffile_text):
    args = def_arguments(parse_def(deffile_text))
    assert args["TORCH_VARIANT"] == "cuda"  # GPU nodes by default
    used = set(_BUILD_VAR.findall(deffile_text))
    assert used <= set(args), f"used but not in %arguments: {used - set(args)}"
    cuda = torch_specs(parse_def(render_def(deffile_text)).sections["post"])["cuda"]
    cpu = torch_specs(parse_def(render_def(deffile_text, TORCH_VARIANT="cpu")).sections["post"])["cpu"]
    assert cuda == f"torch=={args['TORCH_VERSION']}"
    assert cpu == f"torch=={args['TORCH_VERSION']} --index-url https://download.pytorch.org/whl/cpu"
    # The %post refuses a variant it does not know, rather than building a default.
    post = parse_def(render_def(deffile_text, TORCH_VARIANT="rocm")).sections["post"]
    result = subprocess.run(["sh", "-c", post], capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
    assert result.returncode != 0 and "TORCH_VARIANT must be cuda or cpu" in result.stderr


def test_def_runscript_passes_arguments_through(deffile, argv_stub, tmp_path):
    """%environment then %runscript, as `apptainer run` does, with /opt/qdgap moved to
    tmp_path: every argument arrives unchanged, the image's qdgap wins over one on the
    host PATH, and qdgap replaces the shell (exec), so its exit code is the container's
    and Slurm's signals reach it."""
    image = tmp_path / "image"
    argv_stub(image / "venv" / "bin")
    decoy = argv_stub(tmp_path / "host-bin")
    decoy.write_text("#!/bin/sh\necho host qdgap was run; exit 99\n")
    env_sh = tmp_path / "90-environment.sh"
    env_sh.write_text(deffile.sections["environment"].replace(PREFIX, str(image)))
    runscript = tmp_path / "runscript"
    runscript.write_text("#!/bin/sh\n" + deffile.sections["runscript"])
    env = {
        "PATH": f"{decoy.parent}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "PYTHONPATH": "/nonexistent",
    }
    for shell in ("sh", "bash"):
        # apptainer's run action: source the environment, then exec the runscript.
        action = tmp_path / f"run-action-{shell}"
        action.write_text(f'. "{env_sh}"\nexec {shell} "{runscript}" "$@"\n')
        result = subprocess.run(["sh", str(action), *TRICKY_ARGS], capture_output=True, text=True, env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert json.loads(result.stdout) == TRICKY_ARGS
        assert int(result.stderr) == os.getpid(), "qdgap is not exec'd: a shell stays between"
        result = subprocess.run(
            ["sh", str(action), "bad"],
            capture_output=True,
            text=True,
            env={**env, "STUB_EXIT": "2"},
        )
        assert result.returncode == 2


def test_def_environment_isolates_host_python(deffile, tmp_path):
    env_sh = deffile.sections["environment"]
    probe = f'{env_sh}\necho "$PATH|${{PYTHONPATH-unset}}|$PYTHONNOUSERSITE"\n'
    result = subprocess.run(
        ["sh", "-c", probe],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": "/host/lib"},
    )
    path, pythonpath, nousersite = result.stdout.strip().split("|")
    assert path.split(":")[0] == f"{PREFIX}/venv/bin"
    assert pythonpath == "unset" and nousersite == "1"


# ----------------------------------------------------------------------------------------
# Containerfile
# ----------------------------------------------------------------------------------------


def test_containerfile_parses_into_instructions(containerfile, deffile):
    keywords = [kw for kw, _ in containerfile]
    assert set(keywords) <= CONTAINERFILE_INSTRUCTIONS, set(keywords) - CONTAINERFILE_INSTRUCTIONS
    assert keywords[0] == "FROM" and keywords.count("FROM") == 1
    assert cf_values(containerfile, "FROM") == [deffile.header["from"]]  # the same base as the .sif
    args = cf_args(containerfile)
    assert args["TORCH_VARIANT"] == "cuda"
    assert args["TORCH_VERSION"] == def_arguments(parse_def(DEF_FILE.read_text()))["TORCH_VERSION"]
    assert cf_values(containerfile, "COPY") == [f". {PREFIX}/"]
    assert cf_values(containerfile, "WORKDIR") == [PREFIX]
    env = {}
    for rest in cf_values(containerfile, "ENV"):
        env.update(cf_key_values(rest))
    assert env["PATH"].split(":")[0] == f"{PREFIX}/venv/bin" and env["PYTHONNOUSERSITE"] == "1"


def test_containerfile_entrypoint_passes_arguments_through(containerfile, argv_stub, tmp_path):
    (entrypoint,) = cf_values(containerfile, "ENTRYPOINT")
    (cmd,) = cf_values(containerfile, "CMD")
    # Exec (JSON) form: the shell form would run `sh -c` and drop every argument.
    assert json.loads(entrypoint) == ["qdgap"] and json.loads(cmd) == ["--help"]
    stub = argv_stub(tmp_path / "venv" / "bin")
    env = {"PATH": f"{stub.parent}:{os.environ['PATH']}"}
    # What the engine executes for `podman run qdgap ARGS...`: ENTRYPOINT + ARGS, no shell.
    result = subprocess.run([*json.loads(entrypoint), *TRICKY_ARGS], capture_output=True, text=True, env=env)
    assert json.loads(result.stdout) == TRICKY_ARGS
    result = subprocess.run([*json.loads(entrypoint), *json.loads(cmd)], capture_output=True, text=True, env=env)
    assert json.loads(result.stdout) == ["--help"]  # no arguments: the help


def test_containerfile_build_fails_on_unknown_variant(containerfile):
    run = next(r for r in cf_values(containerfile, "RUN") if "install.sh" in r)
    result = subprocess.run(
        ["sh", "-c", run],
        capture_output=True,
        text=True,
        env={
            "PATH": os.environ["PATH"],
            "TORCH_VARIANT": "rocm",
            "TORCH_VERSION": "2.13.0",
            "QDGAP_VERSION": "0",
        },
    )
    assert result.returncode != 0 and "TORCH_VARIANT must be cuda or cpu" in result.stderr


# ----------------------------------------------------------------------------------------
# Both: one install recipe, same steps, same files, labels
# ----------------------------------------------------------------------------------------


def _install_script_default_torch() -> str:
    match = re.search(r"QDGAP_TORCH_SPEC:-torch==([^}\s]+)\}", INSTALL_SH.read_text())
    assert match, "scripts/install.sh no longer defaults QDGAP_TORCH_SPEC to torch==X"
    return match.group(1)


def test_images_install_with_the_shared_script(deffile_text, containerfile):
    post = parse_def(deffile_text).sections["post"].replace("{{ TORCH_VARIANT }}", "${TORCH_VARIANT}")
    post = post.replace("{{ TORCH_VERSION }}", "${TORCH_VERSION}")
    run = next(r for r in cf_values(containerfile, "RUN") if "install.sh" in r)
    # The same torch requirement for each variant...
    assert torch_specs(post) == torch_specs(run)
    assert set(torch_specs(post)) == {"cuda", "cpu"}
    # ...and the default version is install.sh's, so `make install` and the images agree.
    assert def_arguments(parse_def(deffile_text))["TORCH_VERSION"] == _install_script_default_torch()
    assert cf_args(containerfile)["TORCH_VERSION"] == _install_script_default_torch()
    for script in (post, run):
        (install,) = [c for c in commands(script) if "install.sh" in c]
        words = shlex.split(install)
        env = dict(w.split("=", 1) for w in words if "=" in w and not w.startswith("/"))
        assert words[len(env) :] == ["bash", f"{PREFIX}/scripts/install.sh", f"{PREFIX}/venv"], install
        assert env == {
            "PIP_NO_CACHE_DIR": "1",
            "QDGAP_TORCH_SPEC": "$torch_spec",
            "QDGAP_EDITABLE": "1",
        }
        # Nothing is pip-installed around the script: it is the one place to change.
        assert not re.search(r"\bpip3?\s+install|-m\s+pip\b", script), "install only through scripts/install.sh"
    # The other steps match too (source compiled, readable by all users, cached bytecode gone).
    steps = {c for c in commands(post) if c.startswith(("find ", "chmod ", "/opt/qdgap/venv/bin/python -m"))}
    assert steps and steps <= set(commands(run)), steps - set(commands(run))


def test_images_copy_the_same_files_and_the_demo_data(deffile):
    files = def_files(deffile)
    assert (("data", f"{PREFIX}/data")) in files
    # The package sits beside data/ in both images (editable install of /opt/qdgap), so its
    # own default, DEMO_DATA = <package>/../data/..., is the bundled file.
    assert ("qdgap", f"{PREFIX}/qdgap") in files
    from qdgap.cli.options import DEMO_DATA

    in_image = f"{PREFIX}/{DEMO_DATA.relative_to(REPO).as_posix()}"
    assert in_image == f"{PREFIX}/data/{DEMO_NAME}"
    for src, dst in files:
        assert (REPO / src).exists(), f"%files source {src} is not in the repository"
        assert dst == f"{PREFIX}/{src}", (src, dst)
    # The Containerfile's build context is exactly what %files copies.
    rules = dockerignore_rules(DOCKERIGNORE.read_text())
    context = docker_context(REPO, rules)
    copied = set()
    for src, _ in files:
        path = REPO / src
        found = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        copied |= {p.relative_to(REPO).as_posix() for p in found if "__pycache__" not in p.parts}
    assert context == copied, (sorted(context - copied), sorted(copied - context))
    assert not _ignored(f"data/{DEMO_NAME}", rules) and not _ignored(f"data/{DEMO_NAME[:-3]}_ext.h5", rules)
    # Both smoke tests read the bundled file and check the built-in default finds it.
    (smoke,) = [r for r in parse_containerfile(CONTAINERFILE.read_text()) if r[0] == "RUN" and "data info" in r[1]]
    for script in (deffile.sections["test"], smoke[1]):
        assert f"qdgap data info {in_image}" in script
        assert "DEMO_DATA.is_file()" in script
        assert "qdgap --help" in script


def test_image_labels_carry_the_package_version(deffile, deffile_text, containerfile, tmp_path):
    version = package_version_pyproject()
    assert version == qdgap.__version__
    # Containerfile: a build argument (make image passes pyproject's) that the build
    # checks against the installed package; its default must be the current version.
    args = cf_args(containerfile)
    assert args["QDGAP_VERSION"] == version
    labels = {}
    for rest in cf_values(containerfile, "LABEL"):
        labels.update(cf_key_values(rest))
    labels = {k: cf_substitute(v, args) for k, v in labels.items()}
    assert labels["org.opencontainers.image.version"] == version
    assert labels["qdgap.torch.variant"] == "cuda"
    # apptainer.def: %post writes the version the installed package reports; run those
    # lines against this checkout's package.
    post = deffile.sections["post"]
    lines = [ln for ln in post.splitlines() if "qdgap_version" in ln]
    assert any("APPTAINER_LABELS" in ln for ln in lines)
    snippet = "\n".join(lines).replace(f"{PREFIX}/venv/bin/python", shlex.quote(sys.executable))
    labels_file = tmp_path / "labels"
    env = {**os.environ, "APPTAINER_LABELS": str(labels_file), "PYTHONPATH": str(REPO)}
    subprocess.run(["sh", "-ec", snippet], check=True, env=env)
    assert labels_file.read_text().splitlines() == [f"org.opencontainers.image.version {version}"]
    static = def_labels(deffile)
    assert static["qdgap.torch.variant"] == "cuda"
    assert static["qdgap.torch.version"] == _install_script_default_torch()
    assert "org.opencontainers.image.version" not in static  # measured, never typed in


# ----------------------------------------------------------------------------------------
# make sif / make image
# ----------------------------------------------------------------------------------------


def _stub(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def _make(target: str, bin_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    """``make TARGET`` with PATH stripped of every container tool (plus stubs in bin_dir)."""
    bin_dir.mkdir(exist_ok=True)
    for tool in ("sed",):  # what the recipes need besides the engines
        if not (bin_dir / tool).exists():
            (bin_dir / tool).symlink_to(shutil.which(tool))
    path = [str(bin_dir)] + [
        d
        for d in os.environ["PATH"].split(os.pathsep)
        if d and not any(os.path.exists(os.path.join(d, e)) for e in ENGINES)
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}
    env["PATH"] = os.pathsep.join(path)
    make = shutil.which("make")
    return subprocess.run([make, "-s", "-C", str(REPO), target, *extra], capture_output=True, text=True, env=env)


def _one_line(result: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in (result.stdout + result.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1, result.stdout + result.stderr
    return lines[0]


needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


@needs_make
def test_make_sif_without_apptainer_fails_with_one_line(tmp_path):
    result = _make("sif", tmp_path / "bin")
    assert result.returncode != 0
    line = _one_line(result)
    assert "make sif: apptainer not found on PATH" in line


@needs_make
def test_make_image_without_engine_fails_with_one_line(tmp_path):
    result = _make("image", tmp_path / "bin")
    assert result.returncode != 0
    assert "make image: neither podman nor docker on PATH" in _one_line(result)


@needs_make
def test_make_image_with_docker_but_no_daemon_fails_with_one_line(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls"
    _stub(
        bin_dir,
        "docker",
        f'echo "$@" >> {log}\n'
        '[ "$1" = info ] && { echo "Cannot connect to the Docker daemon" >&2; exit 1; }\n'
        "exit 0\n",
    )
    result = _make("image", bin_dir)
    assert result.returncode != 0
    line = _one_line(result)
    assert "docker on PATH but 'docker info' failed" in line and "daemon" in line
    assert "build" not in log.read_text()  # nothing was started


@needs_make
def test_make_image_and_sif_pass_the_build_arguments(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls"
    for tool in ("podman", "docker", "apptainer"):
        _stub(bin_dir, tool, f'[ "$1" = info ] && exit 0\necho {tool} "$@" >> {log}\n')
    assert _make("image", bin_dir, "TORCH_VARIANT=cpu").returncode == 0
    assert _make("sif", bin_dir).returncode == 0
    podman, apptainer = log.read_text().splitlines()
    version = package_version_pyproject()
    # podman first (no daemon needed); the version label from pyproject.toml.
    assert podman == (
        f"podman build -t qdgap -f Containerfile --build-arg TORCH_VARIANT=cpu --build-arg QDGAP_VERSION={version} ."
    )
    assert apptainer == "apptainer build --force --build-arg TORCH_VARIANT=cuda qdgap.sif apptainer.def"


# ----------------------------------------------------------------------------------------
# Slow: the definition's own steps, run outside a container into a stand-in prefix
# ----------------------------------------------------------------------------------------


def _files_into(prefix_root: Path, deffile: DefFile) -> Path:
    """Copy %files as Apptainer does (`cp -fLr SRC DST`, SRC relative to the build's
    working directory, the repository root) into prefix_root standing in for /."""
    for src, dst in def_files(deffile):
        target = prefix_root / dst.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-fLr", src, str(target)], cwd=REPO, check=True)
    return prefix_root / PREFIX.lstrip("/")


def _in_image(script: str, image: Path) -> str:
    return script.replace(PREFIX, str(image))


@pytest.fixture(scope="module")
def built_prefix(tmp_path_factory, deffile):
    """%files then %post (TORCH_VARIANT default; here `torch==X` resolves to the local
    CPU wheel) with /opt/qdgap moved into a temporary folder."""
    root = tmp_path_factory.mktemp("rootfs")
    image = _files_into(root, deffile)
    labels = root / ".build.labels"
    post = root / ".post.script"
    post.write_text(_in_image(deffile.sections["post"], image))
    result = subprocess.run(
        ["sh", str(post)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, "APPTAINER_LABELS": str(labels)},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root, image, labels


def _run_in_image(deffile: DefFile, image: Path, script: str, cwd: Path) -> subprocess.CompletedProcess:
    """Source %environment, then run SCRIPT, as `apptainer exec/test` would."""
    full = _in_image(deffile.sections["environment"], image) + "\n" + _in_image(script, image)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    return subprocess.run(["sh", "-c", full], cwd=cwd, capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
def test_def_post_installs_a_working_qdgap(built_prefix, deffile, tmp_path):
    root, image, labels = built_prefix
    assert (image / "venv" / "bin" / "qdgap").is_file()
    assert list((image / "qdgap" / "cli" / "__pycache__").glob("app.*.pyc")), "%post did not compile the sources"
    result = _run_in_image(
        deffile,
        image,
        "qdgap --version\nqdgap --help\npython -c 'import qdgap; print(qdgap.__file__)'",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert out[0] == f"qdgap {qdgap.__version__}"
    assert "Usage: qdgap" in result.stdout
    assert out[-1] == str(image / "qdgap" / "__init__.py")  # the image's copy, not this checkout
    recorded = dict(line.split(" ", 1) for line in labels.read_text().splitlines())
    assert recorded["org.opencontainers.image.version"] == package_version_pyproject()
    assert recorded["qdgap.torch.installed"].startswith(_install_script_default_torch())


@pytest.mark.slow
def test_def_test_section_passes_on_the_bundled_demo_data(built_prefix, deffile, tmp_path):
    root, image, _ = built_prefix
    if not (image / "data" / DEMO_NAME).is_file():
        pytest.skip(
            f"data/{DEMO_NAME} is not in the repository yet; %test reads it (qdgap --help was checked without it)"
        )
    # From a folder that is not the image's (apptainer runs in the host's working directory).
    result = _run_in_image(deffile, image, deffile.sections["test"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Cd28Se17Cl22" in result.stdout


@pytest.mark.slow
def test_install_script_non_editable_into_fresh_venv(tmp_path):
    """The plain wheel install (QDGAP_EDITABLE=0), as on a login node that drives the
    Slurm backend: from a copy of the sources, so no build/ lands in the checkout."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "scripts", "qdgap", "data"):
        subprocess.run(["cp", "-fLr", name, str(src / name)], cwd=REPO, check=True)
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    subprocess.run(
        ["bash", str(src / "scripts" / "install.sh"), str(venv)],
        check=True,
        timeout=1200,
        env={**env, "QDGAP_EDITABLE": "0", "PIP_NO_CACHE_DIR": "1"},
    )
    qdgap_bin = venv / "bin" / "qdgap"
    result = subprocess.run([str(qdgap_bin), "--help"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert result.returncode == 0 and "Usage: qdgap" in result.stdout, result.stderr
    demo = REPO / "data" / DEMO_NAME
    if not demo.is_file():
        pytest.skip(f"data/{DEMO_NAME} is not in the repository yet; `qdgap --help` passed, `qdgap data info` not run")
    result = subprocess.run(
        [str(qdgap_bin), "data", "info", f"data/{DEMO_NAME}"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "Cd28Se17Cl22" in result.stdout
