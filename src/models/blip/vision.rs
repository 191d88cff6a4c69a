//! BLIP's ViT image encoder (`BlipVisionModel`): patch embedding, pre-norm transformer layers
//! with a fused qkv projection, and a final layer norm; returns the last hidden state.

use candle_core::{Module, Result, Tensor, D};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder};

use super::config::BlipVisionConfig;
use crate::layers::attention::attention;
use crate::layers::by_batch_slices;
use crate::layers::linear::{linear, Linear};
use crate::layers::norm::{layer_norm, LayerNorm};

struct Embeddings {
    class_embedding: Tensor,
    patch_embedding: Conv2d,
    position_embedding: Tensor,
}

impl Embeddings {
    fn new(cfg: &BlipVisionConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let conv_cfg = Conv2dConfig {
            stride: cfg.patch_size,
            ..Default::default()
        };
        let patch_embedding =
            candle_nn::conv2d(3, d, cfg.patch_size, conv_cfg, vb.pp("patch_embedding"))?;
        let positions = (cfg.image_size / cfg.patch_size).pow(2) + 1;
        Ok(Self {
            class_embedding: vb.get((1, 1, d), "class_embedding")?,
            patch_embedding,
            position_embedding: vb.get((1, positions, d), "position_embedding")?,
        })
    }

    fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let b = pixels.dim(0)?;
        let patches = self
            .patch_embedding
            .forward(pixels)?
            .flatten_from(2)?
            .transpose(1, 2)?;
        let d = self.class_embedding.dim(D::Minus1)?;
        let cls = self.class_embedding.broadcast_as((b, 1, d))?;
        let x = Tensor::cat(&[&cls, &patches], 1)?;
        x.broadcast_add(&self.position_embedding.narrow(1, 0, x.dim(1)?)?)
    }
}

struct Layer {
    qkv: Linear,
    projection: Linear,
    heads: usize,
    layer_norm1: LayerNorm,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: crate::layers::activation::HiddenAct,
}

impl Layer {
    fn new(cfg: &BlipVisionConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let attn = vb.pp("self_attn");
        Ok(Self {
            qkv: linear(d, 3 * d, attn.pp("qkv"))?,
            projection: linear(d, d, attn.pp("projection"))?,
            heads: cfg.num_attention_heads,
            layer_norm1: layer_norm(d, cfg.layer_norm_eps, vb.pp("layer_norm1"))?,
            layer_norm2: layer_norm(d, cfg.layer_norm_eps, vb.pp("layer_norm2"))?,
            fc1: linear(d, cfg.intermediate_size, vb.pp("mlp").pp("fc1"))?,
            fc2: linear(cfg.intermediate_size, d, vb.pp("mlp").pp("fc2"))?,
            act: crate::layers::activation::HiddenAct::Other(cfg.hidden_act),
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, d) = x.dims3()?;
        let hd = d / self.heads;
        let qkv = self
            .qkv
            .forward(&self.layer_norm1.forward(x)?)?
            .reshape((b, n, 3, self.heads, hd))?
            .permute((2, 0, 3, 1, 4))?;
        let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
        let ctx = attention(&q, &k, &v, None)?;
        let ctx = ctx.transpose(1, 2)?.reshape((b, n, d))?;
        let x = (self.projection.forward(&ctx)? + x)?;
        let h = self
            .fc1
            .forward(&self.layer_norm2.forward(&x)?)?
            .apply(&self.act)?;
        self.fc2.forward(&h)? + x
    }
}

pub struct VisionModel {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    post_layernorm: LayerNorm,
}

impl VisionModel {
    pub fn new(cfg: &BlipVisionConfig, vb: VarBuilder) -> Result<Self> {
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::new(cfg, vb.pp("encoder.layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embeddings: Embeddings::new(cfg, vb.pp("embeddings"))?,
            layers,
            post_layernorm: layer_norm(
                cfg.hidden_size,
                cfg.layer_norm_eps,
                vb.pp("post_layernorm"),
            )?,
        })
    }

    /// `[batch, 3, H, W]` pixels to `[batch, 1 + patches, hidden]` features.
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let x = self.embeddings.forward(pixels)?;
        by_batch_slices(&x, |_, x| {
            let mut x = x.clone();
            for layer in &self.layers {
                x = layer.forward(&x)?;
            }
            self.post_layernorm.forward(&x)
        })
    }
}
