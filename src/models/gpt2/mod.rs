//! GPT-2 as a captioning decoder (`GPT2LMHeadModel` with `add_cross_attention`, as in
//! `VisionEncoderDecoderModel` checkpoints such as nlpconnect/vit-gpt2-image-captioning):
//! pre-norm blocks of causal self-attention, cross-attention to the image and an MLP.
//!
//! GPT-2 stores its projections as `Conv1D` with `[in, out]` weights; [`Linear::from_in_out`]
//! packs them for bf16 from that layout, or transposes them once for f32.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{embedding, Embedding, VarBuilder};

use crate::layers::norm::{layer_norm, LayerNorm};
use serde::Deserialize;

use crate::kernels::transposed;
use crate::layers::activation::HiddenAct;
use crate::layers::attention::{attention, causal_mask};
use crate::layers::cross_attention::CrossAttention;
use crate::layers::kv_cache::{KvCache, LayerCache};
use crate::layers::linear::Linear;
use crate::models::TextDecoder;

/// `GPT2Config`, with transformers' defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct Gpt2Config {
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    #[serde(default = "d_1024")]
    pub n_positions: usize,
    #[serde(default = "d_768")]
    pub n_embd: usize,
    #[serde(default = "d_12")]
    pub n_layer: usize,
    #[serde(default = "d_12")]
    pub n_head: usize,
    pub n_inner: Option<usize>,
    #[serde(default = "d_act")]
    pub activation_function: HiddenAct,
    #[serde(default = "d_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "d_true")]
    pub scale_attn_weights: bool,
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    #[serde(default)]
    pub add_cross_attention: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
}

fn d_vocab() -> usize {
    50257
}
fn d_1024() -> usize {
    1024
}
fn d_768() -> usize {
    768
}
fn d_12() -> usize {
    12
}
fn d_act() -> HiddenAct {
    HiddenAct::Other(candle_nn::Activation::NewGelu)
}
fn d_eps() -> f64 {
    1e-5
}
fn d_true() -> bool {
    true
}

/// A `Conv1D` (`[in, out]` weight) as a [`Linear`].
fn conv1d(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let weight = vb.get((in_dim, out_dim), "weight")?;
    Linear::from_in_out(weight, Some(vb.get(out_dim, "bias")?))
}

struct Block {
    ln_1: LayerNorm,
    c_attn: Linear,
    c_proj: Linear,
    ln_cross_attn: LayerNorm,
    q_attn: Linear,
    /// Cross-attention's key and value projections (`crossattention.c_attn`), folded.
    cross: CrossAttention,
    cross_proj: Linear,
    ln_2: LayerNorm,
    c_fc: Linear,
    mlp_proj: Linear,
    act: HiddenAct,
    heads: usize,
    /// Multiplies the query: `1/sqrt(head_dim)` (and `1/(layer+1)` when configured).
    scale: f64,
}

impl Block {
    fn new(cfg: &Gpt2Config, layer: usize, vb: VarBuilder) -> Result<Self> {
        let d = cfg.n_embd;
        let inner = cfg.n_inner.unwrap_or(4 * d);
        let eps = cfg.layer_norm_epsilon;
        let hd = d / cfg.n_head;
        let mut scale = if cfg.scale_attn_weights {
            1.0 / (hd as f64).sqrt()
        } else {
            1.0
        };
        if cfg.scale_attn_by_inverse_layer_idx {
            scale /= (layer + 1) as f64;
        }
        let x = vb.pp("crossattention");
        // c_attn maps the encoder states to [key | value]: a Conv1D, `[d, 2d]`.
        let kv = x.pp("c_attn");
        let kv_weight = transposed(&kv.get((d, 2 * d), "weight")?)?;
        let cross = CrossAttention::new(
            &kv_weight.narrow(0, 0, d)?,
            &kv_weight.narrow(0, d, d)?,
            Some(kv.get(2 * d, "bias")?.narrow(0, d, d)?),
            cfg.n_head,
            scale,
        )?;
        Ok(Self {
            ln_1: layer_norm(d, eps, vb.pp("ln_1"))?,
            c_attn: conv1d(d, 3 * d, vb.pp("attn.c_attn"))?,
            c_proj: conv1d(d, d, vb.pp("attn.c_proj"))?,
            ln_cross_attn: layer_norm(d, eps, vb.pp("ln_cross_attn"))?,
            q_attn: conv1d(d, d, x.pp("q_attn"))?,
            cross,
            cross_proj: conv1d(d, d, x.pp("c_proj"))?,
            ln_2: layer_norm(d, eps, vb.pp("ln_2"))?,
            c_fc: conv1d(d, inner, vb.pp("mlp.c_fc"))?,
            mlp_proj: conv1d(inner, d, vb.pp("mlp.c_proj"))?,
            act: cfg.activation_function,
            heads: cfg.n_head,
            scale,
        })
    }

