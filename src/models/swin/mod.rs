//! Swin Transformer (`SwinModel`) as the encoder of vision encoder–decoder captioners: patch
//! embedding, stages of window attention (shifted every other block, with a learned relative
//! position bias) and patch merging, then a final LayerNorm; the decoder attends to the last
//! stage's tokens. Reads the Hub's tensor names (`attention.self.query`, …) and transformers 5's
//! (`attention.q_proj`, …).

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder};

use crate::layers::norm::{layer_norm, LayerNorm};
use serde::Deserialize;

use crate::layers::activation::HiddenAct;
use crate::layers::attention::attention;
use crate::layers::linear::{linear, linear_no_bias, Linear};

/// `SwinConfig`, with transformers' defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct SwinConfig {
    #[serde(default = "d_224")]
    pub image_size: usize,
    #[serde(default = "d_4")]
    pub patch_size: usize,
    #[serde(default = "d_3")]
    pub num_channels: usize,
    #[serde(default = "d_96")]
    pub embed_dim: usize,
    #[serde(default = "d_depths")]
    pub depths: Vec<usize>,
    #[serde(default = "d_heads")]
    pub num_heads: Vec<usize>,
    #[serde(default = "d_7")]
    pub window_size: usize,
    #[serde(default = "d_ratio")]
    pub mlp_ratio: f64,
    #[serde(default = "d_true")]
    pub qkv_bias: bool,
    #[serde(default = "d_gelu")]
    pub hidden_act: HiddenAct,
    #[serde(default)]
    pub use_absolute_embeddings: bool,
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
}

fn d_224() -> usize {
    224
}
fn d_4() -> usize {
    4
}
fn d_3() -> usize {
    3
}
fn d_96() -> usize {
    96
}
fn d_7() -> usize {
    7
}
fn d_depths() -> Vec<usize> {
    vec![2, 2, 6, 2]
}
fn d_heads() -> Vec<usize> {
    vec![3, 6, 12, 24]
}
fn d_ratio() -> f64 {
    4.0
}
fn d_true() -> bool {
    true
}
fn d_gelu() -> HiddenAct {
    HiddenAct::Other(candle_nn::Activation::Gelu)
}
fn d_eps() -> f64 {
    1e-5
}

impl SwinConfig {
    /// Width of the last stage's tokens.
    pub fn hidden_size(&self) -> usize {
        self.embed_dim << self.depths.len().saturating_sub(1)
    }
}

/// `vb.pp(new)` when the checkpoint uses transformers 5's name, else `vb.pp(old)`.
fn either<'a>(vb: &VarBuilder<'a>, old: &str, new: &str) -> VarBuilder<'a> {
    if vb.contains_tensor(&format!("{new}.weight")) {
        vb.pp(new)
    } else {
        vb.pp(old)
    }
}

struct Block {
    ln_before: LayerNorm,
    qkv: Linear,
    output: Linear,
    /// `[(2w-1)^2, heads]` relative position bias table.
    bias_table: Tensor,
    ln_after: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: HiddenAct,
    heads: usize,
    window: usize,
    shift: usize,
}

impl Block {
    fn new(
        cfg: &SwinConfig,
        dim: usize,
        heads: usize,
        shift: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let a = vb.pp("attention");
        let new_names = a.contains_tensor("q_proj.weight");
        let (mut ws, mut bs) = (Vec::new(), Vec::new());
        for (old, new) in [
            ("self.query", "q_proj"),
            ("self.key", "k_proj"),
            ("self.value", "v_proj"),
        ] {
            let p = if new_names { a.pp(new) } else { a.pp(old) };
            ws.push(p.get((dim, dim), "weight")?);
            if cfg.qkv_bias {
                bs.push(p.get(dim, "bias")?);
            }
        }
        let bias = if cfg.qkv_bias {
            Some(Tensor::cat(&bs, 0)?)
        } else {
            None
        };
        let w = cfg.window_size;
        let table_name = if new_names {
            "relative_position_bias.relative_position_bias_table"
        } else {
            "self.relative_position_bias_table"
        };
        let hidden = (cfg.mlp_ratio * dim as f64) as usize;
        Ok(Self {
            ln_before: layer_norm(dim, cfg.layer_norm_eps, vb.pp("layernorm_before"))?,
            qkv: Linear::new(Tensor::cat(&ws, 0)?, bias),
            output: linear(dim, dim, either(&a, "output.dense", "o_proj"))?,
            bias_table: a.get(((2 * w - 1) * (2 * w - 1), heads), table_name)?,
            ln_after: layer_norm(dim, cfg.layer_norm_eps, vb.pp("layernorm_after"))?,
            fc1: linear(dim, hidden, either(&vb, "intermediate.dense", "mlp.fc1"))?,
            fc2: linear(hidden, dim, either(&vb, "output.dense", "mlp.fc2"))?,
            act: cfg.hidden_act,
            heads,
            window: w,
            shift,
        })
    }

