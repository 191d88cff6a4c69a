//! Qwen3-VL (`Qwen3VLForConditionalGeneration`): a vision tower with DeepStack features
//! ([`vision`]) and a Qwen3 language model with interleaved M-RoPE ([`text`]). Equal to
//! transformers' on tiny random models (tests/qwen3_vl_*.rs); the chat template, prompts and
//! the `glance caption` integration come next.

pub mod text;
pub mod vision;

use candle_core::{Device, Result, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use crate::generation::{self, Decoding, GenerationParams};
use crate::layers::rotary::{mrope_positions, Span};
use crate::preprocess::patches::Patches;
use text::{TextCache, TextConfig, TextModel};
use vision::{VisionConfig, VisionTower};

#[derive(Debug, Clone, Deserialize)]
pub struct Qwen3VlConfig {
    pub text_config: TextConfig,
    pub vision_config: VisionConfig,
    #[serde(default = "image_token")]
    pub image_token_id: u32,
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
}

fn image_token() -> u32 {
    151_655
}

impl Qwen3VlConfig {
    fn tied(&self) -> bool {
        self.text_config
            .tie_word_embeddings
            .or(self.tie_word_embeddings)
            .unwrap_or(false)
    }
}

/// A prompt: token ids with one run of `image_token_id` per image, and the images' patches.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub ids: Vec<u32>,
    pub images: Vec<Patches>,
}

pub struct Qwen3Vl {
    vision: VisionTower,
    text: TextModel,
    image_token: u32,
    merge: usize,
    patch_dim: usize,
    device: Device,
    dtype: candle_core::DType,
}

impl Qwen3Vl {
    /// Weights as transformers names them: `model.visual.*`, `model.language_model.*` and
    /// `lm_head.weight` (absent when tied).
    pub fn new(cfg: &Qwen3VlConfig, vb: VarBuilder) -> Result<Self> {
        let v = &cfg.vision_config;
        let head = (!cfg.tied()).then(|| vb.pp("lm_head"));
        Ok(Self {
            vision: VisionTower::new(v, vb.pp("model.visual"))?,
            text: TextModel::new(&cfg.text_config, vb.pp("model.language_model"), head)?,
            image_token: cfg.image_token_id,
            merge: v.spatial_merge_size,
            patch_dim: v.in_channels * v.temporal_patch_size * v.patch_size * v.patch_size,
            device: vb.device().clone(),
            dtype: vb.dtype(),
        })
    }

    /// The runs of `ids`: whether each is of image tokens, and where it lies.
    fn runs(&self, ids: &[u32]) -> Vec<(bool, std::ops::Range<usize>)> {
        let mut runs = Vec::new();
        let mut i = 0;
        while i < ids.len() {
            let image = ids[i] == self.image_token;
            let len = ids[i..]
                .iter()
                .take_while(|&&t| (t == self.image_token) == image)
                .count();
            runs.push((image, i..i + len));
            i += len;
        }
        runs
    }

    /// The spans of a prompt for its M-RoPE positions: text, and each run of image tokens as
    /// the next image's grid.
    fn spans(&self, prompt: &Prompt) -> Result<Vec<Span>> {
        let mut spans = Vec::new();
        let mut images = prompt.images.iter();
        for (image, range) in self.runs(&prompt.ids) {
            let run = range.len();
            if image {
                let Some(p) = images.next() else {
                    candle_core::bail!("more image-token runs than images in the prompt");
                };
                if p.tokens(self.merge) != run {
                    candle_core::bail!(
                        "an image of {} tokens has a run of {run} image tokens",
                        p.tokens(self.merge)
                    );
                }
                spans.push(Span::Image {
                    grid: p.grid,
                    merge: self.merge,
                });
            } else {
                spans.push(Span::Text(run));
            }
        }
        if images.next().is_some() {
            candle_core::bail!("more images than image-token runs in the prompt");
        }
        Ok(spans)
    }

