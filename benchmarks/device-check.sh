#!/usr/bin/env bash
# The one prepared GPU check of this project, for a session lent an accelerator (the `device`
# tool runs it in a copy of the checkout; see docs/speed.md "On a GPU"). It runs, in order:
#   0. the GPU run tests of CUDA graphs (tests/test_cuda_runs.py -k cuda_graph),
#   1. the CUDA meta-step benchmark (float64 GPU-vs-CPU gradient checks first, then timings),
#      and the CUDA graph's replay accuracy (printed into the log),
#   2. the GPU profile of every paper configuration (`maml-bench profile --device cuda`).
# Everything lands in $OUT, the 8 files that come back: the benchmark's table (.json; render
# its .md here), the profile's markdown, CSV, two figures and operator tables (in profile/),
# its resumable parts (profile-parts.tar) and this script's log. Commit them under
# results/benchmarks/ and results/profile/ (parts: results/profile/parts/<gpu>/, which the
# next call carries back, so a profile cut short by the time limit goes on where it stopped).
#
# On the device (python3 there has torch with CUDA; `higher` travels as a wheel in .whl/, made
# here by `pip download --no-deps higher==0.2.1 -d .whl`):
#   run(command="bash benchmarks/device-check.sh", carry=[".whl"], timeout_s=590)
# Here, on the CPU, a dry run of the same steps, tiny: DEVICE=cpu OUT=/tmp/dc bash benchmarks/device-check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the folder that receives the results}
DEVICE=${DEVICE:-cuda}
PROFILE_SECONDS=${PROFILE_SECONDS:-210}  # after 0's 90 s, 1's 230 and 1b's 60: a 590 s call
mkdir -p "$OUT"
exec > >(tee "$OUT/device-check-log.txt") 2>&1
export PYTHONUNBUFFERED=1 MAML_BENCH_CUDA_OUT="$OUT"
PY=python3
if [ -d .whl ] && [ "$DEVICE" = cuda ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
elif [ -x .venv/bin/python ]; then
    PY=.venv/bin/python
fi
export PYTHONPATH=${PYTHONPATH:-$PWD}
$PY - <<'EOF'
import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv

if [ "$DEVICE" = cuda ]; then
    echo "== 0. training runs on the GPU: CUDA graphs (cuda_graph=on) against eager"
    timeout 90 $PY -m pytest tests/test_cuda_runs.py -q -p no:cacheprovider -k cuda_graph \
        || echo "cuda runs: exit $?"
    echo "== 1. CUDA meta-step benchmark"
    # each row is written as soon as it is measured: a stop at the limit keeps whole cases
    timeout 230 $PY -m pytest benchmarks/test_meta_step_cuda.py -q -p no:cacheprovider \
        || echo "benchmark: exit $?"
    echo "== 1b. CUDA graph replay against eager float32 and float64 (MiniImagenet)"
    timeout 60 $PY benchmarks/cuda_graph_accuracy.py || echo "graph accuracy: exit $?"
    echo "== 2. GPU profile (every configuration; resumable parts under $OUT/profile)"
    # the parts committed from earlier calls (results/profile/parts/<gpu>/): measured again
    # only where missing, so the report covers every call's configurations
    for d in results/profile/parts/*/; do
        [ "$(basename "$d")" = cpu ] || { mkdir -p "$OUT/profile/parts"; cp -r "$d" "$OUT/profile/parts/"; }
    done
    # SIGINT at the limit: the profile writes its report from what it measured, then stops
    # the issue's goal (MiniImagenet 5-way 1-shot) first, in case the time runs out; inner
    # steps 1,2,5 hold every paper setting; a measurement over 20 s is skipped, with its reason
    timeout -s INT -k 30 "$PROFILE_SECONDS" $PY -m maml_bench.cli profile --device cuda \
        --config miniimagenet-5w1s --config omniglot-5w1s --config sinusoid \
        --config miniimagenet-5w5s --config omniglot-20w1s --config omniglot-5w5s \
        --config omniglot-20w5s --steps 1,2,5 --repeats 3 --budget 20 \
        --out "$OUT/profile" || echo "profile: exit $?"
    # parts/ is too deep to come back, and at most 8 files do: the parts travel as one tar
    # (here: tar -xf profile-parts.tar -C results/profile), the benchmark's markdown stays
    # (here: python benchmarks/test_meta_step_cuda.py results/benchmarks/meta-step-cuda-*.json)
    tar -C "$OUT/profile" -cf "$OUT/profile-parts.tar" parts && rm -f "$OUT"/meta-step-cuda-*.md
else  # the dry run: the same commands, tiny, on the CPU
    echo "== 1. (dry) the CUDA benchmark's collection"
    $PY -m pytest benchmarks/test_meta_step_cuda.py -q -p no:cacheprovider --co >/dev/null \
        && echo "collected"
    echo "== 2. (dry) profile, quick, sinusoid"
    $PY -m maml_bench.cli profile --device cpu --quick --config sinusoid --out "$OUT/profile"
fi
ls -la "$OUT" "$OUT/profile"  # 8 files come back: these; profile/parts/ (deeper) stays there
