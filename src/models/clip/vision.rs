//! CLIP's ViT image tower (`CLIPVisionTransformer` + `visual_projection` input): class token and
//! patch embeddings, `pre_layrnorm`, pre-LN encoder, `post_layernorm` on the class token.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder};

use crate::layers::norm::{layer_norm, LayerNorm};

use super::config::ClipVisionConfig;
use super::encoder::Encoder;

struct Embeddings {
    class_embedding: Tensor,
    patch_embedding: Conv2d,
    position_embedding: Tensor,
}

impl Embeddings {
    fn new(cfg: &ClipVisionConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let conv_cfg = Conv2dConfig {
            stride: cfg.patch_size,
            ..Default::default()
        };
        let patch_embedding = candle_nn::conv2d_no_bias(
            cfg.num_channels,
            d,
            cfg.patch_size,
            conv_cfg,
            vb.pp("patch_embedding"),
        )?;
        let positions = (cfg.image_size / cfg.patch_size).pow(2) + 1;
        Ok(Self {
            class_embedding: vb.get(d, "class_embedding")?,
            patch_embedding,
            position_embedding: vb.get((positions, d), "position_embedding.weight")?,
        })
    }

    fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let b = pixels.dim(0)?;
        let patches = self
            .patch_embedding
            .forward(pixels)?
            .flatten_from(2)?
            .transpose(1, 2)?;
        let d = self.class_embedding.dim(0)?;
        let cls = self
            .class_embedding
            .reshape((1, 1, d))?
            .broadcast_as((b, 1, d))?;
        let x = Tensor::cat(&[&cls, &patches], 1)?;
        x.broadcast_add(&self.position_embedding.unsqueeze(0)?)
    }
}

pub struct VisionModel {
    embeddings: Embeddings,
    pre_layrnorm: LayerNorm,
    encoder: Encoder,
    post_layernorm: LayerNorm,
}

impl VisionModel {
    /// `vb` is `vision_model`.
    pub fn new(cfg: &ClipVisionConfig, vb: VarBuilder) -> Result<Self> {
        let (d, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        Ok(Self {
            embeddings: Embeddings::new(cfg, vb.pp("embeddings"))?,
            // The misspelling is transformers' tensor name.
            pre_layrnorm: layer_norm(d, eps, vb.pp("pre_layrnorm"))?,
            encoder: Encoder::new(&cfg.encoder_shape(), vb.pp("encoder"))?,
            post_layernorm: layer_norm(d, eps, vb.pp("post_layernorm"))?,
        })
    }

    /// `[batch, 3, H, W]` pixels to the pooled class-token features `[batch, hidden]`.
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let x = self.embeddings.forward(pixels)?;
        let x = self.pre_layrnorm.forward(&x)?;
        let class_token = vec![0; x.dim(0)?];
        let x = self.encoder.forward_at(&x, None, None, &class_token)?;
        self.post_layernorm.forward(&x)
    }
}
