//! CLIP's pre-LayerNorm transformer encoder (`CLIPEncoder`), shared by both CLIP towers and by
//! SigLIP, whose `SiglipEncoder` is the same module with other defaults.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::layers::activation::HiddenAct;
use crate::layers::attention::attention;
use crate::layers::by_batch_slices;
use crate::layers::linear::{linear, Linear};
use crate::layers::norm::{layer_norm, LayerNorm};

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

/// `fc2(act(fc1(x)))`: `CLIPMLP` / `SiglipMLP`, and the feed-forward of Florence-2's DaViT and
/// BART layers.
pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
    act: HiddenAct,
}

impl Mlp {
    pub fn new(shape: &EncoderShape, vb: VarBuilder) -> Result<Self> {
        Self::with_sizes(
            shape.hidden_size,
            shape.intermediate_size,
            shape.hidden_act,
            vb,
        )
    }

    /// `fc1` from `d` to `inner` values and `fc2` back, `vb` at the layer holding both.
    pub fn with_sizes(d: usize, inner: usize, act: HiddenAct, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            fc1: linear(d, inner, vb.pp("fc1"))?,
            fc2: linear(inner, d, vb.pp("fc2"))?,
            act,
        })
    }

    /// `x + mlp(norm(x))` style blocks: `residual + mlp(x)`, the add done by `fc2`'s kernel.
    pub fn forward_add(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        self.fc2
            .forward_add(&self.fc1.forward_act(x, &self.act)?, residual)
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&self.fc1.forward_act(x, &self.act)?)
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

    /// Self-attention over `x` `[batch, len, hidden]` for the queries of `queries`
    /// `[batch, m, hidden]` (`x` itself, or some of its positions), after the positions of
    /// `past` (shared by the batch) where given; `mask` is additive and broadcasts to
    /// `[batch, heads, m, past + len]`. Also returns `x`'s keys and values.
    fn forward(
        &self,
        queries: &Tensor,
        x: &Tensor,
        past: Option<&KeyValues>,
        mask: Option<&Tensor>,
    ) -> Result<(Tensor, KeyValues)> {
        let (b, n, d) = x.dims3()?;
        let m = queries.dim(1)?;
        let split = |t: Tensor, len: usize| {
            t.reshape((b, len, self.heads, d / self.heads))?
                .transpose(1, 2)
        };
        let q = split(self.q_proj.forward(queries)?, m)?;
        let own = KeyValues {
            k: split(self.k_proj.forward(x)?, n)?,
            v: split(self.v_proj.forward(x)?, n)?,
        };
        let (k, v) = match past {
            Some(past) => {
                let (_, h, p, hd) = past.k.dims4()?;
                let before = |t: &Tensor, mine: &Tensor| {
                    Tensor::cat(&[&t.broadcast_as((b, h, p, hd))?, mine], 2)
                };
                (before(&past.k, &own.k)?, before(&past.v, &own.v)?)
            }
            None => (own.k.clone(), own.v.clone()),
        };
        let ctx = attention(&q, &k, &v, mask)?
            .transpose(1, 2)?
            .reshape((b, m, d))?;
        Ok((self.out_proj.forward(&ctx)?, own))
    }
}

/// One layer's keys and values, `[batch, heads, len, head_dim]` each.
struct KeyValues {
    k: Tensor,
    v: Tensor,
}

/// Every layer's keys and values for a prefix that all prompts of a batch share (`[1, heads,
/// len, head_dim]`), from [`Encoder::prefix`]: under a causal mask the prefix's hidden states do
/// not depend on what follows it, so they are computed once instead of once per prompt.
pub struct Prefix {
    layers: Vec<KeyValues>,
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

    /// The layer's output for `x` (after `past`, see [`SelfAttention::forward`]) and `x`'s keys
    /// and values.
    fn forward(
        &self,
        x: &Tensor,
        past: Option<&KeyValues>,
        mask: Option<&Tensor>,
    ) -> Result<(Tensor, KeyValues)> {
        let normed = self.layer_norm1.forward(x)?;
        let (h, kv) = self.self_attn.forward(&normed, &normed, past, mask)?;
        Ok((self.feed_forward(&(x + h)?)?, kv))
    }

