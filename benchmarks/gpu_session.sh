#!/usr/bin/env bash
# One GPU session (issue 14): install, the CUDA tests, benchmarks/gpu.py; everything lands in $OUT.
#
# Written for a short lease (about 15 minutes of device time, machine start included) on a
# machine with PyTorch preinstalled (Python 3.12) and no network. Two steps:
#
#   1. Here, with network, once:   bash benchmarks/gpu_session.sh --fetch-wheels
#      downloads the pure-Python packages vfnb needs beyond that image (monai, nibabel, at
#      the versions pinned in requirements.lock; --no-deps: the rest is in the image) into
#      .whl/ (git-ignored; a few MB).
#   2. On the GPU machine, from the repository root, with .whl carried along:
#          OUT=/some/folder bash benchmarks/gpu_session.sh
#      - installs .whl/*.whl into /tmp/site (pip --no-index: nothing is fetched there) and
#        puts the checkout and /tmp/site on PYTHONPATH; torch is the image's, not the lock's
#        CPU build;
#      - records provenance ($OUT/provenance.txt: nvidia-smi, torch/CUDA versions, pip list,
#        git commit);
#      - runs the CUDA tests, `pytest -k cuda` (at most TEST_S seconds, default 150);
#      - runs `benchmarks/gpu.py --settings-only` (at most BENCH_S seconds, default 360;
#        its own --budget-s 60 s less, so it writes its JSON before the hard limit).
#      Total at most ~9.5 min of wall time plus the install; each step's exit status is in
#      $OUT/status.txt and the script goes on after a failing step.
#
# Outputs: $OUT/session.log (everything printed), $OUT/provenance.txt, $OUT/pytest-cuda.log,
# $OUT/pytest-cuda.xml, $OUT/gpu-bench.json (benchmarks.harness format; render with
# `python -m benchmarks --markdown FILE`), $OUT/status.txt. Bring gpu-bench.json back into
# benchmarks/results/ only as measured; no number is written anywhere by this script.
set -u

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$HERE" || exit 2
WHEELS=(monai nibabel)

if [ "${1:-}" = "--fetch-wheels" ]; then
    mkdir -p .whl
    for name in "${WHEELS[@]}"; do
        pin=$(grep -i "^${name}==" requirements.lock) || { echo "no pin for $name in requirements.lock"; exit 2; }
        python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl "$pin" || exit 1
    done
    ls -l .whl
    exit 0
fi

: "${OUT:?set OUT to the folder for the results}"
mkdir -p "$OUT"
TEST_S=${TEST_S:-150}
BENCH_S=${BENCH_S:-360}
PY=${PYTHON:-python3}
exec > >(tee -a "$OUT/session.log") 2>&1
export PYTHONUNBUFFERED=1
status() { echo "$1 $2" >> "$OUT/status.txt"; echo "== $1: exit $2"; }

echo "== install ($(date -u +%FT%TZ))"
if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    status install $?
else
    status install "skipped-no-.whl"
fi
export PYTHONPATH="$HERE:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"

{
    echo "date: $(date -u +%FT%TZ)"
    echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
    $PY -c "import torch, monai; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', \
torch.backends.cudnn.version(), 'device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, \
'monai', monai.__version__)" 2>&1
    $PY -m pip list 2>/dev/null
} > "$OUT/provenance.txt"
status provenance $?

echo "== CUDA tests"
timeout "$TEST_S" $PY -m pytest -q -k cuda --continue-on-collection-errors -p no:cacheprovider \
    --junitxml="$OUT/pytest-cuda.xml" tests/test_device_augment.py tests/test_train.py 2>&1 | tee "$OUT/pytest-cuda.log"
status pytest_cuda "${PIPESTATUS[0]}"

echo "== benchmarks/gpu.py"
timeout "$BENCH_S" $PY benchmarks/gpu.py --settings-only --budget-s $((BENCH_S - 60)) --out "$OUT/gpu-bench.json"
status gpu_bench $?
echo "== done ($(date -u +%FT%TZ))"
