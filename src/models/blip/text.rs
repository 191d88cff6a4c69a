//! BLIP's text decoder (`BlipTextLMHeadModel`): a BERT with causal self-attention and
//! cross-attention to the image, plus the masked-LM head used as the language-model head. The
//! same module is transformers' `BertLMHeadModel` decoder (plus token-type embeddings), so
//! vision encoder–decoder captioners with a BERT decoder use it too.
//!
//! Unlike a plain port, cross-attention folds its key and value projections into the query and
//! output sides (see [`crate::layers::cross_attention`]): the cache holds each image's encoder
//! states once instead of keys and values per layer, and any batch size works.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{embedding, Embedding, VarBuilder};

use super::config::BlipTextConfig;
use crate::layers::attention::{attention, causal_mask};
use crate::layers::cross_attention::CrossAttention;
use crate::layers::kv_cache::{KvCache, LayerCache};
use crate::layers::linear::{linear, Linear};
use crate::layers::norm::{layer_norm, LayerNorm};
use crate::models::TextDecoder;

struct Attention {
    query: Linear,
    key: Linear,
    value: Linear,
    dense: Linear,
    layer_norm: LayerNorm,
    heads: usize,
}

impl Attention {
    fn new(cfg: &BlipTextConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let s = vb.pp("self");
        let o = vb.pp("output");
        Ok(Self {
            query: linear(d, d, s.pp("query"))?,
            key: linear(d, d, s.pp("key"))?,
            value: linear(d, d, s.pp("value"))?,
            dense: linear(d, d, o.pp("dense"))?,
            layer_norm: layer_norm(d, cfg.layer_norm_eps, o.pp("LayerNorm"))?,
            heads: cfg.num_attention_heads,
        })
    }

    /// `[b, n, d]` to `[b, heads, n, d / heads]`.
    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, d) = x.dims3()?;
        x.reshape((b, n, self.heads, d / self.heads))?
            .transpose(1, 2)?
            .contiguous()
    }

    fn keys_values(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((
            self.split_heads(&self.key.forward(x)?)?,
            self.split_heads(&self.value.forward(x)?)?,
        ))
    }

    /// Attends from `x` to `(k, v)` and applies the output projection + residual + norm.
    fn attend(&self, x: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, n, d) = x.dims3()?;
        let q = self.split_heads(&self.query.forward(x)?)?;
        let ctx = attention(&q, k, v, mask)?
            .transpose(1, 2)?
            .reshape((b, n, d))?;
        (self.dense.forward(&ctx)? + x)?.apply(&self.layer_norm)
    }
}

/// Cross-attention to the image: BERT's attention block with the key and value projections
/// folded (`group` consecutive rows of `x` share one image's states).
struct CrossAttentionBlock {
    query: Linear,
    folded: CrossAttention,
    dense: Linear,
    layer_norm: LayerNorm,
}

impl CrossAttentionBlock {
    fn new(cfg: &BlipTextConfig, vb: VarBuilder) -> Result<Self> {
        let (d, e) = (cfg.hidden_size, cfg.encoder_hidden_size);
        let s = vb.pp("self");
        let o = vb.pp("output");
        let heads = cfg.num_attention_heads;
        let folded = CrossAttention::new(
            &s.get((d, e), "key.weight")?,
            &s.get((d, e), "value.weight")?,
            Some(s.get(d, "value.bias")?),
            heads,
            1.0 / ((d / heads) as f64).sqrt(),
        )?;
        Ok(Self {
            query: linear(d, d, s.pp("query"))?,
            folded,
            dense: linear(d, d, o.pp("dense"))?,
            layer_norm: layer_norm(d, cfg.layer_norm_eps, o.pp("LayerNorm"))?,
        })
    }

    fn forward(&self, x: &Tensor, memory: &Tensor, group: usize) -> Result<Tensor> {
        let ctx = self.folded.attend(&self.query.forward(x)?, memory, group)?;
        (self.dense.forward(&ctx)? + x)?.apply(&self.layer_norm)
    }
}

struct Layer {
    self_attn: Attention,
    cross_attn: CrossAttentionBlock,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
    act: crate::layers::activation::HiddenAct,
}

