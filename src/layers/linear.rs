//! A linear layer with HF's `[out, in]` weight layout and a CPU fast path for the few-row inputs
//! of token-by-token decoding.
//!
//! For a handful of rows, a general GEMM spends most of its time packing the whole weight matrix
//! into panels on every call; decoding is memory-bound, so glance instead streams each weight row
//! once and takes its dot products with all input rows while it is in L1 ("skinny" GEMM).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use super::few_rows::dot_rows;
use super::gemm_bf16::{self, PackedWeights};
use super::ops::{host_f32, with_f32_values};

/// Inputs with at most this many rows take the streaming path on the CPU.
const SKINNY_MAX_ROWS: usize = 32;

/// Whether linear layers built from now on keep CPU f32 weights as packed bf16 for the
/// AVX512-BF16 kernel (`--dtype bf16` on such a CPU), like PyTorch's
/// `set_float32_matmul_precision("medium")`: activations stay f32, matmul inputs are rounded.
static CPU_BF16_MATMUL: AtomicBool = AtomicBool::new(false);

/// Turns the bf16 matmul path on or off for models loaded afterwards; refused (false) where
/// the CPU lacks AVX512-BF16.
pub fn set_cpu_bf16_matmul(on: bool) -> bool {
    let on = on && gemm_bf16::available() && super::ops::own_kernels();
    CPU_BF16_MATMUL.store(on, Ordering::Relaxed);
    on
}

pub fn cpu_bf16_matmul() -> bool {
    CPU_BF16_MATMUL.load(Ordering::Relaxed)
}

/// Packs a CPU f32 `[n, k]` weight (or `[k, n]` when `in_out`) straight from its storage.
fn pack_bf16(weight: &Tensor, in_out: bool) -> Result<PackedWeights> {
    let (rows, cols) = weight.dims2()?;
    with_f32_values(weight, |w| match in_out {
        false => PackedWeights::new(w, rows, cols),
        true => PackedWeights::from_transposed(w, rows, cols),
    })
}

#[derive(Debug, Clone)]
enum Weight {
    /// `[out, in]`, HF's `nn.Linear` layout.
    Dense(Tensor),
    /// Packed for [`gemm_bf16::matmul`]; the f32 tensor is not kept.
    Bf16(Arc<PackedWeights>),
}

#[derive(Debug, Clone)]
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
    /// The bias as host floats, read once for the streaming path (CPU f32 only).
    bias_host: Option<Vec<f32>>,
}

/// `vb.get((out, in), "weight")` and `vb.get(out, "bias")`, as `candle_nn::linear`.
pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let weight = vb.get((out_dim, in_dim), "weight")?;
    let bias = vb.get(out_dim, "bias")?;
    Ok(Linear::new(weight, Some(bias)))
}

/// `vb.get((out, in), "weight")` only, as `candle_nn::linear_no_bias`.
pub fn linear_no_bias(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    Ok(Linear::new(vb.get((out_dim, in_dim), "weight")?, None))
}

impl Linear {
    /// A layer from an `[in, out]` weight (GPT-2's `Conv1D`). Packed for bf16 straight from that
    /// layout; in f32 it is transposed once (in tiles): decoding steps read `[out, in]` rows
    /// 20 % faster than strips of `[in, out]` columns, which outweighs the copy at load for any
    /// folder of more than a few batches.
    pub fn from_in_out(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let layer = Self::new_with(weight, bias, true);
        match layer.weight {
            Weight::Dense(w) => Ok(Self {
                weight: Weight::Dense(crate::models::ops::transposed(&w)?),
                ..layer
            }),
            Weight::Bf16(_) => Ok(layer),
        }
    }

    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self::new_with(weight, bias, false)
    }

    fn new_with(weight: Tensor, bias: Option<Tensor>, in_out: bool) -> Self {
        let bias_host = bias
            .as_ref()
            .filter(|b| host_f32(b))
            .and_then(|b| b.to_vec1::<f32>().ok());
        let packable = cpu_bf16_matmul()
            && host_f32(&weight)
            && weight.rank() == 2
            && bias.is_some() == bias_host.is_some();
        let weight = match packable.then(|| pack_bf16(&weight, in_out)) {
            Some(Ok(packed)) => Weight::Bf16(Arc::new(packed)),
            _ => Weight::Dense(weight),
        };
        Self {
            weight,
            bias,
            bias_host,
        }
    }

    fn skinny_applies(&self, weight: &Tensor, rows: usize) -> bool {
        rows <= SKINNY_MAX_ROWS
            && host_f32(weight)
            && weight.is_contiguous()
            && self.bias.is_some() == self.bias_host.is_some()
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let (in_dim, lead) = dims
            .split_last()
            .expect("linear input has at least one dimension");
        let rows: usize = lead.iter().product();
        let weight = match &self.weight {
            Weight::Bf16(packed) => {
                let x2 = x.reshape((rows, *in_dim))?.to_dtype(DType::F32)?;
                let y = with_f32_values(&x2, |xs| {
                    gemm_bf16::matmul(xs, rows, packed, self.bias_host.as_deref())
                })?;
                return Tensor::from_vec(y, (rows, packed.n), x.device())?
                    .reshape([lead, &[packed.n]].concat());
            }
            Weight::Dense(w) => w,
        };
        let out_dim = weight.dim(0)?;
        if self.skinny_applies(weight, rows) && x.dtype() == DType::F32 {
            let x2 = x.reshape((rows, *in_dim))?;
            let y = with_f32_values(&x2, |xs| {
                with_f32_values(weight, |w| {
                    skinny_matmul(xs, rows, w, out_dim, *in_dim, self.bias_host.as_deref())
                })
            })??;
            return Tensor::from_vec(y, (rows, out_dim), x.device())?
                .reshape([lead, &[out_dim]].concat());
        }
        let y = x.reshape((rows, *in_dim))?.matmul(&weight.t()?)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        y.reshape([lead, &[out_dim]].concat())
    }
}

