//! Florence-2's language model: a BART encoder over image tokens and the task prompt, and a BART
//! decoder that cross-attends to it (`BartEncoder`, `BartDecoder`). Post-norm layers, learned
//! positions offset by 2, a LayerNorm on the embeddings, the LM head tied to the shared
//! embeddings.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{embedding, Embedding, VarBuilder};

use super::config::BartConfig;
use crate::layers::activation::HiddenAct;
use crate::layers::attention::{attention, causal_mask};
use crate::layers::cross_attention::ProjectedCrossAttention;
use crate::layers::kv_cache::{KvCache, LayerCache};
use crate::layers::linear::{linear, Linear};
use crate::layers::norm::{layer_norm, LayerNorm};
use crate::models::clip::encoder::Mlp;
use crate::models::TextDecoder;

const LN_EPS: f64 = 1e-5;
/// `BartLearnedPositionalEmbedding`'s offset: position `p` reads row `p + 2`.
const POSITION_OFFSET: u32 = 2;

fn activation(name: &str) -> Result<HiddenAct> {
    HiddenAct::try_from(name.to_string())
        .map_err(|e| candle_core::Error::Msg(format!("text_config.activation_function: {e}")))
}

/// `[b, n, d]` to `[b, heads, n, d / heads]`.
fn split(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, n, d) = x.dims3()?;
    x.reshape((b, n, heads, d / heads))?
        .transpose(1, 2)?
        .contiguous()
}

fn merge(x: &Tensor) -> Result<Tensor> {
    let (b, h, n, hd) = x.dims4()?;
    x.transpose(1, 2)?.reshape((b, n, h * hd))
}

struct SelfAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
}

impl SelfAttention {
    fn new(d: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            q: linear(d, d, vb.pp("q_proj"))?,
            k: linear(d, d, vb.pp("k_proj"))?,
            v: linear(d, d, vb.pp("v_proj"))?,
            out: linear(d, d, vb.pp("out_proj"))?,
            heads,
        })
    }

    /// Attends `x` to itself, after `cache`'s positions when given (and stores the new keys and
    /// values there).
    fn forward(
        &self,
        x: &Tensor,
        cache: Option<&mut LayerCache>,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let q = split(&self.q.forward(x)?, self.heads)?;
        let k = split(&self.k.forward(x)?, self.heads)?;
        let v = split(&self.v.forward(x)?, self.heads)?;
        let ctx = match cache {
            Some(cache) => {
                let (k, v) = match &cache.self_kv {
                    Some((pk, pv)) => (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?),
                    None => (k, v),
                };
                let ctx = attention(&q, &k, &v, mask)?;
                cache.self_kv = Some((k, v));
                ctx
            }
            None => attention(&q, &k, &v, mask)?,
        };
        self.out.forward(&merge(&ctx)?)
    }
}

struct EncoderLayer {
    attn: SelfAttention,
    attn_norm: LayerNorm,
    ffn: Mlp,
    final_norm: LayerNorm,
}

impl EncoderLayer {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self
            .attn_norm
            .forward(&(self.attn.forward(x, None, None)? + x)?)?;
        self.final_norm.forward(&(self.ffn.forward(&x)? + x)?)
    }
}

/// Learned positions and the embedding LayerNorm, shared by encoder and decoder in shape.
struct Embeddings {
    positions: Embedding,
    norm: LayerNorm,
}

impl Embeddings {
    fn new(cfg: &BartConfig, vb: &VarBuilder) -> Result<Self> {
        let d = cfg.d_model;
        Ok(Self {
            positions: embedding(
                cfg.max_position_embeddings + POSITION_OFFSET as usize,
                d,
                vb.pp("embed_positions"),
            )?,
            norm: layer_norm(d, LN_EPS, vb.pp("layernorm_embedding"))?,
        })
    }

    /// `x` `[b, n, d]` at positions `past..past + n`, normed.
    fn forward(&self, x: &Tensor, past: usize, limit: usize) -> Result<Tensor> {
        let n = x.dim(1)?;
        if past + n > limit {
            candle_core::bail!(
                "{} positions do not fit the model's max_position_embeddings ({limit})",
                past + n
            );
        }
        let ids = Tensor::arange(
            past as u32 + POSITION_OFFSET,
            (past + n) as u32 + POSITION_OFFSET,
            x.device(),
        )?;
        self.norm
            .forward(&x.broadcast_add(&self.positions.forward(&ids)?)?)
    }
}

/// The BART encoder, fed embeddings (image tokens and text) rather than ids.
pub struct BartEncoder {
    embeddings: Embeddings,
    layers: Vec<EncoderLayer>,
    max_positions: usize,
}

