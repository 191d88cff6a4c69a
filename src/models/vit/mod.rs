//! ViT and DeiT image transformers (`ViTModel`, `DeiTModel`), as the encoder of
//! `VisionEncoderDecoderModel` captioners and in `ViTForImageClassification` /
//! `DeiTForImageClassification(WithTeacher)`.

pub mod config;

use candle_core::{Module, Result, Tensor, D};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder};

pub use config::VitConfig;

use crate::layers::activation::HiddenAct;
use crate::layers::attention::attention;
use crate::layers::by_batch_slices;
use crate::layers::linear::{linear, Linear};
use crate::layers::norm::{layer_norm, LayerNorm};

struct Embeddings {
    cls_token: Tensor,
    distillation_token: Option<Tensor>,
    patch_embeddings: Conv2d,
    position_embeddings: Tensor,
}

impl Embeddings {
    fn new(cfg: &VitConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let conv_cfg = Conv2dConfig {
            stride: cfg.patch_size,
            ..Default::default()
        };
        let patch_embeddings = candle_nn::conv2d(
            cfg.num_channels,
            d,
            cfg.patch_size,
            conv_cfg,
            vb.pp("patch_embeddings.projection"),
        )?;
        let distillation_token = if cfg.has_distillation_token() {
            Some(vb.get((1, 1, d), "distillation_token")?)
        } else {
            None
        };
        let extra = 1 + usize::from(distillation_token.is_some());
        let positions = (cfg.image_size / cfg.patch_size).pow(2) + extra;
        Ok(Self {
            cls_token: vb.get((1, 1, d), "cls_token")?,
            distillation_token,
            patch_embeddings,
            position_embeddings: vb.get((1, positions, d), "position_embeddings")?,
        })
    }

    fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let b = pixels.dim(0)?;
        let patches = self
            .patch_embeddings
            .forward(pixels)?
            .flatten_from(2)?
            .transpose(1, 2)?;
        let d = self.cls_token.dim(D::Minus1)?;
        let mut parts = vec![self.cls_token.broadcast_as((b, 1, d))?];
        if let Some(t) = &self.distillation_token {
            parts.push(t.broadcast_as((b, 1, d))?);
        }
        parts.push(patches);
        let x = Tensor::cat(&parts, 1)?;
        if x.dim(1)? != self.position_embeddings.dim(1)? {
            candle_core::bail!(
                "image gives {} positions, the model has {} (resize to the configured image_size)",
                x.dim(1)?,
                self.position_embeddings.dim(1)?
            );
        }
        x.broadcast_add(&self.position_embeddings)
    }
}

struct Layer {
    /// query, key and value projections fused into one `[3d, d]` matrix.
    qkv: Linear,
    output: Linear,
    heads: usize,
    layernorm_before: LayerNorm,
    layernorm_after: LayerNorm,
    intermediate: Linear,
    mlp_output: Linear,
    act: HiddenAct,
}

impl Layer {
    fn new(cfg: &VitConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let attn = vb.pp("attention.attention");
        let (mut weights, mut biases) = (Vec::new(), Vec::new());
        for name in ["query", "key", "value"] {
            weights.push(attn.get((d, d), &format!("{name}.weight"))?);
            if cfg.qkv_bias {
                biases.push(attn.get(d, &format!("{name}.bias"))?);
            }
        }
        let bias = if cfg.qkv_bias {
            Some(Tensor::cat(&biases, 0)?)
        } else {
            None
        };
        let eps = cfg.layer_norm_eps;
        Ok(Self {
            qkv: Linear::new(Tensor::cat(&weights, 0)?, bias),
            output: linear(d, d, vb.pp("attention.output.dense"))?,
            heads: cfg.num_attention_heads,
            layernorm_before: layer_norm(d, eps, vb.pp("layernorm_before"))?,
            layernorm_after: layer_norm(d, eps, vb.pp("layernorm_after"))?,
            intermediate: linear(d, cfg.intermediate_size, vb.pp("intermediate.dense"))?,
            mlp_output: linear(cfg.intermediate_size, d, vb.pp("output.dense"))?,
            act: cfg.hidden_act,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, d) = x.dims3()?;
        let hd = d / self.heads;
        let qkv = self
            .qkv
            .forward(&self.layernorm_before.forward(x)?)?
            .reshape((b, n, 3, self.heads, hd))?
            .permute((2, 0, 3, 1, 4))?;
        let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
        let ctx = attention(&q, &k, &v, None)?
            .transpose(1, 2)?
            .reshape((b, n, d))?;
        let x = (self.output.forward(&ctx)? + x)?;
        let h = self
            .intermediate
            .forward(&self.layernorm_after.forward(&x)?)?
            .apply(&self.act)?;
        self.mlp_output.forward(&h)? + x
    }
}

/// `ViTModel` / `DeiTModel` without the pooler: pixels to the final-layer-normed hidden states.
pub struct VitModel {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    layernorm: LayerNorm,
}

impl VitModel {
    /// `vb` points at the model (`encoder` in a captioner, `vit` / `deit` in a classifier).
    pub fn new(cfg: &VitConfig, vb: VarBuilder) -> Result<Self> {
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::new(cfg, vb.pp("encoder.layer").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embeddings: Embeddings::new(cfg, vb.pp("embeddings"))?,
            layers,
            layernorm: layer_norm(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("layernorm"))?,
        })
    }

    /// `[batch, 3, H, W]` to `[batch, tokens, hidden]` (`last_hidden_state`).
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let x = self.embeddings.forward(pixels)?;
        by_batch_slices(&x, |_, x| {
            let mut x = x.clone();
            for layer in &self.layers {
                x = layer.forward(&x)?;
            }
            self.layernorm.forward(&x)
        })
    }
}

/// `ViTForImageClassification` (`classifier` on the class token) and DeiT's two heads
/// (`DeiTForImageClassificationWithTeacher`: the mean of the class-token and distillation-token
/// heads).
pub struct VitClassifier {
    model: VitModel,
    heads: Vec<(usize, Linear)>,
}

impl VitClassifier {
    pub fn new(cfg: &VitConfig, num_labels: usize, vb: VarBuilder) -> Result<Self> {
        let prefix = if cfg.has_distillation_token() {
            "deit"
        } else {
            "vit"
        };
        let model = VitModel::new(cfg, vb.pp(prefix))?;
        let d = cfg.hidden_size;
        let heads = if vb.contains_tensor("cls_classifier.weight") {
            vec![
                (0, linear(d, num_labels, vb.pp("cls_classifier"))?),
                (1, linear(d, num_labels, vb.pp("distillation_classifier"))?),
            ]
        } else {
            vec![(0, linear(d, num_labels, vb.pp("classifier"))?)]
        };
        Ok(Self { model, heads })
    }

    /// Logits `[batch, num_labels]`.
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let x = self.model.forward(pixels)?;
        let mut sum: Option<Tensor> = None;
        for (token, head) in &self.heads {
            let logits = head.forward(&x.narrow(1, *token, 1)?.squeeze(1)?)?;
            sum = Some(match sum {
                Some(s) => (s + logits)?,
                None => logits,
            });
        }
        let sum = sum.expect("at least one head");
        sum / self.heads.len() as f64
    }
}