    /// `[b, n, d]` to `[b, heads, n, d / heads]`.
    fn split(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, d) = x.dims3()?;
        x.reshape((b, n, self.heads, d / self.heads))?
            .transpose(1, 2)?
            .contiguous()
    }

    fn merge(&self, x: &Tensor, b: usize, n: usize, d: usize) -> Result<Tensor> {
        x.transpose(1, 2)?.reshape((b, n, d))
    }

    fn forward(
        &self,
        x: &Tensor,
        cache: &mut LayerCache,
        memory: &Tensor,
        group: usize,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, n, d) = x.dims3()?;
        // Causal self-attention. `attention` scales by 1/sqrt(hd) itself, so the query is
        // pre-multiplied by the ratio of GPT-2's scale to that.
        let qkv = self.c_attn.forward(&self.ln_1.forward(x)?)?;
        let q = self.split(&qkv.narrow(2, 0, d)?)?;
        let k = self.split(&qkv.narrow(2, d, d)?)?;
        let v = self.split(&qkv.narrow(2, 2 * d, d)?)?;
        let (k, v) = match &cache.self_kv {
            Some((pk, pv)) => (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?),
            None => (k, v),
        };
        let q = self.rescale(q)?;
        let ctx = attention(&q, &k, &v, mask)?;
        cache.self_kv = Some((k, v));
        let x = (self.c_proj.forward(&self.merge(&ctx, b, n, d)?)? + x)?;
        // Cross-attention: `group` consecutive rows (beams, samples) share one image's states.
        let q = self.q_attn.forward(&self.ln_cross_attn.forward(&x)?)?;
        let ctx = self.cross.attend(&q, memory, group)?;
        let x = (self.cross_proj.forward(&ctx)? + x)?;
        let h = self
            .c_fc
            .forward(&self.ln_2.forward(&x)?)?
            .apply(&self.act)?;
        self.mlp_proj.forward(&h)? + x
    }

    fn rescale(&self, q: Tensor) -> Result<Tensor> {
        let hd = q.dim(3)? as f64;
        let ratio = self.scale * hd.sqrt();
        if (ratio - 1.0).abs() < 1e-12 {
            Ok(q)
        } else {
            q * ratio
        }
    }
}

/// `GPT2LMHeadModel` with cross-attention; `vb` points at it (`decoder` in a captioner).
pub struct Gpt2Decoder {
    wte: Embedding,
    wpe: Embedding,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    lm_head: Linear,
    device: Device,
    dtype: DType,
}

impl Gpt2Decoder {
    pub fn new(cfg: &Gpt2Config, vb: VarBuilder) -> Result<Self> {
        if !cfg.add_cross_attention {
            candle_core::bail!(
                "the GPT-2 decoder has no cross-attention (add_cross_attention is false)"
            );
        }
        let d = cfg.n_embd;
        let t = vb.pp("transformer");
        let wte = embedding(cfg.vocab_size, d, t.pp("wte"))?;
        let blocks = (0..cfg.n_layer)
            .map(|i| Block::new(cfg, i, t.pp("h").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        // The LM head is tied to the token embeddings; checkpoints may or may not store it.
        let head = if vb.contains_tensor("lm_head.weight") {
            vb.get((cfg.vocab_size, d), "lm_head.weight")?
        } else {
            wte.embeddings().clone()
        };
        Ok(Self {
            wpe: embedding(cfg.n_positions, d, t.pp("wpe"))?,
            ln_f: layer_norm(d, cfg.layer_norm_epsilon, t.pp("ln_f"))?,
            wte,
            blocks,
            lm_head: Linear::new(head, None),
            device: vb.device().clone(),
            dtype: vb.dtype(),
        })
    }
}

impl TextDecoder for Gpt2Decoder {
    fn new_cache(&self, encoder_hidden: &Tensor) -> crate::Result<KvCache> {
        let memory = encoder_hidden.to_dtype(self.dtype)?.contiguous()?;
        Ok(KvCache::new(self.blocks.len(), memory))
    }

    fn forward(&self, ids: &Tensor, cache: &mut KvCache) -> crate::Result<Tensor> {
        let (_, n) = ids.dims2()?;
        let past = cache.seq_len;
        let positions = Tensor::arange(past as u32, (past + n) as u32, &self.device)?;
        let mut x = self
            .wte
            .forward(ids)?
            .broadcast_add(&self.wpe.forward(&positions)?)?;
        let mask = if n > 1 {
            Some(causal_mask(n, past, self.dtype, &self.device)?)
        } else {
            None
        };
        let group = cache.group.max(1);
        let memory = cache.memory.clone();
        for (block, layer_cache) in self.blocks.iter().zip(cache.layers.iter_mut()) {
            x = block.forward(&x, layer_cache, &memory, group, mask.as_ref())?;
        }
        cache.seq_len += n;
        let last = x.narrow(1, n - 1, 1)?.squeeze(1)?;
        Ok(self.lm_head.forward(&self.ln_f.forward(&last)?)?)
    }

    fn device(&self) -> &Device {
        &self.device
    }
}
