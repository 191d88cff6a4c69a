//! `glance caption`: a captioning model over the inputs, optionally reranked by CLIPScore.

use std::process::ExitCode;

use anyhow::Result;

use super::args::{self, CaptionArgs};
use super::pipeline::run_preset;
use super::{exit_code, load_judge, model_files, open_device, output_options, run_stages};
use glance::generation::GenerationParams;
use glance::tasks::caption::{CaptionStage, Captioner};

pub(crate) fn run(args: CaptionArgs) -> Result<ExitCode> {
    if let Some(name) = &args.model.pipeline {
        return run_preset(name, &args.device, &args.run, &args.output, None);
    }
    let g = &args.generation;
    let params = GenerationParams {
        min_new_tokens: g.min_new_tokens,
        length_penalty: g.length_penalty,
        do_sample: g.do_sample,
        temperature: g.temperature,
        top_k: g.top_k,
        top_p: g.top_p,
        repetition_penalty: g.repetition_penalty,
        num_return_sequences: g.num_return_sequences,
        seed: g.seed,
        ..GenerationParams::default()
    };
    let output = output_options(
        &args.output,
        &args.run,
        &["file", "caption", "error"],
        "caption",
    )?;
    let (device, dtype) = open_device(&args.device)?;
    let files = model_files(&args.model, args::DEFAULT_CAPTION_MODEL)?;
    let captioner = Captioner::load(&files, &device, dtype)?;
    if !args.run.quiet {
        eprintln!(
            "glance: {} on {}",
            captioner.name(),
            super::describe_device(&device, dtype)
        );
    }
    let mut stage = CaptionStage::new(
        captioner,
        g.prompt.as_deref(),
        params,
        g.max_new_tokens,
        g.num_beams,
    )?;
    if args.rerank.rerank.is_some() {
        let judge = load_judge(
            &args.rerank.clip_model,
            args.rerank.clip_revision.as_deref(),
            &device,
            dtype,
        )?;
        if !args.run.quiet {
            eprintln!(
                "glance: reranking candidates by CLIPScore of {}",
                judge.name()
            );
        }
        stage = stage.rerank_with(judge)?;
    }
    let report = run_stages(&args.run, &output, None, &mut [&mut stage])?;
    Ok(exit_code(&report, args.run.quiet))
}