    /// [`Self::forward`]'s output at one position per item, `[batch, 1, hidden]`: keys and
    /// values come from every position, everything else is computed for `at[i]` of item `i`
    /// only.
    fn forward_at(
        &self,
        x: &Tensor,
        past: Option<&KeyValues>,
        mask: Option<&Tensor>,
        at: &[usize],
    ) -> Result<Tensor> {
        let pick = |t: &Tensor| positions(t, at)?.unsqueeze(1);
        let mask = match mask {
            Some(m) => query_mask_rows(m, at)?,
            None => None,
        };
        let normed = self.layer_norm1.forward(x)?;
        let (h, _) = self
            .self_attn
            .forward(&pick(&normed)?, &normed, past, mask.as_ref())?;
        self.feed_forward(&(pick(x)? + h)?)
    }

    fn feed_forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.mlp.forward(&self.layer_norm2.forward(x)?)?;
        x + h
    }
}

/// Position `at[i]` of each item `i` of `x` `[batch, len, hidden]`, `[batch, hidden]`.
fn positions(x: &Tensor, at: &[usize]) -> Result<Tensor> {
    let (b, n, d) = x.dims3()?;
    let rows: Vec<u32> = at
        .iter()
        .enumerate()
        .map(|(i, &p)| (i * n + p) as u32)
        .collect();
    let rows = Tensor::from_vec(rows, b, x.device())?;
    x.reshape((b * n, d))?.index_select(&rows, 0)
}

