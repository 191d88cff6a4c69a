//! `glance eval captions`: glance caption records against COCO captions references, matched by
//! file name, scored with the COCO toolkit's tokenization and metrics.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use super::base_name;
use super::metrics::{bleu, cider_d, rouge_l, Sample};
use super::ptb::tokenize;
use crate::error::{Error, Result};

/// The scores and what could not be scored.
#[derive(Debug, Clone, Serialize)]
pub struct CaptionReport {
    pub bleu_1: f64,
    pub bleu_2: f64,
    pub bleu_3: f64,
    pub bleu_4: f64,
    pub rouge_l: f64,
    pub cider: f64,
    /// Images with both a prediction and references.
    pub images_scored: usize,
    /// Reference images without a prediction (not scored).
    pub missing_predictions: Vec<String>,
    /// Predictions whose image has no references (not scored).
    pub unmatched_predictions: Vec<String>,
    /// Prediction records with an error or no caption (not scored).
    pub failed_predictions: Vec<String>,
}

/// References by file name from a COCO captions document.
pub fn read_references(path: &Path) -> Result<BTreeMap<String, Vec<String>>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let doc: Value = serde_json::from_str(&text).map_err(|e| Error::json(path, e))?;
    let bad = |m: &str| Error::config(path, format!("not a COCO captions file: {m}"));
    let images = doc["images"]
        .as_array()
        .ok_or_else(|| bad("no \"images\" array"))?;
    let mut names = BTreeMap::new();
    for image in images {
        let (Some(id), Some(name)) = (image.get("id"), image["file_name"].as_str()) else {
            return Err(bad("an image without id or file_name"));
        };
        names.insert(id.to_string(), base_name(name));
    }
    let mut refs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for ann in doc["annotations"]
        .as_array()
        .ok_or_else(|| bad("no \"annotations\" array"))?
    {
        let (Some(id), Some(caption)) = (ann.get("image_id"), ann["caption"].as_str()) else {
            return Err(bad("an annotation without image_id or caption"));
        };
        let name = names
            .get(&id.to_string())
            .ok_or_else(|| bad(&format!("annotation for unknown image_id {id}")))?;
        refs.entry(name.clone())
            .or_default()
            .push(caption.to_string());
    }
    Ok(refs)
}

/// Predictions by file name from glance's JSONL caption records (`file`, `caption`), with each
/// name's `file` as written; records with an `error` or without a caption are returned separately
/// (their `file` as written).
pub struct Predictions {
    pub captions: BTreeMap<String, String>,
    pub files: BTreeMap<String, String>,
    pub failed: Vec<String>,
}

pub fn read_predictions(path: &Path) -> Result<Predictions> {
    let mut preds = BTreeMap::new();
    let mut files = BTreeMap::new();
    let mut failed = Vec::new();
    for (file, rec) in super::read_records(path)? {
        match rec["caption"].as_str() {
            Some(c) if !super::is_error(&rec) => {
                preds.insert(base_name(&file), c.to_string());
                files.insert(base_name(&file), file);
            }
            _ => failed.push(file),
        }
    }
    Ok(Predictions {
        captions: preds,
        files,
        failed,
    })
}

/// Scores `predictions` against `references` (both by file name).
pub fn evaluate(preds: &Predictions, references: &BTreeMap<String, Vec<String>>) -> CaptionReport {
    let predictions = &preds.captions;
    let failed_names: Vec<String> = preds.failed.iter().map(|f| base_name(f)).collect();
    let preds_all = preds;
    let mut names = Vec::new();
    let mut preds = Vec::new();
    let mut refs = Vec::new();
    for (name, caption) in predictions {
        if let Some(r) = references.get(name) {
            names.push(name.clone());
            preds.push(tokenize(caption));
            refs.push(r.iter().map(|c| tokenize(c)).collect::<Vec<_>>());
        }
    }
    let samples: Vec<Sample> = preds
        .iter()
        .zip(&refs)
        .map(|(p, r)| Sample {
            prediction: p,
            references: r,
        })
        .collect();
    let b = bleu(&samples);
    let rouge = if samples.is_empty() {
        0.0
    } else {
        samples
            .iter()
            .map(|s| rouge_l(s.prediction, s.references))
            .sum::<f64>()
            / samples.len() as f64
    };
    let (cider, _) = cider_d(&samples);
    CaptionReport {
        bleu_1: b.corpus[0],
        bleu_2: b.corpus[1],
        bleu_3: b.corpus[2],
        bleu_4: b.corpus[3],
        rouge_l: rouge,
        cider,
        images_scored: samples.len(),
        missing_predictions: references
            .keys()
            .filter(|n| !predictions.contains_key(*n) && !failed_names.contains(n))
            .cloned()
            .collect(),
        unmatched_predictions: predictions
            .keys()
            .filter(|n| !references.contains_key(*n))
            .map(|n| preds_all.files[n].clone())
            .collect(),
        failed_predictions: preds_all.failed.clone(),
    }
}

