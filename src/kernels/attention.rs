//! Fused CPU attention for the two shapes where a general batched GEMM wastes its work: one
//! query per head (every decoding step) and bf16 vision towers. Callers check that the tensors
//! are CPU f32 ([`super::host_f32`]); the attention layer picks the path.

use candle_core::{Result, Tensor};
use rayon::prelude::*;

use super::few_rows::dot_fn;
use super::map_attention::attend_one;
use super::with_f32_values;

/// Unmasked attention with many queries (vision towers) in `--dtype bf16` on the CPU: per
/// (batch, head), `softmax(Q·Kᵀ/√d)·V` with both products on the bf16 kernel and the scores
/// (`len × len`, about 1.3 MB at 577 tokens) kept in cache instead of a `[b, h, len, len]` tensor.
pub fn bf16(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let (b, h, n, d) = q.dims4()?;
    let s = k.dim(2)?;
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = vec![0f32; b * h * n * d];
    with_f32_values(q, |qs| {
        with_f32_values(k, |ks| {
            with_f32_values(v, |vs| {
                out.par_chunks_mut(n * d).enumerate().for_each(|(bh, o)| {
                    let qh: Vec<f32> = qs[bh * n * d..][..n * d]
                        .iter()
                        .map(|x| x * scale)
                        .collect();
                    let (k, v) = (&ks[bh * s * d..][..s * d], &vs[bh * s * d..][..s * d]);
                    attend_one(&qh, k, v, (n, s, d), true, o);
                })
            })
        })
    })???;
    Tensor::from_vec(out, (b, h, n, d), q.device())
}

/// Attention for one query position per (batch, head), the shape of every decoding step: a
/// general batched GEMM would pack each head's keys for a single row, so instead each head
/// streams its keys and values once.
pub fn single_query(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let (b, h, _, d) = q.dims4()?;
    let s = k.dim(2)?;
    let scale = 1.0 / (d as f32).sqrt();
    let dot = dot_fn();
    let mut out = vec![0f32; b * h * d];
    with_f32_values(q, |qs| {
        with_f32_values(k, |kd| {
            with_f32_values(v, |vd| {
                out.par_chunks_mut(d).enumerate().for_each(|(bh, o)| {
                    let q = &qs[bh * d..(bh + 1) * d];
                    let keys = &kd[bh * s * d..(bh + 1) * s * d];
                    let values = &vd[bh * s * d..(bh + 1) * s * d];
                    let mut scores: Vec<f32> = keys
                        .chunks_exact(d)
                        .map(|key| dot(q, key) * scale)
                        .collect();
                    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0f32;
                    for x in scores.iter_mut() {
                        *x = (*x - max).exp();
                        sum += *x;
                    }
                    for (p, value) in scores.iter().zip(values.chunks_exact(d)) {
                        let p = p / sum;
                        for (o, x) in o.iter_mut().zip(value) {
                            *o += p * x;
                        }
                    }
                })
            })
        })
    })???;
    Tensor::from_vec(out, (b, h, 1, d), q.device())
}
