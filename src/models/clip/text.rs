//! CLIP's text tower (`CLIPTextTransformer` + `text_projection`): causal pre-LN encoder, pooled
//! at the end-of-text token.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{embedding, Embedding, VarBuilder};

use super::config::ClipTextConfig;
use super::encoder::Encoder;
use crate::layers::attention::causal_mask;
use crate::layers::norm::{layer_norm, LayerNorm};

/// The eos id old openai configs carry; transformers then pools at `argmax(input_ids)`.
const LEGACY_EOS_TOKEN_ID: u32 = 2;

/// `embeddings.token_embedding` and `embeddings.position_embedding` of CLIP's and SigLIP's text
/// towers.
pub struct TextEmbeddings {
    token_embedding: Embedding,
    position_embedding: Embedding,
}

impl TextEmbeddings {
    /// `vb` is `text_model.embeddings`.
    pub fn new(vocab_size: usize, positions: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            token_embedding: embedding(vocab_size, hidden, vb.pp("token_embedding"))?,
            position_embedding: embedding(positions, hidden, vb.pp("position_embedding"))?,
        })
    }

    /// Token plus position embeddings of `ids` `[n, len]` standing at positions `start..`.
    pub fn forward(&self, ids: &Tensor, start: usize) -> Result<Tensor> {
        let len = ids.dim(1)?;
        let positions = Tensor::arange(start as u32, (start + len) as u32, ids.device())?;
        self.token_embedding
            .forward(ids)?
            .broadcast_add(&self.position_embedding.forward(&positions)?)
    }
}

pub struct TextModel {
    embeddings: TextEmbeddings,
    encoder: Encoder,
    final_layer_norm: LayerNorm,
    eos_token_id: u32,
}

impl TextModel {
    /// `vb` is `text_model`.
    pub fn new(cfg: &ClipTextConfig, vb: VarBuilder) -> Result<Self> {
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
            eos_token_id: cfg.eos_token_id,
        })
    }

    /// `[n, len]` u32 ids to pooled, un-projected features `[n, hidden]`.
    ///
    /// Prompts from one template share their first tokens ("<|startoftext|> a photo of a");
    /// under the causal mask those positions come out the same in every prompt, so the prefix
    /// all rows share (up to the first pooled position) runs once and the rows run only what
    /// follows it: about half the positions of typical label prompts.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (n, len) = ids.dims2()?;
        let rows = ids.to_dtype(DType::U32)?.to_vec2::<u32>()?;
        let pooled: Vec<usize> = rows.iter().map(|row| self.pooled_position(row)).collect();
        let shared = match rows.split_first() {
            Some((first, others)) if n > 1 => others
                .iter()
                .map(|row| first.iter().zip(row).take_while(|(a, b)| a == b).count())
                .chain(pooled.iter().copied())
                .min()
                .unwrap_or(0),
            _ => 0,
        };
        let prefix = if shared > 0 {
            let x = self
                .embeddings
                .forward(&ids.narrow(0, 0, 1)?.narrow(1, 0, shared)?, 0)?;
            let mask = causal_mask(shared, 0, x.dtype(), x.device())?;
            Some(self.encoder.prefix(&x, Some(&mask))?)
        } else {
            None
        };
        let x = self
            .embeddings
            .forward(&ids.narrow(1, shared, len - shared)?, shared)?;
        let mask = causal_mask(len - shared, shared, x.dtype(), x.device())?;
        let at: Vec<usize> = pooled.iter().map(|&p| p - shared).collect();
        let x = self
            .encoder
            .forward_at(&x, prefix.as_ref(), Some(&mask), &at)?;
        self.final_layer_norm.forward(&x)
    }

    // Matches CLIPTextTransformer.forward: legacy configs (eos_token_id == 2) pool at the first
    // maximum id, others at the first eos_token_id (position 0 when there is none).
    fn pooled_position(&self, row: &[u32]) -> usize {
        if self.eos_token_id == LEGACY_EOS_TOKEN_ID {
            let max = row.iter().copied().max().unwrap_or(0);
            row.iter().position(|&t| t == max).unwrap_or(0)
        } else {
            row.iter()
                .position(|&t| t == self.eos_token_id)
                .unwrap_or(0)
        }
    }
}
