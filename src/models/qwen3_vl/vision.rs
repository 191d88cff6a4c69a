//! Qwen3-VL's vision tower: patches (from [`crate::preprocess::patches`]) embedded by a linear
//! map (the checkpoint's Conv3d over a `temporal × patch × patch` clip), learned position
//! embeddings resampled bilinearly to each image's grid, 2-D rotary attention within each image,
//! then a 2×2 patch merger to the language model's width; DeepStack mergers turn the outputs of
//! chosen blocks into the features added to the first language-model layers.

use candle_core::{Device, Module, Result, Tensor, D};
use candle_nn::{LayerNormConfig, VarBuilder};

use crate::layers::norm::{layer_norm, LayerNorm};
use serde::Deserialize;

use crate::layers::activation::HiddenAct;
use crate::layers::attention::attention;
use crate::layers::linear::{linear, Linear};
use crate::layers::rotary::{self, Rotary};

#[derive(Debug, Clone, Deserialize)]
pub struct VisionConfig {
    pub depth: usize,
    pub hidden_size: usize,
    #[serde(default = "gelu_tanh")]
    pub hidden_act: HiddenAct,
    pub intermediate_size: usize,
    pub num_heads: usize,
    #[serde(default = "three")]
    pub in_channels: usize,
    pub patch_size: usize,
    pub spatial_merge_size: usize,
    pub temporal_patch_size: usize,
    pub out_hidden_size: usize,
    pub num_position_embeddings: usize,
    #[serde(default)]
    pub deepstack_visual_indexes: Vec<usize>,
    #[serde(default)]
    pub rope_parameters: Option<serde_json::Value>,
}

fn gelu_tanh() -> HiddenAct {
    HiddenAct::try_from("gelu_pytorch_tanh".to_string()).expect("a known activation")
}
fn three() -> usize {
    3
}

impl VisionConfig {
    fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    fn rope_theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|p| p.get("rope_theta"))
            .and_then(|t| t.as_f64())
            .unwrap_or(10_000.0)
    }
}

struct Block {
    norm1: LayerNorm,
    norm2: LayerNorm,
    qkv: Linear,
    proj: Linear,
    fc1: Linear,
    fc2: Linear,
    act: HiddenAct,
    heads: usize,
}

impl Block {
    fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let ln = LayerNormConfig {
            eps: 1e-6,
            ..Default::default()
        };
        Ok(Self {
            norm1: layer_norm(h, ln, vb.pp("norm1"))?,
            norm2: layer_norm(h, ln, vb.pp("norm2"))?,
            qkv: linear(h, 3 * h, vb.pp("attn.qkv"))?,
            proj: linear(h, h, vb.pp("attn.proj"))?,
            fc1: linear(h, cfg.intermediate_size, vb.pp("mlp.linear_fc1"))?,
            fc2: linear(cfg.intermediate_size, h, vb.pp("mlp.linear_fc2"))?,
            act: cfg.hidden_act,
            heads: cfg.num_heads,
        })
    }

    /// `x` `[n, hidden]`: the patches of images whose lengths are `lens`, each attending only
    /// to itself; `cos`, `sin` `[n, head_dim]`.
    fn forward(&self, x: &Tensor, lens: &[usize], cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let (n, hidden) = x.dims2()?;
        let hd = hidden / self.heads;
        // [n, 3, heads, hd] -> three [1, heads, n, hd]
        let qkv = self
            .qkv
            .forward(&self.norm1.forward(x)?)?
            .reshape((n, 3, self.heads, hd))?;
        let part = |i: usize| -> Result<Tensor> {
            qkv.narrow(1, i, 1)?
                .squeeze(1)?
                .transpose(0, 1)?
                .unsqueeze(0)?
                .contiguous()
        };
        let q = rotary::apply(&part(0)?, cos, sin)?;
        let k = rotary::apply(&part(1)?, cos, sin)?;
        let v = part(2)?;
        let mut outs = Vec::with_capacity(lens.len());
        let mut start = 0;
        for &len in lens {
            let piece = |t: &Tensor| t.narrow(2, start, len);
            outs.push(attention(&piece(&q)?, &piece(&k)?, &piece(&v)?, None)?);
            start += len;
        }
        let out = Tensor::cat(&outs, 2)?
            .squeeze(0)?
            .transpose(0, 1)?
            .reshape((n, hidden))?;
        let h = (x + self.proj.forward(&out)?)?;
        let mlp = self.fc2.forward(
            &self
                .act
                .forward(&self.fc1.forward(&self.norm2.forward(&h)?)?)?,
        )?;
        h + mlp
    }
}

