//! Scaled dot-product attention and causal masks, for every model's self-attention. The CPU's
//! fused paths (one query per head while decoding, bf16 vision towers) are kernels of their own.

use candle_core::{DType, Device, Result, Tensor};

use crate::kernels::{self, attention as fused, host_f32};

/// Scaled dot-product attention over `[batch, heads, len, head_dim]` tensors; `mask` is added to
/// the scores (0 keeps, -inf drops) and broadcast over batch and heads.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    // A decoding step: a few query rows per head (one position, or a grouped-query head's
    // query heads) and a mask, if any, that is one row per batch item (padding).
    const DECODE_ROWS: usize = 8;
    let b = q.dim(0)?;
    let per_item = |m: &Tensor| m.dims().len() == 4 && m.dims()[..3] == [b, 1, 1];
    if q.dim(2)? <= DECODE_ROWS && mask.is_none_or(per_item) && all_cpu_f32(q, k, v) {
        let hidden = match mask {
            Some(m) => Some(m.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?),
            None => None,
        };
        return fused::decode(q, k, v, hidden.as_deref());
    }
    if mask.is_none() && q.dim(2)? > 32 && kernels::cpu_bf16_matmul() && all_cpu_f32(q, k, v) {
        return fused::bf16(q, k, v);
    }
    // The score matrix is [batch, heads, len, len]: for a ViT at 384² and batch 8 that is 128 MB
    // per layer, twice over with the softmax. In slices of the batch it stays near
    // SCORES_BYTES, which keeps the peak memory close to the weights' size.
    const SCORES_BYTES: usize = 32 << 20;
    let (b, h, n, _) = q.dims4()?;
    let per_item = h * n * k.dim(2)? * q.dtype().size_in_bytes();
    let step = (SCORES_BYTES / per_item.max(1)).max(1);
    if b > step {
        let parts = (0..b)
            .step_by(step)
            .map(|i| {
                let len = step.min(b - i);
                let mask = match mask {
                    Some(m) if m.rank() == 4 && m.dim(0)? == b => Some(m.narrow(0, i, len)?),
                    other => other.cloned(),
                };
                attention(
                    &q.narrow(0, i, len)?,
                    &k.narrow(0, i, len)?,
                    &v.narrow(0, i, len)?,
                    mask.as_ref(),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        return Tensor::cat(&parts, 0);
    }
    let hd = q.dim(3)?;
    let scale = 1.0 / (hd as f64).sqrt();
    let q = (q.contiguous()? * scale)?;
    let scores = q.matmul(&k.contiguous()?.t()?)?;
    let scores = match mask {
        Some(m) => scores.broadcast_add(m)?,
        None => scores,
    };
    let probs = kernels::softmax::softmax_last_dim(&scores)?;
    probs.matmul(&v.contiguous()?)
}

/// Additive causal mask `[new, past + new]` for `new` query positions after `past` cached ones.
pub fn causal_mask(new: usize, past: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let total = past + new;
    let mask: Vec<f32> = (0..new)
        .flat_map(|i| (0..total).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (new, total), device)?.to_dtype(dtype)
}

fn all_cpu_f32(q: &Tensor, k: &Tensor, v: &Tensor) -> bool {
    [q, k, v].into_iter().all(host_f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random `[b, h, len, d]` queries and `[b, h, keys, d]` keys and values.
    fn qkv(b: usize, h: usize, n: usize, keys: usize, d: usize) -> [Tensor; 3] {
        let dev = Device::Cpu;
        [n, keys, keys].map(|len| Tensor::randn(0f32, 1.0, (b, h, len, d), &dev).unwrap())
    }

    /// The largest difference between `got` and candle's own softmax(QKᵀ/√d)·V.
    fn max_diff_from_reference(got: Tensor, [q, k, v]: &[Tensor; 3]) -> f32 {
        let d = q.dim(3).unwrap();
        let scores = (q * (1.0 / (d as f64).sqrt()))
            .unwrap()
            .matmul(&k.t().unwrap())
            .unwrap();
        let want = candle_nn::ops::softmax_last_dim(&scores)
            .unwrap()
            .matmul(v)
            .unwrap();
        crate::kernels::max_abs_diff(&got, &want)
    }

    #[test]
    fn attention_in_batch_slices_equals_the_whole_batch() {
        // 1 head of 2100 × 2100 scores: 17.6 MB per item, so a batch of 3 runs in slices.
        let t = qkv(3, 1, 2100, 2100, 4);
        let sliced = attention(&t[0], &t[1], &t[2], None).unwrap();
        let diff = max_diff_from_reference(sliced, &t);
        assert!(diff < 1e-4, "{diff}");
    }

    #[test]
    fn bf16_attention_is_close_to_f32() {
        if !crate::kernels::gemm_bf16::available() {
            return;
        }
        let t = qkv(2, 3, 50, 57, 16);
        let diff = max_diff_from_reference(fused::bf16(&t[0], &t[1], &t[2]).unwrap(), &t);
        // bf16 keeps 8 bits of mantissa: errors of a few 1e-2 on values of order 1.
        assert!(diff < 0.05, "{diff}");
    }

    #[test]
    fn decoding_rows_read_a_growing_cache_in_place_with_a_padding_mask() {
        // 2 items × 3 heads, 2 query rows per head, 9 of 16 cached positions in use; item 0
        // hides its first 2 positions (left padding).
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (2, 3, 2, 16), &dev).unwrap();
        let buffer = |_| Tensor::randn(0f32, 1.0, (2, 3, 16, 16), &dev).unwrap();
        let [k, v] = [0, 1].map(buffer);
        let (k, v) = (k.narrow(2, 0, 9).unwrap(), v.narrow(2, 0, 9).unwrap());
        assert!(!k.is_contiguous());
        let mut hidden = vec![0f32; 2 * 9];
        hidden[..2].fill(f32::MIN);
        let mask = Tensor::from_vec(hidden, (2, 1, 1, 9), &dev).unwrap();
        let fast = attention(&q, &k, &v, Some(&mask)).unwrap();
        let scores = (q.clone() * 0.25)
            .unwrap()
            .matmul(&k.contiguous().unwrap().t().unwrap())
            .unwrap()
            .broadcast_add(&mask)
            .unwrap();
        let want = candle_nn::ops::softmax_last_dim(&scores)
            .unwrap()
            .matmul(&v.contiguous().unwrap())
            .unwrap();
        let diff = crate::kernels::max_abs_diff(&fast, &want);
        assert!(diff < 1e-5, "{diff}");
    }

    #[test]
    fn single_query_path_equals_batched_matmul() {
        let t = qkv(2, 3, 1, 9, 16);
        let fast = fused::decode(&t[0], &t[1], &t[2], None).unwrap();
        let diff = max_diff_from_reference(fast, &t);
        assert!(diff < 1e-5, "{diff}");
    }
}
