//! Florence-2's DaViT vision tower and the projector that turns its last stage into the
//! language model's image tokens (`Florence2VisionBackbone`, `Florence2MultiModalProjector`).
//!
//! Each stage is a strided convolution (patch embedding) followed by blocks that alternate
//! spatial-window attention (tokens attend within `window × window` windows, zero-padded at the
//! right and bottom) and channel-group attention (channels attend to channels, in groups, over
//! all positions). Every half-block starts with a depthwise 3×3 convolution added to its input.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, Embedding, VarBuilder};

use super::config::DavitConfig;
use crate::kernels::map_attention;
use crate::kernels::patches::{conv_weight_as_matrix, patches, Window};
use crate::layers::activation::HiddenAct;
use crate::layers::attention::attention;
use crate::layers::channels_first_norm;
use crate::layers::linear::{linear, Linear};
use crate::layers::norm::{layer_norm, LayerNorm};
use crate::models::clip::encoder::Mlp;

/// torch's `nn.LayerNorm` default.
const LN_EPS: f64 = 1e-5;

/// `[b, c, h, w]` to `[b, h·w, c]` and back.
fn to_tokens(x: &Tensor) -> Result<Tensor> {
    x.flatten_from(2)?.transpose(1, 2)
}
fn to_map(x: &Tensor, (b, c, h, w): (usize, usize, usize, usize)) -> Result<Tensor> {
    x.transpose(1, 2)?.reshape((b, c, h, w))
}

/// A stage's patch embedding: a strided convolution and a layer norm before or after it.
struct ConvEmbed {
    conv: PatchConv,
    norm: LayerNorm,
    pre_norm: bool,
}

enum PatchConv {
    /// On the CPU with f32 activations: the patches of the tokens as they lie, times the
    /// weight as a matrix (see [`patches`]).
    Patches { proj: Linear, window: Window },
    /// Elsewhere: candle's convolution on an NCHW map.
    Conv(Conv2d),
}

impl ConvEmbed {
    fn new(cfg: &DavitConfig, stage: usize, vb: VarBuilder) -> Result<Self> {
        let in_c = match stage {
            0 => cfg.in_channels,
            s => cfg.embed_dim[s - 1],
        };
        let out_c = cfg.embed_dim[stage];
        let window = Window {
            size: cfg.patch_size[stage],
            stride: cfg.patch_stride[stage],
            padding: cfg.patch_padding[stage],
        };
        let conv_cfg = Conv2dConfig {
            padding: window.padding,
            stride: window.stride,
            ..Default::default()
        };
        let pre_norm = cfg.patch_prenorm[stage];
        let conv = candle_nn::conv2d(in_c, out_c, window.size, conv_cfg, vb.pp("conv"))?;
        let conv = match crate::kernels::host_f32(conv.weight()) {
            true => PatchConv::Patches {
                proj: Linear::new(conv_weight_as_matrix(conv.weight())?, conv.bias().cloned()),
                window,
            },
            false => PatchConv::Conv(conv),
        };
        let norm = layer_norm(if pre_norm { in_c } else { out_c }, LN_EPS, vb.pp("norm"))?;
        Ok(Self {
            conv,
            norm,
            pre_norm,
        })
    }

    /// The previous stage's tokens (or, first, the pixels as a map) to this stage's tokens and
    /// map size.
    fn forward(&self, input: Features) -> Result<(Tensor, (usize, usize))> {
        let (tokens, size) = match &self.conv {
            PatchConv::Patches { proj, window } => {
                let (t, size) = match input {
                    Features::Pixels(pixels) => {
                        let (_, _, h, w) = pixels.dims4()?;
                        (to_tokens(pixels)?.contiguous()?, (h, w))
                    }
                    Features::Tokens(t, size) => (t.clone(), size),
                };
                let t = match self.pre_norm {
                    true => t.apply(&self.norm)?,
                    false => t,
                };
                let (p, size) = patches(&t, size, *window)?;
                (p.apply(proj)?, size)
            }
            PatchConv::Conv(conv) => {
                let map = match input {
                    Features::Pixels(pixels) if self.pre_norm => {
                        channels_first_norm(&self.norm, pixels)?
                    }
                    Features::Pixels(pixels) => pixels.clone(),
                    Features::Tokens(t, (h, w)) => {
                        let t = match self.pre_norm {
                            true => t.apply(&self.norm)?,
                            false => t.clone(),
                        };
                        let (b, _, c) = t.dims3()?;
                        to_map(&t, (b, c, h, w))?.contiguous()?
                    }
                };
                let out = map.apply(conv)?;
                let (_, _, h, w) = out.dims4()?;
                (to_tokens(&out)?.contiguous()?, (h, w))
            }
        };
        let tokens = match self.pre_norm {
            true => tokens,
            false => tokens.apply(&self.norm)?,
        };
        Ok((tokens, size))
    }
}

