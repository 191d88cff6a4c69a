//! Softmax over the last dimension for CPU f32 tensors with a vectorised `exp`.
//!
//! Attention over 577 image tokens takes tens of millions of exponentials per layer; the scalar
//! libm `expf` behind candle's softmax was a fifth of the ViT encoder's time. This uses the
//! Cephes single-precision polynomial (relative error ~1e-7) sixteen lanes at a time with
//! AVX-512, eight with AVX2.

use std::sync::OnceLock;

use candle_core::{Result, Tensor};
use rayon::prelude::*;

/// `softmax(x, dim = -1)`; other devices and dtypes go through candle.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if !super::host_f32(x) {
        return candle_nn::ops::softmax_last_dim(x);
    }
    let x = x.contiguous()?;
    let n = x.dim(candle_core::D::Minus1)?;
    let mut data = x.flatten_all()?.to_vec1::<f32>()?;
    let softmax_row = softmax_row_fn();
    data.par_chunks_mut(n).for_each(softmax_row);
    Tensor::from_vec(data, x.shape(), x.device())
}

/// Softmax of each `n`-long row of `data`, in place, on this thread.
pub(crate) fn softmax_rows(data: &mut [f32], n: usize) {
    data.chunks_mut(n).for_each(softmax_row_fn());
}

/// Softmax of one row, in place.
type SoftmaxRow = fn(&mut [f32]);

/// The widest softmax this CPU runs, chosen once: AVX-512 (all three passes sixteen lanes at a
/// time), else AVX2's `exp` between scalar passes for the maximum and the scaling, else scalar.
fn softmax_row_fn() -> SoftmaxRow {
    static WIDEST: OnceLock<SoftmaxRow> = OnceLock::new();
    *WIDEST.get_or_init(|| {
        softmax_row_paths()
            .last()
            .expect("scalar is always there")
            .1
    })
}

/// Every softmax this CPU runs, narrowest first: calls take the last, the tests check each.
fn softmax_row_paths() -> Vec<(&'static str, SoftmaxRow)> {
    let mut paths: Vec<(&'static str, SoftmaxRow)> =
        vec![("scalar", |row| softmax_row_with(row, exp_row_scalar))];
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the features were just detected.
            paths.push(("avx2", |row| {
                softmax_row_with(row, |r, max| unsafe { exp_row_avx2(r, max) })
            }));
        }
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was just detected.
            paths.push(("avx512", |row| unsafe { softmax_row_avx512(row) }));
        }
    }
    paths
}

/// Softmax of a row around `exp_row`, which replaces each `v` by `exp(v - max)` and returns the
/// sum.
fn softmax_row_with(row: &mut [f32], exp_row: impl FnOnce(&mut [f32], f32) -> f32) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let inv = 1.0 / exp_row(row, max);
    for v in row.iter_mut() {
        *v *= inv;
    }
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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn softmax_row_avx512(row: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = row.len();
    let full = n / 16 * 16;
    let tail = ((1u32 << (n % 16)) - 1) as __mmask16;
    let p = row.as_mut_ptr();
    // SAFETY: full loads and stores touch 16 floats below `full`, masked ones the `n - full`
    // after it.
    unsafe {
        let mut vmax = _mm512_set1_ps(f32::NEG_INFINITY);
        for i in (0..full).step_by(16) {
            vmax = _mm512_max_ps(vmax, _mm512_loadu_ps(p.add(i)));
        }
        let last = _mm512_maskz_loadu_ps(tail, p.add(full));
        vmax = _mm512_mask_max_ps(vmax, tail, vmax, last);
        let vmax = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));
        let mut acc = _mm512_setzero_ps();
        for i in (0..full).step_by(16) {
            let e = exp512(_mm512_sub_ps(_mm512_loadu_ps(p.add(i)), vmax));
            _mm512_storeu_ps(p.add(i), e);
            acc = _mm512_add_ps(acc, e);
        }
        let e = exp512(_mm512_sub_ps(last, vmax));
        _mm512_mask_storeu_ps(p.add(full), tail, e);
        acc = _mm512_mask_add_ps(acc, tail, acc, e);
        let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(acc));
        for i in (0..full).step_by(16) {
            _mm512_storeu_ps(p.add(i), _mm512_mul_ps(_mm512_loadu_ps(p.add(i)), inv));
        }
        let last = _mm512_maskz_loadu_ps(tail, p.add(full));
        _mm512_mask_storeu_ps(p.add(full), tail, _mm512_mul_ps(last, inv));
    }
}

