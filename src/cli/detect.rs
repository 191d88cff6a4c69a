//! `glance detect`: boxes from Florence-2, written as records or annotation files, and drawn.

use std::process::ExitCode;

use anyhow::Result;

use super::args::DetectArgs;
use super::{exit_code, model_files, open_device, output_options, run_stages_into};
use glance::generation::GenerationParams;
use glance::tasks::caption::Captioner;
use glance::tasks::detect::DetectStage;

pub(crate) fn run(args: DetectArgs) -> Result<ExitCode> {
    let phrases =
        glance::tasks::prompts::labels_from(args.labels.as_deref(), args.labels_file.as_deref())?;
    let output = output_options(
        &args.output,
        &args.run,
        &["file", "width", "height", "detections", "error"],
        "detections",
    )?;
    let (device, dtype) = open_device(&args.device)?;
    let files = model_files(&args.model, glance::run::pipeline::DEFAULT_DETECT_MODEL)?;
    let captioner = Captioner::load(&files, &device, dtype)?;
    let mut stage = DetectStage::new(
        captioner,
        &args.task,
        phrases,
        GenerationParams {
            min_new_tokens: args.min_new_tokens.unwrap_or(0),
            ..GenerationParams::default()
        },
        args.max_new_tokens,
        args.num_beams,
    )?;
    if !args.run.quiet {
        eprintln!(
            "glance: {} on {}; --task {}, {} beams, at most {} new tokens",
            stage.captioner().name(),
            super::describe_device(&device, dtype),
            args.task,
            stage.params().num_beams,
            stage.params().max_new_tokens
        );
    }
    let report = run_stages_into(
        &args.run,
        &output,
        None,
        args.draw.clone(),
        &mut [&mut stage],
    )?;
    Ok(exit_code(&report, args.run.quiet))
}
