//! Zero-shot image–text scoring: a loaded contrastive model (CLIP, SigLIP) with its tokenizer and
//! preprocessing, turning images and label prompts into per-label probabilities.

use candle_core::{DType, Device, Tensor, D};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::error::{Error, Result};
use crate::load::embedding_cache::{self, EmbeddingCache, ModelKey};
use crate::load::hub::{ModelFiles, Weights};
use crate::load::weights;
use crate::load::{load_text_tokenizer, read_json, TextTokenizer};
use crate::models::{self, Architecture, ImageTextEncoder, Scoring, TextPadding};
use crate::preprocess::{Preprocessor, PreprocessorConfig};
use crate::timings;

/// Prompts per text-encoder pass: large enough to keep the matmuls efficient, small enough that
/// thousands of labels do not hold thousands of activations at once.
pub const TEXT_BATCH: usize = 256;

pub struct ImageTextModel {
    encoder: Box<dyn ImageTextEncoder>,
    tokenizer: TextTokenizer,
    preprocessor: Preprocessor,
    device: Device,
    dtype: DType,
    name: String,
    /// Where label prompts' embeddings are kept between runs, and this model's key there; `None`
    /// with `GLANCE_CACHE=off`.
    prompt_cache: Option<(std::path::PathBuf, ModelKey)>,
}

/// How a set of label prompts was embedded: how many came from the on-disk cache, how many the
/// text tower encoded, in how long.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PromptStats {
    pub templates: usize,
    pub prompts: usize,
    pub cached: usize,
    pub seconds: f64,
}

/// Loads a CLIP or SigLIP checkpoint with its tokenizer and image processor.
pub fn load_image_text(
    files: &ModelFiles,
    device: &Device,
    dtype: DType,
) -> Result<ImageTextModel> {
    let name = files.source().name();
    let (config, arch) = timings::phase("configs", || -> Result<_> {
        let config = read_json(&files.get("config.json")?)?;
        let arch = Architecture::from_config(&config, &name)?;
        Ok((config, arch))
    })?;
    let weight_files = files.weights()?;
    let vb = timings::phase("weights opened", || {
        weights::var_builder(&weight_files, dtype, device)
    })?;
    let started = std::time::Instant::now();
    let encoder: Box<dyn ImageTextEncoder> = match &arch {
        Architecture::Clip(cfg) => Box::new(models::clip::ClipModel::new(cfg, vb)?),
        Architecture::Siglip(cfg) => Box::new(models::siglip::SiglipModel::new(cfg, vb)?),
        Architecture::ImageClassifier(_) => {
            return Err(Error::WrongTask {
                model: name,
                kind: "a closed-set image classifier",
                command: "classify (without --labels)",
            })
        }
        Architecture::Blip(_)
        | Architecture::VisionEncoderDecoder(_)
        | Architecture::Qwen3Vl(_)
        | Architecture::Florence2(_) => {
            return Err(Error::WrongTask {
                model: name,
                kind: "a captioning model",
                command: "caption",
            })
        }
    };
    timings::add("model built", started.elapsed().as_secs_f64());
    let preprocessor = timings::phase("configs", || {
        Preprocessor::new(PreprocessorConfig::from_file(
            &files.get("preprocessor_config.json")?,
        )?)
    })?;
    let started = std::time::Instant::now();
    let mut tokenizer = load_text_tokenizer(files)?;
    // Under CLIP's causal mask no position before the pooled one sees the padding after it, so
    // any pad id gives the same embeddings: a tokenizer that names none pads with the config's
    // pad_token_id, else its eos. SigLIP attends to its padding, so its pad must be the real one.
    let fallback = match &arch {
        Architecture::Clip(_) => ["pad_token_id", "eos_token_id"]
            .iter()
            .find_map(|k| config["text_config"][k].as_u64())
            .map(|id| id as u32),
        _ => None,
    };
    let pad_id = pad_token_id(files, &tokenizer.tokenizer, fallback)?;
    configure_tokenizer(
        &mut tokenizer.tokenizer,
        encoder.text_padding(),
        pad_id,
        &name,
    )?;
    timings::add("tokenizer", started.elapsed().as_secs_f64());
    let prompt_cache = match embedding_cache::cache_dir() {
        Some(dir) => {
            let paths = match &weight_files {
                Weights::Safetensors(p) | Weights::PyTorch(p) => p,
            };
            // Not the dtype alone: `--dtype bf16` on the CPU loads f32 and multiplies in bf16.
            let precision = crate::device::describe_precision(dtype);
            let key = ModelKey::new(paths, &config, &precision, &crate::device::describe(device))?;
            Some((dir, key))
        }
        None => None,
    };
    Ok(ImageTextModel {
        encoder,
        tokenizer,
        preprocessor,
        device: device.clone(),
        dtype,
        name,
        prompt_cache,
    })
}

