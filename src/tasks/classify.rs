//! Classification and auto-labelling as runner stages, zero-shot (CLIP/SigLIP: the label prompts
//! are embedded once, before the run, and every batch of images is scored against all of them at
//! once) or closed-set (`*ForImageClassification`: the model's own `id2label`).

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::load::hub::ModelFiles;
use crate::load::{read_json, weights};
use crate::models::{Architecture, ClassifierConfig, ImageClassifier, Scoring};
use crate::output::{number, UNKNOWN};
use crate::preprocess::{ImageProcessor, Preprocessor, PreprocessorConfig};
use crate::tasks::zero_shot::{load_image_text, ImageTextModel, PromptStats};
use crate::tasks::{Prepared, Stage};
use crate::timings;

/// Default `--threshold` for per-label scores when none is given: SigLIP's sigmoid probabilities
/// of true matches are often well below one half, and CLIP ViT-B cosines of matching pairs are
/// about 0.25–0.35 (see prompts/README.md). Starting points, to be tuned per model. Closed-set
/// classifiers' probabilities (softmax or sigmoid) get 0.1 too.
pub fn default_threshold(model: &Recognizer) -> f32 {
    match model {
        Recognizer::ZeroShot(m) if m.encoder().scoring() == Scoring::Softmax => 0.25,
        _ => 0.1,
    }
}

/// A closed-set classifier with its classes and preprocessing.
pub struct ImageClassifierModel {
    model: Box<dyn ImageClassifier>,
    labels: Vec<String>,
    multi_label: bool,
    preprocessor: Preprocessor,
    device: Device,
    dtype: DType,
    name: String,
}

impl ImageClassifierModel {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The class names, in the model's id order.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    pub fn preprocessor(&self) -> &Preprocessor {
        &self.preprocessor
    }

    /// Logits `[b, classes]` for CHW pixel buffers.
    pub fn logits(&self, pixels: &[&[f32]]) -> Result<Tensor> {
        let t = self.preprocessor.batch(pixels, &self.device, self.dtype)?;
        Ok(self.model.logits(&t)?.to_dtype(DType::F32)?)
    }

    /// Probabilities `[b, classes]`: softmax, or sigmoid for `multi_label_classification` models
    /// (as transformers' image-classification pipeline does).
    pub fn probabilities(&self, pixels: &[&[f32]]) -> Result<Tensor> {
        let logits = self.logits(pixels)?;
        Ok(if self.multi_label {
            candle_nn::ops::sigmoid(&logits)?
        } else {
            candle_nn::ops::softmax_last_dim(&logits)?
        })
    }
}

/// A model that can classify: zero-shot image–text or closed-set.
// One per stage: the size difference of the variants (CLIP's two towers inline) costs nothing.
#[allow(clippy::large_enum_variant)]
/// The models are shared: a server builds a stage per request's labels over one loaded model.
#[derive(Clone)]
pub enum Recognizer {
    ZeroShot(Arc<ImageTextModel>),
    ClosedSet(Arc<ImageClassifierModel>),
}

impl Recognizer {
    pub fn name(&self) -> &str {
        match self {
            Recognizer::ZeroShot(m) => m.name(),
            Recognizer::ClosedSet(m) => m.name(),
        }
    }
}

/// Loads a CLIP/SigLIP model or an `*ForImageClassification`, whichever `config.json` names.
pub fn load_recognizer(files: &ModelFiles, device: &Device, dtype: DType) -> Result<Recognizer> {
    let name = files.source().name();
    let config = read_json(&files.get("config.json")?)?;
    let cfg: ClassifierConfig = match Architecture::from_config(&config, &name)? {
        Architecture::ImageClassifier(cfg) => *cfg,
        _ => {
            return Ok(Recognizer::ZeroShot(Arc::new(load_image_text(
                files, device, dtype,
            )?)))
        }
    };
    let vb = timings::phase("weights opened", || {
        weights::var_builder(&files.weights()?, dtype, device)
    })?;
    let model = timings::phase("model built", || cfg.build(vb))?;
    let preprocessor = timings::phase("configs", || {
        match files.get_optional("preprocessor_config.json")? {
            Some(path) => Preprocessor::new(PreprocessorConfig::from_file(&path)?),
            None => Preprocessor::new(PreprocessorConfig::square(cfg.image_size())),
        }
    })?;
    Ok(Recognizer::ClosedSet(Arc::new(ImageClassifierModel {
        model,
        labels: cfg.labels,
        multi_label: cfg.multi_label,
        preprocessor,
        device: device.clone(),
        dtype,
        name,
    })))
}

/// At most this many tags per image unless asked otherwise (`--max-tags`).
pub const DEFAULT_MAX_TAGS: usize = 20;

