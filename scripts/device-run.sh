#!/usr/bin/env bash
# One `run` call on the lent GPU machine: bench/gpu_check.py, then paper-preset members of the real
# study (`qdgap reproduce --preset paper`) for the time that is left. Everything comes back under $OUT:
# 8 files, the most the device tool brings back.
#
#   device run:  command "bash scripts/device-run.sh", carry ["work/device-kit"], timeout_s 600
#   rehearsal here (after PYVER=3.11 bash scripts/device-kit.sh), on the CPU at smoke-test sizes:
#     OUT=/tmp/out PYTHON=/tmp/devsim/bin/python QUICK=1 bash scripts/device-run.sh
#
# The study's work folder (work/device-reproduce) stays on the machine while it is warm: the same
# command again resumes the members where the time limit stopped them (`qdgap reproduce` is resumable).
#
# Settings (environment): TIME_S, the whole script's wall time (default 560 s, inside run's 600 s);
# GPU_CHECK_S, gpu_check's budget (default 300 s; it starts no section after it); MEMBERS (default 2);
# STUDY_S caps the study's time; SKIP_CHECK=1 runs the study only (a rerun); QUICK=1 the CPU rehearsal.
set -uo pipefail
cd "$(dirname "$0")/.."

kit=${KIT:-work/device-kit}
[ -n "${OUT:-}" ] || { echo "device-run: OUT must name the folder whose files come back" >&2; exit 2; }
out=$OUT
py=${PYTHON:-python3}
time_s=${TIME_S:-560}
check_s=${GPU_CHECK_S:-300}
members=${MEMBERS:-2}
work=${WORKDIR:-work/device-reproduce}
site=${SITE:-/tmp/qdgap-site}
t0=$SECONDS
say() { echo "device-run: $* ($((SECONDS - t0)) s)" | tee -a "$out/device-run.log"; }
left() { echo $((time_s - (SECONDS - t0))); }

[ -d "$kit/wheels" ] || { echo "device-run: no $kit/wheels: run scripts/device-kit.sh here and carry $kit" >&2; exit 2; }
mkdir -p "$out"

"$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$kit"/wheels/*.whl \
    || { echo "device-run: the kit's wheels do not install on this Python" >&2; exit 2; }
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
[ -f "$kit/COMMIT" ] && QDGAP_COMMIT=$(cat "$kit/COMMIT") "$py" -m qdgap.core.common.buildinfo --write --source . >/dev/null
{ "$py" -m qdgap --version; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1; } \
    >"$out/versions.txt" 2>&1
say "installed $(ls "$kit/wheels" | wc -l) wheels; $(head -1 "$out/versions.txt")"

if [ "${QUICK:-0}" = 1 ]; then
    check_args=(--device cpu --quick)
    study_args=(--preset tiny --device cpu --fna-every 50 --finetune-epochs 2
        --train-numbers 1-2001 --ext-numbers 10001-11001)
else
    check_args=()
    study_args=(--preset paper --device cuda)
fi

if [ "${SKIP_CHECK:-0}" != 1 ]; then
    # The check stops starting sections after its budget; the timeout only catches a hung section.
    timeout -s INT $((check_s + 120)) "$py" bench/gpu_check.py "${check_args[@]}" --budget-s "$check_s" \
        --out "$out/results-gpu.md" >"$out/gpu_check.log" 2>&1
    say "gpu_check ended with $? (results-gpu.md)"
fi

archive=$kit/structures_15001.tar.xz
if [ ! -f "$archive" ]; then
    say "no $archive in the kit: no study run"
    exit 0
fi
budget=$(($(left) - 20))
if [ "$budget" -lt 60 ]; then
    say "only $budget s left: no study run (rerun with SKIP_CHECK=1)"
    exit 0
fi
[ -n "${STUDY_S:-}" ] && [ "$STUDY_S" -lt "$budget" ] && budget=$STUDY_S
# SIGTERM, as Slurm's time limit: members keep their last epoch's checkpoint; a rerun resumes them.
timeout -s TERM -k 30 "$budget" "$py" -m qdgap --quiet reproduce --archive "$archive" \
    --labels "$kit/Cl_QD_elec_1-10k.csv" --ext-labels "$kit/Cl_QD_elec_10k-15k_step_10.csv" \
    --workdir "$work" --members "$members" --jobs "$members" "${study_args[@]}" >"$out/reproduce.log" 2>&1
rc=$?
say "reproduce ended with $rc$([ "$rc" = 124 ] && echo ': stopped by the time limit, rerun to resume')"
"$py" -m qdgap status "$work/runs" >"$out/status.txt" 2>&1
for f in comparison.md qdgap.log; do
    [ -f "$work/$f" ] && cp "$work/$f" "$out/$f"
done
say "done; files in $out: $(ls "$out" | tr '\n' ' ')"
exit 0
