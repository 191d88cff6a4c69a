//! The `glance` command line: thin glue over the library.

mod cli;
mod eval_cli;

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

use anyhow::{bail, Context};
use cli::{
    CaptionArgs, ClassifyArgs, Cli, Command, DeviceArgs, DownloadArgs, LabelArgs, OutputArgs,
    PipelineArgs, PromptArgs, RunArgs, SortArgs,
};
use glance::caption::{CaptionStage, Captioner};
use glance::classify::{default_threshold, load_recognizer, ClassifyStage, Mode, Recognizer};
use glance::generation::GenerationParams;
use glance::hub::{ModelFiles, ModelSource};
use glance::inputs::{collect_inputs, InputSpec};
use glance::output::{open_sink, Format, LabelStudioOptions, OutputOptions, Record};
use glance::pipeline::Pipeline;
use glance::runner::{self, RunOptions, RunReport, Stage};
use glance::sort::{SortInto, SortMode, SortingSink};

/// candle's worker for elementwise ops spins 25,000 rounds (about half a millisecond) after each
/// op before it sleeps, on a core the matrix products need: with 2 cores that was 4-5 % of the
/// CPU in a CLIP or BLIP run (`perf`), and runs are 2-17 % faster when it sleeps sooner (CLIP
/// with 1000 labels gains most). 1,000 rounds still bridge back-to-back ops. An explicit setting
/// of the variable wins.
const CANDLE_SPIN_LIMIT: &str = "1000";

