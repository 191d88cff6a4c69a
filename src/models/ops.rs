//! Small tensor helpers shared by model implementations.

use candle_core::{DType, Device, Result, Tensor};

/// Scaled dot-product attention over `[batch, heads, len, head_dim]` tensors; `mask` is added to
/// the scores (0 keeps, -inf drops) and broadcast over batch and heads.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let hd = q.dim(3)?;
    let scale = 1.0 / (hd as f64).sqrt();
    let q = (q.contiguous()? * scale)?;
    let scores = q.matmul(&k.contiguous()?.t()?)?;
    let scores = match mask {
        Some(m) => scores.broadcast_add(m)?,
        None => scores,
    };
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
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
