//! CLIP's pre-LayerNorm transformer encoder (`CLIPEncoder`), shared by both CLIP towers and by
//! SigLIP, whose `SiglipEncoder` is the same module with other defaults.

use candle_core::{Module, Result, Tensor};
use candle_nn::{layer_norm, LayerNorm, VarBuilder};

use crate::models::linear::{linear, Linear};
use crate::models::ops::{attention, by_batch_slices, HiddenAct};

/// The sizes one encoder stack needs, taken from a text or vision config.
#[derive(Debug, Clone, Copy)]
pub struct EncoderShape {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub hidden_act: HiddenAct,
    pub layer_norm_eps: f64,
}

/// Gives config structs with the six encoder fields an `encoder_shape()` (CLIP and SigLIP,
/// text and vision, all name them alike).
macro_rules! impl_encoder_shape {
    ($($config:ty),+ $(,)?) => {$(
        impl $config {
            pub fn encoder_shape(&self) -> $crate::models::clip::encoder::EncoderShape {
                $crate::models::clip::encoder::EncoderShape {
                    hidden_size: self.hidden_size,
                    intermediate_size: self.intermediate_size,
                    num_hidden_layers: self.num_hidden_layers,
                    num_attention_heads: self.num_attention_heads,
                    hidden_act: self.hidden_act,
                    layer_norm_eps: self.layer_norm_eps,
                }
            }
        }
    )+};
}
pub(crate) use impl_encoder_shape;

/// `fc2(act(fc1(x)))`, `CLIPMLP` / `SiglipMLP`.
pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
    act: HiddenAct,
}

impl Mlp {
    pub fn new(shape: &EncoderShape, vb: VarBuilder) -> Result<Self> {
        let (d, i) = (shape.hidden_size, shape.intermediate_size);
        Ok(Self {
            fc1: linear(d, i, vb.pp("fc1"))?,
            fc2: linear(i, d, vb.pp("fc2"))?,
            act: shape.hidden_act,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&self.fc1.forward(x)?.apply(&self.act)?)
    }
}

struct SelfAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
}

impl SelfAttention {
    fn new(shape: &EncoderShape, vb: VarBuilder) -> Result<Self> {
        let d = shape.hidden_size;
        Ok(Self {
            q_proj: linear(d, d, vb.pp("q_proj"))?,
            k_proj: linear(d, d, vb.pp("k_proj"))?,
            v_proj: linear(d, d, vb.pp("v_proj"))?,
            out_proj: linear(d, d, vb.pp("out_proj"))?,
            heads: shape.num_attention_heads,
        })
    }

    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, n, d) = x.dims3()?;
        let split = |t: Tensor| {
            t.reshape((b, n, self.heads, d / self.heads))?
                .transpose(1, 2)
        };
        let q = split(self.q_proj.forward(x)?)?;
        let k = split(self.k_proj.forward(x)?)?;
        let v = split(self.v_proj.forward(x)?)?;
        let ctx = attention(&q, &k, &v, mask)?
            .transpose(1, 2)?
            .reshape((b, n, d))?;
        self.out_proj.forward(&ctx)
    }
}

struct Layer {
    self_attn: SelfAttention,
    layer_norm1: LayerNorm,
    mlp: Mlp,
    layer_norm2: LayerNorm,
}

impl Layer {
    fn new(shape: &EncoderShape, vb: VarBuilder) -> Result<Self> {
        let (d, eps) = (shape.hidden_size, shape.layer_norm_eps);
        Ok(Self {
            self_attn: SelfAttention::new(shape, vb.pp("self_attn"))?,
            layer_norm1: layer_norm(d, eps, vb.pp("layer_norm1"))?,
            mlp: Mlp::new(shape, vb.pp("mlp"))?,
            layer_norm2: layer_norm(d, eps, vb.pp("layer_norm2"))?,
        })
    }

    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let h = self
            .self_attn
            .forward(&self.layer_norm1.forward(x)?, mask)?;
        let x = (x + h)?;
        let h = self.mlp.forward(&self.layer_norm2.forward(&x)?)?;
        x + h
    }
}

/// `encoder.layers.{i}.*`.
pub struct Encoder {
    layers: Vec<Layer>,
}

impl Encoder {
    pub fn new(shape: &EncoderShape, vb: VarBuilder) -> Result<Self> {
        let layers = (0..shape.num_hidden_layers)
            .map(|i| Layer::new(shape, vb.pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers })
    }

    /// `[batch, len, hidden]` to the last hidden state; `mask` is additive, `[len, len]`.
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        by_batch_slices(x, |x| {
            let mut x = x.clone();
            for layer in &self.layers {
                x = layer.forward(&x, mask)?;
            }
            Ok(x)
        })
    }
}
