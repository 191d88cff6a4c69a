//! Cross-attention from a text decoder to an image, with the key and value projections folded
//! into the query and output sides, so that a decoder keeps only the image's encoder states
//! instead of keys and values for every layer.
//!
//! For a head with query `q` (`hd` values), key rows `K` (`hd × e`), value rows `V` (`hd × e`)
//! and encoder states `E` (`s × e`), the usual `softmax(q·(E·Kᵀ + b_k)ᵀ)·(E·Vᵀ + b_v)` equals
//!
//! ```text
//! softmax((q·K)·Eᵀ) · E · Vᵀ + b_v
//! ```
//!
//! because `q·b_k` adds the same number to every score (softmax ignores it) and the attention
//! weights sum to one. The cached keys and values of BLIP-base at batch 8 were 340 MB (12 layers ×
//! 2 × 8 images × 577 positions × 768), read back on every decoding step and 16 GFLOP per image to
//! compute; folded, each step does a little more arithmetic on the 14 MB of encoder states, which
//! stay in cache.
//!
//! That arithmetic is `heads` times the usual per row, so where several rows share an image
//! (beam search) [`ProjectedCrossAttention`] projects each image's keys and values once instead.

use candle_core::{Module, Result, Tensor};
use rayon::prelude::*;

use crate::kernels::few_rows::{axpy_fn, dot_fn};
use crate::kernels::few_rows::{dot_rows, mix_rows};
use crate::kernels::{host_f32, with_f32_values};
use crate::layers::linear::Linear;

/// Above this many queries per image (heads × rows × positions) a step takes batched GEMMs.
const STREAMING_MAX_QUERIES: usize = 64;

/// The `(d, e)` of `[d, e]` key and value weights that split into `heads` heads.
fn check_weights(key: &Tensor, value: &Tensor, heads: usize) -> Result<(usize, usize)> {
    let (d, e) = key.dims2()?;
    if value.dims2()? != (d, e) || d % heads != 0 {
        candle_core::bail!(
            "cross-attention: key {:?} and value {:?} weights do not match {heads} heads",
            key.dims(),
            value.dims()
        );
    }
    Ok((d, e))
}

/// One layer's folded key and value projections.
#[derive(Debug, Clone)]
pub struct CrossAttention {
    /// `[heads, hd, e]`: each head's rows of the key weight.
    key: Tensor,
    /// `[heads, hd, e]`: each head's rows of the value weight.
    value: Tensor,
    value_bias: Option<Tensor>,
    heads: usize,
    /// Multiplies the scores (`1/sqrt(hd)` for most models).
    scale: f64,
    /// The value bias as host floats, for the streaming path (CPU f32 only).
    value_bias_host: Option<Vec<f32>>,
}

impl CrossAttention {
    /// `key` and `value` are `[d, e]` weights in HF's `[out, in]` layout (`e`: the encoder's
    /// width); the key bias is not needed (see the module documentation).
    pub fn new(
        key: &Tensor,
        value: &Tensor,
        value_bias: Option<Tensor>,
        heads: usize,
        scale: f64,
    ) -> Result<Self> {
        let (d, e) = check_weights(key, value, heads)?;
        let hd = d / heads;
        let value_bias_host = match &value_bias {
            Some(b) if host_f32(b) => Some(b.to_vec1::<f32>()?),
            _ => None,
        };
        Ok(Self {
            key: key.reshape((heads, hd, e))?.contiguous()?,
            value: value.reshape((heads, hd, e))?.contiguous()?,
            value_bias,
            heads,
            scale,
            value_bias_host,
        })
    }

