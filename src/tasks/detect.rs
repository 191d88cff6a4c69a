//! Detection with Florence-2: a task prompt (`<OD>`, `<DENSE_REGION_CAPTION>`, phrase grounding,
//! `<OCR_WITH_REGION>`), the shared decode loop, and the processor's reading of the `<loc_N>`
//! tokens as boxes in the original image's pixels. Records: `width`, `height` and
//! `detections`, `[{"label", "box": [x1, y1, x2, y2]}]` (plus `"polygon"` for text regions).

use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::generation::{self, GenerationParams};
use crate::models::florence2::processor::{self, Answer, Region};
use crate::preprocess::ImageProcessor;
use crate::tasks::caption::{CaptionStage, Captioner};
use crate::tasks::{Prepared, Stage};

/// One prompt of a detection run: the stage's task, or one grounding phrase of several.
struct Query {
    encoder_ids: Vec<u32>,
    /// The phrase a grounding query looks for: its boxes are labelled with it.
    phrase: Option<String>,
}

pub struct DetectStage {
    pub name: String,
    captioner: Arc<Captioner>,
    task: &'static str,
    queries: Vec<Query>,
    prompt_ids: Vec<u32>,
    params: GenerationParams,
}

impl DetectStage {
    /// `task` is a `--task` name ([`processor::DETECT_TASKS`]); grounding needs `phrases`, the
    /// other tasks take none.
    pub fn new(
        captioner: impl Into<Arc<Captioner>>,
        task: &str,
        phrases: Option<Vec<String>>,
        params: GenerationParams,
        max_new_tokens: Option<usize>,
        num_beams: Option<usize>,
    ) -> Result<Self> {
        let captioner: Arc<Captioner> = captioner.into();
        if !captioner.reads_tasks() {
            return Err(Error::Options(format!(
                "{} cannot detect: detection needs a Florence-2 model",
                captioner.name()
            )));
        }
        let token = processor::task_token(task, processor::DETECT_TASKS)?;
        let prompts: Vec<(String, Option<String>)> = match (token, phrases) {
            ("<CAPTION_TO_PHRASE_GROUNDING>", Some(phrases)) if !phrases.is_empty() => phrases
                .into_iter()
                .map(|p| (format!("{token}{p}"), Some(p)))
                .collect(),
            ("<CAPTION_TO_PHRASE_GROUNDING>", _) => {
                return Err(Error::Options(
                    "--task grounding needs the phrases to find: --labels \"a dog,a cat\" or --labels-file"
                        .into(),
                ))
            }
            (_, Some(_)) => {
                return Err(Error::Options(format!(
                    "--task {task} finds objects of its own; --labels is for --task grounding"
                )))
            }
            (_, None) => vec![(token.to_string(), None)],
        };
        // The stage's defaults as for captions: the checkpoint's beams and rules.
        let base = CaptionStage::new(captioner, Some(token), params, max_new_tokens, num_beams)?;
        let queries = prompts
            .into_iter()
            .map(|(prompt, phrase)| {
                Ok(Query {
                    encoder_ids: base
                        .captioner
                        .encoder_ids(Some(&prompt))?
                        .unwrap_or_default(),
                    phrase,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            name: "detect".into(),
            task: token,
            queries,
            prompt_ids: base.prompt_ids,
            params: base.params,
            captioner: base.captioner,
        })
    }

    pub fn captioner(&self) -> &Captioner {
        &self.captioner
    }

    pub fn params(&self) -> &GenerationParams {
        &self.params
    }
}

/// A region as a record entry.
pub fn region_json(region: &Region) -> Value {
    let mut entry = json!({"label": region.label, "box": region.bbox});
    if let Some(polygon) = &region.polygon {
        entry["polygon"] = json!(polygon);
    }
    entry
}

impl Stage for DetectStage {
    fn name(&self) -> &str {
        &self.name
    }

    fn preprocessors(&self) -> Vec<ImageProcessor> {
        vec![ImageProcessor::Fixed(self.captioner.preprocessor().clone())]
    }

    fn run(&mut self, batch: &[Prepared], pixels: &[usize]) -> Result<Vec<Map<String, Value>>> {
        let values: Vec<&[f32]> = batch.iter().map(|p| p.pixels[pixels[0]].values()).collect();
        let tensor = self.captioner.pixels_to_tensor(&values)?;
        let seeds: Vec<u64> = batch
            .iter()
            .map(|p| generation::seed_for(self.params.seed, &p.name))
            .collect();
        let mut found: Vec<Vec<Value>> = vec![Vec::new(); batch.len()];
        let answer = Answer::of(self.task);
        for query in &self.queries {
            let generated = self.captioner.caption_prompted(
                &tensor,
                Some(&query.encoder_ids),
                &self.prompt_ids,
                &self.params,
                &seeds,
            )?;
            for ((image, caps), out) in batch.iter().zip(&generated).zip(&mut found) {
                let raw = self
                    .captioner
                    .tokenizer()
                    .decode(&caps[0].tokens, false)
                    .map_err(|e| Error::Options(format!("cannot decode tokens: {e}")))?;
                let size = (image.width, image.height);
                for mut region in
                    processor::parse(&raw, answer, size, self.captioner.grounding_banned())
                {
                    if let Some(phrase) = &query.phrase {
                        region.label = phrase.clone();
                    }
                    out.push(region_json(&region));
                }
            }
        }
        Ok(batch
            .iter()
            .zip(found)
            .map(|(image, detections)| {
                let mut fields = Map::new();
                fields.insert("width".into(), image.width.into());
                fields.insert("height".into(), image.height.into());
                fields.insert("detections".into(), detections.into());
                fields
            })
            .collect())
    }
}
