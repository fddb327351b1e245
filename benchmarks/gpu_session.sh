#!/usr/bin/env bash
# One GPU session (issue 14): install, the CUDA tests, benchmarks/gpu.py; everything lands in $OUT.
#
# Written for a short lease (about 15 minutes of device time, machine start included) on a
# machine with PyTorch preinstalled (Python 3.12) and no network. Two steps:
#
#   1. Here, with network, once:   bash benchmarks/gpu_session.sh --fetch-wheels
#      downloads, for Python 3.12, every package pinned in requirements.lock that the GPU
#      image lacks (IMAGE_PACKAGES below; --no-deps) into .whl/ (git-ignored).
#   2. On the GPU machine, from the repository root, with .whl carried along:
#          OUT=/some/folder bash benchmarks/gpu_session.sh
#      - installs .whl/*.whl into /tmp/site (pip --no-index: nothing is fetched there) and
#        puts the checkout and /tmp/site on PYTHONPATH; torch is the image's, not the lock's
#        CPU build;
#      - records provenance ($OUT/provenance.txt: nvidia-smi, torch/CUDA versions, pip list,
#        git commit);
#      - runs the CUDA tests, `pytest -k cuda` (at most TEST_S seconds, default 120);
#      - runs `benchmarks/gpu.py --settings-only` (at most BENCH_S seconds, default 240;
#        its own --budget-s 60 s less, so it writes its JSON before the hard limit);
#      - runs the GPU study, params/gpu.yaml (at most STUDY_S seconds, default 480), and packs
#        its report, without checkpoints, as $OUT/vfnb-gpu-study.tgz (or .failed.tgz).
#      Total at most ~14 min of wall time plus the install; each step's exit status is in
#      $OUT/status.txt and the script goes on after a failing step.
#
# Outputs: $OUT/session.log (everything printed), $OUT/provenance.txt, $OUT/pytest-cuda.log,
# $OUT/gpu-bench.json (benchmarks.harness format; render with
# `python -m benchmarks --markdown FILE`), $OUT/status.txt. Bring gpu-bench.json back into
# benchmarks/results/ only as measured; no number is written anywhere by this script.
set -u

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$HERE" || exit 2
# Packages the GPU machine's image already holds (its documented package list); every other pin of
# requirements.lock is fetched as a wheel for Python 3.12 (the study needs papermill, ipykernel,
# nbconvert, umap-learn, monai, nibabel and their dependencies; torch stays the image's CUDA build).
IMAGE_PACKAGES=" torch numpy scipy pandas matplotlib seaborn scikit-learn pyyaml tqdm pillow jinja2 markupsafe
 packaging pygments requests urllib3 idna certifi charset-normalizer six python-dateutil pytz tzdata contourpy
 cycler fonttools kiwisolver pyparsing joblib threadpoolctl numba llvmlite psutil attrs filelock fsspec sympy
 mpmath networkx typing-extensions setuptools pip wheel pytest pluggy iniconfig click rich markdown-it-py mdurl
 anyio h11 httpx httpcore sniffio triton nvidia-nccl-cu13 "
# JupyterLab and its server stack: `make lab` needs them, a papermill run does not.
LAB_ONLY=" jupyterlab jupyterlab-server jupyter-server jupyter-server-terminals jupyter-lsp notebook-shim babel
 jupyter-builder json5 async-lru terminado send2trash argon2-cffi argon2-cffi-bindings jupyter-events overrides
 websocket-client webcolors rfc3339-validator rfc3986-validator rfc3987-syntax uri-template isoduration fqdn
 arrow jsonpointer lark types-python-dateutil "

if [ "${1:-}" = "--fetch-wheels" ]; then
    mkdir -p .whl
    while IFS= read -r pin; do
        name=$(echo "${pin%%==*}" | tr 'A-Z_' 'a-z-')
        case " $(echo $IMAGE_PACKAGES $LAB_ONLY) " in *" $name "*) continue ;; esac
        python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            --platform any -d .whl "$pin" || { echo "could not fetch $pin"; exit 1; }
    done < <(grep -E '^[A-Za-z0-9_.-]+==' requirements.lock)
    du -sh .whl
    exit 0
fi

: "${OUT:?set OUT to the folder for the results}"
mkdir -p "$OUT"
TEST_S=${TEST_S:-120}
BENCH_S=${BENCH_S:-240}
STUDY_S=${STUDY_S:-480}
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
    tests/test_device_augment.py tests/test_train.py 2>&1 | tee "$OUT/pytest-cuda.log"
status pytest_cuda "${PIPESTATUS[0]}"

echo "== benchmarks/gpu.py"
timeout "$BENCH_S" $PY benchmarks/gpu.py --settings-only --budget-s $((BENCH_S - 60)) --out "$OUT/gpu-bench.json"
status gpu_bench $?
echo "== GPU study (params/gpu.yaml)"
# the report comes back as one archive (the device tool returns at most 8 files); no checkpoints
timeout "$STUDY_S" $PY -m vfnb study --params params/default.yaml --params params/gpu.yaml -p data_dir=/tmp/vfnb-data \
    --out /tmp/vfnb-gpu-study
status gpu_study $?
for d in /tmp/vfnb-gpu-study /tmp/vfnb-gpu-study.failed; do
    [ -d "$d" ] && tar czf "$OUT/$(basename "$d").tgz" --exclude='*.pt' -C /tmp "$(basename "$d")"
done
echo "== done ($(date -u +%FT%TZ))"