/// The 2×2 merger: four neighbouring patches (consecutive in merge-block order) become one token.
struct Merger {
    norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    /// `nn.GELU()`, the exact (erf) one.
    act: HiddenAct,
    /// Normalize after joining the four patches (DeepStack mergers) instead of before.
    post_shuffle: bool,
    joined: usize,
}

impl Merger {
    fn new(cfg: &VisionConfig, post_shuffle: bool, vb: VarBuilder) -> Result<Self> {
        let joined = cfg.hidden_size * cfg.spatial_merge_size * cfg.spatial_merge_size;
        let ln = LayerNormConfig {
            eps: 1e-6,
            ..Default::default()
        };
        Ok(Self {
            norm: layer_norm(
                if post_shuffle {
                    joined
                } else {
                    cfg.hidden_size
                },
                ln,
                vb.pp("norm"),
            )?,
            fc1: linear(joined, joined, vb.pp("linear_fc1"))?,
            fc2: linear(joined, cfg.out_hidden_size, vb.pp("linear_fc2"))?,
            act: HiddenAct::try_from("gelu".to_string()).map_err(candle_core::Error::msg)?,
            post_shuffle,
            joined,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let n = x.dim(0)? * x.dim(1)? / self.joined;
        let x = match self.post_shuffle {
            true => self.norm.forward(&x.reshape((n, self.joined))?)?,
            false => self.norm.forward(x)?.reshape((n, self.joined))?,
        };
        self.fc2.forward(&self.act.forward(&self.fc1.forward(&x)?)?)
    }
}

/// What the tower gives the language model for a batch of images.
pub struct VisionOutput {
    /// `[tokens, out_hidden]`: every image's merged tokens, one image after the other.
    pub embeds: Tensor,
    /// One `[tokens, out_hidden]` per DeepStack layer, added after the first language-model layers.
    pub deepstack: Vec<Tensor>,
}

pub struct VisionTower {
    patch_embed: Linear,
    pos_embed: Tensor,
    side: usize,
    rotary: Rotary,
    blocks: Vec<Block>,
    merger: Merger,
    deepstack: Vec<(usize, Merger)>,
    merge: usize,
}

impl VisionTower {
    pub fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let patch_dim = cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size * cfg.patch_size;
        let conv = vb.pp("patch_embed.proj");
        let weight = conv
            .get(
                (
                    cfg.hidden_size,
                    cfg.in_channels,
                    cfg.temporal_patch_size,
                    cfg.patch_size,
                    cfg.patch_size,
                ),
                "weight",
            )?
            .reshape((cfg.hidden_size, patch_dim))?;
        let patch_embed = Linear::new(weight, Some(conv.get(cfg.hidden_size, "bias")?));
        let side = (cfg.num_position_embeddings as f64).sqrt() as usize;
        if side * side != cfg.num_position_embeddings {
            candle_core::bail!(
                "num_position_embeddings {} is not a square",
                cfg.num_position_embeddings
            );
        }
        let pos_embed = vb.get(
            (cfg.num_position_embeddings, cfg.hidden_size),
            "pos_embed.weight",
        )?;
        let rotary = Rotary::new(cfg.head_dim() / 2, cfg.rope_theta(), None)
            .map_err(candle_core::Error::msg)?;
        let blocks = (0..cfg.depth)
            .map(|i| Block::new(cfg, vb.pp(format!("blocks.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let deepstack = cfg
            .deepstack_visual_indexes
            .iter()
            .enumerate()
            .map(|(i, &layer)| {
                Ok((
                    layer,
                    Merger::new(cfg, true, vb.pp(format!("deepstack_merger_list.{i}")))?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            patch_embed,
            pos_embed,
            side,
            rotary,
            blocks,
            merger: Merger::new(cfg, false, vb.pp("merger"))?,
            deepstack,
            merge: cfg.spatial_merge_size,
        })
    }

    /// `patches` `[n, patch_dim]` of images with patch grids `grids` (t, h, w), in order.
    pub fn forward(
        &self,
        patches: &Tensor,
        grids: &[(usize, usize, usize)],
    ) -> Result<VisionOutput> {
        let device = patches.device();
        let mut x = self.patch_embed.forward(patches)?;
        x = (&x
            + self
                .position_embeddings(grids, device)?
                .to_dtype(x.dtype())?)?;
        let positions: Vec<[i64; 2]> = grids
            .iter()
            .flat_map(|&g| block_order(g, self.merge))
            .map(|(r, c)| [r as i64, c as i64])
            .collect();
        let (cos, sin) = self.axial_cos_sin(&positions, device)?;
        let lens: Vec<usize> = grids
            .iter()
            .flat_map(|&(t, h, w)| std::iter::repeat_n(h * w, t))
            .collect();
        let mut deepstack = Vec::with_capacity(self.deepstack.len());
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(&x, &lens, &cos, &sin)?;
            if let Some((_, merger)) = self.deepstack.iter().find(|(layer, _)| *layer == i) {
                deepstack.push(merger.forward(&x)?);
            }
        }
        Ok(VisionOutput {
            embeds: self.merger.forward(&x)?,
            deepstack,
        })
    }

    /// The learned `side × side` position table resampled bilinearly (corners aligned) to each
    /// image's grid, patches in merge-block order: `[n, hidden]`.
    fn position_embeddings(
        &self,
        grids: &[(usize, usize, usize)],
        device: &Device,
    ) -> Result<Tensor> {
        let side = self.side;
        let mut index = Vec::new();
        let mut weight = Vec::new();
        for &(t, h, w) in grids {
            let axis = |i: usize, size: usize| -> [(u32, f32); 2] {
                let src = i as f32 * (side - 1) as f32 / (size.max(2) - 1) as f32;
                let floor = src.floor();
                [0.0f32, 1.0].map(|o| {
                    let tap = ((floor + o) as usize).min(side - 1) as u32;
                    (tap, (1.0 - (src - floor - o).abs()).max(0.0))
                })
            };
            for _ in 0..t {
                for (r, c) in block_order((1, h, w), self.merge) {
                    let (rows, cols) = (axis(r, h), axis(c, w));
                    for (hr, wr) in rows {
                        for (hc, wc) in cols {
                            index.push(hr * side as u32 + hc);
                            weight.push(wr * wc);
                        }
                    }
                }
            }
        }
        let n = weight.len() / 4;
        let index = Tensor::from_vec(index, n * 4, device)?;
        let weight = Tensor::from_vec(weight, (n, 4, 1), device)?;
        let taps = self
            .pos_embed
            .index_select(&index, 0)?
            .reshape((n, 4, ()))?;
        taps.to_dtype(candle_core::DType::F32)?
            .broadcast_mul(&weight)?
            .sum(1)
    }

    /// 2-D rotary angles: the row's frequencies then the column's, over both halves of a head.
    fn axial_cos_sin(&self, positions: &[[i64; 2]], device: &Device) -> Result<(Tensor, Tensor)> {
        let rows: Vec<[i64; 3]> = positions.iter().map(|p| [p[0]; 3]).collect();
        let cols: Vec<[i64; 3]> = positions.iter().map(|p| [p[1]; 3]).collect();
        let (rc, rs) = self.rotary.cos_sin(&rows, device)?;
        let (cc, cs) = self.rotary.cos_sin(&cols, device)?;
        let quarter = self.rotary.head_dim() / 2;
        let join = |a: &Tensor, b: &Tensor| -> Result<Tensor> {
            let hw = Tensor::cat(
                &[
                    a.narrow(D::Minus1, 0, quarter)?,
                    b.narrow(D::Minus1, 0, quarter)?,
                ],
                D::Minus1,
            )?;
            Tensor::cat(&[&hw, &hw], D::Minus1)
        };
        Ok((join(&rc, &cc)?, join(&rs, &cs)?))
    }
}

/// (row, column) of each patch of a `(t, h, w)` grid in merge-block order: block row, block
/// column, row in block, column in block — the order the processor's rows come in.
fn block_order(
    (t, h, w): (usize, usize, usize),
    merge: usize,
) -> impl Iterator<Item = (usize, usize)> {
    (0..t).flat_map(move |_| {
        (0..h / merge).flat_map(move |by| {
            (0..w / merge).flat_map(move |bx| {
                (0..merge).flat_map(move |iy| {
                    (0..merge).map(move |ix| (by * merge + iy, bx * merge + ix))
                })
            })
        })
    })
}
