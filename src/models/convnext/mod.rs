//! ConvNeXt (`ConvNextForImageClassification`, facebook/convnext-tiny-224 and friends) with HF
//! tensor names: a 4×4 patchify stem, stages of depthwise-7×7 + inverted-MLP blocks with layer
//! scale, strided 2×2 downsampling between stages, global average pooling, a final LayerNorm
//! and a linear classifier.

use candle_core::{Module, Result, Tensor, D};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder};

use crate::layers::norm::{layer_norm, LayerNorm};
use serde::Deserialize;

use crate::layers::activation::HiddenAct;
use crate::layers::channels_first_norm;
use crate::layers::linear::{linear, Linear};

/// `ConvNextConfig`, with transformers' defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct ConvNextConfig {
    #[serde(default = "d_3")]
    pub num_channels: usize,
    #[serde(default = "d_4")]
    pub patch_size: usize,
    #[serde(default = "d_hidden")]
    pub hidden_sizes: Vec<usize>,
    #[serde(default = "d_depths")]
    pub depths: Vec<usize>,
    #[serde(default = "d_gelu")]
    pub hidden_act: HiddenAct,
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "d_scale")]
    pub layer_scale_init_value: f64,
}

fn d_3() -> usize {
    3
}
fn d_4() -> usize {
    4
}
fn d_hidden() -> Vec<usize> {
    vec![96, 192, 384, 768]
}
fn d_depths() -> Vec<usize> {
    vec![3, 3, 9, 3]
}
fn d_gelu() -> HiddenAct {
    HiddenAct::Other(candle_nn::Activation::Gelu)
}
fn d_eps() -> f64 {
    1e-12
}
fn d_scale() -> f64 {
    1e-6
}

/// `ConvNextLayerNorm`'s fixed epsilon (the stem, downsampling and block norms).
const LN_EPS: f64 = 1e-6;

struct Block {
    dwconv: Conv2d,
    norm: LayerNorm,
    pwconv1: Linear,
    pwconv2: Linear,
    act: HiddenAct,
    layer_scale: Option<Tensor>,
}

impl Block {
    fn new(cfg: &ConvNextConfig, dim: usize, vb: VarBuilder) -> Result<Self> {
        let dw_cfg = Conv2dConfig {
            padding: 3,
            groups: dim,
            ..Default::default()
        };
        Ok(Self {
            dwconv: candle_nn::conv2d(dim, dim, 7, dw_cfg, vb.pp("dwconv"))?,
            norm: layer_norm(dim, LN_EPS, vb.pp("layernorm"))?,
            pwconv1: linear(dim, 4 * dim, vb.pp("pwconv1"))?,
            pwconv2: linear(4 * dim, dim, vb.pp("pwconv2"))?,
            act: cfg.hidden_act,
            layer_scale: if cfg.layer_scale_init_value > 0.0 {
                Some(vb.get(dim, "layer_scale_parameter")?)
            } else {
                None
            },
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.dwconv.forward(x)?.permute((0, 2, 3, 1))?;
        let h = self.norm.forward(&h)?;
        let h = self
            .pwconv2
            .forward(&self.pwconv1.forward(&h)?.apply(&self.act)?)?;
        let h = match &self.layer_scale {
            Some(s) => h.broadcast_mul(s)?,
            None => h,
        };
        x + h.permute((0, 3, 1, 2))?
    }
}

struct Stage {
    downsample: Option<(LayerNorm, Conv2d)>,
    blocks: Vec<Block>,
}

/// `ConvNextModel` up to the pooled, normed features `[batch, channels]`.
pub struct ConvNextModel {
    stem: Conv2d,
    stem_norm: LayerNorm,
    stages: Vec<Stage>,
    norm: LayerNorm,
}

impl ConvNextModel {
    /// `vb` points at `convnext`.
    pub fn new(cfg: &ConvNextConfig, vb: VarBuilder) -> Result<Self> {
        let first = cfg.hidden_sizes[0];
        let stem_cfg = Conv2dConfig {
            stride: cfg.patch_size,
            ..Default::default()
        };
        let emb = vb.pp("embeddings");
        let stem = candle_nn::conv2d(
            cfg.num_channels,
            first,
            cfg.patch_size,
            stem_cfg,
            emb.pp("patch_embeddings"),
        )?;
        let stem_norm = layer_norm(first, LN_EPS, emb.pp("layernorm"))?;
        let mut stages = Vec::new();
        let mut in_c = first;
        for (s, (&out_c, &depth)) in cfg.hidden_sizes.iter().zip(&cfg.depths).enumerate() {
            let vs = vb.pp("encoder.stages").pp(s);
            let downsample = if in_c != out_c || s > 0 {
                let d = vs.pp("downsampling_layer");
                let conv_cfg = Conv2dConfig {
                    stride: 2,
                    ..Default::default()
                };
                Some((
                    layer_norm(in_c, LN_EPS, d.pp(0))?,
                    candle_nn::conv2d(in_c, out_c, 2, conv_cfg, d.pp(1))?,
                ))
            } else {
                None
            };
            let blocks = (0..depth)
                .map(|j| Block::new(cfg, out_c, vs.pp("layers").pp(j)))
                .collect::<Result<Vec<_>>>()?;
            stages.push(Stage { downsample, blocks });
            in_c = out_c;
        }
        Ok(Self {
            stem,
            stem_norm,
            stages,
            norm: layer_norm(in_c, cfg.layer_norm_eps, vb.pp("layernorm"))?,
        })
    }

    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let mut x = channels_first_norm(&self.stem_norm, &self.stem.forward(pixels)?)?;
        for stage in &self.stages {
            if let Some((norm, conv)) = &stage.downsample {
                x = conv.forward(&channels_first_norm(norm, &x)?)?;
            }
            for block in &stage.blocks {
                x = block.forward(&x)?;
            }
        }
        let pooled = x.mean(D::Minus1)?.mean(D::Minus1)?;
        self.norm.forward(&pooled)
    }
}

/// `ConvNextForImageClassification`.
pub struct ConvNextClassifier {
    model: ConvNextModel,
    classifier: Linear,
}

impl ConvNextClassifier {
    pub fn new(cfg: &ConvNextConfig, num_labels: usize, vb: VarBuilder) -> Result<Self> {
        let width = *cfg.hidden_sizes.last().unwrap_or(&96);
        Ok(Self {
            model: ConvNextModel::new(cfg, vb.pp("convnext"))?,
            classifier: linear(width, num_labels, vb.pp("classifier"))?,
        })
    }

    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        self.classifier.forward(&self.model.forward(pixels)?)
    }
}
