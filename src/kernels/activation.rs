//! GELU-family activations for CPU f32 tensors, sixteen lanes at a time with AVX-512, eight with
//! AVX2.
//!
//! candle evaluates `erf` / `tanh` with scalar libm calls; in the MLPs of a ViT (14 M activations
//! per layer for a batch of 8 BLIP images) and in SigLIP's text tower that was a sixth of the
//! time. These use the Cephes `exp` of `softmax.rs`: `tanh(u) = 1 − 2/(e^{2u} + 1)`, and for
//! `erf` the Abramowitz–Stegun 7.1.26 rational approximation (absolute error < 1.5e-7).

use std::sync::OnceLock;

use super::{par_filled, with_f32_values};
use candle_core::{Result, Tensor};

/// The GELU variants glance accelerates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gelu {
    /// `x·Φ(x)` with the exact error function (`gelu`).
    Erf,
    /// The tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    Tanh,
    /// `x·σ(1.702x)` (CLIP's `quick_gelu`).
    Quick,
}

/// Applies `kind` to a CPU f32 tensor; `None` when the fast path does not apply (other devices,
/// dtypes, or a CPU without AVX2/FMA), so the caller falls back to candle.
pub fn gelu(x: &Tensor, kind: Gelu) -> Result<Option<Tensor>> {
    let Some(gelu_run) = widest_gelu().filter(|_| super::host_f32(x)) else {
        return Ok(None);
    };
    const PIECE: usize = 1 << 14;
    // Straight from the input's storage into the output's, one pass over each.
    let data = with_f32_values(x, |src| {
        par_filled(src.len(), PIECE, 0f32, |i, out| {
            gelu_run(&src[i * PIECE..][..out.len()], out, kind)
        })
    })?;
    Ok(Some(Tensor::from_vec(data, x.shape(), x.device())?))
}

/// `dst[i] = kind(src[i])` with the widest path; for callers on CPUs with AVX2 and FMA (the
/// bf16 kernel's, which have AVX-512).
pub(crate) fn gelu_slice(src: &[f32], dst: &mut [f32], kind: Gelu) {
    let run = widest_gelu().expect("gelu_slice called on a CPU without AVX2 and FMA");
    run(src, dst, kind)
}

/// `dst[i] = kind(src[i])` over a run of values.
type GeluRun = fn(&[f32], &mut [f32], Gelu);

/// The widest GELU this CPU runs, chosen once; `None` without AVX2 and FMA.
fn widest_gelu() -> Option<GeluRun> {
    static WIDEST: OnceLock<Option<GeluRun>> = OnceLock::new();
    *WIDEST.get_or_init(|| gelu_paths().last().map(|&(_, run)| run))
}

/// Every GELU this CPU runs, narrowest first (none without AVX2 and FMA): calls take the last,
/// the test checks each.
fn gelu_paths() -> Vec<(&'static str, GeluRun)> {
    let mut paths: Vec<(&'static str, GeluRun)> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the features were just detected.
        paths.push(("avx2", |src, dst, kind| unsafe {
            gelu_avx2(src, dst, kind)
        }));
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was just detected.
            paths.push(("avx512", |src, dst, kind| unsafe {
                gelu_avx512(src, dst, kind)
            }));
        }
    }
    paths
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_avx2(src: &[f32], dst: &mut [f32], kind: Gelu) {
    use std::arch::x86_64::*;
    let n = src.len().min(dst.len());
    let mut i = 0;
    // SAFETY: loads and stores touch 8 floats at offsets below `n`.
    unsafe {
        while i + 8 <= n {
            let x = _mm256_loadu_ps(src.as_ptr().add(i));
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), gelu8(x, kind));
            i += 8;
        }
    }
    if i < n {
        let mut tail = [0f32; 8];
        tail[..n - i].copy_from_slice(&src[i..n]);
        // SAFETY: `tail` holds 8 floats.
        unsafe {
            let y = gelu8(_mm256_loadu_ps(tail.as_ptr()), kind);
            _mm256_storeu_ps(tail.as_mut_ptr(), y);
        }
        dst[i..n].copy_from_slice(&tail[..n - i]);
    }
}

