//! The captioning task: a loaded model (encoder + decoder + tokenizer + preprocessing) that turns
//! a batch of preprocessed images into captions with the shared decode loop.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use tokenizers::Tokenizer;

use crate::error::{Error, Result};
use crate::generation::logits::TokenRules;
use crate::generation::{self, EarlyStopping, GenerationParams};
use crate::load::hub::ModelFiles;
use crate::load::{load_tokenizer, read_json, weights};
use crate::models::{self, Architecture, CaptionParts, PromptStyle, StopTokens};
use crate::preprocess::{ImageProcessor, Preprocessor, PreprocessorConfig};
use crate::tasks::clip_score::ClipScorer;
use crate::tasks::Usage;
use crate::timings;

/// One caption of one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Caption {
    pub text: String,
    /// Prompt and generated token ids, end-of-sequence included when reached.
    pub tokens: Vec<u32>,
    /// Beam score (length-penalised mean log-probability) when beam search produced it.
    pub score: Option<f32>,
}

pub struct Captioner {
    parts: CaptionParts,
    /// The checkpoint's token rules, applied whatever the decoding options.
    rules: TokenRules,
    /// `generation_config.json`'s `early_stopping`, for beam search.
    early_stopping: EarlyStopping,
    /// Florence-2's grounding phrases that are never boxes (empty for other models).
    grounding_banned: Vec<String>,
    tokenizer: Tokenizer,
    preprocessor: Preprocessor,
    device: Device,
    dtype: DType,
    name: String,
}