/// The pad id the checkpoint's own tokenizer uses: `tokenizer.json`'s padding, else
/// `tokenizer_config.json`'s `pad_token`, else `fallback`. (CLIP's `text_config.pad_token_id`
/// is not what its tokenizer pads with, so the model config is only the last resort.)
fn pad_token_id(files: &ModelFiles, tokenizer: &Tokenizer, fallback: Option<u32>) -> Result<u32> {
    if let Some(p) = tokenizer.get_padding() {
        return Ok(p.pad_id);
    }
    let named = match files.get_optional("tokenizer_config.json")? {
        Some(path) => {
            let cfg = read_json(&path)?;
            match crate::load::special_token(&cfg["pad_token"]) {
                Some(token) => Some(tokenizer.token_to_id(token).ok_or_else(|| {
                    Error::config(
                        &path,
                        format!("pad_token {token:?} is not in the vocabulary"),
                    )
                })?),
                None => None,
            }
        }
        None => None,
    };
    named.or(fallback).ok_or_else(|| Error::Config {
        file: format!("tokenizer of {}", files.source().name()),
        message:
            "no pad token: tokenizer.json has no padding and tokenizer_config.json no pad_token"
                .into(),
    })
}

// Matches the processors' text call: CLIPProcessor(padding=True, truncation=True) and
// SiglipProcessor(padding="max_length", truncation=True).
fn configure_tokenizer(
    tokenizer: &mut Tokenizer,
    padding: TextPadding,
    pad_id: u32,
    name: &str,
) -> Result<()> {
    let (strategy, max_length) = match padding {
        TextPadding::Longest { max_len } => (PaddingStrategy::BatchLongest, max_len),
        TextPadding::MaxLength(n) => (PaddingStrategy::Fixed(n), n),
    };
    let pad_token = tokenizer.id_to_token(pad_id).unwrap_or_default();
    tokenizer.with_padding(Some(PaddingParams {
        strategy,
        pad_id,
        pad_token,
        ..Default::default()
    }));
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length,
            ..Default::default()
        }))
        .map_err(|e| Error::Tokenizer {
            path: format!("tokenizer.json of {name}"),
            message: e.to_string(),
        })?;
    Ok(())
}

/// `x / ||x||` along the last dimension.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    Ok(x.broadcast_div(&x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?)?)
}

impl ImageTextModel {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn preprocessor(&self) -> &Preprocessor {
        &self.preprocessor
    }

    pub fn encoder(&self) -> &dyn ImageTextEncoder {
        self.encoder.as_ref()
    }

    /// Token ids for a batch of prompts, padded and truncated the way the model expects.
    pub fn tokenize(&self, texts: &[String]) -> Result<Vec<Vec<u32>>> {
        Ok(self
            .tokenize_trimmed(texts)?
            .into_iter()
            .map(|(ids, _)| ids)
            .collect())
    }

    /// [`Self::tokenize`], with each prompt's length without padding.
    fn tokenize_trimmed(&self, texts: &[String]) -> Result<Vec<(Vec<u32>, usize)>> {
        let encodings = self.tokenizer.encode_batch(texts).map_err(|e| {
            Error::Options(format!("cannot tokenize labels for {}: {e}", self.name))
        })?;
        Ok(encodings
            .iter()
            .map(|e| {
                let real = e.get_attention_mask().iter().filter(|&&m| m != 0).count();
                (e.get_ids().to_vec(), real)
            })
            .collect())
    }