impl Layer {
    fn new(cfg: &BlipTextConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            self_attn: Attention::new(cfg, vb.pp("attention"))?,
            cross_attn: CrossAttentionBlock::new(cfg, vb.pp("crossattention"))?,
            intermediate: linear(d, cfg.intermediate_size, vb.pp("intermediate.dense"))?,
            output: linear(cfg.intermediate_size, d, vb.pp("output.dense"))?,
            output_norm: layer_norm(d, cfg.layer_norm_eps, vb.pp("output.LayerNorm"))?,
            act: crate::layers::activation::HiddenAct::Other(cfg.hidden_act),
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        cache: &mut LayerCache,
        memory: &Tensor,
        group: usize,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (k, v) = self.self_attn.keys_values(x)?;
        let (k, v) = match &cache.self_kv {
            Some((pk, pv)) => (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?),
            None => (k, v),
        };
        let x = self.self_attn.attend(x, &k, &v, mask)?;
        cache.self_kv = Some((k, v));
        let x = self.cross_attn.forward(&x, memory, group)?;
        let h = self.intermediate.forward(&x)?.apply(&self.act)?;
        (self.output.forward(&h)? + x)?.apply(&self.output_norm)
    }
}

pub struct TextDecoderModel {
    word_embeddings: Embedding,
    /// BERT's `token_type_embeddings` row 0 (every token is type 0); BLIP has none.
    token_type: Option<Tensor>,
    position_embeddings: Embedding,
    embed_norm: LayerNorm,
    layers: Vec<Layer>,
    head_dense: Linear,
    head_norm: LayerNorm,
    head_act: crate::layers::activation::HiddenAct,
    head_decoder: Linear,
    device: Device,
    dtype: DType,
}

impl TextDecoderModel {
    /// `vb` points at `text_decoder` (BLIP) or at a `BertLMHeadModel` (`decoder` in a
    /// vision encoder–decoder, where `token_types` loads BERT's token-type embeddings).
    pub fn new(cfg: &BlipTextConfig, token_types: bool, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let bert = vb.pp("bert");
        let emb = bert.pp("embeddings");
        let word_embeddings = embedding(cfg.vocab_size, d, emb.pp("word_embeddings"))?;
        let token_type = if token_types {
            Some(emb.get_unchecked("token_type_embeddings.weight")?.get(0)?)
        } else {
            None
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::new(cfg, bert.pp("encoder.layer").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let pred = vb.pp("cls.predictions");
        // transformers 5 omits the tied LM-head weight from checkpoints; older ones store it.
        let decoder_weight = if pred.contains_tensor("decoder.weight") {
            pred.get((cfg.vocab_size, d), "decoder.weight")?
        } else {
            word_embeddings.embeddings().clone()
        };
        let bias = if pred.contains_tensor("bias") {
            pred.get(cfg.vocab_size, "bias")?
        } else {
            pred.get(cfg.vocab_size, "decoder.bias")?
        };
        Ok(Self {
            position_embeddings: embedding(
                cfg.max_position_embeddings,
                d,
                emb.pp("position_embeddings"),
            )?,
            embed_norm: layer_norm(d, cfg.layer_norm_eps, emb.pp("LayerNorm"))?,
            word_embeddings,
            token_type,
            layers,
            head_dense: linear(d, d, pred.pp("transform.dense"))?,
            head_norm: layer_norm(d, cfg.layer_norm_eps, pred.pp("transform.LayerNorm"))?,
            head_act: crate::layers::activation::HiddenAct::Other(cfg.hidden_act),
            head_decoder: Linear::new(decoder_weight, Some(bias)),
            device: vb.device().clone(),
            dtype: vb.dtype(),
        })
    }
}

impl TextDecoder for TextDecoderModel {
    fn new_cache(&self, encoder_hidden: &Tensor) -> crate::Result<KvCache> {
        let memory = encoder_hidden.to_dtype(self.dtype)?.contiguous()?;
        Ok(KvCache::new(self.layers.len(), memory))
    }

    fn forward(&self, ids: &Tensor, cache: &mut KvCache) -> crate::Result<Tensor> {
        let (_, n) = ids.dims2()?;
        let past = cache.seq_len;
        let positions = Tensor::arange(past as u32, (past + n) as u32, &self.device)?;
        let mut x = self
            .word_embeddings
            .forward(ids)?
            .broadcast_add(&self.position_embeddings.forward(&positions)?)?;
        if let Some(t) = &self.token_type {
            x = x.broadcast_add(t)?;
        }
        let x = x.apply(&self.embed_norm)?;
        let mask = if n > 1 {
            Some(causal_mask(n, past, self.dtype, &self.device)?)
        } else {
            None
        };
        let mut x = x;
        let group = cache.group.max(1);
        let memory = cache.memory.clone();
        for (layer, layer_cache) in self.layers.iter().zip(cache.layers.iter_mut()) {
            x = layer.forward(&x, layer_cache, &memory, group, mask.as_ref())?;
        }
        cache.seq_len += n;
        let last = x.narrow(1, n - 1, 1)?.squeeze(1)?;
        let h = self
            .head_dense
            .forward(&last)?
            .apply(&self.head_act)?
            .apply(&self.head_norm)?;
        Ok(self.head_decoder.forward(&h)?)
    }

    fn device(&self) -> &Device {
        &self.device
    }
}