impl Captioner {
    pub fn load(files: &ModelFiles, device: &Device, dtype: DType) -> Result<Self> {
        let name = files.source().name();
        let (config, arch, generation) = timings::phase("configs", || -> Result<_> {
            let config = read_json(&files.get("config.json")?)?;
            let arch = Architecture::from_config(&config, &name)?;
            let generation = match files.get_optional("generation_config.json")? {
                Some(path) => Some((read_json(&path)?, path)),
                None => None,
            };
            Ok((config, arch, generation))
        })?;
        let vb = timings::phase("weights opened", || {
            weights::var_builder(&files.weights()?, dtype, device)
        })?;
        let started = std::time::Instant::now();
        let generation_fields = || -> Result<models::vision_encoder_decoder::GenerationConfig> {
            Ok(match &generation {
                Some((json, path)) => {
                    serde_json::from_value(json.clone()).map_err(|e| Error::json(path, e))?
                }
                None => Default::default(),
            })
        };
        let parts = match &arch {
            Architecture::Blip(cfg) => models::blip::load(cfg, vb)?,
            Architecture::VisionEncoderDecoder(cfg) => {
                models::vision_encoder_decoder::load(cfg, &generation_fields()?, vb, &name)?
            }
            Architecture::Florence2(cfg) => {
                models::florence2::load(cfg, &generation_fields()?, vb)?
            }
            Architecture::ImageClassifier(_) => {
                return Err(Error::WrongTask {
                    model: name,
                    kind: "an image classifier",
                    command: "classify",
                })
            }
            Architecture::Qwen3Vl(_) => {
                return Err(Error::Options(format!(
                    "{name} is a chat model: load it with tasks::chat::ChatCaptioner"
                )))
            }
            Architecture::Clip(_) | Architecture::Siglip(_) => {
                return Err(Error::WrongTask {
                    model: name,
                    kind: "an image-text model",
                    command: "classify",
                })
            }
        };
        timings::add("model built", started.elapsed().as_secs_f64());
        let preprocessor =
            timings::phase("configs", || match PreprocessorConfig::from_model(files)? {
                Some(cfg) => Preprocessor::new(cfg),
                None => Preprocessor::new(PreprocessorConfig::square(parts.image_size)),
            })?;
        let early_stopping = match &generation {
            Some((json, _)) => EarlyStopping::from_json(&json["early_stopping"]),
            None => EarlyStopping::from_json(&config["early_stopping"]),
        };
        let tokenizer = timings::phase("tokenizer", || load_tokenizer(files))?;
        // transformers takes these from generation_config.json, else from config.json.
        let (rules_from, file) = match &generation {
            Some((json, _)) => (json, "generation_config.json"),
            None => (&config, "config.json"),
        };
        let rules = TokenRules::from_config(rules_from, &parts.stop.eos).map_err(|message| {
            Error::Config {
                file: format!("{file} of {name}"),
                message,
            }
        })?;
        let grounding_banned = match parts.prompt {
            PromptStyle::Task { .. } => {
                let listed = match files.get_optional("processor_config.json")? {
                    Some(path) => {
                        models::florence2::processor::banned_grounding(&read_json(&path)?)
                    }
                    None => None,
                };
                listed.unwrap_or_else(|| {
                    models::florence2::processor::DEFAULT_BANNED_GROUNDING
                        .iter()
                        .map(|s| s.to_string())
                        .collect()
                })
            }
            _ => Vec::new(),
        };
        Ok(Self {
            parts,
            rules,
            early_stopping,
            grounding_banned,
            tokenizer,
            preprocessor,
            device: device.clone(),
            dtype,
            name,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn preprocessor(&self) -> &Preprocessor {
        &self.preprocessor
    }

    pub fn stop_tokens(&self) -> &StopTokens {
        &self.parts.stop
    }

    /// The decoder's starting ids for an optional text prompt.
    pub fn prompt_ids(&self, prompt: Option<&str>) -> Result<Vec<u32>> {
        match &self.parts.prompt {
            PromptStyle::ReplaceFirstDropLast { bos } => {
                let Some(text) = prompt else {
                    return Ok(vec![*bos]);
                };
                let enc = self
                    .tokenizer
                    .encode(text, true)
                    .map_err(|e| Error::Options(format!("cannot tokenize prompt {text:?}: {e}")))?;
                let mut ids = enc.get_ids().to_vec();
                if ids.len() < 2 {
                    return Err(Error::Options(format!(
                        "prompt {text:?} tokenizes to nothing"
                    )));
                }
                ids[0] = *bos;
                ids.pop();
                Ok(ids)
            }
            PromptStyle::Task { start, .. } => Ok(vec![*start]),
            PromptStyle::StartThenText { start } => {
                let mut ids = vec![*start];
                if let Some(text) = prompt {
                    let enc = self.tokenizer.encode(text, false).map_err(|e| {
                        Error::Options(format!("cannot tokenize prompt {text:?}: {e}"))
                    })?;
                    if enc.get_ids().is_empty() {
                        return Err(Error::Options(format!(
                            "prompt {text:?} tokenizes to nothing"
                        )));
                    }
                    ids.extend_from_slice(enc.get_ids());
                }
                Ok(ids)
            }
        }
    }

    /// The ids a prompt-reading encoder (Florence-2) gets for `prompt`, a task token or text
    /// (the model's default task when `None`): `<s>`, the expanded task, `</s>`. `None` for
    /// models whose encoder reads only the image.
    pub fn encoder_ids(&self, prompt: Option<&str>) -> Result<Option<Vec<u32>>> {
        let PromptStyle::Task { bos, eos, .. } = self.parts.prompt else {
            return Ok(None);
        };
        let task = prompt.unwrap_or(models::florence2::processor::DEFAULT_CAPTION_TASK);
        let text = models::florence2::processor::expand(task)?;
        let enc = self
            .tokenizer
            .encode(text.as_str(), false)
            .map_err(|e| Error::Options(format!("cannot tokenize prompt {text:?}: {e}")))?;
        let mut ids = vec![bos];
        ids.extend_from_slice(enc.get_ids());
        ids.push(eos);
        Ok(Some(ids))
    }

    /// Whether the prompt is a task the encoder reads (Florence-2) rather than a caption prefix.
    pub fn reads_tasks(&self) -> bool {
        matches!(self.parts.prompt, PromptStyle::Task { .. })
    }

    /// Phrases phrase grounding never boxes (Florence-2's `banned_grounding_tokens`).
    pub fn grounding_banned(&self) -> &[String] {
        &self.grounding_banned
    }

    /// The tokenizer, for callers that read generated ids themselves (detection).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The model's default beam count (`generation_config.json`), 1 when it names none.
    pub fn default_num_beams(&self) -> usize {
        self.parts.default_num_beams.unwrap_or(1).max(1)
    }

    /// Resolves `max_new_tokens` when the user gave none: transformers' default total length.
    pub fn default_max_new_tokens(&self, prompt_len: usize) -> usize {
        self.parts
            .default_max_length
            .saturating_sub(prompt_len)
            .max(1)
    }

    /// Stacks CHW pixel buffers into a `[batch, 3, H, W]` tensor on the model's device.
    pub fn pixels_to_tensor(&self, pixels: &[impl AsRef<[f32]>]) -> Result<Tensor> {
        self.preprocessor.batch(pixels, &self.device, self.dtype)
    }

    /// Image features `[batch, positions, dim]`.
    pub fn encode(&self, pixels: &Tensor) -> Result<Tensor> {
        self.encode_prompted(pixels, None)
    }

    /// Captions for a batch: `num_return_sequences` per image, in order.
    pub fn caption(
        &self,
        pixels: &Tensor,
        prompt_ids: &[u32],
        params: &GenerationParams,
        seeds: &[u64],
    ) -> Result<Vec<Vec<Caption>>> {
        self.caption_prompted(pixels, None, prompt_ids, params, seeds)
    }

    /// Encoder states for a batch, with the encoder's prompt where it reads one.
    pub fn encode_prompted(&self, pixels: &Tensor, encoder_ids: Option<&[u32]>) -> Result<Tensor> {
        let pixels = pixels.to_dtype(self.dtype)?;
        match encoder_ids {
            Some(ids) => self.parts.encoder.encode_with_prompt(&pixels, ids),
            None => self.parts.encoder.encode(&pixels),
        }
    }

    /// [`Captioner::caption`] for models whose encoder reads a prompt too
    /// ([`Captioner::encoder_ids`]).
    pub fn caption_prompted(
        &self,
        pixels: &Tensor,
        encoder_ids: Option<&[u32]>,
        prompt_ids: &[u32],
        params: &GenerationParams,
        seeds: &[u64],
    ) -> Result<Vec<Vec<Caption>>> {
        let timings = crate::timings_enabled();
        let started = std::time::Instant::now();
        let features = self.encode_prompted(pixels, encoder_ids)?;
        if timings {
            // A GPU returns before its work is done: wait for it, so the split is honest.
            pixels.device().synchronize()?;
        }
        let encoded = started.elapsed();
        let params = GenerationParams {
            rules: self.rules.clone(),
            ..params.clone()
        };
        let generated = generation::generate(
            self.parts.decoder.as_ref(),
            &features,
            prompt_ids,
            &params,
            &self.parts.stop,
            seeds,
        )?;
        if timings {
            eprintln!(
                "glance timings: batch {} encode {:.2}s generate {:.2}s",
                pixels.dim(0)?,
                encoded.as_secs_f64(),
                (started.elapsed() - encoded).as_secs_f64()
            );
        }
        generated
            .into_iter()
            .map(|per_image| {
                per_image
                    .into_iter()
                    .map(|g| {
                        Ok(Caption {
                            text: self.decode(&g.tokens)?,
                            tokens: g.tokens,
                            score: g.score,
                        })
                    })
                    .collect()
            })
            .collect()
    }

    /// Token ids to text, special tokens skipped, as `processor.decode(skip_special_tokens=True)`.
    pub fn decode(&self, tokens: &[u32]) -> Result<String> {
        let text = self
            .tokenizer
            .decode(tokens, true)
            .map_err(|e| Error::Options(format!("cannot decode tokens: {e}")))?;
        Ok(text.trim().to_string())
    }
}

/// Captioning as a runner stage: fields `caption` (and `captions`, `score` when asked for).
pub struct CaptionStage {
    /// "caption", or the stage's name in a pipeline.
    pub name: String,
    /// Shared: a server builds a stage per request's options over one loaded model.
    pub captioner: Arc<Captioner>,
    pub prompt_ids: Vec<u32>,
    /// What a prompt-reading encoder (Florence-2) reads.
    pub encoder_ids: Option<Vec<u32>>,
    pub params: GenerationParams,
    /// Chooses among the candidates by CLIPScore when set ([`CaptionStage::rerank_with`]).
    pub reranker: Option<ClipScorer>,
}

impl CaptionStage {
    /// Resolves the prompt, the default length and the default beam count (the model's, from
    /// `generation_config.json`, where the user gave none) once, before the run.
    pub fn new(
        captioner: impl Into<Arc<Captioner>>,
        prompt: Option<&str>,
        mut params: GenerationParams,
        max_new_tokens: Option<usize>,
        num_beams: Option<usize>,
    ) -> Result<Self> {
        let captioner = captioner.into();
        let prompt_ids = captioner.prompt_ids(prompt)?;
        let encoder_ids = captioner.encoder_ids(prompt)?;
        params.max_new_tokens =
            max_new_tokens.unwrap_or_else(|| captioner.default_max_new_tokens(prompt_ids.len()));
        params.num_beams = num_beams.unwrap_or_else(|| captioner.default_num_beams());
        params.early_stopping = captioner.early_stopping;
        params.validate()?;
        Ok(Self {
            name: "caption".into(),
            captioner,
            prompt_ids,
            encoder_ids,
            params,
            reranker: None,
        })
    }

    /// Keeps, of the candidates, the caption `judge` scores highest. Without an explicit
    /// `num_return_sequences` the candidates are the beams; greedy decoding has only one.
    pub fn rerank_with(mut self, judge: ClipScorer) -> Result<Self> {
        if self.params.num_return_sequences == 1 {
            self.params.num_return_sequences = self.params.num_beams;
        }
        if self.params.num_return_sequences < 2 {
            return Err(Error::Options(
                "reranking needs several candidates: give --num-beams N or --num-return-sequences N (with --do-sample)"
                    .into(),
            ));
        }
        self.params.validate()?;
        self.reranker = Some(judge);
        Ok(self)
    }
}

/// A caption record's fields: the first candidate is the caption unless a judge picks another.
fn caption_fields(
    caps: &[Caption],
    judged: Option<Vec<f32>>,
) -> serde_json::Map<String, serde_json::Value> {
    let mut fields = serde_json::Map::new();
    let best = match &judged {
        // The first of equal scores, so ties keep the decoder's order.
        Some(scores) => scores
            .iter()
            .enumerate()
            .fold(0, |best, (i, &s)| if s > scores[best] { i } else { best }),
        None => 0,
    };
    if let Some(chosen) = caps.get(best) {
        fields.insert("caption".into(), chosen.text.clone().into());
        if let Some(score) = chosen.score {
            fields.insert("score".into(), f64::from(score).into());
        }
        if let Some(scores) = &judged {
            fields.insert("clip_score".into(), crate::output::number(scores[best]));
        }
    }
    if caps.len() > 1 {
        let all: Vec<serde_json::Value> = caps.iter().map(|c| c.text.clone().into()).collect();
        fields.insert("captions".into(), all.into());
        if caps.iter().all(|c| c.score.is_some()) {
            let scores: Vec<serde_json::Value> = caps
                .iter()
                .map(|c| f64::from(c.score.unwrap_or_default()).into())
                .collect();
            fields.insert("scores".into(), scores.into());
        }
    }
    if let Some(scores) = judged {
        let all: Vec<serde_json::Value> = scores.into_iter().map(crate::output::number).collect();
        fields.insert("clip_scores".into(), all.into());
    }
    fields
}

impl crate::tasks::Stage for CaptionStage {
    fn name(&self) -> &str {
        &self.name
    }

    fn preprocessors(&self) -> Vec<ImageProcessor> {
        let mut own = vec![self.captioner.preprocessor()];
        own.extend(self.reranker.as_ref().map(|judge| judge.preprocessor()));
        own.into_iter()
            .map(|p| ImageProcessor::Fixed(p.clone()))
            .collect()
    }

    fn run(
        &mut self,
        batch: &[crate::tasks::Prepared],
        pixels: &[usize],
    ) -> Result<Vec<serde_json::Map<String, serde_json::Value>>> {
        let counted = self.run_counted(batch, pixels)?;
        Ok(counted.into_iter().map(|(fields, _)| fields).collect())
    }
}

impl CaptionStage {
    /// [`crate::tasks::Stage::run`] with each image's token counts.
    pub fn run_counted(
        &mut self,
        batch: &[crate::tasks::Prepared],
        pixels: &[usize],
    ) -> Result<Vec<(serde_json::Map<String, serde_json::Value>, Usage)>> {
        let of = |k: usize| -> Vec<&[f32]> {
            batch.iter().map(|p| p.pixels[pixels[k]].values()).collect()
        };
        let tensor = self.captioner.pixels_to_tensor(&of(0))?;
        let seeds: Vec<u64> = batch
            .iter()
            .map(|p| generation::seed_for(self.params.seed, &p.name))
            .collect();
        let captions = self.captioner.caption_prompted(
            &tensor,
            self.encoder_ids.as_deref(),
            &self.prompt_ids,
            &self.params,
            &seeds,
        )?;
        let judged: Vec<Option<Vec<f32>>> = match &self.reranker {
            Some(judge) => {
                let texts: Vec<Vec<String>> = captions
                    .iter()
                    .map(|caps| caps.iter().map(|c| c.text.clone()).collect())
                    .collect();
                judge
                    .score_candidates(&of(1), &texts)?
                    .into_iter()
                    .map(Some)
                    .collect()
            }
            None => vec![None; captions.len()],
        };
        let prompt_tokens =
            self.prompt_ids.len() + self.encoder_ids.as_ref().map_or(0, |ids| ids.len());
        Ok(captions
            .iter()
            .zip(judged)
            .map(|(caps, judged)| {
                let completion_tokens = caps
                    .first()
                    .map_or(0, |c| c.tokens.len().saturating_sub(self.prompt_ids.len()));
                let usage = Usage {
                    prompt_tokens,
                    completion_tokens,
                    truncated: completion_tokens >= self.params.max_new_tokens,
                };
                (caption_fields(caps, judged), usage)
            })
            .collect())
    }
}

impl Captioner {
    /// Logits of the first generated position for `features` and a prompt, `[batch, vocab]`:
    /// the float-level check against transformers' decoder.
    pub fn first_step_logits(&self, features: &Tensor, prompt_ids: &[u32]) -> Result<Tensor> {
        let decoder = self.parts.decoder.as_ref();
        let mut cache = decoder.new_cache(features)?;
        let b = features.dim(0)?;
        let ids = Tensor::new(prompt_ids, &self.device)?
            .unsqueeze(0)?
            .repeat((b, 1))?;
        Ok(decoder.forward(&ids, &mut cache)?.to_dtype(DType::F32)?)
    }
}