    /// Attends from projected queries `q` `[rows, n, d]` to `memory` `[images, s, e]`, where
    /// `group` consecutive rows belong to each image (beams, several samples). Returns the
    /// context `[rows, n, d]`, before the output projection.
    pub fn attend(&self, q: &Tensor, memory: &Tensor, group: usize) -> Result<Tensor> {
        let (rows, n, d) = q.dims3()?;
        let (images, _, e) = memory.dims3()?;
        if images * group != rows {
            candle_core::bail!(
                "cross-attention: {rows} decoder rows for {images} images of {group} rows each"
            );
        }
        let (h, hd) = (self.heads, d / self.heads);
        let streaming = group * n * h <= STREAMING_MAX_QUERIES
            && [q, memory, &self.key, &self.value]
                .into_iter()
                .all(host_f32)
            && self.value_bias.is_some() == self.value_bias_host.is_some();
        if streaming {
            let out = with_f32_values(q, |q| {
                with_f32_values(memory, |m| {
                    self.attend_streaming(q, rows * n, m, group * n, e)
                })
            })???;
            return Tensor::from_vec(out, (rows, n, d), q.device());
        }
        // Per head, the query seen through the key weight: [h, rows·n, e].
        let q = (q.reshape((rows * n, h, hd))?.transpose(0, 1)? * self.scale)?;
        let qk = q.contiguous()?.matmul(&self.key)?;
        // Every query of an image (its rows, positions and heads) against its states at once.
        let qk = qk
            .transpose(0, 1)?
            .contiguous()?
            .reshape((images, group * n * h, e))?;
        let scores = qk.matmul(&memory.transpose(1, 2)?)?;
        let probs = crate::kernels::softmax::softmax_last_dim(&scores)?;
        let mixed = probs.matmul(memory)?;
        // Back per head through the value weight: [h, rows·n, hd].
        let ctx = mixed
            .reshape((rows * n, h, e))?
            .transpose(0, 1)?
            .contiguous()?
            .matmul(&self.value.transpose(1, 2)?)?;
        let ctx = ctx.transpose(0, 1)?.contiguous()?.reshape((rows, n, d))?;
        match &self.value_bias {
            Some(b) => ctx.broadcast_add(b),
            None => Ok(ctx),
        }
    }
}

impl CrossAttention {
    /// The decoding-step path on the CPU: `q` `[queries, d]` (`per_image` consecutive queries
    /// for each image of `memory` `[images, s, e]`) to the context `[queries, d]`. Each product
    /// streams its weight or state rows, taking all queries' dot products or updates with a few
    /// rows at a time while they are in L1 (the states' products in the register-blocked
    /// [`dot_rows`] / [`mix_rows`]), where a batched GEMM would pack an image's states (1.7 MB
    /// at 577 × 768) for a dozen query rows on every call.
    fn attend_streaming(
        &self,
        q: &[f32],
        queries: usize,
        memory: &[f32],
        per_image: usize,
        e: usize,
    ) -> Result<Vec<f32>> {
        let h = self.heads;
        let d = q.len() / queries.max(1);
        let hd = d / h;
        let (dot, axpy) = (dot_fn(), axpy_fn());
        let scale = self.scale as f32;
        let s = memory.len() / e / (queries / per_image).max(1);
        // qk[head][query] = scale · Σ_j q[query, head, j] · K[head, j, :], streaming K's rows.
        let mut qk = vec![0f32; h * queries * e];
        with_f32_values(&self.key, |key| {
            qk.par_chunks_mut(queries * e)
                .enumerate()
                .for_each(|(head, out)| {
                    for j in 0..hd {
                        let krow = &key[(head * hd + j) * e..][..e];
                        for (r, o) in out.chunks_exact_mut(e).enumerate() {
                            axpy(scale * q[r * d + head * hd + j], krow, o);
                        }
                    }
                })
        })?;
        // Per image: scores against its states, softmax, and the weighted sum of its states,
        // as mixed[image][head][k] for the image's k-th query.
        let g = per_image * h;
        let mut mixed = vec![0f32; queries * h * e];
        mixed
            .par_chunks_mut(g * e)
            .enumerate()
            .for_each(|(img, out)| {
                let states = &memory[img * s * e..][..s * e];
                let mut rows = Vec::with_capacity(g * e);
                for i in 0..g {
                    let (head, k) = (i / per_image, i % per_image);
                    rows.extend_from_slice(&qk[(head * queries + img * per_image + k) * e..][..e]);
                }
                let mut scores = vec![0f32; g * s];
                dot_rows(&rows, g, states, s, e, &mut scores);
                crate::kernels::softmax::softmax_rows(&mut scores, s);
                mix_rows(&scores, g, states, s, e, out);
            });
        let mixed_row = |head: usize, query: usize| {
            let (img, k) = (query / per_image, query % per_image);
            &mixed[((img * h + head) * per_image + k) * e..][..e]
        };
        // ctx[query, head, j] = mixed · V[head, j, :] + b, streaming V's rows.
        let mut ctx_t = vec![0f32; h * hd * queries];
        with_f32_values(&self.value, |value| {
            ctx_t
                .par_chunks_mut(hd * queries)
                .enumerate()
                .for_each(|(head, out)| {
                    for j in 0..hd {
                        let vrow = &value[(head * hd + j) * e..][..e];
                        for (r, o) in out[j * queries..][..queries].iter_mut().enumerate() {
                            *o = dot(mixed_row(head, r), vrow);
                        }
                    }
                })
        })?;
        let bias = self.value_bias_host.as_deref();
        let mut ctx = vec![0f32; queries * d];
        for (r, row) in ctx.chunks_exact_mut(d).enumerate() {
            for (c, x) in row.iter_mut().enumerate() {
                *x = ctx_t[c * queries + r] + bias.map_or(0.0, |b| b[c]);
            }
        }
        Ok(ctx)
    }
}

