#!/usr/bin/env bash
# The GPU benchmark in one command, for a lent GPU machine that has PyTorch, transformers and an
# NVIDIA driver but no Rust toolchain, no network and no ../shared beside the checkout.
#
# Here (with a Rust toolchain), after benches/build_cuda.sh:
#
#     benches/gpu_session.sh pack      # -> gpu-carry/: glance.gz (the CUDA binary, gzipped:
#                                      #    72 MB raw is over a 64 MiB transfer), images/
#
# There, from the repository root, with gpu-carry/ carried along (it is ignored by git; the
# device tool's `carry: ["gpu-carry"]`):
#
#     benches/gpu_session.sh run                     # every case
#     CASES=classify benches/gpu_session.sh run      # or a subset (bench.sh's CASES)
#
# Time (an estimate; nothing here has run on a GPU yet): writing the models 1-2 minutes, the
# cases a few minutes together. Under a 10-minute limit per command, split the work with
# CASES=caption and CASES=classify if the first call shows it is needed.
#
# `run` checks the GPU and the CUDA libraries, unpacks the binary, checks that it captions on the
# GPU, writes the real-size random-weight models with benches/make_models.py (into
# $GPU_MODELS [/tmp/bench-models]), then runs benches/bench.sh with DEVICE=cuda, bf16 on both
# sides and batch sizes that fill a large GPU. The table goes to stdout and, with the run's logs,
# to $OUT/gpu-bench.log when OUT is set.
#
# Environment (defaults in brackets): PYTHON [the python3 on PATH]   CASES [all]   BENCH_LARGE [1]
#   BATCH [64]   BATCH_ZS [256]   IMAGES_TIMES [50: 550 images]   REPEAT [1]
#   DTYPE [bf16]   TF_DTYPE [bfloat16]   GPU_MODELS [/tmp/bench-models]
#   DEVICE [cuda]: cpu tries the script's plumbing on a machine without a GPU, with a CPU
#   binary packed by GLANCE_CUDA=target/release/glance benches/gpu_session.sh pack
set -euo pipefail

cd "$(dirname "$0")/.."
CARRY=gpu-carry
die() { echo "gpu_session.sh: $*" >&2; exit 1; }

pack() {
    local bin=${GLANCE_CUDA:-target/cuda/release/glance}
    [ -x "$bin" ] || die "no $bin: run benches/build_cuda.sh first"
    [ -d ../shared/images ] || die "no ../shared/images"
    rm -rf "$CARRY" && mkdir -p "$CARRY"
    gzip -6 -c "$bin" > "$CARRY/glance.gz"
    cp -r ../shared/images "$CARRY/images" && chmod -R u+w "$CARRY/images"
    du -sh "$CARRY"
}

# The directories holding the CUDA 13 libraries the binary links (cuBLAS, cuRAND, cudart), from
# PyTorch's nvidia wheels.
cuda_lib_path() {
    "$PYTHON" - <<'EOF'
import os, sys
import nvidia
dirs = []
for root in nvidia.__path__:
    for base, _, files in os.walk(root):
        if any(f.startswith(("libcublas.so.13", "libcurand.so.10", "libcudart.so.13")) for f in files):
            dirs.append(base)
print(":".join(sorted(set(dirs))))
EOF
}

run() {
    [ -f "$CARRY/glance.gz" ] || die "no $CARRY/glance.gz: run 'benches/gpu_session.sh pack' where glance was built"
    local log=${OUT:+$OUT/gpu-bench.log}
    log=${log:-/tmp/gpu-bench.log}
    exec > >(tee "$log") 2>&1
    local started=$SECONDS
    local device=${DEVICE:-cuda}
    if [[ $device == cuda* ]]; then nvidia-smi -L || die "no GPU"; fi
    "$PYTHON" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__, "cuda", torch.cuda.is_available())'
    local libs
    libs=$(cuda_lib_path)
    [ -n "$libs" ] || die "no CUDA 13 libraries under the nvidia Python packages"
    export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    # The driver's libcuda.so.1, where the machine keeps it outside the loader's default path.
    for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu; do
        if [ -e "$d/libcuda.so.1" ]; then LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$d"; break; fi
    done
    local glance=/tmp/glance-cuda
    gunzip -c "$CARRY/glance.gz" > "$glance" && chmod +x "$glance"
    ldd "$glance" | grep -E "not found|cublas|curand|cudart|libcuda" || true
    "$glance" --version

    local models=${GPU_MODELS:-/tmp/bench-models}
    local which=blip-base,clip-b32,vit-gpt2,siglip-b16
    [ "${BENCH_LARGE:-1}" = 1 ] && which="$which,blip-large"
    echo "== models ($which) into $models"
    "$PYTHON" benches/make_models.py --out "$models" --which "$which"
    echo "== models written after $((SECONDS - started)) s"

    echo "== smoke test: two captions on $device"
    "$glance" caption -m "$models/blip-base" --device "$device" --max-new-tokens 5 \
        "$CARRY/images/chelsea.png" "$CARRY/images/rocket.jpg"

    echo "== benchmark"
    BENCH_MODELS="$models" BENCH_OUT=/tmp/bench-out PYTHON="$PYTHON" GLANCE="$glance" \
        IMAGES="$CARRY/images" DEVICE="$device" DTYPE="${DTYPE:-bf16}" TF_DTYPE="${TF_DTYPE:-bfloat16}" \
        BATCH="${BATCH:-64}" BATCH_ZS="${BATCH_ZS:-256}" IMAGES_TIMES="${IMAGES_TIMES:-50}" \
        REPEAT="${REPEAT:-1}" BENCH_LARGE="${BENCH_LARGE:-1}" CASES="${CASES:-}" \
        benches/bench.sh
    echo "== done after $((SECONDS - started)) s"
}

# bench.sh wants a path, not a command name.
PYTHON=${PYTHON:-$(command -v python3 || echo python3)}
case "${1:-}" in
    pack) pack ;;
    run) run ;;
    *) die "usage: benches/gpu_session.sh pack|run" ;;
esac
