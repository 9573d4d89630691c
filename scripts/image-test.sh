#!/usr/bin/env bash
# make image-test: build the Containerfile with podman (or docker), run a small study inside the
# image as a user without a home folder, and compare what it wrote with the host install's output.
#
#   scripts/image-test.sh                 # the defaults below
#   BASE_IMAGE=localhost/qdgap-base:bookworm scripts/image-test.sh
#
# Settings (environment):
#   IMAGE        tag to build                      [localhost/qdgap:test]
#   BASE_IMAGE   the FROM image. Unset: python:3.11-slim-bookworm when a registry answers, else a
#                Debian bookworm base made with debootstrap from Debian's packages, built once and
#                kept in the engine's image store as localhost/qdgap-base:bookworm.
#   HOST_VENV    the host install to compare against  [.venv]
#   WORK         where both runs write               [work/image-test]
#   RUN_USER     uid:gid inside the image            [the caller's; 65534:65534 for root]
#   BUILD_FLAGS  extra flags for the build
#   BUILD        0: test the IMAGE already built, without building it  [1]
#   TORCH_CPU_INDEX  the CPU torch wheels' index [download.pytorch.org/whl/cpu, or the host's index if unreachable]
#   TORCH_VARIANT    cpu or cuda [the host install's]; another variant than the host's is compared to
#                    float32 rounding, not bitwise
# The torch variant follows the host install's torch (CPU or CUDA build), and the host's pip settings
# (find-links, indexes, certificate, constraints) are passed into the build with their folders
# bound in, so the image gets the same torch wheel as the host.
#
# Exit codes: 0 passed (or SKIPPED: a package source could not be reached at all, said in one
# line); 2 something to fix here (one line naming the fix); 1 the build, a run or a comparison failed.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

IMAGE=${IMAGE:-localhost/qdgap:test}
BASE_IMAGE=${BASE_IMAGE:-}
HOST_VENV=${HOST_VENV:-.venv}
WORK=${WORK:-work/image-test}
BUILD_FLAGS=${BUILD_FLAGS:-}
PUBLIC_BASE=docker.io/library/python:3.11-slim-bookworm
DEBIAN_BASE=localhost/qdgap-base:bookworm
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Heavy steps yield to everything else on the machine.
LOW=(nice -n 19)
command -v ionice > /dev/null && LOW+=(ionice -c3)

die() { # a thing the caller must change: one line, exit 2
    echo "image-test: $*" >&2
    exit 2
}
fail() { # the image is broken: exit 1
    echo "image-test: FAILED: $*" >&2
    exit 1
}
skip() {
    echo "image-test: SKIPPED: $* -- nothing was built or tested" >&2
    exit 0
}
say() { echo "image-test: $*" >&2; }
now() { date +%s; }

# ---- engine ----------------------------------------------------------------------------------
engine=
for e in podman docker; do
    if command -v "$e" > /dev/null && "$e" info > /dev/null 2>&1; then
        engine=$e
        break
    fi
done
[ -n "$engine" ] || die "neither podman nor docker can run here; install podman (Debian: apt-get install podman buildah) or start the docker daemon"
[ -x "$HOST_VENV/bin/qdgap" ] || die "$HOST_VENV/bin/qdgap not found; run 'make install' first (or set HOST_VENV)"
HOST_VENV=$(cd "$HOST_VENV" && pwd)
host_py=$HOST_VENV/bin/python
build_iso=()
[ "$engine" = podman ] && build_iso=(--isolation chroot) # crun/runc fail on cgroups on some hosts

# ---- base image ------------------------------------------------------------------------------
have_image() { "$engine" image inspect "$1" > /dev/null 2>&1; }