/// [`gelu_avx2`] sixteen lanes at a time, tails by masked loads and stores.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gelu_avx512(src: &[f32], dst: &mut [f32], kind: Gelu) {
    use std::arch::x86_64::*;
    let n = src.len().min(dst.len());
    let full = n / 16 * 16;
    let tail = ((1u32 << (n % 16)) - 1) as __mmask16;
    // SAFETY: full loads and stores touch 16 floats below `full`, masked ones the `n - full`
    // after it.
    unsafe {
        for i in (0..full).step_by(16) {
            let x = _mm512_loadu_ps(src.as_ptr().add(i));
            _mm512_storeu_ps(dst.as_mut_ptr().add(i), gelu16(x, kind));
        }
        let x = _mm512_maskz_loadu_ps(tail, src.as_ptr().add(full));
        _mm512_mask_storeu_ps(dst.as_mut_ptr().add(full), tail, gelu16(x, kind));
    }
}

/// [`gelu8`] on sixteen lanes, the same formulas.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) fn gelu16(x: std::arch::x86_64::__m512, kind: Gelu) -> std::arch::x86_64::__m512 {
    use crate::kernels::softmax::exp512;
    use std::arch::x86_64::*;
    let one = _mm512_set1_ps(1.0);
    let half_x = _mm512_mul_ps(_mm512_set1_ps(0.5), x);
    match kind {
        Gelu::Quick => {
            let e = exp512(_mm512_mul_ps(x, _mm512_set1_ps(-1.702)));
            _mm512_div_ps(x, _mm512_add_ps(one, e))
        }
        Gelu::Tanh => {
            let x3 = _mm512_mul_ps(_mm512_mul_ps(x, x), x);
            let u = _mm512_mul_ps(
                _mm512_set1_ps(0.797_884_6),
                _mm512_fmadd_ps(_mm512_set1_ps(0.044_715), x3, x),
            );
            let e = exp512(_mm512_add_ps(u, u));
            let two = _mm512_set1_ps(2.0);
            let t = _mm512_sub_ps(two, _mm512_div_ps(two, _mm512_add_ps(e, one)));
            _mm512_mul_ps(half_x, t)
        }
        Gelu::Erf => {
            let z = _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
            let a = _mm512_abs_ps(z);
            let t = _mm512_div_ps(one, _mm512_fmadd_ps(_mm512_set1_ps(ERF_P), a, one));
            let mut poly = _mm512_set1_ps(ERF_A[0]);
            for c in &ERF_A[1..] {
                poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(*c));
            }
            poly = _mm512_mul_ps(poly, t);
            let e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(a, a)));
            let erf_abs = _mm512_fnmadd_ps(poly, e, one);
            // The sign of z on |erf|.
            let sign = _mm512_and_si512(_mm512_castps_si512(z), _mm512_set1_epi32(i32::MIN));
            let erf = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(erf_abs), sign));
            _mm512_mul_ps(half_x, _mm512_add_ps(one, erf))
        }
    }
}

