//! Building blocks that model families share: linear layers, layer norm, attention (self, cross:
//! folded or with projected keys and values), masks, activations and the decoder's KV cache.
//! Layers use [`crate::kernels`] and candle; they know nothing of any model family.

pub mod activation;
pub mod attention;
pub mod cross_attention;
pub mod decoder;
pub mod kv_cache;
pub mod linear;
pub mod norm;
pub mod rotary;

use candle_core::{Result, Tensor};

/// LayerNorm over the channels of an NCHW tensor (`data_format="channels_first"`: ConvNeXt's
/// norms, DaViT's patch embeddings).
pub fn channels_first_norm(norm: &norm::LayerNorm, x: &Tensor) -> Result<Tensor> {
    x.permute((0, 2, 3, 1))?.apply(norm)?.permute((0, 3, 1, 2))
}

/// The most positions a stack of encoder layers runs at once, see [`by_batch_slices`].
const SLICE_POSITIONS: usize = 1024;

/// Runs a stack of encoder layers `f(start, slice)` over `x` `[batch, len, d]` in slices of
/// the batch of about [`SLICE_POSITIONS`] positions (at least one item; `start` is the slice's
/// first item) and joins the results.
///
/// The work per item is the same either way (the GEMMs have hundreds of rows in a slice too),
/// but every layer's temporaries — queries, keys and values, attention output, the MLP's
/// intermediate, four times as wide as the hidden state — exist for one slice instead of the
/// whole batch: 14 MB per hidden-state-sized tensor for a BLIP-base batch of 8 at 384², which
/// added up to 270 MB above the weights.
pub fn by_batch_slices(x: &Tensor, f: impl Fn(usize, &Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let (b, len) = (x.dim(0)?, x.dim(1)?);
    let items = (SLICE_POSITIONS / len.max(1)).max(1);
    if b <= items {
        return f(0, x);
    }
    let parts = (0..b)
        .step_by(items)
        .map(|i| f(i, &x.narrow(0, i, items.min(b - i))?))
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&parts, 0)
}
