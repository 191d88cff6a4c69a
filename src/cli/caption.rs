//! `glance caption`: a captioning model over the inputs, optionally reranked by CLIPScore.

use std::process::ExitCode;

use anyhow::Result;

use super::args::{self, CaptionArgs};
use super::pipeline::run_preset;
use super::{exit_code, load_judge, model_files, open_device, output_options, run_stages};
use candle_core::{DType, Device};
use glance::generation::GenerationParams;
use glance::load::hub::ModelFiles;
use glance::load::read_json;
use glance::output::OutputOptions;
use glance::tasks::caption::{CaptionStage, Captioner};
use glance::tasks::chat::{self, ChatCaptioner, ChatOptions, ChatStage};
use glance::tasks::prompts;

pub(crate) fn run(args: CaptionArgs) -> Result<ExitCode> {
    if let Some(name) = &args.model.pipeline {
        return run_preset(name, &args.device, &args.run, &args.output, None);
    }
    let output = output_options(
        &args.output,
        &args.run,
        &["file", "caption", "error"],
        "caption",
    )?;
    let (device, dtype) = open_device(&args.device)?;
    let files = model_files(&args.model, args::DEFAULT_CAPTION_MODEL)?;
    if chat::is_chat_model(&read_json(&files.get("config.json")?)?) {
        return run_chat(&args, &files, &output, &device, dtype);
    }
    let g = &args.generation;
    let chat_only = [
        ("--prompt-file", g.prompt_file.is_some()),
        ("--system", g.system.is_some()),
        ("--max-pixels", g.max_pixels.is_some()),
        ("--min-pixels", g.min_pixels.is_some()),
    ];
    if let Some((flag, _)) = chat_only.iter().find(|(_, given)| *given) {
        anyhow::bail!(
            "{flag} is for chat models (Qwen3-VL); {} is a captioner: use --prompt for a caption prefix",
            files.source().name()
        );
    }
    let params = GenerationParams::default().with(&g.overrides());
    let captioner = Captioner::load(&files, &device, dtype)?;
    let task = match (&args.task, captioner.reads_tasks()) {
        (Some(name), true) => Some(
            glance::models::florence2::processor::task_token(
                name,
                glance::models::florence2::processor::CAPTION_TASKS,
            )?
            .to_string(),
        ),
        (Some(_), false) => anyhow::bail!(
            "--task is for Florence-2; {} takes a caption prefix with --prompt",
            captioner.name()
        ),
        (None, _) => None,
    };
    if !args.run.quiet {
        eprintln!(
            "glance: {} on {}",
            captioner.name(),
            super::describe_device(&device, dtype)
        );
    }
    let mut stage = CaptionStage::new(
        captioner,
        task.as_deref().or(g.prompt.as_deref()),
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

/// `glance caption` with an instruction-following model.
fn run_chat(
    args: &CaptionArgs,
    files: &ModelFiles,
    output: &OutputOptions,
    device: &Device,
    dtype: DType,
) -> Result<ExitCode> {
    let g = &args.generation;
    if args.rerank.rerank.is_some() {
        anyhow::bail!(
            "--rerank works with captioners (BLIP, encoder–decoders), not yet with chat models"
        );
    }
    let instruction = prompts::choose_instruction(g.prompt.as_deref(), g.prompt_file.as_deref())?;
    let captioner = ChatCaptioner::load(files, device, dtype)?;
    let options = ChatOptions {
        instruction,
        system: g.system.clone(),
        min_pixels: g.min_pixels,
        max_pixels: g.max_pixels,
        generation: g.overrides(),
        greedy: g.greedy,
        quiet: args.run.quiet,
    };
    let name = captioner.name().to_string();
    let mut stage = ChatStage::new(captioner, options)?;
    if !args.run.quiet {
        let p = stage.params();
        let decoding = match p.do_sample {
            true => format!(
                "sampling (temperature {}, top-k {}, top-p {}; --greedy to turn off)",
                p.temperature, p.top_k, p.top_p
            ),
            false => "greedy".to_string(),
        };
        eprintln!(
            "glance: {name} on {}; {decoding}, at most {} new tokens",
            super::describe_device(device, dtype),
            p.max_new_tokens
        );
    }
    let report = run_stages(&args.run, output, None, &mut [&mut stage])?;
    Ok(exit_code(&report, args.run.quiet))
}