/// Cross-attention the usual way: each image's keys and values projected once per layer
/// ([`Self::project`], kept in the decoder's cache) and read on every step.
///
/// Folding ([`CrossAttention`]) trades that projection for `heads` times the arithmetic on
/// every step, for every row. That pays when each image has one row and few steps (BLIP:
/// 12 layers of keys and values, 16 GFLOP an image to project, 20-token captions). With
/// beams, several rows share each image's keys and values, so projecting wins: Florence-2's
/// 3 beams over 6 layers and 577 image tokens spent 18 ms of each 46 ms step in the folded
/// products, and 4 ms reading projected keys and values.
#[derive(Debug, Clone)]
pub struct ProjectedCrossAttention {
    key: Linear,
    value: Linear,
    heads: usize,
    scale: f64,
}

impl ProjectedCrossAttention {
    /// `key` and `value` are `[d, e]` weights in HF's `[out, in]` layout; the key bias is not
    /// needed (it adds one number to all of a query's scores).
    pub fn new(
        key: Tensor,
        value: Tensor,
        value_bias: Option<Tensor>,
        heads: usize,
        scale: f64,
    ) -> Result<Self> {
        check_weights(&key, &value, heads)?;
        Ok(Self {
            key: Linear::new(key, None),
            value: Linear::new(value, value_bias),
            heads,
            scale,
        })
    }

    /// Keys and values of `memory` `[images, s, e]`: `[images, heads, s, hd]` each.
    pub fn project(&self, memory: &Tensor) -> Result<(Tensor, Tensor)> {
        let (images, s, _) = memory.dims3()?;
        let split = |x: Tensor| -> Result<Tensor> {
            let d = x.dim(2)?;
            x.reshape((images, s, self.heads, d / self.heads))?
                .transpose(1, 2)?
                .contiguous()
        };
        Ok((
            split(self.key.forward(memory)?)?,
            split(self.value.forward(memory)?)?,
        ))
    }

