#!/usr/bin/env bash
# Packs what the lent GPU machine lacks into work/device-kit/, so that a GPU check is one `run` call.
#
# The GPU machine (the device tool's nvidia-h200) has Python 3.12 with CUDA torch, numpy, h5py, scipy,
# matplotlib, pandas, rich, typer, scikit-learn and onnxruntime (CPU provider only), and no network.
# It lacks alignn, ase, jarvis-tools, pydantic and submitit: their wheels, at the versions this
# checkout's .venv runs, are downloaded here for its Python, with typer, rich and h5py at the tested
# versions too (the image's own are of unknown age; the kit's come first on PYTHONPATH). The seed data is linked in, not copied
# into the repository (work/ is ignored; the device tool carries the files a `carry` path names).
#
#   bash scripts/device-kit.sh                  # wheels for the GPU machine (cp312)
#   PYVER=3.11 bash scripts/device-kit.sh       # wheels for this machine, to rehearse scripts/device-run.sh
#
# Then, with the device tool: run(command="bash scripts/device-run.sh", carry=["work/device-kit"]).
set -euo pipefail
cd "$(dirname "$0")/.."

kit=${KIT:-work/device-kit}
pyver=${PYVER:-3.12}
venv_py=${VENV_PY:-.venv/bin/python}
seed=${SEED_DATA:-../shared/seed-data/cl_qd}
# What qdgap and bench/gpu_check.py import that the GPU machine's image does not hold (the device
# tool's KINDS.md lists its packages); alignn's other requirements (dgl-era tools, lmdb, spglib,
# flake8) are never imported on these paths, so --no-deps leaves them out.
packages=(alignn ase jarvis-tools pydantic pydantic-core pydantic-settings python-dotenv annotated-types
    typing-inspection xmltodict submitit typer rich h5py)

say() { echo "device-kit: $*"; }
[ -x "$venv_py" ] || { echo "device-kit: $venv_py not found: run 'make install' first" >&2; exit 2; }

rm -rf "$kit.tmp"
mkdir -p "$kit.tmp/wheels"
for name in "${packages[@]}"; do
    version=$("$venv_py" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$kit.tmp/wheels" "$name==$version" 2>"$kit.tmp/pip.log" \
        || { grep -v "is ignored" "$kit.tmp/pip.log" >&2; echo "device-kit: no wheel of $name==$version for Python $pyver" >&2; exit 2; }
done
rm -f "$kit.tmp/pip.log"

# The real study's inputs, as `qdgap reproduce` reads them. Hard links where the file system allows
# (no copy in the repository's history either way: work/ is ignored).
for f in structures_15001.tar.xz Cl_QD_elec_1-10k.csv Cl_QD_elec_10k-15k_step_10.csv; do
    if [ -f "$seed/$f" ]; then
        ln "$seed/$f" "$kit.tmp/$f" 2>/dev/null || cp "$seed/$f" "$kit.tmp/$f"
    else
        say "no $seed/$f: the GPU machine will run the GPU check only"
    fi
done

# The device machine sees no .git: the commit travels as a file, for the provenance attrs.
git rev-parse HEAD >"$kit.tmp/COMMIT"
git diff --quiet HEAD -- || sed -i 's/$/-dirty/' "$kit.tmp/COMMIT"

rm -rf "$kit"
mv "$kit.tmp" "$kit"
size=$(du -sbL "$kit" | cut -f1)
say "$kit: $(ls "$kit/wheels" | wc -l) wheels for Python $pyver, $((size / 1024 / 1024)) MiB in all (the device tool carries at most 64 MiB with the tree)"
say "next: run(command='bash scripts/device-run.sh', carry=['$kit'], timeout_s=600)"
