#!/usr/bin/env bash
# Builds glance with CUDA (`--features cuda`) on a machine that has no CUDA toolkit and no GPU,
# from NVIDIA's PyPI wheels: CUDA 13.0's nvcc (with cudafe++, cicc, ptxas), its headers and
# cudart. candle compiles its kernels with that nvcc (to PTX for the GPU's driver, plus a static
# library); the other CUDA libraries (driver, cuBLAS, cuBLASLt, cuRAND, NVRTC) are only needed to
# *link*, so this script links against stubs it generates with the real libraries' sonames and
# leaves the real ones to the machine that runs the binary.
#
#     benches/build_cuda.sh                    # -> target/cuda/release/glance
#     CUDA_COMPUTE_CAP=80 benches/build_cuda.sh    # A100 (default 90: H100 / H200)
#
# With a CUDA toolkit installed (nvcc on PATH, libcuda etc. present), plain
# `cargo build --release --features cuda` does the same without this script.
#
# Running the binary needs an NVIDIA driver for CUDA >= 13.0 (R580 or newer: the PTX is 9.0) and
# the CUDA 13 libraries it names (printed at the end: libcublas.so.13, which loads
# libcublasLt.so.13, libcurand.so.10, libcudart.so.13) on the library path — from a CUDA 13
# toolkit, or PyTorch's cu13 wheels (their site-packages/nvidia/cu13/lib). A CUDA build does not
# start without libcuda.so.1 (the driver), even for --device cpu.
#
# Environment (defaults in brackets): CUDA_VENV [cuda-venv: where the wheels go]
# CUDA_COMPUTE_CAP [90]   TARGET_DIR [target/cuda]   PYTHON3 [python3]
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=${CUDA_VENV:-cuda-venv}
TARGET_DIR=${TARGET_DIR:-target/cuda}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}

# CUDA 13.0, one release for every piece (nvcc refuses headers from another release).
WHEELS=(nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88
        nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85)

if [ ! -x "$VENV/bin/python" ]; then
    "${PYTHON3:-python3}" -m venv "$VENV"
fi
"$VENV/bin/pip" install -q "${WHEELS[@]}"
CUDA_HOME=$("$VENV/bin/python" -c 'import os, nvidia; print(os.path.join(nvidia.__path__[0], "cu13"))')
[ -x "$CUDA_HOME/bin/nvcc" ] || { echo "build_cuda.sh: no nvcc in $CUDA_HOME/bin" >&2; exit 1; }
export CUDA_HOME PATH="$CUDA_HOME/bin:$PATH"
ln -sf libcudart.so.13 "$CUDA_HOME/lib/libcudart.so"
echo "nvcc: $(nvcc --version | tail -1), compute capability $CUDA_COMPUTE_CAP" >&2

# 1. Everything but the final link: candle's kernels (nvcc), cudarc, glance's library.
cargo build --release --locked --features cuda --lib --target-dir "$TARGET_DIR"

# 2. Link stubs: every function cudarc's bindings name, as an empty function in a library with
#    the real library's soname. The binary records the soname and binds the real one at run time.
#    They go where cudarc tells the linker to look ($CUDA_HOME/lib), under the unversioned names
#    that only the linker reads (the loader looks for the sonames, which are not there).
STUBS="$CUDA_HOME/lib"
cudarc=$(ls -t "$TARGET_DIR"/release/deps/libcudarc-*.rlib | head -1)
symbols=$(nm -u "$cudarc" 2>/dev/null | awk '{ print $2 }' | sort -u)
# Each stub is also linked under its soname in $run_dir, for step 4.
run_dir="$TARGET_DIR/cuda-stub-run"
rm -rf "$run_dir" && mkdir -p "$run_dir"
stub() { # name soname symbol-regex
    local src="$TARGET_DIR/$1-stub.c"
    grep -E "$3" <<<"$symbols" | awk '{ print "void " $1 "(void) {}" }' >"$src"
    [ -s "$src" ] || { echo "build_cuda.sh: no $1 symbols in $cudarc" >&2; exit 1; }
    cc -shared -fPIC -o "$STUBS/lib$1.so" -Wl,-soname,"$2" "$src"
    ln -s "$STUBS/lib$1.so" "$run_dir/$2"
}
stub cuda libcuda.so.1 '^cu[A-Z]'
stub cublasLt libcublasLt.so.13 '^cublasLt'
stub cublas libcublas.so.13 '^cublas([A-KM-Z_]|L[^t])'
stub curand libcurand.so.10 '^curand'
stub nvrtc libnvrtc.so.13 '^nvrtc'

# 3. The binary.
cargo build --release --locked --features cuda --bin glance --target-dir "$TARGET_DIR"
echo "built $TARGET_DIR/release/glance; it needs at run time:" >&2
readelf -d "$TARGET_DIR/release/glance" | sed -n 's/.*NEEDED.*\[\(.*\)\]/  \1/p' | grep -E 'cu|nvrtc' >&2

# 4. Check that it loads and works on the CPU (the stubs stand in for the driver and libraries
#    under their sonames; nothing here reaches them with --device cpu).
ln -s "$CUDA_HOME/lib/libcudart.so.13" "$run_dir/libcudart.so.13"
LD_LIBRARY_PATH="$run_dir" "$TARGET_DIR/release/glance" caption --device cpu \
    --model tests/fixtures/blip-tiny --max-new-tokens 5 --quiet tests/fixtures/odd-images/photo.webp \
    || { echo "build_cuda.sh: the CUDA build does not caption on the CPU" >&2; exit 1; }
echo "the CUDA build loads and captions with --device cpu" >&2