/// What a stage's patch embedding reads.
enum Features<'a> {
    Pixels(&'a Tensor),
    /// `[b, h·w, c]` of an `h × w` map.
    Tokens(&'a Tensor, (usize, usize)),
}

fn depthwise(dim: usize, vb: VarBuilder) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding: 1,
        groups: dim,
        ..Default::default()
    };
    candle_nn::conv2d(dim, dim, 3, cfg, vb)
}

/// `conv(x) + x` for a depthwise 3×3 `conv` over tokens `t` `[b, h·w, c]`: glance's
/// channels-last kernel on the CPU in f32, candle's convolution on an NCHW copy elsewhere.
fn depthwise_residual(
    conv: &Conv2d,
    t: &Tensor,
    shape: (usize, usize, usize, usize),
) -> Result<Tensor> {
    let (_, _, h, w) = shape;
    match conv.bias() {
        Some(bias) if crate::kernels::host_f32(t) && crate::kernels::host_f32(conv.weight()) => {
            crate::kernels::depthwise::depthwise3x3_residual(t, (h, w), conv.weight(), bias)
        }
        _ => {
            let map = to_map(t, shape)?;
            to_tokens(&(map.apply(conv)? + map)?)
        }
    }
}

/// transformers' "gelu" (erf), on glance's vectorised kernel where it applies.
const GELU: HiddenAct = HiddenAct::Other(candle_nn::Activation::Gelu);

/// What mixes the tokens in the first half of a block.
enum Mixer {
    /// Multi-head attention within windows of `window × window` positions.
    Window { heads: usize, window: usize },
    /// Attention between channels, in `groups` groups, over all positions.
    Channel { groups: usize },
}

/// A spatial or channel block: depthwise conv + attention, depthwise conv + MLP.
struct HalfBlocks {
    conv1: Conv2d,
    norm1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    conv2: Conv2d,
    norm2: LayerNorm,
    ffn: Mlp,
    mixer: Mixer,
}

impl HalfBlocks {
    fn new(cfg: &DavitConfig, stage: usize, mixer: Mixer, vb: VarBuilder) -> Result<Self> {
        let dim = cfg.embed_dim[stage];
        let attn = vb.pp(match mixer {
            Mixer::Window { .. } => "window_attn",
            Mixer::Channel { .. } => "channel_attn",
        });
        let qkv = match cfg.qkv_bias {
            true => linear(dim, 3 * dim, attn.pp("qkv"))?,
            false => crate::layers::linear::linear_no_bias(dim, 3 * dim, attn.pp("qkv"))?,
        };
        Ok(Self {
            conv1: depthwise(dim, vb.pp("conv1"))?,
            norm1: layer_norm(dim, LN_EPS, vb.pp("norm1"))?,
            qkv,
            proj: linear(dim, dim, attn.pp("proj"))?,
            conv2: depthwise(dim, vb.pp("conv2"))?,
            norm2: layer_norm(dim, LN_EPS, vb.pp("norm2"))?,
            ffn: Mlp::with_sizes(
                dim,
                (dim as f64 * cfg.mlp_ratio) as usize,
                GELU,
                vb.pp("ffn"),
            )?,
            mixer,
        })
    }

    /// Tokens `[b, h·w, c]` of a `(b, c, h, w)` map, through both halves.
    fn forward(&self, t: &Tensor, shape: (usize, usize, usize, usize)) -> Result<Tensor> {
        let t = depthwise_residual(&self.conv1, t, shape)?;
        let normed = t.apply(&self.norm1)?;
        let t = match self.mixer {
            Mixer::Window { heads, window } => {
                self.window_attention(&normed, &t, shape, heads, window)?
            }
            Mixer::Channel { groups } => self.channel_attention(&normed, &t, groups)?,
        };
        let t = depthwise_residual(&self.conv2, &t, shape)?;
        self.ffn.forward_add(&t.apply(&self.norm2)?, &t)
    }