debian_base() { # a python:3.11-slim-bookworm stand-in from Debian's own packages
    command -v debootstrap > /dev/null || die "no container registry answers and debootstrap is missing; install it (apt-get install debootstrap) or pass BASE_IMAGE=<an image you have>"
    curl -fsS --max-time 20 -o /dev/null "$DEBIAN_MIRROR/dists/bookworm/Release" 2> /dev/null \
        || skip "neither a container registry nor the Debian mirror $DEBIAN_MIRROR can be reached"
    local root
    root=$(mktemp -d "${TMPDIR:-/tmp}/qdgap-base.XXXXXX")
    say "building the Debian base $DEBIAN_BASE with debootstrap (once; kept in $engine's image store)"
    "${LOW[@]}" debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        bookworm "$root" "$DEBIAN_MIRROR" > "$WORK/debootstrap.log" 2>&1 \
        || { rm -rf "$root"; fail "debootstrap failed; see $WORK/debootstrap.log"; }
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    # The settings the public python image has that matter here.
    "${LOW[@]}" tar -C "$root" -c . | "$engine" import -q --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$DEBIAN_BASE" > /dev/null
    rm -rf "$root"
}

mkdir -p "$WORK"
if [ -n "$BASE_IMAGE" ]; then
    have_image "$BASE_IMAGE" || "$engine" pull -q "$BASE_IMAGE" > /dev/null 2>&1 \
        || die "BASE_IMAGE '$BASE_IMAGE' is neither a local image nor pullable; pick one from '$engine images' or unset BASE_IMAGE to build the Debian base"
    base=$BASE_IMAGE
elif have_image "$PUBLIC_BASE" || timeout 120 "$engine" pull -q "$PUBLIC_BASE" > /dev/null 2>&1; then
    base=$PUBLIC_BASE
else
    have_image "$DEBIAN_BASE" || debian_base
    base=$DEBIAN_BASE
fi
say "base image: $base"

# ---- the host's torch and pip settings -------------------------------------------------------
# One interpreter start (torch's import is slow): its CUDA version, qdgap's version and commit.
{ read -r torch_cuda && read -r version && read -r commit; } < <("$host_py" -c '
import torch, qdgap
from qdgap.core.common.buildinfo import qdgap_commit
print(torch.version.cuda or "", qdgap.__version__, qdgap_commit(), sep="\n")') \
    || die "$host_py cannot import torch and qdgap; run 'make install' (or set HOST_VENV)"
host_variant=$([ -n "$torch_cuda" ] && echo cuda || echo cpu)
variant=${TORCH_VARIANT:-$host_variant}
case $variant in
    cpu | cuda) ;;
    *) die "TORCH_VARIANT must be cpu or cuda, not '$variant'" ;;