fn main() -> ExitCode {
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        // Before any thread exists: nothing reads the environment concurrently.
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", CANDLE_SPIN_LIMIT);
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Caption(args) => caption(*args),
        Command::Classify(args) => classify(*args),
        Command::Label(args) => label(*args),
        Command::Run(args) => run_pipeline(*args),
        Command::Eval(cli::EvalCommand::Captions(args)) => eval_cli::captions(*args),
        Command::Eval(cli::EvalCommand::Classify(args)) => eval_cli::classify(args),
        Command::Download(args) => download(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn caption(args: CaptionArgs) -> Result<ExitCode> {
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
    let output = output_options(&args.output, &["file", "caption", "error"], "caption")?;
    let (device, dtype) = open_device(&args.device)?;
    let files = model_files(&args.model, cli::DEFAULT_CAPTION_MODEL)?;
    let started = std::time::Instant::now();
    let captioner = Captioner::load(&files, &device, dtype)?;
    timing("model loaded", started);
    if !args.run.quiet {
        eprintln!(
            "glance: {} on {} ({})",
            captioner.name(),
            glance::device::describe(&device),
            glance::device::describe_precision(dtype)
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

/// With `GLANCE_TIMINGS` set (the benchmark sets it), prints how long `what` took since `started`.
fn timing(what: &str, started: std::time::Instant) {
    if glance::timings_enabled() {
        eprintln!(
            "glance timings: {what} in {:.2}s",
            started.elapsed().as_secs_f64()
        );
    }
}

fn classify(args: ClassifyArgs) -> Result<ExitCode> {
    if let Some(name) = &args.model.pipeline {
        return run_preset(
            name,
            &args.device,
            &args.run,
            &args.output,
            sort_into(&args.sort),
        );
    }
    let labels = match (&args.labels, &args.labels_file) {
        (Some(list), _) => Some(glance::prompts::parse_label_arg(list)),
        (None, Some(path)) => Some(glance::prompts::read_list(path)?),
        (None, None) => None,
    };
    let templates = templates(&args.prompts)?;
    let output = output_options(&args.output, &["file", "label", "score", "error"], "label")?;
    let (device, dtype) = open_device(&args.device)?;
    let files = model_files(&args.model, cli::DEFAULT_ZERO_SHOT_MODEL)?;
    let started = std::time::Instant::now();
    let model = load_recognizer(&files, &device, dtype)?;
    timing("model loaded", started);
    let mode = Mode::Classify {
        top_k: args.top_k,
        min_score: args.min_score,
        multi_label: args
            .multi_label
            .then(|| args.threshold.unwrap_or_else(|| default_threshold(&model))),
    };
    let started = std::time::Instant::now();
    let mut stage = ClassifyStage::new(model, labels, &templates, mode, "classify")?;
    timing("labels embedded", started);
    announce(&stage, &templates, &device, dtype, args.run.quiet);
    let report = run_stages(&args.run, &output, sort_into(&args.sort), &mut [&mut stage])?;
    Ok(exit_code(&report, args.run.quiet))
}

fn label(args: LabelArgs) -> Result<ExitCode> {
    if let Some(name) = &args.model.pipeline {
        return run_preset(name, &args.device, &args.run, &args.output, None);
    }
    let templates = templates(&args.prompts)?;
    let output = output_options(&args.output, &["file", "labels", "error"], "labels")?;
    let (device, dtype) = open_device(&args.device)?;
    let files = model_files(&args.model, cli::DEFAULT_ZERO_SHOT_MODEL)?;
    let model = load_recognizer(&files, &device, dtype)?;
    // A zero-shot model tags from a vocabulary (the shipped one by default); a closed-set
    // classifier from its own classes.
    let tags = match (&model, &args.vocab) {
        (Recognizer::ClosedSet(_), None) => None,
        (_, vocab) => Some(glance::prompts::vocab(
            vocab.as_deref().unwrap_or(glance::prompts::DEFAULT_VOCAB),
        )?),
    };
    let mode = Mode::Label {
        threshold: args.threshold.unwrap_or_else(|| default_threshold(&model)),
        max_tags: args.max_tags,
    };
    let mut stage = ClassifyStage::new(model, tags, &templates, mode, "label")?;
    announce(&stage, &templates, &device, dtype, args.run.quiet);
    let report = run_stages(&args.run, &output, None, &mut [&mut stage])?;
    Ok(exit_code(&report, args.run.quiet))
}

fn run_pipeline(args: PipelineArgs) -> Result<ExitCode> {
    let pipeline = Pipeline::load(&args.pipeline)?;
    execute(
        &pipeline,
        &args.device,
        &args.run,
        &args.output,
        sort_into(&args.sort),
    )
}

/// `--pipeline NAME` on a single-task command: the preset (or file) with this command's run,
/// device and output options.
fn run_preset(
    name: &str,
    device: &DeviceArgs,
    run: &RunArgs,
    output: &OutputArgs,
    sort: Option<SortInto>,
) -> Result<ExitCode> {
    execute(&Pipeline::load(name)?, device, run, output, sort)
}

fn execute(
    pipeline: &Pipeline,
    device: &DeviceArgs,
    run: &RunArgs,
    output: &OutputArgs,
    sort: Option<SortInto>,
) -> Result<ExitCode> {
    let columns = pipeline.csv_columns();
    let columns: Vec<&str> = columns.iter().map(String::as_str).collect();
    let output = output_options(output, &columns, &pipeline.text_field())?;
    let classifies = pipeline
        .stages
        .iter()
        .any(|s| matches!(s, glance::pipeline::StageSpec::Classify { .. }));
    if sort.is_some() && !classifies {
        bail!("--sort-into needs a classify stage in {}", pipeline.source);
    }
    let (device, dtype) = open_device(device)?;
    let mut stages = pipeline
        .build(&device, dtype)
        .with_context(|| format!("loading {}", pipeline.source))?;
    if !run.quiet {
        eprintln!(
            "glance: {} ({}) on {} ({})",
            pipeline.source,
            pipeline.stage_names().join(" + "),
            glance::device::describe(&device),
            glance::device::describe_precision(dtype)
        );
    }
    let mut refs: Vec<&mut dyn Stage> = stages
        .iter_mut()
        .map(|s| s.as_mut() as &mut dyn Stage)
        .collect();
    let report = run_stages(run, &output, sort, &mut refs)?;
    Ok(exit_code(&report, run.quiet))
}

fn announce(
    stage: &ClassifyStage,
    templates: &[String],
    device: &candle_core::Device,
    dtype: candle_core::DType,
    quiet: bool,
) {
    if quiet {
        return;
    }
    let prompts = if stage.is_zero_shot() {
        format!(" x {} templates", templates.len())
    } else {
        " (the model's classes)".to_string()
    };
    eprintln!(
        "glance: {} on {} ({}), {} labels{prompts}",
        stage.model_name(),
        glance::device::describe(device),
        glance::device::describe_precision(dtype),
        stage.labels().len()
    );
}

fn templates(args: &PromptArgs) -> Result<Vec<String>> {
    Ok(glance::prompts::choose_templates(
        args.template.as_deref(),
        args.templates.as_deref(),
    )?)
}

fn sort_into(args: &SortArgs) -> Option<SortInto> {
    let mode = if args.move_files {
        SortMode::Move
    } else if args.link {
        SortMode::Link
    } else {
        SortMode::Copy
    };
    args.sort_into.clone().map(|dir| SortInto { dir, mode })
}

fn download(args: DownloadArgs) -> Result<ExitCode> {
    let files = ModelFiles::new(ModelSource::parse(&args.model, args.revision.as_deref()))?;
    let paths = glance::hub::download(&files)?;
    for p in paths {
        println!("{}", p.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn model_files(args: &cli::ModelArgs, default: &str) -> Result<ModelFiles> {
    let model = args.model.as_deref().unwrap_or(default);
    Ok(ModelFiles::new(ModelSource::parse(
        model,
        args.revision.as_deref(),
    ))?)
}

/// A CLIP/SigLIP model as a CLIPScore judge.
pub(crate) fn load_judge(
    model: &str,
    revision: Option<&str>,
    device: &candle_core::Device,
    dtype: candle_core::DType,
) -> Result<glance::eval::clip_score::ClipScorer> {
    let files = ModelFiles::new(ModelSource::parse(model, revision))?;
    glance::eval::clip_score::ClipScorer::load(&files, device, dtype)
        .with_context(|| format!("loading the CLIPScore judge {model}"))
}

pub(crate) fn open_device(
    args: &cli::DeviceArgs,
) -> Result<(candle_core::Device, candle_core::DType)> {
    let device = glance::device::open(args.device)?;
    let (dtype, bf16_matmul) = glance::device::precision(args.dtype, &device)?;
    glance::models::linear::set_cpu_bf16_matmul(bf16_matmul);
    Ok((device, dtype))
}

fn output_options(
    args: &OutputArgs,
    csv_columns: &[&str],
    text_field: &str,
) -> Result<OutputOptions> {
    let format = match (args.format, &args.output) {
        (Some(f), _) => f,
        (None, Some(path)) => Format::from_path(path)?,
        (None, None) => Format::Jsonl,
    };
    Ok(OutputOptions {
        format,
        path: args.output.clone(),
        csv_columns: csv_columns.iter().map(|s| s.to_string()).collect(),
        text_field: text_field.to_string(),
        sidecar_ext: args.sidecar_ext.clone(),
        existing: args.existing,
        resume: args.resume,
        label_studio: LabelStudioOptions {
            from_name: args.ls_from_name.clone(),
            caption_name: args.ls_caption_name.clone(),
            to_name: args.ls_to_name.clone(),
            url_prefix: args.ls_url_prefix.clone(),
        },
    })
}

fn run_stages(
    run: &RunArgs,
    output: &OutputOptions,
    sort: Option<SortInto>,
    stages: &mut [&mut dyn Stage],
) -> Result<RunReport> {
    let spec = InputSpec {
        args: run.inputs.clone(),
        shard: run.shard,
    };
    let (inputs, missing) = collect_inputs(&spec, std::io::stdin().lock())?;
    let early: Vec<Record> = missing
        .into_iter()
        .map(|e| Record::new(e.display).with_error(e.message))
        .collect();
    let mut output = output.clone();
    if sort.is_some() && output.csv_columns.last().is_some_and(|c| c == "error") {
        let at = output.csv_columns.len() - 1;
        output.csv_columns.insert(at, "sorted_to".into());
    }
    let (sink, resume) = open_sink(&output)?;
    let sink = match sort {
        Some(sort) => Box::new(SortingSink::new(sink, sort)),
        None => sink,
    };
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let opts = RunOptions {
        batch_size: run.batch_size,
        max_image_pixels: run.max_image_pixels,
        progress: !run.quiet,
        // One per core: at most two batches are decoded ahead, so they use the cores while the
        // model waits for images (big JPEGs through CLIP) and rest while it is ahead.
        decode_threads: threads,
    };
    runner::run(inputs, early, stages, &resume, sink, &opts)
}

/// 0 when every input succeeded, 1 when some failed (the summary names them).
fn exit_code(report: &RunReport, quiet: bool) -> ExitCode {
    if report.broken_pipe {
        return ExitCode::SUCCESS;
    }
    let s = &report.summary;
    if !quiet {
        let rate = report.processed as f64 / report.seconds.max(1e-9);
        let mut line = format!(
            "glance: {} done, {} failed in {:.1}s ({rate:.2} images/s)",
            s.written, s.errors, report.seconds
        );
        if report.resumed > 0 {
            line.push_str(&format!(", {} already done", report.resumed));
        }
        if s.skipped > 0 {
            line.push_str(&format!(", {} sidecars left as they were", s.skipped));
        }
        eprintln!("{line}");
        let show = if std::io::stderr().is_terminal() {
            10
        } else {
            usize::MAX
        };
        for f in s.failures.iter().take(show) {
            eprintln!("  failed: {}: {}", f.file, f.error);
        }
    }
    if s.errors > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

// Inference allocates and frees tensors of tens to hundreds of megabytes per layer; glibc hands
// those straight back to the kernel, so every op paid page faults and zeroing (a fifth of CPU
// time on BLIP-base). jemalloc, told to keep dirty pages, reuses memory instead. Transparent huge
// pages (`thp:always`) were tried and dropped: with the kernel's `defrag=madvise`, every huge-page
// fault after another big process (e.g. Python) compacts memory synchronously, which cost CLIP-B/32
// classification 2.2 s of system time per run and BLIP-base 2.3 s.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOC: glance::alloc::Allocator = glance::alloc::Allocator;

/// jemalloc's configuration string, read at start-up (the layout tikv-jemallocator documents).
#[cfg(not(target_env = "msvc"))]
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] = b"dirty_decay_ms:-1,muzzy_decay_ms:-1,oversize_threshold:0\0";