    /// Text embeddings `[n, dim]` (projected, not normalized) for a list of prompts, encoded in
    /// batches of at most [`TEXT_BATCH`].
    ///
    /// Where the model pads to the longest prompt (CLIP), padding changes nothing: the causal
    /// mask keeps it from the pooled end-of-text position. So prompts run in batches of equal
    /// length without any padding — a quarter to a third fewer positions through the text tower
    /// for typical label lists — and their embeddings are put back in the caller's order.
    /// Models that attend to their padding (SigLIP) keep it.
    pub fn encode_texts(&self, texts: &[String]) -> Result<Tensor> {
        let prompts = self.prompt_ids(texts)?;
        self.encode_ids(&prompts)
    }

    /// The token ids each prompt runs through the text tower with: padded where the model
    /// attends to its padding, trimmed of it where it does not (see [`Self::encode_texts`]).
    fn prompt_ids(&self, texts: &[String]) -> Result<Vec<Vec<u32>>> {
        if texts.is_empty() {
            return Err(Error::Options(
                "no labels to compare the images with".into(),
            ));
        }
        let trim = matches!(self.encoder.text_padding(), TextPadding::Longest { .. });
        Ok(self
            .tokenize_trimmed(texts)?
            .into_iter()
            .map(|(mut ids, real)| {
                if trim {
                    ids.truncate(real.max(1));
                }
                ids
            })
            .collect())
    }

    /// Embeddings `[n, dim]` (f32) of prompts given as token ids, in batches of equal length.
    fn encode_ids(&self, prompts: &[Vec<u32>]) -> Result<Tensor> {
        let mut order: Vec<usize> = (0..prompts.len()).collect();
        order.sort_by_key(|&i| prompts[i].len());
        let mut batches = Vec::new();
        let mut start = 0;
        while start < order.len() {
            let len = prompts[order[start]].len();
            let run = order[start..]
                .iter()
                .take(TEXT_BATCH)
                .take_while(|&&i| prompts[i].len() == len)
                .count();
            let flat: Vec<u32> = order[start..start + run]
                .iter()
                .flat_map(|&i| prompts[i].iter().copied())
                .collect();
            let ids = Tensor::from_vec(flat, (run, len), &self.device)?;
            batches.push(self.encoder.embed_texts(&ids)?.to_dtype(DType::F32)?);
            start += run;
        }
        let sorted = Tensor::cat(&batches, 0)?;
        // Row r of `sorted` is prompt order[r]; prompt i is row position[i].
        let mut position = vec![0u32; order.len()];
        for (r, &i) in order.iter().enumerate() {
            position[i] = r as u32;
        }
        let position = Tensor::from_vec(position, order.len(), sorted.device())?;
        Ok(sorted.index_select(&position, 0)?)
    }

    /// [`Self::encode_texts`] through the on-disk cache: only prompts it lacks are encoded, and
    /// added to it. Returns the embeddings and how many came from the cache.
    fn encode_texts_cached(
        &self,
        texts: &[String],
        cache: &mut EmbeddingCache,
    ) -> Result<(Tensor, usize)> {
        let prompts = self.prompt_ids(texts)?;
        let missing: Vec<usize> = (0..prompts.len())
            .filter(|&i| cache.get(&prompts[i]).is_none())
            .collect();
        if !missing.is_empty() {
            let todo: Vec<Vec<u32>> = missing.iter().map(|&i| prompts[i].clone()).collect();
            let encoded = self.encode_ids(&todo)?.to_vec2::<f32>()?;
            for (ids, values) in todo.into_iter().zip(encoded) {
                cache.insert(ids, values);
            }
        }
        let rows: Vec<f32> = prompts
            .iter()
            .flat_map(|ids| {
                cache
                    .get(ids)
                    .expect("every prompt is cached now")
                    .iter()
                    .copied()
            })
            .collect();
        let n = prompts.len();
        let dim = rows.len() / n;
        let embeds = Tensor::from_vec(rows, (n, dim), &self.device)?;
        Ok((embeds, n - missing.len()))
    }

    /// Stacks CHW pixel buffers into a `[batch, 3, H, W]` tensor on the model's device.
    pub fn pixels_to_tensor(&self, pixels: &[impl AsRef<[f32]>]) -> Result<Tensor> {
        self.preprocessor.batch(pixels, &self.device, self.dtype)
    }

