//! Qwen3-VL's language model: a Qwen3 decoder (grouped-query attention with per-head q/k
//! norms, SwiGLU) with interleaved M-RoPE, and DeepStack — the vision tower's features from
//! earlier blocks added to the image positions after each of the first layers.

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{Embedding, VarBuilder};
use serde::Deserialize;

use crate::layers::decoder::{padded_causal_mask, AttentionShape, DecoderLayer, RmsNorm};
use crate::layers::kv_cache::GrowingKv;
use crate::layers::linear::{packable_weight, Linear};
use crate::layers::rotary::{MRope, Rotary};

#[derive(Debug, Clone, Deserialize)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: Option<usize>,
    #[serde(default = "eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub attention_bias: bool,
    pub rope_theta: Option<f64>,
    /// transformers 4's name for the rotary settings.
    pub rope_scaling: Option<serde_json::Value>,
    /// transformers 5's.
    pub rope_parameters: Option<serde_json::Value>,
    pub tie_word_embeddings: Option<bool>,
}

fn eps() -> f64 {
    1e-6
}

impl TextConfig {
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// The rotary settings, from `rope_parameters` (transformers 5) or `rope_scaling` and
    /// `rope_theta` (checkpoints written before).
    pub fn rotary(&self) -> std::result::Result<Rotary, String> {
        let params = self
            .rope_parameters
            .as_ref()
            .or(self.rope_scaling.as_ref())
            .cloned()
            .unwrap_or(serde_json::Value::Null);
        let theta = params["rope_theta"]
            .as_f64()
            .or(self.rope_theta)
            .unwrap_or(5_000_000.0);
        let mrope = match params["mrope_section"].as_array() {
            Some(s) if s.len() == 3 => {
                let n = |i: usize| s[i].as_u64().unwrap_or(0) as usize;
                Some(MRope {
                    section: [n(0), n(1), n(2)],
                    interleaved: params["mrope_interleaved"].as_bool().unwrap_or(false),
                })
            }
            Some(s) => return Err(format!("mrope_section has {} entries, expected 3", s.len())),
            None => None,
        };
        Rotary::new(self.head_dim(), theta, mrope)
    }
}

/// Where the token embeddings come from.
enum Table {
    Own(Embedding),
    /// Tied to the head, whose weights are packed for the CPU's bf16 kernel: the head's copy is
    /// the only one (0.6 GB saved for 2B).
    Head,
}

pub struct TextModel {
    embed: Table,
    /// What the layers compute in (the table may be stored narrower).
    dtype: DType,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    rotary: Rotary,
    device: Device,
}

/// One prompt row's state across steps: its cache per layer and which positions are real.
pub struct TextCache {
    pub layers: Vec<Option<GrowingKv>>,
    /// Per row, per position so far: not padding.
    pub valid: Vec<Vec<bool>>,
}

impl TextCache {
    /// Keeps only these rows, in this order.
    pub fn select(&mut self, rows: &[u32]) -> Result<()> {
        if let Some(first) = self.layers.iter().flatten().next() {
            let index = Tensor::new(rows, first.device())?;
            for layer in self.layers.iter_mut().flatten() {
                layer.select(&index)?;
            }
        }
        self.valid = rows
            .iter()
            .map(|&r| self.valid[r as usize].clone())
            .collect();
        Ok(())
    }
}

