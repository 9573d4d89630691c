#!/usr/bin/env bash
# The one install recipe, shared by the Makefile, CI and the container images.
#   scripts/install.sh VENV [EXTRAS]     e.g. scripts/install.sh .venv dev
# Creates VENV if missing, installs torch first (the CPU 2.13.0 wheel unless
# QDGAP_TORCH_SPEC says otherwise, e.g. "torch==2.13.0 --index-url .../cu126"),
# then qdgap itself in editable mode with the given extras, every other package at
# the version in scripts/constraints.txt (QDGAP_CONSTRAINTS= turns that off), and
# records the git commit (QDGAP_COMMIT, else the checkout's) for `qdgap --version`.
# QDGAP_DEPS_ONLY=1 stops after torch and qdgap's own dependencies (pyproject.toml's, pinned):
# the images install those in a layer of their own, which a change to the sources does not
# invalidate, so rebuilding the image after a code change takes seconds instead of a download.
# Idempotent: a second run installs nothing new.
set -euo pipefail
venv=${1:?usage: scripts/install.sh VENV [EXTRAS]}
extras=${2:-}
here=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
torch_spec=${QDGAP_TORCH_SPEC:-torch==2.13.0}
editable=${QDGAP_EDITABLE:-1}
# The versions of the tested install (make constraints): the same environment next month.
constraints=${QDGAP_CONSTRAINTS-$here/scripts/constraints.txt}
pin=()
[ -n "$constraints" ] && pin=(-c "$constraints")

if [ ! -x "$venv/bin/python" ]; then
    "$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null \
        || { echo "install: qdgap needs Python 3.10 or newer; $py is $("$py" -V 2>&1) (PYTHON=... picks another)" >&2; exit 2; }
    "$py" -m venv "$venv"
fi
# The pins were resolved on Python 3.11 and some releases (numpy 2.4, pandas 3, scipy 1.17) need 3.11:
# on 3.10 pip takes the newest releases that support it (the suite passes with numpy 2.2, pandas 2.3, scipy 1.15).
if [ -n "$constraints" ] && ! "$venv/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "install: Python 3.10: not pinning to $(basename "$constraints") (made on 3.11); the newest releases for 3.10 instead" >&2
    pin=()
fi
pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)
# torch first, so that nothing below can pull a multi-GB CUDA build as a dependency.
# shellcheck disable=SC2086
"${pip[@]}" $torch_spec
if [ "${QDGAP_DEPS_ONLY:-0}" = 1 ]; then
    deps=$("$venv/bin/python" -c 'import sys, tomllib; print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))' "$here/pyproject.toml")
    # shellcheck disable=SC2086
    "${pip[@]}" "${pin[@]}" $deps
    exit 0
fi
target="$here"
[ -n "$extras" ] && target="$here[$extras]"
# torch's own dependencies are pinned here, after the fact: its index (e.g. the CPU
# wheels') need not carry the pinned versions.
if [ "$editable" = 1 ]; then
    "${pip[@]}" "${pin[@]}" -e "$target"
else
    "${pip[@]}" "${pin[@]}" "$target"
fi
# qdgap/_build_info.json beside the installed package: the commit, for `qdgap --version`.
"$venv/bin/python" -m qdgap.core.common.buildinfo --write --source "$here" > /dev/null