/// [`exp256`] on sixteen lanes, the same values: the power of two applied by `vscalefps`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) fn exp512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let lo = _mm512_set1_ps(EXP_MIN);
    let kept = _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(x, lo);
    let x = _mm512_min_ps(_mm512_max_ps(x, lo), _mm512_set1_ps(EXP_MAX));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HIGH), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LOW), r);
    let mut y = _mm512_set1_ps(EXP_POLY[0]);
    for &c in &EXP_POLY[1..] {
        y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(c));
    }
    let y = _mm512_fmadd_ps(
        y,
        _mm512_mul_ps(r, r),
        _mm512_add_ps(r, _mm512_set1_ps(1.0)),
    );
    _mm512_maskz_scalef_ps(kept, y, n)
}

/// Cephes `expf`: inputs are clamped to `[EXP_MIN, EXP_MAX]` (below `EXP_MIN` the result is 0),
/// `n = round(x / ln 2)`, `r = x - n·ln 2` with ln 2 split in two for precision, and
/// `e^r ≈ 1 + r + r²·P(r)`, P's coefficients highest degree first.
const EXP_MIN: f32 = -87.3;
const EXP_MAX: f32 = 88.0;
const LN2_HIGH: f32 = 0.693_359_4;
const LN2_LOW: f32 = -2.121_944_4e-4;
const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    0.166_666_65,
    0.5,
];

/// Cephes `expf` on eight lanes (see [`EXP_POLY`]), 2^n applied through the exponent bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) fn exp256(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let lo = _mm256_set1_ps(EXP_MIN);
    let underflow = _mm256_cmp_ps::<_CMP_LT_OQ>(x, lo);
    let x = _mm256_min_ps(_mm256_max_ps(x, lo), _mm256_set1_ps(EXP_MAX));
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HIGH), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LOW), r);
    let mut y = _mm256_set1_ps(EXP_POLY[0]);
    for &c in &EXP_POLY[1..] {
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
    use candle_core::Device;

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
        let diff = crate::kernels::max_abs_diff(&ours, &reference);
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

    #[test]
    fn every_row_length_matches_candle() {
        // Whole vectors only, a partial one only, both (16 and 8 lanes), and a ViT's 577.
        let dev = Device::Cpu;
        for n in [1, 5, 8, 16, 17, 32, 45, 577] {
            let x = (Tensor::randn(0f32, 1.0, (6, n), &dev).unwrap() * 30.0).unwrap();
            let ours = softmax_last_dim(&x).unwrap();
            let reference = candle_nn::ops::softmax_last_dim(&x).unwrap();
            let diff = crate::kernels::max_abs_diff(&ours, &reference);
            assert!(diff < 1e-6, "rows of {n}: {diff}");
            let mut rows = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            softmax_rows(&mut rows, n);
            let direct = Tensor::from_vec(rows, (6, n), &dev).unwrap();
            assert!(
                crate::kernels::max_abs_diff(&direct, &reference) < 1e-6,
                "rows of {n}"
            );
            // Each path on its own, where the CPU has it (the entry points take the widest).
            for (path, softmax_row) in softmax_row_paths() {
                let mut rows = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                rows.chunks_mut(n).for_each(softmax_row);
                let got = Tensor::from_vec(rows, (6, n), &dev).unwrap();
                let diff = crate::kernels::max_abs_diff(&got, &reference);
                assert!(diff < 1e-6, "{path}, rows of {n}: {diff}");
            }
        }
    }
}
