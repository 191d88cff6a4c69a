//! SigLIP's ViT image tower (`SiglipVisionTransformer`): patch embeddings without a class token,
//! pre-LN encoder, `post_layernorm`, and the attention-pooling head
//! (`SiglipMultiheadAttentionPoolingHead`).

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder};

use super::config::SiglipVisionConfig;
use crate::layers::attention::attention;
use crate::layers::linear::{linear, Linear};
use crate::layers::norm::{layer_norm, LayerNorm};
use crate::models::clip::encoder::{Encoder, Mlp};

/// A learned probe query attending over all patches with `torch.nn.MultiheadAttention`
/// (`in_proj_weight` holds q, k and v stacked by rows), then a residual MLP.
struct PoolingHead {
    probe: Tensor,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
    layernorm: LayerNorm,
    mlp: Mlp,
}

impl PoolingHead {
    fn new(cfg: &SiglipVisionConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let attn = vb.pp("attention");
        let w = attn.get((3 * d, d), "in_proj_weight")?;
        let b = attn.get(3 * d, "in_proj_bias")?;
        let part = |i: usize| -> Result<Linear> {
            Ok(Linear::new(
                w.narrow(0, i * d, d)?.contiguous()?,
                Some(b.narrow(0, i * d, d)?.contiguous()?),
            ))
        };
        Ok(Self {
            probe: vb.get((1, 1, d), "probe")?,
            q_proj: part(0)?,
            k_proj: part(1)?,
            v_proj: part(2)?,
            out_proj: linear(d, d, attn.pp("out_proj"))?,
            heads: cfg.num_attention_heads,
            layernorm: layer_norm(d, cfg.layer_norm_eps, vb.pp("layernorm"))?,
            mlp: Mlp::new(&cfg.encoder_shape(), vb.pp("mlp"))?,
        })
    }

    /// `[batch, patches, hidden]` to `[batch, hidden]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, d) = x.dims3()?;
        let hd = d / self.heads;
        let probe = self.probe.broadcast_as((b, 1, d))?;
        let q = self
            .q_proj
            .forward(&probe)?
            .reshape((b, 1, self.heads, hd))?
            .transpose(1, 2)?;
        let split = |t: Tensor| t.reshape((b, n, self.heads, hd))?.transpose(1, 2);
        let k = split(self.k_proj.forward(x)?)?;
        let v = split(self.v_proj.forward(x)?)?;
        let ctx = attention(&q, &k, &v, None)?
            .transpose(1, 2)?
            .reshape((b, 1, d))?;
        let h = self.out_proj.forward(&ctx)?;
        let h = (&h + self.mlp.forward(&self.layernorm.forward(&h)?)?)?;
        h.squeeze(1)
    }
}

pub struct VisionModel {
    patch_embedding: Conv2d,
    position_embedding: Tensor,
    encoder: Encoder,
    post_layernorm: LayerNorm,
    head: PoolingHead,
}

impl VisionModel {
    /// `vb` is `vision_model`.
    pub fn new(cfg: &SiglipVisionConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let emb = vb.pp("embeddings");
        let conv_cfg = Conv2dConfig {
            stride: cfg.patch_size,
            ..Default::default()
        };
        let positions = (cfg.image_size / cfg.patch_size).pow(2);
        Ok(Self {
            patch_embedding: candle_nn::conv2d(
                cfg.num_channels,
                d,
                cfg.patch_size,
                conv_cfg,
                emb.pp("patch_embedding"),
            )?,
            position_embedding: emb.get((positions, d), "position_embedding.weight")?,
            encoder: Encoder::new(&cfg.encoder_shape(), vb.pp("encoder"))?,
            post_layernorm: layer_norm(d, cfg.layer_norm_eps, vb.pp("post_layernorm"))?,
            head: PoolingHead::new(cfg, vb.pp("head"))?,
        })
    }

    /// `[batch, 3, H, W]` pixels to image embeddings `[batch, hidden]`.
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let x = self
            .patch_embedding
            .forward(pixels)?
            .flatten_from(2)?
            .transpose(1, 2)?
            .broadcast_add(&self.position_embedding.unsqueeze(0)?)?;
        let x = self.encoder.forward(&x, None)?;
        let x = self.post_layernorm.forward(&x)?;
        self.head.forward(&x)
    }
}
