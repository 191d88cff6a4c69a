//! The `glance` command line: clap's flags ([`args`]), one handler per command, and the glue
//! they share (device, model files, outputs, the folder run and its exit code). Handlers call
//! the library; nothing here computes.

mod args;
mod caption;
mod classify;
mod detect;
mod eval;
mod pipeline;
mod serve;

use std::io::IsTerminal;
use std::process::ExitCode;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;

use args::{Cli, Command, DownloadArgs, MergeArgs, OutputArgs, RunArgs, SortArgs};
use glance::load::hub::{ModelFiles, ModelSource};
use glance::output::{open_sink, Format, LabelStudioOptions, OutputOptions, Record};
use glance::run::inputs::{collect_inputs, InputSpec, Shard, ShardArg};
use glance::run::runner::{self, RunOptions, RunReport};
use glance::run::sort::{SortInto, SortMode, SortingSink};
use glance::tasks::Stage;

/// Parses the command line and runs the command: 0 when every input succeeded, 1 when some
/// failed, 2 when the run could not start.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    glance::load::embedding_cache::set_cache_dir(glance::load::embedding_cache::dir_from_env());
    let result = match cli.command {
        Command::Caption(args) => caption::run(*args),
        Command::Classify(args) => classify::classify(*args),
        Command::Label(args) => classify::label(*args),
        Command::Detect(args) => detect::run(*args),
        Command::Run(args) => pipeline::run(*args),
        Command::Eval(args::EvalCommand::Captions(args)) => eval::captions(*args),
        Command::Eval(args::EvalCommand::Classify(args)) => eval::classify(args),
        Command::Serve(args) => serve::run(*args),
        Command::Download(args) => download(args),
        Command::Merge(args) => merge(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// "cpu (F32)", "cpu (bf16 matmuls, f32 activations)", with the note on a faster precision where
/// there is one.
pub(crate) fn describe_device(device: &candle_core::Device, dtype: candle_core::DType) -> String {
    let precision = glance::device::describe_precision(dtype);
    match glance::device::precision_hint(device, dtype) {
        Some(hint) => format!("{} ({precision}, {hint})", glance::device::describe(device)),
        None => format!("{} ({precision})", glance::device::describe(device)),
    }
}

pub(crate) fn sort_into(args: &SortArgs) -> Option<SortInto> {
    let mode = if args.move_files {
        SortMode::Move
    } else if args.link {
        SortMode::Link
    } else {
        SortMode::Copy
    };
    args.sort_into.clone().map(|dir| SortInto { dir, mode })
}

pub(crate) fn download(args: DownloadArgs) -> Result<ExitCode> {
    let files = ModelFiles::new(ModelSource::parse(&args.model, args.revision.as_deref()))?;
    let paths = glance::load::hub::download(&files)?;
    for p in paths {
        println!("{}", p.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// `glance merge`: 0 when every input is there exactly once (or with --allow-missing), 1 when
/// images are missing or twice (the report names them), 2 when a part cannot be read.
fn merge(args: MergeArgs) -> Result<ExitCode> {
    use glance::run::merge::{merge, MergeOptions};
    let format = match args.format {
        Some(f) => f,
        None => Format::from_path(&args.output)?,
    };
    let opts = MergeOptions {
        parts: args.parts.clone(),
        part_format: None,
        inputs: (!args.inputs.is_empty()).then(|| InputSpec {
            args: args.inputs.clone(),
            ..InputSpec::default()
        }),
        output: OutputOptions {
            format,
            path: Some(args.output.clone()),
            text_field: args.field.clone(),
            coco_root: args.coco_root.clone(),
            ..OutputOptions::default()
        },
        allow_missing: args.allow_missing,
    };
    let report = merge(&opts)?;
    let list = |what: &str, files: &[String]| {
        if !files.is_empty() {
            eprintln!("glance merge: {} {what}:", files.len());
            for f in files.iter().take(20) {
                eprintln!("  {f}");
            }
            if files.len() > 20 {
                eprintln!("  ... and {} more", files.len() - 20);
            }
        }
    };
    list("images missing from every part", &report.missing);
    list("images in more than one record", &report.duplicates);
    list("records of files not among --inputs", &report.unexpected);
    match (report.written, report.is_exact()) {
        (true, true) => {
            eprintln!(
                "glance merge: {} records from {} parts into {}",
                report.records,
                args.parts.len(),
                args.output.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        (true, false) => {
            eprintln!(
                "glance merge: {} records into {} (--allow-missing)",
                report.records,
                args.output.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        (false, _) => {
            eprintln!("glance merge: nothing written; --allow-missing merges anyway");
            Ok(ExitCode::from(1))
        }
    }
}

pub(crate) fn model_files(args: &args::ModelArgs, default: &str) -> Result<ModelFiles> {
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
) -> Result<glance::tasks::clip_score::ClipScorer> {
    let files = ModelFiles::new(ModelSource::parse(model, revision))?;
    glance::tasks::clip_score::ClipScorer::load(&files, device, dtype)
        .with_context(|| format!("loading the CLIPScore judge {model}"))
}

pub(crate) fn open_device(
    args: &args::DeviceArgs,
) -> Result<(candle_core::Device, candle_core::DType)> {
    let device = glance::device::open(args.device)?;
    let (dtype, bf16_matmul) = glance::device::precision(args.dtype, &device)?;
    glance::kernels::set_cpu_bf16_matmul(bf16_matmul);
    Ok((device, dtype))
}

/// The run's shard: `--shard K/N`, or with `--shard auto` the scheduler's task from the
/// environment.
pub(crate) fn shard(run: &RunArgs) -> Result<Option<Shard>> {
    Ok(match run.shard {
        None => None,
        Some(ShardArg::Fixed(shard)) => Some(shard),
        Some(ShardArg::Auto) => Some(
            Shard::from_env(|name| std::env::var(name).ok(), run.shard_count)
                .map_err(anyhow::Error::msg)?,
        ),
    })
}

pub(crate) fn output_options(
    args: &OutputArgs,
    run: &RunArgs,
    csv_columns: &[&str],
    text_field: &str,
) -> Result<OutputOptions> {
    // `-o out/captions-{shard}.jsonl`: each shard of a job writes its own file.
    let path = match (&args.output, shard(run)?) {
        (Some(p), shard) if p.to_string_lossy().contains("{shard}") => {
            let Some(shard) = shard else {
                bail!(
                    "-o {} names {{shard}}, but the run has no --shard",
                    p.display()
                );
            };
            Some(PathBuf::from(
                p.to_string_lossy().replace("{shard}", &shard.label()),
            ))
        }
        (p, _) => p.clone(),
    };
    let format = match (args.format, &path) {
        (Some(f), _) => f,
        (None, Some(path)) => Format::from_path(path)?,
        (None, None) => Format::Jsonl,
    };
    Ok(OutputOptions {
        format,
        path,
        csv_columns: csv_columns.iter().map(|s| s.to_string()).collect(),
        text_field: text_field.to_string(),
        sidecar_ext: args.sidecar_ext.clone(),
        existing: args.existing,
        resume: args.resume,
        coco_root: args.coco_root.clone(),
        label_studio: LabelStudioOptions {
            from_name: args.ls_from_name.clone(),
            caption_name: args.ls_caption_name.clone(),
            to_name: args.ls_to_name.clone(),
            url_prefix: args.ls_url_prefix.clone(),
        },
    })
}

pub(crate) fn run_stages(
    run: &RunArgs,
    output: &OutputOptions,
    sort: Option<SortInto>,
    stages: &mut [&mut dyn Stage],
) -> Result<RunReport> {
    run_stages_into(run, output, sort, None, stages)
}

/// [`run_stages`], also drawing detections into `draw` when given.
pub(crate) fn run_stages_into(
    run: &RunArgs,
    output: &OutputOptions,
    sort: Option<SortInto>,
    draw: Option<PathBuf>,
    stages: &mut [&mut dyn Stage],
) -> Result<RunReport> {
    let spec = InputSpec {
        args: run.inputs.clone(),
        shard: shard(run)?,
        shard_by: run.shard_by,
    };
    let (inputs, missing) = glance::timings::phase("inputs listed", || {
        collect_inputs(&spec, std::io::stdin().lock())
    })?;
    if glance::timings_enabled() {
        if let Some(total) = glance::timings::since_exec() {
            eprintln!("glance timings: {}", glance::timings::summary(total));
        }
    }
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
    let sink: Box<dyn glance::output::RecordSink + Send> = match draw {
        Some(dir) => Box::new(glance::run::draw::DrawingSink::new(
            sink,
            dir,
            run.max_image_pixels,
        )?),
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
pub(crate) fn exit_code(report: &RunReport, quiet: bool) -> ExitCode {
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
