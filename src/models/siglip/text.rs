//! SigLIP's text tower (`SiglipTextTransformer`): bidirectional pre-LN encoder without a padding
//! mask, pooled at the last position, then `head`.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::SiglipTextConfig;
use crate::layers::linear::{linear, Linear};
use crate::layers::norm::{layer_norm, LayerNorm};
use crate::models::clip::encoder::Encoder;
use crate::models::clip::text::TextEmbeddings;

pub struct TextModel {
    embeddings: TextEmbeddings,
    encoder: Encoder,
    final_layer_norm: LayerNorm,
    head: Linear,
}

impl TextModel {
    /// `vb` is `text_model`.
    pub fn new(cfg: &SiglipTextConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            embeddings: TextEmbeddings::new(
                cfg.vocab_size,
                cfg.max_position_embeddings,
                d,
                vb.pp("embeddings"),
            )?,
            encoder: Encoder::new(&cfg.encoder_shape(), vb.pp("encoder"))?,
            final_layer_norm: layer_norm(d, cfg.layer_norm_eps, vb.pp("final_layer_norm"))?,
            head: linear(d, cfg.projection_size.unwrap_or(d), vb.pp("head"))?,
        })
    }

    /// `[n, len]` u32 ids to text embeddings `[n, projection_size]`.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let len = ids.dim(1)?;
        let x = self.embeddings.forward(ids, 0)?;
        // Matches SiglipModel as Hub checkpoints are used: no attention mask, so the padding
        // (which the last position is) takes part in attention.
        let last = vec![len - 1; x.dim(0)?];
        let x = self.encoder.forward_at(&x, None, None, &last)?;
        self.head.forward(&self.final_layer_norm.forward(&x)?)
    }
}