    /// `t` `[b, h·w, c]` (normed) attended within windows; zero padding at the right and bottom
    /// takes part in the attention, as in transformers. On the CPU in f32 (activations) through
    /// [`map_attention`], which reads the projection in place; elsewhere with tensor ops.
    /// Returns `residual` plus the attention (added by the output projection).
    fn window_attention(
        &self,
        t: &Tensor,
        residual: &Tensor,
        (b, c, h, w): (usize, usize, usize, usize),
        heads: usize,
        window: usize,
    ) -> Result<Tensor> {
        if crate::kernels::host_f32(t) {
            // The projection is per token, so it runs in raster order; only the attention
            // needs windows, and the kernel gathers them.
            let qkv = self.qkv.forward(t)?;
            let pad = match h % window != 0 || w % window != 0 {
                true => Some(
                    self.qkv
                        .forward(&t.narrow(1, 0, 1)?.zeros_like()?)?
                        .flatten_all()?
                        .to_vec1()?,
                ),
                false => None,
            };
            let ctx = map_attention::window_attention(&qkv, (h, w), window, heads, pad.as_deref())?;
            return self.proj.forward_add(&ctx, residual);
        }
        let mut x = t.reshape((b, h, w, c))?;
        let (pad_b, pad_r) = (
            (window - h % window) % window,
            (window - w % window) % window,
        );
        if pad_b > 0 {
            x = x.pad_with_zeros(1, 0, pad_b)?;
        }
        if pad_r > 0 {
            x = x.pad_with_zeros(2, 0, pad_r)?;
        }
        let (hp, wp) = (h + pad_b, w + pad_r);
        let (nh, nw, n) = (hp / window, wp / window, window * window);
        let windows = x
            .reshape((b, nh, window, nw, window, c))?
            .transpose(2, 3)?
            .contiguous()?
            .reshape((b * nh * nw, n, c))?;
        let hd = c / heads;
        let qkv = self
            .qkv
            .forward(&windows)?
            .reshape((b * nh * nw, n, 3, heads, hd))?
            .permute((2, 0, 3, 1, 4))?;
        let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
        let ctx = attention(&q, &k, &v, None)?
            .transpose(1, 2)?
            .reshape((b * nh * nw, n, c))?;
        let out = self.proj.forward(&ctx)?;
        out.reshape((b, nh, nw, window, window, c))?
            .transpose(2, 3)?
            .contiguous()?
            .reshape((b, hp, wp, c))?
            .narrow(1, 0, h)?
            .narrow(2, 0, w)?
            .contiguous()?
            .reshape((b, h * w, c))?
            + residual
    }

    /// Channel-group attention: within each group, channels are the queries and keys, and the
    /// scores are scaled by `1/sqrt(positions)`. Returns `residual` plus the attention.
    fn channel_attention(&self, t: &Tensor, residual: &Tensor, groups: usize) -> Result<Tensor> {
        let (b, n, c) = t.dims3()?;
        let qkv = self.qkv.forward(t)?;
        if crate::kernels::host_f32(&qkv) {
            let ctx = map_attention::channel_attention(&qkv, groups)?;
            return self.proj.forward_add(&ctx, residual);
        }
        let qkv = qkv
            .reshape((b, n, 3, groups, c / groups))?
            .permute((2, 0, 3, 4, 1))?;
        // Each [b, groups, c/groups, n]: `attention` scales by 1/sqrt(last dim) = 1/sqrt(n).
        let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
        let ctx = attention(&q, &k, &v, None)?
            .permute((0, 3, 1, 2))?
            .reshape((b, n, c))?;
        self.proj.forward_add(&ctx, residual)
    }
}

/// The DaViT backbone: pixels `[b, 3, H, W]` to the last stage's tokens `[b, (H/32)·(W/32), C]`.
pub struct Davit {
    stages: Vec<(ConvEmbed, Vec<(HalfBlocks, HalfBlocks)>)>,
}