impl TextModel {
    /// `vb` holds `embed_tokens`, `layers.N`, `norm`; `head` the `lm_head` (tied to the
    /// embeddings when `None`).
    pub fn new(cfg: &TextConfig, vb: VarBuilder, head: Option<VarBuilder>) -> Result<Self> {
        let shape = AttentionShape {
            hidden: cfg.hidden_size,
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim(),
            qkv_bias: cfg.attention_bias,
            qk_norm: Some(cfg.rms_norm_eps),
        };
        let table_shape = (cfg.vocab_size, cfg.hidden_size);
        // As stored (bf16) where the CPU packs the layers for its bf16 kernel.
        let embed_weight = packable_weight(&vb, table_shape, "embed_tokens.weight")?;
        let dtype = vb.dtype();
        let head_is_table = head.is_none();
        let head_weight = match head {
            Some(vb) => packable_weight(&vb, table_shape, "weight")?,
            None => embed_weight.clone(),
        };
        // glance's layer: its few-rows path streams the vocabulary once per decode step.
        let lm_head = Linear::new(head_weight, None);
        // Where the CPU multiplies in bf16, every linear layer is packed to bf16 and the f32
        // weights are dropped. A tied table reads the packed head; an untied one is kept in
        // bf16 too (its rows are exact in f32 only for bf16 checkpoints, as bf16 matmuls are),
        // not as a 0.6 GB f32 copy for 2B.
        let table = if head_is_table && lm_head.packed().is_some() {
            drop(embed_weight);
            Table::Head
        } else if crate::kernels::cpu_bf16_matmul() && dtype == DType::F32 {
            // (A no-op for a table read as stored from a bf16 checkpoint.)
            let narrow = embed_weight.to_dtype(DType::BF16)?;
            drop(embed_weight);
            Table::Own(Embedding::new(narrow, cfg.hidden_size))
        } else {
            Table::Own(Embedding::new(embed_weight, cfg.hidden_size))
        };
        // The layers after the table: its f32 copy is gone before they load.
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                DecoderLayer::new(
                    shape,
                    cfg.intermediate_size,
                    cfg.rms_norm_eps,
                    vb.pp(format!("layers.{i}")),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            norm: RmsNorm::new(cfg.hidden_size, cfg.rms_norm_eps, vb.pp("norm"))?,
            embed: table,
            dtype,
            lm_head,
            rotary: cfg.rotary().map_err(candle_core::Error::msg)?,
            device: vb.device().clone(),
        })
    }

    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let packed = match &self.embed {
            Table::Own(table) => return table.forward(ids)?.to_dtype(self.dtype),
            Table::Head => self
                .lm_head
                .packed()
                .expect("a Head table has a packed head"),
        };
        let flat = ids.flatten_all()?.to_dtype(DType::U32)?.to_vec1::<u32>()?;
        let Some(rows) = packed.rows(&flat) else {
            candle_core::bail!("token id out of the vocabulary of {}", packed.n);
        };
        let mut shape = ids.dims().to_vec();
        shape.push(packed.k);
        Tensor::from_vec(rows, shape, &self.device)?.to_dtype(self.dtype)
    }

    pub fn new_cache(&self) -> TextCache {
        TextCache {
            layers: (0..self.layers.len()).map(|_| None).collect(),
            valid: Vec::new(),
        }
    }

    /// Runs `embeds` `[batch, new, hidden]` at M-RoPE `positions` (per row, per new position)
    /// after the cached ones; `valid` marks the new positions that are not padding. `deepstack`:
    /// per row the new positions that are image tokens, and one `[image tokens, hidden]` feature
    /// per DeepStack layer (all rows' image tokens in order). Returns the logits of the last
    /// position, `[batch, vocab]`.
    pub fn forward(
        &self,
        embeds: &Tensor,
        positions: &[Vec<[i64; 3]>],
        valid: &[Vec<bool>],
        deepstack: Option<(&[Vec<usize>], &[Tensor])>,
        cache: &mut TextCache,
    ) -> Result<Tensor> {
        let (b, n, _) = embeds.dims3()?;
        if cache.valid.is_empty() {
            cache.valid = vec![Vec::new(); b];
        }
        for (row, new) in cache.valid.iter_mut().zip(valid) {
            row.extend_from_slice(new);
        }
        let (mut cos, mut sin) = (Vec::with_capacity(b), Vec::with_capacity(b));
        for row in positions {
            let (c, s) = self.rotary.cos_sin(row, &self.device)?;
            cos.push(c);
            sin.push(s);
        }
        let cos = Tensor::stack(&cos, 0)?;
        let sin = Tensor::stack(&sin, 0)?;
        let all_valid = cache.valid.iter().all(|r| r.iter().all(|&v| v));
        let mask = match (n, all_valid) {
            (1, true) => None,
            _ => Some(padded_causal_mask(
                &cache.valid,
                n,
                embeds.dtype(),
                &self.device,
            )?),
        };
        // Flat indices of the image positions in [batch * new], for DeepStack.
        let image_rows: Option<Tensor> = match deepstack {
            Some((rows, _)) => {
                let flat: Vec<u32> = rows
                    .iter()
                    .enumerate()
                    .flat_map(|(r, ps)| ps.iter().map(move |&p| (r * n + p) as u32))
                    .collect();
                (!flat.is_empty())
                    .then(|| {
                        let n = flat.len();
                        Tensor::from_vec(flat, n, &self.device)
                    })
                    .transpose()?
            }
            None => None,
        };
        let mut h = embeds.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(&h, &cos, &sin, mask.as_ref(), &mut cache.layers[i])?;
            if let (Some(index), Some((_, features))) = (&image_rows, deepstack) {
                if let Some(feature) = features.get(i) {
                    let hidden = h.dim(D::Minus1)?;
                    let flat = h.reshape((b * n, hidden))?;
                    let added = flat.index_add(index, &feature.to_dtype(flat.dtype())?, 0)?;
                    h = added.reshape((b, n, hidden))?;
                }
            }
        }
        let last = self.norm.forward(&h.narrow(1, n - 1, 1)?.squeeze(1)?)?;
        self.lm_head.forward(&last)?.to_dtype(DType::F32)
    }
}