/// Abramowitz–Stegun 7.1.26: `erf(z) ≈ 1 − t·P(t)·e^{−z²}`, `t = 1 / (1 + p·z)`, for z ≥ 0;
/// P's coefficients highest degree first.
const ERF_P: f32 = 0.327_591_1;
const ERF_A: [f32; 5] = [
    1.061_405_4,
    -1.453_152_1,
    1.421_413_8,
    -0.284_496_74,
    0.254_829_6,
];

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn gelu8(x: std::arch::x86_64::__m256, kind: Gelu) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let one = _mm256_set1_ps(1.0);
    let half_x = _mm256_mul_ps(_mm256_set1_ps(0.5), x);
    match kind {
        Gelu::Quick => {
            // x / (1 + e^{-1.702x})
            let e = crate::kernels::softmax::exp256(_mm256_mul_ps(x, _mm256_set1_ps(-1.702)));
            _mm256_div_ps(x, _mm256_add_ps(one, e))
        }
        Gelu::Tanh => {
            // 0.5x(1 + tanh(u)), u = √(2/π)(x + 0.044715x³); 1 + tanh(u) = 2 − 2/(e^{2u} + 1).
            let x3 = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
            let u = _mm256_mul_ps(
                _mm256_set1_ps(0.797_884_6),
                _mm256_fmadd_ps(_mm256_set1_ps(0.044_715), x3, x),
            );
            let e = crate::kernels::softmax::exp256(_mm256_add_ps(u, u));
            let two = _mm256_set1_ps(2.0);
            let t = _mm256_sub_ps(two, _mm256_div_ps(two, _mm256_add_ps(e, one)));
            _mm256_mul_ps(half_x, t)
        }
        Gelu::Erf => {
            // 0.5x(1 + erf(x/√2)), erf by Abramowitz–Stegun 7.1.26 on |z|, sign restored.
            let z = _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
            let sign = _mm256_and_ps(z, _mm256_set1_ps(-0.0));
            let a = _mm256_andnot_ps(_mm256_set1_ps(-0.0), z);
            let t = _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_set1_ps(ERF_P), a, one));
            let mut poly = _mm256_set1_ps(ERF_A[0]);
            for c in &ERF_A[1..] {
                poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(*c));
            }
            poly = _mm256_mul_ps(poly, t);
            let e = crate::kernels::softmax::exp256(_mm256_sub_ps(
                _mm256_setzero_ps(),
                _mm256_mul_ps(a, a),
            ));
            let erf_abs = _mm256_fnmadd_ps(poly, e, one);
            let erf = _mm256_or_ps(erf_abs, sign);
            _mm256_mul_ps(half_x, _mm256_add_ps(one, erf))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_the_exact_functions() {
        let xs: Vec<f32> = (-2000..=2000)
            .map(|i| i as f32 * 0.006)
            .chain([-30.0, 30.0, 0.0])
            .collect();
        let t = Tensor::new(xs.as_slice(), &Device::Cpu).unwrap();
        for kind in [Gelu::Erf, Gelu::Tanh, Gelu::Quick] {
            let Some(fast) = gelu(&t, kind).unwrap() else {
                return; // no AVX2 here: nothing to compare
            };
            check(kind, "widest", &xs, &fast.to_vec1::<f32>().unwrap());
            // Each path on its own, where the CPU has it (`gelu` takes the widest).
            for (path, run) in gelu_paths() {
                let mut y = vec![0f32; xs.len()];
                run(&xs, &mut y, kind);
                check(kind, path, &xs, &y);
            }
        }
    }

    /// `fast` (`path`'s output for `xs`) against `kind` in double precision.
    fn check(kind: Gelu, path: &str, xs: &[f32], fast: &[f32]) {
        for (x, &y) in xs.iter().zip(fast) {
            let x64 = f64::from(*x);
            let exact = match kind {
                Gelu::Erf => 0.5 * x64 * (1.0 + erf(x64 / std::f64::consts::SQRT_2)),
                Gelu::Tanh => {
                    let u = (2.0 / std::f64::consts::PI).sqrt() * (x64 + 0.044715 * x64.powi(3));
                    0.5 * x64 * (1.0 + u.tanh())
                }
                Gelu::Quick => x64 / (1.0 + (-1.702 * x64).exp()),
            };
            assert!(
                (f64::from(y) - exact).abs() <= 1e-6 * (1.0 + exact.abs()),
                "{path} {kind:?}({x}) = {y}, exact {exact}"
            );
        }
    }

    /// erf to double precision (series / continued fraction), for the test only.
    fn erf(x: f64) -> f64 {
        let s = x.signum();
        let a = x.abs();
        if a < 3.0 {
            let (mut term, mut sum, mut n) = (a, a, 0.0);
            while term.abs() > 1e-17 {
                n += 1.0;
                term *= -a * a / n;
                sum += term / (2.0 * n + 1.0);
            }
            s * 2.0 / std::f64::consts::PI.sqrt() * sum
        } else {
            // erfc continued fraction (Lentz) for large |x|.
            let mut f = a;
            for k in (1..60).rev() {
                f = a + (k as f64 / 2.0) / f;
            }
            s * (1.0 - (-a * a).exp() / (f * std::f64::consts::PI.sqrt()))
        }
    }
}
