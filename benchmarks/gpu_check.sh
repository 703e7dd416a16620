#!/usr/bin/env bash
# GPU acceptance for medge on one NVIDIA GPU: one command, no edits.
#
#   bash benchmarks/gpu_check.sh > gpu_check.jsonl
#
# stdout: one JSON line per (bundle, precision, runtime): medge bench latencies next to agreement with
# FP32 on the validation set (benchmarks/gpu_check.py). stderr: progress. Exit 0: every row passed, or no
# NVIDIA GPU here (then nothing at all is done); 1: a step or a row failed (the work folder is kept).
#
# Why each step is what it is:
#  1. nvidia-smi decides whether there is a GPU; without one the check says so and exits 0.
#  2. A venv (reused while the pins and pyproject.toml are unchanged; MEDGE_GPU_VENV overrides the
#     place) with this repo (pip install -e '.[export]'), onnxruntime-gpu with its CUDA and cuDNN wheels
#     instead of onnxruntime, TensorRT and cuda-python (the native runner's CUDA calls). Never torch.
#     Versions are a pair ONNX Runtime's TensorRT EP page lists together (ORT 1.22: TensorRT 10.9, CUDA
#     12): the EP loads libnvinfer.so.10 by name, and the newest tensorrt on PyPI is another major
#     version. Override with MEDGE_ORT_GPU / MEDGE_TENSORRT when the pair moves.
#  3. The reference bundles in models/bundles are cpu-target: their INT8 is asymmetric U8S8 with 7-bit
#     weights, which `medge export build-engine` refuses for TensorRT, and they have no FP16 variant. So
#     each reference model is exported again with --target tensorrt (symmetric S8S8 Q/DQ, plus FP16) from
#     the same synthetic calibration/validation sets models/build_bundles.py uses, into a temp folder.
#  4. `medge export build-engine` builds the INT8 and FP16 engines for this GPU (trt-native).
#  5. `medge bench --json` times each precision on trt-native, the tensorrt EP and the cuda EP, one
#     provider at a time, so nothing falls back unnoticed.
#  6. `python -m benchmarks.gpu_check check` runs the same backends on the validation set and judges
#     them with export's gate against FP32 on ONNX Runtime's CPU provider, within the bundle's budget.
# Budget: under 8 minutes once pip's downloads are cached (the first run fetches about 3 GB of CUDA,
# cuDNN and TensorRT wheels); every step has its own timeout.
set -euo pipefail

if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu_check: no NVIDIA GPU present (nvidia-smi not found); nothing to check on this machine"
    exit 0
fi

die() { echo "gpu_check: $*" >&2; exit 1; }
say() { echo "gpu_check: $*" >&2; }
trap 'echo "gpu_check: unexpected failure at line $LINENO: $BASH_COMMAND" >&2' ERR

command -v timeout >/dev/null 2>&1 || die "'timeout' (coreutils) is missing; install coreutils"
smi_rc=0
gpus=$(timeout 30 nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader 2>&1) \
    || smi_rc=$?
if (( smi_rc != 0 )); then
    if [[ $gpus == *"No devices were found"* ]]; then
        echo "gpu_check: no NVIDIA GPU present (nvidia-smi: No devices were found); nothing to check on this machine"
        exit 0
    fi
    die "nvidia-smi is installed but fails (exit $smi_rc: ${gpus%%$'\n'*}); is the NVIDIA driver loaded?"
fi
say "GPU: ${gpus%%$'\n'*}"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
ORT_GPU="${MEDGE_ORT_GPU:-1.22.*}"
TENSORRT="${MEDGE_TENSORRT:-10.9.*}"
CUDA_PYTHON=">=12.6,<13"  # CUDA 12 runtime bindings, as onnxruntime-gpu 1.22 and tensorrt-cu12 use
VENV="${MEDGE_GPU_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/medge-gpu-check/venv}"
START=$SECONDS