    /// The relative position bias `[heads, w², w²]` (`SwinRelativePositionBias`).
    fn position_bias(&self, device: &Device) -> Result<Tensor> {
        let w = self.window as i64;
        let n = (w * w) as usize;
        let mut index = Vec::with_capacity(n * n);
        for i in 0..w * w {
            for j in 0..w * w {
                let (dh, dw) = (i / w - j / w + w - 1, i % w - j % w + w - 1);
                index.push((dh * (2 * w - 1) + dw) as u32);
            }
        }
        let index = Tensor::from_vec(index, n * n, device)?;
        self.bias_table
            .index_select(&index, 0)?
            .reshape((n, n, self.heads))?
            .permute((2, 0, 1))?
            .contiguous()
    }

    /// The shifted-window mask `[windows, w², w²]` (0 or -100) of `SwinLayer.get_attn_mask`.
    fn shift_mask(
        &self,
        h: usize,
        w: usize,
        window: usize,
        shift: usize,
        device: &Device,
    ) -> Result<Tensor> {
        let region =
            |i: usize, len: usize| usize::from(i >= len - window) + usize::from(i >= len - shift);
        let mut ids = Vec::new();
        for wy in 0..h / window {
            for wx in 0..w / window {
                let cells: Vec<usize> = (0..window * window)
                    .map(|k| {
                        let (y, x) = (wy * window + k / window, wx * window + k % window);
                        region(y, h) * 3 + region(x, w)
                    })
                    .collect();
                for a in &cells {
                    for b in &cells {
                        ids.push(if a == b { 0f32 } else { -100f32 });
                    }
                }
            }
        }
        let n = window * window;
        Tensor::from_vec(ids, ((h / window) * (w / window), n, n), device)
    }

    fn forward(&self, x: &Tensor, (h, w): (usize, usize)) -> Result<Tensor> {
        let (b, _, c) = x.dims3()?;
        // Matches SwinLayer.set_shift_and_window_size.
        let (window, shift) = if h.min(w) <= self.window {
            (h.min(w), 0)
        } else {
            (self.window, self.shift)
        };
        let mut t = self.ln_before.forward(x)?.reshape((b, h, w, c))?;
        let (pad_b, pad_r) = (
            (window - h % window) % window,
            (window - w % window) % window,
        );
        if pad_b > 0 {
            t = t.pad_with_zeros(1, 0, pad_b)?;
        }
        if pad_r > 0 {
            t = t.pad_with_zeros(2, 0, pad_r)?;
        }
        let (hp, wp) = (h + pad_b, w + pad_r);
        if shift > 0 {
            t = t.roll(-(shift as i32), 1)?.roll(-(shift as i32), 2)?;
        }
        let (nh, nw) = (hp / window, wp / window);
        let n = window * window;
        let windows = t
            .reshape((b, nh, window, nw, window, c))?
            .transpose(2, 3)?
            .contiguous()?
            .reshape((b * nh * nw, n, c))?;
        let hd = c / self.heads;
        let qkv = self
            .qkv
            .forward(&windows)?
            .reshape((b * nh * nw, n, 3, self.heads, hd))?
            .permute((2, 0, 3, 1, 4))?;
        let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
        // In f32 with the (f32) shift mask, then in the model's dtype like the scores.
        let mut bias = self
            .position_bias(x.device())?
            .to_dtype(DType::F32)?
            .unsqueeze(0)?;
        if shift > 0 {
            let mask = self
                .shift_mask(hp, wp, window, shift, x.device())?
                .unsqueeze(1)?;
            bias = bias.broadcast_add(&mask)?;
        }
        let bias = bias
            .broadcast_as((b, nh * nw, self.heads, n, n))?
            .reshape((b * nh * nw, self.heads, n, n))?
            .to_dtype(q.dtype())?;
        let ctx = attention(&q, &k, &v, Some(&bias))?
            .transpose(1, 2)?
            .reshape((b * nh * nw, n, c))?;
        let mut t = self
            .output
            .forward(&ctx)?
            .reshape((b, nh, nw, window, window, c))?
            .transpose(2, 3)?
            .contiguous()?
            .reshape((b, hp, wp, c))?;
        if shift > 0 {
            t = t.roll(shift as i32, 1)?.roll(shift as i32, 2)?;
        }
        let t = t.narrow(1, 0, h)?.narrow(2, 0, w)?.reshape((b, h * w, c))?;
        let x = (x + t)?;
        let m = self.fc2.forward(
            &self
                .fc1
                .forward(&self.ln_after.forward(&x)?)?
                .apply(&self.act)?,
        )?;
        x + m
    }
}