    /// Runs a batch of prompts (left-padded together) through the vision tower and the language
    /// model: the session that decodes after them, and the logits of their last positions
    /// `[batch, vocab]`.
    pub fn prefill(&self, prompts: &[Prompt]) -> Result<(Session<'_>, Tensor)> {
        let b = prompts.len();
        let width = prompts.iter().map(|p| p.ids.len()).max().unwrap_or(0);
        // The vision tower over every image of every row, in order.
        let mut values = Vec::new();
        let mut grids = Vec::new();
        for p in prompts {
            for img in &p.images {
                values.extend_from_slice(&img.values);
                grids.push(img.grid);
            }
        }
        let vision = match grids.is_empty() {
            true => None,
            false => {
                let n = values.len() / self.patch_dim;
                let patches = Tensor::from_vec(values, (n, self.patch_dim), &self.device)?
                    .to_dtype(self.dtype)?;
                Some(self.vision.forward(&patches, &grids)?)
            }
        };
        // Embeddings: text tokens from the table, image tokens from the tower; left padding.
        let mut rows = Vec::with_capacity(b);
        let mut positions = Vec::with_capacity(b);
        let mut valid = Vec::with_capacity(b);
        let mut image_positions = Vec::with_capacity(b);
        let mut next = Vec::with_capacity(b);
        let mut image_offset = 0;
        for p in prompts {
            let pad = width - p.ids.len();
            let (pos, delta) = mrope_positions(&self.spans(p)?);
            next.push(p.ids.len() as i64 + delta);
            let mut row_pos = vec![[0i64; 3]; pad];
            row_pos.extend(pos);
            positions.push(row_pos);
            let mut row_valid = vec![false; pad];
            row_valid.extend(std::iter::repeat_n(true, p.ids.len()));
            valid.push(row_valid);
            let ids: Vec<u32> = std::iter::repeat_n(0, pad)
                .chain(p.ids.iter().copied())
                .collect();
            let len = ids.len();
            let embeds = self
                .text
                .embed(&Tensor::from_vec(ids, len, &self.device)?)?;
            let mut pieces = Vec::new();
            if pad > 0 {
                pieces.push(embeds.narrow(0, 0, pad)?);
            }
            let mut row_images = Vec::new();
            for (image, range) in self.runs(&p.ids) {
                let (i, run) = (range.start + pad, range.len());
                match (image, &vision) {
                    (true, Some(v)) => {
                        pieces.push(
                            v.embeds
                                .narrow(0, image_offset, run)?
                                .to_dtype(embeds.dtype())?,
                        );
                        image_offset += run;
                        row_images.extend(i..i + run);
                    }
                    _ => pieces.push(embeds.narrow(0, i, run)?),
                }
            }
            rows.push(Tensor::cat(&pieces, 0)?);
            image_positions.push(row_images);
        }
        let embeds = Tensor::stack(&rows, 0)?;
        let mut cache = self.text.new_cache();
        let deepstack = vision
            .as_ref()
            .map(|v| (&image_positions[..], &v.deepstack[..]));
        let logits = self
            .text
            .forward(&embeds, &positions, &valid, deepstack, &mut cache)?;
        let session = Session {
            model: self,
            cache,
            next,
        };
        Ok((session, logits))
    }

    /// Greedy decoding of a batch of prompts, `max_new` tokens at most, stopping a row at any of
    /// `eos`. Returns each row's new tokens (its stop token included) and the first step's
    /// logits `[batch, vocab]`.
    pub fn generate_greedy(
        &self,
        prompts: &[Prompt],
        max_new: usize,
        eos: &[u32],
    ) -> crate::Result<(Vec<Vec<u32>>, Tensor)> {
        let (mut session, first) = self.prefill(prompts)?;
        let params = GenerationParams {
            max_new_tokens: max_new,
            ..GenerationParams::default()
        };
        let seqs = prompts.iter().map(|p| p.ids.clone()).collect();
        let out = generation::decode(first.clone(), &mut session, seqs, &params, eos, &[])?;
        let new = out
            .into_iter()
            .zip(prompts)
            .map(|(seq, p)| seq[p.ids.len()..].to_vec())
            .collect();
        Ok((new, first))
    }
}

/// A batch decoding after [`Qwen3Vl::prefill`]: each row's cache and its next text position.
pub struct Session<'a> {
    model: &'a Qwen3Vl,
    cache: TextCache,
    /// Per active row, the M-RoPE position of the token it is fed next.
    next: Vec<i64>,
}

impl Decoding for Session<'_> {
    fn step(&mut self, tokens: &[u32]) -> Result<Tensor> {
        let m = self.model;
        let b = tokens.len();
        let ids = Tensor::from_vec(tokens.to_vec(), (b, 1), &m.device)?;
        let embeds = m.text.embed(&ids)?;
        let positions: Vec<Vec<[i64; 3]>> = self.next.iter().map(|&p| vec![[p; 3]]).collect();
        for p in &mut self.next {
            *p += 1;
        }
        let valid = vec![vec![true]; b];
        m.text
            .forward(&embeds, &positions, &valid, None, &mut self.cache)
    }

    fn keep(&mut self, rows: &[u32]) -> Result<()> {
        self.cache.select(rows)?;
        self.next = rows.iter().map(|&r| self.next[r as usize]).collect();
        Ok(())
    }
}