    /// Attends from projected queries `q` `[rows, n, d]` to the keys and values of
    /// [`Self::project`], where `group` consecutive rows belong to each image. Returns the
    /// context `[rows, n, d]`, before the output projection.
    pub fn attend(&self, q: &Tensor, (k, v): &(Tensor, Tensor), group: usize) -> Result<Tensor> {
        let (rows, n, d) = q.dims3()?;
        let (images, h, s, hd) = k.dims4()?;
        if images * group != rows || h * hd != d {
            candle_core::bail!(
                "cross-attention: {rows} decoder rows of {d} for {images} images of {group} rows \
                 and {h} heads of {hd}"
            );
        }
        if n == 1 && [q, k, v].into_iter().all(host_f32) {
            let out = with_f32_values(q, |q| {
                with_f32_values(k, |k| {
                    with_f32_values(v, |v| {
                        grouped_query_attention(q, k, v, (images, group, h, s, hd), self.scale)
                    })
                })
            })???;
            return Tensor::from_vec(out, (rows, n, d), q.device());
        }
        // Prompts, other devices: each row its image's keys and values.
        let (k, v) = match group {
            1 => (k.clone(), v.clone()),
            _ => {
                let ids: Vec<u32> = (0..rows).map(|r| (r / group) as u32).collect();
                let ids = Tensor::new(ids, q.device())?;
                (k.index_select(&ids, 0)?, v.index_select(&ids, 0)?)
            }
        };
        let q = q.reshape((rows, n, h, hd))?.transpose(1, 2)?.contiguous()?;
        // attention() scales by 1/sqrt(hd); other scales are folded into the queries.
        let q = match (self.scale * (hd as f64).sqrt() - 1.0).abs() < 1e-12 {
            true => q,
            false => (q * (self.scale * (hd as f64).sqrt()))?,
        };
        crate::layers::attention::attention(&q, &k, &v, None)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((rows, n, d))
    }
}

