//! Zero-shot classification and auto-labelling as runner stages: the label prompts are embedded
//! once, before the run, and every batch of images is scored against all of them at once.

use candle_core::Tensor;
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::models::Scoring;
use crate::preprocess::Preprocessor;
use crate::runner::{Prepared, Stage};
use crate::zero_shot::ImageTextModel;

/// The label written when no class is confident enough.
pub const UNKNOWN: &str = "unknown";

/// Default `--threshold` for per-label scores when none is given: SigLIP's sigmoid probabilities
/// of true matches are often well below one half, and CLIP ViT-B cosines of matching pairs are
/// about 0.25–0.35 (see prompts/README.md). Starting points, to be tuned per model.
pub fn default_threshold(scoring: Scoring) -> f32 {
    match scoring {
        Scoring::Sigmoid => 0.1,
        Scoring::Softmax => 0.25,
    }
}

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

/// A zero-shot stage: the model, the labels and their (normalized) text embeddings.
pub struct ZeroShotStage {
    model: ImageTextModel,
    labels: Vec<String>,
    text_embeds: Tensor,
    mode: Mode,
    name: String,
}

impl ZeroShotStage {
    /// Embeds every `label` in every template once (see
    /// [`ImageTextModel::ensemble_text_embeds`]). `name` is the stage's name in a pipeline.
    pub fn new(
        model: ImageTextModel,
        labels: Vec<String>,
        templates: &[String],
        mode: Mode,
        name: impl Into<String>,
    ) -> Result<Self> {
        crate::prompts::check_labels(&labels, "the labels")?;
        crate::prompts::check_templates(templates, "the templates")?;
        match &mode {
            Mode::Classify { top_k: 0, .. } => {
                return Err(Error::Options("--top-k must be at least 1".into()))
            }
            Mode::Label { max_tags: 0, .. } => {
                return Err(Error::Options("--max-tags must be at least 1".into()))
            }
            _ => {}
        }
        let text_embeds = model.ensemble_text_embeds(&labels, templates)?;
        Ok(Self {
            model,
            labels,
            text_embeds,
            mode,
            name: name.into(),
        })
    }

    pub fn model(&self) -> &ImageTextModel {
        &self.model
    }

    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Score rows `[b][labels]` for a batch of pixel buffers, as this stage's mode reads them.
    pub fn score_pixels(&self, pixels: &[&[f32]]) -> Result<Vec<Vec<f32>>> {
        let tensor = self.model.pixels_to_tensor(pixels)?;
        let image_embeds = self.model.embed_images(&tensor)?;
        let scores = if self.per_label() {
            self.model
                .independent_scores(&image_embeds, &self.text_embeds)?
        } else {
            self.model.scores(&image_embeds, &self.text_embeds)?
        };
        Ok(scores.to_vec2::<f32>()?)
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

impl Stage for ZeroShotStage {
    fn name(&self) -> &str {
        &self.name
    }

    fn preprocessor(&self) -> &Preprocessor {
        self.model.preprocessor()
    }

    fn run(&mut self, batch: &[Prepared], index: usize) -> Result<Vec<Map<String, Value>>> {
        let pixels: Vec<&[f32]> = batch.iter().map(|p| p.pixels[index].as_slice()).collect();
        let rows = self.score_pixels(&pixels)?;
        Ok(rows.iter().map(|row| self.fields(row)).collect())
    }
}

/// `(index, score)` pairs, best first; ties keep label order. NaN sorts last.
fn rank(scores: &[f32]) -> Vec<(usize, f32)> {
    let mut ranked: Vec<(usize, f32)> = scores.iter().copied().enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked.sort_by(|a, b| a.1.is_nan().cmp(&b.1.is_nan()));
    ranked
}

/// An f32 as the JSON number that prints like it (0.9, not 0.899999976158142).
pub fn number(x: f32) -> Value {
    x.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
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