impl CaptionReport {
    /// A small aligned table for people.
    pub fn table(&self) -> String {
        let mut s = String::new();
        for (k, v) in [
            ("BLEU-1", self.bleu_1),
            ("BLEU-2", self.bleu_2),
            ("BLEU-3", self.bleu_3),
            ("BLEU-4", self.bleu_4),
            ("ROUGE-L", self.rouge_l),
            ("CIDEr-D", self.cider),
        ] {
            s.push_str(&format!("{k:<8} {v:.4}\n"));
        }
        s.push_str(&format!("images scored: {}\n", self.images_scored));
        for (what, list) in [
            ("without a prediction", &self.missing_predictions),
            (
                "predicted but without references",
                &self.unmatched_predictions,
            ),
            ("failed predictions", &self.failed_predictions),
        ] {
            if !list.is_empty() {
                s.push_str(&format!("{what} ({}): {}\n", list.len(), list.join(", ")));
            }
        }
        s
    }
}

/// CLIPScore of the predictions (and RefCLIPScore where references are given).
#[derive(Debug, Clone, Serialize)]
pub struct ClipReport {
    pub clip_model: String,
    /// Mean CLIP-S over the images scored.
    pub clip_score: f64,
    /// Mean RefCLIP-S over the same images, when references were given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ref_clip_score: Option<f64>,
    pub clip_images_scored: usize,
    /// Predictions whose image could not be found or read (`file: reason`), not CLIP-scored.
    pub unreadable_images: Vec<String>,
}

/// Where an image of a prediction record is on disk: in `images_dir` by file name when given,
/// else the record's `file` as written, relative to the working directory or, failing that, to
/// the predictions file's directory.
pub fn locate_image(
    file: &str,
    images_dir: Option<&Path>,
    predictions_dir: &Path,
) -> std::path::PathBuf {
    if let Some(dir) = images_dir {
        return dir.join(base_name(file));
    }
    let written = Path::new(file);
    if written.is_absolute() || written.exists() {
        written.to_path_buf()
    } else {
        predictions_dir.join(written)
    }
}

/// Scores the predictions that the n-gram metrics score (those with references) or, without
/// references, every successful prediction, with `scorer` as the judge.
pub fn evaluate_clip(
    scorer: &crate::tasks::clip_score::ClipScorer,
    preds: &Predictions,
    references: Option<&BTreeMap<String, Vec<String>>>,
    locate: impl Fn(&str) -> std::path::PathBuf + Sync,
    max_pixels: u64,
) -> Result<ClipReport> {
    use rayon::prelude::*;
    let wanted: Vec<(&String, &String)> = preds
        .captions
        .iter()
        .filter(|(name, _)| references.is_none_or(|r| r.contains_key(*name)))
        .collect();
    // A batch of images at a time is decoded, preprocessed and embedded; only the embeddings
    // are kept, so a folder of large photos costs their embeddings, not their pixels.
    let mut embedded = Vec::new();
    let mut captions = Vec::new();
    let mut refs = Vec::new();
    let mut unreadable = Vec::new();
    for chunk in wanted.chunks(crate::tasks::clip_score::IMAGE_BATCH) {
        let prepared: Vec<Result<Vec<f32>, String>> = chunk
            .par_iter()
            .map(|(name, _)| {
                let path = locate(&preds.files[*name]);
                crate::preprocess::decode::decode(&path, max_pixels)
                    .map(|d| scorer.preprocessor().apply(&d.rgb))
                    .map_err(|e| format!("{}: {e}", path.display()))
            })
            .collect();
        let mut pixels = Vec::new();
        for ((name, caption), p) in chunk.iter().zip(prepared) {
            match p {
                Ok(p) => {
                    pixels.push(p);
                    captions.push((*caption).clone());
                    if let Some(r) = references {
                        refs.push(r[*name].clone());
                    }
                }
                Err(e) => unreadable.push(e),
            }
        }
        if !pixels.is_empty() {
            embedded.push(scorer.embed_pixels(&pixels)?);
        }
    }
    let mean = |v: &[f32]| v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len().max(1) as f64;
    if embedded.is_empty() {
        return Ok(ClipReport {
            clip_model: scorer.name().to_string(),
            clip_score: 0.0,
            ref_clip_score: references.map(|_| 0.0),
            clip_images_scored: 0,
            unreadable_images: unreadable,
        });
    }
    let images = candle_core::Tensor::cat(&embedded, 0)?;
    let scores = scorer.score_embedded(&images, &captions, references.map(|_| refs.as_slice()))?;
    Ok(ClipReport {
        clip_model: scorer.name().to_string(),
        clip_score: mean(&scores.clip_score),
        ref_clip_score: scores.ref_clip_score.as_deref().map(mean),
        clip_images_scored: captions.len(),
        unreadable_images: unreadable,
    })
}

impl ClipReport {
    pub fn table(&self) -> String {
        let mut s = format!("CLIP-S   {:.4}\n", self.clip_score);
        if let Some(r) = self.ref_clip_score {
            s.push_str(&format!("RefCLIP  {r:.4}\n"));
        }
        s.push_str(&format!(
            "CLIP-scored images: {} (judge: {})\n",
            self.clip_images_scored, self.clip_model
        ));
        if !self.unreadable_images.is_empty() {
            s.push_str(&format!(
                "images not found or unreadable ({}): {}\n",
                self.unreadable_images.len(),
                self.unreadable_images.join(", ")
            ));
        }
        s
    }
}