step() {  # step SECONDS WHAT COMMAND...: COMMAND under a timeout; a failure stops the check, naming the step
    local secs=$1 what=$2 rc=0
    shift 2
    timeout --kill-after=30 "$secs" "$@" || rc=$?
    (( rc != 124 && rc != 137 )) || die "$what: timed out after ${secs}s"
    (( rc == 0 )) || die "$what: failed (exit $rc); see its output above"
}

command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found; set PYTHON=/path/to/python3.10-3.13"
"$PYTHON" -c 'import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] <= (3, 13)))' \
    || die "$PYTHON is Python $("$PYTHON" -c 'import platform; print(platform.python_version())'); onnxruntime-gpu $ORT_GPU and TensorRT $TENSORRT have wheels for 3.10-3.13 (set PYTHON=...)"

# 2. the venv: rebuilt when the pins, the Python or pyproject.toml change
stamp="$ORT_GPU $TENSORRT $CUDA_PYTHON $("$PYTHON" -c 'import platform; print(platform.python_version())') $(sha256sum <"$ROOT/pyproject.toml" | cut -c1-16)"
PY="$VENV/bin/python"
if [[ ! -x "$PY" || "$(cat "$VENV/.medge-gpu-check" 2>/dev/null || true)" != "$stamp" ]]; then
    say "creating $VENV (pip: medge, onnxruntime-gpu $ORT_GPU, tensorrt-cu12 $TENSORRT, cuda-python)"
    [[ ! -e "$VENV" || -f "$VENV/pyvenv.cfg" ]] || die "$VENV exists and is not a venv; set MEDGE_GPU_VENV to another folder"
    rm -rf "$VENV"
    mkdir -p "$(dirname "$VENV")"
    "$PYTHON" -m venv "$VENV" || die "cannot create a venv with $PYTHON (Debian/Ubuntu: apt-get install python3-venv)"
    pip=("$PY" -m pip --disable-pip-version-check)
    step 300 "pip: upgrade pip" "${pip[@]}" install --progress-bar off --upgrade pip >&2
    step 900 "pip: install medge" "${pip[@]}" install --progress-bar off -e "${ROOT}[export]" >&2
    # onnxruntime and onnxruntime-gpu install the same 'onnxruntime' module: only one may be present.
    # [cuda,cudnn]: ORT's extras for the CUDA 12 runtime, cuFFT, cuRAND, NVRTC and cuDNN 9 (which brings cuBLAS)
    step 120 "pip: remove the CPU onnxruntime" "${pip[@]}" uninstall --yes onnxruntime >&2
    step 1200 "pip: install the GPU runtimes" "${pip[@]}" install --progress-bar off "onnxruntime-gpu[cuda,cudnn]==$ORT_GPU" \
        "tensorrt-cu12==$TENSORRT" "cuda-python$CUDA_PYTHON" >&2
    if "${pip[@]}" show torch >/dev/null 2>&1; then
        die "torch was pulled into $VENV by a dependency; this check must not install it (rm -rf $VENV and report)"
    fi
    echo "$stamp" >"$VENV/.medge-gpu-check"
else
    say "reusing $VENV"
fi
export PATH="$VENV/bin:$PATH"

# the pip wheels put CUDA, cuDNN and TensorRT libraries in site-packages; ONNX Runtime's CUDA and TensorRT
# providers dlopen them by name, so the loader must see those folders before python starts
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
libdirs=()
while IFS= read -r d; do libdirs+=("$d"); done < <(find "$SITE/nvidia" -mindepth 2 -maxdepth 2 -type d -name lib 2>/dev/null | sort)
nvinfer=$(find "$SITE" -maxdepth 2 -name 'libnvinfer.so.10*' -print -quit)
[[ -n "$nvinfer" ]] || die "libnvinfer.so.10 not found under $SITE; the tensorrt-cu12 install is incomplete (rm -rf $VENV)"
libdirs+=("$(dirname "$nvinfer")")
LD_LIBRARY_PATH="$(IFS=:; echo "${libdirs[*]}")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LD_LIBRARY_PATH

