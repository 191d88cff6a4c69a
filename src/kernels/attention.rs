//! Fused CPU attention for the two shapes where a general batched GEMM wastes its work: a
//! decoding step's one position (or grouped-query rows) per head, and bf16 vision towers.
//! Callers check that the tensors are CPU f32 ([`super::host_f32`]); the attention layer picks
//! the path.

use candle_core::{Result, Tensor};
use rayon::prelude::*;

use super::few_rows::{axpy_fn, dot_fn};
use super::map_attention::attend_one;
use super::{with_f32_values, with_storage};

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

/// Attention of the query rows of a decoding step, `q` `[b, h, g, d]`: `g` rows per head (one
/// position, or the query heads of a grouped-query head) against that head's keys and values
/// `[b, h, s, d]`, which may be views into larger buffers (a cache with room to grow: any
/// strides but a unit last one), read in place. `mask`, if any, is added to every row's scores
/// of one batch item: `[b, s]` (a padded batch's hidden positions). A general batched GEMM
/// would pack each head's keys for a row or two, so instead each head streams them once.
pub fn decode(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&[f32]>) -> Result<Tensor> {
    let (b, h, g, d) = q.dims4()?;
    let s = k.dim(2)?;
    if k.dims() != [b, h, s, d] || v.dims() != [b, h, s, d] {
        candle_core::bail!(
            "keys {:?} and values {:?} for queries {:?}",
            k.dims(),
            v.dims(),
            q.dims()
        );
    }
    if mask.is_some_and(|m| m.len() != b * s) {
        candle_core::bail!(
            "a [{b}, {s}] mask has {} values",
            mask.map_or(0, <[f32]>::len)
        );
    }
    let scale = 1.0 / (d as f32).sqrt();
    let (dot, axpy) = (dot_fn(), axpy_fn());
    let mut out = vec![0f32; b * h * g * d];
    with_f32_values(q, |qs| {
        in_place(k, |kd, ks| {
            in_place(v, |vd, vs| {
                out.par_chunks_mut(g * d).enumerate().for_each(|(bh, o)| {
                    let (bi, hi) = (bh / h, bh % h);
                    let key =
                        |j: usize| &kd[ks.0 + bi * ks.1[0] + hi * ks.1[1] + j * ks.1[2]..][..d];
                    let value =
                        |j: usize| &vd[vs.0 + bi * vs.1[0] + hi * vs.1[1] + j * vs.1[2]..][..d];
                    let hidden = mask.map(|m| &m[bi * s..][..s]);
                    let mut scores = vec![0f32; s];
                    for (row, o) in o.chunks_exact_mut(d).enumerate() {
                        let q = &qs[(bh * g + row) * d..][..d];
                        for (j, x) in scores.iter_mut().enumerate() {
                            *x = dot(q, key(j)) * scale + hidden.map_or(0.0, |m| m[j]);
                        }
                        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                        let mut sum = 0f32;
                        for x in scores.iter_mut() {
                            *x = (*x - max).exp();
                            sum += *x;
                        }
                        for (j, p) in scores.iter().enumerate() {
                            axpy(p / sum, value(j), o);
                        }
                    }
                })
            })
        })
    })???;
    Tensor::from_vec(out, (b, h, g, d), q.device())
}

/// Calls `f` with the storage of a CPU f32 rank-4 tensor and where its values lie in it (start
/// offset, strides), without copying a strided view; one whose last dimension is strided is
/// made contiguous first.
fn in_place<R>(t: &Tensor, f: impl FnOnce(&[f32], (usize, [usize; 3])) -> R) -> Result<R> {
    let t = match t.stride() {
        [_, _, _, 1] => t.clone(),
        [_, _, _, _] => t.contiguous()?,
        _ => candle_core::bail!("expected a rank-4 tensor, found shape {:?}", t.dims()),
    };
    with_storage(&t, |values, layout| {
        let st = layout.stride();
        f(values, (layout.start_offset(), [st[0], st[1], st[2]]))
    })
}
