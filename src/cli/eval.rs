//! `glance eval …`: reads predictions and ground truth, prints the report.

use std::process::ExitCode;

use anyhow::{Context, Result};
use serde_json::Value;

use super::args::{EvalCaptionsArgs, EvalClassifyArgs};
use glance::eval::captions;

pub fn captions(args: EvalCaptionsArgs) -> Result<ExitCode> {
    let predictions = captions::read_predictions(&args.predictions)?;
    let references = args
        .references
        .as_deref()
        .map(captions::read_references)
        .transpose()?;
    let report = references
        .as_ref()
        .map(|r| captions::evaluate(&predictions, r));
    let clip = match &args.clip_model {
        Some(model) => {
            let (device, dtype) = super::open_device(&args.device)?;
            let judge = super::load_judge(model, args.clip_revision.as_deref(), &device, dtype)?;
            let predictions_dir = args
                .predictions
                .parent()
                .unwrap_or(std::path::Path::new("."))
                .to_path_buf();
            let locate =
                |file: &str| captions::locate_image(file, args.images.as_deref(), &predictions_dir);
            Some(captions::evaluate_clip(
                &judge,
                &predictions,
                references.as_ref(),
                locate,
                glance::preprocess::decode::DEFAULT_MAX_IMAGE_PIXELS,
            )?)
        }
        None => None,
    };
    if args.format == "json" {
        let mut out = serde_json::Map::new();
        for part in [
            report.as_ref().map(serde_json::to_value),
            clip.as_ref().map(serde_json::to_value),
        ]
        .into_iter()
        .flatten()
        {
            if let Value::Object(o) = part? {
                out.extend(o);
            }
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        if let Some(r) = &report {
            print!("{}", r.table());
        }
        if let Some(c) = &clip {
            print!("{}", c.table());
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn classify(args: EvalClassifyArgs) -> Result<ExitCode> {
    use glance::eval::classify;
    let truth = classify::read_truth(&args.truth)?;
    let predictions = classify::read_predictions(&args.predictions)?;
    let report = classify::evaluate(&predictions, &truth, args.top_k);
    if args.format == "json" {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    if let Some(path) = &args.heatmap {
        let summary = format!(
            "accuracy {:.4} over {} images ({})",
            report.accuracy,
            report.images_scored,
            args.predictions.display()
        );
        glance::eval::heatmap::render(&report.confusion, &summary)
            .save(path)
            .with_context(|| format!("writing the heat-map {}", path.display()))?;
        eprintln!("glance: confusion matrix drawn in {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
