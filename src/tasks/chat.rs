//! Captions from instruction-following vision–language models (Qwen3-VL): each image and an
//! instruction rendered with the checkpoint's own chat template, the image placeholder expanded
//! to the image's token count, and the reply decoded with the shared loop under the
//! checkpoint's `generation_config.json`.

use std::sync::Arc;

use candle_core::{DType, Device};
use serde_json::{Map, Value};
use tokenizers::Tokenizer;

use crate::error::{Error, Result};
use crate::generation::{self, GenerationParams, Overrides};
use crate::load::chat_template::ChatTemplate;
use crate::load::hub::ModelFiles;
use crate::load::{load_tokenizer, read_json, weights};
use crate::models::qwen3_vl::{Prompt, Qwen3Vl, Qwen3VlConfig};
use crate::preprocess::patches::PatchProcessor;
use crate::preprocess::{ImageProcessor, Pixels};
use crate::tasks::{Prepared, Stage, Usage};
use crate::timings;

/// Pixels per image unless the user asks for more: about 1k image tokens at patch 16 (4k at
/// patch 14 before merging), where the checkpoints allow 16.7 M pixels (16k tokens).
pub const DEFAULT_MAX_PIXELS: u64 = 1 << 20;

/// New tokens per reply where neither the user nor `generation_config.json` sets a limit
/// (transformers' own default, 20 tokens in all, is shorter than any image prompt).
pub const DEFAULT_MAX_NEW_TOKENS: usize = 256;

/// What a chat-model caption run is asked for.
#[derive(Debug, Clone, Default)]
pub struct ChatOptions {
    /// The user's instruction (a preset's text or the user's own).
    pub instruction: String,
    pub system: Option<String>,
    pub min_pixels: Option<u64>,
    pub max_pixels: Option<u64>,
    pub generation: Overrides,
    /// Ignore the checkpoint's sampling settings and take the most likely token.
    pub greedy: bool,
    /// Print nothing to standard error.
    pub quiet: bool,
}

/// Whether `config.json` names a chat model (which `glance caption` runs through this module).
pub fn is_chat_model(config: &Value) -> bool {
    matches!(
        crate::models::Architecture::from_config(config, ""),
        Ok(crate::models::Architecture::Qwen3Vl(_))
    )
}

pub struct ChatCaptioner {
    model: Qwen3Vl,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    processor: PatchProcessor,
    /// The image placeholder the template writes, expanded to one per image token.
    image_token: String,
    eos: Vec<u32>,
    /// The checkpoint's decoding defaults (`generation_config.json`).
    defaults: GenerationParams,
    name: String,
}