/// What a zero-shot stage writes.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// One class per image: `label`, `score` and the `top_k` best as `predictions`. With
    /// `multi_label` (a threshold) scores are per label (see
    /// [`ImageTextModel::independent_scores`]) and every label at or above it is in `labels`.
    /// `label` is [`UNKNOWN`] when the best score is below `min_score` (or, multi-label, when no
    /// label reaches the threshold).
    Classify {
        top_k: usize,
        min_score: Option<f32>,
        multi_label: Option<f32>,
    },
    /// Tags: every label scoring at least `threshold` (per-label scores), best first, at most
    /// `max_tags`, as `labels`.
    Label { threshold: f32, max_tags: usize },
}

#[allow(clippy::large_enum_variant)] // one per stage, as `Recognizer`
enum Scorer {
    /// The (normalized) text embeddings of the labels.
    ZeroShot {
        model: Arc<ImageTextModel>,
        text_embeds: Tensor,
        prompts: PromptStats,
    },
    ClosedSet(Arc<ImageClassifierModel>),
}

/// A classify or label stage: the model, the labels and what to write.
pub struct ClassifyStage {
    scorer: Scorer,
    labels: Vec<String>,
    mode: Mode,
    name: String,
}

fn check_mode(mode: &Mode) -> Result<()> {
    match mode {
        Mode::Classify { top_k: 0, .. } => Err(Error::Options("--top-k must be at least 1".into())),
        Mode::Label { max_tags: 0, .. } => {
            Err(Error::Options("--max-tags must be at least 1".into()))
        }
        _ => Ok(()),
    }
}

impl ClassifyStage {
    /// A stage over `model`: zero-shot models need `labels` (each embedded once in every
    /// template, see [`ImageTextModel::ensemble_text_embeds`]; no templates means the model's
    /// default, see [`crate::tasks::prompts::model_default_templates`]); closed-set classifiers
    /// use their own classes and take none. `name` is the stage's name in a pipeline.
    pub fn new(
        model: Recognizer,
        labels: Option<Vec<String>>,
        templates: &[String],
        mode: Mode,
        name: impl Into<String>,
    ) -> Result<Self> {
        match (model, labels) {
            (Recognizer::ZeroShot(m), Some(labels)) => Self::zero_shot(m, labels, templates, mode, name),
            (Recognizer::ZeroShot(m), None) => Err(Error::Options(format!(
                "{} is a zero-shot model: give the classes (--labels, --labels-file or a vocabulary)",
                m.name()
            ))),
            (Recognizer::ClosedSet(m), None) => {
                check_mode(&mode)?;
                Ok(Self {
                    labels: m.labels().to_vec(),
                    scorer: Scorer::ClosedSet(m),
                    mode,
                    name: name.into(),
                })
            }
            (Recognizer::ClosedSet(m), Some(_)) => Err(Error::Options(format!(
                "{} classifies into its own {} classes (id2label); labels are for zero-shot models (CLIP, SigLIP)",
                m.name(),
                m.labels().len()
            ))),
        }
    }

    /// A zero-shot stage; see [`ClassifyStage::new`].
    pub fn zero_shot(
        model: Arc<ImageTextModel>,
        labels: Vec<String>,
        templates: &[String],
        mode: Mode,
        name: impl Into<String>,
    ) -> Result<Self> {
        crate::tasks::prompts::check_labels(&labels, "the labels")?;
        let defaults;
        let templates = match templates {
            [] => {
                defaults =
                    crate::tasks::prompts::model_default_templates(model.encoder().scoring())?;
                &defaults[..]
            }
            given => given,
        };
        crate::tasks::prompts::check_templates(templates, "the templates")?;
        check_mode(&mode)?;
        let (text_embeds, prompts) =
            crate::kernels::on_compute_pool(|| model.ensemble_text_embeds(&labels, templates))?;
        Ok(Self {
            scorer: Scorer::ZeroShot {
                model,
                text_embeds,
                prompts,
            },
            labels,
            mode,
            name: name.into(),
        })
    }

    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// How the label prompts were embedded (zero-shot stages only).
    pub fn prompt_stats(&self) -> Option<PromptStats> {
        match &self.scorer {
            Scorer::ZeroShot { prompts, .. } => Some(*prompts),
            Scorer::ClosedSet(_) => None,
        }
    }

    pub fn model_name(&self) -> &str {
        match &self.scorer {
            Scorer::ZeroShot { model, .. } => model.name(),
            Scorer::ClosedSet(model) => model.name(),
        }
    }