impl Davit {
    pub fn new(cfg: &DavitConfig, vb: VarBuilder) -> Result<Self> {
        let n = cfg.embed_dim.len();
        for (what, len) in [
            ("depths", cfg.depths.len()),
            ("num_heads", cfg.num_heads.len()),
            ("num_groups", cfg.num_groups.len()),
            ("patch_size", cfg.patch_size.len()),
            ("patch_stride", cfg.patch_stride.len()),
            ("patch_padding", cfg.patch_padding.len()),
            ("patch_prenorm", cfg.patch_prenorm.len()),
        ] {
            if len != n {
                candle_core::bail!("vision_config: {what} has {len} stages, embed_dim has {n}");
            }
        }
        let stages = (0..n)
            .map(|s| {
                let conv = ConvEmbed::new(cfg, s, vb.pp("convs").pp(s))?;
                let blocks = (0..cfg.depths[s])
                    .map(|i| {
                        let v = vb.pp("blocks").pp(s).pp(i);
                        let window = Mixer::Window {
                            heads: cfg.num_heads[s],
                            window: cfg.window_size,
                        };
                        let channel = Mixer::Channel {
                            groups: cfg.num_groups[s],
                        };
                        Ok((
                            HalfBlocks::new(cfg, s, window, v.pp("spatial_block"))?,
                            HalfBlocks::new(cfg, s, channel, v.pp("channel_block"))?,
                        ))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok((conv, blocks))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { stages })
    }

    /// The last stage's tokens and its map size.
    pub fn forward(&self, pixels: &Tensor) -> Result<(Tensor, (usize, usize))> {
        let mut state: Option<(Tensor, (usize, usize))> = None;
        for (conv, blocks) in &self.stages {
            let input = match &state {
                None => Features::Pixels(pixels),
                Some((t, hw)) => Features::Tokens(t, *hw),
            };
            let (mut t, (h, w)) = conv.forward(input)?;
            let (b, _, c) = t.dims3()?;
            for (spatial, channel) in blocks {
                t = channel.forward(&spatial.forward(&t, (b, c, h, w))?, (b, c, h, w))?;
            }
            state = Some((t, (h, w)));
        }
        state.ok_or_else(|| candle_core::Error::Msg("DaViT without stages".into()))
    }
}

/// The image tokens: the last stage's map plus learned 2-D positions and the first cosine
/// "temporal" embedding, as one mean-pooled token followed by every position, projected to
/// the language model's width and normed.
pub struct Projector {
    row: Embedding,
    column: Embedding,
    /// The cosine embedding of frame 0, `[C]`.
    temporal: Tensor,
    projection: Linear,
    norm: LayerNorm,
}

impl Projector {
    /// `projection` is the `[out, in]` weight (the original checkpoints store it transposed).
    pub fn new(cfg: &DavitConfig, projection: Tensor, vb: VarBuilder) -> Result<Self> {
        let c = *cfg.embed_dim.last().unwrap_or(&0);
        let p = cfg.projection_dim;
        let rows = cfg.max_position_embeddings;
        let pos = vb.pp("image_position_embed");
        let row = candle_nn::embedding(rows, c / 2, pos.pp("row_embeddings"))?;
        let column = candle_nn::embedding(rows, c - c / 2, pos.pp("column_embeddings"))?;
        let table = "visual_temporal_embed.pos_idx_to_embed";
        let temporal = if vb.contains_tensor(table) {
            vb.get((cfg.max_temporal_embeddings, c), table)?.get(0)?
        } else {
            // A buffer, computed from its definition: sin(0) = 0 at even, cos(0) = 1 at odd.
            let values: Vec<f32> = (0..c).map(|i| (i % 2) as f32).collect();
            Tensor::from_vec(values, c, vb.device())?.to_dtype(vb.dtype())?
        };
        Ok(Self {
            row,
            column,
            temporal,
            projection: Linear::new(projection, None),
            norm: layer_norm(p, LN_EPS, vb.pp("image_proj_norm"))?,
        })
    }

    /// The last stage's tokens `[b, h·w, C]` to `[b, 1 + h·w, projection_dim]`.
    pub fn forward(&self, tokens: &Tensor, (h, w): (usize, usize)) -> Result<Tensor> {
        let (_, _, c) = tokens.dims3()?;
        let device = tokens.device();
        let x_emb = self
            .column
            .forward(&Tensor::arange(0u32, w as u32, device)?)?;
        let y_emb = self.row.forward(&Tensor::arange(0u32, h as u32, device)?)?;
        let cx = x_emb.dim(1)?;
        let pos = Tensor::cat(
            &[
                x_emb.unsqueeze(0)?.broadcast_as((h, w, cx))?,
                y_emb.unsqueeze(1)?.broadcast_as((h, w, c - cx))?,
            ],
            2,
        )?;
        // [b, h·w, C]: the map's tokens with their positions and the temporal embedding.
        let tokens = tokens
            .broadcast_add(&pos.reshape((h * w, c))?)?
            .broadcast_add(&self.temporal)?;
        let pooled = tokens.mean_keepdim(1)?;
        let all = Tensor::cat(&[pooled, tokens], 1)?;
        self.norm.forward(&self.projection.forward(&all)?)
    }
}