impl ChatCaptioner {
    pub fn load(files: &ModelFiles, device: &Device, dtype: DType) -> Result<Self> {
        let name = files.source().name();
        let bad = |file: &str, message: String| Error::Config {
            file: format!("{file} of {name}"),
            message,
        };
        let (config, cfg, generation) = timings::phase("configs", || -> Result<_> {
            let config = read_json(&files.get("config.json")?)?;
            let cfg: Qwen3VlConfig = serde_json::from_value(config.clone())
                .map_err(|e| bad("config.json", e.to_string()))?;
            let generation = match files.get_optional("generation_config.json")? {
                Some(path) => read_json(&path)?,
                None => Value::Null,
            };
            Ok((config, cfg, generation))
        })?;
        let vb = timings::phase("weights opened", || {
            weights::var_builder(&files.weights()?, dtype, device)
        })?;
        let model = timings::phase("model built", || Qwen3Vl::new(&cfg, vb))?;
        let processor = timings::phase("configs", || {
            PatchProcessor::from_file(&files.get("preprocessor_config.json")?)
        })?;
        let tokenizer = timings::phase("tokenizer", || load_tokenizer(files))?;
        let template = ChatTemplate::from_files(files)?;
        let image_token = tokenizer.id_to_token(cfg.image_token_id).ok_or_else(|| {
            bad(
                "tokenizer.json",
                format!("no token for image_token_id {}", cfg.image_token_id),
            )
        })?;
        // transformers stops at generation_config's eos ids, else the config's.
        let eos = [
            &generation["eos_token_id"],
            &config["text_config"]["eos_token_id"],
            &config["eos_token_id"],
        ]
        .into_iter()
        .find_map(ids)
        .ok_or_else(|| bad("generation_config.json", "no eos_token_id".into()))?;
        Ok(Self {
            model,
            tokenizer,
            template,
            processor,
            image_token,
            eos,
            defaults: GenerationParams::from_generation_config(&generation, DEFAULT_MAX_NEW_TOKENS),
            name,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn processor(&self) -> &PatchProcessor {
        &self.processor
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The checkpoint's decoding defaults.
    pub fn defaults(&self) -> &GenerationParams {
        &self.defaults
    }

    /// The prompt for one image and `instruction`, the template rendered once per run: its single
    /// image placeholder is expanded per image by [`ChatCaptioner::prompt_ids`].
    pub fn render(&self, system: Option<&str>, instruction: &str) -> Result<String> {
        let rendered = self.template.render_image_prompt(system, instruction)?;
        let placeholders = rendered.matches(&self.image_token).count();
        if placeholders != 1 {
            return Err(Error::Config {
                file: format!("the chat template of {}", self.name),
                message: format!(
                    "a prompt with one image renders {placeholders} {} placeholders, expected one",
                    self.image_token
                ),
            });
        }
        Ok(rendered)
    }

    /// The token ids of a [`ChatCaptioner::render`]ed prompt for an image of `image_tokens`
    /// tokens: the placeholder expanded to that many copies, tokenized as the processor does.
    pub fn prompt_ids(&self, rendered: &str, image_tokens: usize) -> Result<Vec<u32>> {
        let expanded = rendered.replace(&self.image_token, &self.image_token.repeat(image_tokens));
        let enc = self
            .tokenizer
            .encode(expanded, true)
            .map_err(|e| Error::Options(format!("cannot tokenize the prompt: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Replies to a batch of prompts: `n` rows per prompt, each `(new tokens, stop token
    /// included when reached)`, with `seeds` one per prompt.
    pub fn generate(
        &self,
        prompts: &[Prompt],
        params: &GenerationParams,
        seeds: &[u64],
    ) -> Result<Vec<Vec<Vec<u32>>>> {
        let n = match params.do_sample {
            true => params.num_return_sequences,
            false => 1,
        };
        let rows: Vec<Prompt> = prompts
            .iter()
            .flat_map(|p| std::iter::repeat_n(p.clone(), n))
            .collect();
        let started = std::time::Instant::now();
        let (mut session, first) = self.model.prefill(&rows)?;
        let timings = crate::timings_enabled();
        if timings {
            // A GPU returns before its work is done: wait for it, so the split is honest.
            first.device().synchronize()?;
        }
        let prefilled = started.elapsed();
        let seqs: Vec<Vec<u32>> = rows.iter().map(|p| p.ids.clone()).collect();
        let out = generation::decode(
            first,
            &mut session,
            seqs,
            params,
            &self.eos,
            &generation::row_seeds(seeds, n),
        )?;
        if timings {
            let prompt_tokens: usize = rows.iter().map(|p| p.ids.len()).sum();
            let new_tokens: usize = out
                .iter()
                .zip(&rows)
                .map(|(s, p)| s.len() - p.ids.len())
                .sum();
            eprintln!(
                "glance timings: batch {} prefill {:.2}s ({prompt_tokens} tokens) decode {:.2}s ({} tokens)",
                rows.len(),
                prefilled.as_secs_f64(),
                (started.elapsed() - prefilled).as_secs_f64(),
                new_tokens.saturating_sub(rows.len()),
            );
        }
        let mut replies = vec![Vec::with_capacity(n); prompts.len()];
        for (r, (seq, row)) in out.into_iter().zip(&rows).enumerate() {
            replies[r / n].push(seq[row.ids.len()..].to_vec());
        }
        Ok(replies)
    }

    /// A reply's text and reasoning: special tokens skipped, a `<think>…</think>` block split
    /// off, both trimmed.
    pub fn reply(&self, tokens: &[u32]) -> Result<Reply> {
        let text = self
            .tokenizer
            .decode(tokens, true)
            .map_err(|e| Error::Options(format!("cannot decode tokens: {e}")))?;
        let cut = !tokens.last().is_some_and(|t| self.eos.contains(t));
        Ok(Reply::parse(&text, cut))
    }
}

/// `eos_token_id` as transformers allows it: one id or a list.
fn ids(value: &Value) -> Option<Vec<u32>> {
    match value {
        Value::Number(n) => n.as_u64().map(|id| vec![id as u32]),
        Value::Array(list) => {
            let ids: Vec<u32> = list
                .iter()
                .filter_map(|v| v.as_u64())
                .map(|v| v as u32)
                .collect();
            (!ids.is_empty()).then_some(ids)
        }
        _ => None,
    }
}

/// A model's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub caption: String,
    /// The text of a `<think>` block, when the model wrote one.
    pub reasoning: Option<String>,
    /// Ended at the token limit rather than at an end-of-sequence token.
    pub truncated: bool,
}

impl Reply {
    fn parse(text: &str, truncated: bool) -> Self {
        let (reasoning, caption) = match text.split_once("</think>") {
            Some((thought, answer)) => {
                let thought = thought.trim_start().trim_start_matches("<think>");
                (Some(thought.trim().to_string()), answer.trim())
            }
            // A thought cut at the limit: no answer yet.
            None => match text.trim_start().strip_prefix("<think>") {
                Some(thought) => (Some(thought.trim().to_string()), ""),
                None => (None, text.trim()),
            },
        };
        Self {
            caption: caption.to_string(),
            reasoning,
            truncated,
        }
    }
}

/// A chat model as a caption stage: fields `caption`, `truncated`, and `reasoning` when the
/// model thinks aloud (`captions` with several replies per image).
pub struct ChatStage {
    pub name: String,
    captioner: Arc<ChatCaptioner>,
    processor: PatchProcessor,
    /// The chat template rendered with the system message and instruction.
    prompt: String,
    params: GenerationParams,
    /// Say how many image tokens the first batch has, once.
    report_tokens: bool,
}

impl ChatStage {
    pub fn new(captioner: impl Into<Arc<ChatCaptioner>>, options: ChatOptions) -> Result<Self> {
        let captioner = captioner.into();
        let processor = Self::processor_for(&captioner, &options)?;
        let mut params = captioner.defaults().clone().with(&options.generation);
        if options.greedy {
            params.do_sample = false;
        }
        if params.num_beams > 1 {
            return Err(Error::Options(
                "beam search is not supported for chat models: use greedy decoding or sampling"
                    .into(),
            ));
        }
        params.validate()?;
        if options.instruction.trim().is_empty() {
            return Err(Error::Options("the prompt is empty".into()));
        }
        // A template that cannot render fails the run here, not every batch.
        let prompt = captioner.render(options.system.as_deref(), &options.instruction)?;
        Ok(Self {
            name: "caption".into(),
            captioner,
            processor,
            prompt,
            params,
            report_tokens: !options.quiet,
        })
    }

    pub fn params(&self) -> &GenerationParams {
        &self.params
    }

    /// The checkpoint's patch processor within the pixel budget `options` ask for (at most
    /// [`DEFAULT_MAX_PIXELS`] unless they say otherwise): what the stage's images need.
    pub fn processor_for(
        captioner: &ChatCaptioner,
        options: &ChatOptions,
    ) -> Result<PatchProcessor> {
        let mut processor = captioner.processor().clone();
        let max = options
            .max_pixels
            .unwrap_or(processor.max_pixels.min(DEFAULT_MAX_PIXELS));
        let min = options.min_pixels.unwrap_or(processor.min_pixels.min(max));
        if min > max {
            return Err(Error::Options(format!(
                "--min-pixels {min} is above --max-pixels {max}"
            )));
        }
        processor.min_pixels = min;
        processor.max_pixels = max;
        Ok(processor)
    }
}

impl Stage for ChatStage {
    fn name(&self) -> &str {
        &self.name
    }

    fn preprocessors(&self) -> Vec<ImageProcessor> {
        vec![ImageProcessor::Patches(self.processor.clone())]
    }

    fn run(&mut self, batch: &[Prepared], pixels: &[usize]) -> Result<Vec<Map<String, Value>>> {
        let counted = self.run_counted(batch, pixels)?;
        Ok(counted.into_iter().map(|(fields, _)| fields).collect())
    }
}

impl ChatStage {
    /// [`Stage::run`] with each image's token counts.
    pub fn run_counted(
        &mut self,
        batch: &[Prepared],
        pixels: &[usize],
    ) -> Result<Vec<(Map<String, Value>, Usage)>> {
        let merge = self.processor.merge_size;
        let mut prompts = Vec::with_capacity(batch.len());
        for p in batch {
            let Pixels::Patches(patches) = &p.pixels[pixels[0]] else {
                unreachable!("a chat stage's processor makes patches");
            };
            let ids = self
                .captioner
                .prompt_ids(&self.prompt, patches.tokens(merge))?;
            prompts.push(Prompt {
                ids,
                images: vec![patches.clone()],
            });
        }
        if std::mem::take(&mut self.report_tokens) {
            let tokens: Vec<String> = prompts
                .iter()
                .map(|p| p.images[0].tokens(merge).to_string())
                .collect();
            eprintln!(
                "glance: image tokens in the first batch: {} (at most {} pixels an image; --max-pixels changes it)",
                tokens.join(", "),
                self.processor.max_pixels
            );
        }
        let seeds: Vec<u64> = batch
            .iter()
            .map(|p| generation::seed_for(self.params.seed, &p.name))
            .collect();
        let replies = self.captioner.generate(&prompts, &self.params, &seeds)?;
        replies
            .iter()
            .zip(&prompts)
            .map(|(rows, prompt)| {
                let replies = rows
                    .iter()
                    .map(|tokens| self.captioner.reply(tokens))
                    .collect::<Result<Vec<_>>>()?;
                let usage = Usage {
                    prompt_tokens: prompt.ids.len(),
                    completion_tokens: rows[0].len(),
                    truncated: replies[0].truncated,
                };
                Ok((reply_fields(&replies), usage))
            })
            .collect()
    }
}

fn reply_fields(replies: &[Reply]) -> Map<String, Value> {
    let mut fields = Map::new();
    let first = &replies[0];
    fields.insert("caption".into(), first.caption.clone().into());
    if let Some(r) = &first.reasoning {
        fields.insert("reasoning".into(), r.clone().into());
    }
    fields.insert("truncated".into(), first.truncated.into());
    if replies.len() > 1 {
        let all: Vec<Value> = replies.iter().map(|r| r.caption.clone().into()).collect();
        fields.insert("captions".into(), all.into());
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_split_off_a_think_block() {
        let r = Reply::parse("<think>\nA cat, sitting.\n</think>\n\nA cat sits. ", false);
        assert_eq!(r.caption, "A cat sits.");
        assert_eq!(r.reasoning.as_deref(), Some("A cat, sitting."));
        let r = Reply::parse("<think>Still thinking", true);
        assert_eq!(
            (r.caption.as_str(), r.reasoning.as_deref()),
            ("", Some("Still thinking"))
        );
        let r = Reply::parse(" A dog. ", false);
        assert_eq!((r.caption.as_str(), r.reasoning), ("A dog.", None));
    }

    #[test]
    fn eos_ids_are_one_id_or_a_list() {
        assert_eq!(ids(&serde_json::json!(7)), Some(vec![7]));
        assert_eq!(ids(&serde_json::json!([2, 3])), Some(vec![2, 3]));
        assert_eq!(ids(&Value::Null), None);
    }
}
