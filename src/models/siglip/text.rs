//! SigLIP's text tower (`SiglipTextTransformer`): bidirectional pre-LN encoder without a padding
//! mask, pooled at the last position, then `head`.

use candle_core::{Module, Result, Tensor};
use candle_nn::{embedding, layer_norm, Embedding, LayerNorm, VarBuilder};

use super::config::SiglipTextConfig;
use crate::models::clip::encoder::Encoder;
use crate::models::linear::{linear, Linear};

pub struct TextModel {
    token_embedding: Embedding,
    position_embedding: Embedding,
    encoder: Encoder,
    final_layer_norm: LayerNorm,
    head: Linear,
}

impl TextModel {
    /// `vb` is `text_model`.
    pub fn new(cfg: &SiglipTextConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let emb = vb.pp("embeddings");
        Ok(Self {
            token_embedding: embedding(cfg.vocab_size, d, emb.pp("token_embedding"))?,
            position_embedding: embedding(
                cfg.max_position_embeddings,
                d,
                emb.pp("position_embedding"),
            )?,
            encoder: Encoder::new(&cfg.encoder_shape(), vb.pp("encoder"))?,
            final_layer_norm: layer_norm(d, cfg.layer_norm_eps, vb.pp("final_layer_norm"))?,
            head: linear(d, cfg.projection_size.unwrap_or(d), vb.pp("head"))?,
        })
    }

    /// `[n, len]` u32 ids to text embeddings `[n, projection_size]`.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let len = ids.dim(1)?;
        let positions = Tensor::arange(0u32, len as u32, ids.device())?;
        let x = self
            .token_embedding
            .forward(ids)?
            .broadcast_add(&self.position_embedding.forward(&positions)?)?;
        // Matches SiglipModel as Hub checkpoints are used: no attention mask, so the padding
        // (which the last position is) takes part in attention.
        let last = vec![len - 1; x.dim(0)?];
        let x = self.encoder.forward_at(&x, None, None, &last)?;
        self.head.forward(&self.final_layer_norm.forward(&x)?)
    }
}