/// One query per row: for each image and head, the `group` rows' queries against that head's
/// keys at once, so each image's keys and values are read once per step for all its rows.
/// `q` is `[rows, h, hd]`, `k` and `v` `[images, h, s, hd]`; returns `[rows, h·hd]`.
fn grouped_query_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    (images, group, h, s, hd): (usize, usize, usize, usize, usize),
    scale: f64,
) -> Vec<f32> {
    let d = h * hd;
    let scale = scale as f32;
    // Per (image, head): the context of its rows, [group, hd].
    let mut ctx = vec![0f32; images * h * group * hd];
    ctx.par_chunks_mut(group * hd)
        .enumerate()
        .for_each(|(task, out)| {
            let (img, head) = (task / h, task % h);
            let queries: Vec<f32> = (0..group)
                .flat_map(|r| &q[(img * group + r) * d + head * hd..][..hd])
                .map(|x| x * scale)
                .collect();
            let at = (img * h + head) * s * hd;
            let mut scores = vec![0f32; group * s];
            dot_rows(&queries, group, &k[at..][..s * hd], s, hd, &mut scores);
            crate::kernels::softmax::softmax_rows(&mut scores, s);
            mix_rows(&scores, group, &v[at..][..s * hd], s, hd, out);
        });
    let mut out = vec![0f32; images * group * d];
    for (task, part) in ctx.chunks_exact(group * hd).enumerate() {
        let (img, head) = (task / h, task % h);
        for (r, row) in part.chunks_exact(hd).enumerate() {
            out[(img * group + r) * d + head * hd..][..hd].copy_from_slice(row);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    /// The plain formulation: keys and values per image, then attention.
    fn reference(
        q: &Tensor,
        memory: &Tensor,
        [wk, bk, wv, bv]: [&Tensor; 4],
        heads: usize,
        group: usize,
        scale: f64,
    ) -> Result<Tensor> {
        let (rows, n, d) = q.dims3()?;
        let hd = d / heads;
        // Each image's states once per row of its group.
        let ids: Vec<u32> = (0..memory.dim(0)? * group)
            .map(|r| (r / group) as u32)
            .collect();
        let memory = memory.index_select(&Tensor::new(ids, memory.device())?, 0)?;
        let split = |x: Tensor| -> Result<Tensor> {
            let (b, s, _) = x.dims3()?;
            x.reshape((b, s, heads, hd))?.transpose(1, 2)?.contiguous()
        };
        let k = split(memory.broadcast_matmul(&wk.t()?)?.broadcast_add(bk)?)?;
        let v = split(memory.broadcast_matmul(&wv.t()?)?.broadcast_add(bv)?)?;
        let q = split(q.clone())?;
        let scores = (q.matmul(&k.t()?)? * scale)?;
        let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
        probs
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((rows, n, d))
    }

    /// Random queries `[images·group, n, d]`, states `[images, s, e]`, key and value weights
    /// `[d, e]` and their biases `[d]`.
    fn random_case(
        (images, group, n): (usize, usize, usize),
        (d, e, s): (usize, usize, usize),
    ) -> Result<[Tensor; 6]> {
        let dev = Device::Cpu;
        Ok([
            Tensor::randn(0f32, 1.0, (images * group, n, d), &dev)?,
            Tensor::randn(0f32, 1.0, (images, s, e), &dev)?,
            Tensor::randn(0f32, 0.2, (d, e), &dev)?,
            Tensor::randn(0f32, 0.2, (d, e), &dev)?,
            Tensor::randn(0f32, 1.0, d, &dev)?,
            Tensor::randn(0f32, 1.0, d, &dev)?,
        ])
    }

    #[test]
    fn folded_projections_equal_keys_and_values() -> Result<()> {
        let (heads, d, e, s) = (4, 32, 48, 37);
        // Decoding steps (streaming path) and prompts or many beams (GEMM path, over 64 queries).
        for (images, group, n) in [
            (3, 1, 1),
            (2, 3, 1),
            (2, 1, 5),
            (1, 2, 3),
            (2, 1, 20),
            (1, 3, 7),
        ] {
            let [q, memory, wk, wv, bk, bv] = random_case((images, group, n), (d, e, s))?;
            let folded = CrossAttention::new(&wk, &wv, Some(bv.clone()), heads, 1.0 / 8f64.sqrt())?
                .attend(&q, &memory, group)?;
            let plain = reference(
                &q,
                &memory,
                [&wk, &bk, &wv, &bv],
                heads,
                group,
                1.0 / 8f64.sqrt(),
            )?;
            let diff = crate::kernels::max_abs_diff(&folded, &plain);
            assert!(
                diff < 1e-4,
                "{images} images × {group} rows × {n} positions: {diff}"
            );
        }
        Ok(())
    }

    #[test]
    fn projected_keys_and_values_equal_the_reference() -> Result<()> {
        let (heads, d, e, s) = (4, 32, 48, 37);
        // One query per row (the grouped kernel) and prompts (attention over expanded rows),
        // with 1/sqrt(hd) and another scale.
        for (images, group, n, scale) in [
            (3, 1, 1, 1.0 / 8f64.sqrt()),
            (2, 3, 1, 1.0 / 8f64.sqrt()),
            (2, 3, 1, 0.2),
            (1, 2, 3, 1.0 / 8f64.sqrt()),
            (2, 3, 4, 0.2),
        ] {
            let [q, memory, wk, wv, bk, bv] = random_case((images, group, n), (d, e, s))?;
            let attn = ProjectedCrossAttention::new(
                wk.clone(),
                wv.clone(),
                Some(bv.clone()),
                heads,
                scale,
            )?;
            let kv = attn.project(&memory)?;
            let projected = attn.attend(&q, &kv, group)?;
            let plain = reference(&q, &memory, [&wk, &bk, &wv, &bv], heads, group, scale)?;
            let diff = crate::kernels::max_abs_diff(&projected, &plain);
            assert!(
                diff < 1e-4,
                "{images} images × {group} rows × {n} positions, scale {scale}: {diff}"
            );
        }
        Ok(())
    }

    #[test]
    fn mismatched_rows_are_refused() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::zeros((8, 8), candle_core::DType::F32, &dev)?;
        let attn = CrossAttention::new(&w, &w, None, 2, 0.5)?;
        let q = Tensor::zeros((3, 1, 8), candle_core::DType::F32, &dev)?;
        let memory = Tensor::zeros((2, 5, 8), candle_core::DType::F32, &dev)?;
        assert!(attn.attend(&q, &memory, 1).is_err());
        Ok(())
    }
}
