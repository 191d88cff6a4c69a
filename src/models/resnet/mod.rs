//! ResNet (`ResNetForImageClassification`, microsoft/resnet-50 and friends) with HF tensor names:
//! a 7×7 stem with max-pooling, stages of bottleneck (or basic) residual layers, global average
//! pooling and a linear classifier. BatchNorm (eval mode) is folded into the preceding
//! convolution at load.

use candle_core::{Module, Result, Tensor, D};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder};
use serde::Deserialize;

use crate::layers::linear::{linear, Linear};

/// `ResNetConfig`, with transformers' defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct ResNetConfig {
    #[serde(default = "d_3")]
    pub num_channels: usize,
    #[serde(default = "d_64")]
    pub embedding_size: usize,
    #[serde(default = "d_hidden")]
    pub hidden_sizes: Vec<usize>,
    #[serde(default = "d_depths")]
    pub depths: Vec<usize>,
    #[serde(default = "d_bottleneck")]
    pub layer_type: String,
    #[serde(default = "d_relu")]
    pub hidden_act: String,
    #[serde(default)]
    pub downsample_in_first_stage: bool,
    #[serde(default)]
    pub downsample_in_bottleneck: bool,
}

fn d_3() -> usize {
    3
}
fn d_64() -> usize {
    64
}
fn d_hidden() -> Vec<usize> {
    vec![256, 512, 1024, 2048]
}
fn d_depths() -> Vec<usize> {
    vec![3, 4, 6, 3]
}
fn d_bottleneck() -> String {
    "bottleneck".into()
}
fn d_relu() -> String {
    "relu".into()
}

/// `nn.BatchNorm2d`'s default epsilon.
const BN_EPS: f64 = 1e-5;

/// A bias-free `Conv2d` followed by an eval-mode `BatchNorm2d` (`{convolution, normalization}`),
/// as one convolution with folded weights: `w·γ/√(var+ε)` and bias `β − mean·γ/√(var+ε)`.
pub(crate) fn conv_bn(
    in_c: usize,
    out_c: usize,
    kernel: usize,
    stride: usize,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let w = vb.get((out_c, in_c, kernel, kernel), "convolution.weight")?;
    let n = vb.pp("normalization");
    let gamma = n.get(out_c, "weight")?;
    let beta = n.get(out_c, "bias")?;
    let mean = n.get(out_c, "running_mean")?;
    let var = n.get(out_c, "running_var")?;
    let scale = (gamma / (var + BN_EPS)?.sqrt()?)?;
    let w = w.broadcast_mul(&scale.reshape((out_c, 1, 1, 1))?)?;
    let b = (beta - (mean * &scale)?)?;
    let cfg = Conv2dConfig {
        padding: kernel / 2,
        stride,
        ..Default::default()
    };
    Ok(Conv2d::new(w, Some(b), cfg))
}

struct ResidualLayer {
    shortcut: Option<Conv2d>,
    /// The convolutions; ReLU after each but the last.
    convs: Vec<Conv2d>,
}

impl ResidualLayer {
    fn new(
        cfg: &ResNetConfig,
        in_c: usize,
        out_c: usize,
        stride: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let shortcut = if in_c != out_c || stride != 1 {
            Some(conv_bn(in_c, out_c, 1, stride, vb.pp("shortcut"))?)
        } else {
            None
        };
        let l = vb.pp("layer");
        let convs = if cfg.layer_type == "bottleneck" {
            let r = out_c / 4;
            let (s1, s2) = if cfg.downsample_in_bottleneck {
                (stride, 1)
            } else {
                (1, stride)
            };
            vec![
                conv_bn(in_c, r, 1, s1, l.pp(0))?,
                conv_bn(r, r, 3, s2, l.pp(1))?,
                conv_bn(r, out_c, 1, 1, l.pp(2))?,
            ]
        } else {
            vec![
                conv_bn(in_c, out_c, 3, stride, l.pp(0))?,
                conv_bn(out_c, out_c, 3, 1, l.pp(1))?,
            ]
        };
        Ok(Self { shortcut, convs })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for (i, conv) in self.convs.iter().enumerate() {
            h = conv.forward(&h)?;
            if i + 1 < self.convs.len() {
                h = h.relu()?;
            }
        }
        let residual = match &self.shortcut {
            Some(s) => s.forward(x)?,
            None => x.clone(),
        };
        (h + residual)?.relu()
    }
}

/// `ResNetModel` up to the pooled features `[batch, channels]`.
pub struct ResNetModel {
    stem: Conv2d,
    layers: Vec<ResidualLayer>,
}

impl ResNetModel {
    /// `vb` points at `resnet`.
    pub fn new(cfg: &ResNetConfig, vb: VarBuilder) -> Result<Self> {
        if cfg.hidden_act != "relu" {
            candle_core::bail!(
                "ResNet with hidden_act {:?} is not supported (relu only)",
                cfg.hidden_act
            );
        }
        let stem = conv_bn(
            cfg.num_channels,
            cfg.embedding_size,
            7,
            2,
            vb.pp("embedder.embedder"),
        )?;
        let mut layers = Vec::new();
        let mut in_c = cfg.embedding_size;
        for (s, (&out_c, &depth)) in cfg.hidden_sizes.iter().zip(&cfg.depths).enumerate() {
            let stride = if s > 0 || cfg.downsample_in_first_stage {
                2
            } else {
                1
            };
            let stage = vb.pp("encoder.stages").pp(s).pp("layers");
            for j in 0..depth {
                let (i, st) = if j == 0 { (in_c, stride) } else { (out_c, 1) };
                layers.push(ResidualLayer::new(cfg, i, out_c, st, stage.pp(j))?);
            }
            in_c = out_c;
        }
        Ok(Self { stem, layers })
    }

    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let x = self.stem.forward(pixels)?.relu()?;
        // MaxPool2d(3, stride 2, padding 1): after the ReLU every value is >= 0, so zero padding
        // gives the same maxima as PyTorch's -inf padding.
        let x = x.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?;
        let mut x = x.max_pool2d_with_stride(3, 2)?;
        for layer in &self.layers {
            x = layer.forward(&x)?;
        }
        x.mean(D::Minus1)?.mean(D::Minus1)
    }
}

/// `ResNetForImageClassification`: pooled features through `classifier.1`.
pub struct ResNetClassifier {
    model: ResNetModel,
    classifier: Linear,
}

impl ResNetClassifier {
    pub fn new(cfg: &ResNetConfig, num_labels: usize, vb: VarBuilder) -> Result<Self> {
        let width = *cfg.hidden_sizes.last().unwrap_or(&cfg.embedding_size);
        Ok(Self {
            model: ResNetModel::new(cfg, vb.pp("resnet"))?,
            classifier: linear(width, num_labels, vb.pp("classifier.1"))?,
        })
    }

    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        self.classifier.forward(&self.model.forward(pixels)?)
    }
}