step 120 "preflight (imports)" "$PY" - >&2 <<'EOF'
import sys

import onnxruntime as ort
import tensorrt

try:
    from cuda.bindings import runtime  # noqa: F401
except ImportError:
    from cuda import cudart  # noqa: F401
have = ort.get_available_providers()
print(f"onnxruntime {ort.__version__} ({', '.join(have)}), TensorRT {tensorrt.__version__}")
missing = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p not in have]
sys.exit(f"this onnxruntime has no {', '.join(missing)}: the CPU onnxruntime is still installed?" if missing else 0)
EOF

WORK=$(mktemp -d "${TMPDIR:-/tmp}/medge-gpu-check.XXXXXX")
BUNDLES="$WORK/bundles"
BENCH="$WORK/bench"
mkdir -p "$BUNDLES" "$BENCH"
finish() {
    local rc=$?
    if (( rc == 0 )); then rm -rf "$WORK"; else echo "gpu_check: kept $WORK (bundles, engines, bench output)" >&2; fi
}
trap finish EXIT

# 3. data and tensorrt-target bundles
step 300 "calibration/validation sets" "$PY" -m benchmarks.gpu_check sets --out "$WORK/data" >"$WORK/sets.tsv"
mapfile -t sets <"$WORK/sets.tsv"
(( ${#sets[@]} > 0 )) || die "no reference models listed by benchmarks.gpu_check sets"
names=()
for row in "${sets[@]}"; do
    IFS=$'\t' read -r name model calib val <<<"$row"
    names+=("$name")
    say "exporting $name for target tensorrt"
    step 600 "medge export quantize $name --target tensorrt" medge export quantize "$model" --calib "$calib" \
        --val "$val" --target tensorrt --out "$BUNDLES/$name" --latency-runs 5 --force >&2
    # 4. native engines; a failure here shows as that row's trt-native failure, the rest still runs
    for prec in int8 fp16; do
        rc=0
        timeout --kill-after=30 600 medge export build-engine "$BUNDLES/$name" --variant "$prec" >&2 || rc=$?
        (( rc == 0 )) || say "build-engine $name $prec failed (exit $rc); its trt-native row will fail"
    done
done

# 5. timing, one provider at a time
for name in "${names[@]}"; do
    for prec in int8 fp16; do
        for rt in trt-native tensorrt cuda; do
            stem="$BENCH/$name-$prec-$rt"
            say "medge bench $name $prec $rt"
            rc=0
            timeout --kill-after=30 300 medge bench --bundle "$BUNDLES/$name" --variant "$prec" --providers "$rt" \
                --runs 200 --warmup 20 --json >"$stem.json" 2>"$stem.err" || rc=$?
            if (( rc == 124 || rc == 137 )); then echo "medge bench timed out after 300s" >>"$stem.err"; fi
            (( rc == 0 )) || say "bench $name $prec $rt failed: $(tail -n 1 "$stem.err")"
        done
    done
done

# 6. agreement with FP32; the rows go to a file, so whatever a native library prints stays off stdout
failed=0
: >"$WORK/rows.jsonl"
for row in "${sets[@]}"; do
    IFS=$'\t' read -r name model calib val <<<"$row"
    say "checking $name on the validation set"
    rc=0
    timeout --kill-after=30 900 "$PY" -m benchmarks.gpu_check check --bundle "$BUNDLES/$name" --val "$val" \
        --bench "$BENCH" --precisions int8,fp16 --runtimes trt-native,tensorrt,cuda --out "$WORK/rows.jsonl" >&2 || rc=$?
    (( rc == 0 )) || failed=1
done
cat "$WORK/rows.jsonl"
elapsed=$(( SECONDS - START ))
say "done in ${elapsed}s$( (( elapsed <= 480 )) || echo " (over the 8-minute budget: first pip download?)")"
(( failed == 0 )) || die "some rows failed (lines with \"passed\": false above)"
