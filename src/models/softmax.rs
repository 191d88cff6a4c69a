//! Softmax over the last dimension for CPU f32 tensors with a vectorised `exp`.
//!
//! Attention over 577 image tokens takes tens of millions of exponentials per layer; the scalar
//! libm `expf` behind candle's softmax was a fifth of the ViT encoder's time. This uses the
//! Cephes single-precision polynomial (relative error ~1e-7) eight lanes at a time.

use candle_core::{DType, Device, Result, Tensor};
use rayon::prelude::*;

/// `softmax(x, dim = -1)`; other devices and dtypes go through candle.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if !matches!(x.device(), Device::Cpu) || x.dtype() != DType::F32 {
        return candle_nn::ops::softmax_last_dim(x);
    }
    let x = x.contiguous()?;
    let n = x.dim(candle_core::D::Minus1)?;
    let mut data = x.flatten_all()?.to_vec1::<f32>()?;
    let exp_row = exp_row_fn();
    data.par_chunks_mut(n)
        .for_each(|row| softmax_row_with(row, exp_row));
    Tensor::from_vec(data, x.shape(), x.device())
}

/// Softmax of each `n`-long row of `data`, in place, on this thread.
pub(crate) fn softmax_rows(data: &mut [f32], n: usize) {
    let exp_row = exp_row_fn();
    for row in data.chunks_mut(n) {
        softmax_row_with(row, exp_row);
    }
}

fn softmax_row_with(row: &mut [f32], exp_row: ExpRow) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum = exp_row(row, max);
    let inv = 1.0 / sum;
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// Replaces each `v` by `exp(v - max)` and returns the sum.
type ExpRow = fn(&mut [f32], f32) -> f32;

fn exp_row_fn() -> ExpRow {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return |row, max| unsafe { exp_row_avx2(row, max) };
        }
    }
    exp_row_scalar
}

fn exp_row_scalar(row: &mut [f32], max: f32) -> f32 {
    let mut sum = 0.0;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_row_avx2(row: &mut [f32], max: f32) -> f32 {
    use std::arch::x86_64::*;
    let n = row.len();
    let p = row.as_mut_ptr();
    let mut i = 0;
    let mut acc = _mm256_setzero_ps();
    let vmax = _mm256_set1_ps(max);
    // SAFETY: loads and stores touch 8 floats at offsets below `n`, checked by the loop bound.
    unsafe {
        while i + 8 <= n {
            let x = _mm256_sub_ps(_mm256_loadu_ps(p.add(i)), vmax);
            let e = exp256(x);
            _mm256_storeu_ps(p.add(i), e);
            acc = _mm256_add_ps(acc, e);
            i += 8;
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
        let mut sum: f32 = lanes.iter().sum();
        while i < n {
            let e = (*p.add(i) - max).exp();
            *p.add(i) = e;
            sum += e;
            i += 1;
        }
        sum
    }
}

/// Cephes `expf` on eight lanes: 2^n · P(r) with x = n·ln2 + r; inputs below -87.3 give 0.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) fn exp256(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let lo = _mm256_set1_ps(-87.3);
    let underflow = _mm256_cmp_ps::<_CMP_LT_OQ>(x, lo);
    let x = _mm256_min_ps(_mm256_max_ps(x, lo), _mm256_set1_ps(88.0));
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut y = _mm256_set1_ps(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ] {
        y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(c));
    }
    let y = _mm256_fmadd_ps(
        y,
        _mm256_mul_ps(r, r),
        _mm256_add_ps(r, _mm256_set1_ps(1.0)),
    );
    let pow2 = _mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(n),
        _mm256_set1_epi32(127),
    ));
    let e = _mm256_mul_ps(y, _mm256_castsi256_ps(pow2));
    _mm256_andnot_ps(underflow, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_candle_softmax_including_masked_entries() {
        let dev = Device::Cpu;
        let x = (Tensor::randn(0f32, 1.0, (3, 4, 37), &dev).unwrap() * 20.0).unwrap();
        let mask: Vec<f32> = (0..37)
            .map(|j| if j > 30 { f32::NEG_INFINITY } else { 0.0 })
            .collect();
        let x = x.broadcast_add(&Tensor::new(mask, &dev).unwrap()).unwrap();
        let ours = softmax_last_dim(&x).unwrap();
        let reference = candle_nn::ops::softmax_last_dim(&x).unwrap();
        let diff = crate::models::max_abs_diff(&ours, &reference);
        assert!(diff < 1e-6, "{diff}");
        let masked = ours
            .narrow(2, 31, 6)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(masked, 0.0);
    }
}