impl BartEncoder {
    /// `vb` points at `model.language_model.encoder`.
    pub fn new(cfg: &BartConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.d_model;
        let act = activation(&cfg.activation_function)?;
        let layers = (0..cfg.encoder_layers)
            .map(|i| {
                let l = vb.pp("layers").pp(i);
                Ok(EncoderLayer {
                    attn: SelfAttention::new(d, cfg.encoder_attention_heads, l.pp("self_attn"))?,
                    attn_norm: layer_norm(d, LN_EPS, l.pp("self_attn_layer_norm"))?,
                    ffn: Mlp::with_sizes(d, cfg.encoder_ffn_dim, act, l.clone())?,
                    final_norm: layer_norm(d, LN_EPS, l.pp("final_layer_norm"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embeddings: Embeddings::new(cfg, &vb)?,
            layers,
            max_positions: cfg.max_position_embeddings,
        })
    }

    /// `embeds` `[b, n, d]` to the encoder's last hidden state `[b, n, d]`.
    pub fn forward(&self, embeds: &Tensor) -> Result<Tensor> {
        let mut x = self.embeddings.forward(embeds, 0, self.max_positions)?;
        for layer in &self.layers {
            x = layer.forward(&x)?;
        }
        Ok(x)
    }
}

struct DecoderLayer {
    attn: SelfAttention,
    attn_norm: LayerNorm,
    cross_q: Linear,
    /// `encoder_attn`'s key and value projections (beams share each image's keys and values).
    cross: ProjectedCrossAttention,
    cross_out: Linear,
    cross_norm: LayerNorm,
    ffn: Mlp,
    final_norm: LayerNorm,
}

impl DecoderLayer {
    fn new(cfg: &BartConfig, act: HiddenAct, vb: VarBuilder) -> Result<Self> {
        let d = cfg.d_model;
        let heads = cfg.decoder_attention_heads;
        let x = vb.pp("encoder_attn");
        let scale = 1.0 / ((d / heads) as f64).sqrt();
        let cross = ProjectedCrossAttention::new(
            x.get((d, d), "k_proj.weight")?,
            x.get((d, d), "v_proj.weight")?,
            Some(x.get(d, "v_proj.bias")?),
            heads,
            scale,
        )?;
        Ok(Self {
            attn: SelfAttention::new(d, heads, vb.pp("self_attn"))?,
            attn_norm: layer_norm(d, LN_EPS, vb.pp("self_attn_layer_norm"))?,
            cross_q: linear(d, d, x.pp("q_proj"))?,
            cross,
            cross_out: linear(d, d, x.pp("out_proj"))?,
            cross_norm: layer_norm(d, LN_EPS, vb.pp("encoder_attn_layer_norm"))?,
            ffn: Mlp::with_sizes(d, cfg.decoder_ffn_dim, act, vb.clone())?,
            final_norm: layer_norm(d, LN_EPS, vb.pp("final_layer_norm"))?,
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
        let x = self
            .attn_norm
            .forward(&(self.attn.forward(x, Some(cache), mask)? + x)?)?;
        let q = self.cross_q.forward(&x)?;
        if cache.cross_kv.is_none() {
            cache.cross_kv = Some(self.cross.project(memory)?);
        }
        let kv = cache.cross_kv.as_ref().expect("just set");
        let ctx = self.cross.attend(&q, kv, group)?;
        let x = self
            .cross_norm
            .forward(&(self.cross_out.forward(&ctx)? + x)?)?;
        self.final_norm.forward(&(self.ffn.forward(&x)? + x)?)
    }
}

/// The BART decoder and LM head, as the decode loop's [`TextDecoder`].
pub struct BartDecoder {
    embed_tokens: Embedding,
    embed_scale: f64,
    embeddings: Embeddings,
    layers: Vec<DecoderLayer>,
    lm_head: Linear,
    final_logits_bias: Option<Tensor>,
    max_positions: usize,
    device: Device,
    dtype: DType,
}

impl BartDecoder {
    /// `vb` points at `model.language_model.decoder`; `shared` is the token embedding table the
    /// LM head is tied to unless `lm_head` is stored.
    pub fn new(
        cfg: &BartConfig,
        shared: Embedding,
        lm_head: Tensor,
        final_logits_bias: Option<Tensor>,
        vb: VarBuilder,
    ) -> Result<Self> {
        let act = activation(&cfg.activation_function)?;
        let layers = (0..cfg.decoder_layers)
            .map(|i| DecoderLayer::new(cfg, act, vb.pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embed_tokens: shared,
            embed_scale: embed_scale(cfg),
            embeddings: Embeddings::new(cfg, &vb)?,
            layers,
            lm_head: Linear::new(lm_head, None),
            final_logits_bias,
            max_positions: cfg.max_position_embeddings,
            device: vb.device().clone(),
            dtype: vb.dtype(),
        })
    }
}

/// `sqrt(d_model)` when `scale_embedding`, else 1.
pub fn embed_scale(cfg: &BartConfig) -> f64 {
    match cfg.scale_embedding {
        true => (cfg.d_model as f64).sqrt(),
        false => 1.0,
    }
}

impl TextDecoder for BartDecoder {
    fn new_cache(&self, encoder_hidden: &Tensor) -> crate::Result<KvCache> {
        let memory = encoder_hidden.to_dtype(self.dtype)?.contiguous()?;
        Ok(KvCache::new(self.layers.len(), memory))
    }

    fn forward(&self, ids: &Tensor, cache: &mut KvCache) -> crate::Result<Tensor> {
        let (_, n) = ids.dims2()?;
        let past = cache.seq_len;
        let mut x = self.embed_tokens.forward(ids)?;
        if self.embed_scale != 1.0 {
            x = (x * self.embed_scale)?;
        }
        let mut x = self.embeddings.forward(&x, past, self.max_positions)?;
        let mask = match n > 1 {
            true => Some(causal_mask(n, past, self.dtype, &self.device)?),
            false => None,
        };
        let group = cache.group.max(1);
        let memory = cache.memory.clone();
        for (layer, layer_cache) in self.layers.iter().zip(cache.layers.iter_mut()) {
            x = layer.forward(&x, layer_cache, &memory, group, mask.as_ref())?;
        }
        cache.seq_len += n;
        let last = x.narrow(1, n - 1, 1)?.squeeze(1)?;
        let logits = self.lm_head.forward(&last)?;
        Ok(match &self.final_logits_bias {
            Some(bias) => logits.broadcast_add(bias)?,
            None => logits,
        })
    }

    fn device(&self) -> &Device {
        &self.device
    }
}