    /// Score rows `[b][labels]` for a batch of pixel buffers, as this stage's mode reads them.
    pub fn score_pixels(&self, pixels: &[&[f32]]) -> Result<Vec<Vec<f32>>> {
        let timings = crate::timings_enabled();
        let started = std::time::Instant::now();
        // The image tower's share, for GLANCE_TIMINGS.
        let encoded;
        let scores = match &self.scorer {
            Scorer::ZeroShot {
                model, text_embeds, ..
            } => {
                let tensor = model.pixels_to_tensor(pixels)?;
                let image_embeds = model.embed_images(&tensor)?;
                if timings {
                    // A GPU returns before its work is done: wait for it, so the split is honest.
                    image_embeds.device().synchronize()?;
                }
                encoded = started.elapsed();
                if self.per_label() {
                    model.independent_scores(&image_embeds, text_embeds)?
                } else {
                    model.scores(&image_embeds, text_embeds)?
                }
            }
            Scorer::ClosedSet(model) => {
                let p = model.probabilities(pixels)?;
                encoded = started.elapsed();
                p
            }
        };
        let rows = scores.to_vec2::<f32>()?;
        if timings {
            eprintln!(
                "glance timings: batch {} encode {:.2}s scored in {:.2}s",
                pixels.len(),
                encoded.as_secs_f64(),
                started.elapsed().as_secs_f64()
            );
        }
        Ok(rows)
    }

    fn per_label(&self) -> bool {
        matches!(
            self.mode,
            Mode::Label { .. }
                | Mode::Classify {
                    multi_label: Some(_),
                    ..
                }
        )
    }

    /// The record fields of one image from its score row.
    pub fn fields(&self, scores: &[f32]) -> Map<String, Value> {
        let ranked = rank(scores);
        let entry = |&(i, s): &(usize, f32)| json!({"label": self.labels[i], "score": number(s)});
        let mut fields = Map::new();
        match self.mode {
            Mode::Classify {
                top_k,
                min_score,
                multi_label,
            } => {
                let (best, best_score) = ranked[0];
                let above: Vec<&(usize, f32)> = match multi_label {
                    Some(t) => ranked.iter().take_while(|(_, s)| *s >= t).collect(),
                    None => Vec::new(),
                };
                let confident = min_score.is_none_or(|m| best_score >= m)
                    && (multi_label.is_none() || !above.is_empty());
                let label = if confident {
                    self.labels[best].as_str()
                } else {
                    UNKNOWN
                };
                fields.insert("label".into(), label.into());
                fields.insert("score".into(), number(best_score));
                let predictions: Vec<Value> = ranked.iter().take(top_k).map(entry).collect();
                fields.insert("predictions".into(), predictions.into());
                if multi_label.is_some() {
                    let labels: Vec<Value> = above.into_iter().map(entry).collect();
                    fields.insert("labels".into(), labels.into());
                }
            }
            Mode::Label {
                threshold,
                max_tags,
            } => {
                let labels: Vec<Value> = ranked
                    .iter()
                    .take_while(|(_, s)| *s >= threshold)
                    .take(max_tags)
                    .map(entry)
                    .collect();
                fields.insert("labels".into(), labels.into());
            }
        }
        fields
    }
}

impl Stage for ClassifyStage {
    fn name(&self) -> &str {
        &self.name
    }

    fn preprocessors(&self) -> Vec<ImageProcessor> {
        let own = match &self.scorer {
            Scorer::ZeroShot { model, .. } => model.preprocessor(),
            Scorer::ClosedSet(model) => model.preprocessor(),
        };
        vec![ImageProcessor::Fixed(own.clone())]
    }

    fn run(&mut self, batch: &[Prepared], pixels: &[usize]) -> Result<Vec<Map<String, Value>>> {
        let pixels: Vec<&[f32]> = batch.iter().map(|p| p.pixels[pixels[0]].values()).collect();
        let rows = self.score_pixels(&pixels)?;
        Ok(rows.iter().map(|row| self.fields(row)).collect())
    }
}

/// `(index, score)` pairs, best first; ties keep label order. NaN sorts last.
fn rank(scores: &[f32]) -> Vec<(usize, f32)> {
    let mut ranked: Vec<(usize, f32)> = scores.iter().copied().enumerate().collect();
    ranked.sort_by(|a, b| {
        (a.1.is_nan().cmp(&b.1.is_nan()))
            .then(b.1.total_cmp(&a.1))
            .then(a.0.cmp(&b.0))
    });
    ranked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranking_is_stable_and_puts_nan_last() {
        let r = rank(&[0.2, f32::NAN, 0.5, 0.2]);
        let order: Vec<usize> = r.iter().map(|p| p.0).collect();
        assert_eq!(order, [2, 0, 3, 1]);
        assert_eq!(number(0.9), json!(0.9));
        assert_eq!(number(f32::NAN), Value::Null);
    }
}
