//! glance's own CPU kernels and the switches that choose them: the AVX512-BF16 GEMM (with its
//! residual and GELU epilogues), few-row products, softmax, GELU, layer norm, fused attention
//! (also over DaViT's token maps), convolution patches, and the helpers they share to read and
//! fill host buffers. Kernels work on slices and tensors; they know nothing of layers or models.

pub mod activation;
pub mod attention;
pub mod depthwise;
pub mod few_rows;
pub mod gemm_bf16;
pub mod map_attention;
pub mod norm;
pub mod patches;
pub mod softmax;

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use candle_core::{DType, Device, Result, Tensor};
use rayon::prelude::*;

/// Whether glance's own CPU kernels (softmax, GELU, attention, few-row and bf16 matmuls, folded
/// cross-attention) run where they apply. With `GLANCE_CANDLE_OPS=1` in the environment they do
/// not, and every op goes through candle the way it does on a GPU: the tests run the parity
/// checks that way too, so the GPU's code path is checked against transformers on any machine.
pub fn own_kernels() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        std::env::var_os("GLANCE_CANDLE_OPS").is_none_or(|v| v.is_empty() || v == "0")
    })
}

/// Whether `t` is a CPU f32 tensor that glance's own kernels may take.
pub(crate) fn host_f32(t: &Tensor) -> bool {
    own_kernels() && matches!(t.device(), Device::Cpu) && t.dtype() == DType::F32
}

/// Whether linear layers built from now on keep CPU f32 weights as packed bf16 for the
/// AVX512-BF16 kernel (`--dtype bf16` on such a CPU), like PyTorch's
/// `set_float32_matmul_precision("medium")`: activations stay f32, matmul inputs are rounded.
static CPU_BF16_MATMUL: AtomicBool = AtomicBool::new(false);

/// Turns the bf16 matmul path on or off for models loaded afterwards; refused (false) where
/// the CPU lacks AVX512-BF16.
pub fn set_cpu_bf16_matmul(on: bool) -> bool {
    let on = on && gemm_bf16::available() && own_kernels();
    CPU_BF16_MATMUL.store(on, Ordering::Relaxed);
    on
}

pub fn cpu_bf16_matmul() -> bool {
    CPU_BF16_MATMUL.load(Ordering::Relaxed)
}

/// The transpose of a 2-D tensor, contiguous. On the CPU in f32 it is copied in 32 × 32 tiles:
/// candle's strided copy walks the source a column at a time, which took 0.4 s for GPT-2's
/// `Conv1D` weights at load.
pub fn transposed(t: &Tensor) -> Result<Tensor> {
    const TILE: usize = 32;
    if !host_f32(t) {
        return t.t()?.contiguous();
    }
    let (rows, cols) = t.dims2()?;
    let out = with_f32_values(t, |src| {
        // Each task writes TILE rows of the result (TILE columns of the source).
        par_filled(rows * cols, TILE * rows, 0f32, |b, block| {
            let c0 = b * TILE;
            let n = block.len() / rows;
            for r0 in (0..rows).step_by(TILE) {
                for j in 0..n {
                    for r in r0..(r0 + TILE).min(rows) {
                        block[j * rows + r] = src[r * cols + c0 + j];
                    }
                }
            }
        })
    })?;
    Tensor::from_vec(out, (cols, rows), t.device())
}

/// `len` values in pieces of `piece` (the last may be shorter), each set to `zero` and then
/// handed to `fill(index, piece)` by one of the pool's threads. Unlike `vec![zero; len]` — one
/// thread faulting in and clearing every page before the work starts, 0.1 s for CLIP-B/32's
/// 300 MB of packed bf16 weights — each page is touched once, in parallel, by the thread that
/// fills it, while its piece is in cache.
pub(crate) fn par_filled<T: Copy + Send + Sync>(
    len: usize,
    piece: usize,
    zero: T,
    fill: impl Fn(usize, &mut [T]) + Sync,
) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(len);
    if len == 0 {
        return out;
    }
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(piece)
        .enumerate()
        .for_each(|(i, values)| {
            values.fill(MaybeUninit::new(zero));
            // SAFETY: every element was just initialized, and `MaybeUninit<T>` has the layout
            // of `T`.
            let values = unsafe { &mut *(values as *mut [MaybeUninit<T>] as *mut [T]) };
            fill(i, values);
        });
    // SAFETY: the pieces cover the first `len` elements, all initialized above.
    unsafe { out.set_len(len) };
    out
}

/// An output buffer that the tasks of one parallel section write at once, each to elements no
/// other task writes (every use says why its tasks' elements are disjoint).
#[derive(Clone, Copy)]
pub(crate) struct SharedOut(*mut f32);
// SAFETY: tasks write disjoint elements (see each use).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The buffer's start, which may not be initialized yet (`Vec::as_mut_ptr` of a `Vec`
    /// with capacity): only the writes through [`Self::at`] touch it.
    pub(crate) fn new(start: *mut f32) -> Self {
        Self(start)
    }

    /// The address `offset` floats in. A method, so closures capture the whole `SharedOut`
    /// (which is `Sync`) rather than its raw pointer.
    pub(crate) fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// Calls `f` with the values of a CPU f32 tensor, in row-major order, without copying them out of
/// the tensor (only a non-contiguous tensor is first made contiguous).
pub(crate) fn with_f32_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    with_values(t, f)
}

/// [`with_f32_values`] for a CPU tensor of any dtype `T`.
pub(crate) fn with_values<T: candle_core::WithDType, R>(
    t: &Tensor,
    f: impl FnOnce(&[T]) -> R,
) -> Result<R> {
    let t = t.contiguous()?;
    with_storage(&t, |values, layout| {
        f(&values[layout.start_offset()..][..t.elem_count()])
    })
}

/// Calls `f` with the whole storage of a CPU tensor of dtype `T` and the tensor's layout in it
/// (offset and strides), so that a strided view is read where it lies.
pub(crate) fn with_storage<T: candle_core::WithDType, R>(
    t: &Tensor,
    f: impl FnOnce(&[T], &candle_core::Layout) -> R,
) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("expected a CPU tensor, found one on {:?}", t.device())
    };
    Ok(f(cpu.as_slice::<T>()?, layout))
}

/// Runs `f` on a worker of rayon's global pool, where the matmuls and kernels split their work:
/// that worker then takes its share of each parallel section directly, instead of this thread
/// waking the pool and sleeping until every section is done.
pub fn on_compute_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let mut out = None;
    rayon::scope(|_| out = Some(f()));
    out.expect("the scope ran its closure")
}

/// The largest absolute difference between two tensors of one shape, for unit tests.
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>())
        .expect("tensors of one shape")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiled_transpose_equals_candles() -> Result<()> {
        for (r, c) in [(1, 1), (3, 70), (65, 33), (64, 64)] {
            let t = Tensor::randn(0f32, 1.0, (r, c), &Device::Cpu)?;
            let ours = transposed(&t)?;
            assert_eq!(ours.dims(), &[c, r]);
            assert_eq!(ours.to_vec2::<f32>()?, t.t()?.to_vec2::<f32>()?);
        }
        Ok(())
    }
}
