//! LayerNorm over the last dimension for CPU f32 tensors.
//!
//! candle's fused CPU layer norm sums each row one value at a time (`sum += v`, `sum2 += v·v`):
//! floating-point order keeps the compiler from vectorising it, so every value waits on the
//! previous add. DaViT normalises its token maps four times a block (73 M values an image in
//! Florence-2-base), where that was 2 % of the run. Here the sums run in sixteen independent
//! lanes, and the variance is taken around the mean (two passes over a row in L1, as PyTorch
//! does) rather than as `E[x²] − E[x]²`.

use candle_core::{Result, Tensor};

use super::{par_filled, with_f32_values};

/// `(x − mean) / sqrt(var + eps) · weight + bias` over each row of the last dimension; `weight`
/// and `bias` hold that dimension's values. Callers check [`super::host_f32`].
pub fn layer_norm(x: &Tensor, weight: &[f32], bias: Option<&[f32]>, eps: f32) -> Result<Tensor> {
    let d = x.dim(candle_core::D::Minus1)?;
    if weight.len() != d || bias.is_some_and(|b| b.len() != d) {
        candle_core::bail!(
            "layer norm over {d} values with {} weights and {:?} biases",
            weight.len(),
            bias.map(<[f32]>::len)
        );
    }
    if d == 0 {
        return Ok(x.clone());
    }
    // Whole rows per task, about 64 KB of them.
    let rows_per_task = (16_384 / d).max(1);
    let norm_rows = norm_rows_fn();
    let data = with_f32_values(x, |src| {
        par_filled(src.len(), rows_per_task * d, 0f32, |i, out| {
            norm_rows(
                &src[i * rows_per_task * d..][..out.len()],
                out,
                weight,
                bias,
                eps,
            )
        })
    })?;
    Tensor::from_vec(data, x.shape(), x.device())
}

/// Normalises each `weight.len()`-long row of `src` into `dst`.
type NormRows = fn(&[f32], &mut [f32], &[f32], Option<&[f32]>, f32);

/// The widest path this CPU runs, chosen once.
fn norm_rows_fn() -> NormRows {
    static WIDEST: std::sync::OnceLock<NormRows> = std::sync::OnceLock::new();
    *WIDEST.get_or_init(|| paths().last().expect("portable is always there").1)
}

/// Every path this CPU runs, narrowest first: calls take the last, the test checks each.
fn paths() -> Vec<(&'static str, NormRows)> {
    let mut paths: Vec<(&'static str, NormRows)> = vec![("portable", norm_rows)];
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the feature was just detected.
        paths.push(("avx512", |src, dst, w, b, eps| unsafe {
            norm_rows_avx512(src, dst, w, b, eps)
        }));
    }
    paths
}

/// [`norm_rows`] sixteen lanes at a time (a masked load or store for a row's tail).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn norm_rows_avx512(
    src: &[f32],
    dst: &mut [f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    eps: f32,
) {
    use std::arch::x86_64::*;
    let d = weight.len();
    let full = d / 16 * 16;
    let tail: __mmask16 = ((1u32 << (d - full)) - 1) as __mmask16;
    let zero = _mm512_setzero_ps();
    // SAFETY: every load and store below is of the 16 (or, masked, d − full) values at
    // offset i < d of a d-long row of `src`, `dst`, `weight` or `bias`.
    unsafe {
        let load = |p: *const f32, i: usize| match i < full {
            true => _mm512_loadu_ps(p.add(i)),
            false => _mm512_maskz_loadu_ps(tail, p.add(i)),
        };
        let steps = d.div_ceil(16);
        let (w, b) = (weight.as_ptr(), bias.map(<[f32]>::as_ptr));
        for (x, y) in src.chunks_exact(d).zip(dst.chunks_exact_mut(d)) {
            let (x, y) = (x.as_ptr(), y.as_mut_ptr());
            // Two accumulators, so that consecutive adds do not wait on each other.
            let (mut s0, mut s1) = (zero, zero);
            for step in 0..steps {
                let v = load(x, step * 16);
                match step % 2 {
                    0 => s0 = _mm512_add_ps(s0, v),
                    _ => s1 = _mm512_add_ps(s1, v),
                }
            }
            let mean = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1)) / d as f32;
            let m = _mm512_set1_ps(mean);
            let (mut q0, mut q1) = (zero, zero);
            for step in 0..steps {
                let i = step * 16;
                // The tail's masked-off lanes are 0 − mean: mask them out of the square.
                let c = match i < full {
                    true => _mm512_sub_ps(load(x, i), m),
                    false => _mm512_maskz_sub_ps(tail, load(x, i), m),
                };
                match step % 2 {
                    0 => q0 = _mm512_fmadd_ps(c, c, q0),
                    _ => q1 = _mm512_fmadd_ps(c, c, q1),
                }
            }
            let var = _mm512_reduce_add_ps(_mm512_add_ps(q0, q1)) / d as f32;
            let inv = _mm512_set1_ps(1.0 / (var + eps).sqrt());
            for step in 0..steps {
                let i = step * 16;
                let scaled =
                    _mm512_mul_ps(_mm512_mul_ps(_mm512_sub_ps(load(x, i), m), inv), load(w, i));
                let out = match b {
                    Some(b) => _mm512_add_ps(scaled, load(b, i)),
                    None => scaled,
                };
                match i < full {
                    true => _mm512_storeu_ps(y.add(i), out),
                    false => _mm512_mask_storeu_ps(y.add(i), tail, out),
                }
            }
        }
    }
}