    /// Image embeddings `[b, dim]` (projected, not normalized).
    pub fn embed_images(&self, pixels: &Tensor) -> Result<Tensor> {
        let pixels = pixels.to_device(&self.device)?.to_dtype(self.dtype)?;
        Ok(self.encoder.embed_images(&pixels)?.to_dtype(DType::F32)?)
    }

    /// `logits_per_image` `[b, n]`: scaled cosine similarities, plus the bias for SigLIP.
    pub fn logits(&self, image_embeds: &Tensor, text_embeds: &Tensor) -> Result<Tensor> {
        let img = l2_normalize(&image_embeds.to_dtype(DType::F32)?)?;
        let txt = l2_normalize(&text_embeds.to_dtype(DType::F32)?)?;
        let scale = f64::from(self.encoder.logit_scale().exp());
        let logits = (img.matmul(&txt.t()?)? * scale)?;
        Ok(match self.encoder.logit_bias() {
            Some(bias) => (logits + f64::from(bias))?,
            None => logits,
        })
    }

    /// Per-label probabilities `[b, n]`: a softmax over labels (CLIP) or independent sigmoids
    /// (SigLIP).
    pub fn scores(&self, image_embeds: &Tensor, text_embeds: &Tensor) -> Result<Tensor> {
        let logits = self.logits(image_embeds, text_embeds)?;
        Ok(match self.encoder.scoring() {
            Scoring::Softmax => candle_nn::ops::softmax_last_dim(&logits)?,
            Scoring::Sigmoid => candle_nn::ops::sigmoid(&logits)?,
        })
    }

    /// Per-label scores `[b, n]` that do not depend on the other labels, for multi-label use:
    /// SigLIP's sigmoid probabilities, and for CLIP (whose softmax is relative to the label set)
    /// the cosine similarity of the embeddings.
    pub fn independent_scores(
        &self,
        image_embeds: &Tensor,
        text_embeds: &Tensor,
    ) -> Result<Tensor> {
        match self.encoder.scoring() {
            Scoring::Sigmoid => self.scores(image_embeds, text_embeds),
            Scoring::Softmax => {
                let img = l2_normalize(&image_embeds.to_dtype(DType::F32)?)?;
                let txt = l2_normalize(&text_embeds.to_dtype(DType::F32)?)?;
                Ok(img.matmul(&txt.t()?)?)
            }
        }
    }

    /// Prompt-ensemble text embeddings `[labels, dim]`, normalized: each template (with `{}`
    /// standing for the label) is embedded and normalized, the templates are averaged and the
    /// mean is normalized again (CLIP's zero-shot ImageNet recipe).
    ///
    /// The prompts' embeddings are kept on disk (see [`crate::load::embedding_cache`]), so a
    /// label set already seen with this model costs a file read. A cache that cannot be written
    /// costs a warning, never the run.
    pub fn ensemble_text_embeds(
        &self,
        labels: &[String],
        templates: &[String],
    ) -> Result<(Tensor, PromptStats)> {
        if templates.is_empty() {
            return Err(Error::Options("no prompt templates given".into()));
        }
        let started = std::time::Instant::now();
        let mut cache = self
            .prompt_cache
            .as_ref()
            .map(|(dir, key)| EmbeddingCache::open(dir, key));
        let mut cached = 0;
        let per_template = templates
            .iter()
            .map(|t| {
                let prompts: Vec<String> = labels.iter().map(|l| t.replace("{}", l)).collect();
                let embeds = match cache.as_mut() {
                    Some(cache) => {
                        let (embeds, hits) = self.encode_texts_cached(&prompts, cache)?;
                        cached += hits;
                        embeds
                    }
                    None => self.encode_texts(&prompts)?,
                };
                l2_normalize(&embeds)
            })
            .collect::<Result<Vec<_>>>()?;
        if let Some(cache) = cache.as_mut() {
            if let Err(e) = cache.save() {
                eprintln!("glance: warning: label embeddings not cached: {e}");
            }
        }
        let mean = Tensor::stack(&per_template, 0)?.mean(0)?;
        timings::add("label prompts", started.elapsed().as_secs_f64());
        let stats = PromptStats {
            templates: templates.len(),
            prompts: labels.len() * templates.len(),
            cached,
            seconds: started.elapsed().as_secs_f64(),
        };
        Ok((l2_normalize(&mean)?, stats))
    }
}
