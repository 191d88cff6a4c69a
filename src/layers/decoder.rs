//! The pieces of a Llama-style decoder layer, as Qwen3 (and the next LLM-decoder families)
//! build it: RMSNorm, the SwiGLU MLP, and grouped-query self-attention with optional per-head
//! query/key norms, rotary positions and a key/value cache.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::kv_cache::GrowingKv;
use super::linear::{linear, linear_no_bias, Linear};
use super::{attention, rotary};

/// `weight · x / sqrt(mean(x²) + eps)` over the last dimension (T5's layer norm, no centring).
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            eps: eps as f32,
        })
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::rms_norm(&x.contiguous()?, &self.weight, self.eps)
    }
}

/// `down(silu(gate(x)) · up(x))`, without biases.
#[derive(Debug, Clone)]
pub struct SwiGlu {
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl SwiGlu {
    /// `gate_proj`, `up_proj`, `down_proj` under `vb`.
    pub fn new(hidden: usize, intermediate: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            gate: linear_no_bias(hidden, intermediate, vb.pp("gate_proj"))?,
            up: linear_no_bias(hidden, intermediate, vb.pp("up_proj"))?,
            down: linear_no_bias(intermediate, hidden, vb.pp("down_proj"))?,
        })
    }
}

impl Module for SwiGlu {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = candle_nn::ops::silu(&self.gate.forward(x)?)?;
        self.down.forward(&(gate * self.up.forward(x)?)?)
    }
}

/// Sizes of a grouped-query attention block.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Biases on the q/k/v projections (Qwen2), none (Qwen3, Llama).
    pub qkv_bias: bool,
    /// RMSNorm on each query and key head before the rotation (Qwen3), with this epsilon.
    pub qk_norm: Option<f64>,
}

/// Grouped-query self-attention: `heads` query heads share `kv_heads` key/value heads.
#[derive(Debug, Clone)]
pub struct SelfAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    shape: AttentionShape,
}

impl SelfAttention {
    /// `q_proj`, `k_proj`, `v_proj`, `o_proj` (and `q_norm`, `k_norm`) under `vb`.
    pub fn new(shape: AttentionShape, vb: VarBuilder) -> Result<Self> {
        let s = shape;
        if s.kv_heads == 0 || !s.heads.is_multiple_of(s.kv_heads) {
            candle_core::bail!(
                "{} attention heads do not share {} key/value heads evenly",
                s.heads,
                s.kv_heads
            );
        }
        let proj = |out: usize, name: &str| match s.qkv_bias {
            true => linear(s.hidden, out, vb.pp(name)),
            false => linear_no_bias(s.hidden, out, vb.pp(name)),
        };
        let norm = |name: &str| match s.qk_norm {
            Some(eps) => RmsNorm::new(s.head_dim, eps, vb.pp(name)).map(Some),
            None => Ok(None),
        };
        Ok(Self {
            q: proj(s.heads * s.head_dim, "q_proj")?,
            k: proj(s.kv_heads * s.head_dim, "k_proj")?,
            v: proj(s.kv_heads * s.head_dim, "v_proj")?,
            o: linear_no_bias(s.heads * s.head_dim, s.hidden, vb.pp("o_proj"))?,
            q_norm: norm("q_norm")?,
            k_norm: norm("k_norm")?,
            shape,
        })
    }