/// Rows `at` of a `[len, keys]` additive mask as `[batch, 1, 1, keys]`, or `None` where they mask
/// nothing (a causal mask's last row: the pooled end-of-text position of prompts without
/// padding), which lets attention take its single-query path.
fn query_mask_rows(mask: &Tensor, at: &[usize]) -> Result<Option<Tensor>> {
    let index: Vec<u32> = at.iter().map(|&p| p as u32).collect();
    let index = Tensor::from_vec(index, at.len(), mask.device())?;
    let rows = mask.index_select(&index, 0)?;
    let masks_something = rows
        .flatten_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1::<f32>()?
        .iter()
        .any(|&v| v != 0.0);
    let keys = rows.dim(1)?;
    masks_something
        .then(|| rows.reshape((at.len(), 1, 1, keys)))
        .transpose()
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
        by_batch_slices(x, |_, x| {
            let mut x = x.clone();
            for layer in &self.layers {
                x = layer.forward(&x, None, mask)?.0;
            }
            Ok(x)
        })
    }

    /// The keys and values of every layer for `x` `[1, len, hidden]`, a prefix shared by the
    /// prompts that [`Self::forward_at`] then runs after it; `mask` is the prefix's causal mask.
    pub fn prefix(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Prefix> {
        let mut x = x.clone();
        let mut layers = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let (next, kv) = layer.forward(&x, None, mask)?;
            layers.push(kv);
            x = next;
        }
        Ok(Prefix { layers })
    }

    /// The last hidden state at one position per item (`at[i]` of item `i`), `[batch, hidden]`,
    /// for towers pooled at one token. The last layer needs every position's keys and values
    /// but its queries, attention output and MLP only at the pooled one: a twelfth less work
    /// for a 12-layer tower, and the same values as [`Self::forward`] then picking.
    ///
    /// With a `prefix` of `p` positions, `x` holds what follows it in each item (positions
    /// `p..`) and `mask` is `[len, p + len]`.
    pub fn forward_at(
        &self,
        x: &Tensor,
        prefix: Option<&Prefix>,
        mask: Option<&Tensor>,
        at: &[usize],
    ) -> Result<Tensor> {
        assert_eq!(at.len(), x.dim(0)?, "one position per item");
        let past = |i: usize| prefix.map(|p| &p.layers[i]);
        let Some((last, layers)) = self.layers.split_last() else {
            return positions(x, at);
        };
        by_batch_slices(x, |start, x| {
            let mut x = x.clone();
            for (i, layer) in layers.iter().enumerate() {
                x = layer.forward(&x, past(i), mask)?.0;
            }
            let at = &at[start..start + x.dim(0)?];
            last.forward_at(&x, past(layers.len()), mask, at)?
                .squeeze(1)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::{DType, Device, Tensor};

    use super::*;
    use crate::layers::attention::causal_mask;

    /// A two-layer encoder of width 16 with random weights (layer norms too, so that they
    /// matter).
    fn random_encoder() -> Encoder {
        let shape = EncoderShape {
            hidden_size: 16,
            intermediate_size: 32,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            hidden_act: HiddenAct::QuickGelu,
            layer_norm_eps: 1e-5,
        };
        let dev = Device::Cpu;
        let mut tensors = HashMap::new();
        for layer in 0..2 {
            let p = format!("layers.{layer}");
            let mut put = |name: &str, dims: &[usize]| {
                let t = Tensor::randn(0f32, 0.3, dims, &dev).unwrap();
                tensors.insert(format!("{p}.{name}"), t);
            };
            for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                put(&format!("self_attn.{proj}.weight"), &[16, 16]);
                put(&format!("self_attn.{proj}.bias"), &[16]);
            }
            put("mlp.fc1.weight", &[32, 16]);
            put("mlp.fc1.bias", &[32]);
            put("mlp.fc2.weight", &[16, 32]);
            put("mlp.fc2.bias", &[16]);
            for norm in ["layer_norm1", "layer_norm2"] {
                put(&format!("{norm}.weight"), &[16]);
                put(&format!("{norm}.bias"), &[16]);
            }
        }
        Encoder::new(&shape, VarBuilder::from_tensors(tensors, DType::F32, &dev)).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    /// Position `at[i]` of item `i` of `full` `[batch, len, hidden]`, one by one.
    fn picked(full: &Tensor, at: &[usize]) -> Tensor {
        let rows: Vec<Tensor> = at
            .iter()
            .enumerate()
            .map(|(i, &p)| full.get(i).unwrap().get(p).unwrap())
            .collect();
        Tensor::stack(&rows, 0).unwrap()
    }

    /// `forward_at` against the full forward pass then picking one position per item.
    fn check(encoder: &Encoder, x: &Tensor, mask: Option<&Tensor>, at: &[usize]) {
        let (b, _, d) = x.dims3().unwrap();
        let picked = picked(&encoder.forward(x, mask).unwrap(), at);
        let got = encoder.forward_at(x, None, mask, at).unwrap();
        assert_eq!(got.dims(), &[b, d]);
        let diff = max_diff(&got, &picked);
        assert!(
            diff < 1e-5,
            "at {at:?}, mask {}: differs by {diff}",
            mask.is_some()
        );
    }

    #[test]
    fn pooled_forward_equals_the_full_pass_at_those_positions() {
        let encoder = random_encoder();
        let x = Tensor::randn(0f32, 1.0, (3, 5, 16), &Device::Cpu).unwrap();
        let causal = causal_mask(5, 0, DType::F32, &Device::Cpu).unwrap();
        // A causal mask's rows before the last mask something: the gathered rows must be used.
        check(&encoder, &x, Some(&causal), &[4, 2, 0]);
        // Its last row masks nothing (the no-mask path).
        check(&encoder, &x, Some(&causal), &[4, 4, 4]);
        check(&encoder, &x, None, &[0, 3, 1]);
    }

    #[test]
    fn a_shared_prefix_run_once_gives_the_same_states() {
        let encoder = random_encoder();
        let dev = Device::Cpu;
        // Three items whose first two positions are the same.
        let shared = Tensor::randn(0f32, 1.0, (1, 2, 16), &dev).unwrap();
        let rest = Tensor::randn(0f32, 1.0, (3, 4, 16), &dev).unwrap();
        let whole = Tensor::cat(&[&shared.broadcast_as((3, 2, 16)).unwrap(), &rest], 1).unwrap();
        let at = [5, 3, 2];
        let full = encoder
            .forward(&whole, Some(&causal_mask(6, 0, DType::F32, &dev).unwrap()))
            .unwrap();
        let want = picked(&full, &at);
        let prefix = encoder
            .prefix(&shared, Some(&causal_mask(2, 0, DType::F32, &dev).unwrap()))
            .unwrap();
        let got = encoder
            .forward_at(
                &rest,
                Some(&prefix),
                Some(&causal_mask(4, 2, DType::F32, &dev).unwrap()),
                &at.map(|p| p - 2),
            )
            .unwrap();
        let diff = max_diff(&got, &want);
        assert!(diff < 1e-5, "differs by {diff}");
    }
}
