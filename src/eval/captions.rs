//! `glance eval captions`: glance caption records against COCO captions references, matched by
//! file name, scored with the COCO toolkit's tokenization and metrics.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

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

fn base_name(file: &str) -> String {
    Path::new(file)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| file.to_string())
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
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut preds = BTreeMap::new();
    let mut files = BTreeMap::new();
    let mut failed = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let rec: Value = serde_json::from_str(line)
            .map_err(|e| Error::config(path, format!("line {}: not a JSON record: {e}", i + 1)))?;
        let Some(file) = rec["file"].as_str() else {
            return Err(Error::config(path, format!("line {}: no \"file\"", i + 1)));
        };
        match rec["caption"].as_str() {
            Some(c) if rec.get("error").is_none_or(Value::is_null) => {
                preds.insert(base_name(file), c.to_string());
                files.insert(base_name(file), file.to_string());
            }
            _ => failed.push(file.to_string()),
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