esac
pip_env=()
pip_mounts=()
declare -A seen_mount=()
# `pip config list` gives scope.key='value'; the environment's values win, so read them last.
while IFS= read -r line; do
    key=${line%%=*}
    key=${key#*.}
    value=${line#*=}
    value=${value#\'}
    value=${value%\'}
    case $key in # the settings the Containerfile takes as build arguments
        index-url | extra-index-url | find-links | cert | constraint | trusted-host | default-timeout) ;;
        *) continue ;;
    esac
    # The host's wheel folder holds its own torch build, which pip would prefer (2.13.0+cpu sorts
    # above 2.13.0) to the other variant asked for.
    [ "$variant" != "$host_variant" ] && [ "$key" = find-links ] && continue
    var=PIP_$(echo "$key" | tr 'a-z-' 'A-Z_')
    pip_env+=(--build-arg "$var=$value")
    for token in $value; do
        path=${token#file://}
        if [ "${path:0:1}" = / ] && [ -e "$path" ]; then
            [ -d "$path" ] || path=$(dirname "$path")
            # a local index's pages link up into its files: bind the folder above simple/
            [ "$(basename "$path")" = simple ] && path=$(dirname "$path")
            if [ -z "${seen_mount[$path]:-}" ]; then
                seen_mount[$path]=1
                pip_mounts+=(-v "$path:$path:ro")
            fi
        fi
    done
done < <(pip_config=$("$host_py" -m pip config list 2> /dev/null || true)
    grep -v '^:env:' <<< "$pip_config" || true
    grep '^:env:' <<< "$pip_config" || true)
# docker build cannot bind folders in: the settings then only work if they point at URLs.
[ "$engine" = docker ] && pip_mounts=()
# The CPU wheels' index (download.pytorch.org) may be out of reach where the host's pip settings
# hold the wheel: then the build asks the host's own index instead.
torch_cpu_index=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
if [ "$variant" = cpu ] && [ -z "${TORCH_CPU_INDEX:-}" ] && ! curl -fsS --max-time 20 -o /dev/null "$torch_cpu_index/" 2> /dev/null; then
    torch_cpu_index=$("$host_py" -m pip config get global.index-url 2> /dev/null || echo https://pypi.org/simple)
    say "$torch_cpu_index stands in for the unreachable download.pytorch.org/whl/cpu"
fi

# ---- build -----------------------------------------------------------------------------------
if [ "${BUILD:-1}" = 0 ]; then
    have_image "$IMAGE" || die "BUILD=0 but there is no image $IMAGE; build it (unset BUILD) or set IMAGE"
    build_s=0
else
say "building $IMAGE ($variant torch) with $engine; log in $WORK/build.log"
t0=$(now)
# shellcheck disable=SC2086
if ! "${LOW[@]}" "$engine" build "${build_iso[@]}" --network host "${pip_mounts[@]}" "${pip_env[@]}" \
    --build-arg BASE_IMAGE="$base" --build-arg TORCH_VARIANT="$variant" \
    --build-arg TORCH_CPU_INDEX="$torch_cpu_index" --build-arg QDGAP_VERSION="$version" \
    --build-arg QDGAP_COMMIT="$commit" $BUILD_FLAGS -t "$IMAGE" -f Containerfile . > "$WORK/build.log" 2>&1; then
    tail -n 20 "$WORK/build.log" >&2
    fail "the build failed; see $WORK/build.log"
fi
build_s=$(($(now) - t0))
fi
size=$("$engine" image inspect --format '{{.Size}}' "$IMAGE")
say "built in ${build_s} s; image size $((size / 1000000)) MB"

# ---- run inside: a non-root user with no home folder, the study folder bound in ----------------
inside=$WORK/inside
host=$WORK/host
rm -rf "$inside" "$host"
mkdir -p "$inside" "$host"
if [ -n "${RUN_USER:-}" ]; then
    run_user=$RUN_USER
elif [ "$(id -u)" = 0 ]; then
    run_user=65534:65534 # nobody, as an HPC user would be: no entry, no home in the image
    chown "$run_user" "$inside"
else
    run_user=$(id -u):$(id -g)
fi
abs_inside=$(cd "$inside" && pwd)

# podman/docker run where they can start a container; buildah run --isolation chroot where, as on
# hosts whose cgroups crun and runc refuse, they cannot.
runner=
if "$engine" run --rm --read-only --user "$run_user" -v "$abs_inside:/w" -w /w "$IMAGE" --version > /dev/null 2>&1; then
    runner=run
elif [ "$engine" = podman ] && command -v buildah > /dev/null; then
    ctr=$(buildah from --pull-never "$IMAGE")
    trap 'buildah rm "$ctr" > /dev/null 2>&1 || true' EXIT
    runner=buildah
else
    fail "$engine cannot start a container from $IMAGE (and buildah, the fallback, is missing: apt-get install buildah)"
fi
inside_qdgap() {
    if [ "$runner" = run ]; then
        "$engine" run --rm --read-only --user "$run_user" -v "$abs_inside:/w" -w /w "$IMAGE" "$@"
    else
        "${LOW[@]}" buildah run --isolation chroot --user "$run_user" -v "$abs_inside:/w" --workingdir /w "$ctr" -- qdgap "$@"
    fi
}
# The bound folder must be writable by the user inside, or every command fails later.
if [ "$runner" = run ]; then
    writable=$("$engine" run --rm --read-only --user "$run_user" -v "$abs_inside:/w" -w /w --entrypoint python "$IMAGE" -c 'import os; print(int(os.access(".", os.W_OK)))')
else
    writable=$(buildah run --isolation chroot --user "$run_user" -v "$abs_inside:/w" --workingdir /w "$ctr" -- python -c 'import os; print(int(os.access(".", os.W_OK)))')
fi
[ "$writable" = 1 ] || die "the bound folder $inside is not writable by uid ${run_user%%:*} inside the image; chown ${run_user} $inside or set RUN_USER to its owner's uid:gid"

# The study, the same commands on both sides; the demo data is the package's default on both.
study=(
    "--version"
    "data info DEMO --json"
    "train --seed 7 --preset tiny -o runs/"
    "predict --runs runs/ -o predictions.h5 --device cpu"
    "fna --runs runs/ -o fna.h5 --every 10 --device cpu"
)
t0=$(now)
for step in "${study[@]}"; do
    # shellcheck disable=SC2206
    args=(${step})
    name=${args[0]#--}
    in_args=("${args[@]/DEMO//opt/qdgap/data/cd28se17cl22_demo.h5}")
    host_args=("${args[@]/DEMO/$here/data/cd28se17cl22_demo.h5}")
    say "inside: qdgap ${in_args[*]}"
    inside_qdgap "${in_args[@]}" > "$inside/$name.out" 2> "$inside/$name.err" \
        || { cat "$inside/$name.err" >&2; fail "inside the image: qdgap ${in_args[*]}"; }
    if grep -qi 'warning' "$inside/$name.err" "$inside/$name.out"; then
        grep -i 'warning' "$inside/$name.err" "$inside/$name.out" >&2
        fail "inside the image, qdgap ${in_args[*]} printed a warning"
    fi
    # The host in the reproducible CPU mode, as the image is by default: the same tensors on any AVX2 CPU.
    (cd "$host" && QDGAP_REPRODUCIBLE=1 "${LOW[@]}" "$HOST_VENV/bin/qdgap" "${host_args[@]}" > "$name.out" 2> "$name.err") \
        || { cat "$host/$name.err" >&2; fail "on the host: qdgap ${host_args[*]}"; }
done
run_s=$(($(now) - t0))

echo "--- qdgap --version inside $IMAGE"
cat "$inside/version.out"
# Same torch build on both sides: results must be equal bit for bit; otherwise to float32 rounding.
host_torch=$("$host_py" -c 'import torch; print(torch.__version__)')
same_torch=0
grep -qx "torch $host_torch ($([ "$variant" = cpu ] && echo cpu || echo "cuda $torch_cuda"))" "$inside/version.out" && same_torch=1
"$host_py" "$here/scripts/compare_outputs.py" "$host" "$inside" $([ "$same_torch" = 1 ] && echo --bitwise) \
    || fail "the image's results differ from the host's (see above)"

# ---- drift: the same member inside the image with torch's default numerics (QDGAP_REPRODUCIBLE=0) ----
# Not a failure: it shows how far the weights move from the reproducible mode's on this CPU.
drift=$WORK/inside-default
rm -rf "$drift"
mkdir -p "$drift"
[ "$(id -u)" = 0 ] && [ -z "${RUN_USER:-}" ] && chown "$run_user" "$drift"
abs_drift=$(cd "$drift" && pwd)
if [ "$runner" = run ]; then
    "$engine" run --rm --read-only --user "$run_user" -v "$abs_drift:/w" -w /w -e QDGAP_REPRODUCIBLE=0 "$IMAGE" \
        train --seed 7 --preset tiny -o runs/ > "$drift/train.out" 2> "$drift/train.err"
else
    "${LOW[@]}" buildah run --isolation chroot --user "$run_user" -v "$abs_drift:/w" --workingdir /w "$ctr" -- \
        env QDGAP_REPRODUCIBLE=0 qdgap train --seed 7 --preset tiny -o runs/ > "$drift/train.out" 2> "$drift/train.err"
fi || { cat "$drift/train.err" >&2; fail "inside the image with QDGAP_REPRODUCIBLE=0: qdgap train"; }
echo "--- inside $IMAGE: torch's default numerics against the reproducible mode (largest differences)"
"$host_py" "$here/scripts/compare_outputs.py" "$inside/runs" "$drift/runs" --rtol 0 --atol 0 || true
echo "image-test: passed: $IMAGE from $base, built in ${build_s} s, $((size / 1000000)) MB, study inside and on the host in ${run_s} s ($runner)"
