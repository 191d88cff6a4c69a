//! `glance classify` and `glance label`: zero-shot or closed-set classes and tags.

use std::process::ExitCode;

use anyhow::Result;

use super::args::{self, ClassifyArgs, LabelArgs, PromptArgs};
use super::pipeline::run_preset;
use super::{exit_code, model_files, open_device, output_options, run_stages, sort_into};
use glance::tasks::classify::{
    default_threshold, load_recognizer, ClassifyStage, Mode, Recognizer,
};

pub(crate) fn classify(args: ClassifyArgs) -> Result<ExitCode> {
    if let Some(name) = &args.model.pipeline {
        return run_preset(
            name,
            &args.device,
            &args.run,
            &args.output,
            sort_into(&args.sort),
        );
    }
    let labels =
        glance::tasks::prompts::labels_from(args.labels.as_deref(), args.labels_file.as_deref())?;
    let templates = templates(&args.prompts)?;
    let output = output_options(
        &args.output,
        &args.run,
        &["file", "label", "score", "error"],
        "label",
    )?;
    let (device, dtype) = open_device(&args.device)?;
    let files = model_files(&args.model, args::DEFAULT_ZERO_SHOT_MODEL)?;
    let model = load_recognizer(&files, &device, dtype)?;
    let mode = Mode::Classify {
        top_k: args.top_k,
        min_score: args.min_score,
        multi_label: args
            .multi_label
            .then(|| args.threshold.unwrap_or_else(|| default_threshold(&model))),
    };
    let mut stage = ClassifyStage::new(model, labels, &templates, mode, "classify")?;
    announce(&stage, &device, dtype, args.run.quiet);
    let report = run_stages(&args.run, &output, sort_into(&args.sort), &mut [&mut stage])?;
    Ok(exit_code(&report, args.run.quiet))
}

pub(crate) fn label(args: LabelArgs) -> Result<ExitCode> {
    if let Some(name) = &args.model.pipeline {
        return run_preset(name, &args.device, &args.run, &args.output, None);
    }
    let templates = templates(&args.prompts)?;
    let output = output_options(
        &args.output,
        &args.run,
        &["file", "labels", "error"],
        "labels",
    )?;
    let (device, dtype) = open_device(&args.device)?;
    let files = model_files(&args.model, args::DEFAULT_ZERO_SHOT_MODEL)?;
    let model = load_recognizer(&files, &device, dtype)?;
    // A zero-shot model tags from a vocabulary (the shipped one by default); a closed-set
    // classifier from its own classes.
    let tags = match (&model, &args.vocab) {
        (Recognizer::ClosedSet(_), None) => None,
        (_, vocab) => Some(glance::tasks::prompts::vocab(
            vocab
                .as_deref()
                .unwrap_or(glance::tasks::prompts::DEFAULT_VOCAB),
        )?),
    };
    let mode = Mode::Label {
        threshold: args.threshold.unwrap_or_else(|| default_threshold(&model)),
        max_tags: args.max_tags,
    };
    let mut stage = ClassifyStage::new(model, tags, &templates, mode, "label")?;
    announce(&stage, &device, dtype, args.run.quiet);
    let report = run_stages(&args.run, &output, None, &mut [&mut stage])?;
    Ok(exit_code(&report, args.run.quiet))
}

fn announce(
    stage: &ClassifyStage,
    device: &candle_core::Device,
    dtype: candle_core::DType,
    quiet: bool,
) {
    if quiet {
        return;
    }
    let prompts = match stage.prompt_stats() {
        Some(p) => format!(
            " x {} template{} ({})",
            p.templates,
            if p.templates == 1 { "" } else { "s" },
            describe_prompts(&p)
        ),
        None => " (the model's classes)".to_string(),
    };
    eprintln!(
        "glance: {} on {}, {} labels{prompts}",
        stage.model_name(),
        super::describe_device(device, dtype),
        stage.labels().len()
    );
}

/// "1100 prompts encoded in 4.9 s", "1100 prompts from the cache", or both parts.
pub(crate) fn describe_prompts(p: &glance::tasks::zero_shot::PromptStats) -> String {
    let encoded = p.prompts - p.cached;
    match (p.cached, encoded) {
        (0, n) => format!("{n} prompts encoded in {:.1} s", p.seconds),
        (c, 0) => format!("{c} prompts from the cache in {:.2} s", p.seconds),
        (c, n) => format!(
            "{c} prompts from the cache, {n} encoded, in {:.1} s",
            p.seconds
        ),
    }
}

fn templates(args: &PromptArgs) -> Result<Vec<String>> {
    Ok(glance::tasks::prompts::choose_templates(
        args.template.as_deref(),
        args.templates.as_deref(),
    )?)
}