/// `y[r, j] = x[r, :] · w[j, :] + bias[j]` for `rows` input rows and `out` weight rows of length `k`.
pub fn skinny_matmul(
    x: &[f32],
    rows: usize,
    w: &[f32],
    out: usize,
    k: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    const STRIP: usize = 32;
    let mut strips = vec![0f32; rows * out];
    if rows == 0 {
        return strips;
    }
    // Each parallel task takes STRIP weight rows: their columns of the result, rows × width.
    strips
        .par_chunks_mut(STRIP * rows)
        .enumerate()
        .for_each(|(c, block)| {
            let width = block.len() / rows;
            dot_rows(x, rows, &w[c * STRIP * k..][..width * k], width, k, block)
        });
    let mut y = vec![0f32; rows * out];
    for (c, block) in strips.chunks(STRIP * rows).enumerate() {
        let width = block.len() / rows;
        for (r, values) in block.chunks_exact(width).enumerate() {
            let dst = &mut y[r * out + c * STRIP..][..width];
            for (j, (d, v)) in dst.iter_mut().zip(values).enumerate() {
                *d = v + bias.map_or(0.0, |b| b[c * STRIP + j]);
            }
        }
    }
    y
}

pub(crate) type DotFn = fn(&[f32], &[f32]) -> f32;

/// The fastest dot product this CPU supports.
pub(crate) fn dot_fn() -> DotFn {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return |a, b| unsafe { dot_avx2(a, b) };
        }
    }
    dot_portable
}

pub(crate) type AxpyFn = fn(f32, &[f32], &mut [f32]);

/// `y += a · x` with the widest fused multiply-add this CPU supports.
pub(crate) fn axpy_fn() -> AxpyFn {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return |a, x, y| unsafe { axpy_avx2(a, x, y) };
        }
    }
    axpy_portable
}

fn axpy_portable(a: f32, x: &[f32], y: &mut [f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y = x.mul_add(a, *y);
    }
}

/// The portable loop, compiled with AVX2 and FMA enabled so that it becomes `vfmadd` on 8 lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn axpy_avx2(a: f32, x: &[f32], y: &mut [f32]) {
    axpy_portable(a, x, y)
}

/// Eight independent lanes, which the compiler maps to SIMD registers.
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for i in 0..chunks {
        for l in 0..8 {
            acc[l] += a[i * 8 + l] * b[i * 8 + l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    s
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY: every load reads 8 floats at offsets below `n`, checked by the loop bounds.
    unsafe {
        while i + 32 <= n {
            for (l, acc) in acc.iter_mut().enumerate() {
                let o = i + 8 * l;
                *acc =
                    _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(o)), _mm256_loadu_ps(pb.add(o)), *acc);
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i)),
                _mm256_loadu_ps(pb.add(i)),
                acc[0],
            );
            i += 8;
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), sum);
        let mut s: f32 = lanes.iter().sum();
        while i < n {
            s += *pa.add(i) * *pb.add(i);
            i += 1;
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn skinny_path_equals_gemm() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (67, 45), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, 67, &dev).unwrap();
        let lin = Linear::new(w.clone(), Some(b.clone()));
        for rows in [1, 3, 32, 33] {
            let x = Tensor::randn(0f32, 1.0, (rows, 45), &dev).unwrap();
            let ours = lin.forward(&x).unwrap();
            let reference = x
                .matmul(&w.t().unwrap())
                .unwrap()
                .broadcast_add(&b)
                .unwrap();
            let diff = crate::models::max_abs_diff(&ours, &reference);
            assert!(diff < 1e-4, "rows {rows}");
        }
    }

    #[test]
    fn in_out_weights_equal_their_transpose() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (45, 150), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, 150, &dev).unwrap();
        let plain = Linear::new(w.t().unwrap().contiguous().unwrap(), Some(b.clone()));
        let in_out = Linear::from_in_out(w, Some(b)).unwrap();
        for rows in [1, 7, 32, 40] {
            let x = Tensor::randn(0f32, 1.0, (2, rows, 45), &dev).unwrap();
            let diff = crate::models::max_abs_diff(
                &in_out.forward(&x).unwrap(),
                &plain.forward(&x).unwrap(),
            );
            assert!(diff < 1e-4, "rows {rows}");
        }
    }

    #[test]
    fn portable_dot_matches_naive() {
        let a: Vec<f32> = (0..37).map(|i| i as f32 * 0.5).collect();
        let b: Vec<f32> = (0..37).map(|i| 1.0 - i as f32 * 0.1).collect();
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot_portable(&a, &b) - naive).abs() < 1e-3);
        assert!((dot_fn()(&a, &b) - naive).abs() < 1e-3);
    }

    #[test]
    fn axpy_adds_a_scaled_row() {
        let x: Vec<f32> = (0..37).map(|i| i as f32 * 0.5).collect();
        let mut y: Vec<f32> = (0..37).map(|i| 1.0 - i as f32 * 0.1).collect();
        let expected: Vec<f32> = x.iter().zip(&y).map(|(x, y)| y + 3.0 * x).collect();
        axpy_fn()(3.0, &x, &mut y);
        assert!(y.iter().zip(&expected).all(|(a, b)| (a - b).abs() < 1e-5));
    }
}