/// `SwinPatchMerging`: 2×2 neighbours concatenated, normed and projected to twice the width.
struct Merge {
    norm: LayerNorm,
    reduction: Linear,
}

impl Merge {
    fn forward(&self, x: &Tensor, (h, w): (usize, usize)) -> Result<Tensor> {
        let (b, _, c) = x.dims3()?;
        let mut t = x.reshape((b, h, w, c))?;
        if h % 2 == 1 {
            t = t.pad_with_zeros(1, 0, 1)?;
        }
        if w % 2 == 1 {
            t = t.pad_with_zeros(2, 0, 1)?;
        }
        let (h2, w2) = (h.div_ceil(2), w.div_ceil(2));
        let t = t.reshape((b, h2, 2, w2, 2, c))?;
        // transformers' order: [0::2, 0::2], [1::2, 0::2], [0::2, 1::2], [1::2, 1::2].
        let parts = [(0, 0), (1, 0), (0, 1), (1, 1)]
            .iter()
            .map(|&(r, col)| {
                t.narrow(2, r, 1)?
                    .narrow(4, col, 1)?
                    .reshape((b, h2 * w2, c))
            })
            .collect::<Result<Vec<_>>>()?;
        let t = Tensor::cat(&parts, D::Minus1)?;
        self.reduction.forward(&self.norm.forward(&t)?)
    }
}

/// `SwinModel` without the pooler: pixels to the final-layer-normed tokens of the last stage.
pub struct SwinModel {
    patch: Conv2d,
    patch_norm: LayerNorm,
    position: Option<Tensor>,
    stages: Vec<(Vec<Block>, Option<Merge>)>,
    norm: LayerNorm,
    dtype: DType,
}

impl SwinModel {
    /// `vb` points at the model (`encoder` in a captioner).
    pub fn new(cfg: &SwinConfig, vb: VarBuilder) -> Result<Self> {
        let emb = vb.pp("embeddings");
        let conv_cfg = Conv2dConfig {
            stride: cfg.patch_size,
            ..Default::default()
        };
        let patch = candle_nn::conv2d(
            cfg.num_channels,
            cfg.embed_dim,
            cfg.patch_size,
            conv_cfg,
            emb.pp("patch_embeddings.projection"),
        )?;
        let grid = cfg.image_size / cfg.patch_size;
        let position = if cfg.use_absolute_embeddings {
            Some(emb.get((1, grid * grid, cfg.embed_dim), "position_embeddings")?)
        } else {
            None
        };
        let mut stages = Vec::new();
        let last = cfg.depths.len().saturating_sub(1);
        for (i, (&depth, &heads)) in cfg.depths.iter().zip(&cfg.num_heads).enumerate() {
            let dim = cfg.embed_dim << i;
            let s = vb.pp("encoder.layers").pp(i);
            let blocks = (0..depth)
                .map(|j| {
                    let shift = if j % 2 == 0 { 0 } else { cfg.window_size / 2 };
                    Block::new(cfg, dim, heads, shift, s.pp("blocks").pp(j))
                })
                .collect::<Result<Vec<_>>>()?;
            let merge = if i < last {
                let d = s.pp("downsample");
                Some(Merge {
                    norm: layer_norm(4 * dim, 1e-5, d.pp("norm"))?,
                    reduction: linear_no_bias(4 * dim, 2 * dim, d.pp("reduction"))?,
                })
            } else {
                None
            };
            stages.push((blocks, merge));
        }
        Ok(Self {
            patch,
            patch_norm: layer_norm(cfg.embed_dim, 1e-5, emb.pp("norm"))?,
            position,
            stages,
            norm: layer_norm(cfg.hidden_size(), cfg.layer_norm_eps, vb.pp("layernorm"))?,
            dtype: vb.dtype(),
        })
    }

    /// `[batch, 3, H, W]` to `[batch, tokens, hidden]` (`last_hidden_state`).
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let pixels = pixels.to_dtype(self.dtype)?;
        let e = self.patch.forward(&pixels)?;
        let (_, _, mut h, mut w) = e.dims4()?;
        let mut x = self
            .patch_norm
            .forward(&e.flatten_from(2)?.transpose(1, 2)?)?;
        if let Some(p) = &self.position {
            x = x.broadcast_add(p)?;
        }
        for (blocks, merge) in &self.stages {
            for block in blocks {
                x = block.forward(&x, (h, w))?;
            }
            if let Some(m) = merge {
                x = m.forward(&x, (h, w))?;
                (h, w) = (h.div_ceil(2), w.div_ceil(2));
            }
        }
        self.norm.forward(&x)
    }
}