    /// `x` `[batch, new, hidden]` after the `cache`d positions; `cos`, `sin` `[batch, new,
    /// head_dim]` for the new positions; `mask` additive `[batch, 1, new, past + new]` (or
    /// `None` for a single new position that may see everything cached). Appends the new keys
    /// and values to `cache`.
    pub fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: &mut Option<GrowingKv>,
    ) -> Result<Tensor> {
        let s = self.shape;
        let (b, n, _) = x.dims3()?;
        let heads = |t: Tensor, count: usize, norm: &Option<RmsNorm>| -> Result<Tensor> {
            let t = t.reshape((b, n, count, s.head_dim))?;
            let t = match norm {
                Some(norm) => norm.forward(&t)?,
                None => t,
            };
            t.transpose(1, 2)?.contiguous()
        };
        let q = heads(self.q.forward(x)?, s.heads, &self.q_norm)?;
        let k = heads(self.k.forward(x)?, s.kv_heads, &self.k_norm)?;
        let v = heads(self.v.forward(x)?, s.kv_heads, &None)?;
        let q = rotary::apply(&q, cos, sin)?;
        let k = rotary::apply(&k, cos, sin)?;
        // Views into the cache's buffers: the attention reads them in place.
        let (k, v) = GrowingKv::append(cache, &k, &v)?;
        let groups = s.heads / s.kv_heads;
        let out = match n {
            // One new position: a group's query heads become rows of one query block against
            // their shared key/value head, so the cache is read as it is, not copied per head.
            1 => {
                let q = q.reshape((b, s.kv_heads, groups, s.head_dim))?;
                attention::attention(&q, &k, &v, mask)?.reshape((b, s.heads, 1, s.head_dim))?
            }
            _ => attention::attention(&q, &repeat_kv(&k, groups)?, &repeat_kv(&v, groups)?, mask)?,
        };
        let out = out.transpose(1, 2)?.reshape((b, n, s.heads * s.head_dim))?;
        self.o.forward(&out)
    }
}

/// `[b, kv_heads, len, d]` → `[b, kv_heads · groups, len, d]`, each key/value head repeated for
/// the query heads of its group.
fn repeat_kv(x: &Tensor, groups: usize) -> Result<Tensor> {
    if groups == 1 {
        return Ok(x.clone());
    }
    let (b, h, len, d) = x.dims4()?;
    x.unsqueeze(2)?
        .expand((b, h, groups, len, d))?
        .reshape((b, h * groups, len, d))
}

/// The additive mask `[batch, 1, new, past + new]` of a left-padded batch: position `j` is
/// visible from new position `i` when it is not after it and not padding (`valid[row][j]`,
/// over all `past + new` positions). Hidden entries hold f32's lowest value as transformers'
/// masks do, so that a padding row's softmax stays finite.
pub fn padded_causal_mask(
    valid: &[Vec<bool>],
    new: usize,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let b = valid.len();
    let total = valid.first().map_or(0, Vec::len);
    let past = total - new;
    let mut mask = Vec::with_capacity(b * new * total);
    for row in valid {
        for i in 0..new {
            mask.extend((0..total).map(|j| match j <= past + i && row[j] {
                true => 0.0,
                false => f32::MIN,
            }));
        }
    }
    Tensor::from_vec(mask, (b, 1, new, total), device)?.to_dtype(dtype)
}

/// A pre-norm decoder layer: `h = x + attn(norm(x))`, then `h + mlp(norm(h))`.
#[derive(Debug, Clone)]
pub struct DecoderLayer {
    input_norm: RmsNorm,
    attention: SelfAttention,
    post_norm: RmsNorm,
    mlp: SwiGlu,
}

impl DecoderLayer {
    /// `input_layernorm`, `self_attn`, `post_attention_layernorm` and `mlp` under `vb`.
    pub fn new(
        shape: AttentionShape,
        intermediate: usize,
        eps: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            input_norm: RmsNorm::new(shape.hidden, eps, vb.pp("input_layernorm"))?,
            attention: SelfAttention::new(shape, vb.pp("self_attn"))?,
            post_norm: RmsNorm::new(shape.hidden, eps, vb.pp("post_attention_layernorm"))?,
            mlp: SwiGlu::new(shape.hidden, intermediate, vb.pp("mlp"))?,
        })
    }

    /// See [`SelfAttention::forward`] for the arguments.
    pub fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: &mut Option<GrowingKv>,
    ) -> Result<Tensor> {
        let h =
            (x + self
                .attention
                .forward(&self.input_norm.forward(x)?, cos, sin, mask, cache)?)?;
        &h + self.mlp.forward(&self.post_norm.forward(&h)?)?
    }
}