fn norm_rows(src: &[f32], dst: &mut [f32], weight: &[f32], bias: Option<&[f32]>, eps: f32) {
    let d = weight.len();
    for (x, y) in src.chunks_exact(d).zip(dst.chunks_exact_mut(d)) {
        let mean = lane_sum(x, |v| v) / d as f32;
        let var = lane_sum(x, |v| (v - mean) * (v - mean)) / d as f32;
        let inv = 1.0 / (var + eps).sqrt();
        match bias {
            Some(b) => {
                for (((y, &x), &w), &b) in y.iter_mut().zip(x).zip(weight).zip(b) {
                    *y = (x - mean) * inv * w + b;
                }
            }
            None => {
                for ((y, &x), &w) in y.iter_mut().zip(x).zip(weight) {
                    *y = (x - mean) * inv * w;
                }
            }
        }
    }
}

/// `Σ f(x)` in sixteen independent lanes (then summed).
fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// `n` values in [-1, 1) from a fixed sequence.
    fn uniform(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    #[test]
    fn equals_a_two_pass_layer_norm_in_f64() -> Result<()> {
        let dev = Device::Cpu;
        // Row lengths with and without a tail of lanes; one offset far from zero, where
        // E[x²] − E[x]² loses digits. Within a few f32 ulps of the result (values up to about
        // 4; offset values round to ulps of 100 before the mean comes off).
        for (rows, d, offset) in [
            (7, 128, 0.0),
            (3, 45, 0.0),
            (2, 8, 0.0),
            (4, 16, 0.0),
            (300, 768, 0.0),
            (5, 64, 100.0),
        ] {
            let x = Tensor::from_vec(uniform(rows * d, 1), (rows, d), &dev)?.affine(3.5, offset)?;
            let w = Tensor::from_vec(uniform(d, 2), d, &dev)?.affine(0.8, 1.0)?;
            let b = Tensor::from_vec(uniform(d, 3), d, &dev)?.affine(0.8, 0.0)?;
            let (wv, bv) = (w.to_vec1::<f32>()?, b.to_vec1::<f32>()?);
            let tol = 2e-6 * (1.0 + offset as f32 / 25.0);
            // The reference in f64, two passes.
            let x64 = x.to_dtype(candle_core::DType::F64)?;
            let centred = x64.broadcast_sub(&x64.mean_keepdim(1)?)?;
            let var = centred.sqr()?.mean_keepdim(1)?;
            let reference = centred
                .broadcast_div(&(var + 1e-5)?.sqrt()?)?
                .to_dtype(candle_core::DType::F32)?
                .broadcast_mul(&w)?
                .broadcast_add(&b)?;
            let ours = layer_norm(&x, &wv, Some(&bv), 1e-5)?;
            let diff = crate::kernels::max_abs_diff(&ours, &reference);
            assert!(diff < tol, "{rows}×{d} (+{offset}): {diff}");
            let xs = x.flatten_all()?.to_vec1::<f32>()?;
            for (name, run) in paths() {
                for bias in [Some(bv.as_slice()), None] {
                    let mut out = vec![0f32; xs.len()];
                    run(&xs, &mut out, &wv, bias, 1e-5);
                    let out = Tensor::from_vec(out, (rows, d), &dev)?;
                    let out = match bias {
                        Some(_) => out,
                        None => out.broadcast_add(&b)?,
                    };
                    let diff = crate::kernels::max_abs_diff(&out, &reference);
                    assert!(
                        diff < tol,
                        "{name}, {rows}×{d} (+{offset}), bias {}: {diff}",
                        bias.is_some()
                    );
                }
            }
        }
        Ok(())
    }

    #[test]
    fn mismatched_weights_are_refused() {
        let x = Tensor::zeros((2, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(layer_norm(&x, &[1.0; 7], None, 1e-5).is_err());
    }
}
